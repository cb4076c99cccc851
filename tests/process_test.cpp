// Signals, exit codes and the hard deadline, across a process boundary.
#include "support.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <regex>

using namespace std::chrono_literals;

namespace {

const std::string child = HOSTING_TEST_CHILD;

// ThreadSanitizer sleeps a second at exit by default; that is not ours to time.
const std::map<std::string, std::string> env{{"TSAN_OPTIONS", "atexit_sleep_ms=0"}};

long run_took_ms(const std::string& output)
{
    std::smatch m;
    static const std::regex pattern("run returned (-?\\d+) after (\\d+) ms");
    REQUIRE(std::regex_search(output, m, pattern));
    return std::stol(m[2]);
}

} // namespace

TEST_CASE("SIGTERM SIGINT and SIGQUIT stop the host gracefully with exit code 0", "[process][signals]")
{
    for (int sig : {SIGTERM, SIGINT, SIGQUIT}) {
        test::child_process p(child, {"ticker"}, env);
        REQUIRE(p.wait_for_output("Application started. Press Ctrl+C to shut down."));
        REQUIRE(p.wait_for_output("ticked"));
        p.send_signal(sig);
        auto code = p.wait_exit();
        INFO(p.output());
        REQUIRE(code);
        CHECK(*code == 0);
        CHECK(p.output().find("Application is shutting down...") != std::string::npos);
        CHECK(p.output().find("Hosting environment: Production") != std::string::npos);
        CHECK(p.output().find("run returned 0") != std::string::npos);
    }
}

TEST_CASE("a second signal during the stop exits at once with 128 + the signal", "[process][signals]")
{
    test::child_process p(child, {"slow_stop"}, env);
    REQUIRE(p.wait_for_output("Application started."));
    p.send_signal(SIGTERM);
    REQUIRE(p.wait_for_output("slow stop begun"));
    p.send_signal(SIGINT);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 128 + SIGINT);
    CHECK(p.output().find("exiting at once with code 130") != std::string::npos);
}

TEST_CASE("a first signal during a stop that began otherwise does not cut it short", "[process][signals]")
{
    test::child_process p(child, {"self_stop_slow"}, env);
    REQUIRE(p.wait_for_output("slow stop begun"));
    p.send_signal(SIGTERM);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 0);
    CHECK(p.output().find("slow stop done") != std::string::npos);
}

TEST_CASE("without console lifetime the host leaves signals alone", "[process][signals]")
{
    test::child_process p(child, {"no_console"}, env);
    REQUIRE(p.wait_for_output("ticked"));
    p.send_signal(SIGTERM);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 128 + SIGTERM); // the default action: killed by the signal
    CHECK(p.output().find("Application is shutting down") == std::string::npos);
}

TEST_CASE("the deadline is hard even when a service blocks the loop's thread", "[process][deadline]")
{
    test::child_process p(child, {"blocking"}, env);
    REQUIRE(p.wait_for_output("blocking now"));
    p.send_signal(SIGTERM);
    // The child must also exit, not hang in a destructor.
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 1);
    // shutdown_timeout is 1 s in that scenario. How long past it run()
    // returns (250 ms promised) is what bench/host_stress prints; a
    // sanitized child among parallel tests can be descheduled for longer,
    // so here only: the run did not wait for the blocked call (60 s).
    CHECK(run_took_ms(p.output()) < 1000 + 2000);
    CHECK(p.output().find("did not stop in time") != std::string::npos);
    CHECK(p.output().find("blocker'") != std::string::npos);
}

#if defined(HOSTING_EXAMPLE_BACKGROUND_SERVICE)
TEST_CASE("example background_service ticks and stops itself gracefully", "[process][examples]")
{
    test::child_process p(HOSTING_EXAMPLE_BACKGROUND_SERVICE, {"--ticks=3"}, env);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 0);
    CHECK(p.output().find("tick 3") != std::string::npos);
    CHECK(p.output().find("ticker stopped gracefully") != std::string::npos);
}

TEST_CASE("example hosted_service migrates before the next service starts", "[process][examples]")
{
    test::child_process p(HOSTING_EXAMPLE_HOSTED_SERVICE, {}, env);
    REQUIRE(p.wait_for_output("Application started."));
    REQUIRE(p.wait_for_output("warmed shard 1/4"));
    p.send_signal(SIGTERM);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 0);
    const auto& out = p.output();
    auto migrated = out.find("migration applied");
    auto warming = out.find("cache warm-up started");
    auto started = out.find("Application started.");
    REQUIRE(migrated != std::string::npos);
    CHECK(migrated < warming);
    CHECK(warming < started);
    CHECK(out.find("cache warmer stopped") != std::string::npos);
}

TEST_CASE("example embedded runs the host on the program's own io_context", "[process][examples]")
{
    test::child_process p(HOSTING_EXAMPLE_EMBEDDED, {"--run-for-ms=300"}, env);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 0);
    CHECK(p.output().find("report 1") != std::string::npos);
    CHECK(p.output().find("program: host stopped with code 0") != std::string::npos);
}

TEST_CASE("example periodic_cache_refresh refreshes on schedule and stops itself", "[process][examples]")
{
    test::child_process p(HOSTING_EXAMPLE_PERIODIC_CACHE_REFRESH, {"--ticks=2"}, env);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 0);
    CHECK(p.output().find("[cache] cache refreshed to version 2") != std::string::npos);
}

TEST_CASE("example cron_cleanup shows its schedule and runs it", "[process][examples]")
{
    test::child_process p(HOSTING_EXAMPLE_CRON_CLEANUP, {"--expression=* * * * * *"}, env);
    REQUIRE(p.wait_for_output("next runs of \"* * * * * *\" in Europe/Berlin:"));
    REQUIRE(p.wait_for_output("cleanup done (run 1"));
    p.send_signal(SIGTERM);
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 0);
}
#endif
