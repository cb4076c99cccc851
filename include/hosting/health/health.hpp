// health: checks, service liveness, event-loop lag, readiness and publishing.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace hosting {

namespace asio = boost::asio;

class metrics_registry;

// Ordered by severity: the worst one wins in a report.
enum class health_status { healthy, degraded, unhealthy };

// "Healthy", "Degraded" or "Unhealthy", as .NET and most dashboards spell them.
std::string_view to_string(health_status status) noexcept;

struct health_check_result {
    health_status status = health_status::healthy;
    std::string description;
    std::map<std::string, std::string> data;

    static health_check_result healthy(std::string description = {}, std::map<std::string, std::string> data = {});
    static health_check_result degraded(std::string description, std::map<std::string, std::string> data = {});
    static health_check_result unhealthy(std::string description, std::map<std::string, std::string> data = {});
};

// A check: a coroutine run on the host's io_context. `cancel` fires when its
// timeout passes or the host stops; by then its result is already reported
// as a failure, and the coroutine should end soon.
using health_check_function = std::function<asio::awaitable<health_check_result>(std::stop_token cancel)>;

// The tags the host gives its own entries, and the ones the two probes select.
namespace health_tags {
inline constexpr std::string_view live = "live";   // GET /health/live: services, the event loop
inline constexpr std::string_view ready = "ready"; // GET /health/ready: readiness
} // namespace health_tags

// One line of a report.
struct health_entry {
    std::string name;
    health_status status = health_status::healthy;
    std::string description;
    std::map<std::string, std::string> data;
    std::chrono::nanoseconds duration{0};
    std::vector<std::string> tags;
    std::string error; // what a check threw, or why it timed out
};

struct health_report {
    health_status status = health_status::healthy; // the worst entry's; healthy when empty
    std::chrono::nanoseconds total_duration{0};
    std::vector<health_entry> entries; // the host's entries first, then the checks in registration order

    const health_entry* find(std::string_view name) const noexcept;
    // {"status":"Healthy","totalDuration":0.0012,"entries":{"name":{...}}},
    // durations in seconds.
    std::string to_json() const;
};

struct health_options {
    // A background_service that declared a heartbeat interval is "stuck"
    // (unhealthy) after interval * heartbeat_factor without one.
    double heartbeat_factor = 3.0;
    // How often the event-loop lag monitor arms its timer; zero disables it.
    std::chrono::milliseconds loop_lag_interval{250};
    // A timer that runs later than this makes the loop degraded and logs a
    // warning naming the loop.
    std::chrono::milliseconds loop_lag_threshold{500};
    // The loop's name in the warning, the report and the metrics.
    std::string loop_name = "main";

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

// A publisher pushes the report somewhere (a log, a monitoring service) on a
// period, starting `delay` after application_started; runs never overlap
// (a run that outlasts the period makes the next one wait).
struct health_publisher_options {
    std::chrono::milliseconds delay{std::chrono::seconds(5)};
    std::chrono::milliseconds period{std::chrono::seconds(30)};
    std::string tag; // only the entries with this tag; all when empty
};
using health_publisher_function = std::function<asio::awaitable<void>(const health_report&, std::stop_token)>;

struct health_check_registration {
    std::string name;
    health_check_function fn;
    std::vector<std::string> tags;
    std::chrono::milliseconds timeout;
    health_status failure_status; // what a check that throws or times out reports
};

struct health_publisher_registration {
    std::string name;
    health_publisher_function fn;
    health_publisher_options options;
};

class host_builder;
namespace http {
struct server_options;
}

// What add_health_checks() returns: collects checks and publishers for the
// host's health. One per host_builder.
class health_builder {
public:
    // Used by add_health_checks(); registers what build() needs.
    explicit health_builder(host_builder& builder);

    // Adds a check. Names must be unique and must not start with "service:"
    // or be "event_loop" or "readiness" (the host's own entries); build()
    // throws std::invalid_argument naming a duplicate. A check tagged
    // health_tags::ready also decides readiness, one tagged
    // health_tags::live also liveness. `fn` may take a std::stop_token or
    // nothing.
    template <class F>
    health_builder& add_check(std::string name, F fn, std::vector<std::string> tags = {},
                              std::chrono::milliseconds timeout = std::chrono::seconds(10),
                              health_status failure_status = health_status::unhealthy)
    {
        if constexpr (std::is_invocable_v<F&, std::stop_token>)
            return add(health_check_registration{std::move(name), health_check_function(std::move(fn)),
                                                 std::move(tags), timeout, failure_status});
        else
            return add(health_check_registration{
                std::move(name), [f = std::move(fn)](std::stop_token) mutable { return f(); }, std::move(tags),
                timeout, failure_status});
    }

    health_builder& add_publisher(std::string name, health_publisher_function fn,
                                  health_publisher_options options = {});

    health_options& options() noexcept;

    struct state; // opaque: what build() acts on

private:
    friend health_builder& add_health_endpoint(host_builder& builder, http::server_options options);
    health_builder& add(health_check_registration check);
    std::shared_ptr<state> state_;
};

// Gives the host a health: its own entries (every hosted service, the event
// loop, readiness), the checks and publishers added to the returned
// builder, and a metrics_registry. Registers health_monitor and
// metrics_registry for services, and follows the host's life (readiness is
// true from application_started until a stop is requested; publishers and
// the loop monitor run in between). Call it as often as you like: there is
// one health per builder, and build() throws std::invalid_argument naming a
// duplicate check or a bad option.
health_builder& add_health_checks(host_builder& builder);

namespace detail {
class health_core;
}

// The host's health, a singleton services can ask for.
class health_monitor {
public:
    explicit health_monitor(std::shared_ptr<detail::health_core> core);
    ~health_monitor();

    // Runs the checks (those with `tag`, or all when it is empty) concurrently
    // on the host's io_context, each bounded by its timeout, and adds the
    // host's own entries with that tag.
    //
    // Completes with the report once every check has answered or timed out;
    // the host's own entries are taken when the operation begins.
    // Lifetimes: the tag is copied at the call. (A string_view, not a string:
    // a string temporary inside a co_await expression is what GCC 12 can
    // destroy twice.) This monitor, or the host it belongs to, must outlive
    // the operation.
    // Executor: any. The checks run on a strand of the host's io_context, and
    // their timeouts are kept on a strand of the caller's executor, so that a
    // blocked host loop makes the checks time out rather than hold up the
    // caller; the caller resumes on its own executor.
    // Cancellation: check() takes no token. A check that misses its timeout
    // is reported with its failure_status, its `cancel` token fires and its
    // coroutine is cancelled (terminal). Cancelling the awaiting coroutine is
    // forwarded to the run by Asio's co_spawn: check() then throws Asio's
    // system_error (operation_aborted), not operation_canceled, and the checks
    // still running are told to stop in the same way.
    // Errors: none for a check that throws or times out: that is in its entry
    // (with its failure_status and the reason). Otherwise only the
    // cancellation above.
    // Thread safety: any thread, any number of calls at once.
    asio::awaitable<health_report> check(std::string_view tag = {});

    // The host's own entries (services, event loop, readiness) with `tag`,
    // or all; no check runs, so it costs microseconds. Thread-safe.
    health_report host_entries(std::string_view tag = {}) const;

    // True from application_started until a stop is requested. Thread-safe.
    bool ready() const noexcept;

    // How late the host's loop ran its last timer, or how long it has been
    // stuck now, whichever is larger; zero when the monitor is off.
    std::chrono::nanoseconds loop_lag() const noexcept;

    metrics_registry& metrics() noexcept;

private:
    std::shared_ptr<detail::health_core> core_;
};

} // namespace hosting
