#include "core/detail/async_event.hpp"

#include <hosting/async/cancellation.hpp>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace hosting::detail {

void async_event::set()
{
    std::list<std::shared_ptr<waiter>> woken;
    {
        std::lock_guard lock(mutex_);
        if (set_)
            return;
        set_ = true;
        woken.swap(waiters_);
    }
    for (auto& w : woken)
        w->complete({});
}

bool async_event::is_set() const
{
    std::lock_guard lock(mutex_);
    return set_;
}

void async_event::abandon(std::list<std::shared_ptr<waiter>>::iterator it, const std::weak_ptr<waiter>& weak)
{
    std::shared_ptr<waiter> w;
    {
        std::lock_guard lock(mutex_);
        // Gone from the list already when set() took it: it completes
        // normally, and the iterator must not be touched.
        w = weak.lock();
        if (!w || set_)
            return;
        waiters_.erase(it);
    }
    w->complete(asio::error::operation_aborted);
}

asio::awaitable<void> async_event::wait()
{
    boost::system::error_code ec;
    auto token = asio::redirect_error(asio::use_awaitable, ec);
    co_await asio::async_initiate<decltype(token), void(boost::system::error_code)>(
        [this](auto handler) { initiate(std::move(handler)); }, token);
    if (ec)
        throw operation_canceled();
}

} // namespace hosting::detail
