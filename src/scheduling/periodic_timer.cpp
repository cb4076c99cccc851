#include <hosting/scheduling/periodic_timer.hpp>

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "detail/timer_canceller.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace hosting {

namespace {

void check_period(periodic_timer::clock::duration period)
{
    if (period <= periodic_timer::clock::duration::zero())
        throw std::invalid_argument(
            "periodic_timer: period must be positive (got " +
            std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(period).count()) + "ms)");
}

} // namespace

periodic_timer::periodic_timer(asio::any_io_executor executor, clock::duration period, missed_tick_policy policy)
    : periodic_timer(std::move(executor), period, period, policy)
{
}

periodic_timer::periodic_timer(asio::any_io_executor executor, clock::duration period, clock::duration initial_delay,
                               missed_tick_policy policy)
    : timer_(std::make_shared<asio::steady_timer>(std::move(executor))), period_(period), policy_(policy)
{
    check_period(period);
    if (initial_delay < clock::duration::zero())
        throw std::invalid_argument("periodic_timer: initial_delay must not be negative");
    next_slot_ = clock::now() + initial_delay;
}

void periodic_timer::period(clock::duration value)
{
    check_period(value);
    period_ = value;
    // From the last tick, but never in the past: shortening the period
    // must not turn into a burst of catch-up ticks or phantom misses.
    const auto now = clock::now();
    next_slot_ = last_slot_ == clock::time_point{} ? now + value : std::max(last_slot_ + value, now);
    ++generation_;
    // Wakes a waiting next_tick, which then waits for the new slot.
    timer_->cancel();
}

asio::awaitable<bool> periodic_timer::next_tick(std::stop_token token)
{
    std::stop_callback<detail::timer_canceller> on_stop(token, detail::timer_canceller{timer_});

    std::uint64_t skipped = 0;
    for (;;) {
        if (token.stop_requested())
            co_return false;
        auto state = co_await asio::this_coro::cancellation_state;
        if (state.cancelled() != asio::cancellation_type::none)
            co_return false;

        const auto now = clock::now();
        if (now < next_slot_) {
            const auto generation = generation_;
            timer_->expires_at(next_slot_);
            boost::system::error_code ec;
            try {
                co_await timer_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
            } catch (const boost::system::system_error&) {
                co_return false; // cancelled before the wait began
            }
            if (generation != generation_)
                continue; // the period changed: wait for the new slot
            if (ec)
                continue; // cancelled: the checks at the top decide
            // Woken at the slot: fall through, with the slot due.
        }

        // The slot is due (or overdue). Count the slots that passed behind it.
        const auto due = next_slot_;
        const auto late = clock::now() - due;
        const auto behind = static_cast<std::uint64_t>(late / period_); // slots after `due` that passed
        switch (policy_) {
        case missed_tick_policy::skip: {
            // The most recent slot that has passed fires if the timer is
            // less than half a period late for it; otherwise it is missed
            // too and the timer waits for the first slot still ahead.
            const auto recent = due + period_ * static_cast<clock::rep>(behind);
            if (clock::now() - recent > period_ / 2) {
                skipped += behind + 1;
                next_slot_ = recent + period_;
                continue;
            }
            missed_ = skipped + behind;
            last_slot_ = recent;
            next_slot_ = recent + period_;
            co_return true;
        }
        case missed_tick_policy::fire_once:
            missed_ = behind;
            last_slot_ = due + period_ * static_cast<clock::rep>(behind);
            next_slot_ = last_slot_ + period_;
            co_return true;
        case missed_tick_policy::fire_each:
            missed_ = behind;
            last_slot_ = due;
            next_slot_ = due + period_;
            co_return true;
        }
        co_return true;
    }
}

} // namespace hosting
