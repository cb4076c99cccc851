// The machinery behind health_monitor; shared by the host and the endpoint.
#pragma once

#include <hosting/health/health.hpp>
#include <hosting/core/service_status.hpp>
#include <hosting/metrics/metrics.hpp>

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <vector>

namespace spdlog {
class logger;
}

namespace hosting::detail {

class health_core : public std::enable_shared_from_this<health_core> {
public:
    using clock = std::chrono::steady_clock;

    health_core(health_options options, std::vector<health_check_registration> checks,
                std::vector<health_publisher_registration> publishers, std::shared_ptr<metrics_registry> metrics,
                std::shared_ptr<spdlog::logger> log);
    ~health_core();

    // Set by the host once it is built, before anything runs.
    void attach(asio::any_io_executor host_executor, std::function<std::vector<service_status>()> statuses);

    // `keep_alive` owns the execution context of the caller's executor,
    // when the caller cannot otherwise promise it outlives the checks.
    asio::awaitable<health_report> check(std::string tag, std::shared_ptr<void> keep_alive = {});
    health_report host_entries(std::string_view tag) const;
    // Whether a check has `tag` (any check, when it is empty).
    bool has_checks(std::string_view tag) const;
    bool ready() const noexcept { return readiness_.load() == is_ready; }
    // Whether the host was ever ready: a stop during the start has nothing
    // to drain.
    bool was_ready() const noexcept { return was_ready_.load(); }
    std::chrono::nanoseconds loop_lag() const noexcept;
    metrics_registry& metrics() noexcept { return *metrics_; }

    // From the host: readiness, and the loop monitor and publishers, which
    // run from application_started until the stop begins.
    void set_ready(bool value) noexcept;
    void start_tasks();
    // Not ready any more, and the tasks are asked to stop. Any thread.
    void stop_tasks();

private:
    struct check_run;
    asio::awaitable<void> monitor_loop(std::stop_token stop);
    asio::awaitable<void> publish_loop(const health_publisher_registration& publisher, std::stop_token stop);
    void spawn_task(std::function<asio::awaitable<void>(std::stop_token)> body, const char* what);
    void record(const health_check_registration& check, const health_entry& entry);

    health_options options_;
    std::vector<health_check_registration> checks_;
    std::vector<health_publisher_registration> publishers_;
    std::shared_ptr<metrics_registry> metrics_;
    std::shared_ptr<spdlog::logger> log_;
    std::function<std::vector<service_status>()> statuses_;
    std::optional<asio::strand<asio::any_io_executor>> check_strand_; // where checks run
    std::optional<asio::strand<asio::any_io_executor>> tasks_;  // monitor and publishers
    enum { is_starting, is_ready, is_stopping };
    std::atomic<int> readiness_{is_starting};
    std::atomic<bool> was_ready_{false};

    // Loop lag, written by the monitor, read from any thread.
    std::atomic<bool> monitoring_{false};
    std::atomic<clock::rep> last_tick_{0};
    std::atomic<clock::rep> last_lag_{0};
    metric_histogram* lag_histogram_ = nullptr;
    struct check_metrics {
        metric_histogram* duration;
        metric_gauge* status;
    };
    std::vector<check_metrics> check_metrics_;

    // Tasks; tasks_ strand only.
    struct task {
        std::stop_source stop;
    };
    std::vector<std::unique_ptr<task>> tasks_running_;
};

} // namespace hosting::detail
