// host: starts the registered services, waits for a stop, stops them.
#pragma once

#include <hosting/host_builder.hpp>
#include <hosting/hosted_service.hpp>
#include <hosting/lifetime.hpp>
#include <hosting/services.hpp>

#include <boost/asio/awaitable.hpp>

#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace hosting {

namespace detail {
class host_core;
}

// Thrown by host::start() when a service fails to start (the message names
// it) or the start times out. The services already started have been stopped
// by then.
class start_failed : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

struct service_status {
    std::string name;
    service_state state;
    std::exception_ptr error; // set when state is faulted
};

class host {
public:
    static host_builder create_builder(int argc = 0, char** argv = nullptr);

    host(host&&) noexcept;
    host& operator=(host&&) noexcept;
    ~host();

    // Starts the services, waits for SIGINT/SIGTERM/SIGQUIT or
    // stop_application() (or, with stop_when_all_background_services_complete,
    // for every background service to end), stops them, and returns the exit
    // code: 0 after a clean stop, 1 when a service failed to start, faulted
    // (with background_service_exception_behavior::stop_host), threw from
    // stop(), or did not stop within shutdown_timeout. Must not be called
    // from a thread that runs the host's io_context.
    int run();

    // Starts the services. Completes when every service has started, or
    // throws start_failed after stopping the ones that had started. A stop
    // requested during the start aborts it without error (application_started
    // then never fires). Runs on the host's io_context whatever the caller's
    // executor is; the caller resumes on its own executor. Call it once.
    asio::awaitable<void> start();

    // Stops the services (reverse order, or concurrently). Completes when all
    // stopped, or at shutdown_timeout with the stragglers named in the log.
    // Never throws for a service's failure: see exit_code(). Safe to call
    // more than once, and after a failed start (it then does nothing).
    asio::awaitable<void> stop();

    // Completes when a stop is requested, then stops (like .NET's
    // WaitForShutdownAsync) and returns exit_code().
    asio::awaitable<int> wait_for_shutdown();

    // Blocking forms of start() and stop(), for callers that are not
    // coroutines. With use_io_context, the program's threads must be running
    // the io_context; calling them from one of those threads throws
    // std::logic_error instead of deadlocking. stop_blocking() returns at
    // most 250 ms after the shutdown deadline even if the loop is blocked.
    void start_blocking();
    void stop_blocking();

    // 0 until something failed; see run().
    int exit_code() const noexcept;

    service_provider& services() noexcept;
    application_lifetime& lifetime() noexcept;

    // A snapshot of every hosted service's state, in registration order.
    // Thread-safe.
    std::vector<service_status> service_statuses() const;

private:
    friend class host_builder;
    explicit host(std::shared_ptr<detail::host_core> core);
    std::shared_ptr<detail::host_core> core_;
};

} // namespace hosting
