#include <hosting/core/services.hpp>
#include <hosting/core/host.hpp>

#include "support.hpp"

#include <catch2/catch.hpp>

namespace asio = boost::asio;

namespace {

struct clock_source {
    virtual ~clock_source() = default;
    virtual int now() const = 0;
};
struct fixed_clock : clock_source {
    int now() const override { return 42; }
};

struct config {
    explicit config(std::string n) : name(std::move(n)) {}
    std::string name;
};

struct repository {
    explicit repository(hosting::service_provider& p) : cfg(p.get<config>()), clock(p.get<clock_source>()) {}
    config& cfg;
    clock_source& clock;
};

struct needs_missing {
    struct not_registered {};
    explicit needs_missing(hosting::service_provider& p) { p.get<not_registered>(); }
};

struct cycle_b;
struct cycle_a {
    explicit cycle_a(hosting::service_provider& p);
};
struct cycle_b {
    explicit cycle_b(hosting::service_provider& p) { p.get<cycle_a>(); }
};
cycle_a::cycle_a(hosting::service_provider& p) { p.get<cycle_b>(); }

int instances = 0;
class counted : public hosting::hosted_service {
public:
    counted(hosting::service_provider& p, int id) : id_(id), repo_(p.get<repository>()) { ++instances; }
    asio::awaitable<void> start(std::stop_token) override { co_return; }
    asio::awaitable<void> stop(std::stop_token) override { co_return; }
    int id_;
    repository& repo_;
};

} // namespace

TEST_CASE("singletons resolve with dependencies interfaces and existing instances", "[services]")
{
    hosting::service_collection services;
    // Registered before its dependencies: construction order follows needs.
    services.add_singleton<repository>();
    services.add_singleton<config>(std::string("prod"));
    services.add_singleton<clock_source, fixed_clock>();
    auto shared = std::make_shared<int>(7);
    services.add_singleton(shared);
    hosting::service_provider provider(std::move(services));
    provider.construct_all();

    auto& repo = provider.get<repository>();
    CHECK(repo.cfg.name == "prod");
    CHECK(repo.clock.now() == 42);
    CHECK(&provider.get<config>() == &repo.cfg);
    CHECK(&provider.get<int>() == shared.get());
    CHECK(provider.try_get<double>() == nullptr);
    CHECK(provider.try_get<config>() == &repo.cfg);
}

TEST_CASE("a missing service is an error that names the type and who needed it", "[services]")
{
    hosting::service_provider empty{hosting::service_collection{}};
    CHECK_THROWS_MATCHES(empty.get<config>(), hosting::service_not_found,
                         Catch::Message("service_provider: no service registered for (anonymous namespace)::config"));

    hosting::service_collection services;
    services.add_singleton<needs_missing>();
    hosting::service_provider provider(std::move(services));
    CHECK_THROWS_WITH(provider.construct_all(), Catch::Contains("needs_missing::not_registered") &&
                                                    Catch::Contains("needed by (anonymous namespace)::needs_missing"));
}

TEST_CASE("a dependency cycle and a duplicate registration are rejected", "[services]")
{
    hosting::service_collection services;
    services.add_singleton<cycle_a>();
    services.add_singleton<cycle_b>();
    CHECK_THROWS_WITH(services.add_singleton<cycle_b>(), Catch::Contains("cycle_b is already registered"));
    hosting::service_provider provider(std::move(services));
    CHECK_THROWS_WITH(provider.construct_all(), Catch::Contains("dependency cycle") && Catch::Contains("cycle_a -> "));
    CHECK_THROWS_AS(hosting::service_collection{}.add_singleton(std::shared_ptr<int>{}), std::invalid_argument);
}

TEST_CASE("the same hosted type registered twice gives two instances", "[services][host]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.services().add_singleton<repository>();
    builder.services().add_singleton<config>(std::string("x"));
    builder.services().add_singleton<clock_source, fixed_clock>();
    builder.services().add_hosted_service<counted>(1);
    builder.services().add_hosted_service<counted>(2).name("second");
    instances = 0;
    auto host = builder.build();
    CHECK(instances == 2);
    auto statuses = host.service_statuses();
    REQUIRE(statuses.size() == 2);
    CHECK(statuses[0].name == "(anonymous namespace)::counted");
    CHECK(statuses[1].name == "second");
    CHECK(host.services().try_get<hosting::application_lifetime>() == &host.lifetime());
    CHECK(host.services().try_get<hosting::logger_factory>() != nullptr);
}

TEST_CASE("a registration kept past build() refuses to change what can no longer take effect", "[services][host]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.services().add_singleton<repository>();
    builder.services().add_singleton<config>(std::string("x"));
    builder.services().add_singleton<clock_source, fixed_clock>();
    auto kept = builder.services().add_hosted_service<counted>(1);
    // Registrations added after it leave it valid.
    for (int i = 0; i < 100; ++i)
        builder.services().add_hosted_service<counted>(i);
    kept.name("kept").starts_first();
    instances = 0;
    auto host = builder.build();
    CHECK(instances == 101);
    CHECK(host.service_statuses().front().name == "kept");
    CHECK_THROWS_WITH(kept.name("late"), Catch::Contains("already built"));
    CHECK_THROWS_AS(kept.starts_first(), std::logic_error);
}

TEST_CASE("build() reports a hosted service's missing dependency", "[services][host]")
{
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.services().add_hosted_service<counted>(1);
    CHECK_THROWS_AS(builder.build(), hosting::service_not_found);
}

TEST_CASE("loggers are named per category and follow per-category levels", "[logging]")
{
    auto sink = std::make_shared<test::capture_sink>();
    hosting::logging_options options;
    options.level = spdlog::level::info;
    options.category_levels["app.noisy"] = spdlog::level::err;
    options.sinks.push_back(sink);
    hosting::logger_factory factory(options);
    auto a = factory.get("app.worker");
    CHECK(a == factory.get("app.worker"));
    CHECK(a->name() == "app.worker");
    factory.get("app.noisy.part")->warn("hidden");
    factory.get("app.noisy")->error("shown");
    a->info("hello");
    CHECK_FALSE(sink->has("hidden"));
    CHECK(sink->has("shown", spdlog::level::err, "app.noisy"));
    CHECK(sink->has("hello", spdlog::level::info, "app.worker"));
}

namespace {
struct order_log {
    std::vector<std::string> events;
};
struct first_made {
    explicit first_made(order_log* log) : log_(log) {}
    ~first_made() { log_->events.push_back("first destroyed"); }
    bool alive = true;
    order_log* log_;
};
struct second_made {
    second_made(hosting::service_provider& p, order_log* log) : first_(p.get<first_made>()), log_(log) {}
    // Uses what it was built from until it dies.
    ~second_made() { log_->events.push_back(first_.alive ? "second destroyed, first alive" : "second destroyed late"); }
    first_made& first_;
    order_log* log_;
};
} // namespace

TEST_CASE("singletons die in reverse construction order, whatever their registration order", "[services]")
{
    order_log log;
    for (int round = 0; round < 8; ++round) {
        log.events.clear();
        {
            hosting::service_collection services;
            // Registered before what it depends on: construction order, not
            // registration order (nor a hash map's), decides.
            services.add_singleton<second_made>(&log);
            services.add_singleton<first_made>(std::make_shared<first_made>(&log));
            hosting::service_provider provider(std::move(services));
            provider.construct_all();
        }
        REQUIRE(log.events.size() == 2);
        CHECK(log.events[0] == "second destroyed, first alive");
        CHECK(log.events[1] == "first destroyed");
    }
}
