// Prints the host's costs beside the same work written with raw Asio
// (co_spawn plus one cancellation_signal per coroutine), measured in one run.
//
//   host_bench [services=10000] [stop_latency_services=1000]
//
// Each figure is measured in a fresh child process so that one measurement's
// freed memory cannot flatter the next one's resident size.
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/sinks/null_sink.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

struct figures {
    double build_ms = 0;  // services constructed (hosting only)
    double start_ms = 0;  // everything running
    double stop_ms = 0;   // everything ended
    double rss_kib = 0;   // resident growth while all are idle
};

// Anonymous pages only (heap, stacks): the pages of code that a first
// start touches are shared, read from the file, and do not grow with the
// number of services.
double resident_kib()
{
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line))
        if (line.rfind("RssAnon:", 0) == 0)
            return std::strtod(line.c_str() + 8, nullptr);
    return 0;
}

double ms_since(clock_type::time_point t)
{
    return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

// --- raw Asio -------------------------------------------------------------

// What a user would write by hand: a coroutine awaiting a timer, cancelled
// through its own signal.
template <class Completion>
void spawn_idle(asio::io_context& io, asio::cancellation_signal& signal, std::atomic<int>& running,
                Completion done)
{
    asio::co_spawn(
        io,
        [&running]() -> asio::awaitable<void> {
            asio::steady_timer timer(co_await asio::this_coro::executor, 1h);
            ++running;
            co_await timer.async_wait(asio::use_awaitable);
        },
        asio::bind_cancellation_slot(signal.slot(), std::move(done)));
}

figures raw_asio(int n)
{
    asio::io_context io(1);
    std::vector<asio::cancellation_signal> signals(static_cast<std::size_t>(n));
    std::atomic<int> running{0};
    std::atomic<int> ended{0};
    figures f;
    double rss_before = resident_kib();

    auto began = clock_type::now();
    for (auto& signal : signals)
        spawn_idle(io, signal, running, [&ended](std::exception_ptr) { ++ended; });
    // Run until every coroutine waits on its timer.
    while (running.load() < n)
        io.run_one();
    f.start_ms = ms_since(began);
    f.rss_kib = resident_kib() - rss_before;

    began = clock_type::now();
    for (auto& signal : signals)
        signal.emit(asio::cancellation_type::terminal);
    io.run();
    f.stop_ms = ms_since(began);
    if (ended.load() != n)
        std::fprintf(stderr, "raw: only %d of %d ended\n", ended.load(), n);
    return f;
}

// The host stops services one at a time, each after the one registered
// after it has ended. By hand: each coroutine's completion cancels the one
// before it, which is the fewest trips through the loop an ordered stop
// can take.
double raw_ordered_stop(int n)
{
    asio::io_context io(1);
    std::vector<asio::cancellation_signal> signals(static_cast<std::size_t>(n));
    std::atomic<int> running{0};
    int ended = 0;
    for (std::size_t i = 0; i < signals.size(); ++i)
        spawn_idle(io, signals[i], running, [&, i](std::exception_ptr) {
            ++ended;
            if (i > 0)
                signals[i - 1].emit(asio::cancellation_type::terminal);
        });
    while (running.load() < n)
        io.run_one();
    auto began = clock_type::now();
    signals.back().emit(asio::cancellation_type::terminal);
    io.run();
    double ms = ms_since(began);
    if (ended != n)
        std::fprintf(stderr, "raw ordered: only %d of %d ended\n", ended, n);
    return ms;
}

double raw_stop_latency(int n, bool ordered)
{
    asio::io_context io(1);
    std::vector<asio::cancellation_signal> signals(static_cast<std::size_t>(n));
    std::atomic<int> running{0};
    for (std::size_t i = 0; i < signals.size(); ++i)
        spawn_idle(io, signals[i], running, [&, i](std::exception_ptr) {
            if (ordered && i > 0)
                signals[i - 1].emit(asio::cancellation_type::terminal);
        });
    clock_type::time_point requested;
    std::thread loop([&] { io.run(); });
    while (running.load() < n)
        std::this_thread::yield();
    // The stop request comes from another thread, as stop_application() does.
    requested = clock_type::now();
    asio::post(io, [&] {
        if (ordered)
            signals.back().emit(asio::cancellation_type::terminal);
        else
            for (auto& signal : signals)
                signal.emit(asio::cancellation_type::terminal);
    });
    loop.join();
    return ms_since(requested);
}

// --- hosting ----------------------------------------------------------------

class idle_service : public hosting::background_service {
public:
    explicit idle_service(std::atomic<int>* running) : running_(running) {}

protected:
    asio::awaitable<void> execute(std::stop_token) override
    {
        asio::steady_timer timer(co_await asio::this_coro::executor, 1h);
        ++*running_;
        co_await timer.async_wait(asio::use_awaitable);
    }

private:
    std::atomic<int>* running_;
};

hosting::host_builder quiet_builder(bool stop_concurrently = false)
{
    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    builder.logging().sinks.push_back(std::make_shared<spdlog::sinks::null_sink_mt>());
    builder.logging().level = spdlog::level::warn;
    builder.options().services_stop_concurrently = stop_concurrently;
    return builder;
}

figures hosting_services(int n, bool stop_concurrently = false)
{
    std::atomic<int> running{0};
    figures f;
    double rss_before = resident_kib();
    auto began = clock_type::now();
    auto builder = quiet_builder(stop_concurrently);
    for (int i = 0; i < n; ++i)
        builder.services().add_hosted_service<idle_service>(&running);
    auto host = builder.build();
    f.build_ms = ms_since(began);

    began = clock_type::now();
    host.start_blocking();
    while (running.load() < n)
        std::this_thread::yield();
    f.start_ms = ms_since(began);
    f.rss_kib = resident_kib() - rss_before;

    began = clock_type::now();
    host.stop_blocking();
    f.stop_ms = ms_since(began);
    if (host.exit_code() != 0)
        std::fprintf(stderr, "hosting: exit code %d\n", host.exit_code());
    return f;
}

double hosting_stop_latency(int n)
{
    std::atomic<int> running{0};
    auto builder = quiet_builder();
    for (int i = 0; i < n; ++i)
        builder.services().add_hosted_service<idle_service>(&running);
    auto host = builder.build();
    clock_type::time_point requested;
    std::thread stopper([&] {
        while (running.load() < n)
            std::this_thread::yield();
        requested = clock_type::now();
        host.lifetime().stop_application();
    });
    host.run();
    double latency = ms_since(requested);
    stopper.join();
    return latency;
}

// Runs `measure` in a child process and returns the doubles it wrote.
std::vector<double> isolated(const std::function<std::vector<double>()>& measure)
{
    int fds[2];
    if (pipe(fds) != 0)
        std::abort();
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        auto values = measure();
        auto bytes = static_cast<ssize_t>(values.size() * sizeof(double));
        if (write(fds[1], values.data(), static_cast<std::size_t>(bytes)) != bytes)
            _exit(1);
        _exit(0);
    }
    close(fds[1]);
    std::vector<double> values(8);
    auto got = read(fds[0], values.data(), values.size() * sizeof(double));
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    values.resize(got > 0 ? static_cast<std::size_t>(got) / sizeof(double) : 0);
    return values;
}

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    return v.empty() ? 0 : v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv)
{
    if (argc > 1 && std::string(argv[1]) == "--profile-start") {
        // For a profiler: build and start only, then leave without a stop.
        std::atomic<int> running{0};
        auto builder = quiet_builder();
        for (int i = 0; i < 100000; ++i)
            builder.services().add_hosted_service<idle_service>(&running);
        auto host = builder.build();
        host.start_blocking();
        while (running.load() < 100000)
            std::this_thread::yield();
        std::fflush(stdout);
        _exit(0);
    }
    if (argc > 1 && std::string(argv[1]) == "--profile") {
        // For a profiler: the host's start and stop alone, repeated.
        for (int i = 0; i < 20; ++i)
            hosting_services(10000);
        return 0;
    }
    const int n = argc > 1 ? std::atoi(argv[1]) : 10000;
    const int m = argc > 2 ? std::atoi(argv[2]) : 1000;
    const int rounds = 5;

    std::vector<double> host_build, raw_start, raw_stop, raw_rss, host_start, host_stop, host_rss, raw_latency,
        host_latency, raw_ordered, host_concurrent, raw_ordered_latency;
    for (int r = 0; r < rounds; ++r) {
        auto a = isolated([&] {
            auto f = raw_asio(n);
            return std::vector<double>{f.start_ms, f.stop_ms, f.rss_kib};
        });
        auto b = isolated([&] {
            auto f = hosting_services(n);
            return std::vector<double>{f.start_ms, f.stop_ms, f.rss_kib, f.build_ms};
        });
        auto c = isolated([&] { return std::vector<double>{raw_ordered_stop(n)}; });
        auto d = isolated([&] { return std::vector<double>{hosting_services(n, true).stop_ms}; });
        if (a.size() != 3 || b.size() != 4 || c.size() != 1 || d.size() != 1) {
            std::fprintf(stderr, "a measurement failed\n");
            return 1;
        }
        raw_start.push_back(a[0]), raw_stop.push_back(a[1]), raw_rss.push_back(a[2]);
        host_start.push_back(b[0]), host_stop.push_back(b[1]), host_rss.push_back(b[2]);
        host_build.push_back(b[3]);
        raw_ordered.push_back(c[0]);
        host_concurrent.push_back(d[0]);
        raw_latency.push_back(isolated([&] { return std::vector<double>{raw_stop_latency(m, false)}; }).at(0));
        raw_ordered_latency.push_back(
            isolated([&] { return std::vector<double>{raw_stop_latency(m, true)}; }).at(0));
        host_latency.push_back(isolated([&] { return std::vector<double>{hosting_stop_latency(m)}; }).at(0));
    }

    auto row = [](const char* what, double hosting, double raw, const char* unit) {
        std::printf("%-44s %10.2f %10.2f %s   %5.2fx\n", what, hosting, raw, unit, raw > 0 ? hosting / raw : 0.0);
    };
    std::printf("host_bench: medians of %d rounds, each measurement in a fresh process\n", rounds);
    std::printf("%-44s %10s %10s\n", "", "hosting", "raw Asio");
    char label[96];
    std::snprintf(label, sizeof label, "build() with %d services (no raw equivalent)", n);
    std::printf("%-44s %10.2f %10s ms\n", label, median(host_build), "-");
    std::snprintf(label, sizeof label, "start %d background services (ms)", n);
    row(label, median(host_start), median(raw_start), "ms");
    // The host's default stop is ordered: each service after the ones
    // registered after it have ended. Its baseline is raw Asio doing the
    // same; the concurrent stop is compared with raw Asio cancelling all.
    std::snprintf(label, sizeof label, "stop %d, in order (default) (ms)", n);
    row(label, median(host_stop), median(raw_ordered), "ms");
    std::snprintf(label, sizeof label, "stop %d, concurrently (ms)", n);
    row(label, median(host_concurrent), median(raw_stop), "ms");
    row("start + stop in order (ms)", median(host_start) + median(host_stop), median(raw_start) + median(raw_ordered),
        "ms");
    row("  in order, against raw Asio cancelling all (ms)", median(host_stop), median(raw_stop), "ms");
    row("resident memory per idle service (bytes)", median(host_rss) * 1024.0 / n, median(raw_rss) * 1024.0 / n,
        "B ");
    std::snprintf(label, sizeof label, "stop latency, %d idle services, in order (ms)", m);
    row(label, median(host_latency), median(raw_ordered_latency), "ms");
    row("  in order, against raw Asio cancelling all (ms)", median(host_latency), median(raw_latency), "ms");
    return 0;
}
