// host: starts the registered services, waits for a stop, stops them.
#pragma once

#include <hosting/async/cancellation.hpp>
#include <hosting/core/application_lifetime.hpp>
#include <hosting/core/host_builder.hpp>
#include <hosting/core/hosted_service.hpp>
#include <hosting/core/service_status.hpp>
#include <hosting/core/services.hpp>

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <stdexcept>
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
    // error). Call it once (a second call throws std::logic_error).
    // Lifetimes: the host must outlive the operation.
    // Executor: the work runs on the host's io_context; the caller resumes
    // on its own executor, which may be anything.
    // Cancellation: the start itself is cancelled by a stop request
    // (stop_application(), a signal) and bounded by startup_timeout.
    // Cancelling the awaiting coroutine (its cancellation slot, or
    // `co_await (host.start() || timer)`) abandons only this wait: the
    // caller resumes with operation_canceled and the start goes on.
    // Errors: throws start_failed naming the service when a start() or a
    // lifecycle hook throws, or startup_timeout passes; the services that had
    // started are stopped in reverse order by then, and exit_code() is 1.
    // Thread safety: any thread; stop_application() may be called from any
    // thread meanwhile.
    asio::awaitable<void> start();

    // Stops the services: reverse registration order, or concurrently with
    // services_stop_concurrently.
    //
    // Completes when every started service has stopped, or at the shutdown
    // deadline (shutdown_timeout after the first stop request) with the
    // services that did not stop named in the log. Counts as a stop request
    // itself. Safe to call any number of times, from several coroutines and
    // threads at once: there is one stop, and every call completes when it
    // ends. Before start() it only records the request; after a failed
    // start it completes at once.
    // Lifetimes: the host must outlive the operation.
    // Executor: as start().
    // Cancellation: the deadline bounds the stop. Cancelling the awaiting
    // coroutine abandons only this wait (operation_canceled): the stop goes
    // on, and a later stop() or wait_for_shutdown() sees it end. A service
    // that blocks the loop's only thread keeps the caller from resuming
    // when the caller runs on that loop: use stop_blocking() from another
    // thread, or run(), when that must not hang.
    // Errors: never throws for a service's failure; exit_code() is 1 when a
    // stop() threw or a service missed the deadline.
    // Thread safety: any thread.
    asio::awaitable<void> stop();

    // Completes when a stop is requested, then stops (like .NET's
    // WaitForShutdownAsync) and returns exit_code(). Executor, lifetimes,
    // cancellation (of the wait only) and errors as stop().
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

    // A snapshot of every hosted service's state, in start order: registration
    // order, the services registered with starts_first() first.
    // Thread-safe.
    std::vector<service_status> service_statuses() const;

private:
    friend class host_builder;
    explicit host(std::shared_ptr<detail::host_core> core);
    std::shared_ptr<detail::host_core> core_;
};

} // namespace hosting
