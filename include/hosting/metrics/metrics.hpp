// metrics: counters, gauges and histograms, exposed in Prometheus's text format.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hosting {

// Label names and values of one series, in the order they are printed.
using metric_labels = std::vector<std::pair<std::string, std::string>>;

// Monotonic; lock-free and safe from any thread.
class metric_counter {
public:
    // `by` must not be negative: a counter that goes down reads as a
    // restart to Prometheus. A negative value throws std::invalid_argument.
    void inc(double by = 1.0);
    double value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<double> value_{0.0};
};

class metric_gauge {
public:
    void set(double value) noexcept { value_.store(value, std::memory_order_relaxed); }
    void inc(double by = 1.0) noexcept { value_.fetch_add(by, std::memory_order_relaxed); }
    void dec(double by = 1.0) noexcept { value_.fetch_sub(by, std::memory_order_relaxed); }
    double value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
    std::atomic<double> value_{0.0};
};

// Cumulative buckets with upper bounds; lock-free observe().
class metric_histogram {
public:
    // Bounds must be finite and strictly increasing; +Inf is implicit.
    explicit metric_histogram(std::vector<double> bounds);
    void observe(double value) noexcept;

    struct snapshot {
        std::vector<double> bounds;
        std::vector<std::uint64_t> cumulative; // one per bound, then +Inf
        double sum = 0;
        std::uint64_t count = 0;
    };
    snapshot collect() const;
    const std::vector<double>& bounds() const noexcept { return bounds_; }

private:
    std::vector<double> bounds_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_; // bounds_.size() + 1
    std::atomic<double> sum_{0.0};
    std::atomic<std::uint64_t> count_{0};
};

// Bounds for durations in seconds, from 1 ms to 10 s.
std::vector<double> default_duration_buckets();

enum class metric_type { counter, gauge, histogram };

// What a collector writes into at scrape time, for values that are cheaper
// to read when asked for than to keep up to date (one series per service,
// say). Samples of one name must share its type and help; families appear
// in the order of their first sample.
class metrics_writer {
public:
    void counter(std::string_view name, std::string_view help, const metric_labels& labels, double value);
    void gauge(std::string_view name, std::string_view help, const metric_labels& labels, double value);

private:
    friend class metrics_registry;
    struct family;
    void sample(std::string_view name, std::string_view help, metric_type type, const metric_labels& labels,
                double value);
    std::vector<std::unique_ptr<family>>* families_ = nullptr;
};

// The one registry of a host (a singleton services can ask for): the host's
// own metrics live here, and so can any subsystem's or program's.
//
// counter(), gauge() and histogram() return the series for a name and a
// label set, creating it on first use; the reference stays valid for the
// registry's lifetime, so hot paths look it up once. Names must match
// [a-zA-Z_:][a-zA-Z0-9_:]* and label names [a-zA-Z_][a-zA-Z0-9_]* (not
// starting with "__", and not "le" on a histogram); a bad name, or a name
// reused with another type, throws std::invalid_argument naming it.
// Thread-safe.
class metrics_registry {
public:
    metrics_registry();
    ~metrics_registry();
    metrics_registry(const metrics_registry&) = delete;
    metrics_registry& operator=(const metrics_registry&) = delete;

    metric_counter& counter(std::string_view name, std::string_view help, const metric_labels& labels = {});
    metric_gauge& gauge(std::string_view name, std::string_view help, const metric_labels& labels = {});
    metric_histogram& histogram(std::string_view name, std::string_view help, std::vector<double> bounds,
                                const metric_labels& labels = {});

    // Called at each render(), from the thread that renders; it must not
    // block. Its families come after the registered ones.
    void add_collector(std::function<void(metrics_writer&)> collector);

    // The Prometheus text exposition format, version 0.0.4.
    std::string render() const;
    static constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

private:
    struct family;
    family& find_or_add(std::string_view name, std::string_view help, metric_type type);
    // The series of `labels` in the family `name`, made of `made` when new.
    template <class Metric>
    Metric& series_of(std::string_view name, std::string_view help, metric_type type, const metric_labels& labels,
                      std::unique_ptr<Metric> made);
    mutable std::mutex mutex_;
    std::vector<std::unique_ptr<family>> families_;
    std::vector<std::function<void(metrics_writer&)>> collectors_;
};

class host_builder;

// Registers the host's metrics_registry for services (one per builder,
// whatever the number of calls) and returns it. The health, HTTP and jobs
// features call it themselves; a program adds its own series to the same
// registry, before or after build().
std::shared_ptr<metrics_registry> add_metrics(host_builder& builder);

} // namespace hosting
