#include <hosting/async/offload.hpp>

#include "detail/keep_alive.hpp"
#include "detail/remote_completion.hpp"

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/query.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <optional>
#include <thread>

namespace hosting::detail {
namespace {

std::size_t pool_size() noexcept { return std::max(2u, std::thread::hardware_concurrency()); }

asio::thread_pool& offload_pool()
{
    // Never destroyed: joining it at exit would hang on an fn that blocks,
    // and the threads are gone with the process anyway.
    static auto* pool = new asio::thread_pool(pool_size());
    return *pool;
}

// Whoever drops the last reference to an op may be any thread, after the
// caller's context is gone. So the op holds the caller's executors only
// until finish(), which runs on the caller's side, and other threads read
// them under the context's liveness mutex (see remote_completion).
template <class Handler>
struct offload_op {
    std::atomic<bool> done{false};
    std::function<void()> work;     // touched by the pool only
    std::optional<Handler> handler; // by the claimer of `done`
    asio::any_io_executor executor; // where the caller resumes; under liveness->mutex
    std::optional<asio::any_io_executor> tracked; // keeps the caller's loop running
    asio::cancellation_slot slot;
    std::shared_ptr<context_liveness> liveness;

    struct on_stop {
        std::weak_ptr<offload_op> op;
        void operator()() noexcept { post_finish(op.lock()); }
    };
    // Installed by the initiating thread while a fired token may already have
    // sent finish() to another of the caller's threads.
    std::mutex stop_callback_mutex;
    std::unique_ptr<std::stop_callback<on_stop>> stop_callback;

    static void post_finish(std::shared_ptr<offload_op> op) noexcept
    {
        if (!op)
            return;
        auto live = op->liveness;
        std::lock_guard lock(live->mutex);
        if (!live->alive || op->done.load())
            return;
        try {
            asio::any_io_executor ex = op->executor;
            asio::post(ex, [op = std::move(op)] { op->finish(std::make_exception_ptr(operation_canceled())); });
        } catch (...) {
        }
    }

    // Runs on `executor`; the first caller wins, later ones do nothing.
    void finish(std::exception_ptr error)
    {
        if (done.exchange(true))
            return;
        if (slot.is_connected())
            slot.clear();
        {
            // Destroyed outside both mutexes: it waits for an on_stop
            // running now, which takes the liveness mutex.
            std::unique_ptr<std::stop_callback<on_stop>> callback;
            {
                std::lock_guard lock(stop_callback_mutex);
                callback = std::move(stop_callback);
            }
        }
        auto h = std::move(*handler);
        handler.reset();
        asio::any_io_executor ex; // destroyed here, on the caller's side
        {
            std::lock_guard lock(liveness->mutex);
            ex = std::move(executor);
            executor = asio::any_io_executor();
        }
        tracked.reset();
        std::move(h)(error);
    }
};

} // namespace

asio::awaitable<void> offload_erased(std::function<void()> work, std::stop_token token)
{
    if (token.stop_requested())
        throw operation_canceled();
    auto executor = co_await asio::this_coro::executor;
    auto liveness = liveness_of(asio::query(executor, asio::execution::context));

    try {
        co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
            [&](auto handler) {
                using op_type = offload_op<decltype(handler)>;
                auto op = std::make_shared<op_type>();
                op->work = std::move(work);
                op->executor = asio::get_associated_executor(handler, executor);
                op->tracked.emplace(asio::prefer(executor, asio::execution::outstanding_work.tracked));
                op->slot = asio::get_associated_cancellation_slot(handler);
                op->liveness = liveness;
                op->handler.emplace(std::move(handler));
                if (op->slot.is_connected()) {
                    std::weak_ptr<op_type> weak = op;
                    op->slot.assign([weak](asio::cancellation_type) { op_type::post_finish(weak.lock()); });
                }
                // A token that already fired calls on_stop right here.
                auto callback = std::make_unique<std::stop_callback<typename op_type::on_stop>>(
                    token, typename op_type::on_stop{op});
                {
                    std::lock_guard lock(op->stop_callback_mutex);
                    // finish() ran already: it will not reset it, so it goes now.
                    if (!op->done.load())
                        op->stop_callback = std::move(callback);
                }

                asio::post(offload_pool(), [op]() mutable {
                    if (op->done.load()) { // cancelled before it started: never run
                        op->work = nullptr;
                        return;
                    }
                    std::exception_ptr error;
                    try {
                        op->work();
                    } catch (...) {
                        error = std::current_exception();
                    }
                    op->work = nullptr;
                    auto liveness = op->liveness;
                    std::lock_guard lock(liveness->mutex);
                    if (op->done.load()) {
                        // Cancelled while it ran: the caller has resumed, and
                        // finish() took the executors back to its side.
                    } else if (liveness->alive) {
                        // The op and the exception move to the caller's side,
                        // and the executor copy dies under the lock: the
                        // caller may destroy its context as soon as it has
                        // resumed, and the last owner of a strand must not be
                        // a pool thread (see remote_completion).
                        asio::any_io_executor executor = op->executor;
                        asio::post(executor, [op = std::move(op), error = std::move(error)] { op->finish(error); });
                    } else {
                        // The loop is gone; its executors must not be touched,
                        // not even by a destructor. Only after a host gave up
                        // on a blocked loop at its deadline.
                        keep_alive_forever(std::move(op));
                    }
                });
            },
            asio::use_awaitable);
    } catch (const boost::system::system_error& e) {
        // The coroutine was already cancelled when it reached the co_await.
        if (e.code() == asio::error::operation_aborted)
            throw operation_canceled();
        throw;
    }
}

} // namespace hosting::detail

namespace hosting {
std::size_t offload_concurrency() noexcept { return detail::pool_size(); }
} // namespace hosting
