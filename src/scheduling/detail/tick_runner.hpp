// Runs the ticks of a periodic_service or a cron_service.
#pragma once

#include <hosting/async/cancellation.hpp>
#include <hosting/scheduling/periodic_service.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/logger.h>

#include "detail/describe.hpp"

#include <algorithm>
#include <functional>
#include <list>
#include <mutex>
#include <random>
#include <stdexcept>

namespace hosting::detail {

using steady = std::chrono::steady_clock;
using system = std::chrono::system_clock;

inline std::string ms(steady::duration d)
{
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

inline system::time_point to_system(steady::time_point t)
{
    return system::now() + std::chrono::duration_cast<system::duration>(t - steady::now());
}


// Runs the ticks of one scheduled service: the overlap limit, the exception
// policy, and the status. Lives on the service's strand, except status().
class tick_runner : public std::enable_shared_from_this<tick_runner> {
public:
    using tick_fn = std::function<asio::awaitable<void>(std::stop_token)>;

    tick_runner(tick_exception_policy policy, std::size_t max_concurrent, steady::duration late_after)
        : policy_(policy), max_concurrent_(max_concurrent), late_after_(late_after)
    {
    }

    // Runs one tick for the slot `scheduled`: awaited when ticks never
    // overlap, spawned otherwise (or skipped at the limit).
    struct identity {
        std::string name;
        std::shared_ptr<spdlog::logger> log; // may be null outside a host
    };

    asio::awaitable<void> run(const tick_fn& tick, std::stop_token stopping, steady::time_point scheduled,
                              const identity& who)
    {
        const auto started = steady::now();
        const auto lateness = std::max(steady::duration::zero(), started - scheduled);
        if (max_concurrent_ > 1 && running_ >= max_concurrent_) {
            std::lock_guard lock(mutex_);
            ++status_.skipped_overlaps;
            co_return;
        }
        {
            std::lock_guard lock(mutex_);
            ++status_.ticks;
            status_.last_start = system::now();
        }
        if (max_concurrent_ == 1) {
            std::exception_ptr error;
            try {
                co_await tick(stopping);
            } catch (...) {
                error = std::current_exception();
            }
            if (finish(error, started, lateness, stopping, who) && policy_ == tick_exception_policy::fault_service)
                std::rethrow_exception(error);
            co_return;
        }
        auto executor = co_await asio::this_coro::executor;
        ++running_;
        auto slot = signals_.emplace(signals_.end());
        auto on_end = [self = shared_from_this(), slot, started, lateness, stopping,
                       who](std::exception_ptr error) {
            bool failed = self->finish(error, started, lateness, stopping, who);
            self->signals_.erase(slot);
            --self->running_;
            if (failed && self->policy_ == tick_exception_policy::fault_service && !self->fault_) {
                self->fault_ = error;
                self->fault_source_.request_stop();
            }
            if (self->running_ == 0 && self->drained_)
                self->drained_->cancel();
        };
        asio::co_spawn(executor, tick(stopping), asio::bind_cancellation_slot(slot->slot(), std::move(on_end)));
    }

    // At stop: cancels the ticks still running and waits for them to end.
    // The caller must have reset its own cancellation state.
    asio::awaitable<void> drain()
    {
        for (auto& signal : signals_)
            signal.emit(asio::cancellation_type::terminal);
        if (running_ == 0)
            co_return;
        drained_.emplace(co_await asio::this_coro::executor, steady::time_point::max());
        while (running_ > 0) {
            boost::system::error_code ec;
            co_await drained_->async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
        drained_.reset();
    }

    void missed(std::uint64_t n)
    {
        std::lock_guard lock(mutex_);
        status_.missed += n;
    }

    void next_due(std::optional<system::time_point> when)
    {
        std::lock_guard lock(mutex_);
        status_.next_due = when;
    }

    schedule_status status() const
    {
        std::lock_guard lock(mutex_);
        return status_;
    }

    // Requested when a concurrent tick faults the service.
    std::stop_token fault_token() const noexcept { return fault_source_.get_token(); }
    std::exception_ptr fault() const noexcept { return fault_; }

private:
    // Records how a tick ended; true when it failed (not a cancellation at stop).
    bool finish(const std::exception_ptr& error, steady::time_point started, steady::duration lateness,
                const std::stop_token& stopping, const identity& who)
    {
        tick_outcome outcome;
        outcome.lateness = std::chrono::duration_cast<std::chrono::milliseconds>(lateness);
        outcome.late = lateness > late_after_;
        bool failed = false;
        if (!error) {
            outcome.result = tick_result::succeeded;
        } else if (stopping.stop_requested() && is_cancellation(error)) {
            outcome.result = tick_result::canceled;
        } else {
            outcome.result = tick_result::failed;
            outcome.error = detail::describe(error);
            failed = true;
        }
        if (outcome.late && who.log)
            who.log->warn("Tick of '{}' started {} late", who.name, ms(lateness));
        if (failed && policy_ == tick_exception_policy::log_and_continue && who.log)
            who.log->error("Tick of '{}' failed: {}", who.name, outcome.error);
        std::lock_guard lock(mutex_);
        status_.last_duration = steady::now() - started;
        if (failed)
            ++status_.failures;
        status_.last_outcome = std::move(outcome);
        return failed;
    }

    const tick_exception_policy policy_;
    const std::size_t max_concurrent_;
    const steady::duration late_after_;

    mutable std::mutex mutex_;
    schedule_status status_;

    std::size_t running_ = 0;                      // strand only
    std::list<asio::cancellation_signal> signals_; // strand only: one per running concurrent tick
    std::optional<asio::steady_timer> drained_;    // strand only
    std::stop_source fault_source_;
    std::exception_ptr fault_;                     // strand only
};

} // namespace hosting::detail
