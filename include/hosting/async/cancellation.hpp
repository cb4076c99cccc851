// Cancellation: std::stop_token is the token; this header adds what the
// standard lacks for asynchronous code.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>
#include <boost/system/system_error.hpp>

#include <chrono>
#include <exception>
#include <initializer_list>
#include <memory>
#include <stop_token>
#include <vector>

namespace hosting {

namespace asio = boost::asio;

// Thrown by hosting's awaitable operations (delay, offload, host::stop(),
// ...) when the token they were given fires, or when the awaiting coroutine
// is cancelled.
//
// The library has one cancellation error: this is a
// boost::system::system_error carrying asio::error::operation_aborted, which
// is what Asio's own operations throw when cancelled, so one
//   catch (const boost::system::system_error& e)
//   { if (e.code() == boost::asio::error::operation_aborted) ... }
// handles a cancelled hosting operation and a cancelled Asio one alike, and
// catching operation_canceled catches only hosting's.
//
// A coroutine that is already cancelled when it reaches a co_await gets
// Asio's own system_error (operation_aborted) from that co_await, before the
// hosting operation even begins (unless it turned
// asio::this_coro::throw_if_cancelled off): the catch above, or
// is_cancellation(), handles both.
class operation_canceled : public boost::system::system_error {
public:
    operation_canceled() : boost::system::system_error(boost::asio::error::operation_aborted, "hosting") {}
};

// True for the exceptions that mean "this was cancelled": a
// boost::system::system_error carrying asio::error::operation_aborted
// (operation_canceled is one). Without a rethrow for those errors under
// libstdc++; other exceptions, or another standard library, cost one.
bool is_cancellation(const std::exception_ptr& error) noexcept;

// A stop_source that is requested as soon as any of the tokens it is linked
// to is requested (or when request_stop() is called on it directly).
// Movable; the links are removed when it is destroyed.
class linked_stop_source {
public:
    linked_stop_source() = default;
    explicit linked_stop_source(std::initializer_list<std::stop_token> tokens);
    explicit linked_stop_source(const std::vector<std::stop_token>& tokens);

    // Links one more token. Thread-safe with respect to the linked tokens
    // firing, not with respect to concurrent calls of link() itself.
    void link(const std::stop_token& token);

    std::stop_token get_token() const noexcept { return source_.get_token(); }
    bool request_stop() noexcept { return source_.request_stop(); }
    bool stop_requested() const noexcept { return source_.stop_requested(); }

private:
    struct forward {
        std::stop_source target;
        void operator()() noexcept { target.request_stop(); }
    };
    std::stop_source source_;
    std::vector<std::unique_ptr<std::stop_callback<forward>>> links_;
};

// A stop_source that requests itself once `timeout` has elapsed on
// steady_clock, measured by a timer on `executor` (so a blocked event loop
// fires it late; the host's shutdown deadline does not rely on this).
// Destroying it cancels the timer; the source itself then never fires by time.
class timed_stop_source {
public:
    timed_stop_source(const asio::any_io_executor& executor,
                      std::chrono::steady_clock::duration timeout);
    ~timed_stop_source();
    timed_stop_source(timed_stop_source&&) noexcept = default;
    timed_stop_source& operator=(timed_stop_source&&) noexcept = default;

    std::stop_token get_token() const noexcept;
    bool request_stop() noexcept;
    bool stop_requested() const noexcept;

private:
    struct state;
    std::shared_ptr<state> state_;
};

namespace detail {
asio::awaitable<void> delay_for(std::chrono::steady_clock::duration duration, std::stop_token token);
}

// Waits for `duration` on the awaiting coroutine's executor.
//
// Completes once the duration has passed. A zero or negative duration
// completes at once, unless the token has already fired.
// Lifetimes: the token is copied at the call and need not outlive the
// operation. It is taken by reference and copied here, outside the caller's
// co_await expression: GCC 12 can destroy a by-value temporary of a
// suspending expression twice (and a stop_token's count with it).
// Executor: the timer runs on the awaiting coroutine's executor, and the
// caller resumes there.
// Cancellation: throws operation_canceled when `token` has fired before the
// wait or fires during it, or when the awaiting coroutine's cancellation
// slot is triggered during the wait (terminal cancellation, under a
// coroutine's default filter: for example at stop, inside
// background_service::execute). A coroutine already cancelled before this
// co_await gets Asio's operation_aborted from the co_await itself (see
// operation_canceled).
// Errors: operation_canceled as above; any other failure of the timer as a
// boost::system::system_error.
// Thread safety: any coroutine may await it; the token may be requested from
// any thread.
template <class Rep, class Period>
asio::awaitable<void> delay(std::chrono::duration<Rep, Period> duration, const std::stop_token& token)
{
    return detail::delay_for(std::chrono::ceil<std::chrono::steady_clock::duration>(duration), token);
}
template <class Rep, class Period>
asio::awaitable<void> delay(std::chrono::duration<Rep, Period> duration)
{
    return detail::delay_for(std::chrono::ceil<std::chrono::steady_clock::duration>(duration), std::stop_token{});
}

} // namespace hosting
