#include <hosting/offload.hpp>

#include "keep_alive.hpp"

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

// Tells pool threads whether the caller's execution context still exists, so
// a result is never posted to a destroyed io_context. One per context.
struct context_liveness {
    std::mutex mutex;
    bool alive = true;
};

class liveness_service : public asio::execution_context::service {
public:
    static asio::execution_context::id id;

    explicit liveness_service(asio::execution_context& owner)
        : asio::execution_context::service(owner), liveness(std::make_shared<context_liveness>())
    {
    }

    void shutdown() override
    {
        std::lock_guard lock(liveness->mutex);
        liveness->alive = false;
    }

    std::shared_ptr<context_liveness> liveness;
};

asio::execution_context::id liveness_service::id;

template <class Handler>
struct offload_op {
    std::atomic<bool> done{false};
    std::function<void()> work;     // touched by the pool only
    std::optional<Handler> handler; // by the claimer of `done`
    asio::any_io_executor executor;                              // where the caller resumes
    std::optional<asio::any_io_executor> tracked;                // keeps the caller's loop running
    asio::cancellation_slot slot;
    std::shared_ptr<context_liveness> liveness;

    struct on_stop {
        std::weak_ptr<offload_op> op;
        void operator()() noexcept { post_finish(op.lock()); }
    };
    std::unique_ptr<std::stop_callback<on_stop>> stop_callback;

    static void post_finish(const std::shared_ptr<offload_op>& op) noexcept
    {
        if (!op || op->done.load())
            return;
        try {
            asio::post(op->executor, [op] { op->finish(std::make_exception_ptr(operation_canceled())); });
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
        stop_callback.reset();
        auto h = std::move(*handler);
        handler.reset();
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
    auto& liveness = asio::use_service<liveness_service>(asio::query(executor, asio::execution::context));

    try {
        co_await asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr)>(
            [&](auto handler) {
                using op_type = offload_op<decltype(handler)>;
                auto op = std::make_shared<op_type>();
                op->work = std::move(work);
                op->executor = asio::get_associated_executor(handler, executor);
                op->tracked.emplace(asio::prefer(executor, asio::execution::outstanding_work.tracked));
                op->slot = asio::get_associated_cancellation_slot(handler);
                op->liveness = liveness.liveness;
                op->handler.emplace(std::move(handler));
                if (op->slot.is_connected()) {
                    std::weak_ptr<op_type> weak = op;
                    op->slot.assign([weak](asio::cancellation_type) { op_type::post_finish(weak.lock()); });
                }
                // A token that already fired calls on_stop right here.
                op->stop_callback = std::make_unique<std::stop_callback<typename op_type::on_stop>>(
                    token, typename op_type::on_stop{op});

                asio::post(offload_pool(), [op] {
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
                    std::lock_guard lock(op->liveness->mutex);
                    if (op->liveness->alive)
                        // Moved, so the exception dies on the caller's side:
                        // its last owner must not be a pool thread that the
                        // caller never synchronises with.
                        asio::post(op->executor, [op, error = std::move(error)] { op->finish(error); });
                    else
                        // The loop is gone; its executors must not be touched,
                        // not even by a destructor. Only after a host gave up
                        // on a blocked loop at its deadline.
                        keep_alive_forever(op);
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
