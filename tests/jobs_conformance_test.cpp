// The storage conformance suite: every guarantee of the job system, proven
// the same way for each storage in conformance_storages() (the transitions,
// leases and recovery, fencing of stale completions, uniqueness,
// continuations, recurring compare-and-set, limits, retention), directly
// against the storage and through a host's server. Storage-specific tests
// (SQLite's schema migrations, several processes on one file) are in
// jobs_test.cpp.
#include "jobs_support.hpp"

namespace {
// A continuation of `parent` of a kind no claim in these tests asks for: it
// stays where its parent's fate puts it.
jobs::job_id enqueue_continuation(jobs::storage& store, jobs::job_id parent, jobs::continuation_condition condition,
                                  jobs::time_point at)
{
    auto r = request("then", "{}");
    r.parent_id = parent;
    r.condition = condition;
    return store.enqueue(std::vector<jobs::enqueue_request>{r}, at)[0].id;
}
} // namespace

TEST_CASE("jobs: storages claim, complete, recover and reject invalid transitions", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    const auto r = request("k", "{}", 2);
    auto ids = store->enqueue(std::vector<jobs::enqueue_request>{r, r, r}, t0);
    REQUIRE(ids.size() == 3);

    jobs::claim_request claim{"node-a", {{"default", 2}}, {"k"}, t0 + 10s};
    auto claimed = store->complete_and_claim({}, claim, t0);
    REQUIRE(claimed.size() == 2);
    CHECK(claimed[0].id == ids[0].id);
    CHECK(claimed[0].attempt == 1);
    CHECK(claimed[0].lease_owner == "node-a");
    report_started(*store, "node-a", claimed, t0 + 10s, t0);

    // Node a dies; its lease expires and the jobs come back.
    auto recovered = store->recover_expired(t0 + 11s);
    CHECK(recovered.size() == 2);
    auto j = store->find(ids[0].id);
    REQUIRE(j);
    CHECK(j->state == job_state::available);
    CHECK(j->history.back().reason == "the lease of node node-a expired");

    // Node b claims them; node a's late completion changes nothing.
    jobs::claim_request claim_b{"node-b", {{"default", 3}}, {"k"}, t0 + 30s};
    claimed = store->complete_and_claim({}, claim_b, t0 + 12s);
    CHECK(claimed.size() == 3);
    report_started(*store, "node-b", claimed, t0 + 30s, t0 + 12s);
    // A running job cannot be requeued from outside: it would run twice.
    CHECK_THROWS_AS(store->change_state(ids[1].id, job_state::available, "x", t0 + 12s), jobs::invalid_transition);
    // Nor ended from outside: only its node ends a run.
    CHECK_THROWS_AS(store->change_state(ids[1].id, job_state::succeeded, "x", t0 + 12s), jobs::invalid_transition);
    CHECK_THROWS_AS(store->change_state(ids[1].id, job_state::failed, "x", t0 + 12s), jobs::invalid_transition);
    std::vector<jobs::completion> stale{{ids[0].id, 1, jobs::outcome::succeeded, {}, {}, "late"}};
    store->complete_and_claim(stale, claim, t0 + 13s);
    CHECK(store->find(ids[0].id)->state == job_state::running);
    std::vector<jobs::completion> real{{ids[0].id, 2, jobs::outcome::succeeded, {}, {}, "ok"}};
    jobs::claim_request none{"node-b", {}, {"k"}, t0 + 30s};
    store->complete_and_claim(real, none, t0 + 14s);
    CHECK(store->find(ids[0].id)->state == job_state::succeeded);

    // Attempts used up: a second expired lease fails the job.
    CHECK(store->recover_expired(t0 + 40s).size() == 2);
    CHECK(store->find(ids[1].id)->state == job_state::failed);
    CHECK(store->find(ids[1].id)->last_error == "the lease of node node-b expired");

    CHECK_THROWS_AS(store->change_state(ids[0].id, job_state::cancelled, "x", t0), jobs::invalid_transition);
    CHECK_THROWS_AS(store->change_state(ids[2].id, job_state::available, "x", t0), jobs::invalid_transition);
    CHECK_THROWS_AS(store->change_state(424242, job_state::deleted, "x", t0), jobs::job_not_found);
    CHECK(store->change_state(ids[0].id, job_state::available, "requeue", t0) == job_state::available);
    // Only a claim starts a run: from outside, the job would have no node and no lease.
    CHECK_THROWS_AS(store->change_state(ids[0].id, job_state::running, "x", t0), jobs::invalid_transition);
    CHECK(store->find(ids[0].id)->state == job_state::available);
    CHECK(store->find(ids[0].id)->attempt == 0);
    auto counts = store->counts();
    CHECK(counts[job_state::available] == 2); // ids[0] requeued, ids[2] recovered
    CHECK(counts[job_state::failed] == 1);

    // The whole history, in order, with times.
    auto full = store->find(ids[0].id);
    std::vector<job_state> path;
    for (const auto& h : full->history)
        path.push_back(h.to);
    CHECK(path == std::vector<job_state>{job_state::available, job_state::running, job_state::available,
                                         job_state::running, job_state::succeeded, job_state::available});
}

// The attempt fences a completion as the owner does: a node whose lease
// lapsed and that claimed the job again must not end the new attempt with
// the old one's result, however the batch carries it (storages may send
// plain successes and other outcomes by different statements).
TEST_CASE("jobs: a late completion of an earlier attempt changes nothing, even from the node that holds the next one",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    const auto r = request("k", "{}", 5);
    const auto ids = store->enqueue(std::vector<jobs::enqueue_request>{r, r}, t0);
    jobs::claim_request claim{"node-a", {{"default", 2}}, {"k"}, t0 + 10s};
    auto first = store->complete_and_claim({}, claim, t0);
    REQUIRE(first.size() == 2);
    report_started(*store, "node-a", first, t0 + 10s, t0); // or the recovery would give the attempts back
    REQUIRE(store->recover_expired(t0 + 11s).size() == 2);
    claim.lease_until = t0 + 30s;
    auto second = store->complete_and_claim({}, claim, t0 + 12s);
    REQUIRE(second.size() == 2);
    for (const auto& j : second)
        REQUIRE(j.attempt == 2);
    // The first attempt's results: a success and a failure, in one batch.
    std::vector<jobs::completion> late{{ids[0].id, 1, jobs::outcome::succeeded, {}, {}, "succeeded"},
                                       {ids[1].id, 1, jobs::outcome::failed, {}, "boom", "failed"}};
    jobs::claim_request none{"node-a", {}, {"k"}, t0 + 30s};
    store->complete_and_claim(late, none, t0 + 13s);
    for (const auto& id : ids) {
        const auto j = store->find(id.id);
        REQUIRE(j);
        CHECK(j->state == job_state::running);
        CHECK(j->attempt == 2);
    }
    // The second attempt's own results end it.
    std::vector<jobs::completion> own{{ids[0].id, 2, jobs::outcome::succeeded, {}, {}, "succeeded"},
                                      {ids[1].id, 2, jobs::outcome::failed, {}, "boom", "failed"}};
    store->complete_and_claim(own, none, t0 + 14s);
    CHECK(store->find(ids[0].id)->state == job_state::succeeded);
    CHECK(store->find(ids[1].id)->state == job_state::failed);
}

TEST_CASE("jobs: storages' counts match their rows after every kind of change, those counted by the statements "
          "and those counted by triggers",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto shared = make_storage(which, db);
    auto& store = *shared;
    const auto t0 = jobs::clock::now();
    auto in = [](std::string queue, std::string kind) {
        auto r = request(std::move(kind), "{}", 2);
        r.queue = std::move(queue);
        return r;
    };
    // Plain inserts in a batch, one keyed, one scheduled, one continuation.
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < 6; ++i)
        batch.push_back(in(i % 2 ? "mail" : "default", i % 3 ? "a" : "b"));
    auto keyed = in("default", "a");
    keyed.unique_key = "once";
    batch.push_back(keyed);
    batch.push_back(keyed); // found, not stored
    auto later = in("default", "b");
    later.run_at = t0 + 5s;
    batch.push_back(later);
    const auto ids = store.enqueue(batch, t0);
    auto child = in("mail", "b");
    child.parent_id = ids[0].id;
    store.enqueue(std::vector<jobs::enqueue_request>{child}, t0);

    const jobs::claim_request claim{"n", {{"default", 10}, {"mail", 10}}, {"a", "b"}, t0 + 10s};
    const auto claimed = store.complete_and_claim({}, claim, t0);
    REQUIRE(claimed.size() == 7);
    store.change_state(claimed[1].id, job_state::cancelled, "stop", t0); // running: asked to stop
    std::vector<jobs::completion> done;
    const jobs::outcome outcomes[] = {jobs::outcome::succeeded, jobs::outcome::succeeded, jobs::outcome::retry,
                                      jobs::outcome::failed,    jobs::outcome::snoozed,   jobs::outcome::released};
    for (std::size_t i = 0; i < std::size(outcomes); ++i)
        done.push_back({claimed[i].id, claimed[i].attempt, outcomes[i], t0 + 1s, "e", "r"});
    // The last one claimed is left to expire; the scheduled one comes due.
    store.complete_and_claim(done, {"n", {}, {"a", "b"}, t0 + 10s}, t0 + 6s);
    CHECK(store.recover_expired(t0 + 20s).size() == 1);
    store.change_state(claimed[3].id, job_state::available, "requeue", t0 + 21s);
    store.change_state(claimed[3].id, job_state::deleted, "gone", t0 + 21s);
    CHECK(store.prune(job_state::succeeded, t0 + 1h, 10, t0 + 1h) == 1);
    // And a second round through the same statements.
    const auto again = store.complete_and_claim({}, claim, t0 + 1h);
    REQUIRE_FALSE(again.empty());
    done.clear();
    for (const auto& j : again)
        done.push_back({j.id, j.attempt, jobs::outcome::succeeded, {}, {}, "ok"});
    store.complete_and_claim(done, {"n", {}, {"a", "b"}, t0 + 2h}, t0 + 1h);
    // A claim of one queue (PostgreSQL's shorter path), and its successes.
    store.enqueue(std::vector<jobs::enqueue_request>{in("default", "a"), in("default", "b")}, t0 + 2h);
    const auto one_queue = store.complete_and_claim({}, {"n", {{"default", 5}}, {"a", "b"}, t0 + 3h}, t0 + 2h);
    REQUIRE(one_queue.size() == 2);
    done.clear();
    for (const auto& j : one_queue)
        done.push_back({j.id, j.attempt, jobs::outcome::succeeded, {}, {}, "ok"});
    store.complete_and_claim(done, {"n", {}, {"a", "b"}, t0 + 3h}, t0 + 2h);
    // A continuation its parent's success deletes, and a job cancelled while
    // it ran whose node then died (its recovery ends it cancelled).
    const auto parent = store.enqueue(std::vector<jobs::enqueue_request>{in("mail", "a")}, t0 + 3h).at(0).id;
    auto on_deleted = in("mail", "b");
    on_deleted.parent_id = parent;
    on_deleted.condition = jobs::continuation_condition::on_deleted;
    store.enqueue(std::vector<jobs::enqueue_request>{on_deleted, in("default", "b")}, t0 + 3h);
    const auto last = store.complete_and_claim({}, claim, t0 + 3h);
    REQUIRE(last.size() == 2);
    for (const auto& j : last) {
        if (j.id == parent) {
            const jobs::completion ok{j.id, j.attempt, jobs::outcome::succeeded, {}, {}, "ok"};
            store.complete_and_claim(std::span(&ok, 1), {"n", {}, {}, t0 + 4h}, t0 + 3h);
        } else {
            CHECK(store.change_state(j.id, job_state::cancelled, "stop", t0 + 3h) == job_state::running);
        }
    }
    CHECK(store.recover_expired(t0 + 5h).size() == 1);

    using row = std::tuple<std::string, std::string, job_state, std::int64_t>;
    std::vector<row> counted;
    for (const auto& c : store.counts_by_queue_and_kind())
        counted.emplace_back(c.queue, c.kind, c.state, c.count);
    std::sort(counted.begin(), counted.end());
    // The rows as they are, read one by one.
    std::vector<row> actual;
    {
        std::map<std::tuple<std::string, std::string, job_state>, std::int64_t> rows;
        jobs::job_filter all;
        all.limit = 1000;
        for (const auto& j : store.list(all))
            ++rows[{j.queue, j.kind, j.state}];
        for (const auto& [key, n] : rows)
            actual.emplace_back(std::get<0>(key), std::get<1>(key), std::get<2>(key), n);
    }
    std::sort(actual.begin(), actual.end());
    CHECK(actual.size() >= 6);
    CHECK(counted == actual);
}

TEST_CASE("jobs: a job enqueued beside an idle server is claimed in its enqueue's own transaction",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    std::atomic<int> runs{0};
    // No polls or heartbeats to take the standing claim down meanwhile (on
    // a slow storage they would, often).
    auto options = quick_server();
    options.poll_interval = std::chrono::hours(1);
    options.heartbeat_interval = std::chrono::hours(1);
    options.lease_duration = std::chrono::hours(3);
    jobs::add_jobs(builder, make_storage(which, db), options)
        .register_kind<int>("tick", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            ++runs;
        });
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    // Each waits for the one before to end, so the server is idle when it
    // comes, but for the moments it spends claiming again after the last
    // completion: most, not all, find its claim waiting.
    int together = 0;
    for (int i = 0; i < 20; ++i) {
        const jobs::job_id id = client.enqueue_blocking("tick", i);
        REQUIRE(wait_state(client, id, job_state::succeeded));
        const auto j = client.find_blocking(id);
        REQUIRE(j->history.size() == 3);
        CHECK(j->history[1].to == job_state::running);
        // One transaction, one time: the claim's is the insert's.
        if (j->history[1].at == j->history[0].at)
            ++together;
    }
    host.stop_blocking();
    CHECK(runs == 20);
    CHECK(together >= 10);
}

TEST_CASE("jobs: storages enqueue and claim at once in claim order, the keyed duplicates found and not stored",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    const auto older = store->enqueue(std::vector<jobs::enqueue_request>{request("k", "older")}, t0);
    auto keyed = request("k", "keyed");
    keyed.unique_key = "once";
    const jobs::claim_request one{"node-a", {{"default", 1}}, {"k"}, t0 + 10s};
    auto both = store->enqueue_and_claim(std::vector<jobs::enqueue_request>{request("k", "new"), keyed, keyed}, one,
                                         t0 + 1s);
    REQUIRE(both.enqueued.size() == 3);
    CHECK(both.enqueued[0].created);
    CHECK(both.enqueued[1].created);
    CHECK_FALSE(both.enqueued[2].created);
    CHECK(both.enqueued[2].id == both.enqueued[1].id);
    // The claim is any claim: the job waiting longest goes first.
    REQUIRE(both.claimed.size() == 1);
    CHECK(both.claimed[0].id == older[0].id);
    CHECK(both.claimed[0].state == job_state::running);
    CHECK(both.claimed[0].lease_owner == "node-a");
    const jobs::claim_request three{"node-a", {{"default", 3}}, {"k"}, t0 + 10s};
    both = store->enqueue_and_claim(std::vector<jobs::enqueue_request>{keyed}, three, t0 + 2s);
    CHECK_FALSE(both.enqueued.at(0).created);
    REQUIRE(both.claimed.size() == 2);
    CHECK(both.claimed[0].args == "new");
    CHECK(both.claimed[1].args == "keyed");
    CHECK(store->counts()[job_state::running] == 3);
    CHECK(store->counts()[job_state::available] == 0);
}

TEST_CASE("jobs: unique keys hold under concurrent enqueue", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto registration = jobs::add_jobs(builder, store, quick_server());
    jobs::kind_options digest;
    digest.unique_key = jobs::kind_options::unique_by_arguments();
    registration.register_kind<std::string>(
        "digest", [](std::string, jobs::job_context&) -> asio::awaitable<void> { co_return; }, digest);
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();

    std::vector<std::thread> threads;
    std::mutex mutex;
    std::set<jobs::job_id> seen;
    for (int t = 0; t < 8; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 25; ++i) {
                jobs::job_options o;
                o.unique_key = "report:2026-11-25";
                auto id = client.enqueue_blocking("report", std::string("daily"), o);
                std::lock_guard lock(mutex);
                seen.insert(id);
            }
        });
    for (auto& t : threads)
        t.join();
    CHECK(seen.size() == 1);
    CHECK(client.counts_blocking()[job_state::available] == 1);
    // Once the job is final, the key is free again.
    client.cancel_blocking(*seen.begin());
    jobs::job_options o;
    o.unique_key = "report:2026-11-25";
    CHECK(client.enqueue_blocking("report", std::string("daily"), o) != *seen.begin());
    // A kind's own rule: equal arguments make one job.
    const auto a1 = client.enqueue_blocking("digest", std::string("user-7"));
    CHECK(client.enqueue_blocking("digest", std::string("user-7")) == a1);
    CHECK(client.enqueue_blocking("digest", std::string("user-8")) != a1);
    CHECK(client.find_blocking(a1)->unique_key == "digest:\"user-7\"");
    // A key that lets go in a pending state is refused at once.
    o.unique_states = {job_state::available};
    CHECK_THROWS_WITH(client.enqueue_blocking("report", std::string("daily"), o),
                      Catch::Contains("unique_states must include every state that is not final"));
}

TEST_CASE("jobs: a unique key is compared within its kind unless asked across kinds, and the caller learns "
          "whether its job was created",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    jobs::add_jobs(builder, store, quick_server());
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();

    jobs::job_options keyed;
    keyed.unique_key = "invoice-7";
    const auto a = client.enqueue_blocking("a", std::string("1"), keyed);
    CHECK(a.created);
    const auto again = client.enqueue_blocking("a", std::string("2"), keyed);
    CHECK_FALSE(again.created);
    CHECK(again.id == a.id);
    // Another kind with the same key is another job.
    const auto b = client.enqueue_blocking("b", std::string("1"), keyed);
    CHECK(b.created);
    CHECK(b.id != a.id);
    CHECK(client.find_blocking(b.id)->unique_key == "invoice-7");
    // Across kinds, when asked: one job for every kind that asks so.
    jobs::job_options shared = keyed;
    shared.unique_across_kinds = true;
    const auto c = client.enqueue_blocking("c", std::string("1"), shared);
    CHECK(c.created);
    const auto d = client.enqueue_blocking("d", std::string("1"), shared);
    CHECK_FALSE(d.created);
    CHECK(d.id == c.id);
    // The awaiting forms tell the same. (Arguments named before the
    // co_await: see docs/gcc12.md.)
    const std::string three = "3";
    jobs::enqueued first, second;
    asio::io_context io;
    std::exception_ptr failure;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            first = co_await client.schedule("a", three, std::chrono::milliseconds(3'600'000), keyed);
            second = co_await client.enqueue("e", three, keyed);
        },
        [&](std::exception_ptr e) { failure = e; });
    io.run();
    REQUIRE_FALSE(failure);
    CHECK_FALSE(first.created);
    CHECK(first.id == a.id);
    CHECK(second.created);
    CHECK(client.counts_blocking()[job_state::available] == 4); // a, b, c, e
}

TEST_CASE("jobs: a requeue is refused and a delete goes ahead when another job has taken the unique key",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    auto keyed = [](std::string key, jobs::state_set states) {
        auto r = request("k", "{}");
        r.unique_key = std::move(key);
        r.unique_states = states;
        return r;
    };
    // Deleted jobs hold this one's key too.
    const jobs::state_set with_deleted{job_state::scheduled, job_state::available, job_state::awaiting,
                                       job_state::running,   job_state::retryable, job_state::deleted};
    const auto first = store->enqueue(
        std::vector<jobs::enqueue_request>{keyed("report", jobs::default_unique_states), keyed("export", with_deleted)},
        t0);
    REQUIRE(store->complete_and_claim({}, {"n", {{"default", 2}}, {"k"}, t0 + 60s}, t0).size() == 2);
    std::vector<jobs::completion> ok{{first[0].id, 1, jobs::outcome::succeeded, {}, {}, "ok"},
                                     {first[1].id, 1, jobs::outcome::succeeded, {}, {}, "ok"}};
    store->complete_and_claim(ok, {"n", {}, {"k"}, t0 + 60s}, t0 + 1s);
    // Both ended, which freed their keys, and new jobs took them.
    const auto second = store->enqueue(
        std::vector<jobs::enqueue_request>{keyed("report", jobs::default_unique_states), keyed("export", with_deleted)},
        t0 + 2s);
    REQUIRE(second[0].created);
    REQUIRE(second[1].created);

    // A requeue would make two pending jobs of one key: refused, naming the
    // holder, and the job is left as it was.
    auto requeue = [&](jobs::job_id id) { return store->change_state(id, job_state::available, "requeued", t0 + 3s); };
    CHECK_THROWS_AS(requeue(first[0].id), jobs::invalid_transition);
    CHECK_THROWS_WITH(requeue(first[0].id), "jobs: job " + std::to_string(first[0].id) +
                                                " cannot go from succeeded to available: job " +
                                                std::to_string(second[0].id) + " holds its unique key 'report'");
    auto j = store->find(first[0].id);
    CHECK(j->state == job_state::succeeded);
    CHECK(j->attempt == 1);
    CHECK(j->history.size() == 3);

    // A delete whose deleted state would hold the key another job holds
    // goes ahead, without the key: the holder keeps it.
    CHECK(store->change_state(first[1].id, job_state::deleted, "deleted by a client", t0 + 4s) == job_state::deleted);
    CHECK(store->find(first[1].id)->state == job_state::deleted);
    CHECK(store->enqueue(std::vector<jobs::enqueue_request>{keyed("export", with_deleted)}, t0 + 5s)[0].id ==
          second[1].id);
    CHECK_THROWS_AS(requeue(first[1].id), jobs::invalid_transition);

    // Once the holder has ended and let the key go, the requeue goes through
    // and takes it.
    const auto claimed = store->complete_and_claim({}, {"n", {{"default", 1}}, {"k"}, t0 + 60s}, t0 + 6s);
    REQUIRE(claimed.size() == 1);
    REQUIRE(claimed[0].id == second[0].id);
    std::vector<jobs::completion> done{{second[0].id, 1, jobs::outcome::succeeded, {}, {}, "ok"}};
    store->complete_and_claim(done, {"n", {}, {"k"}, t0 + 60s}, t0 + 7s);
    CHECK(requeue(first[0].id) == job_state::available);
    const auto again = store->enqueue(std::vector<jobs::enqueue_request>{keyed("report", jobs::default_unique_states)},
                                      t0 + 8s)[0];
    CHECK_FALSE(again.created);
    CHECK(again.id == first[0].id);
}

TEST_CASE("jobs: a server runs jobs, retries with backoff on an injected clock, and fails them for good",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto clock = std::make_shared<jobs::manual_time_source>(jobs::clock::now());
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    std::atomic<int> sum{0};
    jobs::kind_options flaky_options;
    flaky_options.retry.max_attempts = 3;
    auto jobs_reg = jobs::add_jobs(builder, make_storage(which, db), quick_server(clock));
    jobs_reg
        .register_kind<add_args>("add",
                                 [&](add_args args, jobs::job_context&) -> asio::awaitable<void> {
                                     sum += args.a + args.b;
                                     r.add("added");
                                     co_return;
                                 })
        .register_kind<std::string>(
            "flaky",
            [&](std::string, jobs::job_context& context) -> asio::awaitable<void> {
                r.add("attempt " + std::to_string(context.attempt()));
                co_await asio::this_coro::executor;
                throw std::runtime_error("remote said no");
            },
            flaky_options);
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();

    auto id = client.enqueue_blocking("add", add_args{2, 3});
    REQUIRE(r.wait_for("added"));
    REQUIRE(wait_state(client, id, job_state::succeeded));
    CHECK(sum.load() == 5);
    CHECK(client.find_blocking(id)->args == R"({"a":2,"b":3})");

    auto flaky = client.enqueue_blocking("flaky", std::string("x"));
    for (int attempt = 1; attempt <= 2; ++attempt) {
        REQUIRE(r.wait_for("attempt " + std::to_string(attempt)));
        REQUIRE(wait_state(client, flaky, job_state::retryable));
        auto j = client.find_blocking(flaky);
        // (attempt - 1)^4 + 15 s, plus up to 10 * attempt s of jitter.
        const auto wait = j->run_at - clock->now();
        const int n = attempt - 1;
        const auto base = std::chrono::seconds(n * n * n * n + 15);
        CHECK(wait >= base);
        CHECK(wait <= base + std::chrono::seconds(10 * attempt));
        CHECK(j->last_error == "remote said no");
        CHECK_FALSE(r.contains("attempt " + std::to_string(attempt + 1)));
        clock->advance(wait);
    }
    REQUIRE(r.wait_for("attempt 3"));
    REQUIRE(wait_state(client, flaky, job_state::failed));
    auto failed = client.find_blocking(flaky);
    CHECK(failed->attempt == 3);
    CHECK(failed->history.back().reason == "attempt 3 of 3 failed; no attempts left");
    CHECK(failed->history.back().error == "remote said no");

    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("jobs: a node claims ahead only jobs that finish quickly, and never more than prefetch", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    const std::size_t prefetch = GENERATE(std::size_t{1}, std::size_t{64});
    INFO("prefetch " << prefetch);
    auto store = make_storage(which, db);
    auto options = quick_server();
    options.workers = 2;
    options.prefetch = prefetch;
    // A host whose "hold" jobs run until stopped and "quick" ones at once.
    auto make_host = [&](test::recorder& r) {
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        jobs::add_jobs(builder, store, options)
            .register_kind<int>("hold",
                                [&r](int, jobs::job_context& context) -> asio::awaitable<void> {
                                    r.add("started");
                                    co_await hosting::delay(std::chrono::hours(1), context.stop_token());
                                })
            .register_kind<int>("quick", [&r](int, jobs::job_context&) -> asio::awaitable<void> {
                r.add("quick");
                co_return;
            });
        return builder.build();
    };
    test::recorder r;
    auto host = make_host(r);
    auto& client = host.services().get<jobs::client>();
    for (int i = 0; i < 10; ++i)
        client.enqueue_blocking("hold", i);
    host.start_blocking();
    REQUIRE(r.wait_for_count(2));
    // Nothing has finished yet, so nothing says the work is quick: the node
    // claims for its free workers only, and leaves the rest to other nodes.
    CHECK(store->counts()[job_state::running] == 2);
    CHECK(store->counts()[job_state::available] == 8);
    host.stop_blocking();
    CHECK(store->counts()[job_state::available] == 10);

    // After quick runs, a node with prefetch claims ahead: up to prefetch per
    // worker (here all 10), so that a drain commits many jobs at a time. How
    // far ahead depends on how quick the runs were measured, which a busy
    // machine stretches: more than its free workers, then.
    test::recorder r2;
    auto again = make_host(r2);
    auto& again_client = again.services().get<jobs::client>();
    jobs::job_options first;
    first.priority = -1; // ahead of the holds
    for (int i = 0; i < 20; ++i)
        again_client.enqueue_blocking("quick", i, first);
    again.start_blocking();
    REQUIRE(r2.wait_for_count(22));
    CHECK(r2.count("quick") == 20);
    // Once the quick ones are recorded, what runs is holds only.
    REQUIRE(test::eventually([&] { return store->counts()[job_state::succeeded] == 20; }));
    if (prefetch == 1)
        CHECK(test::eventually([&] { return store->counts()[job_state::running] == 2; }));
    else
        CHECK(test::eventually([&] { return store->counts()[job_state::running] > 2; }));
    again.stop_blocking();
}

TEST_CASE("jobs: a node whose renewal finds a lease gone stops the handler and records nothing of the run",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    auto options = quick_server();
    // One worker, claiming nothing ahead: while the run goes on this node
    // has no room, so only node-b can take the job back.
    options.workers = 1;
    options.prefetch = 1;
    jobs::add_jobs(builder, store, options).register_kind<std::string>("hold", until_stopped(r));
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    auto id = client.enqueue_blocking("hold", std::string("a"));
    REQUIRE(r.wait_for("started a"));
    // What happens when this process stalls past its lease (SIGSTOP, a
    // storage locked by another process): another node recovers the job and
    // claims it.
    // Whole microseconds, as SQLite keeps them.
    const auto now = std::chrono::floor<std::chrono::microseconds>(jobs::clock::now());
    REQUIRE(store->recover_expired(now + 1h) == std::vector<jobs::job_id>{id});
    const auto taken = store->complete_and_claim({}, {"node-b", {{"default", 1}}, {"hold"}, now + 1h}, now);
    REQUIRE(taken.size() == 1);
    REQUIRE(taken[0].id == id);
    // The next renewal finds it gone: the handler is stopped, and its end
    // changes nothing in storage.
    REQUIRE(r.wait_for("stopped a"));
    REQUIRE(sink->wait_for("lost its lease while it ran here"));
    REQUIRE(sink->wait_for("its end is not recorded here"));
    // Nor counted: it neither succeeded nor failed here.
    CHECK(host.services().get<hosting::metrics_registry>().render().find("hosting_jobs_completed_total{kind=\"hold\"") ==
          std::string::npos);
    auto j = store->find(id);
    CHECK(j->state == job_state::running);
    CHECK(j->lease_owner == "node-b");
    CHECK(j->attempt == taken[0].attempt);
    // This node renews only what it holds: node-b's lease is not extended
    // by it (before, renewals went by owner and then by nothing at all).
    CHECK(j->lease_expires == now + 1h);
    host.stop_blocking();
    CHECK(r.count("started a") == 1);
    CHECK(store->find(id)->state == job_state::running);
}

// A deaf job on a node of two workers: its run is lost to node-b and goes
// on (deaf), node-b dies, and this node claims the job again, which waits
// in the buffer behind the lost run.
struct claimed_behind_lost_run {
    std::shared_ptr<jobs::storage> store;
    std::shared_ptr<test::capture_sink> sink = std::make_shared<test::capture_sink>();
    test::recorder r;
    std::stop_source gate;
    std::optional<hosting::host> host;
    jobs::client* client = nullptr;
    jobs::job_id id = 0;
    jobs::time_point t0;

    explicit claimed_behind_lost_run(std::shared_ptr<jobs::storage> s) : store(std::move(s))
    {
        auto builder = test::make_builder(sink);
        auto options = quick_server();
        options.workers = 2;
        options.prefetch = 1;
        jobs::add_jobs(builder, store, options).register_kind<int>("deaf", deaf_until(r, gate));
        host.emplace(builder.build());
        host->start_blocking();
        client = &host->services().get<jobs::client>();
        id = client->enqueue_blocking("deaf", 1).id;
        REQUIRE(r.wait_for("started"));
        t0 = jobs::clock::now();
        // (This node has a free worker and may take the job back first;
        // then node-b takes it from that claim, which waits behind the run.)
        REQUIRE(test::eventually([&] {
            store->recover_expired(t0 + 1h);
            return !store->complete_and_claim({}, {"node-b", {{"default", 1}}, {"deaf"}, t0 + 1h + 10s}, t0 + 1h)
                        .empty();
        }));
        REQUIRE(sink->wait_for("lost its lease while it ran here"));
        REQUIRE(store->recover_expired(t0 + 2h).size() == 1);
        REQUIRE(test::eventually([&] { return store->find(id)->lease_owner == "test-node"; }));
    }
    std::size_t lines_with(const std::string& text)
    {
        std::size_t n = 0;
        for (const auto& line : sink->lines())
            n += line.text.find(text) != std::string::npos;
        return n;
    }
};

TEST_CASE("jobs: a job claimed again behind its own lost run is dropped when that claim is lost too",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    claimed_behind_lost_run c(make_storage(which, db));
    // Lost again, to node-c, before the lost run ends. (Should a renewal
    // find its claim gone before node-c takes the job, this node may take
    // it back first: then node-c takes it from that claim.)
    // Each claim of this node's recovered here is dropped by it.
    const auto dropped = c.lines_with("lost its lease before it started here");
    std::size_t recovered = 0;
    REQUIRE(test::eventually([&] {
        recovered += c.store->recover_expired(c.t0 + 3h).size();
        return !c.store->complete_and_claim({}, {"node-c", {{"default", 1}}, {"deaf"}, c.t0 + 3h + 10s}, c.t0 + 3h)
                    .empty();
    }));
    REQUIRE(recovered >= 1);
    REQUIRE(test::eventually(
        [&] { return c.lines_with("lost its lease before it started here") >= dropped + recovered; }));
    c.gate.request_stop();
    REQUIRE(c.r.wait_for("ended"));
    REQUIRE(c.sink->wait_for("its end is not recorded here"));
    c.host->stop_blocking();
    CHECK(c.r.count("started") == 1); // never started again without its lease
    CHECK(c.store->find(c.id)->lease_owner == "node-c");
}

TEST_CASE("jobs: a cancel of a job claimed again behind its own lost run reaches that claim", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    claimed_behind_lost_run c(make_storage(which, db));
    c.client->cancel_blocking(c.id);
    // The claim waiting behind the lost run is dropped: it never starts.
    REQUIRE(test::eventually([&] { return c.store->find(c.id)->state == job_state::cancelled; }));
    c.gate.request_stop();
    REQUIRE(c.r.wait_for("ended"));
    c.host->stop_blocking();
    CHECK(c.r.count("started") == 1);
    CHECK(c.store->find(c.id)->state == job_state::cancelled);
}

TEST_CASE("jobs: a handler that outlives the shutdown grace keeps its lease until the process ends",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    test::recorder r;
    std::stop_source never; // the gate stays shut
    jobs::job_id id = 0;
    {
        auto builder = test::make_builder(sink);
        auto options = quick_server();
        options.shutdown_grace = 100ms;
        jobs::add_jobs(builder, store, options).register_kind<int>("stubborn", deaf_until(r, never));
        auto host = builder.build();
        host.start_blocking();
        id = host.services().get<jobs::client>().enqueue_blocking("stubborn", 1);
        REQUIRE(r.wait_for("started"));
        host.stop_blocking();
        CHECK(sink->has("1 jobs did not stop within the shutdown grace; they keep their leases"));
        // Renewed after the stop: never available to another node while
        // its handler may still run here.
        const auto stopped = jobs::clock::now();
        CHECK(test::eventually([&] { return store->find(id)->lease_expires > stopped + options.lease_duration; }));
        CHECK(store->recover_expired(jobs::clock::now()).empty());
        CHECK(store->find(id)->state == job_state::running);
    }
    // The host is gone (as with the process): nothing renews the lease, and
    // another node recovers the job once it runs out.
    CHECK(store->recover_expired(jobs::clock::now() + 1h) == std::vector<jobs::job_id>{id});
    CHECK(store->find(id)->state == job_state::available);
}

TEST_CASE("jobs: a handler that outlives the shutdown grace and then ends has its end recorded",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    test::recorder r;
    std::stop_source gate;
    // On the program's own io_context, which runs on after the host stops,
    // as an embedded host's does.
    asio::io_context io;
    auto guard = asio::make_work_guard(io);
    std::jthread runner([&] { io.run(); });
    auto builder = test::make_builder(sink);
    builder.use_io_context(io);
    auto options = quick_server();
    options.shutdown_grace = 100ms;
    jobs::add_jobs(builder, store, options).register_kind<int>("stubborn", deaf_until(r, gate));
    {
        auto host = builder.build();
        host.start_blocking();
        const auto id = host.services().get<jobs::client>().enqueue_blocking("stubborn", 1);
        REQUIRE(r.wait_for("started"));
        host.stop_blocking();
        CHECK(store->find(id)->state == job_state::running);
        gate.request_stop();
        REQUIRE(r.wait_for("ended"));
        // Sent on its own, after the server stopped: the job succeeded, and
        // nothing holds it any more.
        CHECK(test::eventually([&] { return store->find(id)->state == job_state::succeeded; }));
        CHECK(store->find(id)->attempt == 1);
        guard.reset();
    }
    runner.join();
}

TEST_CASE("jobs: storages renew only the leases a node names, and say which it lost", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = std::chrono::floor<std::chrono::microseconds>(jobs::clock::now()); // as SQLite keeps it
    auto ids = store->enqueue(std::vector<jobs::enqueue_request>{request("k", "1", 3), request("k", "2", 3),
                                                                  request("k", "3", 3), request("k", "4", 3)},
                              t0);
    jobs::claim_request a{"node-a", {{"default", 4}}, {"k"}, t0 + 10s};
    REQUIRE(store->complete_and_claim({}, a, t0).size() == 4);
    // All four are taken back (the node's id started again; 1 ends
    // cancelled); node-a claims 2 again, node-b claims 3, 4 stays available.
    CHECK(store->change_state(ids[0].id, job_state::cancelled, "x", t0) == job_state::running);
    REQUIRE(store->recover_node("node-a", t0 + 1s).size() == 4);
    jobs::claim_request b{"node-b", {{"default", 1}}, {"k"}, t0 + 10s};
    auto again = store->complete_and_claim({}, {"node-a", {{"default", 1}}, {"k"}, t0 + 10s}, t0 + 1s);
    REQUIRE(again.size() == 1);
    const auto b_took = store->complete_and_claim({}, b, t0 + 1s);
    REQUIRE(b_took.size() == 1);
    const jobs::held_lease held[] = {{again[0].id, again[0].attempt},        // still node-a's
                                     {b_took[0].id, b_took[0].attempt - 1},  // node-b's now
                                     {ids[3].id, 1},                         // available again
                                     {again[0].id + 1000, 1}};               // no such job
    const auto found = store->renew_leases("node-a", held, t0 + 20s, t0 + 2s);
    CHECK(found.cancel_requested.empty());
    CHECK(std::set<jobs::job_id>(found.lost.begin(), found.lost.end()) ==
          std::set<jobs::job_id>{b_took[0].id, ids[3].id, again[0].id + 1000});
    CHECK(store->find(again[0].id)->lease_expires == t0 + 20s);
    CHECK(store->find(b_took[0].id)->lease_expires == t0 + 10s); // node-b's, untouched
    // A stale attempt is lost even under the right owner.
    const jobs::held_lease stale[] = {{again[0].id, again[0].attempt - 1}};
    CHECK(store->renew_leases("node-a", stale, t0 + 30s, t0 + 3s).lost == std::vector<jobs::job_id>{again[0].id});
    CHECK(store->find(again[0].id)->lease_expires == t0 + 20s);
}

TEST_CASE("jobs: a job that outlives its lease is not handed to another worker while its node lives",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    // Leases of 1 s, renewed every 100 ms; the job takes 2.5 leases.
    jobs::add_jobs(builder, make_storage(which, db), quick_server())
        .register_kind<int>("long", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            r.add("started");
            co_await hosting::delay(2500ms);
        });
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    auto id = client.enqueue_blocking("long", 1);
    REQUIRE(wait_state(client, id, job_state::succeeded));
    CHECK(r.count("started") == 1);
    CHECK(client.find_blocking(id)->attempt == 1);
    host.stop_blocking();
}

TEST_CASE("jobs: a dead node charges only the jobs it reported started, and an unstarted claim's attempt comes back "
          "once",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    // max_attempts 1: before, one crash failed every job its node had
    // claimed, run or not.
    auto ids = store->enqueue(std::vector<jobs::enqueue_request>{request("k", "1", 1), request("k", "2", 1)}, t0);
    jobs::claim_request a{"node-a", {{"default", 2}}, {"k"}, t0 + 10s};
    const auto claimed = store->complete_and_claim({}, a, t0);
    REQUIRE(claimed.size() == 2);
    // Job 1 started and its node said so; job 2 waited in the node's buffer.
    const jobs::held_lease held[] = {{ids[0].id, 1, true}, {ids[1].id, 1, false}};
    REQUIRE(store->renew_leases("node-a", held, t0 + 10s, t0 + 1s).lost.empty());
    CHECK(store->recover_expired(t0 + 11s).size() == 2);
    CHECK(store->find(ids[0].id)->state == job_state::failed); // it ran, and its node died under it
    auto unstarted = store->find(ids[1].id);
    CHECK(unstarted->state == job_state::available);
    CHECK(unstarted->attempt == 0);

    // Once in a job's life: a job that kills its node as it starts, before
    // a renewal can report it, still runs out of attempts.
    const auto again = store->complete_and_claim({}, {"node-b", {{"default", 1}}, {"k"}, t0 + 20s}, t0 + 12s);
    REQUIRE(again.size() == 1);
    CHECK(again[0].id == ids[1].id);
    CHECK(again[0].attempt == 1);
    CHECK(store->recover_expired(t0 + 21s).size() == 1);
    CHECK(store->find(ids[1].id)->state == job_state::failed);
}

TEST_CASE("jobs: storages recover what a node id held when it starts again, and nothing else", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    auto ids = store->enqueue(std::vector<jobs::enqueue_request>{request("k", "1", 3), request("k", "2", 1),
                                                                  request("k", "3", 3), request("k", "4", 3)},
                              t0);
    jobs::claim_request pod{"pod-0", {{"default", 3}}, {"k"}, t0 + 1h};
    const auto held = store->complete_and_claim({}, pod, t0);
    REQUIRE(held.size() == 3);
    report_started(*store, "pod-0", held, t0 + 1h, t0);
    jobs::claim_request other{"pod-1", {{"default", 1}}, {"k"}, t0 + 1h};
    REQUIRE(store->complete_and_claim({}, other, t0).size() == 1);
    CHECK(store->change_state(ids[2].id, job_state::cancelled, "x", t0 + 1s) == job_state::running);

    // pod-0 starts again long before its leases would expire.
    const auto recovered = store->recover_node("pod-0", t0 + 2s);
    CHECK(std::set<jobs::job_id>(recovered.begin(), recovered.end()) ==
          std::set<jobs::job_id>{ids[0].id, ids[1].id, ids[2].id});
    auto plain = store->find(ids[0].id);
    CHECK(plain->state == job_state::available);
    CHECK(plain->attempt == 1); // charged, as a crash charges it
    CHECK(plain->lease_owner.empty());
    CHECK(plain->history.back().reason == "node pod-0 started again");
    CHECK(store->find(ids[1].id)->state == job_state::failed); // that was its last attempt
    CHECK(store->find(ids[1].id)->last_error == "node pod-0 started again");
    CHECK(store->find(ids[2].id)->state == job_state::cancelled);
    CHECK(store->find(ids[2].id)->history.back().reason == "node pod-0 started again while a cancel was pending");
    // Another node's job stays where it is, and nothing is left to recover.
    CHECK(store->find(ids[3].id)->state == job_state::running);
    CHECK(store->find(ids[3].id)->lease_owner == "pod-1");
    CHECK(store->recover_node("pod-0", t0 + 3s).empty());
    // The node claims afresh.
    const auto again = store->complete_and_claim({}, pod, t0 + 3s);
    REQUIRE(again.size() == 1);
    CHECK(again[0].id == ids[0].id);
    CHECK(again[0].attempt == 2);
}

TEST_CASE("jobs: a server that starts under a fixed node id takes back the jobs its last process held",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    // The last process of node test-node (quick_server's id) claimed two jobs
    // and died (kill -9, a rescheduled pod): their leases run an hour more. A
    // third job is another live node's.
    const auto ids = store->enqueue(
        std::vector<jobs::enqueue_request>{request("work", "1", 3), request("work", "2", 3), request("work", "3", 3)},
        t0);
    const auto held = store->complete_and_claim({}, {"test-node", {{"default", 2}}, {"work"}, t0 + 1h}, t0);
    REQUIRE(held.size() == 2);
    report_started(*store, "test-node", held, t0 + 1h, t0);
    REQUIRE(store->complete_and_claim({}, {"other-node", {{"default", 1}}, {"work"}, t0 + 1h}, t0).size() == 1);

    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    jobs::add_jobs(builder, store, quick_server())
        .register_kind<int>("work", [&](int n, jobs::job_context& context) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            r.add("ran " + std::to_string(n) + " attempt " + std::to_string(context.attempt()));
        });
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    REQUIRE(wait_state(client, ids[0].id, job_state::succeeded));
    REQUIRE(wait_state(client, ids[1].id, job_state::succeeded));
    CHECK(sink->wait_for("Node test-node started again: 2 jobs its previous process held were recovered"));
    // The dead process's attempt counts, as any crash's does.
    CHECK(r.count("ran 1 attempt 2") == 1);
    CHECK(r.count("ran 2 attempt 2") == 1);
    // Another node's job is not this one's to take.
    CHECK(client.find_blocking(ids[2].id)->state == job_state::running);
    CHECK(client.find_blocking(ids[2].id)->lease_owner == "other-node");
    host.stop_blocking();
}

TEST_CASE("jobs: timeout and cancel also reach a handler through Asio cancellation", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::kind_options once;
    once.retry.max_attempts = 1;
    // Ignores its stop token: only the cancellation of what it awaits ends it.
    jobs::add_jobs(builder, make_storage(which, db), quick_server())
        .register_kind<std::string>(
            "timer",
            [&](std::string name, jobs::job_context&) -> asio::awaitable<void> {
                auto executor = co_await asio::this_coro::executor;
                asio::steady_timer timer(executor, std::chrono::hours(1));
                r.add("started " + name);
                try {
                    co_await timer.async_wait(asio::use_awaitable);
                } catch (const boost::system::system_error&) {
                    r.add("cancelled " + name);
                    throw;
                }
            },
            once);
    auto host = builder.build();
    host.start_blocking();
    expect_timeout_and_cancel(host.services().get<jobs::client>(), r, "timer", "cancelled");
    host.stop_blocking();
}

TEST_CASE("jobs: earlier queues and lower priorities run first, and the state gauge counts jobs", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    options.workers = 1;
    options.prefetch = 1; // one claim per job: the order is the claims'
    options.queues = {{"urgent", 0}, {"bulk", 0}};
    jobs::add_jobs(builder, make_storage(which, db), options)
        .register_kind<std::string>("work", [&](std::string name, jobs::job_context&) -> asio::awaitable<void> {
            r.add(name);
            co_return;
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    // Enqueued before the server starts, in the opposite order.
    auto enqueue = [&](const char* name, const char* queue, int priority) {
        jobs::job_options o;
        o.queue = std::string(queue);
        o.priority = priority;
        client.enqueue_blocking("work", std::string(name), o);
    };
    enqueue("bulk late", "bulk", 5);
    enqueue("bulk soon", "bulk", 1);
    enqueue("urgent late", "urgent", 5);
    enqueue("urgent soon", "urgent", 1);
    host.start_blocking();
    REQUIRE(r.wait_for_count(4));
    CHECK(r.events() == std::vector<std::string>{"urgent soon", "urgent late", "bulk soon", "bulk late"});
    auto& metrics = host.services().get<hosting::metrics_registry>();
    CHECK(test::eventually(
        [&] { return metrics.render().find("hosting_jobs{state=\"succeeded\"} 4\n") != std::string::npos; }));
    host.stop_blocking();
}

TEST_CASE("jobs: a running job that is deleted keeps its lease and key until its node has stopped it",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    auto keyed = request("k", "{}", 3);
    keyed.concurrency_key = std::string("account-7");
    auto ids = store->enqueue(std::vector<jobs::enqueue_request>{keyed, keyed, keyed}, t0);
    REQUIRE(ids.size() == 3);
    auto child = request("not-claimed-here", "{}");
    child.parent_id = ids[0].id;
    child.condition = jobs::continuation_condition::on_deleted;
    const auto continuation = store->enqueue(std::vector<jobs::enqueue_request>{child}, t0)[0].id;

    jobs::claim_request claim{"node-a", {{"default", 8}}, {"k"}, t0 + 10s};
    auto claimed = store->complete_and_claim({}, claim, t0);
    REQUIRE(claimed.size() == 1); // one holder of the key at a time
    REQUIRE(claimed[0].id == ids[0].id);

    // Deleted from elsewhere: still running, under its lease, and holding
    // the key, until its node has stopped the handler.
    CHECK(store->change_state(ids[0].id, job_state::deleted, "deleted by a client", t0 + 1s) == job_state::running);
    auto j = store->find(ids[0].id);
    CHECK(j->state == job_state::running);
    CHECK(j->cancel_requested);
    CHECK(j->delete_requested);
    CHECK(store->complete_and_claim({}, claim, t0 + 1s).empty());
    // A cancel now does not turn the delete into a cancel.
    CHECK(store->change_state(ids[0].id, job_state::cancelled, "x", t0 + 1s) == job_state::running);
    CHECK(store->find(ids[0].id)->delete_requested);
    const jobs::held_lease held[] = {{ids[0].id, 1}};
    CHECK(store->renew_leases("node-a", held, t0 + 12s, t0 + 2s).cancel_requested ==
          std::vector<jobs::job_id>{ids[0].id});

    // Whatever the attempt's outcome, the job ends deleted, which meets the
    // continuation's condition, and the key passes on.
    std::vector<jobs::completion> done{{ids[0].id, 1, jobs::outcome::succeeded, {}, {}, "succeeded"}};
    claimed = store->complete_and_claim(done, claim, t0 + 3s);
    j = store->find(ids[0].id);
    CHECK(j->state == job_state::deleted);
    CHECK_FALSE(j->cancel_requested);
    CHECK_FALSE(j->delete_requested);
    CHECK(j->history.back().reason == "deleted while running; the attempt ended: succeeded");
    CHECK(store->find(continuation)->state == job_state::available);
    REQUIRE(claimed.size() == 1);
    CHECK(claimed[0].id == ids[1].id);

    // A node that dies with a delete pending: its job ends deleted, not
    // available again.
    CHECK(store->change_state(ids[1].id, job_state::deleted, "deleted by a client", t0 + 4s) == job_state::running);
    CHECK(store->recover_expired(t0 + 20s) == std::vector<jobs::job_id>{ids[1].id});
    j = store->find(ids[1].id);
    CHECK(j->state == job_state::deleted);
    CHECK(j->history.back().reason == "the lease of node node-a expired while a delete was pending");
    CHECK(store->complete_and_claim({}, claim, t0 + 21s).at(0).id == ids[2].id);
}

TEST_CASE("jobs: a job deleted by another node stops before the next job with its key starts", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder, store, quick_server()).register_kind<std::string>("hold", until_stopped(r));
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    jobs::job_options keyed;
    keyed.concurrency_key = std::string("the-key");
    auto first = client.enqueue_blocking("hold", std::string("first"), keyed);
    REQUIRE(r.wait_for("started first"));
    client.enqueue_blocking("hold", std::string("second"), keyed);
    // Straight to the storage, as another process would: this node hears of
    // it at its next heartbeat.
    store->change_state(first, job_state::deleted, "deleted elsewhere", jobs::clock::now());
    REQUIRE(r.wait_for("started second"));
    CHECK(r.events() == std::vector<std::string>{"started first", "stopped first", "started second"});
    REQUIRE(wait_state(client, first, job_state::deleted));
    host.stop_blocking();
}

TEST_CASE("jobs: a cancel recorded while a job runs ends it cancelled whatever the attempt's outcome",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    const auto what = GENERATE(jobs::outcome::succeeded, jobs::outcome::retry, jobs::outcome::failed,
                               jobs::outcome::snoozed, jobs::outcome::released);
    INFO("outcome " << static_cast<int>(what));
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    const auto id = store->enqueue(std::vector<jobs::enqueue_request>{request("k", "{}", 3)}, t0)[0].id;
    auto child = request("k", "{}");
    child.parent_id = id; // on_success: a cancelled parent can still be requeued, so it waits
    const auto continuation = store->enqueue(std::vector<jobs::enqueue_request>{child}, t0)[0].id;
    jobs::claim_request claim{"node-a", {{"default", 1}}, {"k"}, t0 + 10s};
    REQUIRE(store->complete_and_claim({}, claim, t0).size() == 1);

    // Another process cancels it: recorded and acknowledged, but node a has
    // not heard of it (its next heartbeat would tell it) when the attempt ends.
    CHECK(store->change_state(id, job_state::cancelled, "cancelled by a client", t0 + 1s) == job_state::running);
    // A reason and an error that JSON must escape: the words the cancel
    // adds go inside the reason's quotes.
    const std::string reason = "the handler ended: \"stop\" \\ \n\t\u00e9";
    const std::string error = "a \"quoted\" \\ error\r\n";
    std::vector<jobs::completion> done{{id, 1, what, t0 + 2s, error, reason}};
    CHECK(store->complete_and_claim(done, claim, t0 + 3s).empty());
    auto j = store->find(id);
    CHECK(j->state == job_state::cancelled);
    CHECK(j->attempt == 1); // counted, even for a snooze or a release
    CHECK_FALSE(j->cancel_requested);
    CHECK(j->lease_owner.empty());
    CHECK(j->history.back().reason == "cancelled while running; the attempt ended: " + reason);
    CHECK(j->history.back().error == error);
    CHECK(store->find(continuation)->state == job_state::awaiting);
    // Final: nothing makes it available again, not even time passing.
    CHECK(store->complete_and_claim({}, claim, t0 + 1h).empty());
    CHECK(store->find(id)->state == job_state::cancelled);
    CHECK(store->counts()[job_state::cancelled] == 1);
}

TEST_CASE("jobs: a cancel from another process holds when the handler then fails, snoozes or is released",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    const std::string ending = GENERATE(as<std::string>{}, "fails", "snoozes", "is released");
    INFO("the handler " << ending);
    auto store = make_storage(which, db);
    // The other process: its own connection to the store (or the same memory).
    auto elsewhere = reopen(which, db, store);
    test::recorder r;
    std::stop_source gate;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    // No heartbeat within the test: this node does not hear of the cancel
    // before its handler ends, as when the handler ends between two beats.
    auto options = quick_server();
    options.heartbeat_interval = std::chrono::hours(1);
    options.lease_duration = std::chrono::hours(3);
    jobs::kind_options retried;
    retried.retry.max_attempts = 3;
    retried.retry.backoff = [](int) { return std::chrono::milliseconds(0); }; // a retry would run at once
    jobs::add_jobs(builder, store, options)
        .register_kind<std::string>(
            "work",
            [&](std::string how, jobs::job_context&) -> asio::awaitable<void> {
                r.add("started");
                if (how == "is released")
                    co_await hosting::delay(std::chrono::hours(1)); // until the server stops
                const std::stop_token opened = gate.get_token(); // named: see docs/gcc12.md
                try {
                    co_await hosting::delay(std::chrono::hours(1), opened);
                } catch (const hosting::operation_canceled&) {
                }
                if (how == "fails")
                    throw std::runtime_error("the remote end said no");
                throw jobs::snooze(std::chrono::minutes(1));
            },
            retried);
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    const auto id = client.enqueue_blocking("work", ending);
    REQUIRE(r.wait_for("started"));
    // Straight to the storage, as another process's client would.
    CHECK(elsewhere->change_state(id, job_state::cancelled, "cancelled elsewhere", jobs::clock::now()) ==
          job_state::running);
    if (ending == "is released")
        host.stop_blocking();
    else
        gate.request_stop();
    REQUIRE(test::eventually([&] { return store->find(id)->state != job_state::running; }));
    auto j = store->find(id);
    CHECK(j->state == job_state::cancelled);
    CHECK(j->attempt == 1);
    if (ending != "is released")
        host.stop_blocking();
    CHECK(r.count("started") == 1);
}

TEST_CASE("jobs: timeout, cancel and bad arguments reach or end the handler", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    jobs::kind_options once;
    once.retry.max_attempts = 1;
    auto reg = jobs::add_jobs(builder, make_storage(which, db), quick_server());
    reg.register_kind<std::string>("wait", until_stopped(r), once);
    reg.register_kind<add_args>("add", [&](add_args, jobs::job_context&) -> asio::awaitable<void> { co_return; },
                                once);
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    expect_timeout_and_cancel(client, r, "wait", "stopped");

    auto bad = client.enqueue_blocking("add", std::string("not an object"));
    REQUIRE(wait_state(client, bad, job_state::failed));
    auto j = client.find_blocking(bad);
    CHECK(j->attempt == 1);
    CHECK(j->last_error.find("do not convert") != std::string::npos);

    // A kind nobody here knows waits; it is neither lost nor failed.
    auto unknown = client.enqueue_blocking("mystery", std::string("?"));
    auto after = client.enqueue_blocking("add", add_args{1, 1});
    REQUIRE(wait_state(client, after, job_state::succeeded));
    CHECK(client.find_blocking(unknown)->state == job_state::available);

    CHECK_THROWS_AS(client.cancel_blocking(after), jobs::invalid_transition);
    CHECK_THROWS_AS(client.requeue_blocking(unknown), jobs::invalid_transition);
    CHECK_THROWS_AS(client.cancel_blocking(999999), jobs::job_not_found);
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("jobs: at shutdown running jobs go back to available, their attempt not counted", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    test::recorder r;
    jobs::job_id id = 0;
    {
        auto builder = test::make_builder(sink);
        jobs::add_jobs(builder, store, quick_server())
            .register_kind<std::string>("long", [&](std::string, jobs::job_context&) -> asio::awaitable<void> {
                r.add("started");
                co_await hosting::delay(std::chrono::hours(1));
            });
        auto host = builder.build();
        host.start_blocking();
        id = host.services().get<jobs::client>().enqueue_blocking("long", std::string("x"));
        REQUIRE(r.wait_for("started"));
        host.stop_blocking();
        CHECK(host.exit_code() == 0);
    }
    auto j = store->find(id);
    REQUIRE(j);
    CHECK(j->state == job_state::available);
    CHECK(j->attempt == 0);
    CHECK(j->history.back().reason == "released: the server stopped before it finished");
}

TEST_CASE("jobs: per-queue concurrency limits hold under load", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto options = quick_server();
    options.workers = 6;
    options.queues = {{"serial", 1}, {"wide", 3}};
    test::high_water serial_jobs, wide_jobs;
    test::recorder r;
    jobs::kind_options serial;
    serial.queue = "serial";
    jobs::kind_options wide;
    wide.queue = "wide";
    jobs::add_jobs(builder, make_storage(which, db), options)
        .register_kind<int>(
            "serial",
            [&](int, jobs::job_context&) -> asio::awaitable<void> {
                serial_jobs.enter();
                co_await hosting::delay(5ms);
                serial_jobs.leave();
                r.add("done");
            },
            serial)
        .register_kind<int>(
            "wide",
            [&](int, jobs::job_context&) -> asio::awaitable<void> {
                wide_jobs.enter();
                co_await hosting::delay(20ms);
                wide_jobs.leave();
                r.add("done");
            },
            wide);
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    for (int i = 0; i < 15; ++i) {
        client.enqueue_blocking("serial", i);
        client.enqueue_blocking("wide", i);
    }
    host.start_blocking();
    REQUIRE(r.wait_for_count(30));
    host.stop_blocking();
    CHECK(serial_jobs.most() == 1);
    CHECK(wide_jobs.most() <= 3);
    CHECK(wide_jobs.most() >= 2); // they did overlap: the limit, not luck, kept it at 3
}

TEST_CASE("jobs: continuations run or are deleted by their condition", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    jobs::kind_options once;
    once.retry.max_attempts = 1;
    jobs::add_jobs(builder, make_storage(which, db), quick_server())
        .register_kind<std::string>(
            "step",
            [&](std::string name, jobs::job_context&) -> asio::awaitable<void> {
                co_await asio::this_coro::executor;
                r.add(name);
                if (name.rfind("fail", 0) == 0)
                    throw std::runtime_error("step " + name + " failed");
            },
            once);
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    using c = jobs::continuation_condition;

    // Chained before the server starts, so every parent is still pending.
    auto ok = client.enqueue_blocking("step", std::string("ok"));
    auto after_ok = client.continue_with_blocking(ok, "step", std::string("after ok"));
    auto any_after_ok = client.continue_with_blocking(ok, "step", std::string("any after ok"), c::on_any_final);
    auto deleted_after_ok = client.continue_with_blocking(ok, "step", std::string("deleted after ok"), c::on_deleted);
    auto bad = client.enqueue_blocking("step", std::string("fail"));
    auto after_bad = client.continue_with_blocking(bad, "step", std::string("after bad"));
    auto any_after_bad = client.continue_with_blocking(bad, "step", std::string("any after bad"), c::on_any_final);
    auto grandchild = client.continue_with_blocking(after_bad, "step", std::string("grandchild"), c::on_deleted);
    CHECK(client.find_blocking(after_ok)->state == job_state::awaiting);
    CHECK_THROWS_AS(client.continue_with_blocking(987654, "step", std::string("orphan")), jobs::job_not_found);

    host.start_blocking();
    REQUIRE(wait_state(client, after_ok, job_state::succeeded));
    REQUIRE(wait_state(client, any_after_ok, job_state::succeeded));
    REQUIRE(wait_state(client, deleted_after_ok, job_state::deleted));
    REQUIRE(wait_state(client, bad, job_state::failed));
    REQUIRE(wait_state(client, any_after_bad, job_state::succeeded));
    // A failed parent can still be requeued and succeed: after_bad waits,
    // until the parent's delete settles it.
    CHECK(client.find_blocking(after_bad)->state == job_state::awaiting);
    client.delete_job_blocking(bad);
    REQUIRE(wait_state(client, after_bad, job_state::deleted));
    // Deleting after_bad satisfied its own on_deleted continuation.
    REQUIRE(wait_state(client, grandchild, job_state::succeeded));
    CHECK(client.find_blocking(after_bad)->history.back().reason ==
          "parent " + std::to_string(bad) + " ended deleted; the continuation runs only when it succeeded");
    CHECK_FALSE(r.contains("after bad"));
    CHECK_FALSE(r.contains("deleted after ok"));

    // A parent that already ended is judged at once.
    auto late = client.continue_with_blocking(ok, "step", std::string("late"));
    REQUIRE(wait_state(client, late, job_state::succeeded));
    host.stop_blocking();
}

TEST_CASE("jobs: a parent whose retry ends it deleted, because a delete was pending, settles its continuations "
          "in the same completion as a parent that succeeded",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    using c = jobs::continuation_condition;
    const auto parents =
        store->enqueue(std::vector<jobs::enqueue_request>{request("k", "1", 3), request("k", "2")}, t0);
    const auto retried = parents[0].id, succeeded = parents[1].id;
    auto continuation = [&](jobs::job_id parent, c condition) {
        return enqueue_continuation(*store, parent, condition, t0);
    };
    const auto on_deleted = continuation(retried, c::on_deleted);
    const auto on_success = continuation(retried, c::on_success);
    const auto after_success = continuation(succeeded, c::on_success);
    jobs::claim_request claim{"n", {{"default", 2}}, {"k"}, t0 + 60s};
    REQUIRE(store->complete_and_claim({}, claim, t0).size() == 2);
    CHECK(store->change_state(retried, job_state::deleted, "deleted by a client", t0 + 1s) == job_state::running);

    // The first attempt asks for a retry, which would leave the children
    // waiting; the pending delete ends it instead.
    std::vector<jobs::completion> done{{retried, 1, jobs::outcome::retry, t0 + 10s, "boom", "failed"},
                                       {succeeded, 1, jobs::outcome::succeeded, {}, {}, "succeeded"}};
    store->complete_and_claim(done, {"n", {}, {"k"}, t0 + 60s}, t0 + 2s);
    CHECK(store->find(retried)->state == job_state::deleted);
    CHECK(store->find(on_deleted)->state == job_state::available);
    CHECK(store->find(on_success)->state == job_state::deleted);
    CHECK(store->find(after_success)->state == job_state::available);
    CHECK(store->counts()[job_state::awaiting] == 0);
}

TEST_CASE("jobs: storages keep a continuation waiting while its parent can still succeed", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    using c = jobs::continuation_condition;
    const auto parents = store->enqueue(
        std::vector<jobs::enqueue_request>{request("k", "1"), request("k", "2"), request("k", "3")}, t0);
    const auto failing = parents[0].id, pruned = parents[1].id, cancelled = parents[2].id;
    auto continuation = [&](jobs::job_id parent, c condition, jobs::time_point at) {
        return enqueue_continuation(*store, parent, condition, at);
    };
    const auto on_success = continuation(failing, c::on_success, t0);
    const auto on_any = continuation(failing, c::on_any_final, t0);
    const auto on_deleted = continuation(failing, c::on_deleted, t0);
    const auto of_pruned = continuation(pruned, c::on_success, t0);
    const auto of_cancelled = continuation(cancelled, c::on_success, t0);
    const auto deleted_of_cancelled = continuation(cancelled, c::on_deleted, t0);
    auto state_of = [&](jobs::job_id id) { return store->find(id)->state; };

    // Two parents fail for good, the third is cancelled: each can still be
    // requeued, so only on_any_final is settled.
    CHECK(store->change_state(cancelled, job_state::cancelled, "cancelled by a client", t0) == job_state::cancelled);
    jobs::claim_request claim{"n", {{"default", 2}}, {"k"}, t0 + 60s};
    REQUIRE(store->complete_and_claim({}, claim, t0).size() == 2);
    std::vector<jobs::completion> failed{{failing, 1, jobs::outcome::failed, {}, "boom", "failed"},
                                         {pruned, 1, jobs::outcome::failed, {}, "boom", "failed"}};
    store->complete_and_claim(failed, claim, t0 + 1s);
    REQUIRE(state_of(failing) == job_state::failed);
    CHECK(state_of(on_success) == job_state::awaiting);
    CHECK(state_of(on_any) == job_state::available);
    CHECK(state_of(on_deleted) == job_state::awaiting);
    CHECK(state_of(of_pruned) == job_state::awaiting);
    CHECK(state_of(of_cancelled) == job_state::awaiting);
    CHECK(state_of(deleted_of_cancelled) == job_state::awaiting);
    // Enqueued under a parent that already failed, it waits too.
    const auto late = continuation(failing, c::on_success, t0 + 1s);
    CHECK(state_of(late) == job_state::awaiting);

    // The failed parent is requeued and succeeds: its on_success
    // continuations run, and its on_deleted one can no longer.
    CHECK(store->change_state(failing, job_state::available, "requeued by a client", t0 + 2s) ==
          job_state::available);
    REQUIRE(store->complete_and_claim({}, claim, t0 + 2s).size() == 1);
    std::vector<jobs::completion> ok{{failing, 1, jobs::outcome::succeeded, {}, {}, "succeeded"}};
    store->complete_and_claim(ok, claim, t0 + 3s);
    CHECK(state_of(on_success) == job_state::available);
    CHECK(state_of(late) == job_state::available);
    CHECK(store->find(on_success)->history.back().reason == "parent " + std::to_string(failing) + " succeeded");
    CHECK(state_of(on_any) == job_state::available); // settled once, at the first final state
    CHECK(state_of(on_deleted) == job_state::deleted);
    CHECK(store->find(on_deleted)->history.back().reason ==
          "parent " + std::to_string(failing) + " ended succeeded; the continuation runs only when it was deleted");

    // The cancelled parent is deleted: that settles its continuations.
    CHECK(store->change_state(cancelled, job_state::deleted, "deleted by a client", t0 + 4s) == job_state::deleted);
    CHECK(state_of(of_cancelled) == job_state::deleted);
    CHECK(store->find(of_cancelled)->history.back().reason ==
          "parent " + std::to_string(cancelled) + " ended deleted; the continuation runs only when it succeeded");
    CHECK(state_of(deleted_of_cancelled) == job_state::available);

    // A failed parent pruned past its retention can never be requeued: what
    // still waits for it is deleted, and nothing waits for a job that is gone.
    CHECK(store->prune(job_state::failed, t0 + 2s, 10, t0 + 5s) == 1);
    CHECK_FALSE(store->find(pruned));
    CHECK(state_of(of_pruned) == job_state::deleted);
    CHECK(store->find(of_pruned)->history.back().reason ==
          "parent " + std::to_string(pruned) +
              " was pruned (it had ended failed); the continuation runs only when it succeeded");
    CHECK(store->counts()[job_state::awaiting] == 0);
}

TEST_CASE("jobs: a continuation of a failed parent runs once the requeued parent succeeds", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    test::recorder r;
    std::atomic<bool> fail_first{true};
    jobs::kind_options once;
    once.retry.max_attempts = 1;
    jobs::add_jobs(builder, make_storage(which, db), quick_server())
        .register_kind<std::string>(
            "step",
            [&](std::string name, jobs::job_context&) -> asio::awaitable<void> {
                co_await asio::this_coro::executor;
                r.add(name);
                if (name == "parent" && fail_first.exchange(false))
                    throw std::runtime_error("the remote end is down");
            },
            once);
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    const auto parent = client.enqueue_blocking("step", std::string("parent"));
    const auto child = client.continue_with_blocking(parent, "step", std::string("child"));
    REQUIRE(wait_state(client, parent, job_state::failed));
    // Whether it came before or after the failure, the continuation waits.
    REQUIRE(client.find_blocking(child)->state == job_state::awaiting);
    client.requeue_blocking(parent);
    REQUIRE(wait_state(client, child, job_state::succeeded));
    CHECK(client.find_blocking(parent)->state == job_state::succeeded);
    CHECK(r.events() == std::vector<std::string>{"parent", "parent", "child"});
    host.stop_blocking();
}

TEST_CASE("jobs: per-kind and per-key limits hold under load", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto options = quick_server();
    options.workers = 8;
    std::mutex mutex;
    std::map<std::string, int> now_by_key, most_by_key;
    test::high_water limited_jobs;
    test::recorder r;
    jobs::kind_options limited;
    limited.concurrency = 2;
    auto reg = jobs::add_jobs(builder, make_storage(which, db), options);
    reg.register_kind<int>(
        "limited",
        [&](int, jobs::job_context&) -> asio::awaitable<void> {
            limited_jobs.enter();
            co_await hosting::delay(10ms);
            limited_jobs.leave();
            r.add("limited");
        },
        limited);
    reg.register_kind<std::string>("keyed", [&](std::string key, jobs::job_context&) -> asio::awaitable<void> {
        {
            std::lock_guard lock(mutex);
            auto n = ++now_by_key[key];
            most_by_key[key] = std::max(most_by_key[key], n);
        }
        co_await hosting::delay(10ms);
        {
            std::lock_guard lock(mutex);
            --now_by_key[key];
        }
        r.add("keyed");
    });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    for (int i = 0; i < 12; ++i) {
        client.enqueue_blocking("limited", i);
        for (const char* key : {"account-1", "account-2"}) {
            jobs::job_options o;
            o.concurrency_key = key;
            client.enqueue_blocking("keyed", std::string(key), o);
        }
    }
    host.start_blocking();
    REQUIRE(r.wait_for_count(36));
    host.stop_blocking();
    CHECK(limited_jobs.most() <= 2);
    CHECK(limited_jobs.most() == 2);
    CHECK(most_by_key["account-1"] == 1);
    CHECK(most_by_key["account-2"] == 1);
}

TEST_CASE("jobs: storages claim past a backlog of one concurrency key, and choose the same jobs", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    auto job = [](std::string kind, std::string queue, std::string key) {
        auto r = request(std::move(kind), "{}");
        r.queue = std::move(queue);
        r.concurrency_key = std::move(key);
        return r;
    };
    // In claim order (one priority, one run_at: by id).
    std::vector<jobs::enqueue_request> batch;
    batch.push_back(job("k", "other", "held"));   // 1: will run, and hold "held"
    batch.push_back(job("k", "default", "held")); // 2: its key is held
    for (int i = 0; i < 200; ++i)
        batch.push_back(job("k", "default", "a")); // 3..202: the first may run
    batch.push_back(job("unknown", "default", "b")); // 203: no node here knows its kind
    batch.push_back(job("k", "default", "b"));       // 204
    for (int i = 0; i < 3; ++i)
        batch.push_back(job("k", "default", "")); // 205..207
    batch.push_back(job("k", "other", "a")); // 208: "a" is taken in default first
    batch.push_back(job("k", "other", ""));  // 209
    const auto ids = store->enqueue(batch, t0);
    REQUIRE(ids.size() == 209);
    REQUIRE(ids.back().id == ids.front().id + 208);
    const auto id = [&](std::size_t n) { return ids[n - 1].id; }; // the nth enqueued
    auto claimed_ids = [](const std::vector<jobs::job>& claimed) {
        std::vector<jobs::job_id> out;
        for (const auto& j : claimed)
            out.push_back(j.id);
        return out;
    };

    jobs::claim_request first{"node-a", {{"other", 1}}, {"k"}, t0 + 60s};
    REQUIRE(claimed_ids(store->complete_and_claim({}, first, t0)) == std::vector<jobs::job_id>{id(1)});
    // Four from default, however many jobs of a held or taken key come
    // first, then what other leaves.
    jobs::claim_request both{"node-a", {{"default", 4}, {"other", 4}}, {"k"}, t0 + 60s};
    CHECK(claimed_ids(store->complete_and_claim({}, both, t0)) ==
          std::vector<jobs::job_id>{id(3), id(204), id(205), id(206), id(209)});
    // Once the first of "a" ends, the next one runs, and nothing else of it.
    std::vector<jobs::completion> done{{id(3), 1, jobs::outcome::succeeded, {}, {}, "ok"}};
    jobs::claim_request more{"node-a", {{"default", 10}, {"other", 10}}, {"k"}, t0 + 60s};
    CHECK(claimed_ids(store->complete_and_claim(done, more, t0 + 1s)) ==
          std::vector<jobs::job_id>{id(4), id(207)});
    CHECK(store->counts()[job_state::running] == 7);
    CHECK(store->complete_and_claim({}, more, t0 + 2s).empty());
}

TEST_CASE("jobs: a backlog of one concurrency key leaves no worker idle that other work could use", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    options.workers = 4;
    options.prefetch = 1; // claims of four: a window of a few dozen candidates would see only the backlog
    jobs::add_jobs(builder, store, options).register_kind<std::string>("hold", until_stopped(r));
    auto host = builder.build();
    // 200 jobs of one key, then three without, before the server starts.
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < 200; ++i) {
        auto keyed = request("hold", "\"keyed\"");
        keyed.concurrency_key = std::string("tenant-7");
        batch.push_back(std::move(keyed));
    }
    for (int i = 1; i <= 3; ++i)
        batch.push_back(request("hold", "\"free " + std::to_string(i) + "\""));
    store->enqueue(batch, jobs::clock::now());
    host.start_blocking();
    // One worker on the key, the three others on the rest.
    REQUIRE(r.wait_for_count(4));
    CHECK(r.count("started keyed") == 1);
    CHECK(r.contains("started free 1"));
    CHECK(r.contains("started free 2"));
    CHECK(r.contains("started free 3"));
    host.stop_blocking();
}

TEST_CASE("jobs: storages take no more of a kind than a claim's cap, and pass over the rest", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    auto job = [](std::string kind, std::string queue) {
        auto r = request(std::move(kind), "{}");
        r.queue = std::move(queue);
        return r;
    };
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < 100; ++i)
        batch.push_back(job("serial", "default")); // 1..100
    for (int i = 0; i < 3; ++i)
        batch.push_back(job("other", "default")); // 101..103
    batch.push_back(job("serial", "later"));      // 104: the cap is for the whole claim
    batch.push_back(job("other", "later"));       // 105
    const auto ids = store->enqueue(batch, t0);
    REQUIRE(ids.size() == 105);
    const auto id = [&](std::size_t n) { return ids[n - 1].id; };
    jobs::claim_request claim{"n", {{"default", 4}, {"later", 4}}, {"serial", "other"}, t0 + 60s};
    claim.kind_caps = {{"serial", 1}};
    std::vector<jobs::job_id> claimed;
    for (const auto& j : store->complete_and_claim({}, claim, t0))
        claimed.push_back(j.id);
    CHECK(claimed == std::vector<jobs::job_id>{id(1), id(101), id(102), id(103), id(105)});
}

TEST_CASE("jobs: a kind at its concurrency limit leaves no worker idle that other work could use", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    options.workers = 4;
    options.prefetch = 1;
    jobs::kind_options one_at_a_time;
    one_at_a_time.concurrency = 1;
    jobs::add_jobs(builder, store, options)
        .register_kind<std::string>("serial", until_stopped(r), one_at_a_time)
        .register_kind<std::string>("free", until_stopped(r));
    auto host = builder.build();
    // A backlog of the limited kind, then three others, before the server starts.
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < 20; ++i)
        batch.push_back(request("serial", "\"serial\""));
    for (int i = 1; i <= 3; ++i)
        batch.push_back(request("free", "\"free " + std::to_string(i) + "\""));
    store->enqueue(batch, jobs::clock::now());
    host.start_blocking();
    // One worker on the limited kind, the three others on the rest: the node
    // claimed no more of it than it may run.
    REQUIRE(r.wait_for_count(4));
    CHECK(r.count("started serial") == 1);
    CHECK(r.contains("started free 1"));
    CHECK(r.contains("started free 2"));
    CHECK(r.contains("started free 3"));
    CHECK(store->counts()[job_state::running] == 4);
    host.stop_blocking();
}

TEST_CASE("jobs: unknown kinds are noted in their history and wait", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    jobs::add_jobs(builder, make_storage(which, db), quick_server())
        .register_kind<int>("known", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    auto unknown = client.enqueue_blocking("renamed_kind", 1);
    host.start_blocking();
    REQUIRE(test::eventually([&] { return client.find_blocking(unknown)->history.size() >= 2; }));
    auto j = client.find_blocking(unknown);
    CHECK(j->state == job_state::available);
    CHECK(j->history.back().reason ==
          "node test-node does not know kind 'renamed_kind'; waiting for one that does");
    host.stop_blocking();
    // Noted once, not at every heartbeat.
    CHECK(client.find_blocking(unknown)->history.size() == 2);
}

TEST_CASE("jobs: finished jobs are pruned after their retention, failed ones kept", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    std::vector<jobs::enqueue_request> batch(5, request("k", "0"));
    auto ids = store->enqueue(batch, t0);
    jobs::claim_request claim{"n", {{"default", 5}}, {"k"}, t0 + 60s};
    auto claimed = store->complete_and_claim({}, claim, t0);
    REQUIRE(claimed.size() == 5);
    std::vector<jobs::completion> done;
    for (int i = 0; i < 4; ++i)
        done.push_back({claimed[static_cast<std::size_t>(i)].id, 1, jobs::outcome::succeeded, {}, {}, "ok"});
    done.push_back({claimed[4].id, 1, jobs::outcome::failed, {}, "broken", "failed"});
    store->complete_and_claim(done, {"n", {}, {"k"}, t0 + 60s}, t0 + 1s);
    CHECK(store->prune(job_state::succeeded, t0 + 1s, 100, t0 + 2s) == 0); // not older than that yet
    CHECK(store->prune(job_state::succeeded, t0 + 2s, 3, t0 + 2s) == 3);   // one batch
    CHECK(store->prune(job_state::succeeded, t0 + 2s, 3, t0 + 2s) == 1);
    CHECK(store->counts()[job_state::succeeded] == 0);
    CHECK(store->counts()[job_state::failed] == 1);
}

TEST_CASE("jobs: recurring jobs fire once per occurrence across a daylight-saving change", "[jobs][conformance][recurring]")
{
    EACH_STORAGE(which, db);
    // 00:30 UTC = 01:30 CET, the night of the spring change.
    auto clock = std::make_shared<jobs::manual_time_source>(utc(2026, 3, 29, 0, 30));
    auto store = make_storage(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    jobs::add_jobs(builder, store, quick_server(clock))
        .register_kind<std::string>("nightly", [&](std::string, jobs::job_context& context) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            r.add("ran " + std::to_string(context.id()));
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    // 02:30 local does not exist that night: it runs at 03:00 CEST (01:00 UTC).
    client.add_or_update_recurring_blocking("nightly", "30 2 * * *", "Europe/Berlin", "nightly", std::string("x"));
    auto defs = client.list_recurring_blocking();
    REQUIRE(defs.size() == 1);
    CHECK(defs[0].next_fire == utc(2026, 3, 29, 1, 0));
    host.start_blocking();

    clock->advance(30min); // 01:00 UTC
    REQUIRE(r.wait_for_count(1));
    defs = client.list_recurring_blocking();
    // The next night has 02:30 again: 00:30 UTC in summer time.
    CHECK(defs[0].next_fire == utc(2026, 3, 30, 0, 30));
    jobs::job_filter f;
    f.kind = "nightly";
    auto runs = client.list_blocking(f);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].recurring_id == "nightly");

    // Updating with the same schedule keeps the next occurrence; the unique
    // key would refuse a second run of the same occurrence anyway.
    client.add_or_update_recurring_blocking("nightly", "30 2 * * *", "Europe/Berlin", "nightly", std::string("y"));
    CHECK(client.list_recurring_blocking()[0].next_fire == utc(2026, 3, 30, 0, 30));
    auto triggered = client.trigger_recurring_blocking("nightly");
    REQUIRE(wait_state(client, triggered, job_state::succeeded));
    CHECK(client.list_blocking(f).size() == 2);
    CHECK(client.remove_recurring_blocking("nightly"));
    CHECK_FALSE(client.remove_recurring_blocking("nightly"));
    CHECK_THROWS_AS(client.trigger_recurring_blocking("nightly"), std::invalid_argument);
    CHECK_THROWS_AS(client.add_or_update_recurring_blocking("bad", "61 * * * *", "UTC", "nightly", 1),
                    hosting::cron_parse_error);
    CHECK_THROWS_AS(client.add_or_update_recurring_blocking("bad", "* * * * *", "Mars/Olympus", "nightly", 1),
                    hosting::unknown_time_zone);
    host.stop_blocking();
}

TEST_CASE("jobs: missed occurrences run once, all, or not at all", "[jobs][conformance][recurring]")
{
    EACH_STORAGE(which, db);
    const auto policy = GENERATE(jobs::missed_policy::run_once, jobs::missed_policy::run_all, jobs::missed_policy::skip);
    INFO("policy " << static_cast<int>(policy));
    auto clock = std::make_shared<jobs::manual_time_source>(utc(2026, 6, 1, 12, 0));
    auto store = make_storage(which, db);
    {
        // Defined while no server runs; then the servers are down 5 hours.
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        jobs::add_jobs(builder, store, quick_server(clock));
        auto host = builder.build();
        jobs::job_options o;
        host.services().get<jobs::client>().add_or_update_recurring_blocking("hourly", "0 * * * *", "UTC", "tick",
                                                                             1, o, policy);
    }
    clock->advance(std::chrono::hours(5) + 10min); // 17:10: 13:00 .. 17:00 passed
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    jobs::add_jobs(builder, store, quick_server(clock))
        .register_kind<int>("tick", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            r.add("tick");
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    REQUIRE(test::eventually([&] { return client.list_recurring_blocking()[0].next_fire == utc(2026, 6, 1, 18, 0); }));
    const std::size_t expected = policy == jobs::missed_policy::run_all ? 5 : policy == jobs::missed_policy::run_once ? 1 : 0;
    if (expected > 0)
        REQUIRE(r.wait_for_count(expected));
    jobs::job_filter f;
    f.kind = "tick";
    CHECK(client.list_blocking(f).size() == expected);
    // And the next occurrence is on time again, for every policy.
    clock->advance(50min);
    REQUIRE(r.wait_for_count(expected + 1));
    host.stop_blocking();
    CHECK(client.list_blocking(f).size() == expected + 1);
}

TEST_CASE("jobs: beyond max_missed_runs missed occurrences, run_once and skip take the latest", "[jobs][conformance][recurring]")
{
    EACH_STORAGE(which, db);
    const auto policy = GENERATE(jobs::missed_policy::run_once, jobs::missed_policy::skip);
    INFO("policy " << static_cast<int>(policy));
    const auto t0 = utc(2026, 6, 1, 12, 0);
    auto clock = std::make_shared<jobs::manual_time_source>(t0);
    auto store = make_storage(which, db);
    {
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        jobs::add_jobs(builder, store, quick_server(clock));
        auto host = builder.build();
        jobs::job_options o;
        host.services().get<jobs::client>().add_or_update_recurring_blocking("minutely", "* * * * *", "UTC", "tick",
                                                                             1, o, policy);
    }
    // Down 2,000 minutes, twice max_missed_runs occurrences; back 100 ms
    // after the latest, which skip's tolerance (two heartbeats) still takes.
    const auto latest = t0 + std::chrono::minutes(2000);
    clock->advance(latest - t0 + 100ms);
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    test::recorder r;
    jobs::add_jobs(builder, store, quick_server(clock))
        .register_kind<int>("tick", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            r.add("tick");
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    REQUIRE(test::eventually([&] { return client.list_recurring_blocking()[0].next_fire == latest + 1min; }));
    REQUIRE(r.wait_for_count(1));
    jobs::job_filter f;
    f.kind = "tick";
    const auto runs = client.list_blocking(f);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].run_at == latest);
    CHECK(client.list_recurring_blocking()[0].last_fire == latest);
    if (policy == jobs::missed_policy::run_once)
        CHECK(client.find_blocking(runs[0].id)->history.front().reason ==
              "occurrence of recurring job 'minutely' (one run for at least 1000 occurrences)");
    host.stop_blocking();
}

TEST_CASE("jobs: recurring occurrences keep every job option, and a concurrency key keeps them apart across nodes",
          "[jobs][conformance][recurring]")
{
    EACH_STORAGE(which, db);
    auto clock = std::make_shared<jobs::manual_time_source>(utc(2026, 6, 1, 12, 0) + 30s);
    auto store = make_storage(which, db);
    // The second node's own connection to the store, as another process has.
    auto elsewhere = reopen(which, db, store);
    test::recorder r;
    std::stop_source gate;
    auto options = quick_server(clock);
    options.workers = 2;
    options.prefetch = 1;                           // a node whose workers are busy leaves new work to the other
    options.lease_duration = std::chrono::hours(3); // the clock moves by minutes: no lease expires
    options.node_id = "node-a";
    auto builder_a = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder_a, store, options).register_kind<std::string>("report", until_open(r, gate));
    options.node_id = "node-b";
    auto builder_b = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs(builder_b, elsewhere, options).register_kind<std::string>("report", until_open(r, gate));
    auto a = builder_a.build();
    auto b = builder_b.build();
    auto& client = a.services().get<jobs::client>();
    // Both every minute, and each run takes longer than that.
    jobs::job_options keyed;
    keyed.concurrency_key = std::string("report");
    keyed.priority = 7;
    keyed.max_attempts = 4;
    keyed.timeout = std::chrono::hours(1);
    client.add_or_update_recurring_blocking("report", "* * * * *", "UTC", "report", std::string("report"), keyed);
    jobs::job_options unique;
    unique.unique_key = std::string("digest");
    unique.priority = 7;
    client.add_or_update_recurring_blocking("digest", "* * * * *", "UTC", "report", std::string("digest"), unique);
    a.start_blocking();
    b.start_blocking();

    clock->advance(30s); // 12:01
    REQUIRE(r.wait_for("started report"));
    REQUIRE(r.wait_for("started digest"));
    clock->advance(1min); // 12:02: both are due again while their first runs
    REQUIRE(test::eventually([&] {
        for (const auto& rj : client.list_recurring_blocking())
            if (rj.next_fire != utc(2026, 6, 1, 12, 3))
                return false;
        return true;
    }));
    // A job behind them in claim order starts on a free worker: the claim
    // that took it passed over the second report, whose key the first holds.
    jobs::job_options behind;
    behind.priority = 9;
    client.enqueue_blocking("report", std::string("marker"), behind);
    REQUIRE(r.wait_for("started marker"));
    auto occurrences_of = [&](const std::string& recurring) {
        std::vector<jobs::job> out;
        for (auto& j : client.list_blocking(jobs::job_filter{}))
            if (j.recurring_id == recurring)
                out.push_back(std::move(j));
        return out;
    };
    const auto reports = occurrences_of("report");
    REQUIRE(reports.size() == 2);
    CHECK(reports[0].state == job_state::running);
    CHECK(reports[1].state == job_state::available);
    CHECK(r.count("started report") == 1);
    for (const auto& j : reports) {
        CHECK(j.concurrency_key == "report");
        CHECK(j.priority == 7);
        CHECK(j.max_attempts == 4);
        CHECK(j.timeout == std::chrono::hours(1));
    }
    // The unique key held by the running digest: the second was not enqueued.
    const auto digests = occurrences_of("digest");
    REQUIRE(digests.size() == 1);
    CHECK(digests[0].unique_key == "digest");
    CHECK(digests[0].priority == 7);

    // Once the first report ends, the second runs: never beside it.
    gate.request_stop();
    REQUIRE(wait_state(client, reports[1].id, job_state::succeeded));
    CHECK(runs_of(r, "report") ==
          std::vector<std::string>{"started report", "ended report", "started report", "ended report"});
    a.stop_blocking();
    b.stop_blocking();
}

TEST_CASE("jobs: a recurring job told never to overlap itself skips or waits while an earlier run has not ended",
          "[jobs][conformance][recurring]")
{
    EACH_STORAGE(which, db);
    const auto overlap = GENERATE(jobs::overlap_policy::skip, jobs::overlap_policy::wait);
    INFO("overlap " << static_cast<int>(overlap));
    auto clock = std::make_shared<jobs::manual_time_source>(utc(2026, 6, 1, 12, 0) + 30s);
    test::recorder r;
    std::stop_source gate;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server(clock);
    options.lease_duration = std::chrono::hours(3); // the clock moves by minutes: no lease expires
    jobs::add_jobs(builder, make_storage(which, db), options).register_kind<std::string>("tick", until_open(r, gate));
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    // Each policy takes a key of its own, and so refuses the caller's.
    jobs::job_options unique;
    unique.unique_key = std::string("mine");
    CHECK_THROWS_WITH(client.add_or_update_recurring_blocking("tick", "* * * * *", "UTC", "tick", std::string("tick"),
                                                              unique, jobs::missed_policy::run_once,
                                                              jobs::overlap_policy::skip),
                      Catch::Contains("overlap_policy::skip takes the unique key 'recurring:tick'"));
    jobs::job_options keyed;
    keyed.concurrency_key = std::string("mine");
    CHECK_THROWS_WITH(client.add_or_update_recurring_blocking("tick", "* * * * *", "UTC", "tick", std::string("tick"),
                                                              keyed, jobs::missed_policy::run_once,
                                                              jobs::overlap_policy::wait),
                      Catch::Contains("overlap_policy::wait takes the concurrency key 'recurring:tick'"));
    jobs::job_options none;
    client.add_or_update_recurring_blocking("tick", "* * * * *", "UTC", "tick", std::string("tick"), none,
                                            jobs::missed_policy::run_once, overlap);
    REQUIRE(client.list_recurring_blocking().size() == 1);
    CHECK(client.list_recurring_blocking()[0].overlap == overlap);
    host.start_blocking();

    clock->advance(30s); // 12:01
    REQUIRE(r.wait_for("started tick"));
    clock->advance(1min); // 12:02: due again while the first runs
    REQUIRE(test::eventually(
        [&] { return client.list_recurring_blocking()[0].next_fire == utc(2026, 6, 1, 12, 3); }));
    const auto triggered = client.trigger_recurring_blocking("tick"); // and a run by hand
    jobs::job_filter ticks;
    ticks.kind = "tick";
    const auto runs = client.list_blocking(ticks);
    if (overlap == jobs::overlap_policy::skip) {
        // Neither was enqueued: the run that has not ended stands for both.
        REQUIRE(runs.size() == 1);
        CHECK(runs[0].unique_key == "recurring:tick");
        CHECK(triggered == runs[0].id);
        CHECK(r.count("started tick") == 1);
        gate.request_stop();
        REQUIRE(wait_state(client, runs[0].id, job_state::succeeded));
        // Once it has ended, the next occurrence is enqueued again.
        clock->advance(1min); // 12:03
        REQUIRE(test::eventually([&] { return client.list_blocking(ticks).size() == 2; }));
        REQUIRE(wait_state(client, client.list_blocking(ticks)[1].id, job_state::succeeded));
        CHECK(runs_of(r, "tick") ==
              std::vector<std::string>{"started tick", "ended tick", "started tick", "ended tick"});
    } else {
        // Both wait for the key the first one holds, while a job behind them
        // in claim order starts.
        REQUIRE(runs.size() == 3);
        CHECK(triggered == runs[2].id);
        CHECK(runs[1].concurrency_key == "recurring:tick");
        CHECK(runs[2].concurrency_key == "recurring:tick");
        jobs::job_options behind;
        behind.priority = 9;
        client.enqueue_blocking("tick", std::string("marker"), behind);
        REQUIRE(r.wait_for("started marker"));
        CHECK(client.find_blocking(runs[1].id)->state == job_state::available);
        CHECK(client.find_blocking(runs[2].id)->state == job_state::available);
        CHECK(r.count("started tick") == 1);
        // Once it has ended, they run one after the other.
        gate.request_stop();
        REQUIRE(wait_state(client, runs[1].id, job_state::succeeded));
        REQUIRE(wait_state(client, runs[2].id, job_state::succeeded));
        CHECK(runs_of(r, "tick") == std::vector<std::string>{"started tick", "ended tick", "started tick",
                                                             "ended tick", "started tick", "ended tick"});
    }
    host.stop_blocking();
}

TEST_CASE("jobs: storages keep every field of a recurring job", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    jobs::recurring_job r;
    r.id = "nightly";
    r.cron = "30 2 * * *";
    r.zone = "Europe/Berlin";
    r.kind = "k";
    r.args = "{\"a\":1}";
    r.queue = "slow";
    r.priority = 3;
    r.max_attempts = 5;
    r.timeout = 90s;
    r.missed = jobs::missed_policy::run_all;
    r.next_fire = utc(2026, 6, 2, 0, 30);
    r.unique_key = "nightly-report";
    r.unique_states = {job_state::scheduled, job_state::available, job_state::awaiting,
                       job_state::running,   job_state::retryable, job_state::succeeded};
    r.unique_across_kinds = true;
    r.concurrency_key = "reports";
    r.overlap = jobs::overlap_policy::wait;
    store->upsert_recurring(r);
    auto back = store->list_recurring();
    REQUIRE(back.size() == 1);
    CHECK(back[0].queue == "slow");
    CHECK(back[0].priority == 3);
    CHECK(back[0].max_attempts == 5);
    CHECK(back[0].timeout == 90s);
    CHECK(back[0].missed == jobs::missed_policy::run_all);
    CHECK(back[0].unique_key == "nightly-report");
    CHECK(back[0].unique_states.bits() == r.unique_states.bits());
    CHECK(back[0].unique_across_kinds);
    CHECK(back[0].concurrency_key == "reports");
    CHECK(back[0].overlap == jobs::overlap_policy::wait);
    // An update with the same schedule replaces them all but next_fire.
    r.unique_key.clear();
    r.unique_states = jobs::default_unique_states;
    r.unique_across_kinds = false;
    r.concurrency_key.clear();
    r.overlap = jobs::overlap_policy::skip;
    r.next_fire = utc(2026, 6, 3, 0, 30);
    store->upsert_recurring(r);
    back = store->list_recurring();
    REQUIRE(back.size() == 1);
    CHECK(back[0].unique_key.empty());
    CHECK(back[0].unique_states.bits() == jobs::default_unique_states.bits());
    CHECK_FALSE(back[0].unique_across_kinds);
    CHECK(back[0].concurrency_key.empty());
    CHECK(back[0].overlap == jobs::overlap_policy::skip);
    CHECK(back[0].next_fire == utc(2026, 6, 2, 0, 30));
}

TEST_CASE("jobs: every client call, awaited", "[jobs][conformance][client]")
{
    EACH_STORAGE(which, db);
    auto clock = std::make_shared<jobs::manual_time_source>(utc(2026, 6, 1, 12, 0));
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    test::recorder r;
    std::atomic<int> snoozes{0};
    jobs::add_jobs(builder, make_storage(which, db), quick_server(clock))
        .register_kind<std::string>("note", [&](std::string text, jobs::job_context& context) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            if (text == "snooze" && snoozes++ == 0)
                throw jobs::snooze(std::chrono::minutes(10));
            r.add(text + " " + std::to_string(context.id()) + ":" + std::to_string(context.attempt()));
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();

    // Arguments are named before the co_await: see docs/gcc12.md.
    const std::string now_text = "now", later = "later", chained_text = "chained", snooze_text = "snooze",
                      never = "never", hourly = "hourly", cancel_text = "cancel";
    jobs::job_id now_id = 0;
    asio::io_context io;
    std::exception_ptr failure;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto id = co_await client.enqueue("note", now_text);
            now_id = id;
            jobs::job_options options;
            options.priority = 5;
            options.queue = "default";
            auto scheduled = co_await client.schedule("note", later, std::chrono::milliseconds(60'000), options);
            auto found = co_await client.find(scheduled);
            REQUIRE(found);
            CHECK(found->state == job_state::scheduled);
            CHECK(found->priority == 5);
            co_await client.continue_with(id, "note", chained_text);
            co_await client.enqueue("note", snooze_text);
            auto doomed = co_await client.schedule("note", never, std::chrono::milliseconds(60'000));
            co_await client.delete_job(doomed);
            jobs::job_filter deleted_only;
            deleted_only.state = job_state::deleted;
            deleted_only.with_history = true;
            auto listed = co_await client.list(deleted_only);
            REQUIRE(listed.size() == 1);
            CHECK(listed[0].id == doomed);
            CHECK(listed[0].history.back().reason == "deleted by a client");
            auto counts = co_await client.counts();
            CHECK(counts[job_state::deleted] == 1);
            co_await client.add_or_update_recurring("hourly", "0 * * * *", "UTC", "note", hourly);
            auto recurring = co_await client.list_recurring();
            CHECK(recurring.size() == 1);
            auto triggered = co_await client.trigger_recurring("hourly");
            CHECK(triggered > 0);
            const bool removed = co_await client.remove_recurring("hourly");
            CHECK(removed);
            // Requeue a finished job: its attempts start again.
            while ((co_await client.find(id))->state != job_state::succeeded)
                co_await hosting::delay(5ms);
            co_await client.requeue(id);
            auto cancel_me = co_await client.schedule("note", cancel_text, std::chrono::milliseconds(60'000));
            co_await client.cancel(cancel_me);
            auto cancelled = co_await client.find(cancel_me);
            CHECK(cancelled->state == job_state::cancelled);
        },
        [&](std::exception_ptr e) { failure = e; });
    io.run();
    if (failure)
        std::rethrow_exception(failure);

    // The requeued job ran again as a fresh first attempt: same id, attempt 1.
    const auto first_attempt = "now " + std::to_string(now_id) + ":1";
    REQUIRE(test::eventually([&] { return r.count(first_attempt) == 2; }));
    CHECK(r.wait_for("chained " + std::to_string(now_id + 2) + ":1"));
    // The snoozed job waits ten minutes without using an attempt.
    auto all = client.list_blocking(jobs::job_filter{});
    const jobs::job* snoozed = nullptr;
    for (const auto& j : all)
        if (j.args == "\"snooze\"")
            snoozed = &j;
    REQUIRE(snoozed);
    REQUIRE(wait_state(client, snoozed->id, job_state::scheduled));
    CHECK(client.find_blocking(snoozed->id)->attempt == 0);
    clock->advance(std::chrono::minutes(10));
    REQUIRE(r.wait_for("snooze " + std::to_string(snoozed->id) + ":1"));
    host.stop_blocking();
}

TEST_CASE("jobs: the idempotency key is the same for every run of a job and never another job's",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    // What a handler of that claim would be given.
    auto key_of = [](const jobs::job& j) { return jobs::job_context(j, {}, nullptr).idempotency_key(); };
    const auto id = store->enqueue(std::vector<jobs::enqueue_request>{request("k", "{}", 3)}, t0)[0].id;
    jobs::claim_request a{"node-a", {{"default", 1}}, {"k"}, t0 + 10s};
    auto run = store->complete_and_claim({}, a, t0);
    REQUIRE(run.size() == 1);
    const auto key = key_of(run[0]);
    report_started(*store, "node-a", run, t0 + 10s, t0);

    // Node a dies mid-run: the redelivery, the run the key exists for,
    // carries the same key.
    REQUIRE(store->recover_expired(t0 + 11s) == std::vector<jobs::job_id>{id});
    jobs::claim_request b{"node-b", {{"default", 1}}, {"k"}, t0 + 60s};
    run = store->complete_and_claim({}, b, t0 + 12s);
    REQUIRE(run.size() == 1);
    CHECK(run[0].attempt == 2);
    CHECK(key_of(run[0]) == key);
    // So does the retry of a failed attempt.
    std::vector<jobs::completion> failed{{id, 2, jobs::outcome::retry, t0 + 13s, "boom", "retry"}};
    run = store->complete_and_claim(failed, b, t0 + 14s);
    REQUIRE(run.size() == 1);
    CHECK(run[0].attempt == 3);
    CHECK(key_of(run[0]) == key);

    // Unique among the storage's jobs, even once this one is pruned: no
    // later job is given its id, and so its key.
    std::vector<jobs::completion> ok{{id, 3, jobs::outcome::succeeded, {}, {}, "ok"}};
    store->complete_and_claim(ok, {"node-b", {}, {"k"}, t0 + 60s}, t0 + 15s);
    store->prune(job_state::succeeded, t0 + 1h, 10, t0 + 1h);
    const auto later = store->enqueue(std::vector<jobs::enqueue_request>{request("k", "{}")}, t0 + 2h)[0].id;
    CHECK(later != id);
    run = store->complete_and_claim({}, b, t0 + 2h);
    REQUIRE(run.size() == 1);
    CHECK(run[0].id == later);
    CHECK(key_of(run[0]) != key);
    // The newest job is pruned once a newer one exists.
    std::vector<jobs::completion> later_ok{{later, 1, jobs::outcome::succeeded, {}, {}, "ok"}};
    store->complete_and_claim(later_ok, {"node-b", {}, {"k"}, t0 + 3h}, t0 + 2h);
    store->enqueue(std::vector<jobs::enqueue_request>{request("k", "{}")}, t0 + 3h);
    store->prune(job_state::succeeded, t0 + 4h, 10, t0 + 4h);
    CHECK_FALSE(store->find(id));
    CHECK_FALSE(store->find(later));
}

TEST_CASE("jobs: no write transaction takes more than max_rows_per_write rows", "[jobs][conformance][storage]")
{
    SECTION("a backlog of due jobs is promoted in bounded steps, earliest first")
    {
        EACH_STORAGE(which, db);
        auto store = make_storage(which, db);
        const auto t0 = jobs::clock::now();
        const std::size_t n = 2 * jobs::max_rows_per_write + 100;
        std::vector<jobs::enqueue_request> batch;
        for (std::size_t i = 0; i < n; ++i) {
            auto r = request("k", std::to_string(i));
            r.run_at = t0 + std::chrono::seconds(1) + std::chrono::microseconds(i);
            batch.push_back(std::move(r));
        }
        auto ids = store->enqueue(batch, t0);
        const jobs::claim_request nothing{"node", {}, {}, t0 + 60s};
        const auto later = t0 + 10s;
        for (std::size_t step = 1; step <= 3; ++step) {
            store->complete_and_claim({}, nothing, later);
            const auto counts = store->counts();
            CHECK(static_cast<std::size_t>(counts[job_state::available]) ==
                  std::min(n, step * jobs::max_rows_per_write));
            CHECK(static_cast<std::size_t>(counts[job_state::available] + counts[job_state::scheduled]) == n);
            if (step == 1) {
                // Earliest due first.
                CHECK(store->find(ids[jobs::max_rows_per_write - 1].id)->state == job_state::available);
                CHECK(store->find(ids[jobs::max_rows_per_write].id)->state == job_state::scheduled);
                // The rest are due, so a server claims again at once.
                const auto due = store->next_due();
                REQUIRE(due);
                CHECK(*due <= later);
            }
        }
        CHECK_FALSE(store->next_due());
    }
    SECTION("enqueues that pile up are committed in bounded batches, none lost")
    {
        auto store = std::make_shared<failing_storage>();
        std::mutex m;
        std::condition_variable cv;
        bool release = false;
        std::vector<std::size_t> sizes;
        store->on_enqueue = [&](std::size_t size) {
            std::unique_lock lock(m);
            sizes.push_back(size);
            // The first batch waits until the rest have piled up behind it.
            cv.wait(lock, [&] { return release; });
        };
        auto sink = std::make_shared<test::capture_sink>();
        auto builder = test::make_builder(sink);
        jobs::add_jobs(builder, store, quick_server());
        auto host = builder.build();
        auto& client = host.services().get<jobs::client>();
        auto open_the_gate = [&] {
            {
                std::lock_guard lock(m);
                release = true;
            }
            cv.notify_all();
        };
        std::thread first([&] { client.enqueue_blocking("k", 0); });
        // However the test ends, the engine is let go and the thread joined.
        struct gate_guard {
            std::function<void()> open;
            std::thread& t;
            ~gate_guard()
            {
                open();
                if (t.joinable())
                    t.join();
            }
        } guard{open_the_gate, first};
        REQUIRE(test::eventually([&] {
            std::lock_guard lock(m);
            return sizes.size() == 1;
        }));
        const int n = static_cast<int>(2 * jobs::max_rows_per_write + 10);
        asio::io_context io;
        std::atomic<int> stored{0};
        for (int i = 1; i <= n; ++i)
            asio::co_spawn(io, client.enqueue("k", i), [&](std::exception_ptr e, jobs::enqueued) {
                if (!e)
                    ++stored;
            });
        // Each coroutine hands its enqueue to the engine and waits: once
        // poll() has nothing left to run, all of them are queued behind the
        // first batch.
        io.poll();
        open_the_gate();
        first.join();
        io.run();
        CHECK(stored == n);
        std::lock_guard lock(m);
        CHECK(sizes.size() >= 4); // the first, then at least three for the rest
        CHECK(*std::max_element(sizes.begin(), sizes.end()) <= jobs::max_rows_per_write);
        CHECK(std::accumulate(sizes.begin(), sizes.end(), std::size_t{0}) == static_cast<std::size_t>(n) + 1);
    }
}

TEST_CASE("jobs: a job enqueued in this process starts without waiting for a poll", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    // Polls and heartbeats far beyond the test's patience: only the
    // wake-up can start the job in time.
    auto options = quick_server();
    options.poll_interval = std::chrono::hours(1);
    options.heartbeat_interval = std::chrono::hours(1);
    options.lease_duration = std::chrono::hours(3);
    test::recorder r;
    jobs::add_jobs(builder, make_storage(which, db), options)
        .register_kind<int>("ping", [&](int, jobs::job_context&) -> asio::awaitable<void> {
            co_await asio::this_coro::executor;
            r.add("ran");
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    // Once the first job's completion has committed, the server's last claim
    // found nothing and it sleeps: the second job needs the wake-up.
    auto first = client.enqueue_blocking("ping", 1);
    REQUIRE(wait_state(client, first, job_state::succeeded));
    client.enqueue_blocking("ping", 2);
    CHECK(r.wait_for_count(2));
    host.stop_blocking();
}

TEST_CASE("jobs: the server prunes finished jobs past their retention, when prune_if allows, and keeps failed ones",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto clock = std::make_shared<jobs::manual_time_source>(utc(2026, 6, 1, 12, 0));
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto options = quick_server(clock);
    options.retention.succeeded = std::chrono::hours(1);
    options.retention.interval = 50ms;
    // Pruning waits for its turn (a leader, say) until allowed.
    std::atomic<bool> allowed{false};
    std::atomic<int> asked{0};
    options.retention.prune_if = [&] {
        ++asked;
        return allowed.load();
    };
    jobs::kind_options once;
    once.retry.max_attempts = 1;
    test::recorder r;
    jobs::add_jobs(builder, make_storage(which, db), options)
        .register_kind<int>(
            "work",
            [&](int n, jobs::job_context&) -> asio::awaitable<void> {
                co_await asio::this_coro::executor;
                r.add("ran");
                if (n < 0)
                    throw std::runtime_error("negative");
            },
            once);
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    host.start_blocking();
    auto ok = client.enqueue_blocking("work", 1);
    auto bad = client.enqueue_blocking("work", -1);
    REQUIRE(wait_state(client, ok, job_state::succeeded));
    REQUIRE(wait_state(client, bad, job_state::failed));
    clock->advance(std::chrono::hours(2));
    const int before = asked.load();
    REQUIRE(test::eventually([&] { return asked.load() >= before + 3; }));
    CHECK(client.find_blocking(ok));
    allowed = true;
    REQUIRE(test::eventually([&] { return !client.find_blocking(ok); }));
    CHECK(client.find_blocking(bad)->state == job_state::failed);
    // The log line follows the commit that the find above observed.
    CHECK(test::eventually([&] { return sink->has("Pruned 1 finished jobs past their retention"); }));
    host.stop_blocking();
}

namespace {
// A kind bound to its arguments type by the type itself...
struct welcome {
    std::string to;
    static constexpr std::string_view job_kind = "send_welcome";
};
BOOST_DESCRIBE_STRUCT(welcome, (), (to))
} // namespace

// ...and by a specialization, for a type the caller cannot change.
namespace {
struct invoice {
    int number = 0;
};
BOOST_DESCRIBE_STRUCT(invoice, (), (number))
} // namespace
template <>
struct hosting::jobs::kind_name<invoice> {
    static constexpr std::string_view value = "invoice";
};

TEST_CASE("jobs: enqueue_many stores a batch of any kinds in one call, in order, keys honoured, and a kind bound to "
          "its type needs no string",
          "[jobs][conformance][client]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    test::recorder r;
    jobs::add_jobs(builder, store, quick_server())
        .register_kind<welcome>([&](welcome w, jobs::job_context&) -> asio::awaitable<void> {
            r.add("welcome " + w.to);
            co_return;
        })
        .register_kind<invoice>([&](invoice i, jobs::job_context&) -> asio::awaitable<void> {
            r.add("invoice " + std::to_string(i.number));
            co_return;
        })
        .register_kind<int>("count", [&](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();

    // An invalid job anywhere refuses the whole batch at the call, naming it.
    jobs::job_batch bad;
    bad.add("count", 1);
    jobs::job_options no_queue;
    no_queue.queue = "";
    bad.add("count", 2, no_queue);
    CHECK_THROWS_WITH(client.enqueue_many_blocking(bad), Catch::Contains("job 1 of the batch") &&
                                                             Catch::Contains("empty queue name"));
    CHECK(store->counts()[job_state::available] == 0);

    jobs::job_batch batch;
    jobs::job_options keyed;
    keyed.unique_key = "once";
    for (int i = 0; i < 10'000; ++i)
        batch.add("count", i);
    jobs::job_options first; // ahead of the 10,000, which a sanitizer makes slow to drain
    first.priority = -1;
    batch.add(welcome{"ada@example.com"}, first);
    batch.add(invoice{42}, first);
    batch.add("count", -1, keyed);
    batch.add("count", -2, keyed); // the same key within the batch
    batch.add(welcome{"later@example.com"}, {}, jobs::clock::now() + 1h);
    const auto results = client.enqueue_many_blocking(batch);
    REQUIRE(results.size() == 10'005);
    bool in_order = true; // each new job's id after the one before
    for (std::size_t i = 1; i <= 10'002; ++i)
        in_order = in_order && results[i].created && results[i].id > results[i - 1].id;
    CHECK(in_order);
    CHECK(results[10'002].created);
    CHECK_FALSE(results[10'003].created);
    CHECK(results[10'003].id == results[10'002].id);
    CHECK(client.find_blocking(results[10'000])->kind == "send_welcome"); // the stored name
    CHECK(client.find_blocking(results[10'001])->kind == "invoice");
    CHECK(client.find_blocking(results[10'004])->state == job_state::scheduled);
    CHECK(store->counts()[job_state::available] == 10'003);

    // One at a time too, with no string at the call.
    host.start_blocking();
    const auto typed = client.enqueue_blocking(welcome{"grace@example.com"}, first);
    CHECK(client.find_blocking(typed)->kind == "send_welcome");
    REQUIRE(r.wait_for("welcome ada@example.com"));
    REQUIRE(r.wait_for("invoice 42"));
    REQUIRE(r.wait_for("welcome grace@example.com"));
    host.stop_blocking();
}

TEST_CASE("jobs: counts by queue and kind follow every change, and sum to the counts by state",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    auto in = [](std::string queue, std::string kind) {
        auto r = request(std::move(kind), "{}");
        r.queue = std::move(queue);
        return r;
    };
    store->enqueue(std::vector<jobs::enqueue_request>{in("default", "a"), in("default", "a"), in("default", "b"),
                                                       in("mail", "a")},
                   t0);
    const auto claimed = store->complete_and_claim({}, {"n", {{"default", 1}}, {"a"}, t0 + 10s}, t0);
    REQUIRE(claimed.size() == 1);
    store->complete_and_claim(std::vector<jobs::completion>{{claimed[0].id, 1, jobs::outcome::succeeded, {}, {}, "ok"}},
                              {"n", {}, {"a"}, t0 + 10s}, t0 + 1s);
    using row = std::tuple<std::string, std::string, job_state, std::int64_t>;
    auto rows = [&] {
        std::vector<row> out;
        for (const auto& c : store->counts_by_queue_and_kind())
            out.emplace_back(c.queue, c.kind, c.state, c.count);
        std::sort(out.begin(), out.end());
        return out;
    };
    CHECK(rows() == std::vector<row>{{"default", "a", job_state::available, 1},
                                     {"default", "a", job_state::succeeded, 1},
                                     {"default", "b", job_state::available, 1},
                                     {"mail", "a", job_state::available, 1}});
    // Pruned: the row goes (no zero rows), and the sums match counts().
    CHECK(store->prune(job_state::succeeded, t0 + 1h, 10, t0 + 1h) == 1);
    const auto after = rows();
    CHECK(after.size() == 3);
    std::int64_t available = 0;
    for (const auto& [q, k, state, n] : after)
        available += state == job_state::available ? n : 0;
    CHECK(available == store->counts()[job_state::available]);
}

TEST_CASE("jobs: a running server is in the list of nodes with its workers, queues, limits and jobs, and leaves it at stop",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    options.queues = {{"default", 0}, {"mail", 2}};
    jobs::add_jobs(builder, store, options).register_kind<std::string>("hold", until_stopped(r));
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    CHECK(client.list_nodes_blocking().empty());
    const auto before = jobs::clock::now();
    host.start_blocking();
    client.enqueue_blocking("hold", std::string("a"));
    REQUIRE(r.wait_for("started a"));
    // Announced with the renewals (every 100 ms here).
    REQUIRE(test::eventually([&] {
        const auto nodes = client.list_nodes_blocking();
        return nodes.size() == 1 && nodes[0].running == 1;
    }));
    const auto node = client.list_nodes_blocking().at(0);
    CHECK(node.id == "test-node");
    CHECK(node.workers == 4);
    CHECK(node.queues == std::vector<std::string>{"default", "mail"});
    CHECK(node.queue_limits == std::vector<std::size_t>{0, 2});
    CHECK(node.pid == ::getpid());
    CHECK_FALSE(node.host.empty());
    CHECK(node.started_at >= before - 1s);
    CHECK(node.heartbeat_at >= node.started_at);
    host.stop_blocking();
    CHECK(test::eventually([&] { return store->list_nodes().empty(); }));
}

TEST_CASE("jobs: a paused queue is not claimed by any node until it is resumed", "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    test::recorder r;
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto options = quick_server();
    options.queues = {{"default", 0}, {"mail", 0}};
    jobs::add_jobs(builder, store, options).register_kind<std::string>("note", [&](std::string text, jobs::job_context&) -> asio::awaitable<void> {
        r.add(text);
        co_return;
    });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    CHECK_THROWS_AS(client.pause_queue_blocking(""), std::invalid_argument);
    client.pause_queue_blocking("mail");
    client.pause_queue_blocking("mail"); // twice changes nothing
    CHECK(client.paused_queues_blocking() == std::vector<std::string>{"mail"});
    host.start_blocking();
    jobs::job_options mail;
    mail.queue = "mail";
    const auto held = client.enqueue_blocking("note", std::string("mail"), mail);
    // Enqueued after it, in a queue claimed after it: once this one ran,
    // the server has claimed past the paused queue.
    const auto later = client.enqueue_blocking("note", std::string("default"));
    REQUIRE(wait_state(client, later, job_state::succeeded));
    CHECK(client.find_blocking(held)->state == job_state::available);
    CHECK_FALSE(r.contains("mail"));
    // Another node (a storage call, as from another process) sees it paused too.
    const auto none = store->complete_and_claim({}, {"other", {{"mail", 10}}, {"note"}, jobs::clock::now() + 10s},
                                                jobs::clock::now());
    CHECK(none.empty());
    client.resume_queue_blocking("mail");
    CHECK(client.paused_queues_blocking().empty());
    REQUIRE(wait_state(client, held, job_state::succeeded));
    CHECK(r.contains("mail"));
    host.stop_blocking();
}

TEST_CASE("jobs: a paused recurring job fires nothing, an update keeps it paused, and a resume starts from the next "
          "occurrence",
          "[jobs][conformance][recurring]")
{
    EACH_STORAGE(which, db);
    auto clock = std::make_shared<jobs::manual_time_source>(utc(2026, 6, 1, 12, 0) + 30s);
    auto store = make_storage(which, db);
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    test::recorder r;
    jobs::add_jobs(builder, store, quick_server(clock))
        .register_kind<std::string>("tick", [&](std::string name, jobs::job_context&) -> asio::awaitable<void> {
            r.add(name);
            co_return;
        });
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();
    // Both every minute; "witness" shows when the scheduler has passed.
    client.add_or_update_recurring_blocking("paused", "* * * * *", "UTC", "tick", std::string("paused"));
    client.add_or_update_recurring_blocking("witness", "* * * * *", "UTC", "tick", std::string("witness"));
    CHECK_THROWS_AS(client.pause_recurring_blocking("nope"), std::invalid_argument);
    client.pause_recurring_blocking("paused");
    // A redeploy updates it: it stays paused.
    client.add_or_update_recurring_blocking("paused", "* * * * *", "UTC", "tick", std::string("paused"));
    auto defs = client.list_recurring_blocking();
    REQUIRE(defs.size() == 2);
    CHECK(defs[0].id == "paused");
    CHECK(defs[0].paused);
    CHECK_FALSE(defs[1].paused);
    host.start_blocking();
    clock->advance(5min); // five occurrences of each
    REQUIRE(r.wait_for("witness"));
    CHECK_FALSE(r.contains("paused"));
    // Resumed: from the next occurrence after now, not the five it missed.
    client.resume_recurring_blocking("paused");
    defs = client.list_recurring_blocking();
    CHECK_FALSE(defs[0].paused);
    CHECK(defs[0].next_fire == utc(2026, 6, 1, 12, 6));
    clock->advance(1min);
    REQUIRE(r.wait_for("paused"));
    REQUIRE(r.wait_for_count(3)); // witness twice (run_once for the five), paused once
    jobs::job_filter f;
    f.kind = "tick";
    host.stop_blocking();
    std::size_t paused_runs = 0;
    for (const auto& j : store->list(f))
        paused_runs += j.recurring_id == "paused";
    CHECK(paused_runs == 1);
}

TEST_CASE("jobs: storages list jobs newest first or oldest first, a page after another by keyset",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < 7; ++i)
        batch.push_back(request(i % 2 == 0 ? "even" : "odd", std::to_string(i)));
    const auto ids = store->enqueue(batch, t0);
    REQUIRE(ids.size() == 7);
    const auto id_list = [](const std::vector<jobs::job>& jobs) {
        std::vector<jobs::job_id> out;
        for (const auto& j : jobs)
            out.push_back(j.id);
        return out;
    };

    jobs::job_filter newest;
    newest.limit = 3;
    newest.newest_first = true;
    const auto first = store->list(newest);
    CHECK(id_list(first) == std::vector{ids[6].id, ids[5].id, ids[4].id});
    newest.before = first.back().id;
    CHECK(id_list(store->list(newest)) == std::vector{ids[3].id, ids[2].id, ids[1].id});
    newest.before = ids[1].id;
    CHECK(id_list(store->list(newest)) == std::vector{ids[0].id});

    jobs::job_filter oldest;
    oldest.kind = "even";
    oldest.limit = 2;
    oldest.after = ids[0].id;
    CHECK(id_list(store->list(oldest)) == std::vector{ids[2].id, ids[4].id});
    jobs::job_filter odd_newest;
    odd_newest.kind = "odd";
    odd_newest.newest_first = true;
    odd_newest.before = ids[5].id;
    CHECK(id_list(store->list(odd_newest)) == std::vector{ids[3].id, ids[1].id});
}

TEST_CASE("jobs: storages list a job's continuations in every state, and no other job", "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    const auto parents = store->enqueue(std::vector{request("p", "1"), request("p", "2")}, t0);
    std::vector<jobs::enqueue_request> children;
    for (int i = 0; i < 3; ++i) {
        auto child = request("child", std::to_string(i));
        child.parent_id = parents[i == 2 ? 1 : 0].id;
        children.push_back(child);
    }
    const auto ids = store->enqueue(children, t0);
    REQUIRE(ids.size() == 3);
    // One of them no longer awaiting: listed all the same.
    CHECK(store->change_state(ids[1].id, job_state::deleted, "by hand", t0) == job_state::deleted);

    jobs::job_filter f;
    f.parent = parents[0].id;
    std::vector<jobs::job_id> found;
    for (const auto& j : store->list(f)) {
        CHECK(j.parent_id == parents[0].id);
        found.push_back(j.id);
    }
    CHECK(found == std::vector{ids[0].id, ids[1].id});
    f.parent = ids[0].id;
    CHECK(store->list(f).empty());
}

TEST_CASE("jobs: storages change many jobs in one call, refusing each job that may not change and doing the rest",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    const auto ids = store->enqueue(std::vector{request("k", "1"), request("k", "2"), request("k", "3")}, t0);
    store->change_state(ids[2].id, job_state::cancelled, "before", t0);
    const std::vector<jobs::job_id> targets{ids[0].id, 999'999, ids[1].id, ids[2].id};
    const auto results = store->change_states(targets, job_state::deleted, "bulk", t0);
    REQUIRE(results.size() == 4);
    CHECK(results[0].id == ids[0].id);
    CHECK(results[0].state == job_state::deleted);
    CHECK(results[1].id == 999'999);
    CHECK_FALSE(results[1].state);
    CHECK_THAT(results[1].error, Catch::Contains("999999"));
    CHECK(results[2].state == job_state::deleted);
    CHECK(results[3].state == job_state::deleted); // cancelled, then deleted
    for (const auto& id : ids)
        CHECK(store->find(id.id)->state == job_state::deleted);

    // A requeue of a job that has not ended is refused; the ended ones go.
    const auto more = store->enqueue(std::vector{request("k", "4")}, t0);
    const auto again = store->change_states(std::vector{ids[0].id, more[0].id}, job_state::available, "again", t0);
    CHECK(again[0].state == job_state::available);
    CHECK_FALSE(again[1].state);
    CHECK_FALSE(again[1].error.empty());
    CHECK(store->find(ids[0].id)->history.back().reason == "again");
}

TEST_CASE("jobs: storages keep a job's text and an attempt's error exactly, one job or many at once",
          "[jobs][conformance][storage]")
{
    EACH_STORAGE(which, db);
    auto store = make_storage(which, db);
    const auto t0 = jobs::clock::now();
    // What a JSON encoding must escape, and what it must not change.
    const std::string odd = "quote \" backslash \\ slash / tab \t newline \n bell \x07 \xc3\xbc \xe2\x82\xac \xf0\x9f\x98\x80";
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < 6; ++i) {
        auto r = request("k" + odd, "{\"text\":\"" + std::to_string(i) + odd + "\"}", 2);
        r.queue = "q" + odd;
        if (i % 2 == 1)
            r.concurrency_key = "c" + std::to_string(i) + odd;
        if (i == 3)
            r.unique_key = "u" + odd; // a job that goes on its own, between the others
        r.reason = "enqueued " + odd;
        batch.push_back(r);
    }
    const auto ids = store->enqueue(batch, t0);
    REQUIRE(ids.size() == batch.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
        CHECK(ids[i].created);
        if (i > 0)
            CHECK(ids[i].id > ids[i - 1].id);
        const auto j = store->find(ids[i].id);
        REQUIRE(j);
        CHECK(j->kind == batch[i].kind);
        CHECK(j->queue == batch[i].queue);
        CHECK(j->args == batch[i].args);
        CHECK(j->concurrency_key == batch[i].concurrency_key);
        CHECK(j->unique_key == batch[i].unique_key);
        REQUIRE(j->history.size() == 1);
        CHECK(j->history[0].reason == batch[i].reason);
    }

    // Completed all at once: retries with odd errors, and successes.
    jobs::claim_request claim{"node" + odd, {{"q" + odd, 10}}, {"k" + odd}, t0 + 60s};
    const auto claimed = store->complete_and_claim({}, claim, t0);
    REQUIRE(claimed.size() == batch.size());
    std::vector<jobs::completion> done;
    for (const auto& j : claimed) {
        const bool retry = j.id % 2 == 0;
        done.push_back({j.id, j.attempt, retry ? jobs::outcome::retry : jobs::outcome::succeeded, t0 + 1s,
                        retry ? "error " + std::to_string(j.id) + odd : std::string(), "ended " + odd});
    }
    jobs::claim_request none{"node" + odd, {}, {"k" + odd}, t0 + 60s};
    store->complete_and_claim(done, none, t0 + 1ms);
    for (const auto& d : done) {
        const auto j = store->find(d.id);
        REQUIRE(j);
        CHECK(j->state == (d.what == jobs::outcome::retry ? job_state::retryable : job_state::succeeded));
        CHECK(j->last_error == d.error);
        CHECK(j->history.back().reason == d.reason);
        CHECK(j->history.back().error == d.error);
    }
}

TEST_CASE("jobs: a handler's error that is not UTF-8 is kept with each bad byte replaced, and the job ends as it should",
          "[jobs][conformance][server]")
{
    EACH_STORAGE(which, db);
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::kind_options once;
    once.retry.max_attempts = 1;
    jobs::add_jobs(builder, make_storage(which, db), quick_server())
        .register_kind<int>(
            "bytes",
            [](int, jobs::job_context&) -> asio::awaitable<void> {
                throw std::runtime_error("read \xff\xfe from the device");
                co_return;
            },
            once);
    auto host = builder.build();
    host.start_blocking();
    auto& client = host.services().get<jobs::client>();
    const auto id = client.enqueue_blocking("bytes", 1);
    REQUIRE(wait_state(client, id, job_state::failed));
    const auto j = client.find_blocking(id);
    CHECK(j->last_error == "read \xEF\xBF\xBD\xEF\xBF\xBD from the device");
    CHECK(j->history.back().error == j->last_error);
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}
