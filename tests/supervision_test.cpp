#include <hosting/hosting.hpp>

#include "support.hpp"

#include <boost/asio/this_coro.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <mutex>
#include <vector>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using clock_type = std::chrono::steady_clock;

namespace {

// Shared by every instance a restart policy creates.
struct lives {
    test::recorder events;
    std::atomic<int> instances{0};
    std::mutex mutex;
    std::vector<clock_type::time_point> launches;

    int launch()
    {
        std::lock_guard lock(mutex);
        launches.push_back(clock_type::now());
        return ++instances;
    }
    std::vector<clock_type::time_point> times()
    {
        std::lock_guard lock(mutex);
        return launches;
    }
};

// Ends by itself in its first `early` lives, faulting or returning after
// `span`, then runs until stopped.
class mortal : public hosting::background_service {
public:
    enum class ending { fault, completion };
    mortal(lives* l, int early, ending how, std::chrono::milliseconds span = 0ms)
        : lives_(l), early_(early), how_(how), span_(span)
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        const int life = lives_->launch();
        lives_->events.add("life " + std::to_string(life));
        co_await asio::this_coro::executor;
        if (life <= early_) {
            if (span_.count() > 0)
                co_await hosting::delay(span_, stopping);
            if (how_ == ending::fault)
                throw std::runtime_error("flaky failure " + std::to_string(life));
            co_return;
        }
        co_await hosting::delay(std::chrono::hours(1), stopping);
    }

private:
    lives* lives_;
    int early_;
    ending how_;
    std::chrono::milliseconds span_;
};

class flaky : public mortal {
public:
    flaky(lives* l, int failures) : mortal(l, failures, ending::fault) {}
};

class quitter : public mortal {
public:
    quitter(lives* l, int completions) : mortal(l, completions, ending::completion) {}
};

class plain : public hosting::hosted_service {
public:
    asio::awaitable<void> start(std::stop_token) override { co_return; }
    asio::awaitable<void> stop(std::stop_token) override { co_return; }
};

hosting::restart_policy quick(hosting::restart_mode mode, std::size_t burst = 5)
{
    hosting::restart_policy p;
    p.mode = mode;
    p.initial_delay = 20ms;
    p.multiplier = 2;
    p.jitter = 0;
    p.burst = burst;
    p.window = std::chrono::minutes(1);
    return p;
}

} // namespace

TEST_CASE("on_failure restarts a faulted service with exponential backoff", "[supervision]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    lives l;
    auto policy = quick(hosting::restart_mode::on_failure);
    policy.initial_delay = 50ms;
    policy.multiplier = 4;
    builder.services().add_hosted_service<flaky>(&l, 3).name("flaky").restart(policy);
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(l.events.wait_for("life 4"));

    // The new life may begin inside the launch, before the status counts
    // the restart; the log line comes last.
    REQUIRE(sink->wait_for("Restarted service 'flaky' (restart 3)"));
    auto statuses = host.service_statuses();
    REQUIRE(statuses.size() == 1);
    CHECK(statuses[0].restarts == 3);
    CHECK(statuses[0].faults == 3);
    CHECK(statuses[0].state == hosting::service_state::running);
    CHECK_FALSE(statuses[0].restart_pending);

    // Waits of 50, 200 and 800 ms: timers never fire early, so these
    // lower bounds hold on any machine.
    auto t = l.times();
    REQUIRE(t.size() == 4);
    CHECK(t[1] - t[0] >= 50ms);
    CHECK(t[2] - t[1] >= 200ms);
    CHECK(t[3] - t[2] >= 800ms);
    CHECK(sink->has("Service 'flaky' faulted; restarting it in 50 ms (restart 1 of at most 5 within 60 s)"));
    CHECK(sink->has("restarting it in 200 ms (restart 2"));
    CHECK(sink->has("restarting it in 800 ms (restart 3"));

    host.stop_blocking();
    // Faults that a restart absorbed do not fail the run.
    CHECK(host.exit_code() == 0);
}

TEST_CASE("always also restarts a service that completed, on_failure and never do not", "[supervision]")
{
    auto sink = std::make_shared<test::capture_sink>();
    lives always_lives, on_failure_lives, never_lives;
    auto builder = test::make_builder(sink);
    builder.services().add_hosted_service<quitter>(&always_lives, 2).name("always").restart(
        quick(hosting::restart_mode::always));
    builder.services().add_hosted_service<quitter>(&on_failure_lives, 1).name("on_failure").restart(
        quick(hosting::restart_mode::on_failure));
    builder.services().add_hosted_service<quitter>(&never_lives, 1).name("never");
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(always_lives.events.wait_for("life 3"));
    REQUIRE(sink->wait_for("Restarted service 'always' (restart 2)"));
    // The other two ended in their first life; their ends are reported on
    // the host's loop, which the restarts do not order.
    REQUIRE(test::eventually([&] {
        auto s = host.service_statuses();
        return s[1].state == hosting::service_state::completed && s[2].state == hosting::service_state::completed;
    }));
    auto s = host.service_statuses();
    CHECK(s[0].restarts == 2);
    CHECK(s[0].state == hosting::service_state::running);
    CHECK(s[1].restarts == 0);
    CHECK(on_failure_lives.instances.load() == 1);
    CHECK(never_lives.instances.load() == 1);
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("restarts older than the window do not count toward its burst", "[supervision]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    lives l;
    // One restart per 100 ms at most, and each life lasts 250 ms: however
    // many faults, none finds an earlier restart inside the window.
    auto policy = quick(hosting::restart_mode::on_failure, 1);
    policy.window = 100ms;
    builder.services().add_hosted_service<mortal>(&l, 3, mortal::ending::fault, 250ms).name("slow-fail").restart(policy);
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(sink->wait_for("Restarted service 'slow-fail' (restart 3)"));
    const auto s = host.service_statuses()[0];
    CHECK(s.restarts == 3);
    CHECK_FALSE(s.restarts_exhausted);
    CHECK_FALSE(sink->has("the restart limit is reached"));
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("reaching the restart limit applies background_service_exception_behavior", "[supervision]")
{
    auto sink = std::make_shared<test::capture_sink>();
    lives l;

    SECTION("stop_host")
    {
        auto builder = test::make_builder(sink);
        builder.services().add_hosted_service<flaky>(&l, 1000).name("doomed").restart(
            quick(hosting::restart_mode::on_failure, 2));
        auto host = builder.build();
        // The third fault finds two restarts within the window: the host
        // stops itself and run() reports the failure.
        CHECK(host.run() == 1);
        CHECK(l.instances.load() == 3);
        CHECK(sink->has("Service 'doomed' faulted after 2 restarts within 60 s; the restart limit is reached"));
        CHECK(sink->has("Stopping the host because 'doomed' faulted"));
    }
    SECTION("ignore, seen in health")
    {
        auto builder = test::make_builder(sink);
        builder.options().background_service_exception_behavior =
            hosting::background_service_exception_behavior::ignore;
        hosting::health_endpoint_options endpoint;
        endpoint.port = 0;
        hosting::add_health_endpoint(builder, endpoint);
        builder.services().add_hosted_service<flaky>(&l, 1000).name("doomed").restart(
            quick(hosting::restart_mode::on_failure, 2));
        auto host = builder.build();
        host.start_blocking();
        REQUIRE(sink->wait_for("the restart limit is reached"));
        auto all = host.service_statuses();
        REQUIRE(all.size() == 2);
        CHECK(all[0].name == "hosting.http_server"); // registered first, stopped last
        auto s = all[1];
        CHECK(s.restarts_exhausted);
        CHECK(s.restarts == 2);
        CHECK(s.faults == 3);
        const auto port = host.services().get<hosting::http::server>().port();
        auto live = test::http_get(port, "/health/live");
        CHECK(live.status == 503);
        auto entry = boost::json::parse(live.body).at("entries").at("service:doomed");
        CHECK(std::string(entry.at("description").as_string()).find("restart limit reached") != std::string::npos);
        CHECK(entry.at("data").at("restarts").as_string() == "2");
        auto metrics = test::http_get(port, "/metrics").body;
        CHECK(metrics.find("hosting_service_restarts_total{service=\"doomed\"} 2\n") != std::string::npos);
        CHECK(metrics.find("hosting_service_faults_total{service=\"doomed\"} 3\n") != std::string::npos);
        host.stop_blocking();
        CHECK(host.exit_code() == 0);
    }
}

TEST_CASE("a pending restart is shown as degraded and cancelled by the stop", "[supervision]")
{
    auto sink = std::make_shared<test::capture_sink>();
    lives l;
    auto builder = test::make_builder(sink);
    hosting::add_health_checks(builder);
    auto policy = quick(hosting::restart_mode::on_failure);
    policy.initial_delay = std::chrono::hours(1);
    policy.max_delay = std::chrono::hours(1);
    builder.services().add_hosted_service<flaky>(&l, 1).name("later").restart(policy);
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(sink->wait_for("restarting it in 3600000 ms"));
    auto report = host.services().get<hosting::health_monitor>().host_entries("live");
    auto* entry = report.find("service:later");
    REQUIRE(entry);
    CHECK(entry->status == hosting::health_status::degraded);
    CHECK(entry->description == "restarting after it faulted: flaky failure 1");
    CHECK(host.service_statuses()[0].restart_pending);
    // The stop must not wait an hour for the restart.
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
    CHECK(l.instances.load() == 1);
    CHECK(sink->has("will not be restarted: the host is stopping"));
}

TEST_CASE("restart policies are validated and only apply to background services", "[supervision]")
{
    auto sink = std::make_shared<test::capture_sink>();
    {
        auto builder = test::make_builder(sink);
        builder.services().add_hosted_service<plain>().name("plain").restart(hosting::restart_mode::always);
        CHECK_THROWS_WITH(builder.build(), Catch::Contains("'plain' has a restart policy but is not a background_service"));
    }
    hosting::service_collection services;
    auto bad = hosting::restart_policy::on_failure();
    bad.burst = 0;
    CHECK_THROWS_WITH(services.add_hosted_service<plain>().restart(bad), Catch::Contains("burst"));
    bad = hosting::restart_policy::on_failure();
    bad.max_delay = 1ms;
    CHECK_THROWS_WITH(services.add_hosted_service<plain>().restart(bad), Catch::Contains("max_delay"));
    bad = hosting::restart_policy::on_failure();
    bad.jitter = 2;
    CHECK_THROWS_WITH(services.add_hosted_service<plain>().restart(bad), Catch::Contains("jitter"));
}
