// The sd_notify protocol on a real datagram socket that the test owns.
#include <hosting/hosting.hpp>
#include <hosting/systemd/systemd.hpp>
#include <hosting/systemd/journal_sink.hpp>

#include "support.hpp"

#include <spdlog/details/log_msg.h>

#include <catch2/catch.hpp>

#include <csignal>
#include <map>

#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <cstdlib>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>
#include <unistd.h>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using steady = std::chrono::steady_clock;

namespace {

// Plays systemd's side: a datagram socket at a path or an abstract address.
class notify_listener {
public:
    explicit notify_listener(bool abstract)
    {
        fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::string name = "hosting-notify-" + std::to_string(::getpid());
        if (abstract) {
            address_ = "@" + name;
            std::memcpy(addr.sun_path + 1, name.data(), name.size());
            REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr),
                           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())) == 0);
        } else {
            address_ = "/tmp/" + name + ".sock";
            ::unlink(address_.c_str());
            std::memcpy(addr.sun_path, address_.data(), address_.size());
            REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
            path_ = address_;
        }
        ::setenv("NOTIFY_SOCKET", address_.c_str(), 1);
    }
    ~notify_listener()
    {
        ::unsetenv("NOTIFY_SOCKET");
        ::close(fd_);
        if (!path_.empty())
            ::unlink(path_.c_str());
    }

    // The next datagram, or nothing after `timeout`.
    std::optional<std::string> receive(std::chrono::milliseconds timeout = test::patience)
    {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0)
            return std::nullopt;
        char buf[4096];
        auto n = ::recv(fd_, buf, sizeof buf, 0);
        if (n < 0)
            return std::nullopt;
        return std::string(buf, static_cast<std::size_t>(n));
    }

    // The next message that is not a watchdog ping or timeout extension.
    std::optional<std::string> receive_state(std::chrono::milliseconds timeout = test::patience)
    {
        for (;;) {
            auto m = receive(timeout);
            if (!m || (m->rfind("WATCHDOG=", 0) != 0 && m->rfind("EXTEND_TIMEOUT_USEC=", 0) != 0))
                return m;
        }
    }

    const std::string& address() const { return address_; }

private:
    int fd_ = -1;
    std::string address_;
    std::string path_;
};

class status_reporter : public hosting::background_service {
public:
    explicit status_reporter(hosting::service_provider& p)
        : notifier_(p.get<hosting::systemd_notifier>()),
          started_(p.get<hosting::application_lifetime>().application_started())
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        while (!started_.stop_requested())
            co_await hosting::delay(2ms, stopping);
        notifier_.status("warming up");
        co_await hosting::delay(1h, stopping);
    }

private:
    hosting::systemd_notifier& notifier_;
    std::stop_token started_;
};

} // namespace

TEST_CASE("systemd: READY, STATUS and STOPPING, in order, on a path and an abstract socket", "[systemd]")
{
    ::setenv("WATCHDOG_USEC", "2000000", 1); // pings are filtered out below; they must not disturb the order
    for (bool abstract : {false, true}) {
        INFO("abstract=" << abstract);
        notify_listener listener(abstract);
        auto sink = std::make_shared<test::capture_sink>();
        auto builder = test::make_builder(sink);
        hosting::use_systemd(builder);
        builder.services().add_hosted_service<status_reporter>();
        auto host = builder.build();
        CHECK(host.services().get<hosting::systemd_notifier>().active());
        host.start_blocking();
        CHECK(listener.receive_state() == "READY=1");
        CHECK(listener.receive_state() == "STATUS=warming up");
        host.stop_blocking();
        CHECK(listener.receive_state() == "STOPPING=1");
        CHECK(host.exit_code() == 0);
    }
    ::unsetenv("WATCHDOG_USEC");
}

TEST_CASE("systemd: a reload is announced with RELOADING and MONOTONIC_USEC, good or broken", "[systemd][signals]")
{
    notify_listener listener(false);
    auto dir = std::filesystem::temp_directory_path() / ("hosting-reload-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    auto previous = std::filesystem::current_path();
    std::filesystem::current_path(dir);
    std::ofstream(dir / "appsettings.json") << R"({"A": "1"})";
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = hosting::host::create_builder();
    builder.logging().sinks.push_back(sink);
    hosting::use_systemd(builder);
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(listener.receive_state() == "READY=1");
    for (const char* content : {R"({"A": "2"})", R"({"A": )"}) {
        std::ofstream(dir / "appsettings.json") << content;
        timespec now{};
        ::clock_gettime(CLOCK_MONOTONIC, &now);
        const long long before = static_cast<long long>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
        ::kill(::getpid(), SIGHUP);
        auto reloading = listener.receive_state();
        REQUIRE(reloading);
        REQUIRE(reloading->rfind("RELOADING=1\nMONOTONIC_USEC=", 0) == 0);
        const long long stamp = std::stoll(reloading->substr(std::strlen("RELOADING=1\nMONOTONIC_USEC=")));
        CHECK(stamp >= before);
        CHECK(listener.receive_state() == "READY=1");
    }
    CHECK(host.services().get<hosting::configuration>().value("A") == "2"); // the broken file changed nothing
    CHECK(sink->has("Configuration reload failed", spdlog::level::err));
    host.stop_blocking();
    CHECK(listener.receive_state() == "STOPPING=1");
    std::filesystem::current_path(previous);
    std::filesystem::remove_all(dir);
}

TEST_CASE("systemd: the watchdog pings only while the loop responds", "[systemd][concurrency]")
{
    notify_listener listener(false);
    ::setenv("WATCHDOG_USEC", "200000", 1); // pings every 100 ms
    ::unsetenv("WATCHDOG_PID");

    // Blocks the loop's only thread for 800 ms once asked to.
    class blocker : public hosting::background_service {
    public:
        explicit blocker(std::atomic<bool>* go) : go_(go) {}

    protected:
        asio::awaitable<void> execute(std::stop_token stopping) override
        {
            while (!go_->load())
                co_await hosting::delay(5ms, stopping);
            std::this_thread::sleep_for(800ms);
            co_await hosting::delay(1h, stopping);
        }

    private:
        std::atomic<bool>* go_;
    };
    std::atomic<bool> go{false};
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::use_systemd(builder);
    builder.services().add_hosted_service<blocker>(&go);
    auto host = builder.build();
    host.start_blocking();
    REQUIRE(listener.receive_state() == "READY=1");
    // Pings while the loop is free.
    for (int i = 0; i < 3; ++i)
        REQUIRE(listener.receive() == "WATCHDOG=1");
    go = true;
    // During the block the pings stop: the next one comes well after the
    // last, once the loop runs again.
    auto last = steady::now();
    std::optional<std::string> m;
    steady::duration longest{};
    for (int i = 0; i < 6; ++i) {
        m = listener.receive();
        REQUIRE(m == "WATCHDOG=1");
        auto now = steady::now();
        longest = std::max(longest, now - last);
        last = now;
    }
    CHECK(longest >= 500ms);  // no ping for most of the 800 ms block
    host.stop_blocking();
    ::unsetenv("WATCHDOG_USEC");
}

TEST_CASE("systemd: no watchdog for another process's WATCHDOG_PID", "[systemd]")
{
    notify_listener listener(false);
    ::setenv("WATCHDOG_USEC", "100000", 1);
    ::setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    auto lifetime = std::make_shared<hosting::systemd_lifetime>(std::make_shared<hosting::systemd_notifier>());
    CHECK(lifetime->watchdog_interval() == 0us);
    ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
    CHECK(hosting::systemd_lifetime(std::make_shared<hosting::systemd_notifier>()).watchdog_interval() == 100000us);
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
}

TEST_CASE("systemd: EXTEND_TIMEOUT_USEC while a long start is in progress", "[systemd]")
{
    notify_listener listener(false);
    class slow_start : public hosting::hosted_service {
    public:
        asio::awaitable<void> start(std::stop_token cancel) override { co_await hosting::delay(500ms, cancel); }
        asio::awaitable<void> stop(std::stop_token) override { co_return; }
    };
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::use_systemd(builder, {.extend_timeout_every = 100ms});
    builder.services().add_hosted_service<slow_start>();
    auto host = builder.build();
    host.start_blocking();
    std::vector<std::string> messages;
    while (auto m = listener.receive()) {
        messages.push_back(*m);
        if (*m == "READY=1")
            break;
    }
    host.stop_blocking();
    REQUIRE(messages.size() >= 2);
    CHECK(messages.front() == "EXTEND_TIMEOUT_USEC=200000");
    CHECK(messages.back() == "READY=1");
}

TEST_CASE("systemd: without NOTIFY_SOCKET everything is a no-op", "[systemd]")
{
    ::unsetenv("NOTIFY_SOCKET");
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = test::make_builder(sink);
    hosting::use_systemd(builder);
    builder.services().add_hosted_service<status_reporter>();
    auto host = builder.build();
    auto& notifier = host.services().get<hosting::systemd_notifier>();
    CHECK_FALSE(notifier.active());
    CHECK_FALSE(notifier.status("nobody listens"));
    host.start_blocking();
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
    // And without use_systemd() the notifier is there, inactive.
    auto plain = test::make_builder(sink).build();
    CHECK(plain.services().try_get<hosting::systemd_notifier>() == nullptr); // only use_systemd() registers it
}

TEST_CASE("systemd: journal output has priority prefixes and one line per record", "[systemd]")
{
    std::FILE* out = std::tmpfile();
    REQUIRE(out);
    {
        auto sink = std::make_shared<hosting::journal_sink>(out);
        spdlog::logger log("app.worker", sink);
        log.set_level(spdlog::level::trace);
        log.info("started");
        log.warn("two\nlines");
        log.error("failed");
        log.debug("detail");
        log.critical("down");
        log.flush();
    }
    std::rewind(out);
    std::string text;
    char buf[512];
    while (auto n = std::fread(buf, 1, sizeof buf, out))
        text.append(buf, n);
    std::fclose(out);
    CHECK(text == "<6>[app.worker] started\n"
                  "<4>[app.worker] two lines\n"
                  "<3>[app.worker] failed\n"
                  "<7>[app.worker] detail\n"
                  "<2>[app.worker] down\n");
}

TEST_CASE("systemd: use_systemd logs in the journal's format under the journal", "[systemd]")
{
    // The journal's stream is whatever stderr is: say so the way systemd does.
    struct stat st {};
    REQUIRE(::fstat(STDERR_FILENO, &st) == 0);
    ::setenv("JOURNAL_STREAM", (std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino)).c_str(), 1);
    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    hosting::use_systemd(builder);
    auto host = builder.build();
    auto sinks = host.services().get<hosting::logger_factory>().options().sinks;
    ::unsetenv("JOURNAL_STREAM");
    REQUIRE(sinks.size() == 1);
    CHECK(dynamic_cast<hosting::journal_sink*>(sinks.front().get()) != nullptr);

    // An inherited JOURNAL_STREAM that is not our stderr: the usual format.
    ::setenv("JOURNAL_STREAM", "1:1", 1);
    auto other = hosting::host::create_builder();
    other.use_console_lifetime(false);
    hosting::use_systemd(other);
    auto other_host = other.build();
    ::unsetenv("JOURNAL_STREAM");
    auto other_sinks = other_host.services().get<hosting::logger_factory>().options().sinks;
    REQUIRE(other_sinks.size() == 1);
    CHECK(dynamic_cast<hosting::journal_sink*>(other_sinks.front().get()) == nullptr);
}

#if defined(HOSTING_EXAMPLE_WORKER_SERVICE)
TEST_CASE("systemd: the worker_service example under a notify socket, with reload and stop", "[systemd][process][examples]")
{
    notify_listener listener(false);
    const std::map<std::string, std::string> env{{"NOTIFY_SOCKET", listener.address()},
                                                 {"TSAN_OPTIONS", "atexit_sleep_ms=0"}};
    test::child_process p(HOSTING_EXAMPLE_WORKER_SERVICE, {"--Worker:IntervalMilliseconds=100"}, env,
                          HOSTING_EXAMPLE_WORKER_SERVICE_DIR);
    // The worker's reports (every 100 ms, from its own service) may come
    // before READY=1 and between any two of the host's own messages: a
    // child slow to handle a signal sends more of them first.
    std::optional<std::string> m;
    bool ready = false;
    bool reported = false;
    while (!(ready && reported) && (m = listener.receive_state())) {
        if (*m == "READY=1")
            ready = true;
        else if (m->rfind("STATUS=", 0) == 0 && m->find(" reports written") != std::string::npos)
            reported = true;
        else
            FAIL_CHECK("unexpected before the reload: " << *m);
    }
    REQUIRE(ready);
    REQUIRE(reported);
    p.send_signal(SIGHUP);
    do
        m = listener.receive_state();
    while (m && m->rfind("STATUS=", 0) == 0);
    REQUIRE(m);
    CHECK(m->rfind("RELOADING=1\nMONOTONIC_USEC=", 0) == 0);
    // READY=1 must follow the reload.
    do
        m = listener.receive_state();
    while (m && m->rfind("STATUS=", 0) == 0);
    CHECK(m == "READY=1");
    p.send_signal(SIGTERM);
    do
        m = listener.receive_state();
    while (m && m->rfind("STATUS=", 0) == 0);
    CHECK(m == "STOPPING=1");
    auto code = p.wait_exit();
    INFO(p.output());
    REQUIRE(code);
    CHECK(*code == 0);
    // Under systemd the output is for the journal: priorities, no colours.
    CHECK(p.output().find("<6>[hosting.lifetime] Application started.") != std::string::npos);
    CHECK(p.output().find("<6>[reports] daily report #1") != std::string::npos);
    CHECK(p.output().find("\x1b[") == std::string::npos);
}

TEST_CASE("systemd: the worker_service example as a scheduler-run job, succeeding and failing", "[process][examples]")
{
    const std::map<std::string, std::string> env{{"TSAN_OPTIONS", "atexit_sleep_ms=0"}};
    {
        test::child_process p(HOSTING_EXAMPLE_WORKER_SERVICE, {"--Worker:Runs=2"}, env, HOSTING_EXAMPLE_WORKER_SERVICE_DIR);
        auto code = p.wait_exit();
        INFO(p.output());
        REQUIRE(code);
        CHECK(*code == 0);
        CHECK(p.output().find("daily report #2") != std::string::npos);
        CHECK(p.output().find("All background services have completed") != std::string::npos);
    }
    {
        test::child_process p(HOSTING_EXAMPLE_WORKER_SERVICE, {"--Worker:Runs=2", "--Worker:Fail=true"}, env,
                              HOSTING_EXAMPLE_WORKER_SERVICE_DIR);
        auto code = p.wait_exit();
        INFO(p.output());
        REQUIRE(code);
        CHECK(*code == 1);
        CHECK(p.output().find("Background service 'reports' faulted: the report source is unreachable") !=
              std::string::npos);
    }
    {
        test::child_process p(HOSTING_EXAMPLE_WORKER_SERVICE, {"--Worker:Runs=lots"}, env, HOSTING_EXAMPLE_WORKER_SERVICE_DIR);
        auto code = p.wait_exit();
        REQUIRE(code);
        CHECK(*code == 2);
        CHECK(p.output().find("configuration: key 'Worker:Runs' has value \"lots\", which is not an integer") !=
              std::string::npos);
    }
}
#endif
