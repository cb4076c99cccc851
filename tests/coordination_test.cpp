// Leases, the leader and single-instance services, on a SQLite file and on
// the PostgreSQL server CTest starts: in one process (several hosts on one
// storage) and across real processes (kill -9, SIGSTOP, SIGTERM).
#include "jobs_support.hpp"

#include <hosting/coordination/coordination.hpp>
#include <hosting/metrics/metrics.hpp>
#ifdef HOSTING_TEST_POSTGRES_CONNINFO
#include <hosting/coordination/postgres_lease_store.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>

#include <libpq-fe.h>
#endif

#include <future>
#include <regex>
#include <thread>
#include <utility>

namespace coord = hosting::coordination;

// Named, not anonymous: a unity build puts this file beside others.
namespace coordination_test {

std::vector<std::string> lease_storages()
{
    std::vector<std::string> out{"sqlite"};
    if (!postgres_conninfo().empty())
        out.push_back("postgresql");
    // The same server through PgBouncer in transaction mode.
    if (!pooled_postgres_conninfo().empty())
        out.push_back("postgresql-pooled");
    return out;
}

std::shared_ptr<coord::lease_store> make_lease_store(const std::string& which, temp_db& db)
{
#ifdef HOSTING_TEST_POSTGRES_CONNINFO
    if (which == "postgresql" || which == "postgresql-pooled")
        return std::make_shared<coord::postgres_lease_store>(
            which == "postgresql" ? postgres_conninfo() : pooled_postgres_conninfo(),
            coord::postgres_lease_options{.schema = db.schema});
#endif
    return std::make_shared<coord::sqlite_lease_store>(db.path.string());
}

#define EACH_LEASE_STORAGE(which, db)                                                                                 \
    temp_db db;                                                                                                        \
    const std::string which = GENERATE(Catch::Generators::from_range(lease_storages()));                             \
    INFO(which)

// A real storage whose calls can be made to fail, as one that stops
// answering does.
struct faulty_store final : coord::lease_store {
    std::shared_ptr<coord::lease_store> inner;
    std::atomic<bool> failing{false};
    // An acquire that answers this late, as a storage slow to connect does.
    std::atomic<int> acquire_delay_ms{0};
    explicit faulty_store(std::shared_ptr<coord::lease_store> s) : inner(std::move(s)) {}
    void check() const
    {
        if (failing.load())
            throw coord::lease_store_error("coordination: the storage does not answer (injected)");
    }
    std::optional<std::uint64_t> acquire(const std::string& n, const std::string& h,
                                         std::chrono::milliseconds d) override
    {
        check();
        auto term = inner->acquire(n, h, d);
        if (const int ms = acquire_delay_ms.load(); ms > 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(ms)); // the answer's way back
        return term;
    }
    // A renewal that answers this late, as a storage under load does.
    std::atomic<int> renew_delay_ms{0};
    bool renew(const std::string& n, const std::string& h, std::uint64_t t, std::chrono::milliseconds d) override
    {
        check();
        const bool kept = inner->renew(n, h, t, d);
        if (const int ms = renew_delay_ms.load(); ms > 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(ms)); // the answer's way back
        return kept;
    }
    void release(const std::string& n, const std::string& h, std::uint64_t t) override
    {
        check();
        inner->release(n, h, t);
    }
    std::atomic<int> lease_reads{0};
    std::function<void()> on_leases; // each read of the leases, first (set before the host starts)
    std::vector<coord::lease_record> leases() override
    {
        ++lease_reads;
        if (on_leases)
            on_leases();
        check();
        return inner->leases();
    }
    std::string describe() const override { return inner->describe(); }
};

// What the single-instance services of a test did, in the order they did
// it, from every host.
struct hold_log {
    struct event {
        std::string node;
        std::uint64_t term;
        bool started; // else stopped
    };
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<event> events;

    void add(event e)
    {
        {
            std::lock_guard lock(mutex);
            events.push_back(std::move(e));
        }
        changed.notify_all();
    }
    bool wait(const std::function<bool(const std::vector<event>&)>& done,
              std::chrono::milliseconds timeout = test::patience)
    {
        std::unique_lock lock(mutex);
        return changed.wait_for(lock, timeout, [&] { return done(events); });
    }
    std::vector<event> snapshot()
    {
        std::lock_guard lock(mutex);
        return events;
    }
    // The node that runs now, if one does.
    static std::optional<event> running(const std::vector<event>& all)
    {
        std::map<std::pair<std::string, std::uint64_t>, int> open;
        for (const auto& e : all)
            open[{e.node, e.term}] += e.started ? 1 : -1;
        for (const auto& [key, n] : open)
            if (n > 0)
                return event{key.first, key.second, true};
        return std::nullopt;
    }
    static std::string text(const std::vector<event>& all)
    {
        std::string out;
        for (const auto& e : all)
            out += (e.started ? "start " : "stop ") + e.node + " " + std::to_string(e.term) + "; ";
        return out;
    }
    // Waits until `node` has started a hold: what happened until then.
    std::vector<event> until_started(const std::string& node)
    {
        const bool started = wait([&](const std::vector<event>& e) {
            return std::any_of(e.begin(), e.end(), [&](const event& x) { return x.node == node && x.started; });
        });
        REQUIRE(started);
        return snapshot();
    }
    // Every hold ended before the next began, and terms grew.
    static bool never_overlapping(const std::vector<event>& all)
    {
        int running = 0;
        std::uint64_t last_term = 0;
        for (const auto& e : all) {
            if (e.started) {
                if (running != 0 || e.term <= last_term)
                    return false;
                last_term = e.term;
                ++running;
            } else
                --running;
        }
        return true;
    }
};

class recorder : public hosting::background_service {
public:
    recorder(std::shared_ptr<hold_log> log, std::string node) : log_(std::move(log)), node_(std::move(node)) {}

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        const auto term = co_await hosting::fencing_token();
        // From a coroutine it awaits too: the executor carries the lease.
        auto nested = []() -> asio::awaitable<std::uint64_t> { co_return co_await hosting::fencing_token(); };
        const auto nested_term = co_await nested();
        auto lease = co_await hosting::current_instance_lease();
        if (nested_term != term || !lease || lease->name() != "work" || lease->term() != term)
            throw std::logic_error("the lease seen from the service is not the one it runs under");
        log_->add({node_, term, true});
        struct at_end {
            hold_log& log;
            std::string node;
            std::uint64_t term;
            ~at_end() { log.add({node, term, false}); }
        } report{*log_, node_, term};
        co_await hosting::delay(std::chrono::hours(1), stopping);
    }

private:
    std::shared_ptr<hold_log> log_;
    std::string node_;
};

coord::coordination_options quick_options(std::string node, std::chrono::milliseconds lease = 1000ms,
                                          std::chrono::milliseconds stop_margin = {})
{
    coord::coordination_options o;
    o.node_id = std::move(node);
    o.lease_duration = lease;
    o.retry_interval = 50ms;
    o.stop_margin = stop_margin; // zero: the default
    return o;
}

struct node {
    std::shared_ptr<test::capture_sink> sink = std::make_shared<test::capture_sink>();
    std::shared_ptr<coord::coordinator> coordinator;
    std::optional<hosting::host> host;

    node(std::shared_ptr<coord::lease_store> store, const std::string& name, std::shared_ptr<hold_log> log,
         std::chrono::milliseconds lease = 1000ms, std::chrono::milliseconds stop_margin = {})
    {
        auto builder = test::make_builder(sink);
        coordinator =
            coord::add_coordination(builder, std::move(store), quick_options(name, lease, stop_margin));
        builder.services().add_hosted_service<recorder>(log, name).name("recorder").single_instance("work");
        host.emplace(builder.build());
        host->start_blocking();
    }
    ~node()
    {
        if (host)
            host->stop_blocking();
    }
    void stop()
    {
        host->stop_blocking();
        host.reset();
    }
    hosting::health_entry health()
    {
        auto& monitor = host->services().get<hosting::health_monitor>();
        asio::io_context io;
        std::optional<hosting::health_report> report;
        asio::co_spawn(io, monitor.check("coordination"),
                       [&](std::exception_ptr, hosting::health_report rep) { report = std::move(rep); });
        io.run();
        return *report->find("coordination");
    }
};

} // namespace coordination_test

using namespace coordination_test;

TEST_CASE("coordination: a lease goes to one holder at a time, with a term that only grows", "[coordination]")
{
    EACH_LEASE_STORAGE(which, db);
    auto a = make_lease_store(which, db);
    auto b = make_lease_store(which, db); // another node's own connection
    const auto long_lease = std::chrono::milliseconds(60000);

    REQUIRE(a->acquire("l", "node-a", long_lease) == std::optional<std::uint64_t>(1));
    CHECK_FALSE(b->acquire("l", "node-b", long_lease));
    CHECK(a->renew("l", "node-a", 1, long_lease));
    CHECK_FALSE(b->renew("l", "node-b", 1, long_lease));
    // A process that restarts with a fixed id takes its lease back, in a
    // new term: the old term's renewals are refused.
    REQUIRE(a->acquire("l", "node-a", long_lease) == std::optional<std::uint64_t>(2));
    CHECK_FALSE(a->renew("l", "node-a", 1, long_lease));
    // A release frees it at once, and the next holder's term is larger.
    a->release("l", "node-a", 1); // a stale term releases nothing
    CHECK_FALSE(b->acquire("l", "node-b", long_lease));
    a->release("l", "node-a", 2);
    REQUIRE(b->acquire("l", "node-b", 200ms) == std::optional<std::uint64_t>(3));
    CHECK_FALSE(a->renew("l", "node-a", 2, long_lease));
    // An expired lease is free to take; its holder can no longer renew it.
    REQUIRE(test::eventually([&] { return a->leases().at(0).expires_in.count() == 0; }));
    REQUIRE(a->acquire("l", "node-a", long_lease) == std::optional<std::uint64_t>(4));
    CHECK_FALSE(b->renew("l", "node-b", 3, long_lease));
    // Leases are independent, and leases() says who holds what.
    REQUIRE(b->acquire("m", "node-b", long_lease) == std::optional<std::uint64_t>(1));
    const auto all = b->leases();
    REQUIRE(all.size() == 2);
    CHECK(all[0].name == "l");
    CHECK(all[0].holder == "node-a");
    CHECK(all[0].term == 4);
    CHECK(all[0].expires_in > 50000ms);
    CHECK(all[1].name == "m");
    CHECK(all[1].holder == "node-b");
    CHECK_THAT(a->describe(), Catch::Contains(which == "sqlite" ? "SQLite" : "postgresql"));
}

#ifdef HOSTING_TEST_POSTGRES_CONNINFO
TEST_CASE("coordination: through a pooler in transaction mode the PostgreSQL lease store leaves nothing in a server "
          "session",
          "[coordination]")
{
    REQUIRE_POOLER();
    temp_db db;
    // One server session, which the store's statements and another
    // client's take turns on.
    const auto single = single_session_conninfo("single_leases");
    std::unique_ptr<PGconn, decltype(&PQfinish)> other(PQconnectdb(single.c_str()), &PQfinish);
    REQUIRE(PQstatus(other.get()) == CONNECTION_OK);
    // Whatever an earlier client left in the session goes first.
    PQclear(PQexec(other.get(), "DISCARD ALL"));
    coord::postgres_lease_store store(single, coord::postgres_lease_options{.schema = db.schema});
    const auto term = store.acquire("l", "node-a", 60s);
    REQUIRE(term);
    CHECK(store.renew("l", "node-a", *term, 60s));
    CHECK(store.leases().size() == 1);
    store.release("l", "node-a", *term);

    std::unique_ptr<PGresult, decltype(&PQclear)> r(PQexec(other.get(), "SHOW statement_timeout"), &PQclear);
    REQUIRE(PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    // The store's 2-s bound held for its own transactions only.
    CHECK(std::string(PQgetvalue(r.get(), 0, 0)) == "0");
}
#endif

TEST_CASE("coordination: of three hosts on one storage, one runs a single-instance service and one leads, and a stop "
          "hands both over at once with larger terms",
          "[coordination]")
{
    EACH_LEASE_STORAGE(which, db);
    auto log = std::make_shared<hold_log>();
    std::vector<std::unique_ptr<node>> nodes;
    // Leases longer than the tests' patience: only a graceful stop's
    // release can hand them over in time, and a late renewal on a busy
    // machine never loses one between the checks of who holds it.
    for (const char* name : {"a", "b", "c"})
        nodes.push_back(std::make_unique<node>(make_lease_store(which, db), name, log, 30s));

    REQUIRE(log->wait([](const auto& e) { return hold_log::running(e).has_value(); }));
    const auto holder = *hold_log::running(log->snapshot());
    INFO(holder.node << " holds term " << holder.term);
    auto alive = [&](const std::string& name) -> std::unique_ptr<node>& {
        return *std::find_if(nodes.begin(), nodes.end(),
                             [&](auto& n) { return n && n->coordinator->node_id() == name; });
    };
    auto leaders = [&] {
        std::vector<std::string> out;
        for (auto& n : nodes)
            if (n && n->coordinator->is_leader())
                out.push_back(n->coordinator->node_id());
        return out;
    };
    REQUIRE(test::eventually([&] { return leaders().size() == 1; }));

    // Who holds what, in health and metrics.
    auto& holder_node = alive(holder.node);
    const auto entry = holder_node->health();
    CHECK(entry.status == hosting::health_status::healthy);
    CHECK(entry.data.at("lease:work") == holder.node + " (term " + std::to_string(holder.term) + ")");
    CHECK_THAT(holder_node->host->services().get<hosting::metrics_registry>().render(),
               Catch::Contains("hosting_coordination_lease_held{lease=\"work\"} 1"));

    // A graceful stop of the holder hands the service over at once.
    holder_node->stop();
    holder_node.reset();
    REQUIRE(log->wait([&](const auto& e) { return hold_log::running(e) && hold_log::running(e)->term > holder.term; }));

    // And a graceful stop of the leader hands the lead over.
    REQUIRE(test::eventually([&] { return leaders().size() == 1; }));
    const auto leader = leaders().front();
    const auto leader_term = *alive(leader)->coordinator->leader_term();
    alive(leader)->stop();
    alive(leader).reset();
    REQUIRE(test::eventually([&] {
        for (auto& n : nodes)
            if (n && n->coordinator->is_leader() && *n->coordinator->leader_term() > leader_term)
                return true;
        return false;
    }));
    nodes.clear();
    const auto events = log->snapshot();
    CHECK(hold_log::never_overlapping(events));
}

TEST_CASE("coordination: a holder whose renewals fail is stopped before its lease can pass to another node, and "
          "says why",
          "[coordination]")
{
    EACH_LEASE_STORAGE(which, db);
    auto log = std::make_shared<hold_log>();
    auto faulty = std::make_shared<faulty_store>(make_lease_store(which, db));
    // Its stop is recorded on a's host thread, which may be slow to run on
    // a busy machine: a margin of a whole second before the lease can pass.
    auto a = std::make_unique<node>(faulty, "a", log, 2000ms, 1000ms);
    REQUIRE(log->wait([](const auto& e) { return hold_log::running(e).has_value(); }));
    auto b = std::make_unique<node>(make_lease_store(which, db), "b", log, 2000ms, 1000ms);

    faulty->failing = true;
    const auto events = log->until_started("b");
    INFO(hold_log::text(events));
    // a stopped (its lease's loss fired) before b started.
    CHECK(hold_log::never_overlapping(events));
    CHECK(events.at(1).node == "a");
    CHECK_FALSE(events.at(1).started);
    CHECK(a->sink->wait_for("lost lease 'work' (term 1): no renewal succeeded in time"));
    CHECK(a->sink->wait_for("Service 'recorder' lost lease 'work' (term 1) and was stopped"));
    const auto entry = a->health();
    CHECK(entry.status == hosting::health_status::unhealthy);
    CHECK_THAT(entry.description, Catch::Contains("the storage does not answer"));

    // Healed, a waits: b holds the lease.
    faulty->failing = false;
    REQUIRE(test::eventually([&] { return a->health().status == hosting::health_status::healthy; }));
    b->stop();
    REQUIRE(log->wait([](const auto& e) { return e.size() >= 5 && e.back().node == "a" && e.back().started; }));
    a.reset();
    INFO(hold_log::text(log->snapshot()));
    CHECK(hold_log::never_overlapping(log->snapshot()));
}

TEST_CASE("coordination: a host stopped while a service that lost its lease winds down waits for it to end",
          "[coordination]")
{
    temp_db db;
    auto faulty = std::make_shared<faulty_store>(make_lease_store("sqlite", db));
    struct progress {
        std::atomic<bool> started{false}, winding_down{false}, may_end{false}, ended{false};
    };
    auto p = std::make_shared<progress>();
    // A service that needs time once asked to stop (it flushes what it
    // holds), and asks for it as services do: with a fresh cancellation
    // state.
    class slow_to_stop : public hosting::background_service {
    public:
        explicit slow_to_stop(std::shared_ptr<progress> p) : p_(std::move(p)) {}

    protected:
        asio::awaitable<void> execute(std::stop_token stopping) override
        {
            p_->started = true;
            asio::steady_timer tick(co_await asio::this_coro::executor);
            tick.expires_after(std::chrono::hours(1));
            boost::system::error_code ec;
            co_await tick.async_wait(asio::redirect_error(asio::use_awaitable, ec)); // cancelled by the stop
            if (!stopping.stop_requested())
                throw std::logic_error("woken before the stop");
            p_->winding_down = true;
            co_await asio::this_coro::reset_cancellation_state();
            while (!p_->may_end) {
                tick.expires_after(5ms);
                co_await tick.async_wait(asio::use_awaitable);
            }
            p_->ended = true;
        }

    private:
        std::shared_ptr<progress> p_;
    };
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    coord::add_coordination(builder, faulty, quick_options("a"));
    builder.services().add_hosted_service<slow_to_stop>(p).name("flusher").single_instance("work");
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(test::eventually([&] { return p->started.load(); }));

    faulty->failing = true; // renewals fail: the lease is lost
    REQUIRE(test::eventually([&] { return p->winding_down.load(); }));
    faulty->failing = false;
    std::promise<bool> stopped;
    std::thread stopper([&] {
        host.stop_blocking();
        stopped.set_value(p->ended.load());
    });
    auto returned = stopped.get_future();
    // The host's stop waits for the service, which has not ended: it does
    // not say it stopped.
    REQUIRE(sink->wait_for("Stopping service 'flusher'"));
    CHECK_FALSE(sink->wait_for("Stopped service 'flusher'", 1s));
    CHECK(returned.wait_for(0s) == std::future_status::timeout);
    p->may_end = true;
    REQUIRE(returned.wait_for(test::patience) == std::future_status::ready);
    CHECK(returned.get()); // it had ended when the stop returned
    stopper.join();
    CHECK(host.exit_code() == 0);
    INFO(sink->dump());
    CHECK(sink->wait_for("lost lease 'work' (term 1)"));
    CHECK(sink->has("Stopped service 'flusher'"));
}

TEST_CASE("coordination: a log sink that blocks holds up neither the word of a lost lease nor its service's stop",
          "[coordination]")
{
    // As a full pipe to a stalled log reader does: every logging thread
    // waits in the sink.
    class stalling_sink : public test::capture_sink {
    public:
        std::atomic<bool> stall{false};
        std::atomic<bool> stalled{false};

    protected:
        void sink_it_(const spdlog::details::log_msg& msg) override
        {
            const std::string_view text(msg.payload.data(), msg.payload.size());
            if (stall.load() && text.find("renewing lease") != std::string_view::npos) {
                stalled = true;
                while (stall.load())
                    std::this_thread::yield();
            }
            test::capture_sink::sink_it_(msg);
        }
    };
    temp_db db;
    auto faulty = std::make_shared<faulty_store>(make_lease_store("sqlite", db));
    auto log = std::make_shared<hold_log>();
    auto sink = std::make_shared<stalling_sink>();
    auto builder = test::make_builder(sink);
    coord::add_coordination(builder, faulty, quick_options("a"));
    builder.services().add_hosted_service<recorder>(log, "a").name("recorder").single_instance("work");
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(log->wait([](const auto& e) { return hold_log::running(e).has_value(); }));

    sink->stall = true;
    faulty->failing = true;
    REQUIRE(test::eventually([&] { return sink->stalled.load(); }));
    // The renewal's failure is stuck in the sink: the lease still lapses,
    // and its service is stopped.
    const bool stopped = log->wait([](const auto& e) { return !e.empty() && !e.back().started; });
    sink->stall = false;
    CHECK(stopped);
    faulty->failing = false;
    host.stop_blocking();
    CHECK(sink->wait_for("lost lease 'work' (term 1)"));
}

TEST_CASE("coordination: renewals that each take most of the renewal interval keep the lease", "[coordination]")
{
    // The next renewal is due renew_interval after the last was sent: were
    // it due after the last returned, two slow answers in a row would
    // outlast the lease (1.8 s + 2 s + 1.8 s > 6 s - 1.2 s here). Due after
    // the send, a renewal's timer may be a second late on a busy machine.
    temp_db db;
    auto faulty = std::make_shared<faulty_store>(make_lease_store("sqlite", db));
    faulty->renew_delay_ms = 1800;
    auto log = std::make_shared<hold_log>();
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto options = quick_options("a", 6000ms);
    options.elect_leader = false; // one lease: its renewals alone on the coordinator's thread
    coord::add_coordination(builder, faulty, options);
    builder.services().add_hosted_service<recorder>(log, "a").name("recorder").single_instance("work");
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(log->wait([](const auto& e) { return hold_log::running(e).has_value(); }));
    const bool stopped = log->wait([](const auto& e) { return e.size() > 1; }, 8s);
    INFO(sink->dump());
    CHECK_FALSE(stopped);
    CHECK_FALSE(sink->has("lost lease"));
    faulty->renew_delay_ms = 0;
    host.stop_blocking();
}

TEST_CASE("coordination: a lease whose grant comes too late to act on is given back, not handed to its service",
          "[coordination]")
{
    // Granted by the storage, but answered after the time the holder could
    // have acted on it: its service would start and be told at once that it
    // lost the lease, again and again, for as long as the storage is slow.
    EACH_LEASE_STORAGE(which, db);
    auto log = std::make_shared<hold_log>();
    auto faulty = std::make_shared<faulty_store>(make_lease_store(which, db));
    faulty->acquire_delay_ms = 1200; // past the lease of 1 s
    auto a = std::make_unique<node>(faulty, "a", log);
    REQUIRE(a->sink->wait_for("took longer than the lease allows; given back"));
    CHECK(log->snapshot().empty()); // its service never started
    faulty->acquire_delay_ms = 0;
    REQUIRE(log->wait([](const auto& e) { return hold_log::running(e).has_value(); }));
    a.reset();
    INFO(hold_log::text(log->snapshot()));
    CHECK(hold_log::never_overlapping(log->snapshot()));
}

TEST_CASE("coordination: readiness probes read the leases one at a time, and report the last reading while one "
          "is on its way",
          "[coordination]")
{
    // Each reading runs on the coordinator's thread, ahead of renewals: a
    // probe at every interval while the storage is slow would queue
    // readings without end.
    EACH_LEASE_STORAGE(which, db);
    auto log = std::make_shared<hold_log>();
    auto faulty = std::make_shared<faulty_store>(make_lease_store(which, db));
    hold_first hold;
    faulty->on_leases = [&] { hold.pass(); };
    auto a = std::make_unique<node>(faulty, "a", log);
    REQUIRE(log->wait([](const auto& e) { return hold_log::running(e).has_value(); }));
    REQUIRE(a->health().status == hosting::health_status::healthy); // a first reading
    const int reads = faulty->lease_reads;
    hold.arm();
    auto slow = std::async(std::launch::async, [&] { return a->health(); });
    REQUIRE(hold.entered_within(20s));
    auto second = std::async(std::launch::async, [&] { return a->health(); });
    const bool answered = second.wait_for(20s) == std::future_status::ready;
    hold.release(); // whatever happened, let the reading end
    REQUIRE(answered);
    const auto entry = second.get();
    CHECK(entry.status == hosting::health_status::healthy);
    CHECK(entry.data.at("lease:work").find("a (term") == 0);
    CHECK(entry.data.count("leases read") == 1);
    CHECK(faulty->lease_reads == reads + 1);
    CHECK(slow.get().status == hosting::health_status::healthy);
}

namespace coordination_test {

// Records "<name> runs" and, from what it registers on its stop token,
// "<name> told"; then, when given a future, blocks there until it is ready
// (a cancel sent to a server that does not answer, say).
class told_to_stop : public hosting::background_service {
public:
    told_to_stop(std::shared_ptr<test::recorder> r, std::string name, std::shared_future<void> go_on = {})
        : r_(std::move(r)), name_(std::move(name)), go_on_(std::move(go_on))
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        auto on_stop = [r = r_, name = name_, go_on = go_on_] {
            r->add(name + " told");
            if (go_on.valid())
                go_on.wait();
        };
        std::stop_callback<decltype(on_stop)> told(stopping, std::move(on_stop));
        r_->add(name_ + " runs");
        // Not given the token: its own callback on it would cancel the wait
        // through the host's thread while the thread that requested the
        // stop has yet to reach `told`, and execute could end, taking `told`
        // off the token before it ran. Only the wrapper's cancel, which
        // comes after the token's callbacks have all run, ends this wait.
        try {
            co_await hosting::delay(std::chrono::hours(1));
        } catch (const hosting::operation_canceled&) {
        }
    }

private:
    std::shared_ptr<test::recorder> r_;
    std::string name_;
    std::shared_future<void> go_on_;
};

} // namespace coordination_test

TEST_CASE("coordination: a holder whose stop blocks holds up neither another holder's word of its loss nor the "
          "leader's",
          "[coordination]")
{
    EACH_LEASE_STORAGE(which, db);
    auto faulty = std::make_shared<faulty_store>(make_lease_store(which, db));
    auto r = std::make_shared<test::recorder>();
    std::promise<void> go_on;
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto coordinator = coord::add_coordination(builder, faulty, quick_options("a"));
    builder.services()
        .add_hosted_service<told_to_stop>(r, "x", go_on.get_future().share())
        .name("x")
        .single_instance("x");
    builder.services().add_hosted_service<told_to_stop>(r, "y").name("y").single_instance("y");
    auto host = builder.build();
    // Lets x's stop go on however the test ends, before the host's stop
    // waits for it.
    struct let_go {
        std::promise<void>& go_on;
        bool done = false;
        void now()
        {
            if (!std::exchange(done, true))
                go_on.set_value();
        }
        ~let_go() { now(); }
    } release{go_on};
    host.start_blocking();
    REQUIRE(r->wait_for("x runs"));
    REQUIRE(r->wait_for("y runs"));
    REQUIRE(test::eventually([&] { return coordinator->is_leader(); }));

    // Every renewal fails: each lease's holder must hear of its loss.
    faulty->failing = true;
    const bool x_told = r->wait_for("x told");
    if (!x_told) {
        release.now();
        INFO(sink->dump());
        REQUIRE(x_told);
    }
    const bool y_told = r->wait_for("y told");
    const bool leader_gone = test::eventually([&] { return !coordinator->is_leader(); });
    release.now(); // whatever happened, let x's stop go on
    INFO(sink->dump());
    CHECK(y_told);
    CHECK(leader_gone);
    faulty->failing = false;
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

// Holds the host's only thread from its start until its stop token fires:
// nothing else runs on that host meanwhile, so only a thread of the
// coordinator's own can tell it that its lease is lost.
class spinner : public hosting::background_service {
public:
    spinner(std::shared_ptr<hold_log> log, std::string node) : log_(std::move(log)), node_(std::move(node)) {}

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        const auto term = co_await hosting::fencing_token();
        log_->add({node_, term, true});
        while (!stopping.stop_requested())
            std::this_thread::yield();
        log_->add({node_, term, false});
    }

private:
    std::shared_ptr<hold_log> log_;
    std::string node_;
};

TEST_CASE("coordination: a holder that blocks its host's thread is told of its lost lease before another node "
          "takes it",
          "[coordination]")
{
    EACH_LEASE_STORAGE(which, db);
    auto log = std::make_shared<hold_log>();
    auto faulty = std::make_shared<faulty_store>(make_lease_store(which, db));
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    coord::add_coordination(builder, faulty, quick_options("a"));
    builder.services().add_hosted_service<spinner>(log, "a").name("spinner").single_instance("work");
    auto a = builder.build();
    a.start_blocking();
    REQUIRE(log->wait([](const auto& e) { return hold_log::running(e).has_value(); }));
    auto b = std::make_unique<node>(make_lease_store(which, db), "b", log);

    // a's renewals fail while its only thread spins: its stop token must
    // fire before its lease can expire, so before b can take it.
    faulty->failing = true;
    const auto events = log->until_started("b");
    INFO(hold_log::text(events));
    INFO(sink->dump());
    CHECK(hold_log::never_overlapping(events));
    CHECK(events.at(1).node == "a");
    CHECK_FALSE(events.at(1).started);
    // The storage still fails, so a cannot take the lease (and spin) again.
    b.reset();
    a.stop_blocking();
    CHECK(a.exit_code() == 0);
}

TEST_CASE("coordination: misuse is refused with errors that say what is wrong", "[coordination]")
{
    temp_db db;
    auto store = std::make_shared<coord::sqlite_lease_store>(db.path.string());
    auto sink = std::make_shared<test::capture_sink>();
    {
        auto builder = test::make_builder(sink);
        auto log = std::make_shared<hold_log>();
        builder.services().add_hosted_service<recorder>(log, "x").name("recorder").single_instance();
        CHECK_THROWS_WITH(builder.build(), Catch::Contains("service 'recorder' is single_instance(\"recorder\"), and "
                                                           "no coordination is registered"));
    }
    {
        struct plain : hosting::hosted_service {
            asio::awaitable<void> start(std::stop_token) override { co_return; }
            asio::awaitable<void> stop(std::stop_token) override { co_return; }
        };
        auto builder = test::make_builder(sink);
        coord::add_coordination(builder, store);
        CHECK_THROWS_AS(coord::add_coordination(builder, store), std::logic_error);
        builder.services().add_hosted_service<plain>().name("plain").single_instance("p");
        CHECK_THROWS_WITH(builder.build(), Catch::Contains("service 'plain' is single_instance(\"p\") but not a "
                                                           "background_service"));
    }
    {
        auto bad = quick_options("n");
        bad.renew_interval = 900ms;
        CHECK_THROWS_WITH(coord::coordinator(store, bad), Catch::Contains("renew_interval must be shorter"));
        auto slow_retry = quick_options("n"); // 1 s lease: 200 ms margin, 333 ms renewals
        slow_retry.retry_interval = 500ms;
        CHECK_THROWS_WITH(coord::coordinator(store, slow_retry), Catch::Contains("retry_interval must be shorter"));
        CHECK_THROWS_WITH(coord::coordinator(nullptr, {}), Catch::Contains("the lease store is null"));
    }
    CHECK_THROWS_AS(coord::sqlite_lease_store(""), coord::lease_store_error);
    CHECK_THROWS_WITH(coord::sqlite_lease_store(":memory:"), Catch::Contains("cannot use write-ahead logging"));
    CHECK_THROWS_WITH(coord::sqlite_lease_store("/nonexistent-dir/x.db"), Catch::Contains("/nonexistent-dir/x.db"));
    // Outside a single-instance service there is no term.
    asio::io_context io;
    std::exception_ptr error;
    asio::co_spawn(io, hosting::fencing_token(), [&](std::exception_ptr e, std::uint64_t) { error = e; });
    io.run();
    REQUIRE(error);
    CHECK_THROWS_AS(std::rethrow_exception(error), hosting::not_single_instance);
}

#ifdef HOSTING_EXAMPLE_SINGLE_INSTANCE
namespace coordination_test {

// The holds a run of examples/single_instance printed, on the machine's
// monotonic clock: (term, start, end or nothing).
struct printed_hold {
    std::uint64_t term;
    long long start;
    std::optional<long long> end;
};
std::vector<printed_hold> holds_of(const std::string& output)
{
    std::vector<printed_hold> out;
    static const std::regex line(R"((exporting with|stopped) term (\d+) at (\d+))");
    for (auto it = std::sregex_iterator(output.begin(), output.end(), line); it != std::sregex_iterator(); ++it) {
        const auto term = std::stoull((*it)[2]);
        const auto at = std::stoll((*it)[3]);
        if ((*it)[1] == "exporting with")
            out.push_back({term, at, std::nullopt});
        else if (!out.empty() && out.back().term == term)
            out.back().end = at;
    }
    return out;
}

std::string storage_for(const std::string& which, temp_db& db)
{
    if (which == "postgresql")
        return postgres_conninfo();
    if (which == "postgresql-pooled")
        return pooled_postgres_conninfo();
    return db.path.string();
}

} // namespace coordination_test

TEST_CASE("coordination: across processes, kill -9, SIGSTOP and SIGTERM of the holder each pass the service to "
          "another process with a larger term, and no two holds overlap",
          "[coordination][process]")
{
    EACH_LEASE_STORAGE(which, db);
    // Leases of 3 s: a sanitized child starved by its neighbours for most
    // of a shorter one would rightly lose it, and add a term.
    std::vector<std::string> args{"--Coordination:Storage=" + storage_for(which, db),
                                  "--Coordination:Schema=" + db.schema, "--Coordination:LeaseMs=3000",
                                  "--Export:TickMs=100"};
    std::vector<std::unique_ptr<test::child_process>> procs;
    std::vector<std::string> output_of_dead;
    auto start = [&] { procs.push_back(std::make_unique<test::child_process>(HOSTING_EXAMPLE_SINGLE_INSTANCE, args)); };
    start();
    start();
    start();
    // The process whose output shows it exporting under `term`.
    auto holder_of = [&](std::uint64_t term) -> std::optional<std::size_t> {
        const auto text = "exporting with term " + std::to_string(term) + " ";
        for (std::size_t i = 0; i < procs.size(); ++i)
            if (procs[i] && procs[i]->wait_for_output(text, 20ms))
                return i;
        return std::nullopt;
    };
    auto wait_holder = [&](std::uint64_t term) {
        std::optional<std::size_t> found;
        REQUIRE(test::eventually([&] { return (found = holder_of(term)).has_value(); }));
        return *found;
    };

    // kill -9: another takes over once the lease expired.
    auto first = wait_holder(1);
    procs[first]->send_signal(SIGKILL);
    procs[first]->wait_exit();
    output_of_dead.push_back(procs[first]->output());
    procs[first].reset();
    auto second = wait_holder(2);

    // SIGSTOP: another takes over; the paused one, resumed, learns it lost
    // the lease and stops its service without starting it again.
    procs[second]->send_signal(SIGSTOP);
    auto third = wait_holder(3);
    procs[second]->send_signal(SIGCONT);
    REQUIRE(procs[second]->wait_for_output("stopped term 2 "));
    CHECK(procs[second]->wait_for_output("lost lease 'export' (term 2)"));

    // SIGTERM: handed over at once (released, not expired).
    procs[third]->send_signal(SIGTERM);
    REQUIRE(procs[third]->wait_exit() == std::optional<int>(0));
    auto fourth = wait_holder(4);
    CHECK(fourth == second);

    std::vector<printed_hold> all;
    for (const auto& text : output_of_dead)
        for (auto& h : holds_of(text))
            all.push_back(h);
    for (auto& p : procs)
        if (p) {
            p->send_signal(SIGTERM);
            CHECK(p->wait_exit() == std::optional<int>(0));
            for (auto& h : holds_of(p->output()))
                all.push_back(h);
        }
    std::sort(all.begin(), all.end(), [](auto& x, auto& y) { return x.term < y.term; });
    REQUIRE(all.size() == 4);
    for (std::size_t i = 0; i < all.size(); ++i) {
        INFO("term " << all[i].term);
        CHECK(all[i].term == i + 1);
        if (i + 1 < all.size() && all[i].end && all[i].term != 2)
            // The SIGSTOPped holder's end is printed when it resumes,
            // after its successor started: the fencing token is what
            // keeps it from doing harm in that instant.
            CHECK(*all[i].end <= all[i + 1].start);
    }
    CHECK_FALSE(all[0].end); // killed
}
#endif
