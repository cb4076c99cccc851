// host_stress: the host's promises under abuse, counted. Every run checks
// the exit code and that the stop ended within the shutdown deadline:
//   concurrent stops     stop_application() from 8 threads at once
//   faulting services    a start, an execute or a stop that throws
//   stubborn services    a stop that ignores its token (the deadline ends it)
//   crash restarts       a service that throws at once, restarted 1,000
//                        times, then the host stopped
//   signals              a child process sent SIGTERM during its start,
//                        during a stop past the deadline, while a service
//                        blocks the loop's thread, and twice
// Prints the runs of each and the violations; exits 1 on any.
//
//   host_stress [--rounds N]    (N scales every part; 1 is the CI run)
#include <hosting/hosting.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <functional>
#include <latch>
#include <random>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

struct tally {
    long runs = 0;       // hosts run (or children), each checked
    long violations = 0;
    long restarts = 0;   // restarts of a crashing service, within those runs
    // Where a service overran the deadline: how long after it the host
    // returned (a child: exited). The host promises 250 ms; the tests, on a
    // busy machine, check only that it did not wait for the service.
    std::vector<long> past_ms;
};

void overran(tally& t, std::chrono::milliseconds took, std::chrono::milliseconds deadline)
{
    t.past_ms.push_back(std::max<long>(0, static_cast<long>((took - deadline).count())));
}

void violation(tally& t, const std::string& what)
{
    ++t.violations;
    std::printf("VIOLATION %s\n", what.c_str());
    std::fflush(stdout);
}

class cooperative : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        for (;;)
            co_await hosting::delay(1ms, stopping);
    }
};

class throws_in_start : public hosting::hosted_service {
public:
    asio::awaitable<void> start(std::stop_token) override
    {
        throw std::runtime_error("start failed on purpose");
        co_return;
    }
    asio::awaitable<void> stop(std::stop_token) override { co_return; }
};

class throws_in_execute : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token) override
    {
        co_await hosting::delay(1ms);
        throw std::runtime_error("execute failed on purpose");
    }
};

class throws_in_stop : public hosting::hosted_service {
public:
    asio::awaitable<void> start(std::stop_token) override { co_return; }
    asio::awaitable<void> stop(std::stop_token) override
    {
        throw std::runtime_error("stop failed on purpose");
        co_return;
    }
};

// A stop that ignores its token: only the deadline ends the host's wait.
class stubborn : public hosting::hosted_service {
public:
    asio::awaitable<void> start(std::stop_token) override { co_return; }
    asio::awaitable<void> stop(std::stop_token) override { co_await hosting::delay(10s); }
};

std::atomic<long> crashes{0};

class crasher : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token) override
    {
        ++crashes;
        co_await hosting::delay(0ms);
        throw std::runtime_error("crashed on purpose");
    }
};

hosting::host_builder quiet_builder(std::chrono::milliseconds deadline)
{
    char name[] = "host_stress";
    char level[] = "--Logging:LogLevel:Default=None";
    char* args[] = {name, level, nullptr};
    auto builder = hosting::host::create_builder(2, args);
    builder.use_console_lifetime(false);
    builder.options().shutdown_timeout = deadline;
    return builder;
}

// Runs the host on this thread; `poke` runs on another once it started.
// Returns the exit code and how long the stop took from its request.
std::pair<int, std::chrono::milliseconds> run_host(hosting::host& host, std::function<void()> poke)
{
    std::atomic<std::int64_t> requested{0};
    std::stop_callback on_stop(host.lifetime().stop_requested(),
                               [&] { requested = steady::now().time_since_epoch().count(); });
    std::thread poker;
    std::stop_callback on_start(host.lifetime().application_started(), [&] { poker = std::thread(poke); });
    const int code = host.run();
    const auto ended = steady::now();
    if (poker.joinable())
        poker.join();
    const auto from = requested.load() ? steady::time_point(steady::duration(requested.load())) : ended;
    return {code, std::chrono::duration_cast<std::chrono::milliseconds>(ended - from)};
}

// Slack for a busy 2-core machine on top of the deadline.
constexpr auto slack = 1500ms;

void check(tally& t, const char* what, int code, int expected, std::chrono::milliseconds took,
           std::chrono::milliseconds bound)
{
    ++t.runs;
    if (code != expected)
        violation(t, std::string(what) + ": exit code " + std::to_string(code) + ", expected " +
                         std::to_string(expected));
    if (took > bound + slack)
        violation(t, std::string(what) + ": stopped after " + std::to_string(took.count()) + " ms, deadline " +
                         std::to_string(bound.count()) + " ms");
}

void concurrent_stops(tally& t, int n)
{
    for (int i = 0; i < n; ++i) {
        auto builder = quiet_builder(1s);
        builder.services().add_hosted_service<cooperative>();
        auto host = builder.build();
        auto [code, took] = run_host(host, [&host] {
            std::latch go(8);
            std::vector<std::jthread> threads;
            for (int k = 0; k < 8; ++k)
                threads.emplace_back([&] {
                    go.arrive_and_wait();
                    host.lifetime().stop_application();
                });
        });
        check(t, "concurrent stops", code, 0, took, 1s);
    }
}

template <class Service>
void faulting(tally& t, const char* what, int n, bool stop_after_start)
{
    for (int i = 0; i < n; ++i) {
        auto builder = quiet_builder(1s);
        builder.services().add_hosted_service<cooperative>();
        builder.services().add_hosted_service<Service>();
        auto host = builder.build();
        auto [code, took] = run_host(host, [&host, stop_after_start] {
            if (stop_after_start)
                host.lifetime().stop_application();
        });
        check(t, what, code, 1, took, 1s);
    }
}

void stubborn_stops(tally& t, int n)
{
    for (int i = 0; i < n; ++i) {
        auto builder = quiet_builder(200ms);
        builder.services().add_hosted_service<stubborn>();
        auto host = builder.build();
        auto [code, took] = run_host(host, [&host] { host.lifetime().stop_application(); });
        check(t, "stubborn stop", code, 1, took, 200ms);
        overran(t, took, 200ms);
    }
}

// One host whose service crashes and is restarted `restarts` times; the
// host's exit code and deadline are checked once, as its run.
void crash_restarts(tally& t, long restarts)
{
    auto builder = quiet_builder(1s);
    hosting::restart_policy policy = hosting::restart_policy::always();
    policy.initial_delay = 1ms;
    policy.max_delay = 1ms;
    policy.multiplier = 1.0;
    policy.jitter = 0;
    policy.burst = static_cast<std::size_t>(restarts) * 2;
    policy.window = std::chrono::hours(1);
    builder.services().add_hosted_service<crasher>().restart(policy);
    builder.services().add_hosted_service<cooperative>();
    auto host = builder.build();
    crashes = 0;
    auto [code, took] = run_host(host, [&host, restarts] {
        while (crashes.load() < restarts + 1)
            std::this_thread::sleep_for(1ms);
        host.lifetime().stop_application();
    });
    // Restarted every time: the service never failed for good.
    check(t, "crash restarts", code, 0, took, 1s);
    t.restarts += crashes.load() - 1;
}

// A child: a host whose start takes `start_ms`, whose stop takes `stop_ms`
// ignoring its token, with a `deadline_ms` shutdown deadline.
class timed : public hosting::hosted_service {
public:
    timed(int start_ms, int stop_ms) : start_(start_ms), stop_(stop_ms) {}
    asio::awaitable<void> start(std::stop_token cancel) override
    {
        // The host has its signal handlers by now: a signal before them
        // ends the process by its default action, as for any program.
        std::printf("starting\n");
        std::fflush(stdout);
        co_await hosting::delay(std::chrono::milliseconds(start_), cancel);
        std::printf("started\n");
        std::fflush(stdout);
    }
    asio::awaitable<void> stop(std::stop_token) override
    {
        std::printf("stopping\n");
        std::fflush(stdout);
        co_await hosting::delay(std::chrono::milliseconds(stop_));
    }

private:
    int start_, stop_;
};

// Blocks a thread of the host's loop for good once started, the way a
// careless synchronous call would.
class blocker : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token) override
    {
        co_await hosting::delay(1ms);
        std::printf("blocking\n");
        std::fflush(stdout);
        std::this_thread::sleep_for(1h);
    }
};

// A negative stop_ms adds a blocker instead.
int child(int start_ms, int stop_ms, int deadline_ms)
{
    char name[] = "host_stress";
    char level[] = "--Logging:LogLevel:Default=Information";
    char* args[] = {name, level, nullptr};
    auto builder = hosting::host::create_builder(2, args);
    builder.options().shutdown_timeout = std::chrono::milliseconds(deadline_ms);
    builder.services().add_hosted_service<timed>(start_ms, std::max(stop_ms, 0));
    builder.services().add_hosted_service<cooperative>();
    if (stop_ms < 0)
        builder.services().add_hosted_service<blocker>();
    auto host = builder.build();
    std::printf("built\n");
    std::fflush(stdout);
    return host.run();
}

struct spawned {
    pid_t pid;
    int out;         // the child's stdout
    std::string log; // its stderr: its log, shown when a run goes wrong
};

spawned spawn(const std::string& self, int start_ms, int stop_ms, int deadline_ms)
{
    int fds[2];
    if (::pipe(fds) != 0)
        std::abort();
    static int n = 0;
    const std::string log = std::filesystem::temp_directory_path().string() + "/host_stress-" +
                            std::to_string(::getpid()) + "-" + std::to_string(n++) + ".log";
    const pid_t pid = ::fork();
    if (pid == 0) {
        const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(err, 2);
        ::dup2(fds[1], 1);
        ::close(fds[0]);
        ::close(fds[1]);
        const auto a = std::to_string(start_ms), b = std::to_string(stop_ms), c = std::to_string(deadline_ms);
        ::execl(self.c_str(), self.c_str(), "--child", a.c_str(), b.c_str(), c.c_str(), static_cast<char*>(nullptr));
        std::_Exit(127);
    }
    ::close(fds[1]);
    return {pid, fds[0], log};
}

// Reads the child's output until `text` (false at its end).
bool read_until(int fd, const std::string& text)
{
    std::string seen;
    char buffer[256];
    for (;;) {
        const auto n = ::read(fd, buffer, sizeof buffer);
        if (n <= 0)
            return false;
        seen.append(buffer, static_cast<std::size_t>(n));
        if (seen.find(text) != std::string::npos)
            return true;
    }
}

// The exit code, and how long after `from` the child ended (bounded: a
// child still there after 20 s is killed and counted as hung).
std::pair<int, std::chrono::milliseconds> reap(pid_t pid, steady::time_point from)
{
    int status = 0;
    for (;;) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (steady::now() - from > 20s) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            return {-1, 20s};
        }
        std::this_thread::sleep_for(1ms);
    }
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return {code, std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - from)};
}

// check(), and the child's log when the run broke a promise.
void check_child(tally& t, const char* what, const spawned& c, int code, int expected,
                 std::chrono::milliseconds took, std::chrono::milliseconds bound)
{
    const auto before = t.violations;
    check(t, what, code, expected, took, bound);
    ::close(c.out);
    if (t.violations != before) {
        std::ifstream in(c.log);
        std::string line;
        while (std::getline(in, line))
            std::printf("  child: %s\n", line.c_str());
    }
    std::filesystem::remove(c.log);
}

void signals(tally& t, const std::string& self, int n, std::mt19937& random)
{
    for (int i = 0; i < n; ++i) {
        // During the start (300 ms long): the start is cancelled, which is
        // no failure.
        {
            auto c = spawn(self, 300, 0, 1000);
            read_until(c.out, "starting");
            std::this_thread::sleep_for(std::chrono::milliseconds(random() % 300));
            const auto at = steady::now();
            ::kill(c.pid, SIGTERM);
            auto [code, took] = reap(c.pid, at);
            check_child(t, "SIGTERM during start", c, code, 0, took, 1000ms);
        }
        // During a stop that overruns its 300-ms deadline: exit 1, on time.
        {
            auto c = spawn(self, 0, 5000, 300);
            read_until(c.out, "starting");
            std::this_thread::sleep_for(std::chrono::milliseconds(random() % 50));
            const auto at = steady::now();
            ::kill(c.pid, SIGTERM);
            auto [code, took] = reap(c.pid, at);
            check_child(t, "SIGTERM, stop past the deadline", c, code, 1, took, 300ms);
            overran(t, took, 300ms);
        }
        // A service blocks the loop's thread: the deadline still holds.
        {
            auto c = spawn(self, 0, -1, 300);
            read_until(c.out, "blocking");
            const auto at = steady::now();
            ::kill(c.pid, SIGTERM);
            auto [code, took] = reap(c.pid, at);
            check_child(t, "SIGTERM, a thread blocked", c, code, 1, took, 300ms);
            overran(t, took, 300ms);
        }
        // Twice: the second ends the process at once with 128 + SIGTERM.
        {
            // Once started: a first signal during the start may cancel this
            // service's start, and a service that did not start is not
            // stopped (nor does it print "stopping"): the host would end
            // with 0 before the second signal.
            auto c = spawn(self, 0, 5000, 5000);
            read_until(c.out, "started");
            ::kill(c.pid, SIGTERM);
            if (!read_until(c.out, "stopping"))
                violation(t, "SIGTERM twice: the first signal did not start a graceful stop");
            std::this_thread::sleep_for(std::chrono::milliseconds(random() % 50));
            const auto at = steady::now();
            ::kill(c.pid, SIGTERM);
            auto [code, took] = reap(c.pid, at);
            check_child(t, "SIGTERM twice", c, code, 128 + SIGTERM, took, 0ms);
        }
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 5 && std::string(argv[1]) == "--child")
        return child(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]));
    int rounds = 1;
    if (argc == 3 && std::string(argv[1]) == "--rounds")
        rounds = std::max(1, std::atoi(argv[2]));
    else if (argc != 1) {
        std::fprintf(stderr, "usage: host_stress [--rounds N]\n");
        return 2;
    }
    const std::string self = std::filesystem::canonical("/proc/self/exe").string();
    std::mt19937 random(2026);
    const auto started = steady::now();
    struct part {
        const char* name;
        std::function<void(tally&)> run;
    };
    const std::vector<part> parts = {
        {"concurrent stops", [&](tally& t) { concurrent_stops(t, 100 * rounds); }},
        {"start throws", [&](tally& t) { faulting<throws_in_start>(t, "start throws", 30 * rounds, false); }},
        {"execute throws", [&](tally& t) { faulting<throws_in_execute>(t, "execute throws", 30 * rounds, false); }},
        {"stop throws", [&](tally& t) { faulting<throws_in_stop>(t, "stop throws", 30 * rounds, true); }},
        {"stubborn stop", [&](tally& t) { stubborn_stops(t, 10 * rounds); }},
        {"crash restarts", [&](tally& t) {
             for (int r = 0; r < rounds; ++r)
                 crash_restarts(t, 1000);
         }},
        {"signals", [&](tally& t) { signals(t, self, 10 * rounds, random); }},
    };
    long runs = 0, violations = 0;
    for (const auto& p : parts) {
        tally t;
        const auto from = steady::now();
        p.run(t);
        std::printf("%-18s runs %6ld  violations %ld  (%.1f s)", p.name, t.runs, t.violations,
                    std::chrono::duration<double>(steady::now() - from).count());
        if (t.restarts != 0)
            std::printf("  restarts of the crashing service %ld", t.restarts);
        if (!t.past_ms.empty()) {
            std::sort(t.past_ms.begin(), t.past_ms.end());
            std::printf("  returned past the deadline: p50 %ld ms, max %ld ms", t.past_ms[t.past_ms.size() / 2],
                        t.past_ms.back());
        }
        std::printf("\n");
        std::fflush(stdout);
        runs += t.runs;
        violations += t.violations;
    }
    std::printf("runs %ld, violations %ld (%.1f s)\n", runs, violations,
                std::chrono::duration<double>(steady::now() - started).count());
    return violations == 0 ? 0 : 1;
}
