// A std::stop_callback target that cancels a timer from any thread.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <memory>

namespace hosting::detail {

// steady_timer is not thread-safe, and a token may fire on any thread: the
// cancel is posted to the timer's executor, and does nothing if the timer is
// gone by then.
struct timer_canceller {
    explicit timer_canceller(const std::shared_ptr<boost::asio::steady_timer>& t)
        : timer(t), executor(t->get_executor())
    {
    }

    void operator()() noexcept
    {
        try {
            boost::asio::post(executor, [t = timer] {
                if (auto alive = t.lock())
                    alive->cancel();
            });
        } catch (...) {
            // post only throws on allocation failure; nothing sane to do here.
        }
    }

    std::weak_ptr<boost::asio::steady_timer> timer;
    boost::asio::any_io_executor executor;
};

} // namespace hosting::detail
