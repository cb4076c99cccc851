#include <hosting/scheduling/cron_service.hpp>
#include <hosting/hosting.hpp>
#include <hosting/scheduling/periodic_service.hpp>
#include <hosting/scheduling/periodic_timer.hpp>

#include "support.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <thread>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using steady = std::chrono::steady_clock;

namespace {

// Runs `body` as a coroutine on `io` (run by this thread) and rethrows.
template <class F>
void run_on(asio::io_context& io, F body)
{
    std::exception_ptr error;
    bool done = false;
    asio::co_spawn(io, std::move(body), [&](std::exception_ptr e) {
        error = e;
        done = true;
    });
    io.run();
    REQUIRE(done);
    if (error)
        std::rethrow_exception(error);
}

// Blocks the loop's only thread, as a careless service would.
void block_loop(std::chrono::milliseconds d) { std::this_thread::sleep_for(d); }

} // namespace

TEST_CASE("periodic_timer ticks at fixed-rate slots", "[scheduling]")
{
    asio::io_context io;
    run_on(io, [&]() -> asio::awaitable<void> {
        // Long enough that a late wake-up on a loaded machine is not a
        // missed slot (that takes half a period).
        hosting::periodic_timer timer(co_await asio::this_coro::executor, 200ms);
        std::vector<steady::time_point> slots;
        for (int i = 0; i < 4; ++i) {
            {
                // Not inside the macro: Catch's REQUIRE and co_await do not mix.
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            CHECK(steady::now() >= timer.scheduled_time());
            CHECK(timer.missed_ticks() == 0);
            slots.push_back(timer.scheduled_time());
        }
        for (std::size_t i = 1; i < slots.size(); ++i)
            CHECK(slots[i] - slots[i - 1] == 200ms); // exactly: slots, not wake-up times
    });
    CHECK_THROWS_AS(hosting::periodic_timer(io.get_executor(), 0ms), std::invalid_argument);
}

TEST_CASE("periodic_timer missed-tick policies behind a blocked loop", "[scheduling]")
{
    // Period 200 ms; after the first tick (slot s0) the loop is blocked for
    // 520 ms, so at least s0+200 and s0+400 pass unattended. How many more
    // pass is read from the clock: a busy machine can oversleep the block,
    // and a slot can pass between that reading and the tick.
    const auto period = 200ms;
    // The last slot at or before `t`: s0 + n * period <= t.
    auto slot_at = [&](steady::time_point s0, steady::time_point t) { return static_cast<int>((t - s0) / period); };
    SECTION("fire_once fires at once, once, for the latest slot")
    {
        asio::io_context io;
        run_on(io, [&]() -> asio::awaitable<void> {
            hosting::periodic_timer timer(co_await asio::this_coro::executor, period, 0ms,
                                          hosting::missed_tick_policy::fire_once);
            {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            const auto s0 = timer.scheduled_time();
            block_loop(520ms);
            const auto asked = steady::now();
            const int passed = slot_at(s0, asked);
            REQUIRE(passed >= 2);
            {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            const auto fired = timer.scheduled_time();
            CHECK((fired - s0) % period == 0ms);
            const int k = slot_at(s0, fired);
            // The latest slot passed, not a later one waited for; the next
            // slot only if it came in the instant between the reading and
            // the tick (a wait for it would mostly be longer).
            CHECK((k == passed || (k == passed + 1 && fired - asked < 2ms)));
            CHECK(timer.missed_ticks() == static_cast<std::uint64_t>(k - 1));
            {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            CHECK(timer.scheduled_time() > fired);
            CHECK((timer.scheduled_time() - s0) % period == 0ms);
        });
    }
    SECTION("fire_each catches up one tick per call")
    {
        asio::io_context io;
        run_on(io, [&]() -> asio::awaitable<void> {
            hosting::periodic_timer timer(co_await asio::this_coro::executor, period, 0ms,
                                          hosting::missed_tick_policy::fire_each);
            {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            const auto s0 = timer.scheduled_time();
            block_loop(520ms);
            const int passed = slot_at(s0, steady::now());
            REQUIRE(passed >= 2);
            // Every slot, in order, each once: the passed ones at once.
            for (int i = 1; i <= passed; ++i) {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
                CHECK(timer.scheduled_time() == s0 + i * period);
                CHECK(timer.scheduled_time() <= steady::now());
            }
            {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            CHECK(timer.scheduled_time() == s0 + (passed + 1) * period);
            CHECK(steady::now() >= s0 + (passed + 1) * period); // not before its slot
            CHECK(timer.missed_ticks() == 0);
        });
    }
    SECTION("skip waits for the next slot still ahead")
    {
        asio::io_context io;
        run_on(io, [&]() -> asio::awaitable<void> {
            hosting::periodic_timer timer(co_await asio::this_coro::executor, period, 0ms,
                                          hosting::missed_tick_policy::skip);
            {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            const auto s0 = timer.scheduled_time();
            block_loop(520ms);
            const auto asked = steady::now();
            const int passed = slot_at(s0, asked);
            REQUIRE(passed >= 2);
            {
                const bool ticked = co_await timer.next_tick();
                REQUIRE(ticked);
            }
            const int k = slot_at(s0, timer.scheduled_time());
            CHECK((timer.scheduled_time() - s0) % period == 0ms);
            if (asked - (s0 + passed * period) > period / 2)
                // Missed too (half a period late for it): the first slot
                // ahead, waited for (or the one after, should that one
                // have come and been missed in the meantime).
                CHECK((k == passed + 1 || k == passed + 2));
            else
                // Late by less than half a period (the block overslept):
                // that slot, at once (or the next, as above).
                CHECK((k == passed || k == passed + 1));
            CHECK(steady::now() >= timer.scheduled_time());
            CHECK(timer.missed_ticks() == static_cast<std::uint64_t>(k - 1));
        });
    }
}

TEST_CASE("periodic_timer takes a new period while it waits", "[scheduling]")
{
    asio::io_context io;
    run_on(io, [&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        hosting::periodic_timer timer(ex, 1h);
        asio::steady_timer later(ex, 20ms);
        steady::time_point changed_at;
        later.async_wait([&](boost::system::error_code) {
            changed_at = steady::now();
            timer.period(30ms);
        });
        {
            const bool ticked = co_await timer.next_tick();
            REQUIRE(ticked);
        } // would be an hour without the change
        CHECK(timer.period() == 30ms);
        CHECK(timer.scheduled_time() >= changed_at + 30ms);
        CHECK(timer.scheduled_time() < changed_at + 30ms + 50ms);
        {
            const bool ticked = co_await timer.next_tick();
            REQUIRE(ticked);
        }
        CHECK(steady::now() - changed_at < test::patience);
    });
}

TEST_CASE("periodic_timer: a shorter period after a long pause starts from now, not a burst", "[scheduling]")
{
    asio::io_context io;
    run_on(io, [&]() -> asio::awaitable<void> {
        hosting::periodic_timer timer(co_await asio::this_coro::executor, 30ms, 0ms,
                                      hosting::missed_tick_policy::fire_each);
        {
            const bool ticked = co_await timer.next_tick();
            REQUIRE(ticked);
        }
        block_loop(100ms);
        const auto changed_at = steady::now();
        timer.period(10ms); // last slot + 10 ms is long past
        {
            const bool ticked = co_await timer.next_tick();
            REQUIRE(ticked);
        }
        CHECK(timer.missed_ticks() == 0);
        CHECK(timer.scheduled_time() >= changed_at);
        const auto first = timer.scheduled_time();
        {
            const bool ticked = co_await timer.next_tick();
            REQUIRE(ticked);
        }
        CHECK(timer.scheduled_time() - first == 10ms); // a rhythm, not a catch-up burst
        CHECK(steady::now() >= first + 10ms);
    });
}

TEST_CASE("periodic_timer returns false when its token fires during the wait", "[scheduling][concurrency]")
{
    asio::io_context io;
    std::stop_source source;
    bool result = true;
    steady::duration waited{};
    run_on(io, [&]() -> asio::awaitable<void> {
        hosting::periodic_timer timer(co_await asio::this_coro::executor, 1h);
        std::jthread firer([&] { source.request_stop(); });
        const auto began = steady::now();
        result = co_await timer.next_tick(source.get_token());
        waited = steady::now() - began;
    });
    CHECK_FALSE(result);
    CHECK(waited < test::patience);
}

TEST_CASE("periodic_timer ends its loop when the token fires", "[scheduling]")
{
    asio::io_context io;
    std::stop_source source;
    int ticks = 0;
    run_on(io, [&]() -> asio::awaitable<void> {
        hosting::periodic_timer timer(co_await asio::this_coro::executor, 5ms);
        while (co_await timer.next_tick(source.get_token()))
            if (++ticks == 3)
                source.request_stop();
    });
    CHECK(ticks == 3);
}

namespace {

class recorded_ticks : public hosting::periodic_service {
public:
    recorded_ticks(hosting::periodic_options o, std::chrono::milliseconds work, test::recorder* r,
                   std::vector<steady::time_point>* starts, std::atomic<int>* in_flight, std::atomic<int>* max_in_flight,
                   int fail_first = 0)
        : periodic_service(o), work_(work), r_(r), starts_(starts), in_flight_(in_flight),
          max_in_flight_(max_in_flight), fail_first_(fail_first)
    {
    }

protected:
    asio::awaitable<void> tick(std::stop_token stopping) override
    {
        starts_->push_back(steady::now());
        int now = ++*in_flight_;
        int seen = max_in_flight_->load();
        while (now > seen && !max_in_flight_->compare_exchange_weak(seen, now))
            ;
        struct leave {
            std::atomic<int>* n;
            ~leave() { --*n; }
        } guard{in_flight_};
        if (fail_first_ > 0) {
            --fail_first_;
            r_->add("tick failed");
            throw std::runtime_error("tick boom");
        }
        co_await hosting::delay(work_, stopping);
        r_->add("tick");
    }

private:
    std::chrono::milliseconds work_;
    test::recorder* r_;
    std::vector<steady::time_point>* starts_;
    std::atomic<int>* in_flight_;
    std::atomic<int>* max_in_flight_;
    int fail_first_;
};

struct periodic_run {
    test::recorder r;
    std::vector<steady::time_point> starts;
    std::atomic<int> in_flight{0};
    std::atomic<int> max_in_flight{0};
    std::shared_ptr<test::capture_sink> sink = std::make_shared<test::capture_sink>();
    hosting::schedule_status status;
    int exit_code = -1;

    // Runs a host with one recorded_ticks service until `ticks` ticks ended.
    void run(hosting::periodic_options o, std::chrono::milliseconds work, std::size_t ticks, int fail_first = 0)
    {
        auto builder = test::make_builder(sink);
        builder.services()
            .add_hosted_service<recorded_ticks>(o, work, &r, &starts, &in_flight, &max_in_flight, fail_first)
            .name("ticker");
        auto host = builder.build();
        host.start_blocking();
        REQUIRE(r.wait_for_count(ticks));
        host.stop_blocking();
        exit_code = host.exit_code();
    }
};

} // namespace

TEST_CASE("periodic_service: fixed rate keeps its slots, fixed delay counts from the end", "[scheduling]")
{
    hosting::periodic_options o;
    o.interval = 100ms;
    periodic_run rate;
    rate.run(o, 60ms, 5);
    o.mode = hosting::schedule_mode::fixed_delay;
    periodic_run delay;
    delay.run(o, 60ms, 5);
    REQUIRE(rate.starts.size() >= 5);
    REQUIRE(delay.starts.size() >= 5);
    for (std::size_t i = 1; i < 5; ++i)
        CHECK(delay.starts[i] - delay.starts[i - 1] >= 160ms); // 60 ms of work + 100 ms
    // Fixed rate: four intervals of 100 ms, well under fixed delay's 640 ms.
    CHECK(rate.starts[4] - rate.starts[0] < 4 * 160ms);
    // Not early: starts are wake-up times, and the first can be late.
    CHECK(rate.starts[4] - rate.starts[0] >= 4 * 100ms - 50ms);
    CHECK(rate.exit_code == 0);
}

TEST_CASE("periodic_service: overlap never by default, up to a limit when asked", "[scheduling]")
{
    hosting::periodic_options o;
    o.interval = 50ms;
    o.missed_ticks = hosting::missed_tick_policy::fire_once;
    periodic_run never;
    never.run(o, 120ms, 3);
    CHECK(never.max_in_flight.load() == 1);

    o.max_concurrent_ticks = 2;
    periodic_run two;
    auto builder = test::make_builder(two.sink);
    builder.services()
        .add_hosted_service<recorded_ticks>(o, 200ms, &two.r, &two.starts, &two.in_flight, &two.max_in_flight, 0)
        .name("ticker");
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(two.r.wait_for_count(4));
    auto* service = dynamic_cast<recorded_ticks*>(host.service_statuses()[0].service.get());
    REQUIRE(service);
    auto status = service->status();
    host.stop_blocking();
    CHECK(two.max_in_flight.load() == 2);
    CHECK(status.skipped_overlaps > 0);
    CHECK(status.ticks >= 4);
    CHECK(host.exit_code() == 0);
}

TEST_CASE("periodic_service: a throwing tick is logged and the next one runs", "[scheduling]")
{
    hosting::periodic_options o;
    o.interval = 20ms;
    periodic_run run;
    run.run(o, 1ms, 3, 1);
    CHECK(run.r.events().front() == "tick failed");
    CHECK(run.r.count("tick") >= 2);
    CHECK(run.sink->has("Tick of 'ticker' failed: tick boom", spdlog::level::err, "ticker"));
    CHECK(run.exit_code == 0);
}

TEST_CASE("periodic_service: fault_service makes a throwing tick fault the service", "[scheduling]")
{
    hosting::periodic_options o;
    o.interval = 20ms;
    o.on_exception = hosting::tick_exception_policy::fault_service;
    test::recorder r;
    std::vector<steady::time_point> starts;
    std::atomic<int> in_flight{0}, max_in_flight{0};
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.services().add_hosted_service<recorded_ticks>(o, 1ms, &r, &starts, &in_flight, &max_in_flight, 1).name("ticker");
    auto host = builder.build();
    CHECK(host.run() == 1);
    CHECK(host.service_statuses()[0].state == hosting::service_state::faulted);
    CHECK(sink->has("Background service 'ticker' faulted: tick boom", spdlog::level::err));
}

TEST_CASE("periodic_service reports its last start, duration, outcome and next due time", "[scheduling]")
{
    hosting::periodic_options o;
    o.interval = 30ms;
    o.initial_delay = 10ms;
    periodic_run run;
    auto builder = test::make_builder(run.sink);
    builder.services()
        .add_hosted_service<recorded_ticks>(o, 5ms, &run.r, &run.starts, &run.in_flight, &run.max_in_flight, 0)
        .name("ticker");
    auto host = builder.build();
    auto* service = dynamic_cast<recorded_ticks*>(host.service_statuses()[0].service.get());
    REQUIRE(service);
    CHECK(service->status().last_outcome.result == hosting::tick_result::none);
    host.start_blocking();
    REQUIRE(run.r.wait_for_count(2));
    auto status = service->status();
    host.stop_blocking();
    REQUIRE(status.last_start);
    CHECK(*status.last_start <= std::chrono::system_clock::now());
    CHECK(status.last_duration >= 5ms);
    CHECK(status.last_outcome.result == hosting::tick_result::succeeded);
    REQUIRE(status.next_due);
    CHECK(*status.next_due > *status.last_start);
    CHECK(status.ticks >= 2);
}

TEST_CASE("periodic_service: jitter moves each tick by a random part of it, without making it late", "[scheduling]")
{
    // Wide enough that a loaded machine's wake-ups, a few tens of
    // milliseconds late, are not taken for lateness.
    hosting::periodic_options o;
    o.interval = 400ms;
    o.jitter = 300ms;
    o.late_after = 200ms;
    periodic_run run;
    auto builder = test::make_builder(run.sink);
    builder.services()
        .add_hosted_service<recorded_ticks>(o, 1ms, &run.r, &run.starts, &run.in_flight, &run.max_in_flight, 0)
        .name("ticker");
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(run.r.wait_for_count(5));
    host.stop_blocking();
    // Slots are 400 ms apart; each start is its slot plus up to 300 ms.
    bool uneven = false;
    for (std::size_t i = 1; i < 5; ++i) {
        auto gap = run.starts[i] - run.starts[i - 1];
        uneven = uneven || gap < 399ms || gap > 401ms;
    }
    CHECK(uneven); // four gaps all within a millisecond of 400: about one chance in 10^9
    CHECK_FALSE(run.sink->has("late")); // jitter is on purpose, not lateness
}

TEST_CASE("periodic_service counts missed slots, except when it catches them all up", "[scheduling]")
{
    // Each first tick blocks the loop for 190 ms: slots every 50 ms pass.
    class blocking_once : public hosting::periodic_service {
    public:
        blocking_once(hosting::periodic_options o, test::recorder* r) : periodic_service(o), r_(r) {}

    protected:
        asio::awaitable<void> tick(std::stop_token) override
        {
            if (first_) {
                first_ = false;
                block_loop(190ms);
            }
            r_->add("tick");
            co_return;
        }

    private:
        test::recorder* r_;
        bool first_ = true;
    };
    for (auto policy : {hosting::missed_tick_policy::fire_once, hosting::missed_tick_policy::fire_each}) {
        hosting::periodic_options o;
        o.interval = 50ms;
        o.missed_ticks = policy;
        test::recorder r;
        auto sink = std::make_shared<test::capture_sink>();
        auto builder = test::make_builder(sink);
        builder.services().add_hosted_service<blocking_once>(o, &r).name("blocker");
        auto host = builder.build();
        auto* service = dynamic_cast<blocking_once*>(host.service_statuses()[0].service.get());
        host.start_blocking();
        REQUIRE(r.wait_for_count(6));
        auto status = service->status();
        host.stop_blocking();
        INFO("policy " << static_cast<int>(policy));
        if (policy == hosting::missed_tick_policy::fire_each)
            CHECK(status.missed == 0);
        else
            CHECK(status.missed >= 2);
    }
}

TEST_CASE("periodic_service: a concurrent tick that faults cancels the others and faults the service", "[scheduling]")
{
    class faulting : public hosting::periodic_service {
    public:
        faulting(test::recorder* r)
            : periodic_service({.interval = 30ms,
                                .max_concurrent_ticks = 2,
                                .on_exception = hosting::tick_exception_policy::fault_service}),
              r_(r)
        {
        }

    protected:
        asio::awaitable<void> tick(std::stop_token stopping) override
        {
            if (++n_ == 1) {
                r_->add("long tick");
                co_await hosting::delay(1h, stopping); // cancelled when the other one faults
                co_return;
            }
            throw std::runtime_error("second tick boom");
        }

    private:
        test::recorder* r_;
        int n_ = 0;
    };
    test::recorder r;
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    builder.services().add_hosted_service<faulting>(&r).name("faulting");
    auto host = builder.build();
    auto* service = dynamic_cast<faulting*>(host.service_statuses()[0].service.get());
    auto began = steady::now();
    CHECK(host.run() == 1);
    CHECK(steady::now() - began < test::patience);
    CHECK(host.service_statuses()[0].state == hosting::service_state::faulted);
    auto status = service->status();
    CHECK(status.failures == 1); // the cancelled long tick is not a failure
    CHECK(sink->has("Background service 'faulting' faulted: second tick boom", spdlog::level::err));
}

TEST_CASE("periodic_options are validated, naming the option", "[scheduling]")
{
    auto invalid = [](auto change, const char* what) {
        hosting::periodic_options o;
        o.interval = 1s;
        change(o);
        CHECK_THROWS_WITH(o.validate(), Catch::Contains(what));
    };
    invalid([](auto& o) { o.interval = 0s; }, "interval must be positive");
    invalid([](auto& o) { o.initial_delay = -1s; }, "initial_delay must not be negative");
    invalid([](auto& o) { o.jitter = 2s; }, "jitter must be at least 0 and less than interval");
    invalid([](auto& o) { o.max_concurrent_ticks = 0; }, "max_concurrent_ticks must be at least 1");
    invalid(
        [](auto& o) {
            o.mode = hosting::schedule_mode::fixed_delay;
            o.max_concurrent_ticks = 2;
        },
        "fixed_delay needs max_concurrent_ticks == 1");
}

namespace {

class every_second : public hosting::cron_service {
public:
    every_second(test::recorder* r, std::string expression = "* * * * * *")
        : cron_service({.expression = std::move(expression), .time_zone = "Europe/Berlin", .late_after = 300ms}), r_(r)
    {
    }

protected:
    asio::awaitable<void> tick(std::stop_token) override
    {
        r_->add("cron tick");
        co_return;
    }

private:
    test::recorder* r_;
};

// Blocks the host's only thread once, for a while, after the first cron tick.
class hog : public hosting::background_service {
public:
    explicit hog(test::recorder* r) : r_(r) {}

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        while (!r_->contains("cron tick"))
            co_await hosting::delay(5ms, stopping);
        co_await hosting::delay(200ms, stopping);
        block_loop(1500ms);
        r_->add("hogged");
        co_await hosting::delay(1h, stopping);
    }

private:
    test::recorder* r_;
};

} // namespace

TEST_CASE("cron_service ticks at its occurrences and reports a late tick", "[scheduling][cron]")
{
    auto sink = std::make_shared<test::capture_sink>();
    test::recorder r;
    auto builder = test::make_builder(sink);
    builder.services().add_hosted_service<every_second>(&r).name("cron");
    builder.services().add_hosted_service<hog>(&r);
    auto host = builder.build();
    auto* service = dynamic_cast<every_second*>(host.service_statuses()[0].service.get());
    REQUIRE(service);
    host.start_blocking();
    REQUIRE(r.wait_for("hogged"));
    // The occurrence that fell inside the blocked stretch ran late.
    REQUIRE(r.wait_for_count(r.events().size() + 1));
    auto after_hog = service->status();
    host.stop_blocking();
    CHECK(sink->has("Next occurrence of '* * * * * *' (Europe/Berlin) at", spdlog::level::debug));
    CHECK(sink->has("started", spdlog::level::warn, "cron")); // "Tick of 'cron' started N ms late"
    CHECK(after_hog.ticks >= 2);
    REQUIRE(after_hog.next_due);
    CHECK(host.exit_code() == 0);
}

TEST_CASE("cron_service: fault_service and missed occurrences", "[scheduling][cron]")
{
    class cron_faulting : public hosting::cron_service {
    public:
        cron_faulting() : cron_service({.expression = "* * * * * *", .on_exception = hosting::tick_exception_policy::fault_service}) {}

    protected:
        asio::awaitable<void> tick(std::stop_token) override
        {
            throw std::runtime_error("cron boom");
            co_return;
        }
    };
    auto sink = std::make_shared<test::capture_sink>();
    {
        auto builder = test::make_builder(sink);
        builder.services().add_hosted_service<cron_faulting>().name("cron");
        auto host = builder.build();
        CHECK(host.run() == 1);
        CHECK(sink->has("Background service 'cron' faulted: cron boom", spdlog::level::err));
    }

    // A tick that runs 2.2 s on an every-second schedule misses occurrences.
    class cron_slow : public hosting::cron_service {
    public:
        explicit cron_slow(test::recorder* r) : cron_service({.expression = "* * * * * *"}), r_(r) {}

    protected:
        asio::awaitable<void> tick(std::stop_token stopping) override
        {
            co_await hosting::delay(std::chrono::milliseconds(2200), stopping);
            r_->add("slow tick");
        }

    private:
        test::recorder* r_;
    };
    test::recorder r;
    auto builder = test::make_builder(sink);
    builder.services().add_hosted_service<cron_slow>(&r).name("slow");
    auto host = builder.build();
    auto* service = dynamic_cast<cron_slow*>(host.service_statuses()[0].service.get());
    host.start_blocking();
    REQUIRE(r.wait_for_count(2));
    auto status = service->status();
    host.stop_blocking();
    CHECK(status.missed >= 2);
}

TEST_CASE("cron_service rejects a bad expression or zone when built", "[scheduling][cron]")
{
    test::recorder r;
    auto sink = std::make_shared<test::capture_sink>();
    {
        auto builder = test::make_builder(sink);
        builder.services().add_hosted_service<every_second>(&r, std::string("0 24 * * *"));
        CHECK_THROWS_MATCHES(builder.build(), hosting::cron_parse_error,
                             Catch::Message(R"(cron: field 'hour': value 24 out of range 0-23 in "0 24 * * *")"));
    }
    {
        class somewhere : public hosting::cron_service {
        public:
            somewhere() : cron_service({.expression = "0 0 * * *", .time_zone = "Mars/Olympus_Mons"}) {}

        protected:
            asio::awaitable<void> tick(std::stop_token) override { co_return; }
        };
        auto builder = test::make_builder(sink);
        builder.services().add_hosted_service<somewhere>();
        CHECK_THROWS_AS(builder.build(), hosting::unknown_time_zone);
    }
}
