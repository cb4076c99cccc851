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
// waits until execute has ended or stop's own `cancel` fires. A host does
// the same without awaiting these two coroutines.
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

    // Spawns execute() on the awaiting coroutine's executor.
    //
    // Completes at once, without waiting for execute to run or end.
    // Lifetimes: the service must outlive execute, whose frame holds `this`;
    // `stopping` is execute's own copy.
    // Executor: execute runs on the executor start() is awaited on (under a
    // host, the service's strand); the caller resumes there.
    // Cancellation: `cancel` is not used: there is nothing to wait for.
    // Errors: throws std::logic_error when the service was started before;
    // create a new instance to run it again. How execute ends is not an error
    // of start(): see state() and exception().
    // Thread safety: from any executor; stop() must then be awaited on that
    // same one.
    asio::awaitable<void> start(std::stop_token cancel) final;

    // Requests the `stopping` token, cancels the Asio operation execute is
    // awaiting (terminal cancellation), and waits for execute to end.
    //
    // Completes when execute has ended (state() then says how), or when
    // `cancel` fires first; at once when the service was never started or
    // execute has already ended.
    // Lifetimes: the service must outlive the operation.
    // Executor: the executor start() was awaited on (see Thread safety); the
    // caller resumes there.
    // Cancellation: `cancel` ends the wait without an error, execute possibly
    // still running (state() shows its end later). Cancelling the awaiting
    // coroutine ends the wait too, with Asio's operation_aborted thrown.
    // Errors: none: how execute ended is in state() and exception().
    // Thread safety: only on the executor execute runs on, where the
    // cancellation must be emitted; one stop() at a time.
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

    // The service's work: runs until it returns, throws, or is stopped.
    //
    // An execute that returns normally is simply completed (stopped, if the
    // stop had been requested).
    // Lifetimes: `stopping` is this coroutine's own copy.
    // Executor: runs on the host's io_context, on this service's strand (the
    // executor start() was awaited on, outside a host).
    // Cancellation: at stop, `stopping` is requested and terminal cancellation
    // is emitted on this coroutine, so every Asio operation it awaits is
    // cancelled. Once cancelled, each further co_await inside execute throws
    // at once; cleanup that must await after the stop should first call
    // `co_await asio::this_coro::reset_cancellation_state()`.
    // Errors: an execute that ends with operation_canceled, or with Asio's
    // operation_aborted, after the stop was requested has stopped normally.
    // Any other exception is a fault: it is logged with the service's name
    // and, by default, stops the host
    // (host_options::background_service_exception_behavior).
    // Thread safety: it never runs concurrently with this service's start()
    // and stop(), which run on the same strand.
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
