// Prints what parsing a cron expression and finding its next (and previous)
// occurrence cost, in nanoseconds per call.
//
//   cron_bench
#include <hosting/scheduling/cron.hpp>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

template <class F>
double ns_per_call(F&& f, int calls)
{
    // One untimed round first, so the time-zone database is loaded.
    f();
    auto began = clock_type::now();
    for (int i = 0; i < calls; ++i)
        f();
    return std::chrono::duration<double, std::nano>(clock_type::now() - began).count() / calls;
}

// Keeps the optimiser from dropping the work.
volatile long long sink = 0;

} // namespace

int main()
{
    const std::vector<const char*> expressions = {
        "*/15 * * * *", "0 9 * * MON-FRI", "30 2 * * *", "0 0 L * *", "0 9 * * 6#3", "0 0 29 2 *", "*/10 * * * * *",
    };
    const auto utc = hosting::time_zone::utc();
    const auto ny = hosting::time_zone::locate("America/New_York");
    using std::chrono::system_clock;
    const auto start = system_clock::time_point(std::chrono::seconds(1'700'000'000)); // November 2023
    // Chained calls walk far into the future (or past): start over well
    // inside system_clock's range, which ends in 2262.
    const auto latest = system_clock::time_point(std::chrono::seconds(4'102'444'800));   // 2100
    const auto earliest = system_clock::time_point(std::chrono::seconds(-2'208'988'800)); // 1900
    const int calls = 200'000;

    std::printf("cron_bench: nanoseconds per call, %d calls each\n", calls);
    std::printf("%-18s %10s %12s %12s %14s\n", "expression", "parse", "next (UTC)", "next (NY)", "previous (NY)");
    for (const char* text : expressions) {
        auto e = hosting::cron_expression::parse(text);
        double parse = ns_per_call([&] { sink = sink + static_cast<long long>(hosting::cron_expression::parse(text).text().size()); }, calls / 10);
        // Each chain starts over before it leaves system_clock's range.
        auto chained = [&](auto step) {
            auto t = start;
            return ns_per_call(
                [&] {
                    t = step(t);
                    sink = sink + t.time_since_epoch().count();
                },
                calls);
        };
        double next_utc = chained([&](auto t) { return *e.next(t > latest ? start : t, utc); });
        double next_ny = chained([&](auto t) { return *e.next(t > latest ? start : t, ny); });
        double previous_ny = chained([&](auto t) { return *e.previous(t < earliest ? start : t, ny); });
        std::printf("%-18s %10.0f %12.0f %12.0f %14.0f\n", text, parse, next_utc, next_ny, previous_ny);
    }
    return 0;
}
