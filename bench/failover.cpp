// Failover of a single-instance service between processes: how long from
// the holder's death (kill -9), stop (SIGTERM) or pause (SIGSTOP) until
// another process runs the service, and whether two ever ran it at once.
//
// Baseline, measured in the same run: the lock a program would take by
// hand: flock() on a file for SQLite's machine, a session advisory lock
// for PostgreSQL. The kernel releases either at once when its process dies,
// so a crash fails over faster than a lease can; but a paused holder keeps
// it for as long as it is paused (or, for PostgreSQL across a cut network,
// until TCP keepalive notices, about two hours by default), and neither
// gives the holder a fencing token.
//
//   failover [--rounds N] [--lease-ms L] [--storage sqlite|postgresql] [--dir D]
#include <hosting/hosting.hpp>
#include <hosting/coordination/coordination.hpp>
#include <hosting/coordination/open_lease_store.hpp>
#include <hosting/logging/logging.hpp>

#include <spdlog/spdlog.h>

#include "support/postgres_server.hpp"

#include <libpq-fe.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

long long now_us()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

void say(const std::string& line)
{
    // One write: the parent reads whole lines.
    const std::string text = line + "\n";
    [[maybe_unused]] auto n = ::write(1, text.data(), text.size());
}

class holder_service : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        const auto term = co_await hosting::fencing_token();
        say("held " + std::to_string(term) + " " + std::to_string(now_us()));
        struct at_end {
            std::uint64_t term;
            ~at_end() { say("ended " + std::to_string(term) + " " + std::to_string(now_us())); }
        } report{term};
        co_await hosting::delay(std::chrono::hours(24), stopping);
    }
};

int lease_worker(const std::string& where, int lease_ms)
{
    char arg0[] = "failover";
    char* args[] = {arg0, nullptr};
    auto builder = hosting::host::create_builder(1, args);
    builder.logging().level = spdlog::level::warn;
    hosting::coordination::coordination_options options;
    options.lease_duration = std::chrono::milliseconds(lease_ms);
    options.elect_leader = false;
    hosting::coordination::add_coordination(builder, hosting::coordination::open_lease_store(where), options);
    builder.services().add_hosted_service<holder_service>().name("holder").single_instance("bench");
    return builder.build().run();
}

// The baselines: block on the lock, say so, hold it until killed.
int flock_worker(const std::string& path)
{
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ::flock(fd, LOCK_EX) != 0)
        return 1;
    say("held 0 " + std::to_string(now_us()));
    for (;;)
        ::pause();
}

int advisory_worker(const std::string& conninfo)
{
    PGconn* conn = PQconnectdb(conninfo.c_str());
    if (PQstatus(conn) != CONNECTION_OK)
        return 1;
    PGresult* r = PQexec(conn, "SELECT pg_advisory_lock(4242)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        return 1;
    PQclear(r);
    say("held 0 " + std::to_string(now_us()));
    for (;;)
        ::pause();
}

struct worker {
    pid_t pid = -1;
    int out = -1;
    std::string buffer;
};

class parent {
public:
    parent(std::string self, std::vector<std::string> args) : self_(std::move(self)), args_(std::move(args)) {}
    ~parent()
    {
        for (auto& w : workers_)
            end(w);
    }

    worker& start()
    {
        int fds[2];
        if (::pipe(fds) != 0)
            std::abort();
        const pid_t pid = ::fork();
        if (pid == 0) {
            ::dup2(fds[1], 1);
            ::close(fds[0]);
            std::vector<char*> argv{self_.data()};
            for (auto& a : args_)
                argv.push_back(a.data());
            argv.push_back(nullptr);
            ::execv(self_.c_str(), argv.data());
            std::_Exit(127);
        }
        ::close(fds[1]);
        workers_.push_back(worker{pid, fds[0], {}});
        return workers_.back();
    }

    // The next "held" line from any worker within `timeout`: (worker, term, time).
    struct held {
        pid_t pid;
        std::uint64_t term;
        long long at_us;
    };
    std::optional<held> next_held(std::chrono::milliseconds timeout)
    {
        const auto until = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            for (auto& w : workers_) {
                std::size_t nl;
                while ((nl = w.buffer.find('\n')) != std::string::npos) {
                    const std::string line = w.buffer.substr(0, nl);
                    w.buffer.erase(0, nl + 1);
                    unsigned long long term = 0;
                    long long at = 0;
                    if (std::sscanf(line.c_str(), "held %llu %lld", &term, &at) == 2)
                        return held{w.pid, term, at};
                    if (std::sscanf(line.c_str(), "ended %llu %lld", &term, &at) == 2)
                        ended_[term] = at;
                }
            }
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until -
                                                                                    std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return std::nullopt;
            std::vector<pollfd> fds;
            for (auto& w : workers_)
                if (w.out >= 0)
                    fds.push_back({w.out, POLLIN, 0});
            if (::poll(fds.data(), fds.size(), static_cast<int>(left.count())) <= 0)
                continue;
            for (auto& f : fds)
                if (f.revents & (POLLIN | POLLHUP)) {
                    auto& w = *std::find_if(workers_.begin(), workers_.end(), [&](auto& x) { return x.out == f.fd; });
                    char chunk[4096];
                    const auto n = ::read(w.out, chunk, sizeof chunk);
                    if (n > 0)
                        w.buffer.append(chunk, static_cast<std::size_t>(n));
                    else {
                        ::close(w.out);
                        w.out = -1;
                    }
                }
        }
    }

    worker& by_pid(pid_t pid) { return *std::find_if(workers_.begin(), workers_.end(), [&](auto& w) { return w.pid == pid; }); }

    void signal(worker& w, int sig) { ::kill(w.pid, sig); }

    void end(worker& w)
    {
        if (w.pid < 0)
            return;
        // SIGKILL ends a stopped process too, before it could run again.
        ::kill(w.pid, SIGKILL);
        ::waitpid(w.pid, nullptr, 0);
        if (w.out >= 0)
            ::close(w.out);
        w.pid = -1;
        w.out = -1;
    }

    void reap(worker& w)
    {
        ::waitpid(w.pid, nullptr, 0);
        if (w.out >= 0)
            ::close(w.out);
        w.pid = -1;
        w.out = -1;
    }

    void forget_dead() { std::erase_if(workers_, [](auto& w) { return w.pid < 0; }); }

    std::optional<long long> ended_at(std::uint64_t term) const
    {
        auto it = ended_.find(term);
        return it == ended_.end() ? std::nullopt : std::optional<long long>(it->second);
    }

private:
    std::string self_;
    std::vector<std::string> args_;
    std::vector<worker> workers_;
    std::map<std::uint64_t, long long> ended_;
};

struct series {
    std::vector<double> ms;
    void add(long long us) { ms.push_back(static_cast<double>(us) / 1000.0); }
    std::string text() const
    {
        if (ms.empty())
            return "none";
        auto s = ms;
        std::sort(s.begin(), s.end());
        auto at = [&](double q) { return s[std::min(s.size() - 1, static_cast<std::size_t>(q * static_cast<double>(s.size())))]; };
        char out[160];
        std::snprintf(out, sizeof out, "p50 %.0f ms, p99 %.0f ms, max %.0f ms (%zu runs)", at(0.5), at(0.99), s.back(),
                      s.size());
        return out;
    }
};

struct figures {
    series crash, graceful, paused;
    long overlaps = 0;
    long terms_not_growing = 0;
    long no_failover = 0;
};

// `rounds` of kill -9, SIGTERM and SIGSTOP of the holder, two workers
// always running. `lease` workers print terms; the baseline's print 0.
figures run_rounds(const std::string& self, const std::vector<std::string>& args, int rounds, bool lease,
                   int lease_ms, std::chrono::milliseconds patience)
{
    figures f;
    std::mt19937 random(4242);
    parent p(self, args);
    p.start();
    p.start();
    auto current = p.next_held(patience);
    if (!current) {
        ++f.no_failover;
        return f;
    }
    for (int round = 0; round < rounds; ++round) {
        for (int how : {SIGKILL, SIGTERM, SIGSTOP}) {
            // At a random point of the hold, not just after it began: a
            // crash finds the last renewal anywhere up to renew_interval ago.
            std::this_thread::sleep_for(std::chrono::milliseconds(random() % (lease_ms + 1)));
            auto& victim = p.by_pid(current->pid);
            const auto at = now_us();
            p.signal(victim, how);
            auto next = p.next_held(patience);
            if (!next) {
                ++f.no_failover;
                if (how != SIGSTOP || lease)
                    std::printf("VIOLATION no other process took over within %lld ms after signal %d\n",
                                static_cast<long long>(patience.count()), how);
                // The baseline never fails over from a paused holder: end
                // the pause, and start from a fresh pair.
                return f;
            }
            const auto took = next->at_us - at;
            (how == SIGKILL ? f.crash : how == SIGTERM ? f.graceful : f.paused).add(took);
            if (lease && next->term <= current->term) {
                ++f.terms_not_growing;
                std::printf("VIOLATION term %llu followed term %llu\n", static_cast<unsigned long long>(next->term),
                            static_cast<unsigned long long>(current->term));
            }
            if (how == SIGTERM) {
                // A graceful holder ends its service before it releases.
                p.reap(victim);
                const auto ended = p.ended_at(current->term);
                if (lease && (!ended || *ended > next->at_us)) {
                    ++f.overlaps;
                    std::printf("VIOLATION term %llu began before term %llu ended\n",
                                static_cast<unsigned long long>(next->term),
                                static_cast<unsigned long long>(current->term));
                }
            } else if (how == SIGKILL)
                p.reap(victim);
            else
                p.end(victim); // the paused one: its part is over
            p.forget_dead();
            p.start();
            current = next;
        }
    }
    return f;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 4 && std::string(argv[1]) == "--lease-worker")
        return lease_worker(argv[2], std::atoi(argv[3]));
    if (argc == 3 && std::string(argv[1]) == "--flock-worker")
        return flock_worker(argv[2]);
    if (argc == 3 && std::string(argv[1]) == "--advisory-worker")
        return advisory_worker(argv[2]);

    int rounds = 10;
    int lease_ms = 5000;
    std::string storage = "sqlite";
    std::string dir = std::filesystem::temp_directory_path().string();
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--rounds")
            rounds = std::atoi(argv[i + 1]);
        else if (a == "--lease-ms")
            lease_ms = std::atoi(argv[i + 1]);
        else if (a == "--dir")
            dir = argv[i + 1];
        else if (a == "--storage" && (std::string(argv[i + 1]) == "sqlite" || std::string(argv[i + 1]) == "postgresql"))
            storage = argv[i + 1];
        else {
            std::fprintf(stderr, "usage: failover [--rounds N] [--lease-ms L] [--storage sqlite|postgresql] [--dir D]\n");
            return 2;
        }
    }
    std::filesystem::create_directories(dir);
    const std::string self = std::filesystem::canonical("/proc/self/exe").string();
    postgres_server server(dir + "/failover_postgres");
    std::string where;
    if (storage == "postgresql") {
        where = server.start();
        if (where.empty()) {
            std::printf("VIOLATED: no PostgreSQL server could be started\n");
            return 1;
        }
    } else {
        where = dir + "/failover.db";
        for (const char* suffix : {"", "-wal", "-shm"})
            std::filesystem::remove(where + suffix);
    }
    const auto patience = std::chrono::milliseconds(lease_ms * 3 + 5000);

    std::printf("failover of a single-instance service between two processes on %s, lease %d ms (renewal every "
                "%d ms, retries every %d ms), %d rounds of kill -9, SIGTERM and SIGSTOP of the holder\n",
                storage.c_str(), lease_ms, lease_ms / 3, lease_ms / 20, rounds);
    const auto leases = run_rounds(self, {"--lease-worker", where, std::to_string(lease_ms)}, rounds, true, lease_ms,
                                   patience);
    std::printf("  lease:    kill -9  %s\n", leases.crash.text().c_str());
    std::printf("            SIGTERM  %s\n", leases.graceful.text().c_str());
    std::printf("            SIGSTOP  %s\n", leases.paused.text().c_str());
    std::printf("            bound after a crash or a pause (lease + one renewal period): %d ms\n",
                lease_ms + lease_ms / 3);

    // The baseline: one round is enough to show its shape.
    const auto baseline_args = storage == "postgresql"
                                   ? std::vector<std::string>{"--advisory-worker", where}
                                   : std::vector<std::string>{"--flock-worker", dir + "/failover.lock"};
    const auto base = run_rounds(self, baseline_args, 1, false, lease_ms, std::chrono::milliseconds(lease_ms * 2));
    std::printf("  baseline (%s): kill -9 %s; SIGSTOP: %s\n",
                storage == "postgresql" ? "a session advisory lock" : "flock() on a file", base.crash.text().c_str(),
                base.paused.ms.empty() ? ("never, within " + std::to_string(lease_ms * 2) + " ms").c_str()
                                       : base.paused.text().c_str());

    std::printf("  overlapping holds: %ld, terms not growing: %ld, no failover: %ld\n", leases.overlaps,
                leases.terms_not_growing, leases.no_failover);
    const bool ok = leases.overlaps == 0 && leases.terms_not_growing == 0 && leases.no_failover == 0;
    std::printf("%s\n", ok ? "OK" : "VIOLATED");
    return ok ? 0 : 1;
}
