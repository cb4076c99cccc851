// cron_service: a background_service that runs tick() at each occurrence of
// a cron expression in a time zone.
#pragma once

#include <hosting/core/background_service.hpp>
#include <hosting/scheduling/cron.hpp>
#include <hosting/scheduling/periodic_service.hpp>

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <stop_token>
#include <string>

namespace hosting {

struct cron_options {
    std::string expression;           // see cron_expression
    std::string time_zone = "Etc/UTC"; // an IANA name
    // As in periodic_options: 1 never overlaps (an occurrence that passes
    // while a tick still runs is missed and counted), more runs ticks
    // concurrently up to the limit.
    std::size_t max_concurrent_ticks = 1;
    tick_exception_policy on_exception = tick_exception_policy::log_and_continue;
    // A tick starting later than this after its occurrence is reported late.
    std::chrono::steady_clock::duration late_after = std::chrono::seconds(1);
};

// Subclass it and implement tick():
//
//   class nightly_cleanup : public hosting::cron_service {
//   public:
//       nightly_cleanup() : cron_service({.expression = "30 2 * * *", .time_zone = "Europe/Berlin"}) {}
//   protected:
//       asio::awaitable<void> tick(std::stop_token stopping) override { ... }
//   };
//
// Occurrences follow cron_expression's rules, daylight-saving time included;
// the wait follows the system clock, re-checked at least every minute, so a
// wall-clock change moves the next tick with it. Occurrences that pass while
// nothing waits for them (the host was down, busy, or the previous tick ran
// long) are not caught up: they are counted as missed. The next occurrence is
// logged at debug.
class cron_service : public background_service {
public:
    // Throws cron_parse_error or unknown_time_zone, naming what is wrong.
    explicit cron_service(cron_options options);
    ~cron_service() override;

    const cron_options& options() const noexcept { return options_; }
    const cron_expression& expression() const noexcept { return expression_; }
    schedule_status status() const;

protected:
    virtual asio::awaitable<void> tick(std::stop_token stopping) = 0;

private:
    asio::awaitable<void> execute(std::stop_token stopping) final;

    cron_options options_;
    cron_expression expression_;
    time_zone zone_;
    std::shared_ptr<detail::tick_runner> runner_;
};

} // namespace hosting
