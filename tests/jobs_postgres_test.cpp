// What PostgreSQL promises beyond the conformance suite (which it passes
// like every storage): many nodes claiming at once, nodes migrating a
// schema at once, a server that restarts under a running host, and the
// storage chosen by configuration. Against the server CTest starts
// (tests/tools/postgres-server), and a private one for the restarts.
#include "jobs_support.hpp"

#include <hosting/configuration/configuration.hpp>
#include <hosting/jobs/open_storage.hpp>
#include <hosting/jobs/postgres_storage.hpp>

#include <hosting/coordination/postgres_lease_store.hpp>

#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstdlib>
#include <future>
#include <thread>
#include <tuple>

namespace {

// A connection of the test's own, as an application or another process
// has: exec() runs a statement and gives its first value.
class session {
public:
    explicit session(const std::string& conninfo) : conn_(PQconnectdb(conninfo.c_str()), &PQfinish)
    {
        REQUIRE(PQstatus(conn_.get()) == CONNECTION_OK);
    }
    PGconn* get() const { return conn_.get(); }
    std::string exec(const std::string& sql)
    {
        std::unique_ptr<PGresult, decltype(&PQclear)> r(PQexec(conn_.get(), sql.c_str()), &PQclear);
        INFO(sql << ": " << PQresultErrorMessage(r.get()));
        REQUIRE((PQresultStatus(r.get()) == PGRES_TUPLES_OK || PQresultStatus(r.get()) == PGRES_COMMAND_OK));
        return PQntuples(r.get()) > 0 ? PQgetvalue(r.get(), 0, 0) : "";
    }

private:
    std::unique_ptr<PGconn, decltype(&PQfinish)> conn_;
};

// The first value a statement returns, on a connection of its own.
std::string query(const std::string& conninfo, const std::string& sql) { return session(conninfo).exec(sql); }

// A server of the test's own, which it may restart without breaking the
// tests that share CTest's.
class private_server {
public:
    private_server()
    {
        static std::atomic<int> n{0};
        dir_ = (std::filesystem::temp_directory_path() /
                ("hosting-pg-" + std::to_string(::getpid()) + "-" + std::to_string(n++)))
                   .string();
        REQUIRE(run("start") == 0);
        std::ifstream file(dir_ + "/conninfo");
        std::getline(file, conninfo_);
        REQUIRE(!conninfo_.empty());
    }
    ~private_server() { run("stop"); }
    const std::string& conninfo() const { return conninfo_; }
    // Through the PgBouncer in transaction mode the script starts in front
    // of it where PgBouncer is installed, which stays up through a restart.
    std::string pooled_conninfo() const
    {
        std::ifstream file(dir_ + "/pooled-conninfo");
        std::string line;
        std::getline(file, line);
        return line;
    }
    // Stopped at once, as by a crash, every connection broken; then started.
    void restart() { REQUIRE(run("restart") == 0); }
    // Its processes stopped (SIGSTOP): connections open, nothing answered.
    void stall() { REQUIRE(run("stall") == 0); }
    void resume() { REQUIRE(run("resume") == 0); }

private:
    int run(const char* action) const
    {
        const std::string command =
            std::string(HOSTING_TEST_POSTGRES_SERVER) + " " + action + " '" + dir_ + "' > /dev/null";
        return std::system(command.c_str());
    }
    std::string dir_;
    std::string conninfo_;
};

#define REQUIRE_POSTGRES()                                                                                             \
    if (postgres_conninfo().empty()) {                                                                                 \
        WARN("no PostgreSQL server (ctest starts one): not tested");                                                   \
        return;                                                                                                        \
    }

// PostgreSQL reached directly, and through PgBouncer in transaction mode
// where the tests' server has one in front of it.
std::vector<std::string> postgres_routes()
{
    std::vector<std::string> out{"postgresql"};
    if (!pooled_postgres_conninfo().empty())
        out.push_back("postgresql-pooled");
    return out;
}

} // namespace

TEST_CASE("jobs: nodes claiming from one PostgreSQL at once never share a job or a concurrency key",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    const std::string route = GENERATE(Catch::Generators::from_range(postgres_routes()));
    INFO(route);
    constexpr int total = 2000;
    constexpr int nodes = 4;
    {
        std::vector<jobs::enqueue_request> batch;
        for (int i = 0; i < total; ++i) {
            auto r = request("k", std::to_string(i));
            if (i % 3 == 0)
                r.concurrency_key = "key-" + std::to_string(i % 7);
            batch.push_back(std::move(r));
        }
        make_storage(route, db)->enqueue(batch, jobs::clock::now());
    }
    std::mutex mutex;
    std::map<jobs::job_id, int> claims;
    std::set<std::string> held_keys; // keys of jobs claimed and not yet completed, by any node
    std::vector<int> claimed_by(nodes, 0);
    int key_overlaps = 0;
    std::atomic<int> finished{0};
    std::vector<std::string> errors;
    std::vector<std::thread> threads;
    for (int n = 0; n < nodes; ++n)
        threads.emplace_back([&, n] {
            try {
                auto store = make_storage(route, db);
                const jobs::claim_request claim{"node-" + std::to_string(n), {{"default", 8}}, {"k"},
                                                jobs::clock::now() + 60s};
                std::vector<jobs::job> mine;
                const auto deadline = std::chrono::steady_clock::now() + 60s;
                while (finished < total && std::chrono::steady_clock::now() < deadline) {
                    std::vector<jobs::completion> done;
                    {
                        // A key leaves the set before its job's completion
                        // commits: another node that claims it after that
                        // finds it gone.
                        std::lock_guard lock(mutex);
                        for (const auto& j : mine) {
                            done.push_back({j.id, j.attempt, jobs::outcome::succeeded, {}, {}, "ok"});
                            if (!j.concurrency_key.empty())
                                held_keys.erase(j.concurrency_key);
                        }
                    }
                    mine = store->complete_and_claim(done, claim, jobs::clock::now());
                    finished += static_cast<int>(done.size());
                    std::lock_guard lock(mutex);
                    claimed_by[static_cast<std::size_t>(n)] += static_cast<int>(mine.size());
                    for (const auto& j : mine) {
                        ++claims[j.id];
                        if (!j.concurrency_key.empty() && !held_keys.insert(j.concurrency_key).second)
                            ++key_overlaps;
                    }
                }
            } catch (const std::exception& e) {
                std::lock_guard lock(mutex);
                errors.push_back(e.what());
            }
        });
    for (auto& t : threads)
        t.join();
    for (const auto& e : errors)
        FAIL_CHECK(e);
    CHECK(finished == total);
    CHECK(claims.size() == static_cast<std::size_t>(total));
    CHECK(std::all_of(claims.begin(), claims.end(), [](const auto& c) { return c.second == 1; }));
    CHECK(key_overlaps == 0);
    CHECK(std::count_if(claimed_by.begin(), claimed_by.end(), [](int c) { return c > 0; }) >= 2);
    auto store = make_storage(route, db);
    CHECK(store->counts()[job_state::succeeded] == total);
    CHECK(store->counts()[job_state::running] == 0);
}

TEST_CASE("jobs: through a pooler in transaction mode the storage leaves nothing in a server session and needs "
          "nothing of it",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    REQUIRE_POOLER();
    temp_db db;
    // One server session, which the storage's transactions and another
    // client's take turns on.
    const auto single = single_session_conninfo("single_jobs");
    session other(single);
    // Whatever an earlier client left in the session goes first.
    other.exec("DISCARD ALL");
    jobs::postgres_storage store(single, jobs::postgres_options{.schema = db.schema, .transaction_pooling = true});
    const auto backend = other.exec("SELECT pg_backend_pid()");
    // What another client leaves in the session: the storage finds its
    // tables all the same.
    other.exec("SET search_path TO public");

    const auto now = jobs::clock::now();
    auto keyed = request("k", "1");
    keyed.unique_key = "once";
    std::vector<jobs::enqueue_request> batch{request("k", "2"), request("k", "3")};
    CHECK(store.enqueue(std::span(&keyed, 1), now).front().created);
    CHECK(store.enqueue(batch, now).size() == 2);
    const jobs::claim_request claim{"node-a", {{"default", 8}}, {"k"}, now + 60s};
    auto claimed = store.complete_and_claim({}, claim, now);
    REQUIRE(claimed.size() == 3);
    std::vector<jobs::completion> done;
    for (const auto& j : claimed)
        done.push_back({j.id, j.attempt, jobs::outcome::succeeded, {}, {}, "ok"});
    CHECK(store.complete_and_claim(done, claim, now).empty());
    store.announce_node({.id = "node-a", .host = "h", .pid = 1, .workers = 2, .queues = {"default"}}, now);
    CHECK(store.list_nodes().size() == 1);
    CHECK(store.counts()[job_state::succeeded] == 3);
    CHECK(store.find(claimed.front().id)->state == job_state::succeeded);
    CHECK(store.list({.state = job_state::succeeded}).size() == 3);

    // The same server session all along, and what the other client set is
    // as it set it: the storage's settings lasted its transactions only,
    // and it prepared and listened to nothing.
    CHECK(other.exec("SELECT pg_backend_pid()") == backend);
    CHECK(other.exec("SHOW search_path") == "public");
    CHECK(other.exec("SHOW statement_timeout") == "0");
    CHECK(other.exec("SHOW lock_timeout") == "0");
    CHECK(other.exec("SHOW plan_cache_mode") == "auto"); // claims and completions run on generic plans
    CHECK(other.exec("SELECT count(*) FROM pg_prepared_statements") == "0");
    CHECK(other.exec("SELECT count(*) FROM pg_listening_channels()") == "0");
}

TEST_CASE("jobs: a storage behind a pooler in transaction mode without transaction_pooling fails with an error "
          "that names the setting",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    REQUIRE_POOLER();
    temp_db db;
    // One server session, which the other client clears between two of the
    // storage's calls, as a pooler that hands the session to someone else
    // in between would.
    const auto single = single_session_conninfo("single_unpooled");
    session other(single);
    other.exec("DISCARD ALL");
    jobs::postgres_storage store(single, jobs::postgres_options{.schema = db.schema});
    store.enqueue(std::vector{request("k", "1")}, jobs::clock::now());
    other.exec("DEALLOCATE ALL");
    CHECK_THROWS_WITH(store.enqueue(std::vector{request("k", "2")}, jobs::clock::now()),
                      Catch::Contains("transaction_pooling") && Catch::Contains("pool_mode = transaction"));
    other.exec("DISCARD ALL");
}

TEST_CASE("jobs: nodes that start at once on a fresh PostgreSQL schema migrate it once", "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    const std::string route = GENERATE(Catch::Generators::from_range(postgres_routes()));
    INFO(route);
    std::mutex mutex;
    std::vector<std::string> errors;
    std::vector<std::thread> threads;
    for (int n = 0; n < 6; ++n)
        threads.emplace_back([&] {
            try {
                make_storage(route, db);
            } catch (const std::exception& e) {
                std::lock_guard lock(mutex);
                errors.push_back(e.what());
            }
        });
    for (auto& t : threads)
        t.join();
    for (const auto& e : errors)
        FAIL_CHECK(e);
    CHECK(query(postgres_conninfo(), "SELECT count(*) FROM \"" + db.schema + "\".schema_version") ==
          std::to_string(jobs::postgres_storage::schema_version));
    CHECK(query(postgres_conninfo(), "SELECT max(version) FROM \"" + db.schema + "\".schema_version") ==
          std::to_string(jobs::postgres_storage::schema_version));
}

TEST_CASE("jobs: a PostgreSQL schema newer than the program opens when it only added, and is refused with its "
          "version when it needs a newer program",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    make_storage("postgresql", db);
    query(postgres_conninfo(), "INSERT INTO \"" + db.schema + "\".schema_version VALUES (99)");
    // What schema 99 added leaves this program's use of it as it was: a
    // node a version behind still starts.
    auto behind = make_storage("postgresql", db);
    CHECK(behind->enqueue(std::vector{request("k", "1")}, jobs::clock::now()).size() == 1);
    query(postgres_conninfo(), "UPDATE \"" + db.schema + "\".schema_readers SET oldest = 99");
    CHECK_THROWS_AS(make_storage("postgresql", db), jobs::storage_error);
    CHECK_THROWS_WITH(make_storage("postgresql", db), Catch::Contains("version 99") &&
                                                          Catch::Contains("schema 99 or newer") &&
                                                          Catch::Contains("'" + db.schema + "'"));
}

TEST_CASE("jobs: a PostgreSQL schema of version 4 migrates: its statement triggers go, its counts are made "
          "again from its rows, and its histories become text that later changes append to",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    const auto t0 = jobs::clock::now();
    std::vector<jobs::completion> done;
    {
        auto store = make_storage("postgresql", db);
        store->enqueue(std::vector{request("a", "1"), request("a", "2"), request("b", "3")}, t0);
        const auto claimed = store->complete_and_claim({}, {"n", {{"default", 2}}, {"a", "b"}, t0 + 10s}, t0);
        REQUIRE(claimed.size() == 2);
        done = {{claimed[0].id, claimed[0].attempt, jobs::outcome::succeeded, {}, {}, "ok"}};
        store->complete_and_claim(done, {"n", {}, {"a", "b"}, t0 + 10s}, t0);
    }
    // Back to schema 4 as its programs left it: statement-level triggers
    // counted every insert and update (their bodies do not matter here: the
    // migration drops them), and its counts had drifted.
    session s(postgres_conninfo());
    s.exec("SET search_path = \"" + db.schema + "\"");
    s.exec("DROP TRIGGER jobs_counted_change ON jobs; DROP FUNCTION jobs_counted_change()");
    for (const char* what : {"insert", "update"})
        s.exec(std::string("CREATE FUNCTION jobs_counted_") + what +
               "() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; CREATE TRIGGER jobs_counted_" +
               what + " AFTER " + what + " ON jobs REFERENCING " +
               (what == std::string("insert") ? "NEW TABLE AS new_rows" : "OLD TABLE AS old_rows NEW TABLE AS new_rows") +
               " FOR EACH STATEMENT EXECUTE FUNCTION jobs_counted_" + what + "()");
    s.exec("DELETE FROM schema_version WHERE version >= 5; UPDATE schema_readers SET oldest = 4; "
           "INSERT INTO job_counts VALUES ('default', 'a', 1, 7)");
    // Its histories were jsonb, in a column named history.
    s.exec("ALTER TABLE jobs RENAME COLUMN history_text TO history; "
           "ALTER TABLE jobs ALTER COLUMN history TYPE jsonb USING history::jsonb");

    auto store = make_storage("postgresql", db);
    CHECK(s.exec("SELECT max(version) FROM schema_version") == "6");
    // A program of schema 4 would leave its claims and successes uncounted,
    // and one of schema 5 would append jsonb to a text history.
    CHECK(s.exec("SELECT max(oldest) FROM schema_readers") == "6");
    CHECK(s.exec("SELECT data_type FROM information_schema.columns WHERE table_schema = '" + db.schema +
                 "' AND table_name = 'jobs' AND column_name = 'history_text'") == "text");
    // One of schema 5 that still runs fails at its next change, rather than
    // write a history that no longer reads back.
    {
        std::unique_ptr<PGresult, decltype(&PQclear)> old(
            PQexec(s.get(), "UPDATE jobs SET history = history || jsonb_build_array(jsonb_build_array(state, 1, 0, "
                            "'requeued', ''))"),
            &PQclear);
        CHECK(PQresultStatus(old.get()) == PGRES_FATAL_ERROR);
        CHECK_THAT(PQresultErrorMessage(old.get()), Catch::Contains("column \"history\""));
    }
    // The succeeded job's history came through, and a change appends to it.
    auto succeeded = store->find(done[0].id, true);
    REQUIRE(succeeded);
    REQUIRE(succeeded->history.size() == 3);
    CHECK(succeeded->history[2].to == job_state::succeeded);
    CHECK(succeeded->history[2].reason == "ok");
    store->change_state(done[0].id, job_state::available, "again", t0 + 1s);
    succeeded = store->find(done[0].id, true);
    REQUIRE(succeeded);
    REQUIRE(succeeded->history.size() == 4);
    CHECK(succeeded->history[2].reason == "ok");
    CHECK(succeeded->history[3].from == job_state::succeeded);
    CHECK(succeeded->history[3].to == job_state::available);
    CHECK(s.exec("SELECT string_agg(tgname, ',' ORDER BY tgname) FROM pg_trigger WHERE tgrelid = 'jobs'::regclass "
                 "AND NOT tgisinternal") == "jobs_counted_change,jobs_counted_delete");
    std::map<std::tuple<std::string, std::string, job_state>, std::int64_t> counted, rows;
    for (const auto& c : store->counts_by_queue_and_kind())
        if (c.count != 0)
            counted[{c.queue, c.kind, c.state}] = c.count;
    jobs::job_filter all;
    for (const auto& j : store->list(all))
        ++rows[{j.queue, j.kind, j.state}];
    CHECK(rows.size() == 3); // a available, a succeeded, b running
    CHECK(counted == rows);
}

TEST_CASE("jobs: a PostgreSQL server out of reach is a storage_error that holds no password", "[jobs][postgresql]")
{
    // Port 1: refused at once, no server needed.
    try {
        jobs::open_storage("postgresql://hosting:s3cret@127.0.0.1:1/jobs");
        FAIL("connected to nothing");
    } catch (const jobs::storage_error& e) {
        const std::string message = e.what();
        INFO(message);
        CHECK(message.find("cannot connect to postgresql") != std::string::npos);
        CHECK(message.find("s3cret") == std::string::npos);
    }
    // Strings libpq cannot read: its own message would quote the password.
    for (const std::string unreadable :
         {"postgresql://hosting:s3c%zzret@127.0.0.1:1/jobs", "host=127.0.0.1 port=1 password=s3c ret dbname=jobs",
          "host=127.0.0.1 port=1 password='s3cret dbname=jobs"}) {
        INFO(unreadable);
        std::string message;
        try {
            jobs::postgres_storage store(unreadable);
        } catch (const jobs::storage_error& e) {
            message = e.what();
        }
        INFO(message);
        CHECK(message.find("the connection string cannot be read") != std::string::npos);
        CHECK(message.find("s3c") == std::string::npos);
        try {
            hosting::coordination::postgres_lease_store leases(unreadable);
            FAIL("a lease store on a string libpq cannot read");
        } catch (const hosting::coordination::lease_store_error& e) {
            message = e.what();
        }
        CHECK(message.find("the connection string cannot be read") != std::string::npos);
        CHECK(message.find("s3c") == std::string::npos);
    }
}

TEST_CASE("jobs: a node that starts while another migrates the schema waits for it past the statement_timeout, up "
          "to the migration_timeout",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    // Another node's migration, as the lock it holds for as long as it runs.
    session other(postgres_conninfo());
    other.exec("BEGIN");
    other.exec("SELECT pg_advisory_xact_lock(hashtextextended('hosting_jobs_schema:" + db.schema + "', 7200))");
    session watcher(postgres_conninfo());
    const auto waiting = [&] {
        return watcher.exec("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") != "0";
    };

    jobs::postgres_options patient{.schema = db.schema};
    patient.statement_timeout = 200ms;
    auto started = std::async(std::launch::async, [&] {
        return std::make_shared<jobs::postgres_storage>(postgres_conninfo(), patient);
    });
    REQUIRE(test::eventually(waiting));
    // Past its statement_timeout (and the 2 s the client adds to it), it
    // still waits.
    CHECK(started.wait_for(3s) == std::future_status::timeout);
    other.exec("COMMIT");
    REQUIRE(started.wait_for(test::patience) == std::future_status::ready);
    auto store = started.get();
    CHECK(store->counts()[job_state::available] == 0);

    // Bounded by migration_timeout: then it says which bound ended it.
    temp_db second;
    other.exec("BEGIN");
    other.exec("SELECT pg_advisory_xact_lock(hashtextextended('hosting_jobs_schema:" + second.schema + "', 7200))");
    jobs::postgres_options bounded{.schema = second.schema};
    bounded.migration_timeout = 300ms;
    std::string error;
    try {
        jobs::postgres_storage never(postgres_conninfo(), bounded);
    } catch (const jobs::storage_error& e) {
        error = e.what();
    }
    other.exec("ROLLBACK");
    INFO(error);
    CHECK(error.find("postgres_options::migration_timeout, 300 ms") != std::string::npos);
}

TEST_CASE("jobs: a PostgreSQL heartbeat folds the counts only when there are changes to fold", "[jobs][postgresql]")
{
    // Every node's heartbeat folds; a fold with nothing to do rewrote every
    // row of the counts, a write and dead rows every beat of an idle cluster.
    REQUIRE_POSTGRES();
    temp_db db;
    jobs::postgres_storage s(postgres_conninfo(), jobs::postgres_options{.schema = db.schema});
    session sql(postgres_conninfo());
    const std::string table = "\"" + db.schema + "\".job_counts";
    const auto rows = [&] { return sql.exec("SELECT count(*) FROM " + table); };
    const auto places = [&] { return sql.exec("SELECT string_agg(ctid::text, ',' ORDER BY ctid) FROM " + table); };
    jobs::node_info node;
    node.id = "node-a";
    node.workers = 2;
    const auto now = jobs::clock::now();
    s.enqueue(std::vector{request("note", "1"), request("note", "2")}, now);
    s.enqueue(std::vector{request("note", "3")}, now);
    CHECK(rows() == "2");
    s.announce_node(node, now);
    REQUIRE(rows() == "1");
    const auto folded = places();
    s.announce_node(node, now);
    CHECK(places() == folded);
    s.enqueue(std::vector{request("note", "4")}, now);
    s.announce_node(node, now);
    CHECK(rows() == "1");
    CHECK(places() != folded);
    CHECK(s.counts()[job_state::available] == 4);
}

namespace {

// The keepalive idle time and the TCP user timeout of each of this
// process's TCP connections to `port`.
std::vector<std::pair<int, int>> tcp_settings_to(int port)
{
    std::vector<std::pair<int, int>> out;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
        int fd = -1;
        try {
            fd = std::stoi(entry.path().filename().string());
        } catch (const std::exception&) {
            continue;
        }
        int type = 0;
        socklen_t length = sizeof type;
        if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) != 0 || type != SOCK_STREAM)
            continue;
        sockaddr_in peer{};
        length = sizeof peer;
        if (::getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &length) != 0 || peer.sin_family != AF_INET ||
            ntohs(peer.sin_port) != port)
            continue;
        int keepalive = 0;
        int idle = 0;
        unsigned user_timeout = 0;
        length = sizeof keepalive;
        ::getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &keepalive, &length);
        length = sizeof idle;
        ::getsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, &length);
        length = sizeof user_timeout;
        ::getsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, &length);
        out.emplace_back(keepalive ? idle : 0, static_cast<int>(user_timeout));
    }
    return out;
}

} // namespace

TEST_CASE("jobs: every PostgreSQL connection of the library's finds a silently dropped network within about a "
          "minute, unless its connection string says otherwise",
          "[jobs][postgresql]")
{
    // A listener that only waits for notifications sends nothing: without
    // keepalives, a connection that a NAT or a load balancer forgot would
    // leave it deaf for the system's two hours.
    REQUIRE_POSTGRES();
    temp_db db;
    const auto conninfo = postgres_conninfo();
    const auto at = conninfo.find("port=");
    REQUIRE(at != std::string::npos);
    const int port = std::stoi(conninfo.substr(at + 5));
    CHECK(tcp_settings_to(port).empty());
    {
        jobs::postgres_storage store(conninfo, jobs::postgres_options{.schema = db.schema});
        std::promise<void> heard;
        std::atomic<bool> once{false};
        store.listen_for_work([&] {
            if (!once.exchange(true))
                heard.set_value(); // connected: it looks once
        });
        REQUIRE(heard.get_future().wait_for(20s) == std::future_status::ready);
        hosting::coordination::postgres_lease_store leases(
            conninfo, hosting::coordination::postgres_lease_options{.schema = db.schema + "_leases"});
        CHECK(leases.acquire("one", "node-a", 5s).has_value());
        const auto settings = tcp_settings_to(port);
        CHECK(settings.size() >= 3); // the storage's, its listener's, the lease store's
        for (const auto& [idle, user_timeout] : settings) {
            CHECK(idle == 30);
            CHECK(user_timeout == 60000);
        }
        store.listen_for_work({});
    }
    CHECK(tcp_settings_to(port).empty());
    // The caller's connection string has the last word.
    jobs::postgres_storage store(conninfo + " keepalives_idle=45", jobs::postgres_options{.schema = db.schema});
    const auto settings = tcp_settings_to(port);
    REQUIRE(settings.size() == 1);
    CHECK(settings[0].first == 45);
}

TEST_CASE("jobs: open_storage picks the storage its location names", "[jobs][postgresql]")
{
    temp_db db;
    auto file = jobs::open_storage(db.path.string());
    CHECK(dynamic_cast<jobs::sqlite_storage*>(file.get()) != nullptr);
    auto prefixed = jobs::open_storage("sqlite:" + db.path.string(), "", "normal");
    REQUIRE(dynamic_cast<jobs::sqlite_storage*>(prefixed.get()) != nullptr);
    CHECK(dynamic_cast<jobs::sqlite_storage*>(prefixed.get())->path() == db.path.string());
    CHECK_THROWS_AS(jobs::open_storage(""), jobs::invalid_storage_location);
    CHECK_THROWS_AS(jobs::open_storage("sqlite:"), jobs::invalid_storage_location);
    CHECK_THROWS_WITH(jobs::open_storage(db.path.string(), "", "sometimes"), Catch::Contains("'sometimes'"));

    // From configuration, as --Jobs:Storage=... --Jobs:Schema=... give it.
    if (!postgres_conninfo().empty()) {
        const std::vector<std::string> args{"--Jobs:Storage=" + postgres_conninfo(), "--Jobs:Schema=" + db.schema};
        auto store = jobs::open_storage(hosting::configuration::from({hosting::command_line_source(args)}));
        auto* pg = dynamic_cast<jobs::postgres_storage*>(store.get());
        REQUIRE(pg != nullptr);
        CHECK(pg->options().schema == db.schema);
        CHECK(query(postgres_conninfo(), "SELECT count(*) FROM \"" + db.schema + "\".schema_version") ==
          std::to_string(jobs::postgres_storage::schema_version));
    }
}

TEST_CASE("jobs: a PostgreSQL server that restarts fails the call it breaks, and the next call connects again",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    private_server server;
    jobs::postgres_storage store(server.conninfo());
    const auto t0 = jobs::clock::now();
    store.enqueue(std::vector{request("k", "1")}, t0);
    server.restart();
    // The connection is broken: the call that finds it so fails (whether a
    // write committed is unknown then, so none is retried)...
    CHECK_THROWS_AS(store.enqueue(std::vector{request("k", "2")}, t0), jobs::storage_error);
    // ...and the next one reconnects.
    store.enqueue(std::vector{request("k", "3")}, t0);
    CHECK(store.counts()[job_state::available] == 2);
    auto claimed = store.complete_and_claim({}, {"n", {{"default", 10}}, {"k"}, t0 + 10s}, t0);
    CHECK(claimed.size() == 2);
}

TEST_CASE("jobs: a PostgreSQL storage answers other calls while one waits on a lock, and its idle connections "
          "reconnect after a restart",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    private_server server;
    CHECK_THROWS_WITH(jobs::postgres_storage(server.conninfo(), {.pool_size = 0}),
                      Catch::Contains("pool_size must be at least 1"));
    jobs::postgres_storage store(server.conninfo(), {.pool_size = 2});
    const auto t0 = jobs::clock::now();
    const auto ids = store.enqueue(std::vector{request("k", "1"), request("k", "2")}, t0);
    // Another session holds the first job's row, as a slow transaction
    // would: a cancel of it waits for the lock on a connection of its own,
    // and the calls behind it go on.
    const auto blocked_cancel = [&] {
        auto locker = std::make_shared<session>(server.conninfo());
        locker->exec("BEGIN");
        locker->exec("SELECT id FROM hosting_jobs.jobs WHERE id = " + std::to_string(ids[0].id) + " FOR UPDATE");
        auto done = std::make_shared<std::atomic<bool>>(false);
        std::thread cancel([&store, id = ids[0].id, done] {
            store.change_state(id, job_state::cancelled, "by the test", jobs::clock::now());
            *done = true;
        });
        return std::make_tuple(locker, done, std::move(cancel));
    };
    {
        auto [locker, done, cancel] = blocked_cancel();
        auto counts = std::async(std::launch::async, [&] { return store.counts(); });
        REQUIRE(counts.wait_for(30s) == std::future_status::ready);
        CHECK(counts.get()[job_state::available] == 2);
        CHECK(store.find(ids[1].id)->state == job_state::available);
        CHECK_FALSE(done->load()); // still waiting: it was never in the way
        locker->exec("COMMIT");
        cancel.join();
        CHECK(store.find(ids[0].id)->state == job_state::cancelled);
    }
    // Both connections are open now. The server restarts: the call that
    // meets a broken connection fails, and every call after it works,
    // whichever connection it takes (the idle one is opened again first).
    server.restart();
    CHECK_THROWS_AS(store.counts(), jobs::storage_error);
    store.change_state(ids[0].id, job_state::available, "again", jobs::clock::now());
    {
        auto [locker, done, cancel] = blocked_cancel();
        auto counts = std::async(std::launch::async, [&] { return store.counts(); });
        REQUIRE(counts.wait_for(30s) == std::future_status::ready);
        CHECK(counts.get()[job_state::available] == 2);
        locker->exec("COMMIT");
        cancel.join();
        CHECK(done->load());
    }
}

TEST_CASE("jobs: a client's reads are answered while the engine's writes wait on PostgreSQL", "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, make_storage("postgresql", db), quick_server());
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    const auto first = client.enqueue_blocking("unknown kind", 1).id;
    const auto second = client.enqueue_blocking("unknown kind", 2).id;
    // A slow transaction elsewhere holds the first job's row: the cancel
    // waits on the engine's storage thread, where every write queues.
    session locker(postgres_conninfo());
    locker.exec("BEGIN");
    locker.exec("SELECT id FROM \"" + db.schema + "\".jobs WHERE id = " + std::to_string(first) + " FOR UPDATE");
    auto cancel = std::async(std::launch::async, [&] { client.cancel_blocking(first); });
    auto reads = std::async(std::launch::async, [&] {
        return std::make_pair(client.find_blocking(second), client.counts_blocking());
    });
    REQUIRE(reads.wait_for(30s) == std::future_status::ready);
    const auto [found, counts] = reads.get();
    CHECK(found->state == job_state::available);
    CHECK(counts[job_state::available] == 2);
    CHECK(cancel.wait_for(0s) == std::future_status::timeout);
    locker.exec("COMMIT");
    REQUIRE(cancel.wait_for(30s) == std::future_status::ready);
    cancel.get();
    CHECK(client.find_blocking(first)->state == job_state::cancelled);
}

TEST_CASE("jobs: a host's jobs go on running after their PostgreSQL server restarts", "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    const std::string route = GENERATE(Catch::Generators::from_range(postgres_routes()));
    INFO(route);
    private_server server;
    const bool pooled = route == "postgresql-pooled";
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder,
                   std::make_shared<jobs::postgres_storage>(pooled ? server.pooled_conninfo() : server.conninfo(),
                                                            jobs::postgres_options{.transaction_pooling = pooled}),
                   quick_server())
        .register_kind<std::string>("note", [&](std::string what, jobs::job_context&) -> asio::awaitable<void> {
            r.add(what);
            co_return;
        });
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    client.enqueue_blocking("note", std::string("before"));
    REQUIRE(r.wait_for("before"));
    server.restart();
    // The first enqueue may meet the broken connection; one soon after goes
    // through, and the server, which polled through the restart, runs it.
    REQUIRE(test::eventually(
        [&] {
            try {
                client.enqueue_blocking("note", std::string("after"));
                return true;
            } catch (const jobs::storage_error&) {
                return false;
            }
        },
        10s));
    REQUIRE(r.wait_for("after"));
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
    CHECK(r.count("before") == 1);
    CHECK(r.count("after") == 1);
}

TEST_CASE("jobs: a job another node enqueues on PostgreSQL starts at once, not at the next poll",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    // Through a pooler in transaction mode, the listener goes to the server
    // directly (listen_conninfo).
    const std::string route = GENERATE(Catch::Generators::from_range(postgres_routes()));
    INFO(route);
    auto storage = route == "postgresql"
                       ? make_storage(route, db)
                       : std::make_shared<jobs::postgres_storage>(
                             pooled_postgres_conninfo(), jobs::postgres_options{.schema = db.schema,
                                                                                .transaction_pooling = true,
                                                                                .listen_conninfo = postgres_conninfo()});
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    // A poll would come too late for the waits below, and so would a
    // heartbeat, which looks for work too.
    options.poll_interval = 60s;
    options.heartbeat_interval = 60s;
    options.lease_duration = 180s;
    jobs::add_jobs(builder, storage, options)
        .register_kind<std::string>("note", [&](std::string what, jobs::job_context&) -> asio::awaitable<void> {
            r.add(what);
            co_return;
        });
    auto host = builder.build();
    host.start_blocking();
    // The other node: a connection of its own, enqueueing in its own
    // transactions; each commit notifies the listening node.
    // Each job's completion has committed before the next is enqueued: the
    // claim that goes with a completion would find the next one otherwise.
    auto elsewhere = make_storage(route, db);
    for (int i = 0; i < 3; ++i) {
        const auto what = "from elsewhere " + std::to_string(i);
        const auto id = elsewhere->enqueue(std::vector{request("note", "\"" + what + "\"")}, jobs::clock::now())
                            .at(0)
                            .id;
        CHECK(r.wait_for(what, 20s));
        REQUIRE(test::eventually([&] { return elsewhere->find(id)->state == job_state::succeeded; }, 20s));
    }
    // A batch, and a job made available again by a requeue, wake it too.
    std::vector<jobs::enqueue_request> batch{request("note", "\"batch 1\""), request("note", "\"batch 2\"")};
    const auto ids = elsewhere->enqueue(batch, jobs::clock::now());
    CHECK(r.wait_for("batch 2", 20s));
    REQUIRE(test::eventually([&] { return elsewhere->find(ids[0].id)->state == job_state::succeeded; }, 20s));
    elsewhere->change_state(ids[0].id, job_state::available, "again", jobs::clock::now());
    CHECK(test::eventually([&] { return r.count("batch 1") == 2; }, 20s));
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("jobs: two hosts on one PostgreSQL storage object both hear other nodes' work, and one's stop leaves the "
          "other hearing",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    auto shared = make_storage("postgresql", db);
    test::recorder r;
    std::vector<std::unique_ptr<hosting::host>> hosts;
    for (const char* node : {"node-a", "node-b"}) {
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        auto options = quick_server();
        options.node_id = node;
        // Neither a poll nor a heartbeat (whose claim would find the job
        // too) comes within the waits below: only a notification does.
        options.poll_interval = 60s;
        options.heartbeat_interval = 60s;
        options.lease_duration = 180s;
        jobs::add_jobs(builder, shared, options)
            .register_kind<std::string>("note", [&r, node](std::string what, jobs::job_context&)
                                                    -> asio::awaitable<void> {
                r.add(std::string(node) + " ran " + what);
                co_return;
            });
        hosts.push_back(std::make_unique<hosting::host>(builder.build()));
        hosts.back()->start_blocking();
    }
    auto elsewhere = make_storage("postgresql", db);
    auto ran = [&](const std::string& what) {
        return test::eventually(
            [&] { return r.count("node-a ran " + what) + r.count("node-b ran " + what) == 1; }, 20s);
    };
    const auto first = elsewhere->enqueue(std::vector{request("note", "\"first\"")}, jobs::clock::now())[0].id;
    CHECK(ran("first"));
    // Its completion committed, and the claim that went with it: both
    // servers are idle until they hear of more.
    REQUIRE(test::eventually([&] { return elsewhere->find(first)->state == job_state::succeeded; }, 20s));
    // One host stops; the other still hears.
    hosts[1]->stop_blocking();
    CHECK(hosts[1]->exit_code() == 0);
    elsewhere->enqueue(std::vector{request("note", "\"second\"")}, jobs::clock::now());
    CHECK(test::eventually([&] { return r.count("node-a ran second") == 1; }, 20s));
    hosts[0]->stop_blocking();
    CHECK(hosts[0]->exit_code() == 0);
}

TEST_CASE("jobs: jobs enqueued in the caller's own PostgreSQL transaction commit or roll back with it",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    // Through a pooler in transaction mode the application's connection is
    // pooled too: the enqueue runs inside its transaction either way.
    const std::string route = GENERATE(Catch::Generators::from_range(postgres_routes()));
    INFO(route);
    const bool pooled = route == "postgresql-pooled";
    const auto conninfo = pooled ? pooled_postgres_conninfo() : postgres_conninfo();
    auto store = std::make_shared<jobs::postgres_storage>(
        conninfo, jobs::postgres_options{.schema = db.schema,
                                         .transaction_pooling = pooled,
                                         .listen_conninfo = pooled ? postgres_conninfo() : std::string()});
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    options.poll_interval = 60s; // the commit's notification wakes the server, not a poll
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("receipt", [&](int order, jobs::job_context&) -> asio::awaitable<void> {
            r.add("receipt " + std::to_string(order));
            co_return;
        });
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();

    // The application's connection, with a table of its own, and in each
    // transaction a search_path of its own (a session's would not last
    // through a transaction-mode pooler).
    session app(conninfo);
    const std::string orders = "public.\"orders_" + db.schema + "\"";
    app.exec("CREATE TABLE " + orders + " (id int PRIMARY KEY)");

    // Outside a transaction: refused, saying why.
    jobs::job_batch one;
    one.add("receipt", 0);
    CHECK_THROWS_WITH(store->enqueue_in_transaction(app.get(), client.requests_for(one)),
                      Catch::Contains("no transaction open"));

    // Rolled back: neither the order nor its job.
    app.exec("BEGIN");
    app.exec("SET LOCAL search_path TO public");
    app.exec("INSERT INTO " + orders + " VALUES (1)");
    jobs::job_batch first;
    first.add("receipt", 1);
    const auto rolled_back = store->enqueue_in_transaction(app.get(), client.requests_for(first));
    REQUIRE(rolled_back.size() == 1);
    app.exec("ROLLBACK");
    CHECK_FALSE(store->find(rolled_back[0].id).has_value());

    // Requests the application made itself, and made wrong: refused before
    // anything is sent, and its transaction goes on. A key that lets go
    // while its job is scheduled would stop every node's claims once the
    // job fell due and found another holding it.
    app.exec("BEGIN");
    auto scheduled_unkeyed = client.requests_for(first);
    scheduled_unkeyed[0].unique_key = "order-9";
    scheduled_unkeyed[0].unique_states = jobs::state_set{job_state::available};
    CHECK_THROWS_AS(store->enqueue_in_transaction(app.get(), scheduled_unkeyed), std::invalid_argument);
    CHECK_THROWS_WITH(store->enqueue_in_transaction(app.get(), scheduled_unkeyed),
                      Catch::Contains("unique_states must include every state that is not final"));
    auto no_queue = client.requests_for(first);
    no_queue[0].queue.clear();
    CHECK_THROWS_WITH(store->enqueue_in_transaction(app.get(), no_queue),
                      Catch::Contains("job of kind 'receipt' has an empty queue name"));
    CHECK(app.exec("SELECT 1") == "1");
    app.exec("ROLLBACK");

    // Committed: both, and the job is invisible to others until then.
    app.exec("BEGIN");
    app.exec("SET LOCAL search_path TO public");
    app.exec("INSERT INTO " + orders + " VALUES (2)");
    jobs::job_batch second;
    second.add("receipt", 2);
    jobs::job_options keyed;
    keyed.unique_key = "order-2";
    second.add("receipt", 2, keyed);
    second.add("receipt", 2, keyed); // found, not made twice
    const auto committed = store->enqueue_in_transaction(app.get(), client.requests_for(second));
    REQUIRE(committed.size() == 3);
    CHECK(committed[1].created);
    CHECK_FALSE(committed[2].created);
    CHECK(committed[2].id == committed[1].id);
    CHECK(app.exec("SHOW search_path") == "public"); // the caller's, as it was
    CHECK_FALSE(store->find(committed[0].id).has_value());
    app.exec("COMMIT");
    CHECK(r.wait_for("receipt 2", 20s));
    CHECK(test::eventually([&] { return r.count("receipt 2") == 2; }, 20s));
    CHECK(app.exec("SELECT count(*) FROM " + orders) == "1");
    CHECK(r.count("receipt 1") == 0);
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("jobs: a node renews its leases while an application's open transaction holds up one of its "
          "completions",
          "[jobs][postgresql]")
{
    // An application enqueues a continuation of a running job in its own
    // transaction, and keeps the transaction open. The job ends: its
    // completion waits for the application's commit. The node's renewals
    // go through the same storage thread, and must not wait with it: its
    // other job's lease would expire and another node run that job too.
    REQUIRE_POSTGRES();
    temp_db db;
    auto store = std::make_shared<jobs::postgres_storage>(postgres_conninfo(), jobs::postgres_options{.schema = db.schema});
    auto sink = std::make_shared<test::capture_sink>();
    test::recorder r;
    std::atomic<bool> parent_may_end{false};
    std::atomic<bool> long_may_end{false};
    auto builder = test::make_builder(sink);
    // A lease of 2 s, renewed every 100 ms: the held completion, tried
    // alone once per lease, takes a quarter of it on the storage's thread,
    // and a busy machine must not make that outlast the rest.
    auto options = quick_server();
    options.lease_duration = 2s;
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("parent", [&](int, jobs::job_context& context) -> asio::awaitable<void> {
            r.add("parent started");
            while (!parent_may_end)
                co_await hosting::delay(10ms, context.stop_token());
            r.add("parent ended");
        })
        .register_kind<int>("long", [&](int, jobs::job_context& context) -> asio::awaitable<void> {
            r.add("long started");
            while (!long_may_end)
                co_await hosting::delay(10ms, context.stop_token());
        })
        .register_kind<int>("child", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            r.add("child ran");
            co_return;
        })
        .register_kind<int>("quick", [&](int n, jobs::job_context&) -> asio::awaitable<void> {
            r.add("quick " + std::to_string(n));
            co_return;
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    const auto long_job = client.enqueue_blocking("long", 1).id;
    const auto parent = client.enqueue_blocking("parent", 2).id;
    REQUIRE(r.wait_for("long started", 20s));
    REQUIRE(r.wait_for("parent started", 20s));

    session app(postgres_conninfo());
    app.exec("BEGIN");
    auto child = request("child", "3");
    child.parent_id = parent;
    REQUIRE(store->enqueue_in_transaction(app.get(), std::vector{child}).size() == 1);
    parent_may_end = true;
    REQUIRE(r.wait_for("parent ended", 20s));
    const auto ended = jobs::clock::now();
    // The completion waits on the application; the long job's lease goes
    // on being renewed, past three leases after the parent ended.
    const bool renewed = test::eventually(
        [&] {
            const auto j = store->find(long_job, false);
            return j && j->lease_expires > ended + 3 * options.lease_duration;
        },
        20s);
    CHECK(renewed);
    CHECK(sink->wait_for("its completion waits on a row another transaction holds"));
    // Meanwhile the node's other work goes on: claimed, run and recorded.
    const auto quick = client.enqueue_blocking("quick", 4).id;
    CHECK(test::eventually([&] { return store->find(quick, false)->state == job_state::succeeded; }, 20s));
    CHECK(store->find(parent, false)->state == job_state::running); // not completed yet
    app.exec("COMMIT");
    CHECK(test::eventually([&] { return store->find(parent, false)->state == job_state::succeeded; }, 20s));
    CHECK(r.wait_for("child ran", 20s));
    long_may_end = true;
    CHECK(test::eventually([&] { return store->find(long_job, false)->state == job_state::succeeded; }, 20s));
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
    CHECK(r.count("long started") == 1);
    CHECK(store->find(long_job, false)->attempt == 1);
}

// A node of kind "quick" on a schema of its own, and an application's open
// transaction that enqueued a scheduled job holding `key`: the node's
// enqueues with that key wait on the application's row.
struct key_held_by_application {
    temp_db db;
    std::shared_ptr<jobs::postgres_storage> store;
    std::optional<hosting::host> host;
    jobs::client* client = nullptr;
    session app{postgres_conninfo()};
    jobs::enqueue_result held;

    key_held_by_application(std::chrono::milliseconds lock_timeout, std::chrono::milliseconds statement_timeout,
                            const std::string& key)
    {
        jobs::postgres_options storage_options{.schema = db.schema};
        storage_options.statement_timeout = statement_timeout;
        storage_options.lock_timeout = lock_timeout;
        store = std::make_shared<jobs::postgres_storage>(postgres_conninfo(), storage_options);
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        jobs::add_jobs(builder, store, quick_server())
            .register_kind<int>("quick", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
        host.emplace(builder.build());
        client = &host->services().get<jobs::client>();
        host->start_blocking();
        app.exec("BEGIN");
        auto first = request("quick", "1");
        first.unique_key = key;
        first.run_at = jobs::clock::now() + 1h; // stays, so that the key stays taken
        const auto made = store->enqueue_in_transaction(app.get(), std::vector{first});
        REQUIRE(made.size() == 1);
        held = made[0];
    }
};

TEST_CASE("jobs: an enqueue that waits on an application's uncommitted job of the same unique key fails after "
          "lock_timeout and says why",
          "[jobs][postgresql]")
{
    // The enqueue runs on the node's storage thread, where its renewals run
    // too: it must not wait there for as long as the application keeps its
    // transaction open.
    REQUIRE_POSTGRES();
    key_held_by_application k(300ms, 10s, "only-one");
    auto& client = *k.client;
    auto& host = *k.host;
    auto& app = k.app;
    jobs::job_options keyed;
    keyed.unique_key = "only-one";
    std::string error;
    const auto began = std::chrono::steady_clock::now();
    try {
        client.schedule_blocking("quick", 2, 1h, keyed);
    } catch (const jobs::storage_error& e) {
        error = e.what();
    }
    const auto took = std::chrono::steady_clock::now() - began;
    INFO(error);
    CHECK(error.find("postgres_options::lock_timeout") != std::string::npos);
    CHECK(took < 5s); // not the statement_timeout's 10 s
    app.exec("COMMIT");
    const auto found = client.schedule_blocking("quick", 2, 1h, keyed);
    CHECK_FALSE(found.created);
    CHECK(found.id == k.held.id);
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("jobs: enqueues that share a transaction with one that waits on an application's unique key are "
          "stored, and only the waiting ones fail",
          "[jobs][postgresql]")
{
    // Enqueues from callers that know nothing of each other go in one
    // transaction; one caller's key held by an application must not fail
    // the others, nor make the node look as if its writes failed.
    REQUIRE_POSTGRES();
    key_held_by_application k(3s, 20s, "taken");
    auto& client = *k.client;
    auto& host = *k.host;
    auto& app = k.app;
    auto& store = k.store;

    jobs::job_options keyed;
    keyed.unique_key = "taken";
    jobs::job_options free_key;
    free_key.unique_key = "free";
    const auto schedule = [&](int n, const jobs::job_options& o) {
        return std::async(std::launch::async, [&client, n, o]() -> std::pair<jobs::enqueued, std::string> {
            try {
                return {client.schedule_blocking("quick", n, 1h, o), ""};
            } catch (const jobs::row_lock_timeout& e) {
                return {{}, std::string("row_lock_timeout: ") + e.what()};
            } catch (const std::exception& e) {
                return {{}, e.what()};
            }
        });
    };
    // The first keyed enqueue keeps the storage's thread waiting on the
    // application's row; those that come meanwhile go in one batch.
    auto waiting = schedule(2, keyed);
    session watcher(postgres_conninfo());
    REQUIRE(test::eventually([&] { return watcher.exec("SELECT count(*) FROM pg_locks WHERE NOT granted") != "0"; },
                             10s));
    auto unrelated = schedule(3, free_key);
    auto also_waiting = schedule(4, keyed);
    auto third_waiting = schedule(6, keyed);

    REQUIRE(unrelated.wait_for(30s) == std::future_status::ready);
    const auto [stored, unrelated_error] = unrelated.get();
    INFO(unrelated_error);
    CHECK(unrelated_error.empty());
    CHECK(stored.created);
    const auto job = store->find(stored.id, false);
    REQUIRE(job);
    CHECK(job->state == job_state::scheduled);
    for (auto* f : {&waiting, &also_waiting, &third_waiting}) {
        REQUIRE(f->wait_for(30s) == std::future_status::ready);
        const auto error = f->get().second;
        INFO(error);
        CHECK(error.rfind("row_lock_timeout: ", 0) == 0);
        CHECK(error.find("postgres_options::lock_timeout") != std::string::npos);
    }
    // Waiting on the application's row is not a storage that fails writes.
    CHECK(jobs_storage_health(host).status == hosting::health_status::healthy);

    app.exec("COMMIT");
    const auto found = client.schedule_blocking("quick", 5, 1h, keyed);
    CHECK_FALSE(found.created);
    CHECK(found.id == k.held.id);
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("jobs: a continuation cancelled while its parent's node settles it stays cancelled",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    temp_db db;
    auto store = make_storage("postgresql", db);
    const auto t0 = jobs::clock::now();
    const auto parent = store->enqueue(std::vector{request("k", "1")}, t0)[0].id;
    auto child = request("k", "2");
    child.parent_id = parent;
    const auto continuation = store->enqueue(std::vector{child}, t0)[0].id;
    const jobs::claim_request claim{"node-a", {{"default", 1}}, {"k"}, t0 + 60s};
    const auto claimed = store->complete_and_claim({}, claim, t0);
    REQUIRE(claimed.size() == 1);
    REQUIRE(claimed[0].id == parent);

    // Another process cancels the continuation, and has not committed yet
    // when the parent's node finishes the parent and settles its
    // continuations.
    session other(postgres_conninfo());
    other.exec("BEGIN");
    other.exec("UPDATE \"" + db.schema + "\".jobs SET state = 7 WHERE id = " + std::to_string(continuation));
    const std::string xid = other.exec("SELECT pg_current_xact_id()");
    std::thread completing([&] {
        store->complete_and_claim(
            std::vector<jobs::completion>{{parent, claimed[0].attempt, jobs::outcome::succeeded, {}, {}, "ok"}},
            claim, t0);
    });
    // Once the node waits for the continuation's row (held by the cancel).
    CHECK(test::eventually(
        [&] {
            return query(postgres_conninfo(), "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = "
                                              "'transactionid' AND transactionid::text = '" + xid + "'") != "0";
        },
        20s));
    other.exec("COMMIT");
    completing.join();
    CHECK(store->find(parent)->state == job_state::succeeded);
    CHECK(store->find(continuation)->state == job_state::cancelled); // not made available again
}

TEST_CASE("jobs: a PostgreSQL server that stops answering fails the call in bounded time, and the next call "
          "after it answers again works",
          "[jobs][postgresql]")
{
    REQUIRE_POSTGRES();
    private_server server;
    jobs::postgres_options options;
    options.statement_timeout = 1s; // the call gives up 2 s after it
    jobs::postgres_storage store(server.conninfo(), options);
    const auto t0 = jobs::clock::now();
    store.enqueue(std::vector{request("k", "1")}, t0);
    server.stall();
    // No answer, and no word that the connection broke: the call must not
    // wait for ever (it would hold the storage thread, and every lease).
    std::atomic<bool> returned{false};
    std::string error;
    std::chrono::steady_clock::duration took{};
    std::thread call([&] {
        const auto began = std::chrono::steady_clock::now();
        try {
            store.enqueue(std::vector{request("k", "2")}, t0);
        } catch (const jobs::storage_error& e) {
            error = e.what();
        }
        took = std::chrono::steady_clock::now() - began;
        returned = true;
    });
    const bool in_time = test::eventually([&] { return returned.load(); }, 60s);
    server.resume(); // whatever happened, so that the thread can end
    call.join();
    CHECK(in_time);
    INFO(error);
    CHECK(error.find("no answer within 3000 ms") != std::string::npos);
    // The bound is the call's, not each statement's: the enqueue is a
    // pipeline of four, and waiting 3 s for each answer once the first
    // never came took 12 s.
    CHECK(took < 9s);
    // Answering again: the next call connects anew. The call that gave up
    // cannot know whether its transaction committed (its COMMIT went with
    // its statements, and the server, resumed, may read and run them): its
    // job is stored once or not at all, never twice.
    store.enqueue(std::vector{request("k", "3")}, t0);
    const auto stored = store.counts()[job_state::available];
    CHECK((stored == 2 || stored == 3));
}

TEST_CASE("jobs: readiness fails while the PostgreSQL server does not answer, and jobs run again once it does",
          "[jobs][postgresql][health]")
{
    REQUIRE_POSTGRES();
    private_server server;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    test::recorder r;
    jobs::postgres_options options;
    options.statement_timeout = 1s; // a call gives up 2 s after it
    jobs::add_jobs(builder, std::make_shared<jobs::postgres_storage>(server.conninfo(), options), quick_server())
        .register_kind<int>("count", [&](int n, jobs::job_context&) -> asio::awaitable<void> {
            r.add("ran " + std::to_string(n));
            co_return;
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    client.enqueue_blocking("count", 1);
    REQUIRE(r.wait_for("ran 1"));
    CHECK(jobs_storage_health(host).status == hosting::health_status::healthy);

    server.stall();
    CHECK_THROWS_AS(client.enqueue_blocking("count", 2), jobs::storage_error);
    REQUIRE(test::eventually([&] { return jobs_storage_health(host).status == hosting::health_status::unhealthy; }));
    // Why: the first call's "no answer", or a later reconnect's time-out.
    CHECK(jobs_storage_health(host).description.find("writes fail") != std::string::npos);

    server.resume();
    REQUIRE(test::eventually(
        [&] { return jobs_storage_health(host).status == hosting::health_status::healthy; }, 30s));
    client.enqueue_blocking("count", 3);
    REQUIRE(r.wait_for("ran 3"));
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
    // The call that gave up could not know whether its COMMIT, sent with
    // its statements, would run once the server went on: at most once.
    CHECK(r.count("ran 2") <= 1);
}
