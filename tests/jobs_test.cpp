// The job system's tests beyond the storage conformance suite: the client
// and server API, SQLite's own behaviour (schema migrations, several
// connections and processes on one file), and examples/jobs as a process.
#include "jobs_support.hpp"

#include <boost/asio/redirect_error.hpp>

#include "../bench/support/fault_vfs.hpp"

#include <future>

TEST_CASE("jobs: the state machine allows exactly its transitions", "[jobs]")
{
    using s = job_state;
    CHECK(jobs::can_transition(s::available, s::running));
    CHECK(jobs::can_transition(s::scheduled, s::available));
    CHECK(jobs::can_transition(s::retryable, s::available));
    CHECK(jobs::can_transition(s::running, s::succeeded));
    CHECK(jobs::can_transition(s::running, s::retryable));
    CHECK(jobs::can_transition(s::running, s::failed));
    CHECK(jobs::can_transition(s::running, s::scheduled));
    CHECK(jobs::can_transition(s::running, s::available));
    CHECK(jobs::can_transition(s::failed, s::available));
    CHECK(jobs::can_transition(s::succeeded, s::deleted));
    CHECK(jobs::can_transition(s::awaiting, s::available));
    CHECK_FALSE(jobs::can_transition(s::succeeded, s::running));
    CHECK_FALSE(jobs::can_transition(s::failed, s::cancelled));
    CHECK_FALSE(jobs::can_transition(s::deleted, s::deleted));
    CHECK_FALSE(jobs::can_transition(s::available, s::succeeded));
    CHECK_FALSE(jobs::can_transition(s::scheduled, s::failed));
    CHECK_FALSE(jobs::can_transition(s::awaiting, s::running));
    // The whole matrix: rows are from, columns to, in declaration order
    // (scheduled available awaiting running retryable succeeded failed
    // cancelled deleted).
    const char* const matrix[jobs::job_state_count] = {
        ".x.x...xx", // scheduled
        "...x...xx", // available
        ".x.....xx", // awaiting
        "xx..xxxxx", // running
        ".x.x...xx", // retryable
        ".x......x", // succeeded
        ".x......x", // failed
        ".x......x", // cancelled
        ".x.......", // deleted
    };
    for (std::size_t a = 0; a < jobs::job_state_count; ++a)
        for (std::size_t b = 0; b < jobs::job_state_count; ++b) {
            INFO(jobs::to_string(static_cast<s>(a)) << " -> " << jobs::to_string(static_cast<s>(b)));
            CHECK(jobs::can_transition(static_cast<s>(a), static_cast<s>(b)) == (matrix[a][b] == 'x'));
        }
    CHECK(jobs::parse_job_state("retryable") == s::retryable);
    CHECK_THROWS_WITH(jobs::parse_job_state("done"), Catch::Contains("'done' is not a job state"));
}




TEST_CASE("jobs: a handler can discard or cancel its job, a kind can refuse to retry an error, and a handler "
          "reaches the host's services",
          "[jobs][server]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.services().add_singleton<mail_pool>();
    jobs::kind_options careful;
    careful.retry.max_attempts = 5;
    careful.retry.never_for<std::invalid_argument>();
    std::atomic<int> pool_size{0};
    jobs::add_jobs(builder, std::make_shared<jobs::memory_storage>(), quick_server())
        .register_kind<std::string>(
            "mail",
            [&](std::string what, jobs::job_context& context) -> asio::awaitable<void> {
                co_await asio::this_coro::executor;
                pool_size = context.services().get<mail_pool>().size;
                if (what == "discard")
                    throw jobs::discard("the account is closed");
                if (what == "cancel")
                    throw jobs::cancel_job("the order was withdrawn");
                if (what == "invalid")
                    throw std::invalid_argument("no such address");
                throw std::runtime_error("the mail server is down");
            },
            careful);
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();

    const auto discarded = client.enqueue_blocking("mail", std::string("discard"));
    const auto cancelled = client.enqueue_blocking("mail", std::string("cancel"));
    const auto invalid = client.enqueue_blocking("mail", std::string("invalid"));
    const auto down = client.enqueue_blocking("mail", std::string("down"));
    REQUIRE(wait_state(client, discarded, job_state::failed));
    REQUIRE(wait_state(client, cancelled, job_state::cancelled));
    REQUIRE(wait_state(client, invalid, job_state::failed));
    REQUIRE(wait_state(client, down, job_state::retryable));

    auto j = client.find_blocking(discarded);
    CHECK(j->attempt == 1);
    CHECK(j->last_error == "the account is closed");
    CHECK_THAT(j->history.back().reason, Catch::Contains("not retried: discarded by its handler"));
    j = client.find_blocking(cancelled);
    CHECK(j->history.back().reason == "cancelled by its handler: the order was withdrawn");
    j = client.find_blocking(invalid);
    CHECK(j->attempt == 1);
    CHECK(j->last_error == "no such address");
    CHECK_THAT(j->history.back().reason, Catch::Contains("never retries"));
    // Any other error is retried as the policy says.
    CHECK(client.find_blocking(down)->attempt == 1);
    CHECK(pool_size == 7);
    host.stop_blocking();

    // A context made without services says so.
    jobs::job standalone;
    standalone.id = 9;
    standalone.kind = "mail";
    jobs::job_context bare(standalone, {}, nullptr);
    CHECK_THROWS_WITH(bare.services(), Catch::Contains("without a service_provider"));
}




TEST_CASE("jobs: a server that faulted still records the jobs that end in its grace when the host stops meanwhile",
          "[jobs]")
{
    // The server's loop faults (a storage throws what is not a
    // storage_error) while a handler runs; its shutdown gives the handler
    // its grace, and the host's stop comes during it.
    auto store = std::make_shared<failing_storage>();
    std::atomic<bool> fault_next{false};
    store->on_claim = [&](std::size_t, const jobs::claim_request&) {
        if (fault_next.exchange(false))
            throw std::logic_error("a fault of the storage (test)");
    };
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.options().shutdown_timeout = 60s;
    auto options = quick_server();
    options.shutdown_grace = 30s;
    test::recorder r;
    std::atomic<bool> may_end{false};
    // Deaf to its stop, as a handler stuck in a blocking call's wait is: it
    // ends when the test lets it.
    jobs::add_jobs(builder, store, options)
        .register_kind<std::string>("slow", [&](std::string name, jobs::job_context& ctx) -> asio::awaitable<void> {
            r.add("started " + name);
            std::stop_callback asked(ctx.stop_token(), [&r, name] { r.add("asked to stop " + name); });
            co_await asio::this_coro::reset_cancellation_state(
                [](asio::cancellation_type) { return asio::cancellation_type::none; });
            asio::steady_timer tick(co_await asio::this_coro::executor);
            while (!may_end.load()) {
                tick.expires_after(5ms);
                boost::system::error_code ec;
                co_await tick.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            }
            r.add("ended " + name);
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    const auto id = client.enqueue_blocking("slow", std::string("a")).id;
    REQUIRE(r.wait_for("started a"));

    fault_next = true;
    client.enqueue_blocking("slow", std::string("b")); // its claim faults
    // The server's shutdown after its fault has begun: a is asked to stop,
    // and its grace runs.
    REQUIRE(r.wait_for("asked to stop a"));
    std::thread stopper([&] { host.stop_blocking(); });
    REQUIRE(sink->wait_for("Stopping service 'hosting.jobs'"));
    may_end = true; // a ends within the grace
    stopper.join();
    INFO(sink->dump());
    REQUIRE(r.wait_for("ended a"));
    const auto a = store->inner.find(id, false);
    REQUIRE(a);
    CHECK(a->state == job_state::succeeded);
    CHECK(sink->has("a fault of the storage (test)"));
}

TEST_CASE("jobs: the default backoff is Sidekiq's, whose count is 0 after the first attempt", "[jobs]")
{
    // Sidekiq: count^4 + 15 + rand(10 * (count + 1)) s, count = attempt - 1.
    for (int attempt = 1; attempt <= 5; ++attempt) {
        INFO("after attempt " << attempt);
        const int n = attempt - 1;
        const auto base = std::chrono::seconds(n * n * n * n + 15);
        for (int i = 0; i < 50; ++i) {
            const auto wait = jobs::retry_policy::default_backoff(attempt);
            CHECK(wait >= base);
            CHECK(wait <= base + std::chrono::seconds(10 * attempt));
        }
    }
    // A policy's own backoff replaces it.
    jobs::retry_policy own;
    own.backoff = [](int attempt) { return std::chrono::milliseconds(attempt); };
    CHECK(own.delay_after(3) == std::chrono::milliseconds(3));
}

TEST_CASE("jobs: bad server options name what is wrong, and the shutdown grace is cut to fit the host's deadline",
          "[jobs]")
{
    auto store = std::make_shared<jobs::memory_storage>();
    {
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        auto options = quick_server();
        options.workers = 0;
        CHECK_THROWS_WITH(jobs::add_jobs(builder, store, options), Catch::Contains("workers must be at least 1"));
        options = quick_server();
        options.prefetch = 0;
        CHECK_THROWS_WITH(jobs::add_jobs(builder, store, options), Catch::Contains("prefetch must be between 1 (claims only for free workers) and 10000"));
    }
    auto options = quick_server();
    options.lease_duration = 30s;
    options.heartbeat_interval = 1s;
    options.shutdown_grace = 3s;
    for (const auto timeout : {std::chrono::milliseconds(3000), std::chrono::milliseconds(0)}) {
        auto sink = std::make_shared<test::capture_sink>();
        auto builder = test::make_builder(sink);
        builder.options().shutdown_timeout = timeout;
        jobs::add_jobs(builder, store, options);
        auto host = builder.build();
        host.start_blocking();
        const std::string cut = timeout.count() == 0 ? "0" : "2500";
        CHECK(sink->wait_for("shutdown_grace of 3000 ms is cut to " + cut + " ms, to fit the host's shutdown_timeout (" +
                             std::to_string(timeout.count()) + " ms) minus its shutdown_delay (0 ms) minus 500 ms"));
        host.stop_blocking();
        if (timeout.count() > 0) // a zero deadline leaves every service late
            CHECK(host.exit_code() == 0);
    }
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.options().shutdown_timeout = 5s;
    jobs::add_jobs(builder, store, options);
    auto host = builder.build();
    host.start_blocking();
    host.stop_blocking();
    CHECK_FALSE(sink->has("is cut to"));
}


















TEST_CASE("jobs: a SQLite file keeps its jobs and schema across opens, and two connections never share a claim",
          "[jobs][storage]")
{
    temp_db db;
    const auto t0 = jobs::clock::now();
    {
        jobs::sqlite_storage store(db.path.string());
        std::vector<jobs::enqueue_request> batch(200, request("k", "1"));
        store.enqueue(batch, t0);
    }
    jobs::sqlite_storage a(db.path.string());
    jobs::sqlite_storage b(db.path.string());
    CHECK(a.counts()[job_state::available] == 200);

    std::vector<jobs::job_id> by_a, by_b;
    auto drain = [&](jobs::sqlite_storage& s, const std::string& node, std::vector<jobs::job_id>& out) {
        for (;;) {
            jobs::claim_request c{node, {{"default", 7}}, {"k"}, t0 + 60s};
            auto got = s.complete_and_claim({}, c, t0);
            if (got.empty())
                return;
            for (auto& j : got)
                out.push_back(j.id);
        }
    };
    std::thread ta([&] { drain(a, "a", by_a); });
    std::thread tb([&] { drain(b, "b", by_b); });
    ta.join();
    tb.join();
    std::set<jobs::job_id> all(by_a.begin(), by_a.end());
    all.insert(by_b.begin(), by_b.end());
    CHECK(by_a.size() + by_b.size() == 200);
    CHECK(all.size() == 200);
    CHECK(a.counts()[job_state::running] == 200);

    CHECK_THROWS_AS(jobs::sqlite_storage("/nonexistent-dir/x.db"), jobs::storage_error);
}

TEST_CASE("jobs: a SQLite job's history stays JSON through lines after an error that ends in brackets, and after "
          "it was emptied",
          "[jobs][storage]")
{
    temp_db db;
    jobs::sqlite_storage store(db.path.string());
    const auto t0 = std::chrono::floor<std::chrono::microseconds>(jobs::clock::now());
    store.enqueue(std::vector{request("k", "1", 2)}, t0);
    const jobs::claim_request one{"node", {{"default", 1}}, {"k"}, t0 + 60s};
    const jobs::claim_request none{"node", {}, {}, t0 + 60s};
    // Claimed, failed with an error whose text ends in brackets, due again
    // and claimed again: each line goes in after one that ends so.
    const auto claimed = store.complete_and_claim({}, one, t0);
    REQUIRE(claimed.size() == 1);
    const jobs::completion retry{claimed[0].id, 1, jobs::outcome::retry, t0 + 1s, "it broke ]]", "retry"};
    store.complete_and_claim(std::span(&retry, 1), none, t0 + 1s);
    const auto again = store.complete_and_claim({}, one, t0 + 2s);
    REQUIRE(again.size() == 1);
    REQUIRE(again[0].id == claimed[0].id);
    const jobs::completion failed{again[0].id, 2, jobs::outcome::failed, {}, "[still]", "failed"};
    store.complete_and_claim(std::span(&failed, 1), none, t0 + 3s);
    const auto ended = store.find(claimed[0].id);
    REQUIRE(ended->history.size() == 6);
    CHECK(ended->history[2].to == job_state::retryable);
    CHECK(ended->history[2].error == "it broke ]]");
    CHECK(ended->history[3].to == job_state::available);
    CHECK(ended->history[3].reason == "due");
    CHECK(ended->history[4].to == job_state::running);
    CHECK(ended->history[5].to == job_state::failed);
    CHECK(ended->history[5].error == "[still]");
    // The lines a batch binds once: its claim's, and its plain successes'.
    CHECK(ended->history[1].from == job_state::available);
    CHECK(ended->history[1].reason == "claimed by node");
    CHECK(ended->history[1].at == t0);
    const auto quick = store.enqueue(std::vector{request("k", "3")}, t0 + 3s).at(0).id;
    const auto took = store.complete_and_claim({}, one, t0 + 3s);
    REQUIRE(took.size() == 1);
    REQUIRE(took[0].id == quick);
    const jobs::completion ok{quick, 1, jobs::outcome::succeeded, {}, {}, "all \"done\""};
    store.complete_and_claim(std::span(&ok, 1), none, t0 + 4s);
    const auto succeeded = store.find(quick);
    REQUIRE(succeeded->history.size() == 3);
    CHECK(succeeded->history[2].from == job_state::running);
    CHECK(succeeded->history[2].to == job_state::succeeded);
    CHECK(succeeded->history[2].at == t0 + 4s);
    CHECK(succeeded->history[2].reason == "all \"done\"");
    CHECK(succeeded->history[2].error.empty());
    // An empty history, which this library never writes (a job's first
    // line goes in with it), is not made invalid by the next line.
    const auto empty_history = [&](jobs::job_id id) {
        sqlite3* raw = nullptr;
        REQUIRE(sqlite3_open(db.path.string().c_str(), &raw) == SQLITE_OK);
        CHECK(sqlite3_exec(raw, ("UPDATE jobs SET history = '[]' WHERE id = " + std::to_string(id)).c_str(), nullptr,
                           nullptr, nullptr) == SQLITE_OK);
        sqlite3_close(raw);
    };
    const auto other = store.enqueue(std::vector{request("k", "2")}, t0 + 4s).at(0).id;
    empty_history(other);
    CHECK(store.change_state(other, job_state::cancelled, "no longer wanted", t0 + 2s) == job_state::cancelled);
    const auto emptied = store.find(other);
    REQUIRE(emptied->history.size() == 1);
    CHECK(emptied->history[0].to == job_state::cancelled);
    CHECK(emptied->history[0].reason == "no longer wanted");
    // Nor by the lines a batch binds: a claim's, then a plain success's.
    const auto last = store.enqueue(std::vector{request("k", "4")}, t0 + 5s).at(0).id;
    empty_history(last);
    const auto last_claimed = store.complete_and_claim({}, one, t0 + 5s);
    REQUIRE(last_claimed.size() == 1);
    REQUIRE(last_claimed[0].id == last);
    auto bound = store.find(last);
    REQUIRE(bound->history.size() == 1);
    CHECK(bound->history[0].reason == "claimed by node");
    empty_history(last);
    const jobs::completion last_ok{last, 1, jobs::outcome::succeeded, {}, {}, "ok"};
    store.complete_and_claim(std::span(&last_ok, 1), none, t0 + 6s);
    bound = store.find(last);
    REQUIRE(bound->history.size() == 1);
    CHECK(bound->history[0].to == job_state::succeeded);
}

TEST_CASE("jobs: a SQLite call that waits out busy_timeout says which file and which option, and a database that "
          "cannot use write-ahead logging is refused",
          "[jobs][storage]")
{
    temp_db db;
    jobs::sqlite_options quick;
    quick.busy_timeout = 100ms;
    jobs::sqlite_storage store(db.path.string(), quick);
    // Another process's write transaction, as long as it likes.
    sqlite3* other = nullptr;
    REQUIRE(sqlite3_open(db.path.string().c_str(), &other) == SQLITE_OK);
    REQUIRE(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK);
    std::string error;
    try {
        store.enqueue(std::vector{request("k", "1")}, jobs::clock::now());
    } catch (const jobs::storage_error& e) {
        error = e.what();
    }
    sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
    sqlite3_close(other);
    INFO(error);
    CHECK(error.find("SQLite file '" + db.path.string() + "'") != std::string::npos);
    CHECK(error.find("busy_timeout") != std::string::npos);
    CHECK(store.enqueue(std::vector{request("k", "2")}, jobs::clock::now()).size() == 1); // free again

    // In memory, SQLite keeps its own journal mode without a word: nothing
    // would be durable, and no other process could share the jobs.
    CHECK_THROWS_WITH(jobs::sqlite_storage(":memory:"), Catch::Contains("cannot use write-ahead logging"));
}

TEST_CASE("jobs: a SQLite file keeps arguments that are not UTF-8 byte for byte, and an error's text as valid "
          "UTF-8, in a batch or not",
          "[jobs][storage]")
{
    temp_db db;
    jobs::sqlite_storage store(db.path.string());
    const auto t0 = jobs::clock::now();
    using namespace std::string_literals;
    // Neither goes through JSON unchanged: these jobs and completions take
    // the path of one at a time, between the others of their batch. The
    // arguments are kept as they are; an error's text, which the history
    // holds as JSON, has each byte that starts no UTF-8 character (and each
    // NUL) replaced by U+FFFD.
    const std::vector<std::string> texts = {"plain", "\xff\xfe not UTF-8"s, "a NUL \0 inside"s, "\xc0\x80 overlong"s,
                                            "\xed\xa0\x80 surrogate"s, "plain again"};
    const std::string bad = "\xEF\xBF\xBD";
    const std::vector<std::string> valid = {"plain", bad + bad + " not UTF-8", "a NUL " + bad + " inside",
                                            bad + bad + " overlong", bad + bad + bad + " surrogate", "plain again"};
    std::vector<jobs::enqueue_request> batch;
    for (const auto& t : texts)
        batch.push_back(request("k", t, 2));
    const auto ids = store.enqueue(batch, t0);
    REQUIRE(ids.size() == texts.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
        if (i > 0)
            CHECK(ids[i].id > ids[i - 1].id);
        CHECK(store.find(ids[i].id)->args == texts[i]);
    }
    jobs::claim_request claim{"n", {{"default", 10}}, {"k"}, t0 + 60s};
    const auto claimed = store.complete_and_claim({}, claim, t0);
    REQUIRE(claimed.size() == texts.size());
    std::vector<jobs::completion> done;
    for (const auto& j : claimed)
        done.push_back({j.id, j.attempt, jobs::outcome::retry, t0 + 1s, "error: " + j.args, "retry"});
    store.complete_and_claim(done, {"n", {}, {"k"}, t0 + 60s}, t0);
    for (std::size_t i = 0; i < done.size(); ++i) {
        const auto j = store.find(done[i].id);
        REQUIRE(j);
        CHECK(j->state == job_state::retryable);
        const auto at = static_cast<std::size_t>(
            std::find_if(ids.begin(), ids.end(), [&](const jobs::enqueue_result& e) { return e.id == j->id; }) -
            ids.begin());
        REQUIRE(at < valid.size());
        CHECK(j->last_error == "error: " + valid[at]);
        CHECK(j->history.back().error == "error: " + valid[at]);
    }
}

// Schema 10 dropped the insert trigger that schemas 2 to 9 had, which the
// migration to 6 replaces: a file turned back to a schema before 6 needs it.
const std::string insert_trigger_of_6 =
    "CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN INSERT INTO job_counts "
    "VALUES (new.queue, new.kind, new.state, 1) ON CONFLICT DO UPDATE SET n = n + 1; END; ";
// And schema 12 dropped the update trigger that schemas 2 to 11 had, which
// the migrations to 6 and 10 replace.
const std::string update_trigger_of_10 =
    "CREATE TRIGGER jobs_counted_update AFTER UPDATE OF state ON jobs WHEN old.state <> new.state "
    "AND NOT (old.state = 1 AND new.state = 3) AND NOT (old.state = 3 AND new.state = 5) BEGIN "
    "UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND kind = old.kind AND state = old.state; "
    "INSERT INTO job_counts VALUES (new.queue, new.kind, new.state, 1) ON CONFLICT DO UPDATE SET n = n + 1; END; ";

namespace {
// Runs `sql` on the file on a connection of its own, as an older program
// or an operator would.
void run_sql(const temp_db& db, const std::string& sql)
{
    sqlite3* raw = nullptr;
    REQUIRE(sqlite3_open(db.path.string().c_str(), &raw) == SQLITE_OK);
    CHECK(sqlite3_exec(raw, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(raw);
}
} // namespace

TEST_CASE("jobs: a SQLite file of schema 1 migrates, and its counts match its rows", "[jobs][storage]")
{
    temp_db db;
    const auto t0 = jobs::clock::now();
    {
        jobs::sqlite_storage store(db.path.string());
        store.enqueue(std::vector<jobs::enqueue_request>(5, request("k", "1")), t0);
        store.enqueue(std::vector<jobs::enqueue_request>(3, request("gone", "1")), t0);
        jobs::claim_request claim{"a", {{"default", 2}}, {"k"}, t0 + 60s};
        store.complete_and_claim({}, claim, t0);
    }
    // Back to what schema 1 wrote: no counts table, triggers or kinds index,
    // nor the recurring jobs' keys.
    run_sql(db, "DROP INDEX jobs_unique_held; ALTER TABLE jobs DROP COLUMN unique_held; "
                "DROP TRIGGER jobs_counted_delete; DROP TABLE job_counts; "
                "ALTER TABLE recurring_jobs DROP COLUMN unique_key; "
                "ALTER TABLE recurring_jobs DROP COLUMN unique_states; "
                "ALTER TABLE recurring_jobs DROP COLUMN concurrency_key; "
                "ALTER TABLE recurring_jobs DROP COLUMN overlap; "
                "ALTER TABLE recurring_jobs DROP COLUMN unique_across_kinds; "
                "ALTER TABLE jobs DROP COLUMN unique_scoped; "
                "ALTER TABLE jobs DROP COLUMN claim_flags; "
                "DROP TABLE nodes; DROP TABLE paused_queues; "
                "ALTER TABLE recurring_jobs DROP COLUMN paused; "
                "DELETE FROM hosting_jobs_schema WHERE version >= 2;");
    jobs::sqlite_storage store(db.path.string());
    auto counts = store.counts();
    CHECK(counts[job_state::available] == 6);
    CHECK(counts[job_state::running] == 2);
    // From here the statements and the delete trigger keep them: through
    // claims, transitions, unknown-kind notes and pruning.
    std::vector<jobs::completion> done{{1, 1, jobs::outcome::succeeded, {}, {}, "ok"}};
    jobs::claim_request none{"a", {}, {"k"}, t0 + 60s};
    store.complete_and_claim(done, none, t0 + 1s);
    store.change_state(6, job_state::deleted, "x", t0 + 1s); // not 8, the newest: pruning keeps that one
    CHECK(store.flag_unknown_kinds({"k"}, "a", t0 + 1s) == 2);
    CHECK(store.flag_unknown_kinds({"k"}, "a", t0 + 2s) == 0); // once per job
    CHECK(store.prune(job_state::deleted, t0 + 1h, 10, t0 + 1h) == 1);
    counts = store.counts();
    CHECK(counts[job_state::available] == 5);
    CHECK(counts[job_state::running] == 1);
    CHECK(counts[job_state::succeeded] == 1);
    CHECK(counts[job_state::deleted] == 0);
    std::int64_t total = 0;
    for (std::size_t i = 0; i < jobs::job_state_count; ++i)
        total += counts.by_state[i];
    CHECK(total == 7);
}



















TEST_CASE("jobs: a SQLite file of schema 2 migrates, and its recurring jobs behave as they did", "[jobs][storage]")
{
    temp_db db;
    auto r = hourly("hourly", "k", utc(2026, 6, 1, 13, 0));
    {
        jobs::sqlite_storage store(db.path.string());
        store.upsert_recurring(r);
    }
    // Back to what schema 2 wrote: recurring jobs without keys or overlap.
    run_sql(db, insert_trigger_of_6 + update_trigger_of_10 +
                "DROP INDEX jobs_unique_held; ALTER TABLE jobs DROP COLUMN unique_held; "
                "ALTER TABLE recurring_jobs DROP COLUMN unique_key; ALTER TABLE recurring_jobs DROP COLUMN unique_states; "
                "ALTER TABLE recurring_jobs DROP COLUMN concurrency_key; ALTER TABLE recurring_jobs DROP COLUMN overlap; "
                "ALTER TABLE recurring_jobs DROP COLUMN unique_across_kinds; ALTER TABLE jobs DROP COLUMN unique_scoped; "
                "ALTER TABLE jobs DROP COLUMN claim_flags; DROP TABLE nodes; DROP TABLE paused_queues; "
                "ALTER TABLE recurring_jobs DROP COLUMN paused; DELETE FROM hosting_jobs_schema WHERE version >= 3;");
    jobs::sqlite_storage store(db.path.string());
    auto back = store.list_recurring();
    REQUIRE(back.size() == 1);
    CHECK(back[0].cron == "0 * * * *");
    CHECK(back[0].next_fire == utc(2026, 6, 1, 13, 0));
    CHECK(back[0].unique_key.empty());
    CHECK(back[0].concurrency_key.empty());
    CHECK(back[0].overlap == jobs::overlap_policy::allow);
    // From here the new fields are kept.
    r.concurrency_key = "hourly";
    r.overlap = jobs::overlap_policy::skip;
    store.upsert_recurring(r);
    back = store.list_recurring();
    CHECK(back[0].concurrency_key == "hourly");
    CHECK(back[0].overlap == jobs::overlap_policy::skip);
    // Opened again, it is not migrated twice.
    jobs::sqlite_storage again(db.path.string());
    CHECK(again.list_recurring().at(0).concurrency_key == "hourly");
}

TEST_CASE("jobs: a SQLite file of a newer schema opens when it only added, and is refused with its version when it "
          "needs a newer program",
          "[jobs][sqlite]")
{
    temp_db db;
    jobs::sqlite_storage(db.path.string());
    {
        // Schema 12 changed what every change of state must write (its
        // counts): a program of schema 11 is told to keep out.
        sqlite3* raw = nullptr;
        REQUIRE(sqlite3_open(db.path.string().c_str(), &raw) == SQLITE_OK);
        sqlite3_stmt* s = nullptr;
        REQUIRE(sqlite3_prepare_v2(raw, "SELECT max(oldest) FROM hosting_jobs_readers", -1, &s, nullptr) == SQLITE_OK);
        REQUIRE(sqlite3_step(s) == SQLITE_ROW);
        CHECK(sqlite3_column_int(s, 0) == 12);
        sqlite3_finalize(s);
        sqlite3_close(raw);
    }
    run_sql(db, "INSERT INTO hosting_jobs_schema (version) VALUES (99)");
    {
        // What schema 99 added leaves this program's use of it as it was.
        jobs::sqlite_storage behind(db.path.string());
        CHECK(behind.enqueue(std::vector{request("k", "1")}, jobs::clock::now()).size() == 1);
    }
    run_sql(db, "UPDATE hosting_jobs_readers SET oldest = 99");
    CHECK_THROWS_AS(jobs::sqlite_storage(db.path.string()), jobs::storage_error);
    CHECK_THROWS_WITH(jobs::sqlite_storage(db.path.string()),
                      Catch::Contains("version 99") && Catch::Contains("schema 99 or newer"));
}

TEST_CASE("jobs: a SQLite file of schema 10 migrates, and pruning still finds old finished jobs through an index",
          "[jobs][storage]")
{
    temp_db db;
    const auto t0 = jobs::clock::now();
    {
        jobs::sqlite_storage store(db.path.string());
        store.enqueue(std::vector<jobs::enqueue_request>(5, request("k", "1")), t0);
        jobs::claim_request claim{"a", {{"default", 4}}, {"k"}, t0 + 60s};
        const auto claimed = store.complete_and_claim({}, claim, t0);
        REQUIRE(claimed.size() == 4);
        // Two finish at t0, two two hours later.
        for (std::size_t i = 0; i < claimed.size(); ++i) {
            std::vector<jobs::completion> done{
                {claimed[i].id, claimed[i].attempt, jobs::outcome::succeeded, {}, {}, "ok"}};
            store.complete_and_claim(done, {"a", {}, {"k"}, t0 + 60s}, i < 2 ? t0 : t0 + 2h);
        }
    }
    // Back to schema 10: its index, whose predicate was an IN list, and its
    // update trigger.
    run_sql(db, update_trigger_of_10 +
                "DROP INDEX jobs_aged; CREATE INDEX jobs_aged ON jobs (state, updated_at) WHERE state IN (5, 6, 7, 8); "
                "DELETE FROM hosting_jobs_schema WHERE version >= 11;");
    jobs::sqlite_storage store(db.path.string());
    {
        // The terms pruning's query states, which the planner must match
        // with the index's own to use it.
        sqlite3* raw = nullptr;
        REQUIRE(sqlite3_open(db.path.c_str(), &raw) == SQLITE_OK);
        sqlite3_stmt* s = nullptr;
        REQUIRE(sqlite3_prepare_v2(raw,
                                   "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE state = 5 AND state >= 5 "
                                   "AND updated_at < 0 LIMIT 10",
                                   -1, &s, nullptr) == SQLITE_OK);
        std::string plan;
        while (sqlite3_step(s) == SQLITE_ROW)
            plan += reinterpret_cast<const char*>(sqlite3_column_text(s, 3)) + std::string("\n");
        sqlite3_finalize(s);
        sqlite3_close(raw);
        CHECK_THAT(plan, Catch::Contains("INDEX jobs_aged"));
    }
    // The two that finished at t0 go; those that finished later stay.
    CHECK(store.prune(job_state::succeeded, t0 + 1h, 10, t0 + 3h) == 2);
    CHECK_FALSE(store.find(1));
    CHECK_FALSE(store.find(2));
    CHECK(store.find(3));
    CHECK(store.find(4));
    CHECK(store.counts()[job_state::succeeded] == 2);
}

TEST_CASE("jobs: a SQLite file of schema 3 migrates, and the unique keys of its jobs hold within their kind",
          "[jobs][storage]")
{
    temp_db db;
    const auto t0 = jobs::clock::now();
    auto keyed = [](std::string kind, std::string key, bool across = false) {
        auto r = request(std::move(kind), "1");
        r.unique_key = std::move(key);
        r.unique_across_kinds = across;
        return r;
    };
    auto occurrence = keyed("k", "recurring:tick", true);
    occurrence.recurring_id = "tick";
    {
        jobs::sqlite_storage store(db.path.string());
        // Job 2's old key is what job 1's key becomes within kind a: the
        // migration must not trip over it on the way.
        store.enqueue(std::vector<jobs::enqueue_request>{keyed("a", "k"), keyed("b", "1:ak"), keyed("naïve", "k"),
                                                         occurrence},
                      t0);
    }
    // Back to what schema 3 wrote: the slot held the bare key.
    run_sql(db, insert_trigger_of_6 + update_trigger_of_10 +
                "DROP INDEX jobs_unique_held; ALTER TABLE jobs DROP COLUMN unique_held; "
                "UPDATE jobs SET unique_slot = NULL; "
                "UPDATE jobs SET unique_slot = unique_key WHERE kind <> 'naïve'; "
                "ALTER TABLE jobs DROP COLUMN unique_scoped; "
                "ALTER TABLE recurring_jobs DROP COLUMN unique_across_kinds; "
                "ALTER TABLE jobs DROP COLUMN claim_flags; "
                "DROP TABLE nodes; DROP TABLE paused_queues; "
                "ALTER TABLE recurring_jobs DROP COLUMN paused; "
                "DELETE FROM hosting_jobs_schema WHERE version >= 4;");
    jobs::sqlite_storage store(db.path.string());
    auto one = [&](const jobs::enqueue_request& r) {
        return store.enqueue(std::vector<jobs::enqueue_request>{r}, t0).at(0);
    };
    // The jobs of kinds a and b still hold their keys, within their kinds.
    auto found = one(keyed("a", "k"));
    CHECK_FALSE(found.created);
    CHECK(found.id == 1);
    found = one(keyed("b", "1:ak"));
    CHECK_FALSE(found.created);
    CHECK(found.id == 2);
    CHECK(one(keyed("c", "k")).created);
    // A recurring job's own key stays across kinds, as the engine asks it.
    auto again = occurrence;
    again.kind = "k2";
    found = one(again);
    CHECK_FALSE(found.created);
    CHECK(found.id == 4);
    // A kind whose name is not ASCII: its length counts bytes, as the
    // library's does. (Its slot was cleared above, so it takes it now.)
    CHECK(store.change_state(3, job_state::cancelled, "x", t0) == job_state::cancelled);
    auto taken = one(keyed("naïve", "k"));
    CHECK(taken.created);
    auto same = one(keyed("naïve", "k"));
    CHECK_FALSE(same.created);
    CHECK(same.id == taken.id);
    // A requeue of the cancelled one is refused: the new one holds its key.
    CHECK_THROWS_WITH(store.change_state(3, job_state::available, "x", t0), Catch::Contains("'k'"));
}

// ---------------------------------------------------------------------------
// Processes: examples/jobs as the worker

#ifdef HOSTING_EXAMPLE_JOBS
namespace {

void enqueue_records(const std::string& which, temp_db& db, int count)
{
    std::vector<jobs::enqueue_request> batch;
    for (int i = 1; i <= count; ++i)
        batch.push_back(request("record", std::to_string(i), 3));
    make_storage(which, db)->enqueue(batch, jobs::clock::now());
}

// "ran <id> <n>" lines -> how often each id ran.
std::map<std::int64_t, int> runs_in(const std::string& output)
{
    std::map<std::int64_t, int> out;
    std::istringstream lines(output);
    std::string line;
    while (std::getline(lines, line))
        if (line.rfind("ran ", 0) == 0)
            ++out[std::stoll(line.substr(4, line.find(' ', 4) - 4))];
    return out;
}

std::vector<std::string> worker_args(const std::string& which, const temp_db& db)
{
    const std::string storage = which == "postgresql"          ? postgres_conninfo()
                                : which == "postgresql-pooled" ? pooled_postgres_conninfo()
                                                               : db.path.string();
    return {"--Jobs:Mode=work",
            "--Jobs:Storage=" + storage,
            "--Jobs:TransactionPooling=" + std::string(which == "postgresql-pooled" ? "true" : "false"),
            "--Jobs:Schema=" + db.schema,
            "--Jobs:PrintRuns=true",
            // Long enough that a sanitized child starved by its neighbours
            // keeps its leases: "never twice while its process lives" is
            // what these tests check, and a lease that lapses in a living
            // process is rightly taken over.
            "--Jobs:LeaseMs=3000",
            "--Jobs:HeartbeatMs=300",
            "--Jobs:PollMs=100",
            "--Logging:LogLevel:Default=Warning"};
}

// The storages several processes share: a SQLite file, and PostgreSQL
// (directly and through PgBouncer) when CTest started its server.
std::vector<std::string> process_storages()
{
    auto out = conformance_storages();
    out.erase(std::remove(out.begin(), out.end(), "memory"), out.end());
    return out;
}

#define PROCESS_STORAGE(which, db)                                                                                   \
    temp_db db;                                                                                                        \
    const std::string which = GENERATE(Catch::Generators::from_range(process_storages()));                           \
    INFO(which)

} // namespace

TEST_CASE("jobs: two server processes on one store never run a job twice", "[jobs][process]")
{
    PROCESS_STORAGE(which, db);
    enqueue_records(which, db, 3000);
    // Each job takes 10 ms, so that one process alone needs seconds, and b
    // starts once a is at work: both then share the queue for a while, however
    // slowly a sanitizer makes them start.
    auto args = worker_args(which, db);
    args.push_back("--Jobs:RecordMs=10");
    test::child_process a(HOSTING_EXAMPLE_JOBS, args);
    REQUIRE(a.wait_for_output("ran ", 60s));
    test::child_process b(HOSTING_EXAMPLE_JOBS, args);
    CHECK(a.wait_exit(60s) == 0);
    CHECK(b.wait_exit(60s) == 0);
    auto runs_a = runs_in(a.output());
    auto runs_b = runs_in(b.output());
    std::size_t twice = 0;
    for (const auto& [id, n] : runs_a)
        twice += n > 1 || runs_b.contains(id);
    for (const auto& [id, n] : runs_b)
        twice += n > 1;
    CHECK(twice == 0);
    CHECK(runs_a.size() + runs_b.size() == 3000);
    CHECK(!runs_a.empty());
    CHECK(!runs_b.empty());
    auto owned = make_storage(which, db);
    auto& store = *owned;
    CHECK(store.counts()[job_state::succeeded] == 3000);
}

TEST_CASE("jobs: a worker that blocks its only thread past the lease keeps its jobs from the other process",
          "[jobs][process]")
{
    PROCESS_STORAGE(which, db);
    enqueue_records(which, db, 200);
    // a's first job blocks a's one thread for 3 leases (a synchronous call
    // that hangs); b works all the while. a's storage thread renews a's
    // leases, so b never takes a job a holds, and a never runs one b took.
    auto args = worker_args(which, db); // leases of 3 s
    auto blocking = args;
    blocking.push_back("--Jobs:BlockOnceMs=9000");
    for (auto* v : {&args, &blocking})
        v->push_back("--Jobs:Prefetch=1"); // so that b has work to take, if a lost its leases
    test::child_process a(HOSTING_EXAMPLE_JOBS, blocking);
    // Once a holds jobs: its claim is in storage before its first run.
    REQUIRE(test::eventually(
        [&] {
            auto owned = make_storage(which, db);
            auto& store = *owned;
            return store.counts()[job_state::running] > 0;
        },
        30s));
    test::child_process b(HOSTING_EXAMPLE_JOBS, args);
    CHECK(a.wait_exit(60s) == 0);
    CHECK(b.wait_exit(60s) == 0);
    auto runs_a = runs_in(a.output());
    auto runs_b = runs_in(b.output());
    std::size_t twice = 0;
    for (const auto& [id, n] : runs_a)
        twice += n > 1 || runs_b.contains(id);
    for (const auto& [id, n] : runs_b)
        twice += n > 1;
    CHECK(twice == 0);
    CHECK(runs_a.size() + runs_b.size() == 200);
    auto owned = make_storage(which, db);
    auto& store = *owned;
    CHECK(store.counts()[job_state::succeeded] == 200);
    jobs::job_filter everything;
    everything.limit = 200;
    for (const auto& j : store.list(everything))
        CHECK(j.attempt == 1); // no lease expired, so none was charged twice
}

TEST_CASE("jobs: two server processes share slow jobs fairly", "[jobs][process]")
{
    PROCESS_STORAGE(which, db);
    enqueue_records(which, db, 200);
    // 200 jobs of 200 ms, 4 workers each, the default prefetch: before
    // claims went by free workers, the first node to look claimed all 200
    // (4 workers * a prefetch of 64) and the other idled.
    auto args = worker_args(which, db);
    args.push_back("--Jobs:RecordMs=200");
    test::child_process a(HOSTING_EXAMPLE_JOBS, args);
    test::child_process b(HOSTING_EXAMPLE_JOBS, args);
    CHECK(a.wait_exit(90s) == 0);
    CHECK(b.wait_exit(90s) == 0);
    const auto runs_a = runs_in(a.output()).size();
    const auto runs_b = runs_in(b.output()).size();
    INFO("a ran " << runs_a << ", b ran " << runs_b);
    CHECK(runs_a + runs_b == 200);
    CHECK(runs_a >= 67);
    CHECK(runs_b >= 67);
}

TEST_CASE("jobs: a worker killed with SIGKILL mid-run loses nothing", "[jobs][process]")
{
    PROCESS_STORAGE(which, db);
    constexpr int total = 10000;
    const int prefetch = GENERATE(1, 64);
    INFO("prefetch " << prefetch);
    enqueue_records(which, db, total);
    auto args = worker_args(which, db);
    args.push_back("--Jobs:Prefetch=" + std::to_string(prefetch));
    std::map<std::int64_t, int> before;
    {
        test::child_process victim(HOSTING_EXAMPLE_JOBS, args);
        // Somewhere in the middle: the 2000th job has run.
        REQUIRE(victim.wait_for_output(" 2000\n", 60s));
        victim.send_signal(SIGKILL);
        CHECK(victim.wait_exit() == 128 + SIGKILL);
        before = runs_in(victim.output());
    }
    {
        auto owned = make_storage(which, db);
        auto& store = *owned;
        const auto counts = store.counts();
        INFO("succeeded before the restart: " << counts[job_state::succeeded]);
        CHECK(counts[job_state::succeeded] < total); // it really died mid-run
    }
    test::child_process survivor(HOSTING_EXAMPLE_JOBS, args);
    CHECK(survivor.wait_exit(120s) == 0);
    auto after = runs_in(survivor.output());
    auto owned = make_storage(which, db);
    auto& store = *owned;
    const auto counts = store.counts();
    CHECK(counts[job_state::succeeded] == total);
    CHECK(counts[job_state::failed] == 0);
    CHECK(counts[job_state::available] + counts[job_state::running] + counts[job_state::retryable] == 0);
    // Every job ran; the ones the killed node held ran again (at least once).
    std::set<std::int64_t> all;
    for (const auto& [id, n] : before)
        all.insert(id);
    for (const auto& [id, n] : after)
        all.insert(id);
    CHECK(all.size() == static_cast<std::size_t>(total));
    // The crash charged an attempt only to jobs whose start the node had
    // reported, at most its 4 workers' (before, every job it had claimed
    // ahead: up to 4 * 64).
    jobs::job_filter everything;
    everything.limit = total;
    std::size_t charged = 0;
    for (const auto& j : store.list(everything))
        charged += j.attempt > 1;
    INFO("charged " << charged);
    CHECK(charged <= 4);
}

TEST_CASE("jobs: of three server processes, one killed with SIGKILL: nothing lost, and only what it started runs "
          "twice",
          "[jobs][process]")
{
    PROCESS_STORAGE(which, db);
    constexpr int total = 3000;
    enqueue_records(which, db, total);
    auto args = worker_args(which, db); // leases of 3 s
    args.push_back("--Jobs:RecordMs=10"); // 3000 jobs: seconds of work for 12 workers
    test::child_process a(HOSTING_EXAMPLE_JOBS, args);
    test::child_process b(HOSTING_EXAMPLE_JOBS, args);
    test::child_process c(HOSTING_EXAMPLE_JOBS, args);
    // b dies at work, holding jobs, a third of the way through.
    REQUIRE(b.wait_for_output("ran ", 60s));
    REQUIRE(test::eventually(
        [&] { return make_storage(which, db)->counts()[job_state::succeeded] >= total / 3; }, 60s));
    b.send_signal(SIGKILL);
    CHECK(b.wait_exit() == 128 + SIGKILL);
    CHECK(a.wait_exit(90s) == 0);
    CHECK(c.wait_exit(90s) == 0);
    const auto runs_a = runs_in(a.output());
    const auto runs_b = runs_in(b.output());
    const auto runs_c = runs_in(c.output());
    // While their processes lived, no job ran twice.
    std::size_t twice_alive = 0;
    for (const auto& [id, n] : runs_a)
        twice_alive += n > 1 || runs_c.contains(id);
    for (const auto& [id, n] : runs_c)
        twice_alive += n > 1;
    CHECK(twice_alive == 0);
    // What ran again after the kill is what b had started: a job b never
    // ran is never run twice.
    std::size_t again = 0, b_twice = 0;
    for (const auto& [id, n] : runs_b) {
        const bool elsewhere = runs_a.contains(id) || runs_c.contains(id);
        again += elsewhere;
        b_twice += n > 1;
    }
    INFO("b ran " << runs_b.size() << ", of which " << again << " ran again elsewhere");
    CHECK(b_twice == 0);
    // Nothing lost: every job succeeded, and each ran somewhere.
    std::set<std::int64_t> all;
    for (const auto* runs : {&runs_a, &runs_b, &runs_c})
        for (const auto& [id, n] : *runs)
            all.insert(id);
    CHECK(all.size() == static_cast<std::size_t>(total));
    auto owned = make_storage(which, db);
    auto& store = *owned;
    CHECK(store.counts()[job_state::succeeded] == total);
    // Duplicates are bounded by what b held: its 4 workers' runs, and those
    // it had finished but not yet committed. Runs of 10 ms are claimed a
    // few per worker ahead (20 ms of work); 4 * 64 leaves a slow machine room.
    CHECK(again <= 4 * 64);
}

TEST_CASE("jobs: a worker killed with SIGKILL and started again under its fixed node id finishes every job",
          "[jobs][process]")
{
    PROCESS_STORAGE(which, db);
    constexpr int total = 3000;
    enqueue_records(which, db, total);
    auto args = worker_args(which, db);
    args.push_back("--Jobs:NodeId=worker-0"); // a StatefulSet pod's name, say
    args.push_back("--Jobs:RecordMs=2");      // so that it dies with jobs in hand
    {
        test::child_process victim(HOSTING_EXAMPLE_JOBS, args);
        REQUIRE(victim.wait_for_output(" 300\n", 60s));
        victim.send_signal(SIGKILL);
        CHECK(victim.wait_exit() == 128 + SIGKILL);
    }
    {
        auto owned = make_storage(which, db);
        auto& store = *owned;
        REQUIRE(store.counts()[job_state::running] > 0); // it died holding jobs
    }
    // The same id again: what the dead process held must not stay running,
    // renewed by this one's heartbeats, or the worker never finds its work done.
    test::child_process survivor(HOSTING_EXAMPLE_JOBS, args);
    CHECK(survivor.wait_exit(60s) == 0);
    auto owned = make_storage(which, db);
    auto& store = *owned;
    const auto counts = store.counts();
    CHECK(counts[job_state::succeeded] == total);
    CHECK(counts[job_state::running] == 0);
    CHECK(counts[job_state::failed] == 0);
}
#endif



TEST_CASE("jobs: of two servers racing for a recurring occurrence, one wins", "[jobs][recurring]")
{
    temp_db db;
    const auto t0 = utc(2026, 6, 1, 12, 0);
    jobs::sqlite_storage a(db.path.string());
    jobs::sqlite_storage b(db.path.string());
    a.upsert_recurring(hourly("r", "k", t0));
    auto occurrence = request("k", "1");
    occurrence.unique_key = std::string("recurring:r:1");
    occurrence.unique_states = jobs::state_set::all();
    occurrence.recurring_id = std::string("r");
    std::vector<jobs::enqueue_request> occurrences{occurrence};
    const bool first = a.fire_recurring("r", t0, t0 + 1h, occurrences, t0);
    const bool second = b.fire_recurring("r", t0, t0 + 1h, occurrences, t0);
    CHECK(first);
    CHECK_FALSE(second);
    CHECK(a.counts()[job_state::available] == 1);
    CHECK(b.list_recurring()[0].next_fire == t0 + 1h);
}



TEST_CASE("jobs: metrics count outcomes and a health check reports an unreachable storage", "[jobs][health]")
{
    auto store = std::make_shared<failing_storage>();
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    jobs::add_jobs(builder, store, quick_server())
        .register_kind<int>("count", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            r.add("counted");
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    client.enqueue_blocking("count", 1);
    REQUIRE(r.wait_for("counted"));
    auto& metrics = host.services().get<hosting::metrics_registry>();
    REQUIRE(test::eventually([&] {
        return metrics.render().find(
                   "hosting_jobs_completed_total{kind=\"count\",queue=\"default\",outcome=\"succeeded\"} 1\n") !=
               std::string::npos;
    }));
    CHECK(metrics.render().find("hosting_jobs_duration_seconds_count{kind=\"count\",queue=\"default\"} 1\n") !=
          std::string::npos);

    auto healthy = [&] { return jobs_storage_health(host).status; };
    CHECK(healthy() == hosting::health_status::healthy);
    store->down = true;
    CHECK(healthy() == hosting::health_status::unhealthy);
    REQUIRE(sink->wait_for("storage unreachable (test)"));
    store->down = false;
    host.stop_blocking();
}

TEST_CASE("jobs: a storage slow to stop listening holds up neither its host's stop nor a host of another storage",
          "[jobs][server]")
{
    // A PostgreSQL storage's listening thread may take seconds to end (a
    // name lookup of its server): the stop of its host, on the host's event
    // loop, does not wait for it, and the end of the host, which does,
    // holds up no other storage's hosts.
    auto slow = std::make_shared<failing_storage>();
    std::promise<void> stopping_entered;
    std::promise<void> release;
    auto released = release.get_future().share();
    std::atomic<int> slow_listens{0};
    slow->on_listen = [&](bool listening) {
        ++slow_listens;
        if (listening)
            return;
        stopping_entered.set_value();
        released.wait();
    };
    auto make_host = [](std::shared_ptr<jobs::storage> store) {
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        jobs::add_jobs(builder, std::move(store), quick_server())
            .register_kind<int>("count", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
        return std::make_unique<hosting::host>(builder.build());
    };
    auto stuck = make_host(slow);
    slow.reset(); // the host's alone, so that its end ends the storage's use
    stuck->start_blocking();
    auto stuck_stop = std::async(std::launch::async, [&] { stuck->stop_blocking(); });
    const bool stopped = stuck_stop.wait_for(20s) == std::future_status::ready;
    if (!stopped)
        release.set_value(); // let it end, to report
    REQUIRE(stopped);
    CHECK(stuck->exit_code() == 0);
    CHECK(slow_listens == 1); // still listening: only the host's end stops it

    auto stuck_end = std::async(std::launch::async, [&] { stuck.reset(); });
    REQUIRE(stopping_entered.get_future().wait_for(20s) == std::future_status::ready);
    auto other_store = std::make_shared<failing_storage>();
    std::atomic<int> other_listens{0};
    other_store->on_listen = [&](bool) { ++other_listens; };
    auto other = make_host(other_store);
    auto other_run = std::async(std::launch::async, [&] {
        other->start_blocking();
        other->stop_blocking();
        other.reset();
    });
    const bool other_done = other_run.wait_for(20s) == std::future_status::ready;
    release.set_value(); // whatever happened, let the stuck host end
    CHECK(other_done);
    CHECK(stuck_end.wait_for(20s) == std::future_status::ready);
    other_run.wait();
    CHECK(other_listens == 2); // started and stopped, while the other storage's stop went on
}

TEST_CASE("jobs: a stop tells running handlers at once, while an enqueue that took the server's claim is "
          "still in the storage",
          "[jobs][server]")
{
    // The server's standing claim went into an enqueue's transaction, which
    // the storage holds (a lock, a slow disk, a server that stopped
    // answering). The stop waits for that claim's jobs, to release them,
    // but the handlers already running must hear of the stop first, or
    // their grace is spent before they are told.
    auto store = std::make_shared<failing_storage>();
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, store, quick_server())
        .register_kind<std::string>("long", until_stopped(r))
        .register_kind<int>("quick", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    hold_first hold;
    store->on_enqueue_and_claim = [&] { hold.pass(); };
    std::atomic<int> found_nothing{0}; // claims that took nothing: the server then leaves its claim standing
    store->after_claim = [&](const std::vector<jobs::job>& claimed) {
        if (claimed.empty())
            ++found_nothing;
    };
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    client.enqueue_blocking("long", std::string("a"));
    REQUIRE(r.wait_for("started a", 20s));

    hold.arm();
    // Enqueues one at a time, each once the server found nothing more to
    // claim, until one finds its claim standing and takes it (the server's
    // own claims, between them, are not held).
    auto enqueuer = std::async(std::launch::async, [&] {
        for (int i = 1; !hold.entered(); ++i) {
            const int before = found_nothing;
            client.enqueue_blocking("quick", i);
            test::eventually([&] { return hold.entered() || found_nothing > before; }, 5s);
        }
    });
    REQUIRE(hold.entered_within(60s));
    auto stop = std::async(std::launch::async, [&] { host.stop_blocking(); });
    const bool told = r.wait_for("stopped a", 20s);
    hold.release(); // whatever happened, let the enqueue and the stop end
    CHECK(told);
    enqueuer.wait();
    stop.wait();
    CHECK(host.exit_code() == 0);
    CHECK(store->inner.counts()[job_state::running] == 0); // the held enqueue's job went back, not lost
}

TEST_CASE("jobs: a claim's leases run from when it is sent, not from when it was queued", "[jobs][server]")
{
    // The server's first claim waits behind a recovery that takes long (as
    // a claim waits behind another process's write lock): leases counted
    // from when the claim was queued would be stored already run out, and
    // another node could take the job as it starts here.
    auto clock = std::make_shared<jobs::manual_time_source>(jobs::clock::now());
    auto store = std::make_shared<failing_storage>();
    const auto id = store->inner.enqueue(std::vector{request("count", "1")}, clock->now())[0].id;
    std::atomic<bool> advanced{false};
    store->on_recover_node = [&] {
        if (!advanced.exchange(true))
            clock->advance(10s); // ten leases
    };
    std::mutex mutex;
    std::optional<jobs::time_point> stored_until;
    jobs::time_point claimed_at{};
    store->after_claim = [&](const std::vector<jobs::job>& claimed) {
        for (const auto& j : claimed)
            if (j.id == id) {
                std::lock_guard lock(mutex);
                stored_until = j.lease_expires;
                claimed_at = clock->now();
            }
    };
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, store, quick_server(clock)) // a lease of 1 s
        .register_kind<int>("count", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            r.add("ran");
            co_return;
        });
    auto host = builder.build();
    host.start_blocking();
    CHECK(r.wait_for("ran"));
    host.stop_blocking();
    std::lock_guard lock(mutex);
    REQUIRE(stored_until.has_value());
    CHECK(*stored_until > claimed_at);
}

TEST_CASE("jobs: a recurring job whose occurrence waits on another transaction's row holds up neither the others "
          "nor itself for long",
          "[jobs][server]")
{
    // "a" comes first in the pass, and its occurrence's unique key is held
    // by an application's open transaction (PostgreSQL's row_lock_timeout).
    auto clock = std::make_shared<jobs::manual_time_source>(jobs::clock::now());
    auto store = std::make_shared<failing_storage>();
    for (const std::string id : {"a", "b"})
        store->inner.upsert_recurring(hourly(id, "count", clock->now() + 1h));
    std::atomic<bool> a_held{true};
    std::atomic<int> a_tries{0};
    store->on_fire_recurring = [&](const std::string& id) {
        if (id == "a" && a_held.load()) {
            ++a_tries;
            throw jobs::row_lock_timeout("jobs: a row another transaction holds (test)");
        }
    };
    auto options = quick_server(clock);
    options.poll_interval = 200ms;
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("count", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(test::eventually([&] { return store->recurring_reads > 0; }));
    clock->advance(2h); // both due
    const auto fired_of = [&](const std::string& id) {
        return [&store, &clock, id] {
            for (const auto& r : store->inner.list_recurring())
                if (r.id == id)
                    return r.next_fire > clock->now(); // moved on past the hour it was due
            return false;
        };
    };
    CHECK(test::eventually(fired_of("b")));
    CHECK(sink->wait_for("recurring job 'a': jobs: a row another transaction holds (test); tried again"));
    // Tried again once the row is free, not only at its next hour.
    REQUIRE(test::eventually([&] { return a_tries.load() >= 2; }));
    a_held = false;
    CHECK(test::eventually(fired_of("a")));
    host.stop_blocking();
}

TEST_CASE("jobs: a prune under way ends at the stop, between its batches", "[jobs][server]")
{
    // A backlog of finished jobs: every batch is full, so a prune would go
    // on for its 400 batches. Once a job runs, a batch is held until the
    // server has begun its stop, which that job hears on its token.
    auto store = std::make_shared<failing_storage>();
    std::atomic<int> batches{0};
    hold_first held;
    store->on_prune = [&](std::size_t limit) {
        ++batches;
        held.pass();
        return limit;
    };
    auto options = quick_server();
    options.retention.interval = 10ms;
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto registry = jobs::add_jobs(builder, store, options);
    registry.register_kind<int>("count", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    registry.register_kind<int>("wait", [&r](int, jobs::job_context& ctx) -> asio::awaitable<void> {
        r.add("running");
        try {
            co_await hosting::delay(std::chrono::hours(1), ctx.stop_token());
        } catch (const hosting::operation_canceled&) {
            r.add("told to stop");
            throw;
        }
    });
    auto host = builder.build();
    host.start_blocking();
    host.services().get<jobs::client>().enqueue_blocking("wait", 1);
    REQUIRE(r.wait_for("running"));
    held.arm();
    REQUIRE(held.entered_within(test::patience));
    const int under_way = batches.load(); // the storage's thread waits in it
    std::thread stopper([&] { host.stop_blocking(); });
    const bool told = r.wait_for("told to stop");
    held.release();
    stopper.join();
    REQUIRE(told);
    CHECK(batches.load() == under_way); // none after the one under way
    CHECK(host.exit_code() == 0);
}

TEST_CASE("jobs: a recurring pass that fails is tried again after a poll interval, not at once", "[jobs][server]")
{
    // Its due time in the past and the storage failing, the server's loop
    // tried the pass again at once, as fast as the storage could fail.
    auto clock = std::make_shared<jobs::manual_time_source>(jobs::clock::now());
    auto store = std::make_shared<failing_storage>();
    store->inner.upsert_recurring(hourly("hourly", "count", clock->now() + 1h));
    auto options = quick_server(clock); // heartbeats every 100 ms
    options.poll_interval = 200ms;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("count", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(test::eventually([&] { return store->recurring_reads > 0; }));
    store->down = true;
    clock->advance(2h); // due, while every pass fails
    const int announces = store->announces;
    const int reads = store->recurring_reads;
    // Five heartbeats: each may ask for a pass (other processes may have
    // changed the recurring jobs), and the polls of that time a few more.
    REQUIRE(test::eventually([&] { return store->announces >= announces + 5; }));
    const int passes = store->recurring_reads - reads;
    store->down = false;
    host.stop_blocking();
    CHECK(passes <= 40);
}

TEST_CASE("jobs: a kind's retry backoff that throws leaves the job to the default backoff, not running for good",
          "[jobs][server]")
{
    auto clock = std::make_shared<jobs::manual_time_source>(jobs::clock::now());
    auto store = std::make_shared<failing_storage>();
    auto sink = std::make_shared<test::capture_sink>();
    test::recorder r;
    jobs::kind_options kind;
    kind.retry.backoff = [](int) -> std::chrono::milliseconds { throw std::runtime_error("no backoff today"); };
    auto builder = test::make_builder(sink);
    jobs::add_jobs(builder, store, quick_server(clock))
        .register_kind<int>(
            "flaky",
            [&](int, jobs::job_context& context) -> asio::awaitable<void> {
                r.add(std::string("attempt ") + std::to_string(context.attempt()));
                if (context.attempt() == 1)
                    throw std::runtime_error("first time fails");
                co_return;
            },
            kind);
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    jobs::job_options twice;
    twice.max_attempts = 2;
    const auto id = client.enqueue_blocking("flaky", 1, twice).id;
    REQUIRE(r.wait_for("attempt 1"));
    CHECK(wait_state(client, id, job_state::retryable));
    CHECK(sink->has("its kind's retry backoff threw (no backoff today); the default backoff is used"));
    clock->advance(1min); // past the default's 15 to 25 s
    CHECK(r.wait_for("attempt 2"));
    CHECK(wait_state(client, id, job_state::succeeded));
    host.stop_blocking();
}

TEST_CASE("jobs: a recurring pass that fires many jobs lets the node's renewals through between them",
          "[jobs][server]")
{
    // Many occurrences due at once (midnight, a restart after a long stop),
    // on a storage slow to write: the pass must not keep the node's leases
    // from being renewed until its last firing.
    auto store = std::make_shared<failing_storage>();
    test::recorder r;
    auto options = quick_server(); // a lease of 1 s, renewed every 100 ms
    options.workers = 1;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, store, options)
        .register_kind<std::string>("hold", until_stopped(r))
        .register_kind<int>("tick", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    constexpr int due = 10;
    std::atomic<int> fired{0};
    std::atomic<int> at_first{-1};
    std::atomic<int> at_last{-1};
    store->on_fire_recurring = [&](const std::string&) {
        const int n = ++fired;
        if (n == 1)
            at_first = store->renewals.load();
        std::this_thread::sleep_for(150ms); // a slow write, each
        if (n == due)
            at_last = store->renewals.load();
    };
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    client.enqueue_blocking("hold", std::string("a"));
    REQUIRE(r.wait_for("started a"));

    const auto tick = hourly("", "tick", jobs::clock::now() - 1min);
    for (int i = 0; i < due; ++i) {
        auto one = tick;
        one.id = std::string("tick-") + std::to_string(i);
        store->inner.upsert_recurring(one);
    }
    // The next heartbeat asks for a pass, which finds them all due.
    REQUIRE(test::eventually([&] { return at_last >= 0; }, 60s));
    CHECK(at_last - at_first >= 2);
    host.stop_blocking();
}

TEST_CASE("jobs: a stop tells running handlers at once, while the server's claim is still in the storage",
          "[jobs][server]")
{
    // The server's loop awaits a claim the storage holds (another process's
    // write lock, a server slow to answer): the handlers' grace must not
    // wait for it to come back.
    auto store = std::make_shared<failing_storage>();
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    options.workers = 2; // room left beside the long job: the server keeps claiming
    jobs::add_jobs(builder, store, options).register_kind<std::string>("long", until_stopped(r));
    hold_first hold;
    store->on_claim = [&](std::size_t, const jobs::claim_request&) { hold.pass(); };
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    client.enqueue_blocking("long", std::string("a"));
    REQUIRE(r.wait_for("started a", 20s));

    hold.arm();
    REQUIRE(hold.entered_within(20s));
    auto stop = std::async(std::launch::async, [&] { host.stop_blocking(); });
    const bool told = r.wait_for("stopped a", 20s);
    hold.release(); // whatever happened, let the claim and the stop end
    CHECK(told);
    stop.wait();
    CHECK(host.exit_code() == 0);
    CHECK(store->inner.counts()[job_state::running] == 0);
}

TEST_CASE("jobs: readiness fails while a SQLite file's disk is full, and jobs run again once it has room",
          "[jobs][health]")
{
    // Reads pass on a full disk: readiness must not take a count for health.
    fault_vfs::install();
    temp_db db;
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    jobs::add_jobs(builder, std::make_shared<jobs::sqlite_storage>(db.path.string()), quick_server())
        .register_kind<int>("count", [&](int n, jobs::job_context&) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            r.add("ran " + std::to_string(n));
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    auto status = [&] { return jobs_storage_health(host); };
    host.start_blocking();
    client.enqueue_blocking("count", 1);
    REQUIRE(r.wait_for("ran 1"));
    CHECK(status().status == hosting::health_status::healthy);

    fault_vfs::arm(1, fault_vfs::mode::disk_full);
    CHECK_THROWS_AS(client.enqueue_blocking("count", 2), jobs::storage_error);
    // The next heartbeat's announce fails too, whatever was written last.
    REQUIRE(test::eventually([&] { return status().status == hosting::health_status::unhealthy; }));
    CHECK(status().description.find("full") != std::string::npos);
    REQUIRE(fault_vfs::injected() > 0);

    fault_vfs::disarm();
    REQUIRE(test::eventually([&] { return status().status == hosting::health_status::healthy; }));
    client.enqueue_blocking("count", 3);
    REQUIRE(r.wait_for("ran 3"));
    CHECK_FALSE(r.contains("ran 2"));
    host.stop_blocking();
    CHECK(jobs::sqlite_storage(db.path.string()).counts()[job_state::succeeded] == 2);
}

TEST_CASE("jobs: a node draining quick jobs waits for room before each transaction, and each carries many jobs",
          "[jobs][server]")
{
    // Jobs of 2 ms: the node claims about ten per worker ahead. Without the
    // wait, each completion would send a transaction claiming the one or
    // two jobs that ended since the previous one.
    auto store = std::make_shared<failing_storage>();
    std::mutex mutex;
    std::size_t calls = 0, small = 0, completed = 0;
    store->on_claim = [&](std::size_t done, const jobs::claim_request& claim) {
        std::lock_guard lock(mutex);
        ++calls;
        small += claim.total > 0 && claim.total <= 3;
        completed += done;
    };
    constexpr int jobs_count = 400;
    std::vector<jobs::enqueue_request> batch(jobs_count, request("quick", "0"));
    store->enqueue(batch, jobs::clock::now());
    auto options = quick_server();
    options.workers = 2;
    options.prefetch = 64;
    std::atomic<int> ran{0};
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("quick", [&](int, jobs::job_context& context) -> asio::awaitable<void> {
            co_await hosting::delay(std::chrono::milliseconds(2), context.stop_token());
            ++ran;
        });
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(test::eventually([&] { return store->counts()[job_state::succeeded] == jobs_count; }, 60s));
    host.stop_blocking();
    std::lock_guard lock(mutex);
    INFO(calls << " transactions, " << small << " of them claims of 1 to 3 jobs, " << completed << " completions");
    CHECK(ran == jobs_count);
    CHECK(completed == jobs_count);
    // The first claim is for one job per worker (nothing says yet that
    // the jobs are quick); the others are for three quarters of what the
    // node holds ahead or more.
    CHECK(small <= 3);
    CHECK(calls < jobs_count / 4);
}

namespace {
// A started host of `workers` with a "quick" kind and a "long" one whose
// runs last `long_run`, that has run twenty quick jobs: it claims ahead.
hosting::host quick_learned_host(const std::shared_ptr<jobs::storage>& store, std::size_t prefetch,
                                 std::chrono::milliseconds long_run, test::recorder& r, std::size_t workers = 2)
{
    auto options = quick_server();
    options.workers = workers;
    options.prefetch = prefetch;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, store, options)
        .register_kind<int>("quick",
                            [&r](int, jobs::job_context&) -> asio::awaitable<void> {
                                r.add("quick");
                                co_return;
                            })
        .register_kind<int>("long", [&r, long_run](int, jobs::job_context& context) -> asio::awaitable<void> {
            r.add("long");
            co_await hosting::delay(long_run, context.stop_token());
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    for (int i = 0; i < 20; ++i)
        client.enqueue_blocking("quick", i);
    REQUIRE(r.wait_for_count(20));
    return host;
}
} // namespace

TEST_CASE("jobs: a node whose quick jobs wait behind two long runs holds at most twice its prefetch",
          "[jobs][server]")
{
    // The node has seen only quick runs and slow transactions, so it
    // counts the jobs it holds as run before any claim returns; but two
    // long runs take both workers. The claims must not go on taking a full
    // buffer each while the jobs pile up here, where no other node can run
    // them.
    auto store = std::make_shared<failing_storage>();
    std::mutex mutex;
    std::int64_t most = 0;
    std::size_t empty = 0;
    store->on_claim = [&](std::size_t done, const jobs::claim_request& claim) {
        // What the node holds as this transaction starts: every job it
        // claimed and has not completed yet.
        const auto held = store->inner.counts()[job_state::running];
        {
            std::lock_guard lock(mutex);
            most = std::max(most, held);
            empty += done == 0 && claim.total == 0;
        }
        // A slow disk's commit.
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    };
    test::recorder r;
    auto host = quick_learned_host(store, 4, std::chrono::milliseconds(300), r);
    {
        std::lock_guard lock(mutex);
        most = 0;
        empty = 0;
    }
    // Claimed first, the two long runs; then 200 quick jobs behind them.
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < 2; ++i) {
        auto slow = request("long", "0");
        slow.priority = -3;
        batch.push_back(slow);
    }
    for (int i = 0; i < 200; ++i)
        batch.push_back(request("quick", "0"));
    store->enqueue(batch, jobs::clock::now());
    host.services().get<jobs::client>().enqueue_blocking("quick", 0); // wakes the node
    REQUIRE(test::eventually([&] { return store->counts()[job_state::succeeded] == 20 + 2 + 201; }, 60s));
    host.stop_blocking();
    std::lock_guard lock(mutex);
    INFO("most held " << most << ", " << empty << " transactions with neither a completion nor room");
    CHECK(most <= 2 * 2 * 4);
    // Nor, once full, send transactions with nothing in them one after
    // another (about one per hold_limit, 100 ms, while the long runs last
    // 300 ms; a loop of them would send one per 5 ms commit).
    CHECK(empty <= 10);
}

TEST_CASE("jobs: a claim takes at most half of max_rows_per_write jobs, whatever workers and prefetch say",
          "[jobs][server]")
{
    // 256 workers with a prefetch of 10,000, once they have seen quick runs,
    // would claim as many jobs as they start within 20 ms: thousands in one
    // transaction (even runs of 1 ms would make 2,500), with their
    // completions in the next.
    auto store = std::make_shared<failing_storage>();
    std::mutex mutex;
    std::size_t most = 0;
    store->on_claim = [&](std::size_t, const jobs::claim_request& claim) {
        // What it may take: a claim with no queues (at the stop) takes none.
        std::size_t queues = 0;
        for (const auto& q : claim.queues)
            queues += q.second;
        std::lock_guard lock(mutex);
        most = std::max(most, std::min(claim.total, queues));
    };
    test::recorder r;
    auto host = quick_learned_host(store, 10'000, std::chrono::milliseconds(1), r, 256);
    host.services().get<jobs::client>().enqueue_blocking("quick", 0); // claimed by a node that has seen quick runs
    REQUIRE(test::eventually([&] { return store->counts()[job_state::succeeded] == 21; }, 30s));
    host.stop_blocking();
    std::lock_guard lock(mutex);
    // What the claims asked for reached the bound: the bound held them, not
    // the 20 ms of work (whatever jobs were there to take).
    CHECK(most == jobs::max_rows_per_write / 2);
}

TEST_CASE("jobs: a node holding quick jobs behind two long runs still records the ones that ended", "[jobs][server]")
{
    auto store = std::make_shared<failing_storage>();
    test::recorder r;
    auto host = quick_learned_host(store, 64, std::chrono::hours(1), r);
    // Claimed at once: one quick job, two that hold both workers, and
    // sixty quick ones left waiting behind them.
    std::vector<jobs::enqueue_request> batch;
    auto first = request("quick", "0");
    first.priority = -3;
    batch.push_back(first);
    for (int i = 0; i < 2; ++i) {
        auto hold = request("long", "0");
        hold.priority = -2;
        batch.push_back(hold);
    }
    for (int i = 0; i < 60; ++i)
        batch.push_back(request("quick", "0"));
    const auto ids = store->enqueue(batch, jobs::clock::now());
    REQUIRE(r.wait_for_count(23));
    // The first job ended: its end reaches the storage, though the node
    // waits for room to claim the rest.
    CHECK(test::eventually([&] { return store->find(ids.at(0).id, false)->state == job_state::succeeded; }));
    host.stop_blocking();
}
