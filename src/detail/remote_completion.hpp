// Completing an asynchronous operation from a thread the caller does not own.
#pragma once

#include "detail/keep_alive.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/execution/context.hpp>
#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/asio/query.hpp>

#include <memory>
#include <mutex>
#include <optional>
#include <tuple>
#include <utility>

namespace hosting::detail {

namespace asio = boost::asio;

// Whether an execution context still exists, for threads that post to it.
// The context's shutdown takes the mutex, so a thread that holds it and
// sees `alive` may touch the context's executors until it lets go.
struct context_liveness {
    std::mutex mutex;
    bool alive = true;
};

// One per execution context, made on first use.
std::shared_ptr<context_liveness> liveness_of(asio::execution_context& context);

// Holds a handler on behalf of another thread (a pool, the jobs storage
// thread) and delivers one completion to the handler's executor.
//
// The caller may destroy its io_context as soon as its handler has run, and
// a strand executor, or a handler holding one, must not be destroyed after
// its context. So everything that belongs to the caller moves into the
// posted function, under the context's liveness mutex: after complete(),
// the completing thread holds nothing of the caller's. If the context is
// already gone, the handler is kept, never destroyed.
template <class Handler, class... Args>
class remote_completion {
public:
    explicit remote_completion(Handler handler)
        : work_(asio::prefer(asio::get_associated_executor(handler), asio::execution::outstanding_work.tracked)),
          liveness_(liveness_of(asio::query(*work_, asio::execution::context))),
          handler_(std::move(handler))
    {
    }

    remote_completion(const remote_completion&) = delete;
    remote_completion& operator=(const remote_completion&) = delete;

    // Never completed (its thread dropped it): the handler is still destroyed
    // on the caller's side, without being called, as Asio does with the
    // handlers of operations that will never complete.
    ~remote_completion()
    {
        std::lock_guard lock(liveness_->mutex);
        if (!handler_ || keep_if_gone())
            return;
        asio::any_io_executor executor = asio::get_associated_executor(*handler_, *work_);
        try {
            asio::post(executor, [handler = std::move(*handler_), work = std::move(*work_)] {});
        } catch (...) {
        }
    }

    // Once, from any thread.
    void complete(Args... args)
    {
        auto liveness = liveness_;
        std::lock_guard lock(liveness->mutex);
        if (!handler_)
            return; // completed already
        if (keep_if_gone())
            return;
        // A copy, destroyed before the lock is released: the function below
        // may run, and the caller finish, before post() returns.
        asio::any_io_executor executor = asio::get_associated_executor(*handler_, *work_);
        asio::post(executor, [handler = std::move(*handler_), work = std::move(*work_),
                              args = std::make_tuple(std::move(args)...)]() mutable {
            std::apply([&](auto&&... a) { std::move(handler)(std::move(a)...); }, std::move(args));
        });
        handler_.reset();
        work_.reset();
    }

private:
    // With the mutex held: a caller's context that is gone must not see its
    // executors touched, not even by a destructor.
    bool keep_if_gone()
    {
        if (liveness_->alive)
            return false;
        keep_alive_forever(
            std::make_shared<std::tuple<Handler, asio::any_io_executor>>(std::move(*handler_), std::move(*work_)));
        handler_.reset();
        work_.reset();
        return true;
    }

    std::optional<asio::any_io_executor> work_; // keeps the caller's context running
    std::shared_ptr<context_liveness> liveness_;
    std::optional<Handler> handler_;
};

} // namespace hosting::detail
