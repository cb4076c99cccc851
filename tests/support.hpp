// Test support: a log sink to wait on, an event recorder, a child process.
#pragma once

#include <hosting/async/offload.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/core/host.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>
#include <hosting/logging/sinks.hpp>

#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace test {

using namespace std::chrono_literals;

// Generous bound for "this should happen": a busy 2-core machine running
// sanitizers can be slow, but never this slow.
inline constexpr auto patience = std::chrono::seconds(20);

// An ordered record of what happened, that a test can wait on.
class recorder {
public:
    void add(std::string event);
    std::vector<std::string> events() const;
    bool contains(const std::string& event) const;
    // Waits until `event` has been recorded (or `timeout` passed).
    bool wait_for(const std::string& event, std::chrono::milliseconds timeout = patience);
    bool wait_for_count(std::size_t count, std::chrono::milliseconds timeout = patience);
    std::size_t count(const std::string& event) const;

private:
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::vector<std::string> events_;
};

// std::latch's count_down and wait on a mutex and a condition variable.
// libstdc++ 12 builds std::latch on an atomic wait that, where there is no
// futex (MinGW-w64), checks the value outside the mutex its notifier does
// not take, and so can miss the wakeup for good.
class latch {
public:
    explicit latch(int count) : count_(count) {}
    void count_down()
    {
        std::lock_guard lock(mutex_);
        if (count_ > 0 && --count_ == 0)
            zero_.notify_all();
    }
    void wait()
    {
        std::unique_lock lock(mutex_);
        zero_.wait(lock, [&] { return count_ == 0; });
    }
    bool try_wait()
    {
        std::lock_guard lock(mutex_);
        return count_ == 0;
    }

private:
    std::mutex mutex_;
    std::condition_variable zero_;
    int count_;
};

// How many were inside a span at once, at most: enter() and leave() around
// it, from any thread.
class high_water {
public:
    void enter()
    {
        const int n = ++now_;
        int seen = most_.load();
        while (n > seen && !most_.compare_exchange_weak(seen, n)) {
        }
    }
    void leave() { --now_; }
    int most() const { return most_.load(); }

private:
    std::atomic<int> now_{0};
    std::atomic<int> most_{0};
};

// Keeps every formatted log line, with its level and category.
class capture_sink : public spdlog::sinks::base_sink<std::mutex> {
public:
    struct line {
        spdlog::level::level_enum level;
        std::string category;
        std::string text;
    };
    std::vector<line> lines();
    // True when some line contains `text` (and has `level`, when given).
    bool has(const std::string& text, std::optional<spdlog::level::level_enum> level = {},
             const std::string& category = {});
    bool wait_for(const std::string& text, std::chrono::milliseconds timeout = patience);
    std::string dump();

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override;
    void flush_() override {}

private:
    std::vector<line> lines_;
    std::condition_variable_any changed_;
};

// A builder whose logs go to `sink` (and to stderr when HOSTING_TEST_VERBOSE
// is set), without console lifetime: tests that need signals use a child.
hosting::host_builder make_builder(std::shared_ptr<capture_sink> sink,
                                   spdlog::level::level_enum level = spdlog::level::debug);

#ifndef _WIN32
// A child process with stdout and stderr read through one pipe
// (support_posix.cpp).
class child_process {
public:
    child_process(const std::string& path, const std::vector<std::string>& args,
                  const std::map<std::string, std::string>& env = {}, const std::string& cwd = {});
    ~child_process();
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    // Reads output until it contains `text`; false on timeout or exit.
    bool wait_for_output(const std::string& text, std::chrono::milliseconds timeout = patience);
    void send_signal(int number);
    // The exit code (128 + n when killed by signal n), or nothing on timeout.
    std::optional<int> wait_exit(std::chrono::milliseconds timeout = patience);
    const std::string& output() const noexcept { return output_; }

private:
    bool pump(std::chrono::steady_clock::time_point until, const std::function<bool()>& done);

    int pid_ = -1;
    int out_fd_ = -1;
    int pid_fd_ = -1;
    bool eof_ = false;
    std::optional<int> exit_code_;
    std::string output_;
};
#endif

} // namespace test

#ifndef _WIN32
namespace test {

// A real HTTP/1.1 client on loopback (Boost.Beast, blocking, bounded by
// `patience`): one request per connection unless a session is used.
struct http_response {
    int status = 0;
    std::string body;
    std::map<std::string, std::string> headers; // lower-case names
};
http_response http_get(unsigned short port, const std::string& target, const std::string& method = "GET");

// Sends raw bytes and reads whatever comes back until the server closes
// the connection or `timeout` passes; `closed` tells which.
struct raw_result {
    std::string received;
    bool closed = false;
};
raw_result raw_exchange(unsigned short port, const std::string& bytes,
                        std::chrono::milliseconds timeout = patience, const std::string& address = "127.0.0.1");

} // namespace test
#endif

namespace test {

// Polls `condition` until true or `timeout`; for state that only a fresh
// request can observe (an HTTP endpoint), where there is no event to wait on.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout = patience);

} // namespace test
