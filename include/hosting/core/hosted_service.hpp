// The hosted-service interfaces: what the host starts and stops.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <stop_token>
#include <string_view>

namespace hosting {

namespace asio = boost::asio;

// A service whose start and stop the host awaits.
//
// The host calls start() and stop() on the service's own strand of the host's
// io_context (so with several worker threads, a service's coroutines never
// run concurrently with each other). Both may throw: a throwing start() fails
// the host's start, a throwing stop() is logged and makes run() return
// non-zero, and the other services are stopped all the same.
class hosted_service {
public:
    virtual ~hosted_service() = default;

    // Like StartAsync: awaited in registration order (or concurrently with
    // host_options::services_start_concurrently) before the next service
    // starts.
    //
    // The service counts as started once it completes without throwing, and
    // only then does the host call stop() on it.
    // Lifetimes: the host owns the service; `cancel` is the coroutine's own
    // copy.
    // Executor: called on the service's own strand of the host's io_context.
    // Cancellation: `cancel` fires when the start is aborted: a stop was
    // requested while starting, or host_options::startup_timeout passed. The
    // host never cancels the coroutine itself (no cancellation slot): a
    // start() that ignores `cancel` is waited for until startup_timeout, or
    // the shutdown deadline after a stop request, and then abandoned.
    // Errors: a throw fails the host's start (start_failed names the
    // service), except operation_canceled or Asio's operation_aborted after a
    // stop was requested, which only ends the start early.
    // Thread safety: never concurrently with this service's other coroutines
    // that the host runs (its strand).
    virtual asio::awaitable<void> start(std::stop_token cancel) = 0;

    // Like StopAsync: awaited in reverse registration order (or concurrently
    // with host_options::services_stop_concurrently).
    //
    // Called only for a service whose start() completed; the service counts
    // as stopped once it completes.
    // Lifetimes: as start().
    // Executor: as start().
    // Cancellation: `cancel` fires at the shutdown deadline
    // (host_options::shutdown_timeout after the first stop request); a stop
    // that has not completed by then is abandoned and named in the log, and
    // run() returns 1. The host never cancels the coroutine itself.
    // Errors: a throw is logged with the service's name, marks the service
    // faulted and makes run() return 1; the other services are stopped all
    // the same.
    // Thread safety: as start().
    virtual asio::awaitable<void> stop(std::stop_token cancel) = 0;
};

// A hosted service with hooks around start and stop (IHostedLifecycleService).
// The host runs every service's starting() before the first start(), every
// started() after the last start(), and mirrors that on stop: stopping() of
// all, then stop() of each, then stopped() of all (in reverse order).
class hosted_lifecycle_service : public hosted_service {
public:
    virtual asio::awaitable<void> starting(std::stop_token) { co_return; }
    virtual asio::awaitable<void> started(std::stop_token) { co_return; }
    virtual asio::awaitable<void> stopping(std::stop_token) { co_return; }
    virtual asio::awaitable<void> stopped(std::stop_token) { co_return; }
};

// Where a hosted service is in its life, as the host sees it.
enum class service_state {
    not_started, // start() has not been called yet
    starting,    // start() is running
    running,     // start() completed (and, for a background_service, execute runs)
    stopping,    // stop() is running
    stopped,     // stop() completed, or execute ended because of the stop
    completed,   // a background_service's execute returned by itself
    faulted,     // start(), stop() or execute threw; see the stored exception
};

std::string_view to_string(service_state state) noexcept;

} // namespace hosting
