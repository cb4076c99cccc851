// soak: a stream of jobs through two worker processes, with random
// failures, retries, timeouts, cancels from another process, snoozes and
// continuations, while one worker is restarted again and again (SIGKILL and
// SIGTERM in turn). Jobs go in windows: each window is enqueued, waited
// for, every job's final state compared with what its handler dictated,
// then pruned. After the warm-up (the first tenth of the windows), the
// long-lived worker's memory and file descriptors and the storage's size
// must stay flat: the program prints their drift.
//
// With --storage postgresql the jobs live in a PostgreSQL server the soak
// starts (tests/tools/postgres-server), and the storage's size is that of
// the schema's tables and indexes, as the server reports it.
//
//   soak [--jobs N] [--window W] [--restart-every R] [--dir D] [--storage sqlite|postgresql]
#include "support/postgres_server.hpp"
#include "support/started_pipe.hpp"

#include <hosting/hosting.hpp>
#include <hosting/jobs/open_storage.hpp>
#include <hosting/jobs/server.hpp>
#include <hosting/jobs/sqlite_storage.hpp>

#ifdef HOSTING_SOAK_POSTGRES
#include <libpq-fe.h>
#endif

#include <boost/asio/this_coro.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace asio = boost::asio;
namespace jobs = hosting::jobs;
using jobs::job_state;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

// What each job's handler does, by its arguments.
//   ok        returns
//   fail      throws what is never retried: failed
//   retry     fails its first attempt, then returns
//   timeout   outlives its 30-ms timeout every time: failed
//   cancel    waits to be stopped; the parent cancels it: cancelled
//   snooze    snoozes once, then returns
int worker(const std::string& db, const std::string& node, int started_fd, char* argv0)
{
    char level[] = "--Logging:LogLevel:Default=Error";
    char* args[] = {argv0, level, nullptr};
    auto builder = hosting::host::create_builder(2, args);
    jobs::server_options options;
    options.node_id = node;
    options.workers = 8;
    options.poll_interval = 50ms;
    options.heartbeat_interval = 200ms;
    options.lease_duration = 2s;
    options.shutdown_grace = 500ms;
    options.retention.succeeded.reset(); // the parent prunes what it checked
    options.retention.cancelled.reset();
    options.retention.deleted.reset();
    jobs::kind_options kind;
    kind.retry.backoff = [](int) { return 5ms; };
    kind.retry.never_for<std::invalid_argument>();
    auto snoozed = std::make_shared<std::set<jobs::job_id>>();
    jobs::add_jobs(builder, jobs::open_storage(db, "soak"), options)
        .register_kind<std::string>(
            "soak",
            [snoozed](std::string what, jobs::job_context& context) -> asio::awaitable<void> {
                if (what == "fail")
                    throw std::invalid_argument("failed on purpose");
                if (what == "retry" && context.attempt() == 1)
                    throw std::runtime_error("first attempt fails on purpose");
                if (what == "timeout" || what == "cancel") {
                    const auto stop = context.stop_token(); // named: see docs/gcc12.md
                    co_await hosting::delay(10s, stop);
                }
                if (what == "snooze") {
                    // Forgotten on the run after the snooze: this set must
                    // not grow, or the drift measured would be its own.
                    if (snoozed->insert(context.id()).second)
                        throw jobs::snooze(5ms);
                    snoozed->erase(context.id());
                }
                co_return;
            },
            kind);
    auto host = builder.build();
    const auto told = bench::tell_parent_when_started(host, started_fd);
    return host.run();
}

struct planned {
    jobs::job_id id = 0;
    std::string what;
    job_state expected = job_state::succeeded;
};

job_state expected_of(const std::string& what)
{
    if (what == "fail" || what == "timeout")
        return job_state::failed;
    if (what == "cancel")
        return job_state::cancelled;
    return job_state::succeeded;
}

long rss_kib(pid_t pid)
{
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("VmRSS:", 0) == 0)
            return std::atol(line.c_str() + 6);
    return -1;
}

long fds(pid_t pid)
{
    long n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); ++it)
        ++n;
    return n;
}

// The storage's size: the SQLite file and its WAL, or the PostgreSQL
// schema's tables, indexes and TOAST.
long storage_kib(const std::string& db, bool postgres)
{
#ifdef HOSTING_SOAK_POSTGRES
    if (postgres) {
        PGconn* c = PQconnectdb(db.c_str());
        PGresult* r = PQexec(c, "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'soak' AND "
                                "c.relkind = 'r'");
        const long kib = PQresultStatus(r) == PGRES_TUPLES_OK ? std::atol(PQgetvalue(r, 0, 0)) / 1024 : -1;
        PQclear(r);
        PQfinish(c);
        return kib;
    }
#else
    (void)postgres;
#endif
    std::uintmax_t total = 0;
    std::error_code ec;
    for (const char* suffix : {"", "-wal"}) {
        const auto size = std::filesystem::file_size(db + suffix, ec);
        if (!ec)
            total += size;
    }
    return static_cast<long>(total / 1024);
}

struct worker_process {
    pid_t pid = 0;
    bench::started_pipe started;
};

worker_process spawn(const std::string& self, const std::string& db, const std::string& node, const std::string& log)
{
    worker_process w;
    w.pid = ::fork();
    if (w.pid == 0) {
        const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        const std::string started = w.started.keep_for_child();
        ::execl(self.c_str(), self.c_str(), "--worker", db.c_str(), node.c_str(), started.c_str(),
                static_cast<char*>(nullptr));
        std::_Exit(127);
    }
    w.started.forked();
    return w;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc == 5 && std::string(argv[1]) == "--worker")
        return worker(argv[2], argv[3], std::atoi(argv[4]), argv[0]);
    long total = 20000;
    long window = 2000;
    long restart_every = 2;
    std::string dir = std::filesystem::temp_directory_path().string();
    std::string storage = "sqlite";
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--jobs")
            total = std::atol(argv[i + 1]);
        else if (a == "--window")
            window = std::max(1L, std::atol(argv[i + 1]));
        else if (a == "--restart-every")
            restart_every = std::max(1L, std::atol(argv[i + 1]));
        else if (a == "--dir")
            dir = argv[i + 1];
        else if (a == "--storage" && (std::string(argv[i + 1]) == "sqlite" || std::string(argv[i + 1]) == "postgresql"))
            storage = argv[i + 1];
        else {
            std::fprintf(stderr, "usage: soak [--jobs N] [--window W] [--restart-every R] [--dir D] "
                                 "[--storage sqlite|postgresql]\n");
            return 2;
        }
    }
    std::filesystem::create_directories(dir);
    const std::string self = std::filesystem::canonical("/proc/self/exe").string();
    std::string db = dir + "/soak.db";
    const std::string log = dir + "/soak_workers.log";
    for (const char* suffix : {"", "-wal", "-shm"})
        std::filesystem::remove(db + suffix);
    std::filesystem::remove(log);
    const bool postgres = storage == "postgresql";
    postgres_server server(dir + "/soak_postgres");
    if (postgres) {
        db = server.start(); // the workers get the connection string in the file's place
        if (db.empty()) {
            std::printf("VIOLATED: no PostgreSQL server could be started\n");
            return 1;
        }
    }
    auto opened = jobs::open_storage(db, "soak");
    auto& store = *opened;

    auto steady_process = spawn(self, db, "steady", log);
    const pid_t steady_worker = steady_process.pid;
    int generation = 0;
    auto restarted = spawn(self, db, "restarted", log);
    long restarts = 0, violations = 0, done = 0, windows = 0;
    std::map<job_state, long> ended;
    std::mt19937 random(7);
    struct sample {
        long rss, fds, kib;
    };
    std::vector<sample> samples;
    const auto started = steady::now();

    while (done < total) {
        const long n = std::min(window, total - done);
        // Parents first (a fifth of the window, ok or fail), then their
        // on_success continuations, then the rest.
        std::vector<planned> plan;
        std::vector<jobs::enqueue_request> parents, rest;
        const char* kinds[] = {"ok", "ok", "ok", "ok", "fail", "retry", "retry", "timeout", "cancel", "snooze"};
        auto request_of = [](const std::string& what) {
            jobs::enqueue_request r;
            r.kind = "soak";
            r.queue = "default";
            r.args = "\"" + what + "\"";
            r.max_attempts = 5; // a kill charges an attempt to a job that had started
            if (what == "timeout")
                r.timeout = 30ms;
            return r;
        };
        const long chains = n / 10;
        std::vector<std::string> parent_what;
        for (long i = 0; i < chains; ++i) {
            parent_what.push_back(random() % 4 == 0 ? "fail" : "ok");
            parents.push_back(request_of(parent_what.back()));
        }
        const auto parent_ids = store.enqueue(parents, jobs::clock::now());
        for (long i = 0; i < chains; ++i) {
            plan.push_back({parent_ids[static_cast<std::size_t>(i)].id, parent_what[static_cast<std::size_t>(i)],
                            expected_of(parent_what[static_cast<std::size_t>(i)])});
            auto child = request_of("ok");
            child.parent_id = parent_ids[static_cast<std::size_t>(i)].id;
            rest.push_back(child);
        }
        std::vector<planned> rest_plan;
        // Under a failed parent a continuation waits (the parent may be
        // retried by hand) until the parent is pruned, which drops it.
        for (long i = 0; i < chains; ++i)
            rest_plan.push_back({0, "continuation",
                                 parent_what[static_cast<std::size_t>(i)] == "ok" ? job_state::succeeded
                                                                                  : job_state::awaiting});
        for (long i = 2 * chains; i < n; ++i) {
            const std::string what = kinds[random() % std::size(kinds)];
            rest.push_back(request_of(what));
            rest_plan.push_back({0, what, expected_of(what)});
        }
        const auto rest_ids = store.enqueue(rest, jobs::clock::now());
        for (std::size_t i = 0; i < rest_plan.size(); ++i) {
            rest_plan[i].id = rest_ids[i].id;
            plan.push_back(rest_plan[i]);
        }

        // Until every job of the window is final; cancelling the cancels.
        const auto bound = steady::now() + 300s;
        std::size_t final_count = 0;
        while (steady::now() < bound) {
            final_count = 0;
            for (const auto& p : plan) {
                auto j = store.find(p.id, false);
                if (j && (jobs::is_final(j->state) || (p.expected == job_state::awaiting &&
                                                        j->state == job_state::awaiting))) {
                    ++final_count;
                } else if (p.what == "cancel" && j && j->state == job_state::running && !j->cancel_requested) {
                    try {
                        store.change_state(p.id, job_state::cancelled, "cancelled by the soak", jobs::clock::now());
                    } catch (const jobs::invalid_transition&) {
                        // It ended meanwhile: the next pass sees how.
                    }
                }
            }
            if (final_count == plan.size())
                break;
            std::this_thread::sleep_for(50ms);
        }
        for (const auto& p : plan) {
            auto j = store.find(p.id, false);
            const auto state = j ? j->state : job_state::deleted;
            ++ended[state];
            // Timed out on every attempt: all five were used.
            if (state == job_state::failed && p.what == "timeout" && j->attempt != 5) {
                ++violations;
                std::printf("VIOLATION job %lld timed out on attempt %d of 5 and was not retried\n",
                            static_cast<long long>(p.id), j->attempt);
            }
            if (state != p.expected) {
                ++violations;
                if (violations <= 20)
                    std::printf("VIOLATION job %lld (%s) ended %s, its handler dictated %s\n",
                                static_cast<long long>(p.id), p.what.c_str(), std::string(jobs::to_string(state)).c_str(),
                                std::string(jobs::to_string(p.expected)).c_str());
            }
        }
        const auto now = jobs::clock::now();
        for (auto s : {job_state::succeeded, job_state::failed, job_state::cancelled, job_state::deleted})
            while (store.prune(s, now + 1s, 5000, now) > 0) {
            }
        // Pruned with their parents: gone, or deleted and pruned in turn.
        for (const auto& p : plan)
            if (p.expected == job_state::awaiting) {
                if (auto j = store.find(p.id, false); j && j->state != job_state::deleted) {
                    ++violations;
                    std::printf("VIOLATION continuation %lld is %s after its failed parent was pruned\n",
                                static_cast<long long>(p.id), std::string(jobs::to_string(j->state)).c_str());
                }
            }
        done += n;
        ++windows;
        // Not after the last window: the end stops it anyway. A SIGTERM
        // waits for the worker's start: before it, the worker has no signal
        // handlers and SIGTERM's default action would end it.
        if (windows % restart_every == 0 && done < total) {
            const int sig = ++generation % 2 ? SIGKILL : SIGTERM;
            if (sig == SIGTERM)
                restarted.started.wait(60s);
            ::kill(restarted.pid, sig);
            int status = 0;
            ::waitpid(restarted.pid, &status, 0);
            // Killed, or stopped cleanly by its SIGTERM: anything else is a
            // worker that died on its own.
            if (sig == SIGKILL ? !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
                               : !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                ++violations;
                std::printf("VIOLATION the restarted worker ended with status %d, not by its %s\n", status,
                            sig == SIGKILL ? "SIGKILL" : "SIGTERM");
            }
            restarted = spawn(self, db, "restarted", log);
            ++restarts;
        }
        // A dead worker has no memory to drift: that must not read as flat.
        if (int status = 0; ::waitpid(steady_worker, &status, WNOHANG) != 0) {
            std::printf("VIOLATION the long-lived worker died (status %d)\n", status);
            return 1;
        }
        samples.push_back({rss_kib(steady_worker), fds(steady_worker), storage_kib(db, postgres)});
    }
    for (auto* w : {&steady_process, &restarted}) {
        w->started.wait(60s);
        ::kill(w->pid, SIGTERM);
        int status = 0;
        ::waitpid(w->pid, &status, 0);
        if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
            ++violations;
            std::printf("VIOLATION a worker's graceful stop ended with status %d\n", status);
        }
    }
    const double seconds = std::chrono::duration<double>(steady::now() - started).count();
    const std::size_t warm = std::max<std::size_t>(1, samples.size() / 10);
    const auto base = samples[warm - 1], last = samples.back();
    std::printf("jobs %ld in %ld windows, %.1f s (%.0f jobs/s), worker restarts %ld\n", done, windows, seconds,
                static_cast<double>(done) / seconds, restarts);
    std::printf("ended: succeeded %ld, failed %ld, cancelled %ld, awaiting a failed parent %ld, other %ld\n",
                ended[job_state::succeeded], ended[job_state::failed], ended[job_state::cancelled],
                ended[job_state::awaiting],
                done - ended[job_state::succeeded] - ended[job_state::failed] - ended[job_state::cancelled] -
                    ended[job_state::awaiting]);
    std::printf("jobs not in the state their handler dictated %ld\n", violations);
    std::printf("after warm-up (window %zu) to the end: worker memory %ld -> %ld KiB (%+ld), file descriptors %ld -> "
                "%ld (%+ld), storage %ld -> %ld KiB (%+ld)\n",
                warm, base.rss, last.rss, last.rss - base.rss, base.fds, last.fds, last.fds - base.fds, base.kib,
                last.kib, last.kib - base.kib);
    // Flat: no descriptor leaked, and memory and storage within what a
    // window's worth of pages and allocator slack can explain.
    const bool flat = last.fds - base.fds <= 2 && last.rss - base.rss <= std::max(8192L, base.rss / 4) &&
                      last.kib - base.kib <= std::max(8192L, base.kib / 2);
    if (!flat)
        std::printf("VIOLATION drift after the warm-up\n");
    const bool ok = violations == 0 && flat;
    std::printf("%s\n", ok ? "ok" : "VIOLATED");
    return ok ? 0 : 1;
}
