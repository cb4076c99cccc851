// An event that coroutines on any executor and threads can wait for.
#pragma once

#include "detail/remote_completion.hpp"

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/error.hpp>

#include <list>
#include <memory>
#include <mutex>

namespace hosting::detail {

// Set once, from any thread; each waiter then resumes on its own executor.
// A waiter whose coroutine is cancelled resumes at once with
// operation_canceled and leaves the event (and whatever sets it) alone:
// cancelling a wait for the host's stop must never cancel the stop.
class async_event {
public:
    async_event() = default;
    async_event(const async_event&) = delete;
    async_event& operator=(const async_event&) = delete;

    void set();
    bool is_set() const;

    // Completes once the event is set. Throws operation_canceled when the
    // awaiting coroutine is cancelled first. The event must outlive it.
    asio::awaitable<void> wait();

private:
    struct waiter {
        virtual ~waiter() = default;
        virtual void complete(boost::system::error_code ec) = 0;
    };

    template <class Handler>
    void initiate(Handler handler)
    {
        struct holder final : waiter {
            explicit holder(Handler h) : completion(std::move(h)) {}
            void complete(boost::system::error_code ec) override { completion.complete(ec); }
            remote_completion<Handler, boost::system::error_code> completion;
        };
        auto slot = asio::get_associated_cancellation_slot(handler);
        auto w = std::make_shared<holder>(std::move(handler));
        {
            std::lock_guard lock(mutex_);
            if (!set_) {
                auto it = waiters_.insert(waiters_.end(), w);
                if (slot.is_connected())
                    slot.assign([this, it, weak = std::weak_ptr<waiter>(w)](asio::cancellation_type) {
                        abandon(it, weak);
                    });
                return;
            }
        }
        w->complete({});
    }
    void abandon(std::list<std::shared_ptr<waiter>>::iterator it, const std::weak_ptr<waiter>& weak);

    mutable std::mutex mutex_;
    bool set_ = false;
    std::list<std::shared_ptr<waiter>> waiters_;
};

} // namespace hosting::detail
