// crash_loop: SIGKILLs job worker processes at random moments, thousands of
// times, while the others keep working and new jobs keep arriving, on one
// SQLite file (synchronous = FULL). Every handler records each run, before
// and after its work, in a second SQLite file. The workers open both files
// through a VFS that keeps what they write to the WAL in memory until it is
// synced, so a SIGKILL loses every commit the disk had not been told to
// keep, as a power loss would (see bench/support/fault_vfs.hpp): it proves
// that a commit is synced before anyone is told of it. With --sync normal
// the shim's model no longer holds (a commit is seen before it is synced),
// and the loop fails at once: that shows the check bites, not what normal
// costs on a real machine.
//
// After each kill, and at the end (once every job is final):
//   acknowledged enqueues lost        every id an enqueue returned exists
//   completions lost                  a job seen succeeded stays succeeded
//   jobs run twice while alive        a job ran again only after the process
//                                     of its earlier run was killed
// At the end:
//   duplicates <= leases recovered    every run again follows a recovery
//   unfinished                        every job ends succeeded
// Prints the kill count and each figure; exits 1 if any is violated.
//
// With --storage postgresql the jobs live in a PostgreSQL server the loop
// starts (tests/tools/postgres-server) instead of the file, and every tenth
// kill also stops the server at once (every connection broken) and starts
// it again: the workers and the loop itself carry on through it. The run
// records stay in their SQLite file.
//
//   crash_loop [--kills N] [--seconds S] [--workers W] [--dir D] [--sync full|normal] [--storage sqlite|postgresql]
#include "support/fault_vfs.hpp"
#include "support/postgres_server.hpp"
#include "support/started_pipe.hpp"

#include <hosting/hosting.hpp>
#include <hosting/jobs/server.hpp>
#include <hosting/jobs/open_storage.hpp>
#include <hosting/jobs/sqlite_storage.hpp>

#include <sqlite3.h>

#include <boost/asio/this_coro.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fcntl.h>
#include <filesystem>
#include <map>
#include <random>
#include <set>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace asio = boost::asio;
namespace jobs = hosting::jobs;
using jobs::job_state;
using namespace std::chrono_literals;

namespace {

std::int64_t now_us()
{
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

void check_sqlite(int rc, sqlite3* db, const char* what)
{
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        std::fprintf(stderr, "%s: %s\n", what, sqlite3_errmsg(db));
        std::exit(3);
    }
}

sqlite3* open_runs(const std::string& path)
{
    sqlite3* db = nullptr;
    check_sqlite(sqlite3_open(path.c_str(), &db), db, "open runs");
    sqlite3_busy_timeout(db, 30000);
    check_sqlite(sqlite3_exec(db,
                              "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; "
                              "CREATE TABLE IF NOT EXISTS runs (job INTEGER, attempt INTEGER, pid INTEGER, "
                              "phase TEXT, at_us INTEGER)",
                              nullptr, nullptr, nullptr),
                 db, "create runs");
    return db;
}

// Where the jobs live: the file, or PostgreSQL ("postgresql" as the sync
// argument, the connection string as the path).
std::shared_ptr<jobs::storage> open_jobs(const std::string& where, const std::string& sync)
{
    if (sync == "postgresql")
        return jobs::open_storage(where, "crash_loop");
    jobs::sqlite_options sqlite;
    sqlite.sync = sync == "full" ? jobs::sqlite_options::durability::full : jobs::sqlite_options::durability::normal;
    return std::make_shared<jobs::sqlite_storage>(where, sqlite);
}

// A worker: a host running jobs from the store, recording each run.
int worker(const std::string& db_path, const std::string& runs_path, const std::string& node, const std::string& sync,
           int started_fd, char* argv0)
{
    fault_vfs::install();
    fault_vfs::lose_unsynced_writes(true);
    sqlite3* runs = open_runs(runs_path);
    sqlite3_stmt* insert = nullptr;
    check_sqlite(sqlite3_prepare_v2(runs, "INSERT INTO runs VALUES (?, ?, ?, ?, ?)", -1, &insert, nullptr), runs,
                 "prepare");
    auto record = [&](jobs::job_id id, int attempt, const char* phase) {
        sqlite3_bind_int64(insert, 1, id);
        sqlite3_bind_int(insert, 2, attempt);
        sqlite3_bind_int64(insert, 3, ::getpid());
        sqlite3_bind_text(insert, 4, phase, -1, SQLITE_STATIC);
        sqlite3_bind_int64(insert, 5, now_us());
        check_sqlite(sqlite3_step(insert), runs, "record a run");
        sqlite3_reset(insert);
    };
    char level[] = "--Logging:LogLevel:Default=Warning";
    char* args[] = {argv0, level, nullptr};
    auto builder = hosting::host::create_builder(2, args);
    jobs::server_options options;
    options.node_id = node;
    options.workers = 4;
    options.poll_interval = 100ms;
    options.heartbeat_interval = 200ms;
    options.lease_duration = 1s;
    // A server restart takes the storage away for a second or so: a lease
    // must outlast it, or a live node's jobs would go to another.
    if (sync == "postgresql")
        options.lease_duration = 5s;
    std::mt19937 random(static_cast<unsigned>(::getpid()));
    // A worker may start while the server restarts: it waits for it, as a
    // supervisor restarting a process that failed to start would.
    std::shared_ptr<jobs::storage> store;
    for (int attempt = 1; !store; ++attempt) {
        try {
            store = open_jobs(db_path, sync);
        } catch (const jobs::storage_error& e) {
            if (attempt == 300) {
                std::fprintf(stderr, "crash_loop worker: %s\n", e.what());
                return 3;
            }
            std::this_thread::sleep_for(100ms);
        }
    }
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("work", [&](int, jobs::job_context& context) -> asio::awaitable<void> {
            record(context.id(), context.attempt(), "start");
            const auto work = std::chrono::milliseconds(random() % 50);
            co_await hosting::delay(work, context.stop_token());
            record(context.id(), context.attempt(), "end");
        });
    auto host = builder.build();
    const auto told = bench::tell_parent_when_started(host, started_fd);
    return host.run();
}

// Strings moved in, not literals assigned: that draws a false -Wrestrict
// from GCC 12 at -O3. A crash charges an attempt to a job that had
// started: many attempts.
jobs::enqueue_request work_request(std::string kind, std::string queue, std::string args)
{
    jobs::enqueue_request r;
    r.kind = std::move(kind);
    r.queue = std::move(queue);
    r.args = std::move(args);
    r.max_attempts = 1000;
    return r;
}

struct worker_process {
    pid_t pid = 0;
    int slot = 0;
    int generation = 0;
    bench::started_pipe started;
};

struct figures {
    long kills = 0;
    long enqueued = 0;
    long acknowledged_lost = 0;
    long completions_lost = 0;
    long run_twice_alive = 0;
    long duplicates = 0;
    long leases_recovered = 0;
    long unfinished = 0;
    long records_lost = 0;
    long workers_died = 0; // ended other than by our SIGKILL or cleanly at our SIGTERM
};

// A storage call of the loop's own, tried again while the server restarts.
template <class F>
auto with_retries(F&& call)
{
    for (int attempt = 1;; ++attempt) {
        try {
            return call();
        } catch (const jobs::storage_error&) {
            if (attempt == 300)
                throw;
            std::this_thread::sleep_for(100ms);
        }
    }
}

class parent {
public:
    parent(std::string dir, int workers, std::string self, std::string sync, std::string postgres)
        : sync_(std::move(sync)), dir_(std::move(dir)), db_(dir_ + "/crash_loop.db"), runs_(dir_ + "/crash_loop_runs.db"),
          self_(std::move(self)), slots_(static_cast<std::size_t>(workers))
    {
        for (const auto& p : {db_, runs_})
            for (const char* suffix : {"", "-wal", "-shm"})
                std::filesystem::remove(p + suffix);
        if (!postgres.empty())
            db_ = std::move(postgres);
        store_ = open_jobs(db_, sync_ == "postgresql" ? sync_ : "full");
        sqlite3_close(open_runs(runs_));
        for (std::size_t i = 0; i < slots_.size(); ++i)
            start(static_cast<int>(i));
    }

    void start(int slot)
    {
        auto& w = slots_[static_cast<std::size_t>(slot)];
        w.slot = slot;
        ++w.generation;
        // Even slots come back under the same id (a StatefulSet pod): they
        // take their jobs back at once. Odd ones get a new id: their old
        // leases must expire.
        // Appended, not concatenated: GCC 12 at -O3 draws a false
        // -Wrestrict from chains of string temporaries.
        std::string node = "w";
        node += std::to_string(slot);
        if (slot % 2) {
            node += '-';
            node += std::to_string(w.generation);
        }
        const std::string log = dir_ + "/crash_loop_worker" + std::to_string(slot) + ".log";
        w.started = bench::started_pipe();
        const pid_t pid = ::fork();
        if (pid == 0) {
            const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            ::dup2(fd, 1);
            ::dup2(fd, 2);
            const std::string started = w.started.keep_for_child();
            ::execl(self_.c_str(), self_.c_str(), "--worker", db_.c_str(), runs_.c_str(), node.c_str(),
                    sync_.c_str(), started.c_str(), static_cast<char*>(nullptr));
            std::_Exit(127);
        }
        w.started.forked();
        w.pid = pid;
    }

    void kill_one(std::mt19937& random)
    {
        auto& w = slots_[random() % slots_.size()];
        ::kill(w.pid, SIGKILL);
        int status = 0;
        ::waitpid(w.pid, &status, 0);
        killed_at_[w.pid] = now_us();
        ++f_.kills;
        // A worker that had died on its own is no kill of ours.
        if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
            ++f_.workers_died;
            std::printf("VIOLATION worker %d had ended by itself (status %d)\n", w.pid, status);
        }
        start(w.slot);
    }

    // Each job with a key of its own, so that an enqueue tried again after
    // a broken connection (committed or not) makes each job once.
    void enqueue(int n)
    {
        std::vector<jobs::enqueue_request> batch;
        for (int i = 0; i < n; ++i) {
            auto r = work_request("work", "default", "1");
            r.unique_key = "crash-loop-" + std::to_string(f_.enqueued + i);
            batch.push_back(std::move(r));
        }
        for (const auto& r : with_retries([&] { return store_->enqueue(batch, jobs::clock::now()); }))
            acknowledged_.insert(r.id);
        f_.enqueued += n;
    }

    // What the file holds now, against what it was told and showed before.
    void check()
    {
        std::map<jobs::job_id, job_state> states;
        jobs::job_filter all;
        all.limit = 10'000'000;
        for (const auto& j : with_retries([&] { return store_->list(all); }))
            states[j.id] = j.state;
        for (auto id : acknowledged_)
            if (!states.contains(id)) {
                ++f_.acknowledged_lost;
                std::printf("VIOLATION acknowledged job %lld lost\n", static_cast<long long>(id));
            }
        for (auto id : succeeded_)
            if (states[id] != job_state::succeeded) {
                ++f_.completions_lost;
                std::printf("VIOLATION job %lld was succeeded, now %s\n", static_cast<long long>(id),
                            std::string(jobs::to_string(states[id])).c_str());
            }
        for (const auto& [id, state] : states)
            if (state == job_state::succeeded)
                succeeded_.insert(id);
        judge_runs();
    }

    bool wait_all_final(std::chrono::seconds bound)
    {
        const auto until = std::chrono::steady_clock::now() + bound;
        while (std::chrono::steady_clock::now() < until) {
            const auto c = with_retries([&] { return store_->counts(); });
            if (c[job_state::succeeded] == static_cast<std::int64_t>(acknowledged_.size()))
                return true;
            std::this_thread::sleep_for(100ms);
        }
        return false;
    }

    // A worker forked after the last kill may not have its signal handlers
    // yet: each is stopped once it has started, or has ended (which the
    // wait then reports).
    void stop_all()
    {
        for (auto& w : slots_) {
            w.started.wait(60s);
            ::kill(w.pid, SIGTERM);
        }
        for (auto& w : slots_) {
            int status = 0;
            ::waitpid(w.pid, &status, 0);
            if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
                ++f_.workers_died;
                std::printf("VIOLATION worker %d's graceful stop ended with status %d\n", w.pid, status);
            }
        }
    }

    // Reads the runs the handlers recorded since the last reading, and
    // judges each new start against the kills: a job started again while
    // the process of its earlier run lived is a violation, found after the
    // kill that follows it, not only at the end.
    void judge_runs()
    {
        sqlite3* db = open_runs(runs_);
        sqlite3_stmt* s = nullptr;
        check_sqlite(sqlite3_prepare_v2(db, "SELECT rowid, job, pid, phase, at_us FROM runs WHERE rowid > ?1 ORDER BY rowid",
                                        -1, &s, nullptr),
                     db, "read runs");
        sqlite3_bind_int64(s, 1, runs_read_);
        while (sqlite3_step(s) == SQLITE_ROW) {
            runs_read_ = sqlite3_column_int64(s, 0);
            const auto id = sqlite3_column_int64(s, 1);
            const auto pid = static_cast<pid_t>(sqlite3_column_int64(s, 2));
            const std::string phase = reinterpret_cast<const char*>(sqlite3_column_text(s, 3));
            auto& list = runs_seen_[id];
            if (phase == "start")
                list.push_back({pid, sqlite3_column_int64(s, 4)});
            else
                for (auto& r : list)
                    if (r.pid == pid)
                        r.ended = true;
        }
        sqlite3_finalize(s);
        sqlite3_close(db);
        for (auto& [id, list] : runs_seen_) {
            auto& judged = judged_[id];
            for (std::size_t i = std::max<std::size_t>(1, judged); i < list.size(); ++i) {
                const auto earlier = list[i - 1];
                auto k = killed_at_.find(earlier.pid);
                if (k == killed_at_.end() || k->second > list[i].at) {
                    ++f_.run_twice_alive;
                    std::printf("VIOLATION job %lld ran again in %d while %d, which ran it, lived\n",
                                static_cast<long long>(id), list[i].pid, earlier.pid);
                }
            }
            judged = list.size();
        }
    }

    // Runs, as the handlers recorded them, against the kills and the
    // jobs' histories.
    void analyse()
    {
        judge_runs();
        for (auto id : acknowledged_) {
            auto j = store_->find(id, true);
            if (!j || j->state != job_state::succeeded) {
                ++f_.unfinished;
                continue;
            }
            for (const auto& h : j->history)
                if (h.reason.find("expired") != std::string::npos || h.reason.find("started again") != std::string::npos)
                    ++f_.leases_recovered;
            const auto& list = runs_seen_[id];
            if (list.empty() || !list.back().ended) {
                ++f_.records_lost;
                std::printf("VIOLATION job %lld succeeded without a complete run on record\n",
                            static_cast<long long>(id));
            }
            if (list.size() > 1)
                f_.duplicates += static_cast<long>(list.size() - 1);
        }
    }

    figures& result() { return f_; }

private:
    std::string sync_, dir_, db_, runs_, self_;
    std::vector<worker_process> slots_;
    std::shared_ptr<jobs::storage> store_;
    std::set<jobs::job_id> acknowledged_, succeeded_;
    std::map<pid_t, std::int64_t> killed_at_;
    struct run {
        pid_t pid;
        std::int64_t at;
        bool ended = false;
    };
    std::map<jobs::job_id, std::vector<run>> runs_seen_;
    std::map<jobs::job_id, std::size_t> judged_; // starts judged, per job
    std::int64_t runs_read_ = 0;                 // the last row of runs read
    figures f_;
};

} // namespace

int main(int argc, char** argv)
{
    if (argc == 7 && std::string(argv[1]) == "--worker")
        return worker(argv[2], argv[3], argv[4], argv[5], std::atoi(argv[6]), argv[0]);
    long kills = 200;
    double seconds = 600;
    int workers = 3;
    std::string sync = "full";
    std::string storage = "sqlite";
    std::string dir = std::filesystem::temp_directory_path().string();
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--kills")
            kills = std::atol(argv[i + 1]);
        else if (a == "--seconds")
            seconds = std::atof(argv[i + 1]);
        else if (a == "--workers")
            workers = std::atoi(argv[i + 1]);
        else if (a == "--dir")
            dir = argv[i + 1];
        else if (a == "--sync" && (std::string(argv[i + 1]) == "full" || std::string(argv[i + 1]) == "normal"))
            sync = argv[i + 1];
        else if (a == "--storage" && (std::string(argv[i + 1]) == "sqlite" || std::string(argv[i + 1]) == "postgresql"))
            storage = argv[i + 1];
        else {
            std::fprintf(stderr, "usage: crash_loop [--kills N] [--seconds S] [--workers W] [--dir D] "
                                 "[--sync full|normal] [--storage sqlite|postgresql]\n");
            return 2;
        }
    }
    std::filesystem::create_directories(dir);
    postgres_server server(dir + "/crash_loop_postgres");
    std::string postgres;
    if (storage == "postgresql") {
        postgres = server.start();
        if (postgres.empty()) {
            std::printf("VIOLATED: no PostgreSQL server could be started\n");
            return 1;
        }
        sync = "postgresql";
    }
    long restarts = 0;
    const std::string self = std::filesystem::canonical("/proc/self/exe").string();
    std::mt19937 random(12345);
    const auto started = std::chrono::steady_clock::now();
    const auto deadline = started + std::chrono::duration<double>(seconds);
    parent p(dir, workers, self, sync, postgres);
    bool drained = false;
    try {
        while (p.result().kills < kills && std::chrono::steady_clock::now() < deadline) {
            p.enqueue(30);
            // A random moment: during a start, a claim, a handler, a commit.
            std::this_thread::sleep_for(std::chrono::milliseconds(10 + random() % 250));
            p.kill_one(random);
            if (!postgres.empty() && p.result().kills % 10 == 0) {
                if (!server.restart()) {
                    std::printf("VIOLATION the PostgreSQL server did not start again\n");
                    break;
                }
                ++restarts;
            }
            p.check();
        }
        drained = p.wait_all_final(120s);
        p.check();
        p.stop_all();
        p.analyse();
    } catch (const jobs::storage_error& e) {
        // A damaged file: every figure after this point is unknown.
        std::printf("VIOLATION the job file: %s\n", e.what());
        p.stop_all();
    }
    const auto& f = p.result();
    const auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("kills %ld, jobs %ld, %s in %.1f s\n", f.kills, f.enqueued, drained ? "all final" : "NOT ALL FINAL",
                elapsed);
    if (!postgres.empty())
        std::printf("postgresql server restarts %ld\n", restarts);
    std::printf("acknowledged enqueues lost %ld\n", f.acknowledged_lost);
    std::printf("completions lost %ld\n", f.completions_lost);
    std::printf("run records lost %ld\n", f.records_lost);
    std::printf("jobs run twice while their process lived %ld\n", f.run_twice_alive);
    std::printf("duplicates after kills %ld, leases recovered %ld\n", f.duplicates, f.leases_recovered);
    std::printf("jobs not succeeded at the end %ld\n", f.unfinished);
    std::printf("workers that died by themselves %ld\n", f.workers_died);
    const bool ok = drained && f.acknowledged_lost == 0 && f.completions_lost == 0 && f.records_lost == 0 &&
                    f.run_twice_alive == 0 && f.duplicates <= f.leases_recovered && f.unfinished == 0 && f.workers_died == 0;
    std::printf("%s\n", ok ? "ok" : "VIOLATED");
    return ok ? 0 : 1;
}
