// An existing program that owns its io_context, its threads and its signal
// handling, and adds a host to run hosted services beside its own work.
//
//   embedded                   # runs until Ctrl+C
//   embedded --run-for-ms=500  # stops itself
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>
#include <thread>

namespace asio = boost::asio;
using namespace std::chrono_literals;

class reporter : public hosting::background_service {
public:
    explicit reporter(hosting::service_provider& provider)
        : log_(provider.get<hosting::logger_factory>().get("example.reporter"))
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        for (int i = 1;; ++i) {
            co_await hosting::delay(100ms, stopping);
            log_->info("report {}", i);
        }
    }

private:
    std::shared_ptr<spdlog::logger> log_;
};

int main(int argc, char** argv)
{
    // The program's own loop and threads.
    asio::io_context io;
    auto work = asio::make_work_guard(io);
    std::thread t1([&] { io.run(); });
    std::thread t2([&] { io.run(); });

    auto builder = hosting::host::create_builder(argc, argv);
    builder.use_io_context(io);           // no threads of the host's own
    builder.use_console_lifetime(false);  // the program handles signals
    builder.services().add_hosted_service<reporter>();
    auto host = builder.build();

    int run_for_ms = 0;
    for (const auto& arg : builder.args())
        if (arg.rfind("--run-for-ms=", 0) == 0)
            run_for_ms = std::stoi(arg.substr(13));

    asio::signal_set signals(io, SIGINT, SIGTERM);
    asio::steady_timer timer(io);
    int exit_code = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            co_await host.start();
            std::printf("program: host started beside the program's own work\n");
            std::fflush(stdout);
            if (run_for_ms > 0) {
                timer.expires_after(std::chrono::milliseconds(run_for_ms));
                co_await timer.async_wait(asio::use_awaitable);
            } else {
                co_await signals.async_wait(asio::use_awaitable);
            }
            signals.cancel();
            co_await host.stop(); // completes by the shutdown deadline at the latest
            exit_code = host.exit_code();
            std::printf("program: host stopped with code %d\n", exit_code);
            std::fflush(stdout);
            work.reset();
        },
        [&](std::exception_ptr e) {
            if (e) {
                std::fprintf(stderr, "program: the host failed to start\n");
                exit_code = 1;
                signals.cancel();
                work.reset();
            }
        });

    t1.join();
    t2.join();
    return exit_code;
}
