// A program the process tests run as a child: signals, exit codes and the
// hard deadline need a process boundary.
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/logging/logging.hpp>
#ifdef _WIN32
#include <hosting/windows/windows_service.hpp>
#endif

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

using namespace std::chrono_literals;
namespace asio = boost::asio;

namespace {

class ticker : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        for (int i = 0;; ++i) {
            co_await hosting::delay(50ms, stopping);
            if (i == 0)
                std::printf("ticked\n"), std::fflush(stdout);
        }
    }
};

// A stop that ignores its token: only a second signal (or the deadline) ends it.
class slow_stop : public hosting::hosted_service {
public:
    asio::awaitable<void> start(std::stop_token) override { co_return; }
    asio::awaitable<void> stop(std::stop_token) override
    {
        std::printf("slow stop begun\n");
        std::fflush(stdout);
        co_await hosting::delay(60s);
    }
};

// A start that takes 3 s, cooperatively.
class slow_start : public hosting::hosted_service {
public:
    asio::awaitable<void> start(std::stop_token cancel) override { co_await hosting::delay(3s, cancel); }
    asio::awaitable<void> stop(std::stop_token) override { co_return; }
};

// Blocks the host's only worker thread in a synchronous call once the host
// has started, the way a careless service would.
class blocker : public hosting::background_service {
public:
    explicit blocker(hosting::service_provider& provider)
        : started_(provider.get<hosting::application_lifetime>().application_started())
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token) override
    {
        while (!started_.stop_requested())
            co_await hosting::delay(5ms);
        std::printf("blocking now\n");
        std::fflush(stdout);
        std::this_thread::sleep_for(60s);
    }

private:
    std::stop_token started_;
};

// Asks the host to stop, then takes its time stopping (cooperatively).
class self_stopper : public hosting::hosted_service {
public:
    explicit self_stopper(hosting::service_provider& provider)
        : lifetime_(provider.get<hosting::application_lifetime>())
    {
    }
    asio::awaitable<void> start(std::stop_token) override
    {
        lifetime_.stop_application();
        co_return;
    }
    asio::awaitable<void> stop(std::stop_token cancel) override
    {
        std::printf("slow stop begun\n");
        std::fflush(stdout);
        co_await hosting::delay(1500ms, cancel);
        std::printf("slow stop done\n");
        std::fflush(stdout);
    }

private:
    hosting::application_lifetime& lifetime_;
};

} // namespace

int main(int argc, char** argv)
{
    std::string scenario = argc > 1 ? argv[1] : "";
    auto builder = hosting::host::create_builder(argc, argv);
#ifdef _WIN32
    hosting::windows_service_options service;
    if (scenario == "slow_start")
        service.progress_every = 200ms;
    hosting::use_windows_service(builder, service);
#endif
    if (scenario == "ticker") {
        builder.services().add_hosted_service<ticker>();
    } else if (scenario == "slow_stop") {
        builder.options().shutdown_timeout = 60s;
        builder.services().add_hosted_service<slow_stop>();
    } else if (scenario == "stubborn") {
        // slow_stop under the configured deadline (5 s unless
        // --Hosting:ShutdownTimeoutSeconds says otherwise).
        builder.services().add_hosted_service<ticker>();
        builder.services().add_hosted_service<slow_stop>();
    } else if (scenario == "slow_start") {
        builder.services().add_hosted_service<slow_start>();
    } else if (scenario == "blocking") {
        builder.options().shutdown_timeout = 1s;
        builder.services().add_hosted_service<ticker>();
        builder.services().add_hosted_service<blocker>();
    } else if (scenario == "no_console") {
        builder.use_console_lifetime(false);
        builder.services().add_hosted_service<ticker>();
    } else if (scenario == "self_stop_slow") {
        builder.options().shutdown_timeout = 30s;
        builder.services().add_hosted_service<self_stopper>();
    } else {
        std::fprintf(stderr, "usage: %s ticker|slow_stop|stubborn|slow_start|blocking|no_console|self_stop_slow\n", argv[0]);
        return 64;
    }
    auto host = builder.build();

    // Measured from the stop request itself, which is what the promise is about.
    std::atomic<std::int64_t> requested_at{0};
    std::stop_callback on_stop(host.lifetime().stop_requested(), [&] {
        requested_at = std::chrono::steady_clock::now().time_since_epoch().count();
    });
    int code = host.run();
    auto took = std::chrono::steady_clock::now() -
                std::chrono::steady_clock::time_point(std::chrono::steady_clock::duration(requested_at.load()));
    std::printf("run returned %d after %lld ms\n", code,
                static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
    std::fflush(stdout);
    return code;
}
