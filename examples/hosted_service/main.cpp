// Two ways to start: a migration whose start() blocks on purpose (the next
// service must not start before the schema is there), and a cache warmer
// whose start() only kicks its work off.
//
//   hosted_service    # runs until Ctrl+C
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/this_coro.hpp>

#include <chrono>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;

class database_migration : public hosting::hosted_service {
public:
    explicit database_migration(hosting::service_provider& provider)
        : log_(provider.get<hosting::logger_factory>().get("example.migration"))
    {
    }

    asio::awaitable<void> start(std::stop_token cancel) override
    {
        log_->info("applying migrations...");
        // The migration is a blocking call (a database driver, say): it runs
        // on the offload pool so the host's loop stays free, and the start
        // completes only when it is done. A throw here fails the start and
        // run() returns non-zero.
        int applied = co_await hosting::offload(
            [] {
                std::this_thread::sleep_for(300ms);
                return 3;
            },
            cancel);
        log_->info("migration applied ({} steps)", applied);
    }

    asio::awaitable<void> stop(std::stop_token) override { co_return; }

private:
    std::shared_ptr<spdlog::logger> log_;
};

class cache_warmer : public hosting::hosted_service {
public:
    explicit cache_warmer(hosting::service_provider& provider)
        : log_(provider.get<hosting::logger_factory>().get("example.cache"))
    {
    }

    asio::awaitable<void> start(std::stop_token) override
    {
        // Kick the work off and return at once: the host goes on starting
        // the next service. (A background_service does exactly this for you.)
        auto executor = co_await asio::this_coro::executor;
        asio::co_spawn(executor, warm(stopping_.get_token()), [this](std::exception_ptr e) {
            if (e && !hosting::is_cancellation(e))
                log_->error("cache warm-up failed");
            done_.request_stop();
        });
        log_->info("cache warm-up started in the background");
    }

    asio::awaitable<void> stop(std::stop_token cancel) override
    {
        stopping_.request_stop();
        // Wait for the warm-up to notice, but never past the host's deadline.
        while (!done_.stop_requested() && !cancel.stop_requested())
            co_await hosting::delay(5ms);
        log_->info("cache warmer stopped");
    }

private:
    asio::awaitable<void> warm(std::stop_token stopping)
    {
        for (int shard = 1; shard <= 4; ++shard) {
            co_await hosting::delay(100ms, stopping);
            log_->info("warmed shard {}/4", shard);
        }
    }

    std::shared_ptr<spdlog::logger> log_;
    std::stop_source stopping_;
    std::stop_source done_;
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    builder.services().add_hosted_service<database_migration>();
    builder.services().add_hosted_service<cache_warmer>();
    auto host = builder.build();
    return host.run();
}
