// The jobs dashboard on a big store: a SQLite file (or a PostgreSQL
// schema) of the given number of jobs (1,000,000 by default), and the time
// each page and search of the dashboard's JSON takes over HTTP on loopback,
// beside the storage call it rests on, made directly, as the baseline.
//
//   dashboard_bench [jobs=1000000] [requests=20] [sqlite|postgresql]
//
// PostgreSQL: the server HOSTING_BENCH_POSTGRES names (a libpq connection
// string), or else a durable one the program starts in the current
// directory (Debian's postgresql); the schema is dropped at the end.
#include "support/bench_common.hpp"
#include "support/http_get.hpp"
#ifdef HOSTING_POSTGRES_SERVER
#include "support/postgres_server.hpp"
#include <hosting/jobs/postgres_storage.hpp>
#include <libpq-fe.h>
#endif

#include <hosting/http/server.hpp>
#include <hosting/jobs/dashboard.hpp>
#include <hosting/jobs/server.hpp>
#include <hosting/jobs/sqlite_storage.hpp>


#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace asio = boost::asio;
namespace jobs = hosting::jobs;
using bench::clock_type;
using bench::with_commas;

namespace {

const char* const kinds[] = {"send_email", "resize", "publish", "report", "invoice",
                             "sync", "index", "notify", "export", "cleanup"};

using bench::http_get;

struct timing {
    double p50 = 0;
    double max = 0;
};

timing measure(std::size_t n, const std::function<void()>& fn)
{
    std::vector<double> ms;
    for (std::size_t i = 0; i < n; ++i) {
        const auto began = clock_type::now();
        fn();
        ms.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - began).count());
    }
    std::sort(ms.begin(), ms.end());
    return {ms[ms.size() / 2], ms.back()};
}

} // namespace

int main(int argc, char** argv)
{
    const std::size_t count = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1'000'000;
    const std::size_t requests = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 20;
    const std::string which = argc > 3 ? argv[3] : "sqlite";
    const auto path = (std::filesystem::current_path() / ("hosting-dashboard-" + std::to_string(::getpid()) + ".db"))
                          .string();
    std::shared_ptr<jobs::storage> store;
    std::string where = "SQLite file in the current directory";
#ifdef HOSTING_POSTGRES_SERVER
    postgres_server own((std::filesystem::current_path() / ("hosting-dashboard-pg-" + std::to_string(::getpid())))
                            .string(),
                        true);
    std::string conninfo;
    const std::string schema = "bench_dashboard_" + std::to_string(::getpid());
    // Runs one statement on a connection of its own (the setup and the end).
    const auto sql = [&](const std::string& text) {
        PGconn* c = PQconnectdb(conninfo.c_str());
        PQsetNoticeProcessor(c, [](void*, const char*) {}, nullptr); // "drop cascades to ..."
        PGresult* r = PQexec(c, text.c_str());
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
            std::fprintf(stderr, "dashboard_bench: %s: %s", text.c_str(), PQerrorMessage(c));
        PQclear(r);
        PQfinish(c);
    };
    if (which == "postgresql") {
        conninfo = bench_postgres(own);
        if (conninfo.empty())
            return 0;
        store = std::make_shared<jobs::postgres_storage>(conninfo, jobs::postgres_options{.schema = schema});
        where = "PostgreSQL, durable, on loopback";
    }
#endif
    if (!store) {
        if (which != "sqlite") {
            std::fprintf(stderr, "dashboard_bench: no storage '%s' (sqlite, or postgresql where libpq is)\n",
                         which.c_str());
            return 2;
        }
        std::filesystem::remove(path);
        store = std::make_shared<jobs::sqlite_storage>(path);
    }
    {
        const auto began = clock_type::now();
        std::vector<jobs::enqueue_request> batch;
        for (std::size_t i = 0; i < count; ++i) {
            jobs::enqueue_request r;
            r.kind = kinds[i % 10];
            r.queue = i % 4 == 0 ? "slow" : "default";
            r.args = "{\"customer\":" + std::to_string(i * 7919 % 100'000) + ",\"note\":\"order " +
                     std::to_string(i) + "\"}";
            batch.push_back(std::move(r));
            if (batch.size() == 10'000 || i + 1 == count) {
                store->enqueue(batch, jobs::clock::now());
                batch.clear();
            }
        }
        // Nothing runs: the figures are of a store at rest.
        store->set_queue_paused("default", true, jobs::clock::now());
        store->set_queue_paused("slow", true, jobs::clock::now());
        // Continuations here and there, as the job page reads them.
        std::vector<jobs::enqueue_request> children;
        for (std::size_t i = 1; i <= count; i += 1000) {
            jobs::enqueue_request r;
            r.kind = "publish";
            r.args = "{}";
            r.parent_id = static_cast<jobs::job_id>(i);
            children.push_back(std::move(r));
        }
        store->enqueue(children, jobs::clock::now());
#ifdef HOSTING_POSTGRES_SERVER
        // The statistics autovacuum would gather on a table that settled.
        if (which == "postgresql")
            sql("VACUUM ANALYZE \"" + schema + "\".jobs");
#endif
        std::printf("dashboard_bench: %s jobs stored in %.1f s (%s)\n", with_commas(static_cast<double>(count)).c_str(),
                    std::chrono::duration<double>(clock_type::now() - began).count(), where.c_str());
    }

    auto builder = bench::quiet_builder();
    auto& http = hosting::http::add_http_server(builder);
    http.options().port = 0;
    jobs::server_options options;
    options.queues = {{"default"}, {"slow"}};
    auto registration = jobs::add_jobs(builder, store, options);
    for (const char* kind : kinds)
        registration.register_kind<int>(kind, [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
    jobs::add_jobs_dashboard(builder);
    auto host = builder.build();
    host.start_blocking();
    const auto port = host.services().get<hosting::http::server>().port();
    // The poller's first reading, so that the overview has its counts.
    while (http_get(port, "/jobs/api/overview").second.find("\"ready\":true") == std::string::npos)
        std::this_thread::sleep_for(std::chrono::milliseconds(50));

    const auto middle = static_cast<jobs::job_id>(count / 2);
    struct page {
        const char* label;
        std::string target;
        std::function<void()> baseline; // the storage call it rests on, or none
    };
    const std::vector<page> pages = {
        {"page (HTML)", "/jobs", {}},
        {"overview (counts, queues, nodes)", "/jobs/api/overview", [&] { (void)store->counts(); }},
        {"newest 50 jobs", "/jobs/api/jobs",
         [&] { (void)store->list({.limit = 51, .newest_first = true}); }},
        {"50 available jobs, page at the middle", "/jobs/api/jobs?state=available&before=" + std::to_string(middle),
         [&] {
             jobs::job_filter f;
             f.state = jobs::job_state::available;
             f.limit = 51;
             f.newest_first = true;
             f.before = middle;
             (void)store->list(f);
         }},
        {"failed jobs (none)", "/jobs/api/jobs?state=failed", {}},
        {"filter by kind", "/jobs/api/jobs?kind=invoice", {}},
        {"text in the arguments (rare)", "/jobs/api/jobs?q=%22customer%22%3A4242%2C", {}},
        {"text in the arguments (absent)", "/jobs/api/jobs?q=nowhere", {}},
        {"a job with its history and continuations", "/jobs/api/job?id=" + std::to_string(middle + 1),
         [&] { (void)store->find(middle + 1, true); }},
    };
    for (const auto& p : pages) {
        unsigned status = 0;
        const auto t = measure(requests, [&] { status = http_get(port, p.target).first; });
        std::printf("%-40s %6.1f ms p50, %6.1f ms max (HTTP %u)", p.label, t.p50, t.max, status);
        if (p.baseline) {
            const auto b = measure(requests, p.baseline);
            std::printf("; the storage call alone %6.1f ms p50", b.p50);
        }
        std::printf("\n");
    }
    host.stop_blocking();
    store.reset();
#ifdef HOSTING_POSTGRES_SERVER
    if (which == "postgresql") {
        sql("DROP SCHEMA \"" + schema + "\" CASCADE");
        return 0;
    }
#endif
    for (const char* suffix : {"", "-wal", "-shm"})
        std::filesystem::remove(path + suffix);
    return 0;
}
