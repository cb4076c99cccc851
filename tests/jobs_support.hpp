// What the job tests share: storages to run against, requests, server
// options fit for tests, and handlers that record what they saw.
#pragma once

#include <hosting/hosting.hpp>
#include <hosting/scheduling/cron.hpp>
#include <hosting/health/health.hpp>
#include <hosting/jobs/server.hpp>
#include <hosting/jobs/sqlite_storage.hpp>
#ifdef HOSTING_TEST_POSTGRES_CONNINFO
#include <hosting/jobs/postgres_storage.hpp>
#endif

#include "support.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/describe/class.hpp>

#include <catch2/catch.hpp>

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <future>
#include <cstdio>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>
#include <set>
#include <thread>

using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace jobs = hosting::jobs;
using jobs::job_state;

// Named, not anonymous: each test file uses only some of these.
namespace jobs_test {

struct add_args {
    int a = 0;
    int b = 0;
};
BOOST_DESCRIBE_STRUCT(add_args, (), (a, b))

// A fresh store per test: a SQLite file, removed afterwards, and a
// PostgreSQL schema of its own on the tests' server (thrown away with the
// server).
struct temp_db {
    std::filesystem::path path;
    std::string schema;
    temp_db()
    {
        static std::atomic<int> n{0};
        const auto name = std::to_string(::getpid()) + "-" + std::to_string(n++);
        path = std::filesystem::temp_directory_path() / ("hosting-jobs-" + name + ".db");
        schema = "test_" + name;
        std::filesystem::remove(path);
    }
    ~temp_db()
    {
        std::error_code ec;
        for (const char* suffix : {"", "-wal", "-shm"})
            std::filesystem::remove(path.string() + suffix, ec);
    }
};

// The first line of `file` in the directory of the PostgreSQL server CTest
// started for the tests (tests/tools/postgres-server), or empty when there
// is none: the test binary run by hand, or a build without libpq.
inline std::string postgres_server_file(const char* file)
{
#ifdef HOSTING_TEST_POSTGRES_CONNINFO
    std::ifstream in(std::filesystem::path(HOSTING_TEST_POSTGRES_CONNINFO).parent_path() / file);
    std::string line;
    std::getline(in, line);
    return line;
#else
    (void)file;
    return {};
#endif
}

// That server's connection string.
inline std::string postgres_conninfo() { return postgres_server_file("conninfo"); }

// The same server through the PgBouncer in transaction mode that the
// script starts in front of it where PgBouncer is installed; empty without.
inline std::string pooled_postgres_conninfo() { return postgres_server_file("pooled-conninfo"); }

// That PgBouncer's database `name` (one of its single_*), which has one
// server session: its clients take turns on it, as any two clients of a
// transaction pooler may. Empty without a PgBouncer.
inline std::string single_session_conninfo(const std::string& name)
{
    auto out = pooled_postgres_conninfo();
    const std::string_view database = "dbname=postgres";
    if (const auto at = out.find(database); at != std::string::npos)
        out.replace(at, database.size(), "dbname=" + name);
    return out;
}

#define REQUIRE_POOLER()                                                                                               \
    if (pooled_postgres_conninfo().empty()) {                                                                          \
        WARN("no PgBouncer in front of PostgreSQL: not tested");                                                       \
        return;                                                                                                        \
    }

// Each storage, so that every behaviour is checked on each.
inline std::shared_ptr<jobs::storage> make_storage(const std::string& which, temp_db& db)
{
    if (which == "memory")
        return std::make_shared<jobs::memory_storage>();
#ifdef HOSTING_TEST_POSTGRES_CONNINFO
    if (which == "postgresql")
        return std::make_shared<jobs::postgres_storage>(postgres_conninfo(), jobs::postgres_options{.schema = db.schema});
    if (which == "postgresql-pooled")
        return std::make_shared<jobs::postgres_storage>(
            pooled_postgres_conninfo(), jobs::postgres_options{.schema = db.schema, .transaction_pooling = true});
#endif
    return std::make_shared<jobs::sqlite_storage>(db.path.string());
}

// The same store as `store`, as another process sees it: its own
// connection to the file or the server (the same object in memory).
inline std::shared_ptr<jobs::storage> reopen(const std::string& which, temp_db& db,
                                             std::shared_ptr<jobs::storage> store)
{
    return which == "memory" ? store : make_storage(which, db);
}

// The jobs_storage readiness check's entry, as a probe of the host would
// read it now.
inline hosting::health_entry jobs_storage_health(hosting::host& host)
{
    auto& monitor = host.services().get<hosting::health_monitor>();
    asio::io_context io;
    std::optional<hosting::health_report> report;
    asio::co_spawn(io, monitor.check("jobs"),
                   [&](std::exception_ptr, hosting::health_report rep) { report = std::move(rep); });
    io.run();
    return *report->find("jobs_storage");
}

// A plain request in the default queue, for the tests that talk to a
// storage directly. (Strings are moved in: assigning literals in a loop
// draws a false -Wrestrict from GCC 12 at -O3.)
inline jobs::enqueue_request request(std::string kind, std::string args, int max_attempts = 1)
{
    jobs::enqueue_request r;
    r.kind = std::move(kind);
    r.queue = std::string("default");
    r.args = std::move(args);
    r.max_attempts = max_attempts;
    return r;
}

// A recurring job at the top of every hour, with args "1" on the default
// queue, next due at `next_fire`.
inline jobs::recurring_job hourly(std::string id, std::string kind, jobs::time_point next_fire)
{
    jobs::recurring_job r;
    r.id = std::move(id);
    r.cron = std::string("0 * * * *");
    r.kind = std::move(kind);
    r.args = std::string("1");
    r.queue = std::string("default");
    r.next_fire = next_fire;
    return r;
}

// What a node's renewal says of jobs whose handlers started: a crash then
// charges their attempts.
inline void report_started(jobs::storage& store, const std::string& node, const std::vector<jobs::job>& claimed,
                    jobs::time_point lease_until, jobs::time_point now)
{
    std::vector<jobs::held_lease> held;
    for (const auto& j : claimed)
        held.push_back({j.id, j.attempt, true});
    REQUIRE(store.renew_leases(node, held, lease_until, now).lost.empty());
}

inline jobs::server_options quick_server(std::shared_ptr<jobs::time_source> clock = {})
{
    jobs::server_options o;
    o.workers = 4;
    o.poll_interval = 50ms;
    o.heartbeat_interval = 100ms;
    o.lease_duration = 1s;
    o.shutdown_grace = 500ms;
    o.node_id = "test-node";
    o.clock = std::move(clock);
    return o;
}

// Waits until the job is in `state`, by asking the client; a job's state
// lives in storage, with no event to wait on.
inline bool wait_state(jobs::client& c, jobs::job_id id, job_state state)
{
    return test::eventually([&] {
        auto j = c.find_blocking(id);
        return j && j->state == state;
    });
}

// A handler that records "started <name>", runs until its job's stop token
// fires, then records "stopped <name>".
inline auto until_stopped(test::recorder& r)
{
    return [&r](std::string name, jobs::job_context& context) -> asio::awaitable<void> {
        r.add("started " + name);
        try {
            co_await hosting::delay(std::chrono::hours(1), context.stop_token());
        } catch (...) {
            r.add("stopped " + name);
            throw;
        }
    };
}

// Holds the first call that passes through it once armed (a storage hook,
// set before the host starts: the storage's thread reads it) until
// released; released at the end whatever happened, so that a test that
// fails still ends.
class hold_first {
public:
    ~hold_first() { release(); }
    void arm() { armed_ = true; }
    void pass()
    {
        if (!armed_ || entered_.exchange(true))
            return;
        entered_once_.set_value();
        released_.wait();
    }
    bool entered_within(std::chrono::milliseconds bound)
    {
        if (entered_future_.wait_for(bound) == std::future_status::ready)
            return true;
        release();
        return false;
    }
    bool entered() const { return entered_; }
    void release()
    {
        if (!std::exchange(released_already_, true))
            release_.set_value();
    }

private:
    std::atomic<bool> armed_{false};
    std::atomic<bool> entered_{false};
    std::promise<void> entered_once_;
    std::future<void> entered_future_ = entered_once_.get_future();
    std::promise<void> release_;
    std::shared_future<void> released_ = release_.get_future().share();
    bool released_already_ = false; // the test's thread only
};

// A handler deaf to its job's stop token and to its coroutine's
// cancellation (a timeout, a cancel, the server's stop reach it in vain):
// it records "started", waits until `gate` opens, records "ended" and
// succeeds.
inline auto deaf_until(test::recorder& r, std::stop_source& gate)
{
    return [&r, &gate](int, jobs::job_context&) -> asio::awaitable<void> {
        r.add("started");
        co_await asio::this_coro::reset_cancellation_state(
            [](asio::cancellation_type) { return asio::cancellation_type::none; });
        const std::stop_token open = gate.get_token(); // named: see docs/gcc12.md
        try {
            co_await hosting::delay(std::chrono::hours(1), open);
        } catch (const hosting::operation_canceled&) {
        }
        r.add("ended");
    };
}

// A job of `kind` (whose handler records "started <name>" and, when it is
// ended, "<ended> <name>") that times out fails, and one cancelled while it
// runs ends cancelled.
inline void expect_timeout_and_cancel(jobs::client& client, test::recorder& r, const std::string& kind,
                               const std::string& ended)
{
    jobs::job_options quick;
    quick.timeout = 100ms;
    auto timed = client.enqueue_blocking(kind, std::string("timed"), quick);
    REQUIRE(r.wait_for(ended + " timed"));
    REQUIRE(wait_state(client, timed, job_state::failed));
    CHECK(client.find_blocking(timed)->last_error == "timed out after 100 ms");

    auto cancelled = client.enqueue_blocking(kind, std::string("cancelled"));
    REQUIRE(r.wait_for("started cancelled"));
    client.cancel_blocking(cancelled);
    REQUIRE(r.wait_for(ended + " cancelled"));
    REQUIRE(wait_state(client, cancelled, job_state::cancelled));
}


struct mail_pool {
    int size = 7;
};

// 2026-03-29 in Europe/Berlin: clocks jump from 02:00 to 03:00.
inline jobs::time_point utc(int y, unsigned mo, unsigned d, int h, int mi)
{
    std::tm tm{};
    tm.tm_year = y - 1900;
    tm.tm_mon = static_cast<int>(mo) - 1;
    tm.tm_mday = static_cast<int>(d);
    tm.tm_hour = h;
    tm.tm_min = mi;
    return jobs::clock::from_time_t(timegm(&tm));
}

// A handler that records "started <name>", waits until `gate` opens (or its
// job is stopped), then records "ended <name>" and succeeds.
inline auto until_open(test::recorder& r, std::stop_source& gate)
{
    return [&r, &gate](std::string name, jobs::job_context&) -> asio::awaitable<void> {
        r.add("started " + name);
        const std::stop_token open = gate.get_token(); // named: see docs/gcc12.md
        try {
            co_await hosting::delay(std::chrono::hours(1), open);
        } catch (const hosting::operation_canceled&) {
        }
        r.add("ended " + name);
    };
}

// The events of one name, "started <name>" and "ended <name>", in order.
inline std::vector<std::string> runs_of(const test::recorder& r, const std::string& name)
{
    std::vector<std::string> out;
    for (const auto& e : r.events())
        if (e == "started " + name || e == "ended " + name)
            out.push_back(e);
    return out;
}

// A storage that can be made to fail, to see the health check notice.
class failing_storage final : public jobs::storage {
public:
    std::atomic<bool> down{false};
    jobs::memory_storage inner;
    std::function<void(std::size_t)> on_enqueue; // sees each batch's size first
    std::function<void(std::size_t, const jobs::claim_request&)> on_claim; // each completions' count and claim
    std::function<void(bool)> on_listen; // each start (true) and stop (false) of listening for others' work
    std::function<void()> on_enqueue_and_claim; // each enqueue that took the server's standing claim, first
    std::function<void()> on_recover_node;                       // each recovery of a node's jobs, first
    std::function<void(const std::vector<jobs::job>&)> after_claim; // what each claim took
    void check()
    {
        if (down)
            throw jobs::storage_error("jobs: storage unreachable (test)");
    }
    std::vector<jobs::enqueue_result> enqueue(std::span<const jobs::enqueue_request> j, jobs::time_point n) override
    {
        check();
        if (on_enqueue)
            on_enqueue(j.size());
        return inner.enqueue(j, n);
    }
    std::vector<jobs::job> complete_and_claim(std::span<const jobs::completion> d, const jobs::claim_request& c,
                                              jobs::time_point n) override
    {
        check();
        if (on_claim)
            on_claim(d.size(), c);
        auto claimed = inner.complete_and_claim(d, c, n);
        if (after_claim)
            after_claim(claimed);
        return claimed;
    }
    std::atomic<int> renewals{0};
    jobs::lease_renewal renew_leases(const std::string& node, std::span<const jobs::held_lease> h, jobs::time_point l,
                                     jobs::time_point n) override
    {
        ++renewals;
        check();
        return inner.renew_leases(node, h, l, n);
    }
    enqueued_and_claimed enqueue_and_claim(std::span<const jobs::enqueue_request> j, const jobs::claim_request& c,
                                           jobs::time_point n) override
    {
        check();
        if (on_enqueue_and_claim)
            on_enqueue_and_claim();
        return inner.enqueue_and_claim(j, c, n);
    }
    void listen_for_work(std::function<void()> wake) override
    {
        if (on_listen)
            on_listen(static_cast<bool>(wake));
    }
    std::vector<jobs::job_id> recover_expired(jobs::time_point n) override { return inner.recover_expired(n); }
    std::vector<jobs::job_id> recover_node(const std::string& node, jobs::time_point n) override
    {
        if (on_recover_node)
            on_recover_node();
        return inner.recover_node(node, n);
    }
    job_state change_state(jobs::job_id id, job_state to, const std::string& r, jobs::time_point n) override
    {
        return inner.change_state(id, to, r, n);
    }
    std::optional<jobs::job> find(jobs::job_id id, bool h) override { return inner.find(id, h); }
    std::vector<jobs::job> list(const jobs::job_filter& f) override
    {
        check();
        return inner.list(f);
    }
    jobs::job_counts counts() override
    {
        check();
        return inner.counts();
    }
    std::vector<jobs::queue_kind_count> counts_by_queue_and_kind() override { return inner.counts_by_queue_and_kind(); }
    std::atomic<int> announces{0};
    void announce_node(const jobs::node_info& node, jobs::time_point n) override
    {
        ++announces;
        check();
        inner.announce_node(node, n);
    }
    void remove_node(const std::string& id) override { inner.remove_node(id); }
    std::vector<jobs::node_info> list_nodes() override { return inner.list_nodes(); }
    void set_queue_paused(const std::string& q, bool p, jobs::time_point n) override { inner.set_queue_paused(q, p, n); }
    std::vector<std::string> paused_queues() override { return inner.paused_queues(); }
    bool set_recurring_paused(const std::string& id, bool p, jobs::time_point n) override
    {
        return inner.set_recurring_paused(id, p, n);
    }
    std::optional<jobs::time_point> next_due() override { return inner.next_due(); }
    std::function<std::size_t(std::size_t)> on_prune; // each batch (its limit), instead of pruning
    std::size_t prune(job_state s, jobs::time_point b, std::size_t l, jobs::time_point n) override
    {
        if (on_prune)
            return on_prune(l);
        return inner.prune(s, b, l, n);
    }
    std::size_t flag_unknown_kinds(const std::vector<std::string>& k, const std::string& n, jobs::time_point t) override
    {
        return inner.flag_unknown_kinds(k, n, t);
    }
    void upsert_recurring(const jobs::recurring_job& r) override { inner.upsert_recurring(r); }
    bool remove_recurring(const std::string& id) override { return inner.remove_recurring(id); }
    std::atomic<int> recurring_reads{0};
    std::vector<jobs::recurring_job> list_recurring() override
    {
        ++recurring_reads;
        check();
        return inner.list_recurring();
    }
    std::function<void(const std::string&)> on_fire_recurring; // each firing (its recurring job's id), first
    bool fire_recurring(const std::string& id, jobs::time_point e, jobs::time_point n,
                        std::span<const jobs::enqueue_request> o, jobs::time_point t) override
    {
        if (on_fire_recurring)
            on_fire_recurring(id);
        return inner.fire_recurring(id, e, n, o, t);
    }
};

// The storages the conformance suite (jobs_conformance_test.cpp) runs
// against: each of its tests runs once per storage. A storage joins the
// suite by adding its name here and to make_storage().
// PostgreSQL joins when CTest started its server, directly and through a
// pooler in transaction mode ("postgresql-pooled") where PgBouncer is
// installed; run by hand without one, the binary says so once and tests
// the others.
inline std::vector<std::string> conformance_storages()
{
    static const std::vector<std::string> storages = [] {
        std::vector<std::string> out{"memory", "sqlite"};
#ifdef HOSTING_TEST_POSTGRES_CONNINFO
        if (!postgres_conninfo().empty()) {
            out.push_back("postgresql");
            if (!pooled_postgres_conninfo().empty())
                out.push_back("postgresql-pooled");
            else
                std::fprintf(stderr, "jobs tests: no PgBouncer in front of PostgreSQL: transaction pooling not "
                                     "tested\n");
        } else
            std::fprintf(stderr, "jobs tests: no PostgreSQL server (ctest starts one): PostgreSQL not tested\n");
#endif
        return out;
    }();
    return storages;
}

} // namespace jobs_test

using namespace jobs_test;

// The rest of the test runs once per storage in conformance_storages():
// `which` names it (and the report says it), `db` is the file SQLite uses
// and the schema PostgreSQL uses.
#define EACH_STORAGE(which, db)                                                                                       \
    temp_db db;                                                                                                        \
    const std::string which = GENERATE(Catch::Generators::from_range(conformance_storages()));                       \
    INFO(which)
