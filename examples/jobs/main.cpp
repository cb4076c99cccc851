// Persistent background jobs on a SQLite file (or PostgreSQL): fire and
// forget, scheduled, chained and recurring jobs that survive a crash.
//
//   jobs                                   # the demo: enqueue, schedule, chain, recur; stops when done
//   jobs --Jobs:Mode=enqueue --Jobs:Count=10000   # only enqueue N jobs of kind "record"
//   jobs --Jobs:Mode=work                  # only run jobs, until none is left
//   jobs --Jobs:Mode=serve                 # the demo's jobs, then serve the dashboard at
//                                          # http://127.0.0.1:8081/jobs until Ctrl+C
//   jobs --Jobs:Storage=/var/lib/app/jobs.db ...          # a SQLite file (default: jobs.db)
//   jobs --Jobs:Storage=postgresql://user@db1/app ...     # PostgreSQL, for many nodes
//
// Kill it with kill -9 at any moment and start it again: every job that was
// enqueued runs to the end (jobs that were running when it died run again
// once their lease expires: delivery is at least once).
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/coordination/coordination.hpp>
#include <hosting/coordination/open_lease_store.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>
#include <hosting/http/server.hpp>
#include <hosting/jobs/dashboard.hpp>
#include <hosting/jobs/open_storage.hpp>
#include <hosting/jobs/server.hpp>

#include <boost/asio/this_coro.hpp>
#include <boost/describe/class.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include <unistd.h>

namespace asio = boost::asio;
namespace jobs = hosting::jobs;
using namespace std::chrono_literals;

struct email {
    std::string to;
    std::string subject;
};
BOOST_DESCRIBE_STRUCT(email, (), (to, subject))

struct image {
    std::string path;
    int width = 0;
};
BOOST_DESCRIBE_STRUCT(image, (), (path, width))

// Watches the storage and stops the program once no work is left (with
// --Jobs:StopWhenDone, the default outside the demo's recurring part).
class stop_when_done : public hosting::background_service {
public:
    stop_when_done(hosting::service_provider& provider, std::size_t recurring_runs)
        : client_(provider.get<jobs::client>()),
          lifetime_(provider.get<hosting::application_lifetime>()),
          recurring_runs_(recurring_runs)
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        for (;;) {
            co_await hosting::delay(200ms, stopping);
            auto counts = co_await client_.counts();
            const auto pending = counts[jobs::job_state::available] + counts[jobs::job_state::running] +
                                 counts[jobs::job_state::scheduled] + counts[jobs::job_state::retryable] +
                                 counts[jobs::job_state::awaiting];
            std::size_t recurring_done = 0;
            if (recurring_runs_ > 0) {
                jobs::job_filter f;
                f.kind = "report";
                f.state = jobs::job_state::succeeded;
                recurring_done = (co_await client_.list(f)).size();
            }
            if (pending == 0 && recurring_done >= recurring_runs_) {
                service_logger()->info("No work left: {} succeeded, {} failed", counts[jobs::job_state::succeeded],
                                       counts[jobs::job_state::failed]);
                if (recurring_runs_ > 0)
                    co_await client_.remove_recurring("report");
                lifetime_.stop_application();
                co_return;
            }
        }
    }

private:
    jobs::client& client_;
    hosting::application_lifetime& lifetime_;
    std::size_t recurring_runs_;
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    auto& config = builder.configuration();
    const auto mode = config.get<std::string>("Jobs:Mode", "demo");
    jobs::server_options server;
    server.workers = config.get<std::size_t>("Jobs:Workers", 4);
    server.lease_duration = std::chrono::milliseconds(config.get<int>("Jobs:LeaseMs", 10000));
    server.heartbeat_interval = std::chrono::milliseconds(config.get<int>("Jobs:HeartbeatMs", 2000));
    server.poll_interval = std::chrono::milliseconds(config.get<int>("Jobs:PollMs", 1000));
    // 1: a kill -9 charges an attempt only to the jobs that had started.
    server.prefetch = config.get<std::size_t>("Jobs:Prefetch", server.prefetch);
    // A fixed id, as a StatefulSet pod has: a restart takes back what the
    // previous process of that id held. Empty: a fresh id per process.
    server.node_id = config.get<std::string>("Jobs:NodeId", "");
    if (server.node_id.empty() && mode == "serve")
        server.node_id = "jobs-demo:" + std::to_string(::getpid());
    const bool print_runs = config.get<bool>("Jobs:PrintRuns", false);
    const auto record_time = std::chrono::milliseconds(config.get<int>("Jobs:RecordMs", 0));
    // The first record job this process runs blocks its thread this long,
    // as a synchronous call or a CPU-heavy loop would: its leases must
    // hold all the same.
    auto block_once = std::make_shared<std::chrono::milliseconds>(config.get<int>("Jobs:BlockOnceMs", 0));

    // Jobs:Storage, Jobs:Schema and Jobs:Sync say which storage and how.
    std::shared_ptr<jobs::storage> storage;
    try {
        storage = jobs::open_storage(config);
    } catch (const std::exception& e) { // storage_error, invalid_storage_location
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    auto registration = jobs::add_jobs(builder, storage, server);
    registration
        .register_kind<email>("send_email",
                              [](email e, jobs::job_context& context) -> asio::awaitable<void> {
                                  co_await hosting::delay(50ms, context.stop_token());
                                  context.logger()->info("sent '{}' to {} (job {}, attempt {})", e.subject, e.to,
                                                         context.id(), context.attempt());
                              })
        .register_kind<image>("resize",
                              [](image i, jobs::job_context& context) -> asio::awaitable<void> {
                                  co_await hosting::delay(100ms, context.stop_token());
                                  context.logger()->info("resized {} to {} px", i.path, i.width);
                              })
        .register_kind<image>("publish",
                              [](image i, jobs::job_context& context) -> asio::awaitable<void> {
                                  co_await asio::this_coro::executor;
                                  context.logger()->info("published {} after its resize", i.path);
                              })
        .register_kind<std::string>("print",
                                    [](std::string what, jobs::job_context&) -> asio::awaitable<void> {
                                        co_await asio::this_coro::executor;
                                        throw std::runtime_error("the printer is on fire while printing " + what);
                                    })
        .register_kind<std::string>("report",
                                    [](std::string name, jobs::job_context& context) -> asio::awaitable<void> {
                                        co_await asio::this_coro::executor;
                                        context.logger()->info("recurring report '{}' (job {})", name, context.id());
                                    })
        .register_kind<int>("record", [print_runs, record_time, block_once](int n, jobs::job_context& context) -> asio::awaitable<void> {
            if (block_once->count() > 0)
                std::this_thread::sleep_for(std::exchange(*block_once, {}));
            if (record_time.count() > 0)
                co_await hosting::delay(record_time, context.stop_token());
            if (print_runs) {
                // One write per line, so that two processes' lines never mix.
                const auto line = "ran " + std::to_string(context.id()) + " " + std::to_string(n) + "\n";
                std::fwrite(line.data(), 1, line.size(), stdout);
                std::fflush(stdout);
            }
        });

    // The dashboard, in serve mode or when a port is given: several work
    // processes on one machine would otherwise contend for the port.
    if (mode == "serve" || config.value("Jobs:DashboardPort").has_value()) {
        // The leases beside the jobs (Coordination:Storage, else
        // Jobs:Storage), so that the nodes page shows which node leads.
        // One id for the node and its coordinator, so that it can tell.
        hosting::coordination::coordination_options coordination;
        coordination.node_id = server.node_id;
        try {
            auto leases = hosting::coordination::open_lease_store(config);
            hosting::coordination::add_coordination(builder, leases, coordination);
        } catch (const std::exception& e) {
            std::fprintf(stderr, "%s\n", e.what());
            return 1;
        }
        auto& http = hosting::http::add_http_server(builder);
        http.options().port = config.get<std::uint16_t>("Jobs:DashboardPort", 8081);
        // Whoever reaches it may act, but for the role a proxy in front
        // would set: a viewer may look only.
        jobs::add_jobs_dashboard(builder, {.path = "/jobs",
                                           .authorize = [](const hosting::http::request& r) {
                                               return r.header("X-Demo-Role") == "viewer"
                                                          ? jobs::dashboard_access::read_only
                                                          : jobs::dashboard_access::full;
                                           },
                                           .title = "Jobs demo"});
    }
    const bool demo = mode == "demo" || mode == "serve";
    if (mode == "work" || mode == "demo")
        builder.services().add_hosted_service<stop_when_done>(std::size_t{demo ? 2u : 0u}).name("stop_when_done");
    auto host = builder.build();
    auto& client = host.services().get<jobs::client>();

    if (mode == "enqueue") {
        const int count = config.get<int>("Jobs:Count", 1000);
        // Many blocking calls from one thread: each waits for its commit.
        // (Concurrent callers would share commits.)
        for (int i = 0; i < count; ++i)
            client.enqueue_blocking("record", i);
        std::printf("enqueued %d jobs\n", count);
        return 0;
    }
    if (demo) {
        auto id = client.enqueue_blocking("send_email", email{"ada@example.com", "Welcome"});
        std::printf("enqueued job %lld: send_email\n", static_cast<long long>(id));
        id = client.schedule_blocking("send_email", email{"ada@example.com", "Two seconds later"}, 2s);
        std::printf("scheduled job %lld in 2 s\n", static_cast<long long>(id));
        auto resize = client.enqueue_blocking("resize", image{"cat.png", 640});
        auto publish = client.continue_with_blocking(resize, "publish", image{"cat.png", 640});
        std::printf("chained job %lld (publish) after job %lld (resize)\n", static_cast<long long>(publish),
                    static_cast<long long>(resize));
        client.add_or_update_recurring_blocking("report", "*/2 * * * * *", "Europe/Berlin", "report",
                                                std::string("every two seconds"));
        if (mode == "serve") {
            // Something for the dashboard to show: a failure, a job whose
            // text looks like markup, and one due next year.
            jobs::job_options once;
            once.max_attempts = 1;
            client.enqueue_blocking("print", std::string("invoice 42"), once);
            client.enqueue_blocking("send_email", email{"eve@example.com", "<script>alert(1)</script>"});
            client.schedule_blocking("send_email", email{"bob@example.com", "See you next year"}, 24h * 365);
        }
        if (mode == "serve")
            std::printf("recurring job 'report' every 2 s (Europe/Berlin); the dashboard is at "
                        "http://127.0.0.1:%u/jobs (Ctrl+C stops)\n",
                        unsigned(config.get<std::uint16_t>("Jobs:DashboardPort", 8081)));
        else
            std::printf("recurring job 'report' every 2 s (Europe/Berlin); the demo stops after two runs\n");
        std::fflush(stdout); // before the host's log lines, which go to stderr
    }
    return host.run();
}
