// background_service: a hosted service that runs one long coroutine.
#pragma once

#include <hosting/core/hosted_service.hpp>

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <exception>
#include <functional>
#include <memory>
#include <stop_token>
#include <string>

namespace spdlog {
class logger;
}

namespace hosting {

namespace detail {
struct background_service_access;
}

// Subclass it and implement execute().
//
// start() spawns execute() on the service's strand and returns at once, so
// the next service starts without waiting for execute. stop() requests the
// `stopping` token, cancels every Asio operation execute is awaiting (with
// cancellation_type::terminal; no token needs to be passed by hand), and
// waits until execute has ended or stop's own `cancel` fires.
//
// An execute that ends with operation_canceled, or with Asio's
// operation_aborted, after the stop was requested has stopped normally. Any
// other exception is a fault: it is logged with the service's name and, by
// default, stops the host (host_options::background_service_exception_behavior).
// An execute that returns normally is simply completed.
//
// Once cancelled, each further co_await inside execute throws at once; cleanup
// that must await after the stop should first call
// `co_await asio::this_coro::reset_cancellation_state()`.
class background_service : public hosted_service {
public:
    background_service();
    ~background_service() override;
    background_service(const background_service&) = delete;
    background_service& operator=(const background_service&) = delete;

    // Final, so that no subclass can forget to launch or cancel execute
    // (overriding StartAsync and forgetting base.StartAsync is a classic
    // .NET bug). Put preparation at the top of execute and cleanup after
    // the cancellation at its end.
    asio::awaitable<void> start(std::stop_token cancel) final;
    asio::awaitable<void> stop(std::stop_token cancel) final;

    // Thread-safe snapshots of where execute is.
    service_state state() const noexcept;
    // The exception execute ended with, when state() is faulted.
    std::exception_ptr exception() const;

    // The name the host registered this service under (its type's name
    // unless add_hosted_service(...).name() said otherwise); empty outside a
    // host. Set by host_builder::build(), before start.
    const std::string& service_name() const noexcept;

    // The interval declared with expect_heartbeat() (zero when none), and
    // the last heartbeat (the launch of execute counts as one). Thread-safe.
    std::chrono::milliseconds heartbeat_interval() const noexcept;
    std::chrono::steady_clock::time_point last_heartbeat() const noexcept;

protected:
    // Declares that execute calls heartbeat() at least every `interval`
    // while it runs; the host's health then reports the service as stuck
    // (unhealthy) after interval * health_options::heartbeat_factor without
    // one. Call it from the constructor. Zero withdraws the declaration.
    void expect_heartbeat(std::chrono::milliseconds interval) noexcept;
    // Says "still making progress"; cheap (one relaxed atomic store), from
    // any thread.
    void heartbeat() noexcept;

    // Runs on the host's io_context, on this service's strand.
    virtual asio::awaitable<void> execute(std::stop_token stopping) = 0;

    // A logger whose category is service_name(), writing to the host's
    // sinks; null outside a host.
    const std::shared_ptr<spdlog::logger>& service_logger() const noexcept;

private:
    friend struct detail::background_service_access;
    struct execution;
    std::shared_ptr<execution> execution_;
};

} // namespace hosting
