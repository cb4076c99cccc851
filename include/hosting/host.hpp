// host: starts the registered services, waits for a stop, stops them.
#pragma once

#include <hosting/host_builder.hpp>
#include <hosting/hosted_service.hpp>
#include <hosting/lifetime.hpp>
#include <hosting/services.hpp>

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstdint>
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
    service_state state = service_state::not_started;
    std::exception_ptr error;                // set when state is faulted
    std::shared_ptr<hosted_service> service; // the current instance (a restart replaces it)

    // Supervision (see restart_policy in services.hpp).
    std::uint32_t restarts = 0;      // how many times it was re-created and started again
    std::uint32_t faults = 0;        // how many times its execute faulted
    bool restart_pending = false;    // it ended and a restart is scheduled
    bool restarts_exhausted = false; // it ended once more after the restart limit was reached

    // Heartbeats, for a background_service that declared an interval.
    std::chrono::milliseconds heartbeat_interval{0}; // zero: none declared
    std::chrono::steady_clock::time_point last_heartbeat{};
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

    // Starts the services.
    //
    // Completes when every service has started; or, when a stop was
    // requested during the start, once the start in progress has been
    // cancelled (application_started then never fires, and that is not an
    // error). Call it once.
    // Lifetimes: the host must outlive the operation.
    // Executor: the work runs on the host's io_context; the caller resumes
    // on its own executor, which may be anything.
    // Cancellation: by a stop request (stop_application(), a signal), not by
    // the awaiting coroutine's cancellation slot; startup_timeout bounds it.
    // Errors: throws start_failed naming the service when a start() or a
    // lifecycle hook throws, or startup_timeout passes; the services that had
    // started are stopped in reverse order by then, and exit_code() is 1.
    // Thread safety: call it from one thread; stop_application() may be
    // called from any thread meanwhile.
    asio::awaitable<void> start();

    // Stops the services: reverse registration order, or concurrently with
    // services_stop_concurrently.
    //
    // Completes when every started service has stopped, or at the shutdown
    // deadline (shutdown_timeout after the first stop request) with the
    // services that did not stop named in the log. Counts as a stop request
    // itself. Safe to call more than once (later calls wait for the first),
    // before start() (it does nothing) and after a failed start.
    // Lifetimes: the host must outlive the operation.
    // Executor: as start().
    // Cancellation: none; the deadline bounds it. A service that blocks the
    // loop's only thread keeps it from resuming: use stop_blocking() from
    // another thread, or run(), when that must not hang.
    // Errors: never throws for a service's failure; exit_code() is 1 when a
    // stop() threw or a service missed the deadline.
    // Thread safety: as start().
    asio::awaitable<void> stop();

    // Completes when a stop is requested, then stops (like .NET's
    // WaitForShutdownAsync) and returns exit_code(). Executor, lifetimes and
    // errors as stop().
    asio::awaitable<int> wait_for_shutdown();

    // Blocking forms of start() and stop(), for callers that are not
    // coroutines. Without use_io_context they start (and join) the host's
    // worker threads; with it, the program's threads must be running the
    // io_context. Calling them from a thread that runs the host's io_context
    // throws std::logic_error instead of deadlocking. stop_blocking() returns
    // at most 250 ms after the shutdown deadline even when a service blocks
    // the loop: the host's state is then kept in memory rather than freed
    // under the blocked thread.
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
