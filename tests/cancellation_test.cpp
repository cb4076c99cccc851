#include <hosting/async/cancellation.hpp>
#include <hosting/async/cancellation_bridge.hpp>
#include <hosting/async/offload.hpp>

#include "support.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <catch2/catch.hpp>

#include <functional>
#include <future>
#include <thread>

using namespace std::chrono_literals;
namespace asio = boost::asio;

namespace {

// Runs `body` as a coroutine on a fresh io_context and returns what it threw.
template <class F>
std::exception_ptr run_coro(F body, asio::io_context& io)
{
    std::exception_ptr result;
    bool finished = false;
    asio::co_spawn(io, std::move(body), [&](std::exception_ptr e) {
        result = e;
        finished = true;
    });
    io.run();
    REQUIRE(finished);
    return result;
}

template <class F>
std::exception_ptr run_coro(F body)
{
    asio::io_context io;
    return run_coro(std::move(body), io);
}

bool is_canceled(const std::exception_ptr& e)
{
    try {
        if (e)
            std::rethrow_exception(e);
    } catch (const hosting::operation_canceled&) {
        return true;
    } catch (...) {
    }
    return false;
}

} // namespace

TEST_CASE("linked_stop_source fires when any linked token fires", "[cancellation]")
{
    std::stop_source a, b;
    hosting::linked_stop_source linked{a.get_token(), b.get_token()};
    CHECK_FALSE(linked.stop_requested());
    b.request_stop();
    CHECK(linked.stop_requested());
    CHECK_FALSE(a.stop_requested());

    std::stop_source fired;
    fired.request_stop();
    hosting::linked_stop_source already{fired.get_token()};
    CHECK(already.get_token().stop_requested());

    std::stop_source c;
    hosting::linked_stop_source moved_from{c.get_token()};
    hosting::linked_stop_source moved = std::move(moved_from);
    std::jthread other([&] { c.request_stop(); });
    other.join();
    CHECK(moved.stop_requested());
}

TEST_CASE("timed_stop_source fires after its duration", "[cancellation]")
{
    asio::io_context io;
    auto began = std::chrono::steady_clock::now();
    hosting::timed_stop_source source(io.get_executor(), 50ms);
    std::chrono::steady_clock::time_point fired_at{};
    std::stop_callback cb(source.get_token(), [&] { fired_at = std::chrono::steady_clock::now(); });
    io.run();
    REQUIRE(source.stop_requested());
    CHECK(fired_at - began >= 50ms);

    // Destroyed before its time: never fires, and leaves no work behind.
    asio::io_context io2;
    std::stop_token token;
    {
        hosting::timed_stop_source early(io2.get_executor(), 1h);
        token = early.get_token();
    }
    io2.run();
    CHECK_FALSE(token.stop_requested());
}

TEST_CASE("delay waits and throws operation_canceled when its token fires", "[cancellation]")
{
    auto began = std::chrono::steady_clock::now();
    CHECK(run_coro([]() -> asio::awaitable<void> { co_await hosting::delay(30ms); }) == nullptr);
    CHECK(std::chrono::steady_clock::now() - began >= 30ms);

    std::stop_source source;
    std::jthread firer;
    auto error = run_coro([&]() -> asio::awaitable<void> {
        firer = std::jthread([&] { source.request_stop(); });
        co_await hosting::delay(1h, source.get_token());
    });
    CHECK(is_canceled(error));

    std::stop_source fired;
    fired.request_stop();
    CHECK(is_canceled(run_coro([&]() -> asio::awaitable<void> { co_await hosting::delay(0ms, fired.get_token()); })));
}

TEST_CASE("delay is cancelled by the awaiting coroutine's cancellation", "[cancellation]")
{
    asio::io_context io;
    asio::cancellation_signal signal;
    std::exception_ptr error;
    asio::co_spawn(io, []() -> asio::awaitable<void> { co_await hosting::delay(1h); },
                   asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) { error = e; }));
    asio::steady_timer t(io, 10ms);
    t.async_wait([&](auto) { signal.emit(asio::cancellation_type::terminal); });
    io.run();
    CHECK(is_canceled(error));
}

TEST_CASE("cancellation_bridge cancels an Asio operation from another thread on its executor", "[cancellation][concurrency]")
{
    asio::io_context io;
    auto work = asio::make_work_guard(io);
    std::jthread loop([&] { io.run(); });
    auto strand = asio::make_strand(io);
    std::stop_source source;
    std::promise<std::string> outcome;
    asio::co_spawn(
        strand,
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            hosting::cancellation_bridge bridge(ex, source.get_token());
            asio::steady_timer timer(ex, 1h);
            boost::system::error_code ec;
            std::jthread firer([&] { source.request_stop(); });
            co_await timer.async_wait(asio::bind_cancellation_slot(bridge.slot(), asio::redirect_error(asio::use_awaitable, ec)));
            outcome.set_value(ec == asio::error::operation_aborted ? "aborted" : ec.message());
        },
        asio::detached);
    auto f = outcome.get_future();
    REQUIRE(f.wait_for(test::patience) == std::future_status::ready);
    CHECK(f.get() == "aborted");
    work.reset();
}

TEST_CASE("offload runs on the pool returns the result and resumes on the caller's executor", "[offload][concurrency]")
{
    asio::io_context io;
    auto strand = asio::make_strand(io);
    int result = 0;
    bool on_strand_after = false;
    std::thread::id pool_thread;
    std::exception_ptr error;
    asio::co_spawn(
        strand,
        [&]() -> asio::awaitable<void> {
            result = co_await hosting::offload([&] {
                pool_thread = std::this_thread::get_id();
                return 6 * 7;
            });
            on_strand_after = strand.running_in_this_thread();
            co_await hosting::offload([] {}); // void works too
        },
        [&](std::exception_ptr e) { error = e; });
    io.run();
    CHECK(error == nullptr);
    CHECK(result == 42);
    CHECK(on_strand_after);
    CHECK(pool_thread != std::this_thread::get_id());
}

TEST_CASE("offload rethrows the function's exception", "[offload]")
{
    auto error = run_coro([]() -> asio::awaitable<void> {
        co_await hosting::offload([]() -> int { throw std::runtime_error("pool failure"); });
    });
    REQUIRE(error);
    CHECK_THROWS_WITH(std::rethrow_exception(error), "pool failure");
}

TEST_CASE("a cancelled offload resumes at once and drops the result and an unstarted one never runs", "[offload][concurrency]")
{
    // Outlives the test body: the pool may still be inside wait() when the
    // caller has long resumed.
    auto release_ptr = std::make_shared<test::latch>(1);
    auto& release = *release_ptr;
    test::latch running(1);
    test::latch pool_done(1);
    std::stop_source source;
    std::atomic<bool> finished_on_pool{false};
    auto began = std::chrono::steady_clock::now();
    auto error = run_coro([&]() -> asio::awaitable<void> {
        std::jthread canceller([&] {
            running.wait();
            source.request_stop();
        });
        // Named: GCC 12 destroys a lambda temporary inside a co_await
        // expression twice when its captures have destructors.
        auto work = [&, release_ptr] {
            running.count_down();
            release_ptr->wait();
            finished_on_pool = true;
            pool_done.count_down();
            return 1;
        };
        co_await hosting::offload(std::move(work), source.get_token());
    });
    CHECK(is_canceled(error));
    CHECK(std::chrono::steady_clock::now() - began < test::patience);
    CHECK_FALSE(finished_on_pool.load()); // the caller did not wait for it
    release.count_down();
    pool_done.wait(); // the function finished on the pool all the same
    CHECK(finished_on_pool.load());

    std::stop_source fired;
    fired.request_stop();
    std::atomic<bool> ran{false};
    error = run_coro([&]() -> asio::awaitable<void> {
        co_await hosting::offload([&] { ran = true; }, fired.get_token());
    });
    CHECK(is_canceled(error));
    CHECK_FALSE(ran.load());
}

TEST_CASE("an offload awaited by a cancelled coroutine resumes with operation_canceled", "[offload][concurrency]")
{
    asio::io_context io;
    asio::cancellation_signal signal;
    auto release_ptr = std::make_shared<test::latch>(1);
    auto& release = *release_ptr;
    test::latch running(1);
    test::latch pool_done(1);
    std::exception_ptr error;
    bool done = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto work = [&, release_ptr] {
                running.count_down();
                release_ptr->wait();
                pool_done.count_down();
            };
            co_await hosting::offload(std::move(work));
        },
        asio::bind_cancellation_slot(signal.slot(), [&](std::exception_ptr e) {
            error = e;
            done = true;
        }));
    asio::steady_timer t(io, 1ms);
    std::function<void(boost::system::error_code)> poll = [&](boost::system::error_code) {
        if (running.try_wait())
            signal.emit(asio::cancellation_type::terminal);
        else {
            t.expires_after(1ms);
            t.async_wait(poll);
        }
    };
    t.async_wait(poll);
    std::jthread releaser;
    // The loop keeps running until the pool function ends (it counts as
    // work), but the coroutine resumed before that.
    asio::steady_timer check(io, 1ms);
    std::function<void(boost::system::error_code)> check_done = [&](boost::system::error_code) {
        if (done)
            release.count_down();
        else {
            check.expires_after(1ms);
            check.async_wait(check_done);
        }
    };
    check.async_wait(check_done);
    io.run();
    pool_done.wait();
    CHECK(done);
    CHECK(is_canceled(error));
}

TEST_CASE("is_cancellation recognises what Asio and hosting throw and nothing else", "[cancellation]")
{
    // What an aborted Asio operation really throws inside a coroutine.
    asio::io_context io;
    auto aborted = run_coro(
        [&]() -> asio::awaitable<void> {
            asio::steady_timer t2(co_await asio::this_coro::executor, 1h);
            asio::post(io, [&] { t2.cancel(); });
            co_await t2.async_wait(asio::use_awaitable);
        },
        io);
    CHECK(hosting::is_cancellation(aborted));
    CHECK(hosting::is_cancellation(std::make_exception_ptr(hosting::operation_canceled())));
    CHECK(hosting::is_cancellation(std::make_exception_ptr(
        boost::system::system_error(asio::error::operation_aborted))));
    struct derived : boost::system::system_error {
        using boost::system::system_error::system_error;
    };
    CHECK(hosting::is_cancellation(std::make_exception_ptr(derived(asio::error::operation_aborted))));
    CHECK_FALSE(hosting::is_cancellation(std::make_exception_ptr(derived(asio::error::connection_reset))));
    CHECK_FALSE(hosting::is_cancellation(std::make_exception_ptr(
        boost::system::system_error(asio::error::timed_out))));
    CHECK_FALSE(hosting::is_cancellation(std::make_exception_ptr(std::runtime_error("x"))));
    CHECK_FALSE(hosting::is_cancellation(std::make_exception_ptr(42)));
    CHECK_FALSE(hosting::is_cancellation(nullptr));
}

TEST_CASE("an offload still queued when its token fires never runs", "[offload][concurrency]")
{
    // Occupy every pool thread, queue one more call behind them, cancel it.
    const auto threads = hosting::offload_concurrency();
    test::latch release(1);
    std::atomic<bool> queued_ran{false};
    std::stop_source cancel;
    asio::io_context io;
    std::size_t finished_blockers = 0;
    std::exception_ptr queued_error;
    bool queued_done = false;
    for (std::size_t i = 0; i < threads; ++i)
        asio::co_spawn(
            io, [&]() -> asio::awaitable<void> { co_await hosting::offload([&] { release.wait(); }); },
            [&](std::exception_ptr) { ++finished_blockers; });
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            co_await hosting::offload([&] { queued_ran = true; }, cancel.get_token());
        },
        [&](std::exception_ptr e) {
            queued_error = e;
            queued_done = true;
            release.count_down(); // only now may the pool drain
        });
    // Runs after the call above reached the pool's queue.
    asio::post(io, [&] { cancel.request_stop(); });
    io.run();
    // The pool is first-in first-out: once a later call has run, the
    // cancelled one has been taken off the queue (and dropped).
    for (std::size_t i = 0; i < threads; ++i)
        CHECK(run_coro([]() -> asio::awaitable<void> { co_await hosting::offload([] {}); }) == nullptr);
    CHECK(queued_done);
    CHECK(is_canceled(queued_error));
    CHECK(finished_blockers == threads);
    CHECK_FALSE(queued_ran.load());
}

TEST_CASE("a cancellation_bridge destroyed before its token fires does nothing", "[cancellation][concurrency]")
{
    asio::io_context io;
    std::stop_source source;
    bool fired = false;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            {
                asio::steady_timer timer(ex, 1ms);
                hosting::cancellation_bridge bridge(ex, source.get_token());
                co_await timer.async_wait(asio::bind_cancellation_slot(bridge.slot(), asio::use_awaitable));
                fired = true;
            } // bridge, then timer, destroyed; the slot still held the timer's handler
            source.request_stop(); // a late emit must not touch the dead timer
            co_await hosting::delay(5ms);
        },
        asio::detached);
    io.run();
    CHECK(fired);
}
