// The host's machinery; host.hpp only shows a handle to it.
#pragma once

#include <hosting/configuration/configuration.hpp>
#include <hosting/core/application_lifetime.hpp>
#include <hosting/core/host.hpp>
#include <hosting/core/host_lifetime.hpp>
#include <hosting/core/host_options.hpp>
#include <hosting/logging/logging.hpp>

#include "core/detail/async_event.hpp"
#include "core/detail/background_service_access.hpp"
#include "core/detail/service_entry.hpp"
#include "core/detail/stage_runner.hpp"
#include "core/detail/worker_threads.hpp"
#include "detail/owned_io_context.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace hosting::detail {

class host_core : public std::enable_shared_from_this<host_core> {
public:
    struct settings {
        host_options options;
        logging_options logging;
        asio::io_context* external_io = nullptr;
        bool console_lifetime = true; // only for the "Press Ctrl+C" line
        std::string environment;
        std::string content_root;
        std::vector<std::shared_ptr<host_lifetime>> lifetimes;
        std::optional<hosting::configuration> config;
    };

    explicit host_core(settings s);
    ~host_core();
    // Stops a host that is still running and joins its threads; called by
    // ~host while the core is still owned by a shared_ptr, so that a core
    // whose thread is stuck can be kept alive instead of destroyed.
    void close();

    // Second construction step: needs shared_from_this.
    void build(service_collection services, std::shared_ptr<hosted_descriptors> hosted);

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
    // What a registration marked single_instance() is built with instead.
    std::function<std::shared_ptr<hosted_service>(service_provider&)>
    single_instance_factory(hosted_descriptor& descriptor);
    // Orchestration; everything below runs on orch_ unless it says otherwise.
    asio::awaitable<void> do_start();
    asio::awaitable<void> do_stop();
    asio::awaitable<void> stop_services();
    std::shared_ptr<pending_call> spawn_call(service_entry& entry,
                                             asio::awaitable<void> (*fn)(service_entry&, std::stop_token),
                                             std::stop_token token);
    void on_stop_requested_in_loop();
    void on_execute_end(service_entry& entry, service_state state, std::exception_ptr error);
    void record_execute_end(service_entry& entry, service_state state, std::exception_ptr error);
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
    // Starts the deadline clock, once, whoever asks first.
    void stamp_stop_request() noexcept;
    void arm_deadline_timer(); // orch_ only
    bool start_failed_already() const;
    void launch_start();
    void launch_stop();
    void ensure_threads();
    void reload_configuration() noexcept;
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
    orchestrator_executor orch_;
    stage_runner stages_; // orch_ only
    std::unique_ptr<worker_threads> threads_;

    std::shared_ptr<application_lifetime> lifetime_;
    std::shared_ptr<background_service_access::observer> observer_;
    // One per service name: what each background_service of that name is told.
    std::unordered_map<const std::string*, std::shared_ptr<const background_service_access::binding>> bindings_;
    std::minstd_rand jitter_rng_{std::random_device{}()}; // orch_ only
    std::unique_ptr<service_provider> provider_;
    // What the entries run on (they point here): the loop itself, or a
    // strand each when more than one thread runs it.
    asio::any_io_executor loop_executor_;
    std::deque<asio::any_io_executor> strands_;
    // A deque: entries never move (the loop and the services point at
    // them), and several share one allocation.
    std::deque<service_entry> entries_;

    enum class phase { created, starting, started, stopping, stopped };
    phase phase_ = phase::created;        // orch_ only
    bool stop_seen_ = false;              // orch_ only
    std::size_t background_running_ = 0; // orch_ only: launched, execute not yet ended
    std::stop_source start_cancel_;       // fired on a stop request or startup timeout
    std::stop_source stop_cancel_;        // fired at the shutdown deadline
    std::optional<clock::time_point> start_deadline_; // orch_ only
    std::optional<asio::steady_timer> deadline_timer_; // orch_ only
    clock::time_point deadline_armed_for_{};           // orch_ only

    std::atomic<int> exit_code_{0};
    std::atomic<clock::rep> stop_requested_at_{0}; // 0: not yet
    std::atomic<bool> start_called_{false};
    std::atomic<bool> stop_launched_{false};
    std::atomic<bool> abandoned_{false}; // a deadline left a call of a service running
    std::atomic<bool> lifetimes_stopped_{false};

    // One start and one stop, whoever asks and however often; callers on
    // any executor or thread wait for these, and a cancelled wait leaves
    // the start or stop running.
    async_event start_done_;
    async_event stop_done_;
    async_event stop_requested_;

    // Blocking callers wait on these.
    mutable std::mutex mutex_;
    std::condition_variable changed_;
    bool stop_requested_flag_ = false; // mutex_
    bool stop_finished_ = false;       // mutex_
    bool start_finished_ = false;      // mutex_
    std::exception_ptr start_error_;   // mutex_
    bool threads_started_ = false;     // mutex_
    std::mutex join_mutex_;            // taken before mutex_ when both are
    bool threads_joined_ = false;      // join_mutex_

    struct on_stop_request {
        host_core* core;
        void operator()() noexcept { core->on_stop_requested_any_thread(); }
    };
    std::optional<std::stop_callback<on_stop_request>> stop_request_callback_;
};

} // namespace hosting::detail
