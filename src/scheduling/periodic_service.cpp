#include <hosting/scheduling/periodic_service.hpp>

#include "scheduling/detail/tick_runner.hpp"

namespace hosting {

using detail::ms;
using detail::steady;
using detail::system;
using detail::to_system;

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

} // namespace hosting
