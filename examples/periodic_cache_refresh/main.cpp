// "Every X minutes": a cache refreshed on a fixed-rate schedule, with jitter,
// that never overlaps itself and survives a failing refresh.
//
//   periodic_cache_refresh             # every 2 s until Ctrl+C
//   periodic_cache_refresh --ticks=3   # stops itself after three refreshes
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>
#include <hosting/scheduling/periodic_service.hpp>

#include <chrono>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

class cache_refresher : public hosting::periodic_service {
public:
    cache_refresher(hosting::service_provider& provider, int ticks)
        : periodic_service({
              .interval = 2s,
              .initial_delay = 100ms,
              .jitter = 200ms, // instances of this program spread their refreshes
              .missed_ticks = hosting::missed_tick_policy::skip,
          }),
          lifetime_(provider.get<hosting::application_lifetime>()),
          ticks_(ticks)
    {
    }

protected:
    asio::awaitable<void> tick(std::stop_token stopping) override
    {
        // The refresh itself: a slow remote call, say. It is cancelled at stop.
        co_await hosting::delay(150ms, stopping);
        ++version_;
        auto s = status();
        service_logger()->info("cache refreshed to version {} (previous refresh took {} ms)", version_,
                               std::chrono::duration_cast<std::chrono::milliseconds>(s.last_duration).count());
        if (version_ == ticks_)
            lifetime_.stop_application();
    }

private:
    hosting::application_lifetime& lifetime_;
    int ticks_;
    int version_ = 0;
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    int ticks = 0;
    for (const auto& arg : builder.args())
        if (arg.rfind("--ticks=", 0) == 0)
            ticks = std::stoi(arg.substr(8));
    builder.services().add_hosted_service<cache_refresher>(ticks).name("cache");
    auto host = builder.build();
    return host.run();
}
