#include "health/detail/health_core.hpp"

#include <hosting/async/cancellation.hpp>
#include <hosting/async/cancellation_bridge.hpp>

#include "detail/describe.hpp"
#include "detail/duration_text.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <initializer_list>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

namespace hosting {

using clock = std::chrono::steady_clock;

std::string_view to_string(health_status status) noexcept
{
    switch (status) {
    case health_status::healthy: return "Healthy";
    case health_status::degraded: return "Degraded";
    case health_status::unhealthy: return "Unhealthy";
    }
    return "Unknown";
}

health_check_result health_check_result::healthy(std::string description, std::map<std::string, std::string> data)
{
    return {health_status::healthy, std::move(description), std::move(data)};
}

health_check_result health_check_result::degraded(std::string description, std::map<std::string, std::string> data)
{
    return {health_status::degraded, std::move(description), std::move(data)};
}

health_check_result health_check_result::unhealthy(std::string description, std::map<std::string, std::string> data)
{
    return {health_status::unhealthy, std::move(description), std::move(data)};
}

const health_entry* health_report::find(std::string_view name) const noexcept
{
    for (const auto& e : entries)
        if (e.name == name)
            return &e;
    return nullptr;
}

namespace {

double seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }

using detail::ms_text;

bool has_tag(const std::vector<std::string>& tags, std::string_view tag)
{
    return tag.empty() || std::find(tags.begin(), tags.end(), tag) != tags.end();
}

// For the host's own entries, whose tags are fixed: no vector per request.
bool has_tag(std::initializer_list<std::string_view> tags, std::string_view tag)
{
    return tag.empty() || std::find(tags.begin(), tags.end(), tag) != tags.end();
}

void aggregate(health_report& report)
{
    report.status = health_status::healthy;
    for (const auto& e : report.entries)
        report.status = std::max(report.status, e.status);
}

} // namespace

namespace {

// Written by hand rather than through a JSON DOM: probes ask for this many
// times a second, and building the tree cost more than the rest of the
// request.
void append_string(std::string& out, std::string_view text)
{
    static constexpr char hex[] = "0123456789abcdef";
    out += '"';
    for (char c : text) {
        const auto u = static_cast<unsigned char>(c);
        switch (c) {
        case '"': out += "\\\""; break;
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        case '\r': out += "\\r"; break;
        case '\t': out += "\\t"; break;
        default:
            if (u < 0x20) {
                out += "\\u00";
                out += hex[u >> 4];
                out += hex[u & 15];
            } else {
                out += c;
            }
        }
    }
    out += '"';
}

void append_seconds(std::string& out, std::chrono::nanoseconds d)
{
    char buffer[32];
    auto r = std::to_chars(buffer, buffer + sizeof buffer, seconds(d));
    out.append(buffer, r.ptr);
}

} // namespace

std::string health_report::to_json() const
{
    std::string out;
    out.reserve(128 + entries.size() * 192);
    out += "{\"status\":";
    append_string(out, to_string(status));
    out += ",\"totalDuration\":";
    append_seconds(out, total_duration);
    out += ",\"entries\":{";
    bool first = true;
    for (const auto& e : entries) {
        if (!first)
            out += ',';
        first = false;
        append_string(out, e.name);
        out += ":{\"status\":";
        append_string(out, to_string(e.status));
        out += ",\"description\":";
        append_string(out, e.description);
        out += ",\"duration\":";
        append_seconds(out, e.duration);
        out += ",\"tags\":[";
        for (std::size_t i = 0; i < e.tags.size(); ++i) {
            if (i)
                out += ',';
            append_string(out, e.tags[i]);
        }
        out += "],\"data\":{";
        bool first_datum = true;
        for (const auto& [k, v] : e.data) {
            if (!first_datum)
                out += ',';
            first_datum = false;
            append_string(out, k);
            out += ':';
            append_string(out, v);
        }
        out += '}';
        if (!e.error.empty()) {
            out += ",\"error\":";
            append_string(out, e.error);
        }
        out += '}';
    }
    out += "}}";
    return out;
}

void health_options::validate() const
{
    if (!(heartbeat_factor >= 1.0) || !std::isfinite(heartbeat_factor))
        throw std::invalid_argument("health_options: heartbeat_factor must be at least 1 (got " +
                                    std::to_string(heartbeat_factor) + ")");
    if (loop_lag_interval < std::chrono::milliseconds::zero())
        throw std::invalid_argument("health_options: loop_lag_interval must not be negative");
    if (loop_lag_threshold <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("health_options: loop_lag_threshold must be positive");
    if (loop_name.empty())
        throw std::invalid_argument("health_options: loop_name must not be empty");
}

// ---------------------------------------------------------------------------

health_monitor::health_monitor(std::shared_ptr<detail::health_core> core) : core_(std::move(core)) {}
health_monitor::~health_monitor() = default;

asio::awaitable<health_report> health_monitor::check(std::string_view tag)
{
    return core_->check(std::string(tag));
}

health_report health_monitor::host_entries(std::string_view tag) const { return core_->host_entries(tag); }
bool health_monitor::ready() const noexcept { return core_->ready(); }
std::chrono::nanoseconds health_monitor::loop_lag() const noexcept { return core_->loop_lag(); }
metrics_registry& health_monitor::metrics() noexcept { return core_->metrics(); }

// ---------------------------------------------------------------------------

namespace detail {

health_core::health_core(health_options options, std::vector<health_check_registration> checks,
                         std::vector<health_publisher_registration> publishers,
                         std::shared_ptr<metrics_registry> metrics, std::shared_ptr<spdlog::logger> log)
    : options_(std::move(options)),
      checks_(std::move(checks)),
      publishers_(std::move(publishers)),
      metrics_(std::move(metrics)),
      log_(std::move(log))
{
    if (options_.loop_lag_interval > std::chrono::milliseconds::zero())
        lag_histogram_ = &metrics_->histogram(
            "hosting_event_loop_lag_seconds", "How late the event loop ran a timer",
            {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}, {{"loop", options_.loop_name}});
    for (const auto& c : checks_)
        check_metrics_.push_back(
            {&metrics_->histogram("hosting_health_check_duration_seconds", "How long a health check took",
                                  default_duration_buckets(), {{"check", c.name}}),
             &metrics_->gauge("hosting_health_check_status",
                              "The last result of a health check: 0 healthy, 1 degraded, 2 unhealthy",
                              {{"check", c.name}})});
}

health_core::~health_core() = default;

void health_core::attach(asio::any_io_executor host_executor, std::function<std::vector<service_status>()> statuses)
{
    check_strand_.emplace(asio::make_strand(host_executor));
    tasks_.emplace(asio::make_strand(host_executor));
    statuses_ = std::move(statuses);
    metrics_->add_collector([weak = weak_from_this()](metrics_writer& out) {
        auto self = weak.lock();
        if (!self)
            return;
        static constexpr service_state states[] = {
            service_state::not_started, service_state::starting, service_state::running, service_state::stopping,
            service_state::stopped,     service_state::completed, service_state::faulted,
        };
        auto all = self->statuses_();
        for (const auto& s : all)
            for (auto state : states)
                out.gauge("hosting_service_state", "1 for the state a hosted service is in, 0 for the others",
                          {{"service", s.name}, {"state", std::string(to_string(state))}}, s.state == state ? 1 : 0);
        for (const auto& s : all)
            out.counter("hosting_service_restarts_total", "How many times a service was restarted by its policy",
                        {{"service", s.name}}, s.restarts);
        for (const auto& s : all)
            out.counter("hosting_service_faults_total", "How many times a service faulted", {{"service", s.name}},
                        s.faults);
        const auto now = clock::now();
        for (const auto& s : all)
            if (s.heartbeat_interval.count() > 0 && s.last_heartbeat != clock::time_point{})
                out.gauge("hosting_service_heartbeat_age_seconds", "Time since a service's last heartbeat",
                          {{"service", s.name}}, seconds(now - s.last_heartbeat));
        out.gauge("hosting_ready", "1 when the host is ready for traffic", {}, self->ready() ? 1 : 0);
    });
}

void health_core::set_ready(bool value) noexcept
{
    if (!value) {
        readiness_ = is_stopping;
        return;
    }
    // Once a stop began nothing makes the host ready again, even a start
    // that finishes on another thread at the same moment.
    int expected = is_starting;
    if (readiness_.compare_exchange_strong(expected, is_ready))
        was_ready_ = true;
}

std::chrono::nanoseconds health_core::loop_lag() const noexcept
{
    if (!monitoring_.load())
        return std::chrono::nanoseconds::zero();
    const auto last = clock::time_point(clock::duration(last_tick_.load()));
    // A loop that is stuck right now has not ticked for a while: that is lag
    // too, and the only way to see it while it lasts.
    auto overdue = clock::now() - last - options_.loop_lag_interval;
    return std::max(std::chrono::nanoseconds(last_lag_.load()), std::chrono::nanoseconds(overdue));
}

bool health_core::has_checks(std::string_view tag) const
{
    return std::any_of(checks_.begin(), checks_.end(), [&](const auto& c) { return has_tag(c.tags, tag); });
}

health_report health_core::host_entries(std::string_view tag) const
{
    health_report report;
    const auto now = clock::now();
    if (statuses_ && has_tag({health_tags::live, "service"}, tag)) {
        std::unordered_map<std::string, int> seen;
        for (const auto& s : statuses_()) {
            health_entry e;
            e.name = "service:" + s.name;
            if (int n = ++seen[s.name]; n > 1)
                e.name += "#" + std::to_string(n);
            e.tags = {"live", "service"};
            e.data["state"] = std::string(to_string(s.state));
            e.data["restarts"] = std::to_string(s.restarts);
            e.data["faults"] = std::to_string(s.faults);
            const std::string error = s.error ? describe(s.error) : std::string();
            if (!error.empty())
                e.error = error;
            if (s.restarts_exhausted) {
                e.status = health_status::unhealthy;
                e.description = "restart limit reached; " + std::string(to_string(s.state)) +
                                (error.empty() ? std::string() : ": " + error);
            } else if (s.restart_pending) {
                e.status = health_status::degraded;
                e.description = "restarting after it " +
                                std::string(s.state == service_state::faulted ? "faulted: " + error : "completed");
            } else if (s.state == service_state::faulted) {
                e.status = health_status::unhealthy;
                e.description = "faulted: " + error;
            } else if (s.state == service_state::running && s.heartbeat_interval.count() > 0) {
                const auto age = now - s.last_heartbeat;
                e.data["heartbeat_age_ms"] = std::to_string(
                    std::chrono::duration_cast<std::chrono::milliseconds>(age).count());
                if (age > std::chrono::duration<double, std::milli>(static_cast<double>(s.heartbeat_interval.count()) *
                                                                    options_.heartbeat_factor)) {
                    e.status = health_status::unhealthy;
                    e.description = "stuck: no heartbeat for " + ms_text(age) + " (expected every " +
                                    ms_text(s.heartbeat_interval) + ")";
                } else {
                    e.description = "running";
                }
            } else {
                e.description = std::string(to_string(s.state));
            }
            report.entries.push_back(std::move(e));
        }
    }
    if (options_.loop_lag_interval.count() > 0 && has_tag({health_tags::live}, tag)) {
        health_entry e;
        e.name = "event_loop";
        e.tags = {"live"};
        const auto lag = loop_lag();
        e.data["loop"] = options_.loop_name;
        e.data["lag_ms"] = std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(lag).count());
        if (lag > options_.loop_lag_threshold) {
            e.status = health_status::degraded;
            e.description = "event loop '" + options_.loop_name + "' is " + ms_text(lag) + " late (threshold " +
                            ms_text(options_.loop_lag_threshold) + ")";
        } else {
            e.description = monitoring_.load() ? "on time" : "not monitored yet";
        }
        report.entries.push_back(std::move(e));
    }
    if (has_tag({health_tags::ready}, tag)) {
        health_entry e;
        e.name = "readiness";
        e.tags = {"ready"};
        if (ready()) {
            e.description = "ready";
        } else {
            e.status = health_status::unhealthy;
            e.description = readiness_.load() == is_stopping ? "not ready: stopping" : "not ready: starting";
        }
        report.entries.push_back(std::move(e));
    }
    aggregate(report);
    return report;
}

// One run of the checks. The collector runs on a strand of the caller's
// executor, not the host's loop, so that a blocked loop makes its checks
// time out instead of making the caller wait.
struct health_core::check_run {
    struct slot {
        const health_check_registration* check = nullptr;
        clock::time_point started;
        bool done = false;
        health_entry entry;
        std::stop_source stop;
        // check_strand_ only. The check's coroutine holds its slot until it
        // ends, which may be after the run has given up on it.
        asio::cancellation_signal signal;
    };

    // How a check, on the host's side, reaches the run on the caller's side.
    // It must never own the run: the last owner destroys the strand and the
    // timer, which is only safe in the caller's execution context, and the
    // caller may destroy that context as soon as the run is over.
    struct mailbox {
        std::mutex mutex;
        const asio::strand<asio::any_io_executor>* strand = nullptr; // null once the run is gone
    };

    // First, so that it is destroyed last: it may own the execution context
    // the strand and the timer belong to.
    std::shared_ptr<void> keep_alive;
    asio::strand<asio::any_io_executor> strand;
    std::shared_ptr<mailbox> box = std::make_shared<mailbox>();
    asio::steady_timer event;
    std::vector<std::shared_ptr<slot>> slots;
    std::size_t remaining = 0;

    asio::any_io_executor checks; // where the checks run

    check_run(std::shared_ptr<void> keep, asio::any_io_executor ex, asio::any_io_executor check_executor)
        : keep_alive(std::move(keep)),
          strand(asio::make_strand(ex)),
          event(strand, clock::time_point::max()),
          checks(std::move(check_executor))
    {
        box->strand = &strand;
    }

    // Whoever gave up on the run (a cancelled publisher, a closed
    // connection, the stop) also gives up on its checks: they are told to
    // stop instead of running on without a deadline.
    ~check_run()
    {
        {
            // Waits for a check that is posting its result right now.
            std::lock_guard lock(box->mutex);
            box->strand = nullptr;
        }
        for (auto& s : slots) {
            if (s->done)
                continue;
            s->stop.request_stop();
            try {
                asio::post(checks, [s] { s->signal.emit(asio::cancellation_type::terminal); });
            } catch (...) {
            }
        }
    }

    void finish(slot& s, health_entry entry)
    {
        if (s.done)
            return;
        s.done = true;
        s.entry = std::move(entry);
        --remaining;
        event.cancel();
    }
};

asio::awaitable<health_report> health_core::check(std::string tag, std::shared_ptr<void> keep_alive)
{
    const auto began = clock::now();
    health_report report = host_entries(tag);
    auto caller = co_await asio::this_coro::executor;
    auto run = std::make_shared<check_run>(std::move(keep_alive), caller, *check_strand_);
    for (const auto& c : checks_) {
        if (!has_tag(c.tags, tag))
            continue;
        auto& s = *run->slots.emplace_back(std::make_shared<check_run::slot>());
        s.check = &c;
        s.entry.name = c.name;
        s.entry.tags = c.tags;
        ++run->remaining;
    }

    auto collect = [self = shared_from_this(), run]() -> asio::awaitable<void> {
        for (auto& sp : run->slots) {
            std::shared_ptr<check_run::slot> s = sp;
            s->started = clock::now();
            auto body = [fn = s->check->fn, token = s->stop.get_token()]() -> asio::awaitable<health_check_result> {
                auto op = fn(token); // made outside the co_await: see delay()
                co_return co_await std::move(op);
            };
            // The handler holds the run weakly, and locks it only on the
            // caller's strand: once the caller is gone, a late check has
            // nobody to report to.
            std::weak_ptr<check_run> weak = run;
            asio::co_spawn(
                *self->check_strand_, std::move(body),
                asio::bind_cancellation_slot(
                    s->signal.slot(), [weak, box = run->box, s](std::exception_ptr error, health_check_result result) {
                        // Held across the post, so that the strand copies
                        // the post makes are gone before the run can be.
                        std::lock_guard lock(box->mutex);
                        if (!box->strand)
                            return;
                        asio::post(*box->strand, [weak, s, error, result = std::move(result)]() mutable {
                            auto run = weak.lock();
                            // Timed out already: its entry says so, and stays.
                            if (!run || s->done)
                                return;
                            health_entry e = std::move(s->entry);
                            e.duration = clock::now() - s->started;
                            if (error) {
                                e.status = s->check->failure_status;
                                e.error = describe(error);
                                e.description = "the check threw: " + e.error;
                            } else {
                                e.status = result.status;
                                e.description = std::move(result.description);
                                e.data = std::move(result.data);
                            }
                            run->finish(*s, std::move(e));
                        });
                    }));
        }
        while (run->remaining > 0) {
            const auto now = clock::now();
            auto next = clock::time_point::max();
            for (auto& sp : run->slots) {
                auto& s = *sp;
                if (s.done)
                    continue;
                const auto due = s.started + s.check->timeout;
                if (now < due) {
                    next = std::min(next, due);
                    continue;
                }
                health_entry e = std::move(s.entry);
                e.duration = now - s.started;
                e.status = s.check->failure_status;
                e.error = "timed out after " + ms_text(s.check->timeout);
                e.description = "the check " + e.error;
                s.stop.request_stop();
                asio::post(*self->check_strand_, [sp] { sp->signal.emit(asio::cancellation_type::terminal); });
                run->finish(s, std::move(e));
            }
            if (run->remaining == 0)
                break;
            run->event.expires_at(next);
            boost::system::error_code ec;
            co_await run->event.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            auto cs = co_await asio::this_coro::cancellation_state;
            if (cs.cancelled() != asio::cancellation_type::none)
                throw boost::system::system_error(asio::error::operation_aborted);
        }
    };
    co_await asio::co_spawn(run->strand, std::move(collect), asio::use_awaitable);

    for (std::size_t i = 0; i < run->slots.size(); ++i) {
        const auto& e = run->slots[i]->entry;
        record(*run->slots[i]->check, e);
        report.entries.push_back(e);
    }
    aggregate(report);
    report.total_duration = clock::now() - began;
    co_return report;
}

void health_core::record(const health_check_registration& check, const health_entry& entry)
{
    const auto index = static_cast<std::size_t>(&check - checks_.data());
    check_metrics_[index].duration->observe(seconds(entry.duration));
    auto& gauge = *check_metrics_[index].status;
    const auto now = static_cast<double>(entry.status);
    const auto before = gauge.value();
    gauge.set(now);
    // On changes only: a probe polling every second must not flood the log.
    if (now != before && entry.status != health_status::healthy)
        log_->warn("Health check '{}' is {}: {}", check.name, to_string(entry.status), entry.description);
    else if (now != before)
        log_->info("Health check '{}' is Healthy again", check.name);
}

// ---------------------------------------------------------------------------
// Tasks: the loop monitor and the publishers

void health_core::spawn_task(std::function<asio::awaitable<void>(std::stop_token)> body, const char* what)
{
    auto& t = *tasks_running_.emplace_back(std::make_unique<task>());
    // Stopped by its token only, never by emitting on the coroutine's slot:
    // a publisher may be inside a check, a co_spawn onto another strand,
    // and Asio 1.81 forwards such a cancellation to that strand by a post
    // that can outlive the nested operation. The loops' own timers follow
    // the token instead (cancellation_bridge).
    auto run = [body = std::move(body), token = t.stop.get_token()]() -> asio::awaitable<void> {
        auto op = body(token);
        co_await std::move(op);
    };
    asio::co_spawn(*tasks_, std::move(run), [weak = weak_from_this(), what](std::exception_ptr error) {
        auto self = weak.lock();
        if (self && error && !is_cancellation(error))
            self->log_->error("The health {} ended with an error: {}", what, describe(error));
    });
}

void health_core::start_tasks()
{
    asio::post(*tasks_, [self = shared_from_this()] {
        if (self->readiness_.load() == is_stopping)
            return;
        if (self->options_.loop_lag_interval.count() > 0)
            self->spawn_task([self](std::stop_token stop) { return self->monitor_loop(stop); }, "loop monitor");
        for (const auto& p : self->publishers_)
            self->spawn_task([self, p = &p](std::stop_token stop) { return self->publish_loop(*p, stop); },
                             "publisher");
    });
}

void health_core::stop_tasks()
{
    set_ready(false);
    // A publisher that ignores its cancellation is left to end by itself:
    // its frame owns what it uses.
    asio::post(*tasks_, [self = shared_from_this()] {
        for (auto& t : self->tasks_running_)
            t->stop.request_stop();
        self->monitoring_ = false;
    });
}

asio::awaitable<void> health_core::monitor_loop(std::stop_token stop)
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    cancellation_bridge bridge(timer.get_executor(), stop);
    last_tick_ = clock::now().time_since_epoch().count();
    monitoring_ = true;
    bool late = false;
    while (!stop.stop_requested()) {
        const auto due = clock::now() + options_.loop_lag_interval;
        timer.expires_at(due);
        co_await timer.async_wait(asio::bind_cancellation_slot(bridge.slot(), asio::use_awaitable));
        const auto now = clock::now();
        const auto lag = std::max(now - due, clock::duration::zero());
        last_lag_ = std::chrono::duration_cast<std::chrono::nanoseconds>(lag).count();
        last_tick_ = now.time_since_epoch().count();
        lag_histogram_->observe(seconds(lag));
        if (lag > options_.loop_lag_threshold) {
            log_->warn("Event loop '{}' ran a timer {} late (threshold {}): something blocks its thread",
                       options_.loop_name, ms_text(lag), ms_text(options_.loop_lag_threshold));
            late = true;
        } else if (late) {
            log_->info("Event loop '{}' is on time again", options_.loop_name);
            late = false;
        }
    }
}

asio::awaitable<void> health_core::publish_loop(const health_publisher_registration& publisher, std::stop_token stop)
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    cancellation_bridge bridge(timer.get_executor(), stop);
    auto next = clock::now() + publisher.options.delay;
    while (!stop.stop_requested()) {
        timer.expires_at(next);
        co_await timer.async_wait(asio::bind_cancellation_slot(bridge.slot(), asio::use_awaitable));
        // Operations made before their co_await: GCC 12 can destroy the
        // by-value arguments of a suspending expression twice.
        auto checking = check(publisher.options.tag);
        auto report = co_await std::move(checking);
        try {
            auto publishing = publisher.fn(report, stop);
            co_await std::move(publishing);
        } catch (...) {
            if (stop.stop_requested() && is_cancellation(std::current_exception()))
                throw;
            log_->error("Health publisher '{}' failed: {}", publisher.name, describe(std::current_exception()));
        }
        // Fixed rate, but never two runs at once: a run that outlasted its
        // period makes the next one start right away, once.
        next = std::max(next + publisher.options.period, clock::now());
    }
}

} // namespace detail
} // namespace hosting
