// What the jobs benchmarks share: figures with thousands separated, a
// count of handler starts to wait on, and a host that logs nothing.
#pragma once

#include <hosting/hosting.hpp>
#include <hosting/health/health.hpp>
#include <hosting/logging/logging.hpp>

#include <spdlog/spdlog.h>

#include <spdlog/sinks/null_sink.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>

namespace bench {

using clock_type = std::chrono::steady_clock;

inline std::string with_commas(double value)
{
    auto n = static_cast<long long>(value + 0.5);
    std::string digits = std::to_string(n), out;
    for (std::size_t i = 0; i < digits.size(); ++i) {
        if (i > 0 && (digits.size() - i) % 3 == 0)
            out += ',';
        out += digits[i];
    }
    return out;
}

// Counts handler starts, and wakes whoever waits for a number of them:
// only once that number is reached, so that a drain of a hundred thousand
// jobs does not also wake the measuring thread a hundred thousand times on
// a machine with two cores.
struct progress {
    std::mutex mutex;
    std::condition_variable changed;
    std::size_t done = 0;
    std::size_t target = 0; // 0: nobody waits
    std::atomic<std::int64_t> last_start_ns{0};

    void add()
    {
        last_start_ns = clock_type::now().time_since_epoch().count();
        bool reached;
        {
            std::lock_guard lock(mutex);
            reached = ++done == target;
        }
        if (reached)
            changed.notify_all();
    }
    void wait_for(std::size_t n)
    {
        std::unique_lock lock(mutex);
        target = n;
        changed.wait(lock, [&] { return done >= n; });
        target = 0;
    }
};

inline hosting::host_builder quiet_builder()
{
    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    builder.logging().sinks.push_back(std::make_shared<spdlog::sinks::null_sink_mt>());
    hosting::add_health_checks(builder).options().loop_lag_interval = std::chrono::milliseconds::zero();
    return builder;
}

} // namespace bench
