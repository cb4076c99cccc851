#include <hosting/cancellation.hpp>
#include <hosting/cron_service.hpp>
#include <hosting/periodic_service.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/logger.h>

#include "describe.hpp"

#include <algorithm>
#include <functional>
#include <list>
#include <mutex>
#include <random>
#include <stdexcept>

namespace hosting {

namespace {

using steady = std::chrono::steady_clock;
using system = std::chrono::system_clock;

std::string ms(steady::duration d)
{
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
}

system::time_point to_system(steady::time_point t)
{
    return system::now() + std::chrono::duration_cast<system::duration>(t - steady::now());
}

} // namespace

namespace detail {

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

} // namespace detail

// ---------------------------------------------------------------------------
// periodic_service

void periodic_options::validate() const
{
    if (interval <= steady::duration::zero())
        throw std::invalid_argument("periodic_options: interval must be positive (got " + ms(interval) + ")");
    if (initial_delay < steady::duration::zero())
        throw std::invalid_argument("periodic_options: initial_delay must not be negative (got " +
                                    ms(initial_delay) + ")");
    if (jitter < steady::duration::zero() || jitter >= interval)
        throw std::invalid_argument("periodic_options: jitter must be at least 0 and less than interval (got " +
                                    ms(jitter) + " for an interval of " + ms(interval) + ")");
    if (max_concurrent_ticks == 0)
        throw std::invalid_argument("periodic_options: max_concurrent_ticks must be at least 1 (got 0)");
    if (mode == schedule_mode::fixed_delay && max_concurrent_ticks != 1)
        throw std::invalid_argument("periodic_options: fixed_delay needs max_concurrent_ticks == 1 (got " +
                                    std::to_string(max_concurrent_ticks) + ")");
    if (late_after < steady::duration::zero())
        throw std::invalid_argument("periodic_options: late_after must not be negative");
}

periodic_service::periodic_service(periodic_options options) : options_(options)
{
    options_.validate();
    runner_ = std::make_shared<detail::tick_runner>(options_.on_exception, options_.max_concurrent_ticks,
                                                    options_.late_after);
}

periodic_service::~periodic_service() = default;

schedule_status periodic_service::status() const { return runner_->status(); }

asio::awaitable<void> periodic_service::execute(std::stop_token stopping)
{
    auto executor = co_await asio::this_coro::executor;
    // Named, not built inside a co_await expression (GCC 12 would destroy
    // the temporary twice).
    const detail::tick_runner::tick_fn body = [this](std::stop_token t) { return tick(t); };
    const detail::tick_runner::identity who{service_name(), service_logger()};
    // Ticks stop at the host's stop, or when a concurrent tick faulted the
    // service: either way they end as cancelled, not failed.
    linked_stop_source until{stopping, runner_->fault_token()};
    const std::stop_token ticking = until.get_token();
    std::mt19937_64 random{std::random_device{}()};
    auto jitter = [&]() -> steady::duration {
        if (options_.jitter <= steady::duration::zero())
            return {};
        std::uniform_int_distribution<steady::rep> pick(0, options_.jitter.count() - 1);
        return steady::duration(pick(random));
    };

    try {
        if (options_.mode == schedule_mode::fixed_rate) {
            periodic_timer timer(executor, options_.interval, options_.initial_delay, options_.missed_ticks);
            runner_->next_due(to_system(timer.next_due()));
            while (co_await timer.next_tick(ticking)) {
                // With fire_each every slot fires, late or not: none is missed.
                if (options_.missed_ticks != missed_tick_policy::fire_each)
                    runner_->missed(timer.missed_ticks());
                runner_->next_due(to_system(timer.next_due()));
                // Jitter is on purpose: it does not make a tick late.
                auto scheduled = timer.scheduled_time();
                if (auto j = jitter(); j > steady::duration::zero()) {
                    scheduled += j;
                    co_await delay(j, ticking);
                }
                co_await runner_->run(body, ticking, scheduled, who);
            }
        } else {
            auto scheduled = steady::now() + options_.initial_delay;
            runner_->next_due(to_system(scheduled));
            co_await delay(options_.initial_delay, ticking);
            for (;;) {
                if (auto j = jitter(); j > steady::duration::zero()) {
                    scheduled += j;
                    co_await delay(j, ticking);
                }
                co_await runner_->run(body, ticking, scheduled, who);
                scheduled = steady::now() + options_.interval;
                runner_->next_due(to_system(scheduled));
                co_await delay(options_.interval, ticking);
            }
        }
    } catch (...) {
        if (!is_cancellation(std::current_exception()) || !ticking.stop_requested())
            throw;
    }
    // Stopping (or faulted by a concurrent tick): end the ticks still running.
    co_await asio::this_coro::reset_cancellation_state();
    co_await runner_->drain();
    if (auto fault = runner_->fault())
        std::rethrow_exception(fault);
}

// ---------------------------------------------------------------------------
// cron_service

namespace {

cron_options checked(cron_options options)
{
    if (options.max_concurrent_ticks == 0)
        throw std::invalid_argument("cron_options: max_concurrent_ticks must be at least 1 (got 0)");
    if (options.late_after < steady::duration::zero())
        throw std::invalid_argument("cron_options: late_after must not be negative");
    return options;
}

// Longest single wait: the system clock is re-read this often, so a
// wall-clock change moves the next tick with it.
constexpr auto recheck = std::chrono::minutes(1);

std::string utc_text(system::time_point t)
{
    auto s = system::to_time_t(t);
    std::tm tm{};
    gmtime_r(&s, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

} // namespace

cron_service::cron_service(cron_options options)
    : options_(checked(std::move(options))),
      expression_(cron_expression::parse(options_.expression)),
      zone_(time_zone::locate(options_.time_zone)),
      runner_(std::make_shared<detail::tick_runner>(options_.on_exception, options_.max_concurrent_ticks,
                                                    options_.late_after))
{
}

cron_service::~cron_service() = default;

schedule_status cron_service::status() const { return runner_->status(); }

asio::awaitable<void> cron_service::execute(std::stop_token stopping)
{
    const detail::tick_runner::tick_fn body = [this](std::stop_token t) { return tick(t); };
    const detail::tick_runner::identity who{service_name(), service_logger()};
    linked_stop_source until{stopping, runner_->fault_token()};
    const std::stop_token waiting = until.get_token();
    std::optional<system::time_point> last;
    try {
        for (;;) {
            const auto now = system::now();
            auto from = last ? std::max(*last, now) : now;
            auto next = expression_.next(from, zone_);
            if (last) {
                // Occurrences that passed while the previous tick ran.
                std::uint64_t missed = 0;
                for (auto t = expression_.next(*last, zone_); t && *t < from && missed < 100000;
                     t = expression_.next(*t, zone_))
                    ++missed;
                if (missed)
                    runner_->missed(missed);
            }
            runner_->next_due(next);
            if (!next) {
                if (who.log)
                    who.log->warn("'{}' has no further occurrence; the service completes", options_.expression);
                break; // through the drain below: ticks may still run
            }
            if (who.log)
                who.log->debug("Next occurrence of '{}' ({}) at {}", options_.expression, options_.time_zone,
                           utc_text(*next));
            for (auto left = *next - system::now(); left > system::duration::zero(); left = *next - system::now()) {
                if (waiting.stop_requested())
                    break;
                const system::duration step = std::min<system::duration>(left, recheck);
                co_await delay(step, waiting);
            }
            if (until.stop_requested())
                break;
            const auto late_by = std::chrono::duration_cast<steady::duration>(system::now() - *next);
            const auto scheduled = steady::now() - late_by;
            co_await runner_->run(body, waiting, scheduled, who);
            last = next;
        }
    } catch (...) {
        if (!is_cancellation(std::current_exception()) || !until.stop_requested())
            throw;
    }
    co_await asio::this_coro::reset_cancellation_state();
    co_await runner_->drain();
    if (auto fault = runner_->fault())
        std::rethrow_exception(fault);
}

} // namespace hosting
