#include <hosting/hosting.hpp>
#include <hosting/scheduling/periodic_timer.hpp>
#include <hosting/metrics/metrics.hpp>

#include "support.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <csignal>
#include <regex>
#include <set>
#include <sstream>
#include <sys/socket.h>
#include <sys/time.h>
#include <thread>

using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace json = boost::json;
using test::recorder;

namespace {

using clock_type = std::chrono::steady_clock;

hosting::health_endpoint_options loopback(std::size_t max_connections = 16)
{
    hosting::health_endpoint_options o;
    o.port = 0;
    o.max_connections = max_connections;
    // All of a test's clients share 127.0.0.1.
    o.max_connections_per_address = max_connections;
    return o;
}

unsigned short port_of(hosting::host& host) { return host.services().get<hosting::http::server>().port(); }

json::object body_json(const test::http_response& r) { return json::parse(r.body).as_object(); }

std::string entry_status(const json::object& report, const std::string& name)
{
    const auto& entries = report.at("entries").as_object();
    auto it = entries.find(name);
    if (it == entries.end())
        return "missing";
    return std::string(it->value().as_object().at("status").as_string());
}

// Waits for the stop; what a long-running service does.
asio::awaitable<void> until_stopped(std::stop_token stopping)
{
    co_await hosting::delay(std::chrono::hours(1), stopping);
}

class idle_worker : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override { co_await until_stopped(stopping); }
};

class faulting_worker : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token) override
    {
        co_await asio::this_coro::executor;
        throw std::runtime_error("disk on fire");
    }
};

class silent_worker : public hosting::background_service {
public:
    silent_worker() { expect_heartbeat(100ms); }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override { co_await until_stopped(stopping); }
};

class beating_worker : public hosting::background_service {
public:
    // A wide margin: a loop starved by a busy machine must not look stuck.
    beating_worker() { expect_heartbeat(1s); }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        hosting::periodic_timer timer(co_await asio::this_coro::executor, 20ms);
        while (co_await timer.next_tick(stopping))
            heartbeat();
    }
};

class loop_hog : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        co_await hosting::delay(100ms, stopping);
        // The thing under test: a service that blocks the loop's only thread.
        std::this_thread::sleep_for(1500ms);
        co_await until_stopped(stopping);
    }
};

} // namespace

// ---------------------------------------------------------------------------
// Metrics

TEST_CASE("metrics registry renders the Prometheus text format", "[health][metrics]")
{
    hosting::metrics_registry m;
    m.counter("jobs_total", "Jobs done", {{"queue", "a\"b\\c\nd"}}).inc(3);
    auto& g = m.gauge("temperature", "Line one\nline two");
    g.set(-1.5);
    auto& h = m.histogram("latency_seconds", "Latency", {0.1, 1});
    h.observe(0.05);
    h.observe(0.5);
    h.observe(7);
    m.add_collector([](hosting::metrics_writer& w) { w.gauge("collected", "From a collector", {{"k", "v"}}, 42); });
    // Same name and labels: the same series.
    m.counter("jobs_total", "Jobs done", {{"queue", "a\"b\\c\nd"}}).inc();

    const auto text = m.render();
    CHECK(text.find("# HELP jobs_total Jobs done\n# TYPE jobs_total counter\n") != std::string::npos);
    CHECK(text.find("jobs_total{queue=\"a\\\"b\\\\c\\nd\"} 4\n") != std::string::npos);
    CHECK(text.find("# HELP temperature Line one\\nline two\n") != std::string::npos);
    CHECK(text.find("temperature -1.5\n") != std::string::npos);
    CHECK(text.find("latency_seconds_bucket{le=\"0.1\"} 1\n") != std::string::npos);
    CHECK(text.find("latency_seconds_bucket{le=\"1\"} 2\n") != std::string::npos);
    CHECK(text.find("latency_seconds_bucket{le=\"+Inf\"} 3\n") != std::string::npos);
    CHECK(text.find("latency_seconds_sum 7.55\n") != std::string::npos);
    CHECK(text.find("latency_seconds_count 3\n") != std::string::npos);
    CHECK(text.find("collected{k=\"v\"} 42\n") != std::string::npos);

    CHECK_THROWS_AS(m.counter("9bad", "x"), std::invalid_argument);
    CHECK_THROWS_AS(m.counter("ok", "x", {{"__reserved", "v"}}), std::invalid_argument);
    CHECK_THROWS_AS(m.histogram("h2", "x", {1}, {{"le", "v"}}), std::invalid_argument);
    CHECK_THROWS_AS(m.histogram("h3", "x", {2, 1}), std::invalid_argument);
    CHECK_THROWS_WITH(m.gauge("jobs_total", "x"), Catch::Contains("jobs_total") && Catch::Contains("counter"));
    CHECK_THROWS_AS(m.counter("jobs_total", "x").inc(-1), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// Routes and status codes

TEST_CASE("the endpoint listens on loopback unless told otherwise", "[health][http]")
{
    CHECK(hosting::health_endpoint_options{}.address == "127.0.0.1");
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::health_endpoint_options options;
    options.port = 0;
    hosting::add_health_endpoint(builder, options);
    auto host = builder.build();
    host.start_blocking();
    const auto port = host.services().get<hosting::http::server>().port();
    CHECK(sink->has("HTTP server listening on http://127.0.0.1:" + std::to_string(port) +
                    " (/health/live, /health/ready, /health, /metrics)"));
    CHECK(test::http_get(port, "/health/live").status == 200);
    host.stop_blocking();
}

TEST_CASE("health endpoint answers each route with its status code", "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::add_health_endpoint(builder, loopback());
    builder.services().add_hosted_service<idle_worker>().name("worker");
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);
    REQUIRE(port != 0);

    auto live = test::http_get(port, "/health/live");
    CHECK(live.status == 200);
    CHECK(live.headers["content-type"] == "application/json");
    auto report = body_json(live);
    CHECK(report.at("status").as_string() == "Healthy");
    CHECK(entry_status(report, "service:worker") == "Healthy");
    CHECK(entry_status(report, "readiness") == "missing");

    auto ready = test::http_get(port, "/health/ready");
    CHECK(ready.status == 200);
    CHECK(entry_status(body_json(ready), "readiness") == "Healthy");

    auto all = test::http_get(port, "/health");
    CHECK(all.status == 200);
    CHECK(entry_status(body_json(all), "service:worker") == "Healthy");
    CHECK(entry_status(body_json(all), "event_loop") == "Healthy");

    auto metrics = test::http_get(port, "/metrics");
    CHECK(metrics.status == 200);
    CHECK(metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8");

    auto missing = test::http_get(port, "/nope");
    CHECK(missing.status == 404);
    auto post = test::http_get(port, "/health/live", "POST");
    CHECK(post.status == 405);
    CHECK(post.headers["allow"] == "GET");
    auto weird = test::http_get(port, "/health", "BREW");
    CHECK(weird.status == 405);

    host.stop_blocking();
    CHECK(host.exit_code() == 0);
    // Stopped means stopped: nothing listens any more.
    CHECK_THROWS(test::http_get(port, "/health/live"));
}

TEST_CASE("health checks run concurrently, each with its timeout, and the worst status wins", "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::add_health_endpoint(builder, loopback());
    std::atomic<int> in_flight{0};
    // Each waits until the other has started: if checks ran one after the
    // other, the first would never see two and report unhealthy.
    auto rendezvous = [&in_flight]() -> asio::awaitable<hosting::health_check_result> {
        ++in_flight;
        for (int i = 0; i < 400 && in_flight.load() < 2; ++i)
            co_await hosting::delay(5ms);
        const bool both = in_flight.load() >= 2;
        co_return both ? hosting::health_check_result::healthy("met the other check")
                       : hosting::health_check_result::unhealthy("ran alone");
    };
    hosting::add_health_checks(builder)
        .add_check("pair-a", rendezvous, {"pair"})
        .add_check("pair-b", rendezvous, {"pair"})
        .add_check("slow", [](std::stop_token) -> asio::awaitable<hosting::health_check_result> {
            co_await hosting::delay(std::chrono::hours(1));
            co_return hosting::health_check_result::healthy();
        }, {"bad"}, 150ms)
        .add_check("outlasts-slow", []() -> asio::awaitable<hosting::health_check_result> {
            // Still running when "slow" times out and then ends.
            co_await hosting::delay(400ms);
            co_return hosting::health_check_result::healthy("took its time");
        }, {"bad"})
        .add_check("thrower", []() -> asio::awaitable<hosting::health_check_result> {
            co_await asio::this_coro::executor;
            throw std::runtime_error("database unreachable");
        }, {"bad"})
        .add_check("meh", []() -> asio::awaitable<hosting::health_check_result> {
            co_return hosting::health_check_result::degraded("queue is \"long\"\n\t\x01\\", {{"depth", "1200"}});
        }, {"soft", "ready"});
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);

    auto pair = test::http_get(port, "/health?tag=pair");
    CHECK(pair.status == 200);
    auto p = body_json(pair);
    CHECK(entry_status(p, "pair-a") == "Healthy");
    CHECK(entry_status(p, "pair-b") == "Healthy");
    CHECK(entry_status(p, "slow") == "missing");

    auto bad = test::http_get(port, "/health?tag=bad");
    CHECK(bad.status == 503);
    auto b = body_json(bad);
    CHECK(b.at("status").as_string() == "Unhealthy");
    const auto& slow = b.at("entries").at("slow").as_object();
    CHECK(slow.at("status").as_string() == "Unhealthy");
    CHECK(std::string(slow.at("error").as_string()).find("timed out after 150 ms") != std::string::npos);
    CHECK(slow.at("duration").as_double() >= 0.15);
    CHECK(entry_status(b, "outlasts-slow") == "Healthy");
    CHECK(b.at("entries").as_object().size() == 3);
    const auto& thrower = b.at("entries").at("thrower").as_object();
    CHECK(thrower.at("status").as_string() == "Unhealthy");
    CHECK(std::string(thrower.at("error").as_string()) == "database unreachable");

    // Degraded is still 200; a check tagged "ready" joins readiness.
    auto soft = test::http_get(port, "/health/ready");
    CHECK(soft.status == 200);
    auto s = body_json(soft);
    CHECK(s.at("status").as_string() == "Degraded");
    CHECK(s.at("entries").at("meh").at("data").at("depth").as_string() == "1200");
    CHECK(s.at("entries").at("meh").at("description").as_string() == "queue is \"long\"\n\t\x01\\");
    CHECK(entry_status(s, "readiness") == "Healthy");

    // The whole report: worst wins.
    CHECK(test::http_get(port, "/health").status == 503);
    CHECK(test::http_get(port, "/health?tag=%zz").status == 400);
    CHECK(sink->wait_for("Health check 'thrower' is Unhealthy"));

    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("health check names are checked at build", "[health]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto ok = []() -> asio::awaitable<hosting::health_check_result> { co_return hosting::health_check_result{}; };
    {
        auto builder = test::make_builder(sink);
        hosting::add_health_checks(builder).add_check("db", ok).add_check("db", ok);
        CHECK_THROWS_WITH(builder.build(), Catch::Contains("two checks are named 'db'"));
    }
    {
        auto builder = test::make_builder(sink);
        hosting::add_health_checks(builder).add_check("readiness", ok);
        CHECK_THROWS_WITH(builder.build(), Catch::Contains("'readiness' is reserved"));
    }
    {
        auto builder = test::make_builder(sink);
        CHECK_THROWS_AS(hosting::add_health_checks(builder).add_check("t", ok, {}, 0ms), std::invalid_argument);
        hosting::health_endpoint_options bad;
        bad.address = "localhost:80";
        CHECK_THROWS_AS(hosting::add_health_endpoint(builder, bad), std::invalid_argument);
    }
}

// ---------------------------------------------------------------------------
// Service liveness

TEST_CASE("a faulted service turns /health/live to 503 with its name and error", "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.options().background_service_exception_behavior = hosting::background_service_exception_behavior::ignore;
    hosting::add_health_endpoint(builder, loopback());
    builder.services().add_hosted_service<idle_worker>().name("steady");
    builder.services().add_hosted_service<faulting_worker>().name("ingest");
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(sink->wait_for("Background service 'ingest' faulted"));

    auto live = test::http_get(port_of(host), "/health/live");
    CHECK(live.status == 503);
    CHECK(live.body.find("service:ingest") != std::string::npos);
    CHECK(live.body.find("disk on fire") != std::string::npos);
    auto report = body_json(live);
    CHECK(entry_status(report, "service:ingest") == "Unhealthy");
    CHECK(entry_status(report, "service:steady") == "Healthy");
    // Readiness is about traffic, not about one dead worker.
    CHECK(test::http_get(port_of(host), "/health/ready").status == 200);

    host.stop_blocking();
}

TEST_CASE("a service that stops sending heartbeats is reported stuck", "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::add_health_endpoint(builder, loopback());
    builder.services().add_hosted_service<beating_worker>().name("beating");
    builder.services().add_hosted_service<silent_worker>().name("silent");
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);

    test::http_response live;
    // Stuck after 100 ms * the default factor of 3 without a heartbeat.
    REQUIRE(test::eventually([&] {
        live = test::http_get(port, "/health/live");
        return live.status == 503;
    }));
    auto report = body_json(live);
    const auto& silent = report.at("entries").at("service:silent").as_object();
    CHECK(silent.at("status").as_string() == "Unhealthy");
    CHECK(std::string(silent.at("description").as_string()).find("stuck: no heartbeat for") != std::string::npos);
    CHECK(std::string(silent.at("description").as_string()).find("expected every 100 ms") != std::string::npos);
    CHECK(entry_status(report, "service:beating") == "Healthy");

    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("a service that blocks the loop shows as loop lag, and a warning names the loop", "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::add_health_checks(builder).options().loop_lag_interval = 50ms;
    hosting::add_health_checks(builder).options().loop_lag_threshold = 300ms;
    hosting::add_health_checks(builder).options().loop_name = "workers";
    hosting::add_health_endpoint(builder, loopback());
    builder.services().add_hosted_service<loop_hog>().name("hog");
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);

    // The endpoint has a thread of its own, so it answers while the loop is
    // blocked, and sees the lag as it grows.
    test::http_response live;
    REQUIRE(test::eventually([&] {
        live = test::http_get(port, "/health/live");
        return live.body.find("Degraded") != std::string::npos;
    }));
    CHECK(live.status == 200); // degraded is not dead
    auto report = body_json(live);
    const auto& loop = report.at("entries").at("event_loop").as_object();
    CHECK(loop.at("status").as_string() == "Degraded");
    CHECK(std::string(loop.at("description").as_string()).find("event loop 'workers'") != std::string::npos);

    REQUIRE(sink->wait_for("Event loop 'workers' ran a timer"));
    CHECK(sink->has("threshold 300 ms", spdlog::level::warn, "hosting.health"));
    // The blocked tick lands above one second. Polled: the warning above
    // may come from an earlier, shorter stall of a loaded machine.
    const std::regex buckets("hosting_event_loop_lag_seconds_bucket\\{loop=\"workers\",le=\"1\"\\} (\\d+)\\n"
                             "hosting_event_loop_lag_seconds_bucket\\{loop=\"workers\",le=\"2.5\"\\} (\\d+)");
    bool parsed = false;
    CHECK(test::eventually([&] {
        const auto metrics = test::http_get(port, "/metrics").body;
        std::smatch m;
        parsed = std::regex_search(metrics, m, buckets);
        return parsed && std::stoi(m[2]) > std::stoi(m[1]);
    }));
    CHECK(parsed);

    host.stop_blocking();
}

// ---------------------------------------------------------------------------
// Readiness and draining

namespace {

class gated_start : public hosting::hosted_service {
public:
    explicit gated_start(std::stop_source* gate) : gate_(gate) {}
    asio::awaitable<void> start(std::stop_token) override
    {
        try {
            co_await hosting::delay(std::chrono::hours(1), gate_->get_token());
        } catch (const hosting::operation_canceled&) {
            // The gate opened.
        }
    }
    asio::awaitable<void> stop(std::stop_token) override { co_return; }

private:
    std::stop_source* gate_;
};

struct drain_log {
    recorder r;
    std::atomic<clock_type::rep> stopped_at{0};
};

class draining_worker : public hosting::background_service {
public:
    explicit draining_worker(drain_log* log) : log_(log) {}

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        try {
            co_await until_stopped(stopping);
        } catch (...) {
            log_->stopped_at = clock_type::now().time_since_epoch().count();
            log_->r.add("worker stopped");
            throw;
        }
    }

private:
    drain_log* log_;
};

} // namespace

TEST_CASE("readiness is false while starting, true once started, and false as soon as the stop begins",
          "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    // Long enough for the checks below to run inside the drain on a loaded
    // machine.
    builder.options().shutdown_delay = 4s;
    builder.options().shutdown_timeout = 10s;
    hosting::add_health_endpoint(builder, loopback());
    std::stop_source gate;
    drain_log log;
    builder.services().add_hosted_service<gated_start>(&gate).name("gate");
    builder.services().add_hosted_service<draining_worker>(&log).name("worker");
    auto host = builder.build();

    std::jthread starter([&] { host.start_blocking(); });
    auto& endpoint = host.services().get<hosting::http::server>();
    REQUIRE(test::eventually([&] { return endpoint.port() != 0; }));
    const auto port = endpoint.port();

    auto starting = test::http_get(port, "/health/ready");
    CHECK(starting.status == 503);
    CHECK(starting.body.find("not ready: starting") != std::string::npos);
    CHECK(test::http_get(port, "/health/live").status == 200);

    gate.request_stop();
    starter.join();
    CHECK(test::http_get(port, "/health/ready").status == 200);

    const auto asked = clock_type::now();
    std::jthread stopper([&] { host.stop_blocking(); });
    REQUIRE(test::eventually([&] { return !host.services().get<hosting::health_monitor>().ready(); }));
    auto draining = test::http_get(port, "/health/ready");
    // Not ready, while the worker still runs: that is the drain.
    const bool worker_still_running = !log.r.contains("worker stopped");
    CHECK(draining.status == 503);
    CHECK(draining.body.find("not ready: stopping") != std::string::npos);
    CHECK(worker_still_running);

    REQUIRE(log.r.wait_for("worker stopped"));
    const auto stopped = clock_type::time_point(clock_type::duration(log.stopped_at.load()));
    CHECK(stopped - asked >= 4s);
    stopper.join();
    CHECK(host.exit_code() == 0);
    CHECK(sink->has("shutdown_delay"));
}

namespace {
class gated_stop : public hosting::hosted_service {
public:
    gated_stop(recorder* r, std::stop_source* gate) : r_(r), gate_(gate) {}
    asio::awaitable<void> start(std::stop_token) override { co_return; }
    asio::awaitable<void> stop(std::stop_token) override
    {
        r_->add("stop began");
        try {
            co_await hosting::delay(std::chrono::hours(1), gate_->get_token());
        } catch (const hosting::operation_canceled&) {
            // The gate opened.
        }
    }

private:
    recorder* r_;
    std::stop_source* gate_;
};
} // namespace

TEST_CASE("the endpoint starts first and stops last even when services start and stop concurrently",
          "[health][http]")
{
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    builder.options().services_start_concurrently = true;
    builder.options().services_stop_concurrently = true;
    builder.options().shutdown_timeout = 20s;
    hosting::add_health_endpoint(builder, loopback());
    recorder r;
    std::stop_source start_gate, stop_gate;
    builder.services().add_hosted_service<gated_start>(&start_gate).name("slow-start");
    builder.services().add_hosted_service<gated_stop>(&r, &stop_gate).name("slow-stop");
    auto host = builder.build();
    std::jthread starter([&] { host.start_blocking(); });
    auto& endpoint = host.services().get<hosting::http::server>();
    REQUIRE(test::eventually([&] { return endpoint.port() != 0; }));
    const auto port = endpoint.port();
    CHECK(test::http_get(port, "/health/ready").body.find("not ready: starting") != std::string::npos);
    start_gate.request_stop();
    starter.join();

    std::jthread stopper([&] { host.stop_blocking(); });
    REQUIRE(r.wait_for("stop began"));
    // The other stops are under way; the endpoint still answers.
    auto during = test::http_get(port, "/health/ready");
    CHECK(during.status == 503);
    CHECK(during.body.find("not ready: stopping") != std::string::npos);
    stop_gate.request_stop();
    stopper.join();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("shutdown_delay must fit inside the shutdown deadline", "[health]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.options().shutdown_delay = 5s;
    builder.options().shutdown_timeout = 5s;
    CHECK_THROWS_WITH(builder.build(), Catch::Contains("shutdown_delay (5000ms) must be shorter than shutdown_timeout"));
}

namespace {

std::optional<long> metric_value(unsigned short port, const std::string& series)
{
    auto body = test::http_get(port, "/metrics").body;
    auto at = body.find("\n" + series + " ");
    if (at == std::string::npos)
        return std::nullopt;
    return std::stol(body.substr(at + series.size() + 2));
}

// A blocking read on it fails after 10 s instead of hanging the suite when
// the server never answers or closes.
void bound_reads(asio::ip::tcp::socket& s)
{
    timeval limit{10, 0};
    ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
}

// A connection from a given loopback address (all of 127/8 is loopback).
asio::ip::tcp::socket connect_from(asio::io_context& io, const char* from, unsigned short port)
{
    asio::ip::tcp::socket s(io);
    s.open(asio::ip::tcp::v4());
    s.bind({asio::ip::make_address(from), 0});
    s.connect({asio::ip::make_address("127.0.0.1"), port});
    bound_reads(s);
    return s;
}

// The first 12 bytes of the answer on `s`: "HTTP/1.1 200" and the like.
std::string status_line(asio::ip::tcp::socket& s)
{
    std::string line(12, '\0');
    asio::read(s, asio::buffer(line));
    return line;
}

bool closed_by_server(asio::ip::tcp::socket& s)
{
    char byte;
    boost::system::error_code ec;
    s.read_some(asio::buffer(&byte, 1), ec);
    return ec == asio::error::eof || ec == asio::error::connection_reset;
}

// A host that serves the health endpoint with `options`, started.
struct serving {
    explicit serving(const hosting::health_endpoint_options& options) : host(build(options))
    {
        host.start_blocking();
        port = port_of(host);
    }
    static hosting::host build(const hosting::health_endpoint_options& options)
    {
        auto builder = test::make_builder(std::make_shared<test::capture_sink>());
        hosting::add_health_endpoint(builder, options);
        return builder.build();
    }
    hosting::host host;
    unsigned short port = 0;
};

} // namespace

// ---------------------------------------------------------------------------
// Hostile traffic

TEST_CASE("malformed, oversized and slow requests are refused and the endpoint keeps answering", "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto options = loopback(3);
    // Long, except for the slow-client section: held connections must stay
    // open however slowly the test runs.
    options.request_timeout = 30s;
    hosting::add_health_endpoint(builder, options);
    builder.services().add_hosted_service<beating_worker>().name("beating");
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);

    SECTION("malformed")
    {
        auto r = test::raw_exchange(port, "this is not http\r\n\r\n");
        CHECK(r.received.rfind("HTTP/1.1 400", 0) == 0);
        CHECK(r.closed);
        auto bad_version = test::raw_exchange(port, "GET /health HTTP/9.9\r\n\r\n");
        CHECK(bad_version.received.rfind("HTTP/1.1 400", 0) == 0);
    }
    SECTION("oversized header")
    {
        auto r = test::raw_exchange(port, "GET /health/live HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') +
                                              "\r\n\r\n");
        CHECK(r.received.rfind("HTTP/1.1 431", 0) == 0);
    }
    SECTION("oversized body")
    {
        auto r = test::raw_exchange(port, "POST /health HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n");
        CHECK(r.received.rfind("HTTP/1.1 413", 0) == 0);
    }
    SECTION("connections that hold every slot without a request")
    {
        // What took probes down: slots held by connections that never send
        // a whole request. A probe evicts the oldest of them.
        // From three addresses, so that the cap is reached before any one
        // address's share.
        asio::io_context io;
        std::vector<asio::ip::tcp::socket> held;
        for (const char* from : {"127.0.0.2", "127.0.0.3", "127.0.0.4"}) {
            held.push_back(connect_from(io, from, port));
            asio::write(held.back(), asio::buffer(std::string_view("GET /health/live HTT")));
        }
        // The server has them all once the third answers nothing yet; a
        // fourth must then displace one.
        auto live = test::http_get(port, "/health/live");
        CHECK(live.status == 200);
        // The oldest was the one closed.
        CHECK(closed_by_server(held.front()));
        CHECK(metric_value(port, "hosting_http_connections_evicted_total{reason=\"capacity\"}") == 1);
    }

    // Whatever came before, the endpoint still answers, and the services
    // were never held up.
    auto live = test::http_get(port, "/health/live");
    CHECK(live.status == 200);
    CHECK(entry_status(body_json(live), "service:beating") == "Healthy");
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("a slow client is dropped after the request timeout and the endpoint keeps answering", "[health][http]")
{
    auto options = loopback();
    options.request_timeout = 300ms;
    serving served(options);
    auto& host = served.host;
    const auto port = served.port;
    // Half a request, then silence.
    auto r = test::raw_exchange(port, "GET /health/live HTTP/1.1\r\nHost: x\r\n", 10s);
    CHECK(r.closed);
    CHECK(r.received.empty());
    CHECK(metric_value(port, "hosting_http_timeouts_total{kind=\"request\"}") == 1);
    CHECK(test::http_get(port, "/health/live").status == 200);
    auto head = test::http_get(port, "/health/live", "HEAD");
    CHECK(head.status == 200);
    CHECK(head.body.empty());
    CHECK(std::stoi(head.headers["content-length"]) > 0);
    host.stop_blocking();
}

TEST_CASE("one client address holds at most its share of the connections", "[health][http]")
{
    auto options = loopback(8);
    options.max_connections_per_address = 2;
    options.request_timeout = 30s;
    serving served(options);
    auto& host = served.host;
    const auto port = served.port;

    asio::io_context io;
    auto first = connect_from(io, "127.0.0.2", port);
    auto second = connect_from(io, "127.0.0.2", port);
    asio::write(first, asio::buffer(std::string_view("GET /health HT")));
    asio::write(second, asio::buffer(std::string_view("GET /health HT")));
    // Each is admitted once the server answers a request that came after it.
    CHECK(test::http_get(port, "/health/live").status == 200);
    auto third = connect_from(io, "127.0.0.2", port);
    // Past the share: that address's own oldest goes, nobody else's.
    CHECK(closed_by_server(first));
    asio::write(third, asio::buffer(std::string_view("GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")));
    CHECK(status_line(third) == "HTTP/1.1 200");
    CHECK(metric_value(port, "hosting_http_connections_evicted_total{reason=\"address\"}") == 1);
    CHECK(metric_value(port, "hosting_http_connections_evicted_total{reason=\"capacity\"}") == 0);
    host.stop_blocking();
}

TEST_CASE("a full server evicts from the address that holds the most connections first", "[health][http]")
{
    auto options = loopback(4);
    options.request_timeout = 30s;
    serving served(options);
    auto& host = served.host;
    const auto port = served.port;

    asio::io_context io;
    // The oldest connection, alone on its address...
    auto lone = connect_from(io, "127.0.0.3", port);
    asio::write(lone, asio::buffer(std::string_view("GET /health/live HTTP/1.1\r\n")));
    // ...then three from one other address.
    std::vector<asio::ip::tcp::socket> crowd;
    for (int i = 0; i < 3; ++i) {
        crowd.push_back(connect_from(io, "127.0.0.2", port));
        asio::write(crowd.back(), asio::buffer(std::string_view("GET /health HT")));
    }
    CHECK(test::http_get(port, "/health/live").status == 200);
    // The crowd's oldest went, not the lone one, older as it is.
    CHECK(closed_by_server(crowd.front()));
    asio::write(lone, asio::buffer(std::string_view("Host: x\r\n\r\n")));
    CHECK(status_line(lone) == "HTTP/1.1 200");
    host.stop_blocking();
}

TEST_CASE("at capacity, an address that holds as many connections as any other is refused, not let evict",
          "[health][http]")
{
    auto options = loopback(4);
    options.request_timeout = 30s;
    serving served(options);
    auto& host = served.host;
    const auto port = served.port;

    asio::io_context io;
    std::vector<asio::ip::tcp::socket> held;
    for (const char* from : {"127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"}) {
        held.push_back(connect_from(io, from, port));
        asio::write(held.back(), asio::buffer(std::string_view("GET /health HT")));
    }
    // Read in the process: a probe would take a slot.
    auto& registry = host.services().get<hosting::metrics_registry>();
    REQUIRE(test::eventually(
        [&] { return registry.render().find("\nhosting_http_open_connections 4\n") != std::string::npos; }));
    // One more from an address that holds two, as many as any: refused,
    // and nobody's connection is taken for it.
    auto greedy = connect_from(io, "127.0.0.2", port);
    CHECK(closed_by_server(greedy));
    for (auto& s : held)
        asio::write(s, asio::buffer(std::string_view("TP/1.1\r\nHost: x\r\n\r\n")));
    for (auto& s : held)
        CHECK(status_line(s) == "HTTP/1.1 200");
    const auto text = registry.render();
    CHECK(text.find("\nhosting_http_connections_rejected_total{reason=\"share\"} 1\n") != std::string::npos);
    CHECK(text.find("\nhosting_http_connections_evicted_total{reason=\"capacity\"} 0\n") != std::string::npos);
    host.stop_blocking();
}

TEST_CASE("a connection busy with a request is never evicted, a reserved slot admits a probe, then none",
          "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto options = loopback(2);
    options.reserved_connections = 1;
    // Long enough that the held reserved slot stays held however slowly
    // the test runs.
    options.reserved_request_timeout = 30s;
    hosting::add_health_endpoint(builder, options);
    std::atomic<int> entered{0};
    std::atomic<bool> release{false};
    hosting::http::add_http_server(builder).route(
        "/slow", [&](const hosting::http::request&) -> asio::awaitable<hosting::http::response> {
            ++entered;
            asio::steady_timer poll(co_await asio::this_coro::executor);
            // Held until the test has tried its other connections.
            while (!release.load()) {
                poll.expires_after(5ms);
                co_await poll.async_wait(asio::use_awaitable);
            }
            hosting::http::response res;
            res.content_type = "text/plain";
            res.body = "slow";
            co_return res;
        });
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);

    // Both slots busy, one from the probe's own address: the capacity is
    // what is reached, not that address's share, and with nothing to evict
    // the probe's address gets a reserved slot though it holds as many
    // connections as any other.
    asio::io_context io;
    std::vector<asio::ip::tcp::socket> busy;
    for (const char* from : {"127.0.0.1", "127.0.0.2"}) {
        busy.push_back(connect_from(io, from, port));
        asio::write(busy.back(), asio::buffer(std::string_view("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")));
    }
    REQUIRE(test::eventually([&] { return entered.load() == 2; }));
    // A probe gets the reserved slot, is answered, and that connection is
    // closed after its response.
    auto probe = test::raw_exchange(port, "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(probe.received.rfind("HTTP/1.1 200", 0) == 0);
    CHECK(probe.closed);
    // A connection that holds the reserved slot with half a request...
    auto holder = connect_from(io, "127.0.0.4", port);
    asio::write(holder, asio::buffer(std::string_view("GET /health HT")));
    // ...leaves nothing for the next one, which is closed at once. (Accepted
    // in order: the holder was admitted before it.)
    auto refused = test::raw_exchange(port, "GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK(refused.closed);
    CHECK(refused.received.empty());
    // The busy connections were never evicted: they get their answers.
    release = true;
    for (auto& s : busy) {
        CHECK(status_line(s) == "HTTP/1.1 200");
    }
    // Read in the process: a scrape would itself need a slot.
    const auto text = host.services().get<hosting::metrics_registry>().render();
    CHECK(text.find("\nhosting_http_connections_rejected_total{reason=\"busy\"} 1\n") != std::string::npos);
    CHECK(text.find("\nhosting_http_connections_reserved_total 2\n") != std::string::npos);
    host.stop_blocking();
}

TEST_CASE("idle keep-alive connections and unread responses are closed by their own time limits",
          "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto options = loopback();
    options.idle_timeout = 200ms;
    options.write_timeout = 300ms;
    options.request_timeout = 30s;
    hosting::add_health_endpoint(builder, options);
    // Far more than the socket buffers hold, so that a client that does not
    // read leaves the write pending.
    hosting::http::add_http_server(builder).route(
        "/big", [](const hosting::http::request&) -> asio::awaitable<hosting::http::response> {
            hosting::http::response res;
            res.content_type = "text/plain";
            res.body.assign(64 * 1024 * 1024, 'x');
            co_return res;
        });
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);
    asio::io_context io;

    SECTION("idle")
    {
        asio::ip::tcp::socket kept(io);
        kept.connect({asio::ip::make_address("127.0.0.1"), port});
        bound_reads(kept);
        asio::write(kept, asio::buffer(std::string_view("GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")));
        CHECK(status_line(kept) == "HTTP/1.1 200");
        // Then nothing: the server closes it (the read drains the response
        // first and ends at the close).
        boost::system::error_code ec;
        std::string rest;
        asio::read(kept, asio::dynamic_buffer(rest), ec);
        CHECK(ec == asio::error::eof);
        CHECK(metric_value(port, "hosting_http_timeouts_total{kind=\"idle\"}") == 1);
        CHECK(metric_value(port, "hosting_http_timeouts_total{kind=\"request\"}") == 0);
    }
    SECTION("write")
    {
        asio::ip::tcp::socket reader(io);
        reader.connect({asio::ip::make_address("127.0.0.1"), port});
        asio::write(reader, asio::buffer(std::string_view("GET /big HTTP/1.1\r\nHost: x\r\n\r\n")));
        REQUIRE(test::eventually(
            [&] { return metric_value(port, "hosting_http_timeouts_total{kind=\"write\"}") == 1; }));
        // And the server goes on answering.
        CHECK(test::http_get(port, "/health/live").status == 200);
    }
    host.stop_blocking();
}

TEST_CASE("the endpoint stops within the deadline even with clients connected", "[health][http]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.options().shutdown_timeout = 2s;
    hosting::add_health_endpoint(builder, loopback());
    auto host = builder.build();
    host.start_blocking();
    const auto port = port_of(host);
    asio::io_context io;
    asio::ip::tcp::socket idle(io);
    idle.connect({asio::ip::make_address("127.0.0.1"), port});
    std::string partial = "GET /health/live HTTP/1.1\r\n";
    asio::write(idle, asio::buffer(partial));

    host.stop_blocking();
    CHECK(host.exit_code() == 0);
    CHECK_FALSE(sink->has("did not stop in time"));
    char byte;
    boost::system::error_code ec;
    idle.read_some(asio::buffer(&byte, 1), ec);
    CHECK(ec); // closed by the stop
}

// ---------------------------------------------------------------------------
// Metrics over HTTP

TEST_CASE("/metrics parses line by line and carries the host's series", "[health][http][metrics]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.options().background_service_exception_behavior = hosting::background_service_exception_behavior::ignore;
    hosting::add_health_checks(builder).options().loop_lag_interval = 20ms;
    hosting::add_health_checks(builder).add_check("db", []() -> asio::awaitable<hosting::health_check_result> {
        co_return hosting::health_check_result::healthy();
    });
    hosting::add_health_endpoint(builder, loopback());
    builder.services().add_hosted_service<idle_worker>().name("steady");
    builder.services().add_hosted_service<faulting_worker>().name("ingest");
    auto host = builder.build();
    host.services().get<hosting::metrics_registry>().counter("app_orders_total", "Orders", {{"shop", "north"}}).inc(2);
    host.start_blocking();
    const auto port = port_of(host);
    REQUIRE(sink->wait_for("Background service 'ingest' faulted"));
    CHECK(test::http_get(port, "/health").status == 503); // runs the check once
    // The loop monitor has ticked at least once.
    REQUIRE(test::eventually([&] {
        return test::http_get(port, "/metrics").body.find("hosting_event_loop_lag_seconds_count{loop=\"main\"} 0\n") ==
               std::string::npos;
    }));

    const auto text = test::http_get(port, "/metrics").body;
    const std::regex help(R"(^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .*$)");
    const std::regex type(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$)");
    const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (\S+)$)");
    std::map<std::string, std::string> types;
    std::map<std::string, double> values;
    std::istringstream lines(text);
    std::string line;
    int samples = 0;
    while (std::getline(lines, line)) {
        INFO(line);
        std::smatch m;
        if (std::regex_match(line, m, help))
            continue;
        if (std::regex_match(line, m, type)) {
            CHECK(types.count(m[1]) == 0); // one TYPE per family
            types[m[1]] = m[2];
            continue;
        }
        REQUIRE(std::regex_match(line, m, sample));
        std::string name = m[1];
        std::string family = name;
        for (const char* suffix : {"_bucket", "_sum", "_count"})
            if (!types.count(family) && family.size() > std::strlen(suffix) &&
                family.compare(family.size() - std::strlen(suffix), std::string::npos, suffix) == 0)
                family = family.substr(0, family.size() - std::strlen(suffix));
        CHECK(types.count(family) == 1); // declared before its samples
        const std::string value = m[5];
        double v = value == "+Inf" ? INFINITY : std::stod(value);
        values[line.substr(0, line.rfind(' '))] = v;
        ++samples;
    }
    CHECK(samples > 20);
    CHECK(types["hosting_service_state"] == "gauge");
    CHECK(values["hosting_service_state{service=\"steady\",state=\"running\"}"] == 1);
    CHECK(values["hosting_service_state{service=\"steady\",state=\"faulted\"}"] == 0);
    CHECK(values["hosting_service_state{service=\"ingest\",state=\"faulted\"}"] == 1);
    CHECK(values["hosting_service_faults_total{service=\"ingest\"}"] == 1);
    CHECK(values["hosting_service_restarts_total{service=\"ingest\"}"] == 0);
    CHECK(types["hosting_event_loop_lag_seconds"] == "histogram");
    CHECK(values["hosting_event_loop_lag_seconds_count{loop=\"main\"}"] >= 1);
    CHECK(values["hosting_health_check_duration_seconds_count{check=\"db\"}"] == 1);
    CHECK(values["hosting_health_check_status{check=\"db\"}"] == 0);
    CHECK(values["hosting_ready"] == 1);
    CHECK(values["app_orders_total{shop=\"north\"}"] == 2);
    CHECK(values["hosting_http_requests_total{path=\"/health\",code=\"503\"}"] == 1);

    host.stop_blocking();
}

// ---------------------------------------------------------------------------
// Publishing

TEST_CASE("publishers push the report after start, on a period, without overlapping runs", "[health]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    std::atomic<int> runs{0};
    test::high_water overlap;
    std::atomic<bool> ready_when_first{false};
    recorder r;
    hosting::health_monitor* monitor = nullptr;
    hosting::health_publisher_options every;
    every.delay = 0ms;
    every.period = 50ms;
    hosting::add_health_checks(builder).add_publisher(
        "test",
        [&](const hosting::health_report& report, std::stop_token) -> asio::awaitable<void> {
            if (runs.load() == 0)
                ready_when_first = monitor && monitor->ready() && report.find("readiness") != nullptr;
            overlap.enter();
            // Longer than the period: the next run must wait for this one.
            co_await hosting::delay(120ms);
            overlap.leave();
            ++runs;
            r.add("published");
        },
        every);
    auto host = builder.build();
    monitor = &host.services().get<hosting::health_monitor>();
    host.start_blocking();
    REQUIRE(r.wait_for_count(3));
    host.stop_blocking();
    CHECK(overlap.most() == 1);
    CHECK(ready_when_first.load());
    CHECK(host.exit_code() == 0);
}

// ---------------------------------------------------------------------------
// The example, end to end

#ifdef HOSTING_EXAMPLE_HEALTH
TEST_CASE("the health example serves its endpoint and restarts its flaky exporter", "[health][example]")
{
    test::child_process child(HOSTING_EXAMPLE_HEALTH, {"--Health:Port=0", "--Health:ExporterLifespanMs=200"});
    REQUIRE(child.wait_for_output("listening on http://127.0.0.1:"));
    REQUIRE(child.wait_for_output("/metrics)\n"));
    REQUIRE(child.wait_for_output("Restarted service 'exporter' (restart 1)"));
    std::smatch m;
    const std::string output = child.output();
    REQUIRE(std::regex_search(output, m, std::regex("listening on http://127.0.0.1:(\\d+) ")));
    const auto port = static_cast<unsigned short>(std::stoi(m[1]));

    auto live = test::http_get(port, "/health/live");
    CHECK((live.status == 200 || live.status == 503));
    CHECK(live.body.find("service:exporter") != std::string::npos);
    auto ready = test::http_get(port, "/health/ready");
    CHECK(ready.status == 200);
    CHECK(ready.body.find("spool ready") != std::string::npos);
    auto metrics = test::http_get(port, "/metrics").body;
    CHECK(std::regex_search(metrics, std::regex("hosting_service_restarts_total\\{service=\"exporter\"\\} [1-9]")));

    child.send_signal(SIGTERM);
    CHECK(child.wait_exit() == 0);
}
#endif
