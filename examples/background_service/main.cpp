// The smallest useful worker: a background_service that ticks until the
// host stops, and cleans up when it does.
//
//   background_service            # runs until Ctrl+C (SIGINT), SIGTERM or SIGQUIT
//   background_service --ticks=5  # stops itself after five ticks
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

class ticker : public hosting::background_service {
public:
    // A constructor that takes service_provider& first gets the host's
    // shared objects; the other arguments come from add_hosted_service.
    ticker(hosting::service_provider& provider, int ticks)
        : log_(provider.get<hosting::logger_factory>().get("example.ticker")),
          lifetime_(provider.get<hosting::application_lifetime>()),
          ticks_(ticks)
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        try {
            for (int i = 1;; ++i) {
                // Throws operation_canceled as soon as the host stops.
                co_await hosting::delay(500ms, stopping);
                log_->info("tick {}", i);
                if (i == ticks_) {
                    log_->info("{} ticks done; asking the host to stop", i);
                    lifetime_.stop_application();
                }
            }
        } catch (const hosting::operation_canceled&) {
            // Cleanup that does not await goes here; the host is stopping.
            log_->info("ticker stopped gracefully");
            throw;
        }
    }

private:
    std::shared_ptr<spdlog::logger> log_;
    hosting::application_lifetime& lifetime_;
    int ticks_;
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    int ticks = 0;
    for (const auto& arg : builder.args())
        if (arg.rfind("--ticks=", 0) == 0)
            ticks = std::stoi(arg.substr(8));
    builder.services().add_hosted_service<ticker>(ticks);
    auto host = builder.build();
    return host.run();
}
