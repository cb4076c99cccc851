// The host's machinery; host.hpp only shows a handle to it.
#pragma once

#include <hosting/health.hpp>
#include <hosting/health_endpoint.hpp>
#include <hosting/host.hpp>
#include <hosting/host_lifetime.hpp>
#include <hosting/host_options.hpp>
#include <hosting/lifetime.hpp>
#include <hosting/logging.hpp>
#include <hosting/services.hpp>

#include "background_service_access.hpp"
#include "owned_io_context.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace hosting {
class background_service;
}

namespace hosting::detail {

class health_core;

using clock = std::chrono::steady_clock;
using strand_type = asio::strand<asio::io_context::executor_type>;
// A service's executor: its own strand, or the io_context itself when the
// host owns a single-threaded loop and a strand would only cost time.
using service_executor = asio::any_io_executor;

// What a restart policy needs; only services that have one pay for it.
struct supervision {
    restart_policy policy;
    std::function<std::shared_ptr<hosted_service>(service_provider&)> factory;
    std::deque<clock::time_point> recent; // orchestrator strand only: restarts within the window
    std::optional<asio::steady_timer> timer; // orchestrator strand only
    std::atomic<bool> pending{false};
    std::atomic<bool> exhausted{false};
};

struct service_entry {
    service_entry(std::shared_ptr<const std::string> n, std::shared_ptr<hosted_service> s, service_executor ex);

    std::shared_ptr<const std::string> name_storage; // shared by instances of one type
    const std::string& name;
    std::shared_ptr<hosted_service> service;
    hosted_lifecycle_service* lifecycle = nullptr;
    background_service* background = nullptr;
    service_executor strand;
    std::atomic<service_state> state{service_state::not_started};
    bool started = false; // orchestrator strand only: start() succeeded, so stop() is owed
    std::shared_ptr<struct pending_call> stop_waiter; // orchestrator strand only
    std::atomic<std::uint32_t> restarts{0};
    std::atomic<std::uint32_t> faults{0};
    std::unique_ptr<supervision> supervised; // null without a restart policy
    // The host's health endpoint: it starts before the other services and
    // stops after them even when they start or stop concurrently, so that
    // probes see the whole start and stop.
    bool brackets = false;

    void set_error(std::exception_ptr e);
    std::exception_ptr error_unlocked() const; // with entry_mutex held (statuses())
    // `service` and `background` change on a restart (on the orchestrator's
    // strand), under entry_mutex, which other threads take to read them.
    void replace(std::shared_ptr<hosted_service> s);

private:
    std::exception_ptr error_;
};

// One start(), stop() or hook call running on a service's strand; its
// result is delivered to the orchestrator's strand.
struct pending_call {
    service_entry* entry;
    bool done = false;
    std::exception_ptr error;
};

class host_core : public std::enable_shared_from_this<host_core> {
public:
    struct settings {
        host_options options;
        logging_options logging;
        asio::io_context* external_io = nullptr;
        bool console_lifetime = true;
        std::string environment;
        std::vector<std::shared_ptr<host_lifetime>> lifetimes;
        std::optional<hosting::configuration> config;
        health_options health;
        std::vector<health_check_registration> checks;
        std::vector<health_publisher_registration> publishers;
        std::optional<health_endpoint_options> endpoint;
    };

    explicit host_core(settings s);
    ~host_core();
    // Stops a host that is still running and joins its threads; called by
    // ~host while the core is still owned by a shared_ptr, so that a core
    // whose thread is stuck can be kept alive instead of destroyed.
    void close();

    // Second construction step: needs shared_from_this.
    void build(service_collection services, std::vector<detail::hosted_descriptor> hosted);

    asio::awaitable<void> start();
    asio::awaitable<void> stop();
    asio::awaitable<int> wait_for_shutdown();
    void start_blocking();
    void stop_blocking();
    int run();

    int exit_code() const noexcept { return exit_code_.load(); }
    service_provider& provider() noexcept { return *provider_; }
    application_lifetime& lifetime() noexcept { return *lifetime_; }
    std::vector<service_status> statuses() const;

private:
    // Orchestration; everything below runs on orch_ unless it says otherwise.
    asio::awaitable<void> do_start();
    asio::awaitable<void> do_stop();
    asio::awaitable<void> stop_services();
    using call_fn = std::function<asio::awaitable<void>(service_entry&, std::stop_token)>;
    std::shared_ptr<pending_call> spawn_call(service_entry& entry, call_fn fn, std::stop_token token);
    // Waits until every call is done or `deadline()` passes; false on timeout.
    asio::awaitable<bool> wait_calls(const std::vector<std::shared_ptr<pending_call>>& calls,
                                     const std::function<clock::time_point()>& deadline);
    asio::awaitable<void> wait_for_change(clock::time_point until);
    void notify_change();
    void disarm_wake();
    void on_stop_requested_in_loop();
    void on_execute_end(service_entry& entry, service_state state, std::exception_ptr error);
    // Supervision: true when a restart was scheduled for the service that
    // just ended, which then still counts as running.
    bool schedule_restart(service_entry& entry, service_state state, const std::exception_ptr& error);
    void restart_now(service_entry& entry);
    void cancel_restarts();
    void attach_background(service_entry& entry, background_service& service);
    void stop_if_background_done();
    void fail(int code) noexcept;
    // Tells every host_lifetime; exceptions are logged.
    template <class F>
    void tell_lifetimes(const char* hook, F&& call) noexcept;
    void tell_stopped() noexcept;
    clock::time_point stop_deadline() const noexcept;

    // Any thread.
    void on_stop_requested_any_thread() noexcept;
    void ensure_threads();
    void start_control_thread();
    void wait_for_signal(asio::signal_set& signals);
    void reload_configuration();
    void join_threads(clock::time_point until);
    void report_stragglers(const char* where);
    bool is_loop_thread() const;

    settings settings_;
    std::shared_ptr<logger_factory> loggers_;
    std::shared_ptr<spdlog::logger> lifetime_log_;
    std::shared_ptr<spdlog::logger> host_log_;

    // Declared before everything that holds Asio objects, so it is destroyed
    // after them; ~host_core shuts it down first so that frames die while the
    // services they point at still exist.
    std::unique_ptr<owned_io_context> owned_io_;
    asio::io_context* io_;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
    strand_type orch_;

    std::shared_ptr<application_lifetime> lifetime_;
    std::shared_ptr<metrics_registry> metrics_;
    std::shared_ptr<health_core> health_;
    std::shared_ptr<background_service_access::observer> observer_;
    std::minstd_rand jitter_rng_{std::random_device{}()}; // orch_ only
    std::unique_ptr<service_provider> provider_;
    std::vector<std::unique_ptr<service_entry>> entries_;

    enum class phase { created, starting, started, stopping, stopped };
    phase phase_ = phase::created;           // orch_ only
    bool stop_seen_ = false;                 // orch_ only
    std::size_t background_running_ = 0;    // orch_ only: launched, execute not yet ended
    std::stop_source start_cancel_;          // fired on a stop request or startup timeout
    std::stop_source stop_cancel_;           // fired at the shutdown deadline
    std::optional<clock::time_point> start_deadline_; // orch_ only
    struct change_waiter {
        virtual ~change_waiter() = default;
        virtual void resume() = 0;
    };
    std::vector<std::unique_ptr<change_waiter>> waiters_; // orch_ only
    std::optional<asio::steady_timer> wake_timer_;         // orch_ only; wakes waiters at a deadline
    clock::time_point wake_armed_for_ = clock::time_point::max();
    std::optional<asio::steady_timer> deadline_timer_;

    std::atomic<int> exit_code_{0};
    std::atomic<clock::rep> stop_requested_at_{0}; // 0: not yet
    std::atomic<bool> start_called_{false};
    std::atomic<bool> signal_received_{false};
    std::atomic<bool> abandoned_{false}; // a deadline left a call of a service running
    std::atomic<bool> lifetimes_stopped_{false};

    // Blocking callers wait on these.
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    bool stop_requested_flag_ = false; // mutex_
    bool stop_finished_ = false;       // mutex_
    bool start_finished_ = false;      // mutex_
    std::exception_ptr start_error_;   // mutex_
    std::size_t threads_running_ = 0;  // mutex_

    std::vector<std::thread> workers_;
    bool threads_started_ = false;
    bool threads_joined_ = false;

    // Signals are handled on a thread of their own so that a blocked service
    // loop cannot delay the second-signal exit.
    asio::io_context control_io_;
    std::optional<asio::signal_set> signals_;
    std::thread control_thread_;

    struct on_stop_request {
        host_core* core;
        void operator()() noexcept { core->on_stop_requested_any_thread(); }
    };
    std::optional<std::stop_callback<on_stop_request>> stop_request_callback_;
};

} // namespace hosting::detail
