// periodic_timer: "every X", on steady_clock, honest about missed ticks.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>

namespace hosting {

namespace asio = boost::asio;

// What a timer does about slots that passed while nobody was waiting (the
// loop was busy, or the previous tick ran long).
enum class missed_tick_policy {
    skip,      // missed slots never fire: the timer waits for the next slot still ahead (a
               // slot counts as missed once the timer is half a period late for it)
    fire_once, // fire at once, a single time for all the missed slots (.NET's PeriodicTimer)
    fire_each, // fire at once for each missed slot, one per next_tick(), until caught up
};

// Ticks at fixed-rate slots: start + initial_delay + k * period, measured on
// steady_clock, so a wall-clock change never stretches or shrinks it.
//
//   hosting::periodic_timer timer(co_await asio::this_coro::executor, 1min);
//   while (co_await timer.next_tick(stopping))
//       co_await refresh();
//
// Not thread-safe: use it from its executor only (a background_service's
// own strand, typically).
class periodic_timer {
public:
    using clock = std::chrono::steady_clock;

    // Throws std::invalid_argument for a period that is not positive or a
    // negative initial delay. The first slot is initial_delay from now
    // (one period when not given).
    periodic_timer(asio::any_io_executor executor, clock::duration period,
                   missed_tick_policy policy = missed_tick_policy::skip);
    periodic_timer(asio::any_io_executor executor, clock::duration period, clock::duration initial_delay,
                   missed_tick_policy policy = missed_tick_policy::skip);

    // Waits for the next slot (or fires at once for missed ones, per the
    // policy).
    //
    // Completes with true on a tick (scheduled_time() and missed_ticks() then
    // describe it); with false when cancelled, so that
    // `while (co_await timer.next_tick(t))` ends cleanly. A period() change
    // during the wait is taken into account at once.
    // Lifetimes: the timer must outlive the operation; the token is copied.
    // Executor: the timer runs on the executor given to the constructor; the
    // caller resumes on its own executor, which must be that one (see Thread
    // safety).
    // Cancellation: completes with false when `token` has fired or fires
    // during the wait (from any thread), or when the awaiting coroutine's
    // cancellation slot is triggered (terminal cancellation, under a
    // coroutine's default filter: at stop, inside background_service::execute).
    // A coroutine already cancelled before this co_await gets Asio's
    // operation_aborted from the co_await itself (see operation_canceled),
    // which background_service::execute may let through: it counts as a stop.
    // Errors: none of its own.
    // Thread safety: from the timer's executor only, like the rest of the
    // timer; one wait at a time.
    asio::awaitable<bool> next_tick(std::stop_token token = {});

    // Changes the period from now on: the next slot becomes the last slot
    // plus the new period, or now when that has already passed (now plus the
    // period before the first tick). A next_tick() that is waiting picks it
    // up at once. Throws std::invalid_argument when not positive.
    void period(clock::duration value);
    clock::duration period() const noexcept { return period_; }

    missed_tick_policy policy() const noexcept { return policy_; }

    // About the last tick: the slot it was for, and how many slots were
    // missed before it (skipped, or folded into it by fire_once; with
    // fire_each, how many are still to be caught up).
    clock::time_point scheduled_time() const noexcept { return last_slot_; }
    std::uint64_t missed_ticks() const noexcept { return missed_; }
    // When the next slot is due.
    clock::time_point next_due() const noexcept { return next_slot_; }

private:
    // Shared so that a wake-up posted by a token firing on another thread
    // can tell the timer is gone.
    std::shared_ptr<asio::steady_timer> timer_;
    clock::duration period_;
    missed_tick_policy policy_;
    clock::time_point last_slot_{};
    clock::time_point next_slot_;
    std::uint64_t missed_ = 0;
    std::uint64_t generation_ = 0; // bumped by period(): a waiting next_tick re-reads the slot
};

} // namespace hosting
