#include <hosting/scheduling/cron_service.hpp>

#include "scheduling/detail/tick_runner.hpp"

namespace hosting {

using detail::ms;
using detail::steady;
using detail::system;
using detail::to_system;

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
