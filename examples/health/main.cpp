// A worker whose health can be asked over HTTP: two services, one of which
// dies now and then and is restarted, a check, and the endpoint on loopback.
//
//   health                         # endpoint on http://127.0.0.1:8081
//   health --Health:Port=9000      # elsewhere
//   curl -i http://127.0.0.1:8081/health/live
//   curl -i http://127.0.0.1:8081/health/ready
//   curl -s http://127.0.0.1:8081/health | python3 -m json.tool
//   curl -s http://127.0.0.1:8081/metrics
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>
#include <hosting/scheduling/periodic_timer.hpp>

#include <boost/asio/this_coro.hpp>

#include <spdlog/logger.h>

#include <cstdio>
#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

// Steady work that says it is alive; health reports it stuck if it stops.
class ingest : public hosting::background_service {
public:
    ingest() { expect_heartbeat(2s); }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        hosting::periodic_timer timer(co_await asio::this_coro::executor, 500ms);
        std::uint64_t batches = 0;
        while (co_await timer.next_tick(stopping)) {
            ++batches;
            heartbeat();
            if (batches % 20 == 0)
                service_logger()->info("ingested {} batches", batches);
        }
    }
};

// Crashes a few seconds into each life; its restart policy brings it back.
class flaky_exporter : public hosting::background_service {
public:
    explicit flaky_exporter(std::chrono::milliseconds lifespan) : lifespan_(lifespan) {}

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        service_logger()->info("exporter up; it will crash in {} ms", lifespan_.count());
        co_await hosting::delay(lifespan_, stopping);
        throw std::runtime_error("lost the connection to the export target");
    }

private:
    std::chrono::milliseconds lifespan_;
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    auto& config = builder.configuration();

    builder.services().add_hosted_service<ingest>().name("ingest");
    auto lifespan = std::chrono::milliseconds(config.get<int>("Health:ExporterLifespanMs", 5000));
    // Backoff of 1, 2, then 4 s; more than 5 restarts within 30 s would be
    // final, and with the default exception behaviour stop the program.
    hosting::restart_policy restart = hosting::restart_policy::on_failure();
    restart.initial_delay = 1s;
    restart.max_delay = 4s;
    restart.burst = 5;
    restart.window = 30s;
    builder.services().add_hosted_service<flaky_exporter>(lifespan).name("exporter").restart(restart);

    // A readiness check: traffic only when the spool directory exists.
    hosting::add_health_checks(builder).add_check(
        "spool",
        []() -> asio::awaitable<hosting::health_check_result> {
            std::error_code ec;
            const auto spool = std::filesystem::temp_directory_path(ec);
            if (ec || !std::filesystem::is_directory(spool, ec))
                co_return hosting::health_check_result::unhealthy("no spool directory");
            co_return hosting::health_check_result::healthy("spool ready", {{"path", spool.string()}});
        },
        {std::string(hosting::health_tags::ready)}, 2s);

    // Publishing: here into the log; a real program might push to a monitor.
    hosting::health_publisher_options every;
    every.delay = 2s;
    every.period = 10s;
    hosting::add_health_checks(builder).add_publisher(
        "log", [](const hosting::health_report& report, std::stop_token) -> asio::awaitable<void> {
            std::string worst;
            for (const auto& e : report.entries)
                if (e.status != hosting::health_status::healthy)
                    worst += " " + e.name + "=" + std::string(hosting::to_string(e.status));
            std::printf("health: %s%s\n", std::string(hosting::to_string(report.status)).c_str(), worst.c_str());
            std::fflush(stdout);
            co_return;
        },
        every);

    hosting::health_endpoint_options endpoint;
    endpoint.port = static_cast<std::uint16_t>(config.get<int>("Health:Port", 8081));
    hosting::add_health_endpoint(builder, endpoint);
    builder.options().shutdown_delay = std::chrono::milliseconds(config.get<int>("Health:ShutdownDelayMs", 0));
    builder.options().shutdown_timeout = builder.options().shutdown_delay + 5s;

    auto host = builder.build();
    return host.run();
}
