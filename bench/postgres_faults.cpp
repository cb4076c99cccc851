// postgres_faults: what sqlite_faults does to a file, done to the network
// between the job storage and a PostgreSQL server. A proxy on loopback
// forwards every read of either side; armed, it breaks the N-th of an
// operation's (enqueue, claim, complete, recurring tick, prune, migration)
// for N = 1, 2, 3, ... until the operation passes untouched:
//   drop once        that connection is closed (a server restart, a reset)
//   drop persistent  every connection is closed, and new ones refused,
//                    until the fault is lifted (the server is down)
//   stall            that connection stops answering (a cut network, a
//                    stopped server): the storage must give up in bounded
//                    time (statement_timeout + 2 s)
// After every fault, whatever the operation reported:
//   - the storage that saw it goes on working (its next enqueue is
//     acknowledged), once the fault is lifted,
//   - no acknowledged enqueue is lost, the operation happened entirely or
//     not at all, and when it was acknowledged it happened,
//   - no job is running without a live lease, and the maintained counts
//     match the rows,
//   - while the server is out of reach (drop always), a host with the jobs
//     server on it starts and reports not ready (HTTP 503 on
//     /health/ready), and ready again (200) once the fault is lifted.
// Prints the faults injected and the violations; exits 1 on any violation.
//
// With --pooled the proxy stands in front of the PgBouncer in transaction
// mode that tests/tools/postgres-server starts, and the storages it serves
// run with transaction_pooling: the faults then fall in the pipelines that
// carry each transaction's settings, and in its ROLLBACKs. Without
// PgBouncer it says so and exits with 77.
//
//   postgres_faults [--dir D] [--max-n N] [--modes drop|all] [--pooled]
#include "support/fault_scenarios.hpp"
#include "support/postgres_server.hpp"
#include "support/readiness_probe.hpp"

#include <hosting/jobs/postgres_storage.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

using namespace fault_scenarios;

namespace {

enum class fault { drop_once, drop_persistent, stall };

const char* fault_name(fault f)
{
    switch (f) {
    case fault::drop_once: return "drop once";
    case fault::drop_persistent: return "drop always";
    case fault::stall: return "stall";
    }
    return "?";
}

// A TCP proxy in front of the server, on a thread of its own. Each read
// that returns data, from either side, is one operation.
class fault_proxy {
public:
    explicit fault_proxy(int server_port) : server_port_(server_port)
    {
        listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listener_, 64) != 0)
            throw std::runtime_error("proxy: cannot listen");
        socklen_t len = sizeof a;
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
        port_ = ntohs(a.sin_port);
        if (::pipe(wake_) != 0)
            throw std::runtime_error("proxy: no pipe");
        thread_ = std::thread([this] { loop(); });
    }
    ~fault_proxy()
    {
        stop_ = true;
        poke();
        thread_.join();
        for (auto& p : pairs_)
            close_pair(p);
        ::close(listener_);
        ::close(wake_[0]);
        ::close(wake_[1]);
    }

    int port() const { return port_; }

    void arm(long n, fault f)
    {
        std::lock_guard lock(mutex_);
        armed_ = true;
        at_ = n;
        mode_ = f;
        count_ = 0;
        injected_ = 0;
        persistent_on_ = false;
    }
    // Lifts the fault: stalled connections are closed (as the network that
    // comes back finds them reset), and new ones work.
    void disarm()
    {
        {
            std::lock_guard lock(mutex_);
            armed_ = false;
            persistent_on_ = false;
            release_stalled_ = true;
        }
        poke();
        // Until the loop has closed them.
        for (;;) {
            std::lock_guard lock(mutex_);
            if (!release_stalled_)
                break;
        }
    }
    long injected() const
    {
        std::lock_guard lock(mutex_);
        return injected_;
    }
    long operations() const
    {
        std::lock_guard lock(mutex_);
        return count_;
    }

private:
    struct pair {
        int client = -1;
        int server = -1;
        bool stalled = false;
    };

    void poke()
    {
        const char c = 0;
        [[maybe_unused]] auto n = ::write(wake_[1], &c, 1);
    }

    static void close_pair(pair& p)
    {
        if (p.client >= 0)
            ::close(p.client);
        if (p.server >= 0)
            ::close(p.server);
        p.client = p.server = -1;
    }

    // One operation: true when it must fail (its pair is then closed or
    // stalled by the caller).
    bool counts_as_fault(bool& stall)
    {
        std::lock_guard lock(mutex_);
        stall = false;
        if (!armed_)
            return false;
        ++count_;
        if (persistent_on_) {
            ++injected_;
            return true;
        }
        if (count_ != at_)
            return false;
        ++injected_;
        if (mode_ == fault::drop_persistent)
            persistent_on_ = true;
        stall = mode_ == fault::stall;
        return true;
    }

    void accept_one()
    {
        const int client = ::accept(listener_, nullptr, nullptr);
        if (client < 0)
            return;
        {
            std::lock_guard lock(mutex_);
            if (armed_ && persistent_on_) {
                ++injected_;
                ::close(client);
                return;
            }
        }
        const int server = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(static_cast<std::uint16_t>(server_port_));
        if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
            ::close(client);
            ::close(server);
            return;
        }
        int one = 1;
        ::setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ::setsockopt(server, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pairs_.push_back({client, server, false});
    }

    void loop()
    {
        while (!stop_) {
            {
                std::lock_guard lock(mutex_);
                if (release_stalled_) {
                    for (auto& p : pairs_)
                        if (p.stalled)
                            close_pair(p);
                    release_stalled_ = false;
                }
            }
            std::erase_if(pairs_, [](const pair& p) { return p.client < 0; });
            std::vector<pollfd> fds{{wake_[0], POLLIN, 0}, {listener_, POLLIN, 0}};
            for (const auto& p : pairs_)
                if (!p.stalled) {
                    fds.push_back({p.client, POLLIN, 0});
                    fds.push_back({p.server, POLLIN, 0});
                }
            if (::poll(fds.data(), fds.size(), 1000) <= 0)
                continue;
            if (fds[0].revents) {
                char drain[64];
                [[maybe_unused]] auto n = ::read(wake_[0], drain, sizeof drain);
            }
            if (fds[1].revents & POLLIN)
                accept_one();
            for (std::size_t i = 2; i < fds.size(); ++i) {
                if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                auto it = std::find_if(pairs_.begin(), pairs_.end(),
                                       [&](const pair& p) { return p.client == fds[i].fd || p.server == fds[i].fd; });
                if (it == pairs_.end() || it->stalled || it->client < 0)
                    continue;
                const bool from_client = it->client == fds[i].fd;
                char chunk[16384];
                const auto n = ::read(fds[i].fd, chunk, sizeof chunk);
                if (n <= 0) {
                    close_pair(*it);
                    continue;
                }
                bool stall = false;
                if (counts_as_fault(stall)) {
                    if (stall)
                        it->stalled = true;
                    else
                        close_pair(*it);
                    continue;
                }
                const int to = from_client ? it->server : it->client;
                for (ssize_t sent = 0; sent < n;) {
                    const auto w = ::write(to, chunk + sent, static_cast<std::size_t>(n - sent));
                    if (w <= 0)
                        break;
                    sent += w;
                }
            }
        }
    }

    int server_port_;
    int listener_ = -1;
    int port_ = 0;
    int wake_[2] = {-1, -1};
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::vector<pair> pairs_; // the loop's thread only

    mutable std::mutex mutex_;
    bool armed_ = false;
    long at_ = 0;
    fault mode_ = fault::drop_once;
    long count_ = 0;
    long injected_ = 0;
    bool persistent_on_ = false;
    bool release_stalled_ = false;
};

std::string with_port(const std::string& conninfo, int port)
{
    return std::regex_replace(conninfo, std::regex("port=\\d+"), "port=" + std::to_string(port));
}

int port_of(const std::string& conninfo)
{
    std::smatch m;
    if (!std::regex_search(conninfo, m, std::regex("port=(\\d+)")))
        return -1;
    return std::stoi(m[1]);
}

} // namespace

int main(int argc, char** argv)
{
    std::string dir = std::filesystem::temp_directory_path().string();
    long max_n = 100000;
    bool stalls = true;
    bool pooled = false;
    const auto usage = [] {
        std::fprintf(stderr, "usage: postgres_faults [--dir D] [--max-n N] [--modes drop|all] [--pooled]\n");
        return 2;
    };
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--pooled") {
            pooled = true;
            continue;
        }
        if (i + 1 >= argc)
            return usage();
        const std::string value = argv[++i];
        if (a == "--dir")
            dir = value;
        else if (a == "--max-n")
            max_n = std::atol(value.c_str());
        else if (a == "--modes" && (value == "drop" || value == "all"))
            stalls = value == "all";
        else
            return usage();
    }
    std::filesystem::create_directories(dir);
    postgres_server server(dir + "/postgres_faults_server");
    const std::string direct = server.start();
    if (direct.empty()) {
        std::printf("VIOLATED: no PostgreSQL server could be started\n");
        return 1;
    }
    const std::string target = pooled ? server.pooled_conninfo() : direct;
    if (target.empty()) {
        // As the tests do without one; 77 is CTest's "skipped" here.
        std::printf("postgres_faults: --pooled, and no PgBouncer stands in front of the server (Debian's pgbouncer "
                    "is not installed): not tested\n");
        return 77;
    }
    fault_proxy proxy(port_of(target));
    const std::string proxied = with_port(target, proxy.port());

    auto scenarios = common_scenarios();
    scenarios.push_back({
        "migration (new schema)",
        {},
        [&](jobs::storage*, const std::string& schema, ledger&) {
            // A stall is given up after 1 s and 2 s more, not 10 minutes.
            jobs::postgres_storage s(proxied, jobs::postgres_options{.schema = schema,
                                                                     .migration_timeout = std::chrono::seconds(1),
                                                                     .notifications = false,
                                                                     .transaction_pooling = pooled});
        },
        [](jobs::storage& s, const ledger&, bool) -> std::string {
            return total(s) == 0 ? std::string() : "jobs in a new schema";
        },
        true,
    });

    std::vector<fault> modes{fault::drop_once, fault::drop_persistent};
    if (stalls)
        modes.push_back(fault::stall);
    const auto started = std::chrono::steady_clock::now();
    totals all;
    long readiness_probes = 0;
    long run_number = 0;
    print_header();
    for (const auto& sc : scenarios) {
        for (auto m : modes) {
            all.add(until_clean(sc.name, fault_name(m), max_n, [&](long n) {
                const std::string schema = "faults_" + std::to_string(run_number++);
                // Directly, not through the proxy: what the operation finds.
                auto open_direct = [&]() -> std::unique_ptr<jobs::storage> {
                    return std::make_unique<jobs::postgres_storage>(
                        direct, jobs::postgres_options{.schema = schema, .notifications = false});
                };
                ledger l;
                if (sc.setup || !sc.opens) {
                    auto s = open_direct();
                    if (sc.setup)
                        sc.setup(*s, l);
                    l.total_before = total(*s);
                }
                // Through the proxy, with a short statement_timeout so that
                // a stalled call is given up soon (after it and 2 s). Its
                // statements are prepared before the fault is armed: the
                // faults fall in the operation's own round trips (a
                // connection's first ones are the migration's scenario).
                std::unique_ptr<jobs::postgres_storage> live;
                if (!sc.opens) {
                    live = std::make_unique<jobs::postgres_storage>(
                        proxied, jobs::postgres_options{.schema = schema,
                                                        .statement_timeout = std::chrono::milliseconds(200),
                                                        .notifications = false,
                                                        .transaction_pooling = pooled});
                    live->counts();
                }
                // While the server is out of reach (drop always), a host with
                // the jobs server on it, through the proxy, starts and says
                // it is not ready; once lifted, ready. Built before the fault.
                bench::readiness_around_fault readiness(
                    m == fault::drop_persistent && !sc.opens
                        ? std::make_shared<jobs::postgres_storage>(
                              proxied, jobs::postgres_options{.schema = schema,
                                                              .statement_timeout = std::chrono::milliseconds(200),
                                                              .notifications = false,
                                                              .transaction_pooling = pooled})
                        : nullptr);
                auto while_failing = [&] { return readiness.while_failing(proxy.injected() != 0, readiness_probes); };
                auto once_lifted = [&] { return readiness.once_lifted(); };
                proxy.arm(n, m);
                auto counted = [&] { return std::pair<long, long>(proxy.injected(), proxy.operations()); };
                auto lift = [&] { proxy.disarm(); };
                // The call that finds the connection broken fails; the
                // next one connects again.
                return operate(sc, live.get(), schema, l, counted, lift, 2, open_direct, while_failing, once_lifted);
            }));
        }
    }
    print_summary(all, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    std::printf("hosts started on the failing storage and probed for readiness: %ld\n", readiness_probes);
    return all.violations == 0 ? 0 : 1;
}
