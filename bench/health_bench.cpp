// Prints requests per second for GET /health/live with 50 concurrent
// keep-alive connections, beside a bare Boost.Beast server that answers a
// fixed body with the same thread layout, and the cost of a check run.
//
//   health_bench [seconds=3] [connections=50]
//
// The server (hosting's endpoint, or the bare one) has one thread, and the
// client another: on a 2-core machine each gets a core.
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
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <spdlog/sinks/null_sink.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

struct load_result {
    double requests_per_second = 0;
    std::uint64_t errors = 0;
};

// `connections` keep-alive clients hammer `target` for `seconds` after a
// short warm-up; counts only the responses inside the measured window.
load_result hammer(unsigned short port, const std::string& target, int connections, double seconds)
{
    asio::io_context io(1);
    std::atomic<bool> measuring{false}, done{false};
    std::atomic<std::uint64_t> responses{0}, errors{0};
    auto client = [&]() -> asio::awaitable<void> {
        beast::tcp_stream stream(co_await asio::this_coro::executor);
        co_await stream.async_connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port), asio::use_awaitable);
        http::request<http::empty_body> req{http::verb::get, target, 11};
        req.set(http::field::host, "127.0.0.1");
        req.keep_alive(true);
        beast::flat_buffer buffer;
        while (!done.load()) {
            co_await http::async_write(stream, req, asio::use_awaitable);
            http::response<http::string_body> res;
            co_await http::async_read(stream, buffer, res, asio::use_awaitable);
            if (res.result_int() != 200)
                ++errors;
            if (measuring.load())
                ++responses;
        }
    };
    for (int i = 0; i < connections; ++i)
        asio::co_spawn(io, client, [&](std::exception_ptr e) {
            if (e)
                ++errors;
        });
    std::thread runner([&] { io.run(); });
    std::this_thread::sleep_for(300ms); // warm-up: connections open, caches warm
    measuring = true;
    const auto began = clock_type::now();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    measuring = false;
    const double elapsed = std::chrono::duration<double>(clock_type::now() - began).count();
    const auto counted = responses.load();
    done = true;
    runner.join();
    return {static_cast<double>(counted) / elapsed, errors.load()};
}

// The baseline: the least a Beast server can do per request.
class bare_server {
public:
    bare_server() : acceptor_(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0))
    {
        asio::co_spawn(io_, accept(), asio::detached);
        thread_ = std::thread([this] { io_.run(); });
    }
    ~bare_server()
    {
        io_.stop();
        thread_.join();
    }
    unsigned short port() const { return acceptor_.local_endpoint().port(); }

private:
    asio::awaitable<void> accept()
    {
        for (;;) {
            auto socket = co_await acceptor_.async_accept(asio::use_awaitable);
            asio::co_spawn(io_, session(std::move(socket)), asio::detached);
        }
    }
    static asio::awaitable<void> session(tcp::socket socket)
    {
        beast::tcp_stream stream(std::move(socket));
        beast::flat_buffer buffer;
        for (;;) {
            http::request<http::string_body> req;
            boost::system::error_code ec;
            co_await http::async_read(stream, buffer, req, asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                co_return;
            http::response<http::string_body> res{http::status::ok, 11};
            res.set(http::field::content_type, "application/json");
            res.keep_alive(req.keep_alive());
            res.body() = R"({"status":"Healthy"})";
            res.prepare_payload();
            co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                co_return;
        }
    }

    asio::io_context io_{1};
    tcp::acceptor acceptor_;
    std::thread thread_;
};

class idle : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        co_await hosting::delay(std::chrono::hours(24), stopping);
    }
};

} // namespace

int main(int argc, char** argv)
{
    const double seconds = argc > 1 ? std::atof(argv[1]) : 3.0;
    const int connections = argc > 2 ? std::atoi(argv[2]) : 50;

    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    builder.logging().sinks.push_back(std::make_shared<spdlog::sinks::null_sink_mt>());
    hosting::health_endpoint_options endpoint;
    endpoint.port = 0;
    endpoint.max_connections = static_cast<std::size_t>(connections) + 8;
    endpoint.max_connections_per_address = endpoint.max_connections; // every client is on 127.0.0.1
    hosting::add_health_endpoint(builder, endpoint);
    for (int i = 0; i < 10; ++i)
        builder.services().add_hosted_service<idle>().name("worker-" + std::to_string(i));
    hosting::add_health_checks(builder).add_check("trivial", []() -> asio::awaitable<hosting::health_check_result> {
        co_return hosting::health_check_result::healthy("ok");
    });
    auto host = builder.build();
    host.start_blocking();
    const auto port = host.services().get<hosting::http::server>().port();

    std::printf("health_bench: %d connections, %.1f s per figure, 1 server thread + 1 client thread\n",
                connections, seconds);
    {
        bare_server bare;
        auto r = hammer(bare.port(), "/", connections, seconds);
        std::printf("bare Beast server, fixed body:      %9.0f requests/s (errors %llu)\n", r.requests_per_second,
                    static_cast<unsigned long long>(r.errors));
    }
    {
        auto r = hammer(port, "/health/live", connections, seconds);
        std::printf("hosting GET /health/live:           %9.0f requests/s (errors %llu; 10 services + loop)\n",
                    r.requests_per_second, static_cast<unsigned long long>(r.errors));
    }
    {
        auto r = hammer(port, "/metrics", connections, seconds);
        std::printf("hosting GET /metrics:               %9.0f requests/s (errors %llu)\n", r.requests_per_second,
                    static_cast<unsigned long long>(r.errors));
    }

    // The cost of a check run, awaited from a coroutine on another loop:
    // the host's entries plus one trivial check on the host's loop.
    auto& monitor = host.services().get<hosting::health_monitor>();
    {
        asio::io_context io(1);
        constexpr int runs = 20000;
        double elapsed_us = 0;
        asio::co_spawn(io, [&]() -> asio::awaitable<void> {
            for (int i = 0; i < 500; ++i)
                (void)co_await monitor.check();
            const auto began = clock_type::now();
            for (int i = 0; i < runs; ++i)
                (void)co_await monitor.check();
            elapsed_us = std::chrono::duration<double, std::micro>(clock_type::now() - began).count();
        }, asio::detached);
        io.run();
        std::printf("check run (host entries + 1 check): %9.2f us each\n", elapsed_us / runs);
    }
    {
        constexpr int runs = 200000;
        const auto began = clock_type::now();
        std::size_t n = 0;
        for (int i = 0; i < runs; ++i)
            n += monitor.host_entries("live").entries.size();
        const double us = std::chrono::duration<double, std::micro>(clock_type::now() - began).count();
        std::printf("liveness report, no checks:         %9.2f us each (%zu entries)\n", us / runs,
                    n / static_cast<std::size_t>(runs));
    }

    host.stop_blocking();
    return host.exit_code();
}
