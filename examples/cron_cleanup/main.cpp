// A nightly cleanup at 02:30 Berlin time, whatever the server's zone, and
// correct across daylight-saving changes (on the night the clocks spring
// forward, 02:30 does not exist: the job runs once, at 03:00 CEST).
//
//   cron_cleanup                                  # prints the next runs, waits for them
//   cron_cleanup --expression="*/2 * * * * *"     # try it with a faster schedule
#include <hosting/scheduling/cron_service.hpp>
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>

namespace asio = boost::asio;

namespace {

std::string local_text(std::chrono::system_clock::time_point t, const hosting::time_zone& zone)
{
    auto local = t + zone.offset(t);
    std::time_t s = std::chrono::system_clock::to_time_t(local);
    std::tm tm{};
    gmtime_r(&s, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%a %Y-%m-%d %H:%M:%S", &tm);
    return buf;
}

} // namespace

class nightly_cleanup : public hosting::cron_service {
public:
    explicit nightly_cleanup(std::string expression)
        : cron_service({.expression = std::move(expression), .time_zone = "Europe/Berlin"})
    {
    }

protected:
    asio::awaitable<void> tick(std::stop_token stopping) override
    {
        service_logger()->info("cleaning up expired sessions...");
        co_await hosting::delay(std::chrono::milliseconds(100), stopping);
        auto s = status();
        service_logger()->info("cleanup done (run {}{})", s.ticks,
                               s.last_outcome.late ? ", started late" : "");
    }
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    std::string expression = "30 2 * * *";
    for (const auto& arg : builder.args())
        if (arg.rfind("--expression=", 0) == 0)
            expression = arg.substr(13);

    // Show what the schedule means before running it.
    auto cron = hosting::cron_expression::parse(expression);
    auto berlin = hosting::time_zone::locate("Europe/Berlin");
    auto t = std::chrono::system_clock::now();
    std::printf("next runs of \"%s\" in Europe/Berlin:\n", expression.c_str());
    for (int i = 0; i < 3; ++i)
        if (auto next = cron.next(t, berlin)) {
            std::printf("  %s\n", local_text(*next, berlin).c_str());
            t = *next;
        }
    std::fflush(stdout);

    builder.services().add_hosted_service<nightly_cleanup>(expression).name("cleanup");
    auto host = builder.build();
    return host.run();
}
