// offload: run blocking or CPU-heavy work away from the event loop.
#pragma once

#include <hosting/async/cancellation.hpp>

#include <boost/asio/awaitable.hpp>

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace hosting {

// The number of threads of the offload pool: max(2, hardware threads).
std::size_t offload_concurrency() noexcept;

namespace detail {
asio::awaitable<void> offload_erased(std::function<void()> work, std::stop_token token);
}

// Runs `fn()` on the offload pool and returns its result (or rethrows its
// exception) on the awaiting coroutine's executor.
//
// Completes when `fn` has returned or thrown, or earlier when cancelled. The
// pool is process-wide, with max(2, hardware threads) threads, created on
// first use and never destroyed.
// Lifetimes: `fn` is moved into state that the caller and the pool share, and
// is destroyed by whichever lets go of it last: on the caller's side after a
// normal completion, possibly on a pool thread after a cancellation. What
// `fn` refers to must outlive its run, which after a cancellation can go on
// after the caller has resumed: capture by value or by shared_ptr.
// Executor: `fn` runs on a pool thread; the caller resumes on its own
// executor. Until the caller resumes, its io_context counts the operation as
// outstanding work (an `fn` still running after a cancellation no longer
// counts).
// Cancellation: when `token` fires (before or during the operation), or the
// awaiting coroutine's cancellation slot is triggered (terminal cancellation,
// under a coroutine's default filter: for example at stop, inside
// background_service::execute), the caller resumes at once with
// operation_canceled. An `fn` that has not started yet is then never run; one
// that already runs finishes on the pool and its result is dropped. A
// coroutine already cancelled before this co_await gets Asio's
// operation_aborted from the co_await itself (see operation_canceled).
// Errors: rethrows what `fn` throws; operation_canceled as above.
// Thread safety: any coroutine may await it; the token may be requested from
// any thread. `fn` runs concurrently with the caller's loop: what it shares
// with it must be thread-safe.
template <class F>
    requires std::is_invocable_v<F&>
asio::awaitable<std::invoke_result_t<F&>> offload(F fn, std::stop_token token = {})
{
    using result_type = std::invoke_result_t<F&>;
    // The pool may still run fn after the caller is gone: it owns fn and the
    // result slot, never the coroutine frame.
    // The work is a named local, never a temporary inside the co_await
    // expression: GCC 12 may destroy such temporaries twice.
    auto function = std::make_shared<F>(std::move(fn));
    if constexpr (std::is_void_v<result_type>) {
        std::function<void()> work = [function] { (*function)(); };
        co_await detail::offload_erased(std::move(work), std::move(token));
    } else {
        auto result = std::make_shared<std::optional<result_type>>();
        std::function<void()> work = [function, result] { result->emplace((*function)()); };
        co_await detail::offload_erased(std::move(work), std::move(token));
        co_return std::move(**result);
    }
}

} // namespace hosting
