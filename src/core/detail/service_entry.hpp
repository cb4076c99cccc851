// What the host keeps for each hosted service.
#pragma once

#include <hosting/core/background_service.hpp>
#include <hosting/core/hosted_service.hpp>
#include <hosting/core/service_status.hpp>
#include <hosting/core/services.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <string>

namespace hosting::detail {

using clock = std::chrono::steady_clock;

// What a restart policy needs; only services that have one pay for it.
struct supervision {
    restart_policy policy;
    std::function<std::shared_ptr<hosted_service>(service_provider&)> factory;
    std::deque<clock::time_point> recent;    // orchestrator strand only: restarts within the window
    std::optional<asio::steady_timer> timer; // orchestrator strand only
    std::atomic<bool> pending{false};
    std::atomic<bool> exhausted{false};
};

struct pending_call;

struct service_entry {
    service_entry(std::shared_ptr<const std::string> n, std::shared_ptr<hosted_service> s,
                  const asio::any_io_executor& ex);

    const std::string& name() const noexcept { return *name_storage; }

    std::shared_ptr<const std::string> name_storage; // shared by instances of one type
    std::shared_ptr<hosted_service> service;
    hosted_lifecycle_service* lifecycle = nullptr;
    background_service* background = nullptr;
    // Its own strand, or the io_context itself when the host owns a
    // single-threaded loop and a strand would only cost time. Owned by the
    // host: with ten thousand services, a pointer here is 48 bytes less
    // each than the executor itself.
    const asio::any_io_executor* strand;
    std::atomic<service_state> state{service_state::not_started};
    bool started = false; // orchestrator strand only: start() succeeded, so stop() is owed
    // Registered with starts_first(): it starts before the other services
    // and stops after them even when they start or stop concurrently.
    bool brackets = false;
    std::atomic<std::uint32_t> restarts{0};
    std::atomic<std::uint32_t> faults{0};
    std::shared_ptr<pending_call> stop_waiter; // orchestrator strand only
    std::unique_ptr<supervision> supervised;   // null without a restart policy

    void set_error(std::exception_ptr e);
    // `service` and `background` change on a restart (on the orchestrator's
    // strand), under a lock that status() takes to read them.
    void replace(std::shared_ptr<hosted_service> s);
    service_status status() const;

private:
    std::exception_ptr error_;
};

// One start(), stop() or hook call of a service; done and error are
// written on the orchestrator's strand.
struct pending_call {
    service_entry* entry = nullptr;
    bool done = false;
    bool settled = false; // its outcome has been acted on
    std::exception_ptr error;
};

} // namespace hosting::detail
