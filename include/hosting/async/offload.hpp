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
// The pool is process-wide, with max(2, hardware threads) threads, created on
// first use. Cancellation: when `token` fires, or the awaiting coroutine is
// cancelled (for example at stop, inside background_service::execute), the
// caller resumes at once with operation_canceled. An `fn` that has not started
// yet is then never run; one that already runs finishes on the pool and its
// result is dropped. `fn` is moved to the pool and destroyed there. While an
// `fn` runs, the caller's io_context counts it as work.
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
