// Many nodes on one PostgreSQL: the drain of one node and of three (each a
// host with 2 workers and connections of its own), the commits each job
// cost (pg_stat_database), and enqueue-to-start across nodes, beside a bare
// SKIP LOCKED loop measured in the same run: one connection per node,
// claims of the engine's size (2 workers x the default prefetch) fused with
// the previous batch's completion in one transaction, no engine, no handler.
//
//   postgres_nodes [jobs=50000] [latency_samples=500]
//
// Where PgBouncer is installed, the drains again through one in transaction
// mode (postgres_options::transaction_pooling): statements unprepared, the
// settings in each transaction, no LISTEN.
//
// The server HOSTING_BENCH_POSTGRES names, or else one the program starts in
// the current directory with tests/tools/postgres-server, durable (fsync
// on, commits synchronous).
#include "support/bare_notify.hpp"
#include "support/bench_common.hpp"
#include "support/postgres_server.hpp"

#include <hosting/jobs/postgres_storage.hpp>
#include <hosting/jobs/server.hpp>

#include <libpq-fe.h>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace jobs = hosting::jobs;
using namespace std::chrono_literals;
using bench::clock_type;
using bench::with_commas;

namespace {

const std::size_t claim_size = 2 * hosting::jobs::server_options{}.prefetch; // the engine's: 2 workers

struct connection {
    PGconn* c;
    explicit connection(const std::string& conninfo) : c(PQconnectdb(conninfo.c_str()))
    {
        if (PQstatus(c) != CONNECTION_OK) {
            std::fprintf(stderr, "postgres_nodes: cannot connect: %s", PQerrorMessage(c));
            std::exit(1);
        }
        PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr);
    }
    ~connection() { PQfinish(c); }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;

    // Runs `sql`; the first column of each row.
    std::vector<std::int64_t> exec(const std::string& sql) const
    {
        std::vector<std::int64_t> out;
        PGresult* r = PQexec(c, sql.c_str());
        const auto status = PQresultStatus(r);
        if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
            std::fprintf(stderr, "postgres_nodes: %s: %s", sql.substr(0, 80).c_str(), PQresultErrorMessage(r));
            std::exit(1);
        }
        for (int i = 0; i < PQntuples(r); ++i)
            out.push_back(std::strtoll(PQgetvalue(r, i, 0), nullptr, 10));
        PQclear(r);
        return out;
    }
};

// Commits on the database so far, every backend's counted: a backend
// reports its own when it ends, so the callers close theirs first and this
// waits for them to be gone. Behind a pooler they do not end: a backend
// reports what it has not yet after 10 s idle, so `pooled` waits that out.
std::int64_t commits(const std::string& conninfo, bool pooled = false)
{
    connection c(conninfo);
    if (pooled) {
        std::this_thread::sleep_for(11s);
        return c.exec("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").at(0);
    }
    for (int i = 0; i < 500; ++i) {
        const auto others = c.exec("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                   "AND pid <> pg_backend_pid() AND backend_type = 'client backend'");
        if (others.at(0) == 0)
            break;
        std::this_thread::sleep_for(10ms);
    }
    return c.exec("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()").at(0);
}

void print_drain(const std::string& label, std::size_t jobs, double seconds, std::int64_t commit_count)
{
    std::printf("%-34s drain: %9s jobs/s, %.3f commits per job\n", label.c_str(),
                with_commas(static_cast<double>(jobs) / seconds).c_str(),
                static_cast<double>(commit_count) / static_cast<double>(jobs));
}

void run_bare(const std::string& conninfo, std::size_t nodes, std::size_t count)
{
    {
        connection setup(conninfo);
        setup.exec("DROP TABLE IF EXISTS bench_bare; CREATE TABLE bench_bare (id bigserial PRIMARY KEY, "
                   "state int NOT NULL, owner text, args text NOT NULL)");
        setup.exec("CREATE INDEX bench_bare_ready ON bench_bare (id) WHERE state = 0");
        setup.exec("INSERT INTO bench_bare (state, args) SELECT 0, '0' FROM generate_series(1, " +
                   std::to_string(count) + ")");
        setup.exec("VACUUM ANALYZE bench_bare");
    }
    const auto before = commits(conninfo);
    const auto began = clock_type::now();
    std::vector<std::thread> threads;
    for (std::size_t n = 0; n < nodes; ++n)
        threads.emplace_back([&conninfo, n] {
            connection c(conninfo);
            const std::string owner = "'node-" + std::to_string(n) + "'";
            std::vector<std::int64_t> previous;
            for (;;) {
                std::string done = "{";
                for (auto id : previous) {
                    if (done.size() > 1)
                        done += ',';
                    done += std::to_string(id);
                }
                done += "}";
                // The previous batch's completion and the next claim, in
                // one transaction and one round trip.
                PGresult* r = nullptr;
                PQsendQuery(c.c, ("BEGIN; UPDATE bench_bare SET state = 2 WHERE id = ANY('" + done +
                                  "'::bigint[]); UPDATE bench_bare SET state = 1, owner = " + owner +
                                  " WHERE id IN (SELECT id FROM bench_bare WHERE state = 0 ORDER BY id LIMIT " +
                                  std::to_string(claim_size) + " FOR UPDATE SKIP LOCKED) RETURNING id; COMMIT")
                                     .c_str());
                previous.clear();
                while ((r = PQgetResult(c.c)) != nullptr) {
                    if (PQresultStatus(r) == PGRES_TUPLES_OK)
                        for (int i = 0; i < PQntuples(r); ++i)
                            previous.push_back(std::strtoll(PQgetvalue(r, i, 0), nullptr, 10));
                    else if (PQresultStatus(r) != PGRES_COMMAND_OK) {
                        std::fprintf(stderr, "postgres_nodes: bare loop: %s", PQresultErrorMessage(r));
                        std::exit(1);
                    }
                    PQclear(r);
                }
                if (previous.empty())
                    break;
            }
        });
    for (auto& t : threads)
        t.join();
    const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
    const auto after = commits(conninfo);
    print_drain("bare SKIP LOCKED, " + std::to_string(nodes) + (nodes == 1 ? " connection" : " connections"),
                count, seconds, after - before);
    connection(conninfo).exec("DROP TABLE bench_bare");
}

struct cluster {
    bench::progress p;
    std::vector<std::unique_ptr<hosting::host>> hosts;

    cluster(const std::string& conninfo, const jobs::postgres_options& storage_options, std::size_t nodes)
    {
        for (std::size_t n = 0; n < nodes; ++n) {
            auto builder = bench::quiet_builder();
            jobs::server_options options;
            options.workers = 2;
            options.poll_interval = 1s;
            options.node_id = "node-" + std::to_string(n);
            jobs::add_jobs(builder, std::make_shared<jobs::postgres_storage>(conninfo, storage_options), options)
                .register_kind<int>("noop", [this](int, jobs::job_context&) -> asio::awaitable<void> {
                    p.add();
                    co_return;
                });
            hosts.push_back(std::make_unique<hosting::host>(builder.build()));
        }
    }
    void start()
    {
        for (auto& h : hosts)
            h->start_blocking();
    }
    void stop()
    {
        for (auto& h : hosts)
            h->stop_blocking();
        hosts.clear(); // their connections closed: their commits reported
    }
};

// `pooled`: the nodes' storages through that PgBouncer in transaction mode;
// the drain alone then, as their enqueue-to-start is the poll's.
void run_engine(const std::string& conninfo, std::size_t nodes, std::size_t count, std::size_t samples,
                const std::string& pooled = {})
{
    const std::string schema = "bench_nodes_" + std::to_string(::getpid()) + "_" + std::to_string(nodes);
    const jobs::postgres_options storage_options{.schema = schema, .transaction_pooling = !pooled.empty()};
    const std::string& via = pooled.empty() ? conninfo : pooled;
    auto other = std::make_shared<jobs::postgres_storage>(via, storage_options);
    {
        std::vector<jobs::enqueue_request> batch;
        for (std::size_t i = 0; i < count; ++i) {
            jobs::enqueue_request r;
            r.kind = "noop";
            r.queue = "default";
            r.args = "0";
            batch.push_back(std::move(r));
            if (batch.size() == 10'000 || i + 1 == count) {
                other->enqueue(batch, jobs::clock::now());
                batch.clear();
            }
        }
    }
    const std::string label = std::string(pooled.empty() ? "postgresql, " : "via PgBouncer (transaction), ") +
                              std::to_string(nodes) + (nodes == 1 ? " node" : " nodes");
    {
        other.reset(); // its connections too are closed before the count
        const auto before = commits(conninfo, !pooled.empty());
        cluster c(via, storage_options, nodes);
        const auto began = clock_type::now();
        c.start();
        // Until the last completion has committed: the storage counts every
        // job succeeded. Read every 200 us once the last handler started,
        // each read a commit of its own, which the figure leaves out.
        c.p.wait_for(count);
        std::int64_t reads = 1;
        {
            connection poll(conninfo);
            const std::string succeeded =
                "SELECT coalesce(sum(n), 0) FROM \"" + schema + "\".job_counts WHERE state = " +
                std::to_string(static_cast<int>(jobs::job_state::succeeded));
            for (; poll.exec(succeeded).at(0) < static_cast<std::int64_t>(count); ++reads)
                std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        const double seconds = std::chrono::duration<double>(clock_type::now() - began).count();
        c.stop();
        print_drain(label + " (2 workers each)", count, seconds, commits(conninfo, !pooled.empty()) - before - reads);
    }
    if (!pooled.empty()) {
        connection(conninfo).exec("DROP SCHEMA \"" + schema + "\" CASCADE");
        return;
    }

    // Another node's enqueue, one job at a time, to an idle cluster: the
    // previous job's completion has committed before the next is sent.
    other = std::make_shared<jobs::postgres_storage>(conninfo, storage_options);
    cluster c(conninfo, storage_options, nodes);
    c.start();
    std::vector<double> micros;
    for (std::size_t i = 0; i < samples; ++i) {
        std::size_t before;
        {
            std::lock_guard lock(c.p.mutex);
            before = c.p.done;
        }
        jobs::enqueue_request r;
        r.kind = "noop";
        r.queue = "default";
        r.args = "0";
        const auto sent = clock_type::now();
        const auto id = other->enqueue(std::span(&r, 1), jobs::clock::now()).at(0).id;
        c.p.wait_for(before + 1);
        const auto started = clock_type::time_point(clock_type::duration(c.p.last_start_ns.load()));
        micros.push_back(std::chrono::duration<double, std::micro>(started - sent).count());
        for (;;) {
            const auto j = other->find(id, false);
            if (j && j->state == jobs::job_state::succeeded)
                break;
            std::this_thread::sleep_for(100us);
        }
        std::this_thread::sleep_for(2ms);
    }
    std::sort(micros.begin(), micros.end());
    std::printf("%-34s other node's enqueue-to-start: p50 %6.0f us, p99 %6.0f us\n", label.c_str(),
                micros[micros.size() / 2], micros[micros.size() * 99 / 100]);
    c.stop();
    other.reset();
    connection(conninfo).exec("DROP SCHEMA \"" + schema + "\" CASCADE");
}

// The bare queue's enqueue-to-claim across connections, on an idle
// consumer (support/bare_notify.hpp).
void run_bare_notify(const std::string& conninfo, std::size_t samples)
{
    const auto micros = bench::bare_notify_latencies(conninfo, samples, std::chrono::milliseconds(2));
    std::printf("%-34s other node's enqueue-to-claim: p50 %6.0f us, p99 %6.0f us\n", "bare NOTIFY + SKIP LOCKED",
                micros[micros.size() / 2], micros[micros.size() * 99 / 100]);
}

} // namespace

int main(int argc, char** argv)
{
    const std::size_t count = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 50'000;
    const std::size_t samples = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 500;
    postgres_server own((std::filesystem::current_path() / ("hosting-nodes-pg-" + std::to_string(::getpid()))).string(),
                        true);
    const std::string conninfo = bench_postgres(own);
    if (conninfo.empty())
        return 0;
    std::printf("postgres_nodes: %zu no-op jobs, %zu latency samples, claims of %zu\n", count, samples, claim_size);
    for (const std::size_t nodes : {1, 3}) {
        run_bare(conninfo, nodes, count);
        run_engine(conninfo, nodes, count, samples);
    }
    run_bare_notify(conninfo, samples);
    if (const auto pooled = own.pooled_conninfo(); !pooled.empty())
        for (const std::size_t nodes : {1, 3})
            run_engine(conninfo, nodes, count, samples, pooled);
    return 0;
}
