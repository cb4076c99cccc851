// periodic_service: a background_service that runs tick() on a schedule.
#pragma once

#include <hosting/core/background_service.hpp>
#include <hosting/scheduling/periodic_timer.hpp>

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>

namespace hosting {

// What a tick that throws does.
enum class tick_exception_policy {
    log_and_continue, // log it at error with the service's name; the next tick runs as planned
    fault_service,    // the service faults (and, by default, the host stops)
};

enum class tick_result { none, succeeded, failed, canceled };

struct tick_outcome {
    tick_result result = tick_result::none; // none until a tick has ended
    std::string error;                      // the exception's message, when failed
    // How long after its slot the tick started, and whether that was more
    // than late_after (the host was busy, or the previous tick ran long).
    std::chrono::milliseconds lateness{0};
    bool late = false;
};

// A thread-safe snapshot, for health checks and dashboards.
struct schedule_status {
    std::optional<std::chrono::system_clock::time_point> last_start;
    std::chrono::steady_clock::duration last_duration{};
    tick_outcome last_outcome;
    std::optional<std::chrono::system_clock::time_point> next_due;
    std::uint64_t ticks = 0;            // ticks started
    std::uint64_t failures = 0;         // ticks that threw
    std::uint64_t missed = 0;           // slots that passed without a tick (missed-tick policy, or cron)
    std::uint64_t skipped_overlaps = 0; // slots skipped because max_concurrent_ticks were still running
};

enum class schedule_mode {
    fixed_rate,  // slots at start + initial_delay + k * interval, whatever the ticks take
    fixed_delay, // the interval counts from the end of the previous tick
};

struct periodic_options {
    std::chrono::steady_clock::duration interval{};      // required, positive
    std::chrono::steady_clock::duration initial_delay{}; // before the first tick; none by default
    hosting::schedule_mode mode = hosting::schedule_mode::fixed_rate;
    // Each tick starts a random [0, jitter) after its slot, so that many
    // instances do not all hit a shared resource at once. Less than interval.
    std::chrono::steady_clock::duration jitter{};
    hosting::missed_tick_policy missed_ticks = hosting::missed_tick_policy::skip; // fixed_rate only
    // 1 (the default) never overlaps ticks: a late one waits for the
    // previous to end, and the missed-tick policy applies. More lets ticks
    // run concurrently up to the limit; a slot that finds the limit reached
    // is skipped and counted. fixed_delay needs 1.
    std::size_t max_concurrent_ticks = 1;
    tick_exception_policy on_exception = tick_exception_policy::log_and_continue;
    // A tick starting later than this after its slot is reported as late.
    std::chrono::steady_clock::duration late_after = std::chrono::seconds(1);

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

namespace detail {
class tick_runner;
}

// Subclass it and implement tick():
//
//   class cache_refresher : public hosting::periodic_service {
//   public:
//       cache_refresher() : periodic_service({.interval = std::chrono::minutes(5)}) {}
//   protected:
//       asio::awaitable<void> tick(std::stop_token stopping) override { co_await refresh(stopping); }
//   };
//
// tick() runs on the service's strand; `stopping` is requested when the host
// stops, and the awaited operation is cancelled then too. At stop, ticks
// still running are cancelled and waited for (within the host's deadline).
class periodic_service : public background_service {
public:
    // Throws std::invalid_argument for invalid options.
    explicit periodic_service(periodic_options options);
    ~periodic_service() override;

    const periodic_options& options() const noexcept { return options_; }
    schedule_status status() const;

protected:
    virtual asio::awaitable<void> tick(std::stop_token stopping) = 0;

private:
    asio::awaitable<void> execute(std::stop_token stopping) final;

    periodic_options options_;
    std::shared_ptr<detail::tick_runner> runner_;
};

} // namespace hosting
