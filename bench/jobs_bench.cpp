// Enqueue and drain throughput, and enqueue-to-start latency, of the job
// engine on memory_storage, sqlite_storage (FULL and NORMAL) and
// postgres_storage, beside bare SQLite doing the same claims and completions
// with no engine around it, and a bare PostgreSQL queue woken by NOTIFY.
//
//   jobs_bench [jobs=50000] [latency_samples=2000] [setup label: only that one, without the bare loops]
//
// PostgreSQL: the server HOSTING_BENCH_POSTGRES names (a libpq connection
// string), or else one the bench starts in the current directory with
// tests/tools/postgres-server, durable (fsync on, commits synchronous).
// One figure per line, naming the storage and its setting.
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>
#include <hosting/jobs/server.hpp>
#include <hosting/jobs/sqlite_storage.hpp>
#include "support/bench_common.hpp"
#ifdef HOSTING_POSTGRES_SERVER
#include "support/bare_notify.hpp"
#include "support/postgres_server.hpp"
#include <hosting/jobs/postgres_storage.hpp>
#include <libpq-fe.h>
#endif

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <spdlog/sinks/null_sink.h>

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <poll.h>
#include <unistd.h>
#include <vector>

namespace asio = boost::asio;
namespace jobs = hosting::jobs;
using namespace std::chrono_literals;
using bench::clock_type;
using bench::progress;
using bench::quiet_builder;
using bench::with_commas;

namespace {

// The claims of the engine's drain below (2 workers, the default prefetch),
// which the bare loop and the storage alone make too: a commit's fsync is
// shared by as many jobs in each.
const std::size_t default_prefetch = jobs::server_options{}.prefetch;
const std::size_t claim_size = 2 * default_prefetch;

std::string temp_file(const char* name)
{
    // The current directory, not a tmpfs: flushes must reach a disk.
    auto path = std::filesystem::current_path() / (std::string("hosting-bench-") + name + "-" +
                                                          std::to_string(::getpid()) + ".db");
    for (const char* suffix : {"", "-wal", "-shm"})
        std::filesystem::remove(path.string() + suffix);
    return path.string();
}

void remove_file(const std::string& path)
{
    for (const char* suffix : {"", "-wal", "-shm"})
        std::filesystem::remove(path + suffix);
}

struct setup {
    const char* label;
    std::function<std::shared_ptr<jobs::storage>()> make;
    std::size_t prefetch = default_prefetch;
    // Another node's connection to the same store, for the latency across nodes.
    std::function<std::shared_ptr<jobs::storage>()> elsewhere{};
    // A store of its own to measure the storage without the engine, if any.
    std::function<std::shared_ptr<jobs::storage>()> alone{};
};

// The storage alone, as the bare loop runs: claims of claim_size fused with the
// previous batch's completions, no engine, one thread. What it drains less
// than the bare loop is the storage's SQL; what the engine drains less
// than this is the engine.
void run_storage_alone(const setup& s, std::size_t count)
{
    auto store = s.alone();
    const auto now = jobs::clock::now();
    for (std::size_t i = 0; i < count; i += jobs::max_rows_per_write) {
        std::vector<jobs::enqueue_request> batch(std::min(count - i, jobs::max_rows_per_write));
        for (std::size_t j = 0; j < batch.size(); ++j) {
            batch[j].kind = "noop";
            batch[j].queue = "default";
            batch[j].args = std::to_string(i + j);
        }
        store->enqueue(batch, now);
    }
    jobs::claim_request claim;
    claim.node = "bench";
    claim.queues = {{"default", claim_size}};
    claim.kinds = {"noop"};
    claim.total = claim_size;
    std::vector<jobs::completion> done;
    std::size_t drained = 0;
    const auto began = clock_type::now();
    for (;;) {
        claim.lease_until = jobs::clock::now() + 60s;
        const auto claimed = store->complete_and_claim(done, claim, jobs::clock::now());
        done.clear();
        for (const auto& j : claimed)
            done.push_back({.id = j.id, .attempt = j.attempt, .what = jobs::outcome::succeeded, .run_at = {}, .error = {}, .reason = "succeeded"});
        drained += claimed.size();
        if (claimed.empty())
            break;
    }
    const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
    std::printf("%-24s storage alone, drain (claims of %zu): %6s jobs/s\n", s.label, claim_size,
                with_commas(static_cast<double>(drained) / seconds).c_str());
}

void run_engine(const setup& s, std::size_t count, std::size_t latency_samples)
{
    auto store = s.make();
    progress p;
    auto builder = quiet_builder();
    jobs::server_options options;
    options.workers = 2;
    options.prefetch = s.prefetch;
    options.poll_interval = 1s;
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("noop", [&p](int, jobs::job_context&) -> asio::awaitable<void> {
            p.add();
            co_return;
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();

    // Enqueue from 64 concurrent callers: the engine commits what arrives
    // together in one transaction.
    {
        asio::io_context io(1);
        constexpr std::size_t callers = 64;
        const auto began = clock_type::now();
        for (std::size_t c = 0; c < callers; ++c)
            asio::co_spawn(
                io,
                [&, c]() -> asio::awaitable<void> {
                    for (std::size_t i = c; i < count; i += callers)
                        co_await client.enqueue("noop", static_cast<int>(i));
                },
                asio::detached);
        io.run();
        const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
        std::printf("%-24s enqueue (64 callers):     %12s jobs/s\n", s.label,
                    with_commas(static_cast<double>(count) / seconds).c_str());
    }
    {
        constexpr std::size_t single = 2000;
        const auto began = clock_type::now();
        for (std::size_t i = 0; i < single; ++i)
            client.enqueue_blocking("noop", static_cast<int>(i));
        const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
        std::printf("%-24s enqueue (1 caller):       %12s jobs/s\n", s.label,
                    with_commas(static_cast<double>(single) / seconds).c_str());
    }
    constexpr std::size_t batches = 5, per_batch = 10'000;
    {
        // Bulk enqueues: each batch is one transaction.
        std::vector<jobs::job_batch> prepared(batches);
        for (auto& b : prepared)
            for (std::size_t i = 0; i < per_batch; ++i)
                b.add("noop", static_cast<int>(i));
        const auto began = clock_type::now();
        for (const auto& b : prepared)
            client.enqueue_many_blocking(b);
        const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
        std::printf("%-24s enqueue_many (10,000):    %12s jobs/s\n", s.label,
                    with_commas(static_cast<double>(batches * per_batch) / seconds).c_str());
    }
    const std::size_t total = count + 2000 + batches * per_batch;

    // Drain with two workers, from the start of the host until the last
    // completion has committed: the storage counts every job succeeded.
    // Read every 200 us once the last handler has started, not before, so
    // that the reads do not slow the drain they measure.
    const auto began = clock_type::now();
    host.start_blocking();
    p.wait_for(total);
    while (store->counts()[jobs::job_state::succeeded] < static_cast<std::int64_t>(total))
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
    std::printf("%-24s drain (2 workers):        %12s jobs/s\n", s.label,
                with_commas(static_cast<double>(total) / seconds).c_str());

    // Latency: one job at a time, from the enqueue call to the handler,
    // measured two ways. Back to back: the next job is enqueued as soon as
    // the previous one started, so its claim may wait for the previous
    // one's completion to commit. On an idle node: the previous job's
    // completion has committed and the node has gone back to waiting, as
    // the bare queue's consumer does, before the next job is enqueued.
    const auto measure = [&](const char* what, const std::function<jobs::job_id()>& enqueue) {
        for (const bool idle : {true, false}) {
            std::vector<double> micros;
            micros.reserve(latency_samples);
            for (std::size_t i = 0; i < latency_samples; ++i) {
                std::size_t before;
                {
                    std::lock_guard lock(p.mutex);
                    before = p.done;
                }
                const auto sent = clock_type::now();
                const auto id = enqueue();
                p.wait_for(before + 1);
                const auto started = clock_type::time_point(clock_type::duration(p.last_start_ns.load()));
                micros.push_back(std::chrono::duration<double, std::micro>(started - sent).count());
                if (!idle)
                    continue;
                for (;;) {
                    const auto j = store->find(id, false);
                    if (j && j->state == jobs::job_state::succeeded)
                        break;
                    std::this_thread::sleep_for(std::chrono::microseconds(100));
                }
                // The node's loop, past the commit, looks for work once more
                // before it waits.
                std::this_thread::sleep_for(std::chrono::milliseconds(2));
            }
            std::sort(micros.begin(), micros.end());
            std::printf("%-24s %s, %-12s p50 %6.0f us, p99 %6.0f us\n", s.label, what,
                        idle ? "idle node:" : "back to back:", micros[micros.size() / 2],
                        micros[micros.size() * 99 / 100]);
        }
    };
    measure("enqueue-to-start", [&] { return client.enqueue_blocking("noop", 0).id; });
    // Across nodes: another connection (another node, as far as the
    // storage knows) enqueues; this node's server hears of it and runs it.
    if (s.elsewhere) {
        auto other = s.elsewhere();
        measure("other node's enqueue-to-start", [&] {
            jobs::enqueue_request r;
            r.kind = "noop";
            r.queue = "default";
            r.args = "0";
            return other->enqueue(std::span(&r, 1), jobs::clock::now()).at(0).id;
        });
    }
    host.stop_blocking();
}

// Bare SQLite: the same schema shape, claims of claim_size fused with the previous
// batch's completion, one connection, no engine.
void run_bare(const char* label, const char* synchronous, std::size_t count, std::size_t samples)
{
    const auto path = temp_file("bare");
    sqlite3* db = nullptr;
    sqlite3_open(path.c_str(), &db);
    auto exec = [&](const char* sql) { sqlite3_exec(db, sql, nullptr, nullptr, nullptr); };
    exec("PRAGMA journal_mode = WAL");
    exec(synchronous);
    exec("CREATE TABLE jobs (id INTEGER PRIMARY KEY, kind TEXT, queue TEXT, args TEXT, priority INTEGER, "
         "state INTEGER, attempt INTEGER, run_at INTEGER, lease_owner TEXT, history TEXT)");
    exec("CREATE INDEX ready ON jobs (queue, priority, run_at, id) WHERE state = 1");
    {
        sqlite3_stmt* insert = nullptr;
        sqlite3_prepare_v2(db,
                           "INSERT INTO jobs (kind, queue, args, priority, state, attempt, run_at, history) "
                           "VALUES ('noop', 'default', ?1, 0, 1, 0, 0, '[]')",
                           -1, &insert, nullptr);
        for (std::size_t i = 0; i < count; i += 100) {
            exec("BEGIN");
            for (std::size_t j = i; j < std::min(count, i + 100); ++j) {
                sqlite3_bind_int64(insert, 1, static_cast<sqlite3_int64>(j));
                sqlite3_step(insert);
                sqlite3_reset(insert);
            }
            exec("COMMIT");
        }
        sqlite3_finalize(insert);
    }
    sqlite3_stmt* claim = nullptr;
    sqlite3_stmt* complete = nullptr;
    const std::string claim_sql = "UPDATE jobs SET state = 3, attempt = attempt + 1, lease_owner = 'bare', "
                                  "history = json_insert(history, '$[#]', json_array(1, 3, 0, 'claimed', '')) "
                                  "WHERE id IN (SELECT id FROM jobs WHERE state = 1 AND queue = 'default' "
                                  "ORDER BY priority, run_at, id LIMIT " +
                                  std::to_string(claim_size) + ") RETURNING id, args";
    sqlite3_prepare_v2(db, claim_sql.c_str(), -1, &claim, nullptr);
    sqlite3_prepare_v2(db,
                       "UPDATE jobs SET state = 5, lease_owner = NULL, "
                       "history = json_insert(history, '$[#]', json_array(3, 5, 0, 'succeeded', '')) "
                       "WHERE id = ?1 AND state = 3",
                       -1, &complete, nullptr);
    std::vector<sqlite3_int64> previous;
    std::size_t drained = 0;
    const auto began = clock_type::now();
    for (;;) {
        exec("BEGIN IMMEDIATE");
        for (auto id : previous) {
            sqlite3_bind_int64(complete, 1, id);
            sqlite3_step(complete);
            sqlite3_reset(complete);
        }
        previous.clear();
        while (sqlite3_step(claim) == SQLITE_ROW)
            previous.push_back(sqlite3_column_int64(claim, 0));
        sqlite3_reset(claim);
        exec("COMMIT");
        drained += previous.size();
        if (previous.empty())
            break;
    }
    const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
    std::printf("%-24s drain (claims of %zu):    %12s jobs/s\n", label, claim_size,
                with_commas(static_cast<double>(drained) / seconds).c_str());
    sqlite3_finalize(claim);
    sqlite3_finalize(complete);
    // The floor of enqueue-to-start in one process: a job starts only once
    // the transaction that stored it committed (with FULL, one fsync).
    // Commits back to back, and then each on an idle machine, as an idle
    // node's enqueue-to-start measures it, followed by the handoff to the
    // thread that runs handlers (the storage's thread never runs them),
    // waiting as a host's does in its io_context's reactor (a timer keeps
    // one); the time is taken when the posted handler runs.
    {
        sqlite3_stmt* insert = nullptr;
        sqlite3_prepare_v2(db,
                           "INSERT INTO jobs (kind, queue, args, priority, state, attempt, run_at, history) "
                           "VALUES ('noop', 'default', '0', 0, 1, 0, 0, '[]')",
                           -1, &insert, nullptr);
        const auto commit = [&] {
            exec("BEGIN IMMEDIATE");
            sqlite3_step(insert);
            sqlite3_reset(insert);
            exec("COMMIT");
        };
        const auto print = [&](const char* what, std::vector<double>& micros) {
            std::sort(micros.begin(), micros.end());
            std::printf("%-24s %-26s p50 %6.0f us, p99 %6.0f us\n", label, what, micros[micros.size() / 2],
                        micros[micros.size() * 99 / 100]);
        };
        std::vector<double> micros;
        for (std::size_t i = 0; i < samples; ++i) {
            const auto began = clock_type::now();
            commit();
            micros.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - began).count());
        }
        print("one job's commit:", micros);

        asio::io_context handlers(1);
        asio::steady_timer keep(handlers, clock_type::time_point::max());
        keep.async_wait([](boost::system::error_code) {});
        std::thread runner([&] { handlers.run(); });
        std::vector<double> committed, handed;
        // Outlives the loop: the handler still notifies after its store,
        // which the waiting thread may already have seen.
        std::atomic<std::size_t> ran{0};
        for (std::size_t i = 0; i < samples; ++i) {
            std::this_thread::sleep_for(2ms);
            const auto began = clock_type::now();
            commit();
            committed.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - began).count());
            asio::post(handlers, [&, began] {
                handed.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - began).count());
                ++ran;
                ran.notify_one();
            });
            ran.wait(i);
        }
        keep.cancel();
        runner.join();
        sqlite3_finalize(insert);
        print("idle, one job's commit:", committed);
        print("idle, commit and handoff:", handed);
    }
    sqlite3_close(db);
    remove_file(path);
}

#ifdef HOSTING_POSTGRES_SERVER
// The baseline for the latency across nodes (support/bare_notify.hpp).
void run_bare_notify(const std::string& conninfo, std::size_t samples)
{
    const auto micros = bench::bare_notify_latencies(conninfo, samples);
    std::printf("%-24s enqueue-to-claim p50:     %12.0f us\n", "bare postgresql NOTIFY", micros[micros.size() / 2]);
    std::printf("%-24s enqueue-to-claim p99:     %12.0f us\n", "bare postgresql NOTIFY",
                micros[micros.size() * 99 / 100]);
}
#endif

} // namespace

int main(int argc, char** argv)
{
    const std::size_t count = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 50000;
    const std::size_t samples = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 2000;
    std::printf("jobs_bench: %zu no-op jobs, %zu latency samples, files in the current directory\n", count, samples);

    if (argc <= 3) {
        run_bare("bare sqlite FULL", "PRAGMA synchronous = FULL", count, samples);
        run_bare("bare sqlite NORMAL", "PRAGMA synchronous = NORMAL", count, samples);
    }

    const auto full_path = temp_file("full");
    const auto alone_path = temp_file("alone");
    const auto normal_path = temp_file("normal");
    const auto normal_alone_path = temp_file("normal-alone");
    const auto single_path = temp_file("prefetch1");
    std::vector<setup> setups = {
        {"memory", [] { return std::make_shared<jobs::memory_storage>(); }},
        {"sqlite FULL", [&] { return std::make_shared<jobs::sqlite_storage>(full_path); }, default_prefetch, {},
         [&] { return std::make_shared<jobs::sqlite_storage>(alone_path); }},
        {"sqlite NORMAL",
         [&] {
             jobs::sqlite_options o;
             o.sync = jobs::sqlite_options::durability::normal;
             return std::make_shared<jobs::sqlite_storage>(normal_path, o);
         },
         default_prefetch, {},
         // Without an fsync per commit, what the storage's SQL costs in CPU.
         [&] {
             jobs::sqlite_options o;
             o.sync = jobs::sqlite_options::durability::normal;
             return std::make_shared<jobs::sqlite_storage>(normal_alone_path, o);
         }},
        // Claims only for free workers: what a crash-proof attempt count costs.
        {"sqlite FULL, prefetch 1", [&] { return std::make_shared<jobs::sqlite_storage>(single_path); }, 1},
    };
    const std::string only = argc > 3 ? argv[3] : ""; // the setups whose label is this, when given
#ifdef HOSTING_POSTGRES_SERVER
    postgres_server own((std::filesystem::current_path() / ("hosting-bench-pg-" + std::to_string(::getpid()))).string(),
                        true);
    // A server is started only for a run that measures postgresql: the
    // others' figures need no server running beside them.
    const std::string conninfo = only.empty() || only == "postgresql" ? bench_postgres(own) : std::string();
    const std::string schema = "bench_" + std::to_string(::getpid());
    // Its own server is durable, in the current directory (its disk, as
    // SQLite's files).
    if (!conninfo.empty()) {
        // The baseline goes with every run that measures postgresql.
        if (argc <= 3 || std::string_view(argv[3]) == "postgresql")
            run_bare_notify(conninfo, samples);
        auto make = [&] {
            return std::make_shared<jobs::postgres_storage>(conninfo, jobs::postgres_options{.schema = schema});
        };
        setups.push_back({"postgresql", make, 64, make, [&] {
                              return std::make_shared<jobs::postgres_storage>(
                                  conninfo, jobs::postgres_options{.schema = schema + "_alone"});
                          }});
    }
#endif
    for (const auto& s : setups)
        if (only.empty() || only == s.label) {
            if (s.alone)
                run_storage_alone(s, count);
            run_engine(s, count, samples);
        }
    remove_file(full_path);
    remove_file(alone_path);
    remove_file(normal_path);
    remove_file(normal_alone_path);
    remove_file(single_path);
    return 0;
}
