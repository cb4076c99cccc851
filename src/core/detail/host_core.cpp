#include "core/detail/host_core.hpp"

#include <hosting/async/cancellation.hpp>
#include <hosting/core/background_service.hpp>

#include "core/detail/single_instance_service.hpp"
#include "detail/describe.hpp"
#include "detail/keep_alive.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>
#include <vector>

namespace hosting::detail {

struct lifetime_access {
    static void fire_started(application_lifetime& l) { l.started_.request_stop(); }
    static void fire_stopping(application_lifetime& l) { l.stopping_.request_stop(); }
    static void fire_stopped(application_lifetime& l) { l.stopped_.request_stop(); }
};

namespace {

std::string join_names(const std::vector<std::string>& names)
{
    std::string out;
    for (const auto& n : names)
        out += (out.empty() ? "'" : ", '") + n + "'";
    return out;
}

clock::time_point saturating_add(clock::time_point t, clock::duration d)
{
    return t > clock::time_point::max() - d ? clock::time_point::max() : t + d;
}

// A start or a stop runs in three stages: the lifecycle hooks of all the
// services, then the start or stop of each, then the hooks again.
using stage_fn = asio::awaitable<void> (*)(service_entry&, std::stop_token);
struct stage {
    const char* what;
    bool hook; // only hosted_lifecycle_service has it
    stage_fn fn;
};

constexpr stage start_stages[] = {
    {"starting", true, [](service_entry& e, std::stop_token t) { return e.lifecycle->starting(t); }},
    {"start", false, [](service_entry& e, std::stop_token t) { return e.service->start(t); }},
    {"started", true, [](service_entry& e, std::stop_token t) { return e.lifecycle->started(t); }},
};

constexpr stage stop_stages[] = {
    {"stopping", true, [](service_entry& e, std::stop_token t) { return e.lifecycle->stopping(t); }},
    {"stop", false, [](service_entry& e, std::stop_token t) { return e.service->stop(t); }},
    {"stopped", true, [](service_entry& e, std::stop_token t) { return e.lifecycle->stopped(t); }},
};

// Gives the orchestrator a moment to report a late stop itself before the
// blocking caller declares the loop stuck.
constexpr auto report_grace = std::chrono::milliseconds(50);
// How long a blocking stop waits for the worker threads after the deadline.
constexpr auto thread_grace = std::chrono::milliseconds(100);

std::shared_ptr<pending_call> done_call(service_entry& e, std::exception_ptr error = nullptr)
{
    auto call = std::make_shared<pending_call>();
    call->entry = &e;
    call->done = true;
    call->error = std::move(error);
    return call;
}

} // namespace

host_core::host_core(settings s)
    : settings_(std::move(s)),
      loggers_(std::make_shared<logger_factory>(settings_.logging)),
      lifetime_log_(loggers_->get("hosting.lifetime")),
      host_log_(loggers_->get("hosting.host")),
      owned_io_(settings_.external_io
                    ? nullptr
                    : std::make_unique<owned_io_context>(static_cast<int>(settings_.options.worker_threads))),
      io_(settings_.external_io ? settings_.external_io : owned_io_.get()),
      orch_(owned_io_ && settings_.options.worker_threads == 1
                ? orchestrator_executor(io_->get_executor())
                : orchestrator_executor(asio::make_strand(io_->get_executor()))),
      stages_(orch_),
      lifetime_(std::make_shared<application_lifetime>()),
      loop_executor_(io_->get_executor())
{
    if (owned_io_)
        threads_ = std::make_unique<worker_threads>(
            *io_, settings_.options.worker_threads, [this](std::exception_ptr error) {
                // Every spawned operation has a handler that catches; an
                // exception here came from a user's raw handler.
                host_log_->error("Unhandled exception on the host's event loop: {}", describe(error));
                fail(1);
                lifetime_->stop_application();
            });
    stop_request_callback_.emplace(lifetime_->stop_requested(), on_stop_request{this});
}

host_core::~host_core()
{
    stop_request_callback_.reset();
    bool joined;
    {
        std::lock_guard lock(join_mutex_);
        joined = threads_joined_;
    }
    if (threads_ && threads_->started() && !joined) {
        // Only when the host was destroyed from one of its own threads,
        // which close() cannot join.
        host_log_->critical("The host is destroyed from its own event loop; its threads are abandoned");
        threads_->abandon();
    }
    // Suspended orchestration frames die here, while the services they
    // point at still exist; then the same for everything queued on the loop.
    if (owned_io_)
        owned_io_->shutdown();
    // Then the services, the singletons and the lifetimes (a feature's state
    // holds strands and timers of the loop): all before the io_context.
    entries_.clear();
    provider_.reset();
    settings_.lifetimes.clear();
}

void host_core::close()
{
    if (is_loop_thread()) {
        // Its own thread cannot be joined, nor its loop shut down under it.
        host_log_->error("The host is destroyed from a thread that runs its io_context; its state is kept "
                         "in memory instead");
        keep_alive_forever(shared_from_this());
        return;
    }
    bool running;
    {
        std::lock_guard joining(join_mutex_);
        std::lock_guard lock(mutex_);
        running = threads_started_ && start_called_.load() && !stop_finished_ && !threads_joined_;
    }
    if (running) {
        host_log_->warn("The host is destroyed while running; stopping it first");
        stop_blocking();
    }
    join_threads(clock::now() + thread_grace);
    if (!owned_io_ && abandoned_.load()) {
        // Coroutines the deadline abandoned still sit on the program's
        // io_context and point at the services: they must not die first.
        host_log_->warn("Services that missed the shutdown deadline still have work on the program's "
                        "io_context; the host's state is kept in memory");
        keep_alive_forever(shared_from_this());
    }
}

void host_core::build(service_collection services, std::shared_ptr<hosted_descriptors> hosted)
{
    stages_.set_owner(weak_from_this());
    services.add_singleton<application_lifetime>(lifetime_);
    services.add_singleton<logger_factory>(loggers_);
    services.add_singleton<asio::io_context>(std::shared_ptr<asio::io_context>(std::shared_ptr<void>{}, io_));
    const host_lifetime_context context{
        *lifetime_, io_->get_executor(), *loggers_, settings_.options,
        [weak = weak_from_this()] {
            auto self = weak.lock();
            return self ? self->statuses() : std::vector<service_status>{};
        },
        [weak = weak_from_this()] {
            if (auto self = weak.lock())
                self->reload_configuration();
        }};
    tell_lifetimes("attach", [&](host_lifetime& l) { l.attach(context); });
    provider_ = std::make_unique<service_provider>(std::move(services));
    provider_->construct_all();

    // One observer for all background services, so each costs a pointer.
    struct execute_observer final : background_service_access::observer {
        std::weak_ptr<host_core> core;
        orchestrator_executor orch;
        execute_observer(std::weak_ptr<host_core> c, orchestrator_executor o) : core(std::move(c)), orch(std::move(o)) {}
        void execute_ended(void* cookie, service_state state, std::exception_ptr error) override
        {
            // dispatch: on the host's single-threaded loop the stop that
            // waits for this execute goes on without a trip through the
            // queue (see on_execute_end).
            asio::dispatch(orch, [weak = core, e = static_cast<service_entry*>(cookie), state, error] {
                if (auto self = weak.lock())
                    self->on_execute_end(*e, state, error);
            });
        }
    };
    observer_ = std::make_shared<execute_observer>(weak_from_this(), orch_);
    // Services registered with starts_first() go first, in their own order.
    std::vector<hosted_descriptor> first;
    if (hosted) {
        hosted->built = true;
        for (auto& d : hosted->items)
            if (d.starts_first)
                first.push_back(std::move(d));
    }
    // Each registration is erased once read: a block of them is freed while
    // the build still allocates, and is reused for the next entries.
    auto next = [&, taken_first = std::size_t{0}]() mutable -> std::optional<hosted_descriptor> {
        if (taken_first < first.size())
            return std::move(first[taken_first++]);
        while (hosted && !hosted->items.empty()) {
            auto d = std::move(hosted->items.front());
            hosted->items.pop_front();
            if (!d.starts_first)
                return d;
        }
        return std::nullopt;
    };
    while (auto taken = next()) {
        auto& descriptor = *taken;
        if (descriptor.single_instance)
            descriptor.factory = single_instance_factory(descriptor);
        auto service = descriptor.factory(*provider_);
        if (!service)
            throw std::logic_error("host_builder: the factory of " + *descriptor.name + " returned null");
        // A strand keeps a service's coroutines from running concurrently;
        // on a loop that only this host's single thread runs, nothing can.
        const asio::any_io_executor& executor = owned_io_ && settings_.options.worker_threads == 1
                                                    ? loop_executor_
                                                    : strands_.emplace_back(asio::make_strand(io_->get_executor()));
        auto& entry = entries_.emplace_back(descriptor.name, std::move(service), executor);
        entry.brackets = descriptor.starts_first;
        if (descriptor.restart) {
            if (!entry.background)
                throw std::invalid_argument("host_builder: service '" + entry.name() +
                                            "' has a restart policy but is not a background_service; only an "
                                            "execute that ends can be restarted");
            entry.supervised = std::make_unique<supervision>();
            entry.supervised->policy = *descriptor.restart;
            entry.supervised->factory = std::move(descriptor.factory);
        }
        if (entry.background)
            attach_background(entry, *entry.background);
    }
}

std::function<std::shared_ptr<hosted_service>(service_provider&)>
host_core::single_instance_factory(hosted_descriptor& descriptor)
{
    const std::string& name = *descriptor.name;
    const std::string lease = descriptor.single_instance->empty() ? name : *descriptor.single_instance;
    if (!descriptor.background)
        throw std::invalid_argument("host_builder: service '" + name + "' is single_instance(\"" + lease +
                                    "\") but not a background_service; only an execute can run on one node at a "
                                    "time");
    auto* coordinator = provider_->try_get<instance_coordinator>();
    if (!coordinator)
        throw std::invalid_argument("host_builder: service '" + name + "' is single_instance(\"" + lease +
                                    "\"), and no coordination is registered to grant the lease; add one with "
                                    "hosting::coordination::add_coordination(builder, ...)");
    // The provider outlives the services and their frames.
    std::shared_ptr<instance_coordinator> shared(std::shared_ptr<void>{}, coordinator);
    return [shared, lease, inner = std::move(descriptor.factory)](service_provider& provider) {
        return std::shared_ptr<hosted_service>(
            std::make_shared<single_instance_service>(shared, lease, inner, provider));
    };
}

void host_core::attach_background(service_entry& entry, background_service& service)
{
    auto& binding = bindings_[entry.name_storage.get()];
    if (!binding)
        binding = std::make_shared<const background_service_access::binding>(
            background_service_access::binding{observer_, entry.name_storage, loggers_->get(entry.name())});
    background_service_access::bind(service, binding, &entry);
}

std::vector<service_status> host_core::statuses() const
{
    std::vector<service_status> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_)
        out.push_back(e.status());
    return out;
}

bool host_core::is_loop_thread() const { return io_->get_executor().running_in_this_thread(); }

template <class F>
void host_core::tell_lifetimes(const char* hook, F&& call) noexcept
{
    for (auto& l : settings_.lifetimes) {
        try {
            call(*l);
        } catch (...) {
            host_log_->error("A host_lifetime threw from {}(): {}", hook, describe(std::current_exception()));
        }
    }
}

void host_core::tell_stopped() noexcept
{
    if (!lifetimes_stopped_.exchange(true))
        tell_lifetimes("stopped", [code = exit_code()](host_lifetime& l) { l.stopped(code); });
}

void host_core::fail(int code) noexcept
{
    int expected = 0;
    exit_code_.compare_exchange_strong(expected, code);
}

clock::time_point host_core::stop_deadline() const noexcept
{
    auto at = stop_requested_at_.load();
    if (at == 0)
        return clock::time_point::max();
    return saturating_add(clock::time_point(clock::duration(at)), settings_.options.shutdown_timeout);
}

void host_core::reload_configuration() noexcept
{
    if (!settings_.config)
        return;
    tell_lifetimes("reloading", [](host_lifetime& l) { l.reloading(); });
    try {
        settings_.config->reload();
        lifetime_log_->info("Configuration reloaded");
    } catch (const configuration_change_error& e) {
        // The new values are in place; only some subscribers failed.
        lifetime_log_->error("Configuration reloaded, but not every subscriber took it: {}", e.what());
    } catch (...) {
        // A broken file must not take the running program down with it.
        lifetime_log_->error("Configuration reload failed; keeping the previous configuration: {}",
                             describe(std::current_exception()));
    }
    tell_lifetimes("reloaded", [](host_lifetime& l) { l.reloaded(); });
}

// ---------------------------------------------------------------------------
// Stop requests

void host_core::stamp_stop_request() noexcept
{
    auto now = std::max<clock::rep>(clock::now().time_since_epoch().count(), 1);
    clock::rep expected = 0;
    stop_requested_at_.compare_exchange_strong(expected, now);
}

void host_core::on_stop_requested_any_thread() noexcept
{
    stamp_stop_request();
    // Here, not on the loop: the loop may be the thing that is stuck.
    tell_lifetimes("stopping", [](host_lifetime& l) { l.stopping(); });
    {
        std::lock_guard lock(mutex_);
        stop_requested_flag_ = true;
    }
    changed_.notify_all();
    stop_requested_.set();
    try {
        asio::post(orch_, [weak = weak_from_this()] {
            if (auto self = weak.lock())
                self->on_stop_requested_in_loop();
        });
    } catch (...) {
    }
}

void host_core::on_stop_requested_in_loop()
{
    if (!stop_seen_) {
        stop_seen_ = true;
        start_cancel_.request_stop();
        cancel_restarts();
    }
    // The deadline may have become known only now (a request stamped by
    // another thread after this loop first saw it): waits re-read it.
    arm_deadline_timer();
    stages_.notify();
}

void host_core::arm_deadline_timer()
{
    if (!deadline_timer_ || deadline_armed_for_ == stop_deadline())
        return;
    deadline_armed_for_ = stop_deadline();
    deadline_timer_->expires_at(deadline_armed_for_);
    deadline_timer_->async_wait([weak = weak_from_this()](boost::system::error_code ec) {
        if (auto self = weak.lock(); self && !ec)
            self->stop_cancel_.request_stop();
    });
}

std::shared_ptr<pending_call> host_core::spawn_call(service_entry& entry, stage_fn fn, std::stop_token token)
{
    auto call = std::make_shared<pending_call>();
    call->entry = &entry;
    asio::co_spawn(
        *entry.strand,
        [fn, e = &entry, token]() -> asio::awaitable<void> {
            // Made before the co_await: GCC 12 can destroy a by-value
            // argument of a suspending expression (the token) twice.
            auto op = fn(*e, token);
            co_await std::move(op);
        },
        [weak = weak_from_this(), call](std::exception_ptr error) {
            auto self = weak.lock();
            if (!self)
                return;
            asio::dispatch(self->orch_, [weak, call, error] {
                auto self = weak.lock();
                if (!self)
                    return;
                call->done = true;
                call->error = error;
                self->stages_.notify_inline();
            });
        });
    return call;
}

// ---------------------------------------------------------------------------
// Start

asio::awaitable<void> host_core::do_start()
{
    phase_ = phase::starting;
    host_log_->debug("Hosting starting");
    if (settings_.options.startup_timeout)
        start_deadline_ = clock::now() + *settings_.options.startup_timeout;
    auto token = start_cancel_.get_token();
    std::string failure;

    for (const auto& st : start_stages) {
        if (!failure.empty() || stop_seen_)
            break;
        std::vector<service_entry*> targets;
        for (auto& e : entries_)
            if (!st.hook || e.lifecycle)
                targets.push_back(&e);

        stage_runner::plan plan;
        plan.concurrent = settings_.options.services_start_concurrently;
        plan.halt_at_deadline = true;
        plan.deadline = [this] { return std::min(start_deadline_.value_or(clock::time_point::max()), stop_deadline()); };
        plan.halt = [&] { return !failure.empty() || stop_seen_; };
        plan.begin = [&](service_entry& e) -> std::shared_ptr<pending_call> {
            if (!st.hook) {
                e.state = service_state::starting;
                host_log_->debug("Starting service '{}'", e.name());
            }
            if (st.hook || !e.background)
                return spawn_call(e, st.fn, token);
            // background_service::start is final: launching execute is all
            // it does, and that needs no round trip through its strand.
            try {
                background_service_access::launch(*e.background, *e.strand);
                ++background_running_;
                return done_call(e);
            } catch (...) {
                return done_call(e, std::current_exception());
            }
        };
        plan.settle = [&](pending_call& call) {
            auto& e = *call.entry;
            if (call.error) {
                if (stop_seen_ && is_cancellation(call.error)) {
                    host_log_->debug("{} of service '{}' was cancelled by the stop", st.what, e.name());
                    if (!st.hook)
                        e.state = service_state::stopped;
                } else {
                    e.set_error(call.error);
                    e.state = service_state::faulted;
                    if (failure.empty())
                        failure = "service '" + e.name() + "' failed in " + st.what + "(): " + describe(call.error);
                    host_log_->error("Service '{}' failed in {}(): {}", e.name(), st.what, describe(call.error));
                }
            } else if (!st.hook) {
                e.started = true;
                if (e.state.load() == service_state::starting)
                    e.state = service_state::running;
                host_log_->debug("Started service '{}'", e.name());
            }
        };

        std::vector<std::shared_ptr<pending_call>> unsettled;
        if (!co_await stages_.run(targets, plan, unsettled)) {
            std::vector<std::string> late;
            for (const auto& c : unsettled)
                if (!c->done)
                    late.push_back(c->entry->name());
            start_cancel_.request_stop();
            abandoned_ = true;
            // A stop requested from another thread may not have reached the
            // loop yet; its deadline counts all the same.
            const bool stopping = stop_seen_ || stop_requested_at_.load() != 0;
            const bool startup_timed_out = start_deadline_ && clock::now() >= *start_deadline_;
            if (stopping && !startup_timed_out) {
                fail(1);
                host_log_->error("The shutdown deadline of {} ms passed; these services did not stop in time "
                                 "(their {}() ignored the stop): {}",
                                 settings_.options.shutdown_timeout.count(), st.what, join_names(late));
            } else if (failure.empty() && startup_timed_out) {
                failure = "startup_timeout of " + std::to_string(settings_.options.startup_timeout->count()) +
                          " ms passed while " + st.what + "() was still running in " + join_names(late);
                host_log_->error("The startup_timeout of {} ms passed while {}() was still running in {}",
                                 settings_.options.startup_timeout->count(), st.what, join_names(late));
            }
        }
    }

    if (!failure.empty()) {
        fail(1);
        lifetime_->stop_application();
        on_stop_requested_in_loop();
        co_await stop_services();
        throw start_failed("host: " + failure);
    }
    stages_.disarm();
    phase_ = phase::started;
    stages_.notify();
    if (stop_seen_) {
        lifetime_log_->info("A stop was requested while starting; the remaining services were not started");
        co_return;
    }
    lifetime_access::fire_started(*lifetime_);
    tell_lifetimes("started", [](host_lifetime& l) { l.started(); });
    lifetime_log_->info(settings_.console_lifetime ? "Application started. Press Ctrl+C to shut down."
                                                   : "Application started.");
    lifetime_log_->info("Hosting environment: {}", settings_.environment);
    lifetime_log_->info("Content root path: {}", settings_.content_root);
    host_log_->debug("Hosting started");

    if (settings_.options.stop_when_all_background_services_complete) {
        if (std::none_of(entries_.begin(), entries_.end(), [](const auto& e) { return e.background; }))
            host_log_->warn("stop_when_all_background_services_complete is set but no background_service is registered");
        else
            stop_if_background_done();
    }
}

void host_core::stop_if_background_done()
{
    // stop_requested(), not stop_seen_: a fault may have asked for the stop
    // already, and the log must not call that a completion.
    if (!settings_.options.stop_when_all_background_services_complete || phase_ != phase::started ||
        background_running_ > 0 || lifetime_->stop_requested().stop_requested())
        return;
    lifetime_log_->info("All background services have completed; stopping the host");
    lifetime_->stop_application();
}

// ---------------------------------------------------------------------------
// Supervision

void host_core::on_execute_end(service_entry& e, service_state state, std::exception_ptr error)
{
    const bool awaited = e.stop_waiter != nullptr;
    if (awaited) {
        e.stop_waiter->done = true;
        e.stop_waiter.reset();
    }
    record_execute_end(e, state, error);
    // Last: the stop resumed here may begin the next service's stop.
    if (awaited)
        stages_.notify_inline();
}

void host_core::record_execute_end(service_entry& e, service_state state, std::exception_ptr error)
{
    if (e.state.load() != service_state::stopping)
        e.state = state;
    if (state == service_state::faulted) {
        e.set_error(error);
        ++e.faults;
        host_log_->error("Background service '{}' faulted: {}", e.name(), describe(error));
    }
    if (e.supervised && schedule_restart(e, state, error))
        return; // still counts as running: it will be back
    const bool exhausted = e.supervised && e.supervised->exhausted.load();
    // A supervised service that faults while the host stops would have been
    // restarted: the stop is no reason to call it a failure of the run.
    const bool absorbed = e.supervised && !exhausted && stop_seen_;
    if ((state == service_state::faulted || exhausted) && !absorbed) {
        if (settings_.options.background_service_exception_behavior ==
            background_service_exception_behavior::stop_host) {
            fail(1);
            if (!stop_seen_)
                host_log_->error("Stopping the host because '{}' faulted "
                                 "(background_service_exception_behavior::stop_host)",
                                 e.name());
            lifetime_->stop_application();
        }
    } else if (state == service_state::completed) {
        host_log_->debug("Background service '{}' completed", e.name());
    }

    --background_running_;
    stop_if_background_done();
}

bool host_core::schedule_restart(service_entry& e, service_state state, const std::exception_ptr& error)
{
    auto& sup = *e.supervised;
    const auto& policy = sup.policy;
    const bool wanted = state == service_state::faulted ||
                        (state == service_state::completed && policy.mode == restart_mode::always);
    if (!wanted || stop_seen_ || phase_ == phase::stopping || phase_ == phase::stopped)
        return false;
    const auto now = clock::now();
    while (!sup.recent.empty() && sup.recent.front() <= now - policy.window)
        sup.recent.pop_front();
    const auto what = state == service_state::faulted ? "faulted" : "completed";
    if (sup.recent.size() >= policy.burst) {
        sup.exhausted = true;
        host_log_->error("Service '{}' {} after {} restarts within {} s; the restart limit is reached and it stays "
                         "down{}",
                         e.name(), what, sup.recent.size(),
                         std::chrono::duration_cast<std::chrono::seconds>(policy.window).count(),
                         state == service_state::faulted ? std::string(": ") + describe(error) : std::string());
        return false;
    }
    // The n-th restart within the window waits initial * multiplier^(n-1).
    double delay_ms = static_cast<double>(policy.initial_delay.count()) *
                      std::pow(policy.multiplier, static_cast<double>(sup.recent.size()));
    delay_ms = std::min(delay_ms, static_cast<double>(policy.max_delay.count()));
    if (policy.jitter > 0) {
        std::uniform_real_distribution<double> spread(-policy.jitter, policy.jitter);
        delay_ms *= 1.0 + spread(jitter_rng_);
    }
    const auto delay = std::chrono::milliseconds(static_cast<std::int64_t>(std::max(0.0, delay_ms)));
    sup.recent.push_back(now);
    sup.pending = true;
    host_log_->warn("Service '{}' {}; restarting it in {} ms (restart {} of at most {} within {} s)", e.name(), what,
                    delay.count(), sup.recent.size(), policy.burst,
                    std::chrono::duration_cast<std::chrono::seconds>(policy.window).count());
    if (!sup.timer)
        sup.timer.emplace(orch_);
    sup.timer->expires_after(delay);
    sup.timer->async_wait([weak = weak_from_this(), entry = &e](boost::system::error_code ec) {
        auto self = weak.lock();
        if (self && !ec)
            self->restart_now(*entry);
    });
    return true;
}

void host_core::restart_now(service_entry& e)
{
    auto& sup = *e.supervised;
    if (!sup.pending.exchange(false))
        return; // cancelled by the stop meanwhile
    try {
        auto fresh = sup.factory(*provider_);
        auto* background = dynamic_cast<background_service*>(fresh.get());
        if (!background)
            throw std::logic_error("the factory returned " +
                                   std::string(fresh ? "something that is not a background_service" : "null"));
        // Launched before it replaces the old one: if the launch throws, the
        // entry still holds an instance whose execute has ended, which a
        // stop handles.
        attach_background(e, *background);
        background_service_access::launch(*background, *e.strand);
        e.replace(std::move(fresh));
    } catch (...) {
        host_log_->error("Service '{}' could not be re-created for its restart: {}", e.name(),
                         describe(std::current_exception()));
        // Like an execute that faulted at once: backoff, then the limit.
        on_execute_end(e, service_state::faulted, std::current_exception());
        return;
    }
    ++e.restarts;
    e.state = service_state::running;
    host_log_->info("Restarted service '{}' (restart {})", e.name(), e.restarts.load());
}

void host_core::cancel_restarts()
{
    for (auto& e : entries_) {
        if (!e.supervised || !e.supervised->pending.exchange(false))
            continue;
        e.supervised->timer->cancel();
        host_log_->debug("Service '{}' will not be restarted: the host is stopping", e.name());
        --background_running_;
    }
}

// ---------------------------------------------------------------------------
// Stop

asio::awaitable<void> host_core::do_stop()
{
    // A direct stop() counts as a stop request: it starts the deadline clock.
    stamp_stop_request();
    lifetime_->stop_application();
    on_stop_requested_in_loop();
    while (phase_ == phase::starting)
        co_await stages_.wait_for_change(clock::time_point::max());
    if (phase_ == phase::created) {
        phase_ = phase::stopped;
    } else if (phase_ == phase::started) {
        co_await stop_services();
    }
    while (phase_ != phase::stopped)
        co_await stages_.wait_for_change(clock::time_point::max());
}

asio::awaitable<void> host_core::stop_services()
{
    const bool was_started = phase_ == phase::started;
    phase_ = phase::stopping;
    lifetime_log_->info("Application is shutting down...");

    // Draining: readiness turned false with the stop request; the services
    // keep serving while load balancers notice, within the deadline.
    const auto delay = settings_.options.shutdown_delay;
    if (was_started && lifetime_->application_started().stop_requested() &&
        delay > std::chrono::milliseconds::zero()) {
        const auto until = std::min(
            saturating_add(clock::time_point(clock::duration(stop_requested_at_.load())), delay), stop_deadline());
        lifetime_log_->info("Not ready any more; stopping the services in {} ms (shutdown_delay)",
                            std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now()).count());
        while (clock::now() < until)
            co_await stages_.wait_for_change(until);
    }
    lifetime_access::fire_stopping(*lifetime_);

    deadline_timer_.emplace(orch_);
    arm_deadline_timer();
    auto token = stop_cancel_.get_token();

    std::vector<service_entry*> targets;
    for (auto it = entries_.rbegin(); it != entries_.rend(); ++it)
        if (it->started)
            targets.push_back(&*it);

    // By entry, not by name: instances of one type share a name, and each
    // late one is worth counting.
    std::vector<std::string> late;
    std::unordered_set<const service_entry*> late_entries;
    auto note_late = [&](const service_entry& e) {
        if (late_entries.insert(&e).second)
            late.push_back(e.name());
    };

    for (const auto& st : stop_stages) {
        std::vector<service_entry*> stage_targets;
        for (auto* e : targets)
            if (!st.hook || e->lifecycle)
                stage_targets.push_back(e);

        stage_runner::plan plan;
        plan.concurrent = settings_.options.services_stop_concurrently;
        plan.deadline = [this] { return stop_deadline(); };
        plan.begin = [&](service_entry& e) -> std::shared_ptr<pending_call> {
            if (st.hook)
                return spawn_call(e, st.fn, token);
            if (e.state.load() == service_state::running)
                e.state = service_state::stopping;
            host_log_->debug("Stopping service '{}'", e.name());
            if (!e.background)
                return spawn_call(e, st.fn, token);
            // Like background_service::stop, minus its coroutine: the end of
            // execute is reported by on_execute_end.
            if (background_service_access::execute_ended(*e.background))
                return done_call(e);
            auto call = std::make_shared<pending_call>();
            call->entry = &e;
            e.stop_waiter = call;
            background_service_access::request_stop(*e.background, *e.strand);
            return call;
        };
        plan.settle = [&](pending_call& call) {
            auto& e = *call.entry;
            if (call.error) {
                fail(1);
                host_log_->error("Service '{}' threw from {}(): {}", e.name(), st.what, describe(call.error));
                if (!st.hook) {
                    e.set_error(call.error);
                    e.state = service_state::faulted;
                }
            } else if (!st.hook) {
                if (e.background && !background_service_access::execute_ended(*e.background)) {
                    note_late(e);
                } else {
                    auto final_state = e.background ? e.background->state() : service_state::stopped;
                    if (final_state == service_state::faulted)
                        e.set_error(e.background->exception());
                    if (e.state.load() != service_state::faulted)
                        e.state = final_state;
                    host_log_->debug("Stopped service '{}'", e.name());
                }
            }
        };
        std::vector<std::shared_ptr<pending_call>> unsettled;
        co_await stages_.run(stage_targets, plan, unsettled);
        for (const auto& call : unsettled)
            note_late(*call->entry);
    }

    if (!late.empty()) {
        fail(1);
        abandoned_ = true;
        host_log_->error("The shutdown deadline of {} ms passed; these services did not stop in time: {}",
                         settings_.options.shutdown_timeout.count(), join_names(late));
    }
    deadline_timer_->cancel();
    stages_.disarm();
    phase_ = phase::stopped;
    lifetime_access::fire_stopped(*lifetime_);
    tell_stopped();
    host_log_->debug("Hosting stopped");
    stages_.notify();
}

// ---------------------------------------------------------------------------
// Threads

void host_core::ensure_threads()
{
    {
        std::lock_guard lock(mutex_);
        if (threads_started_)
            return;
        threads_started_ = true;
    }
    if (threads_)
        threads_->start();
}

void host_core::join_threads(clock::time_point until)
{
    // Several blocking callers may get here at once (run() on one thread,
    // stop_blocking() on another): one joins, the others wait for it.
    std::lock_guard lock(join_mutex_);
    if (threads_joined_)
        return;
    threads_joined_ = true;
    if (!threads_ || threads_->join(until, thread_grace))
        return;
    host_log_->error("A worker thread is still blocked inside a service; it is abandoned, and the host's "
                     "state is kept in memory so that it can never run on freed memory");
    keep_alive_forever(shared_from_this());
}

void host_core::report_stragglers(const char* where)
{
    std::vector<std::string> late;
    for (const auto& e : entries_) {
        auto s = e.state.load();
        if (s == service_state::starting || s == service_state::running || s == service_state::stopping)
            late.push_back(e.name());
    }
    fail(1);
    host_log_->error("The shutdown deadline of {} ms passed {} and the host's event loop does not respond: "
                     "a service is blocking its thread. Services that did not stop in time: {}",
                     settings_.options.shutdown_timeout.count(), where,
                     late.empty() ? std::string("(none)") : join_names(late));
}

// ---------------------------------------------------------------------------
// Public operations: one start and one stop, each spawned once on the
// orchestrator's strand with no cancellation slot of a caller's, so that
// nothing a caller does to its own wait can cancel them.

void host_core::launch_start()
{
    asio::co_spawn(orch_, [self = shared_from_this()] { return self->do_start(); },
                   [weak = weak_from_this()](std::exception_ptr error) {
                       auto self = weak.lock();
                       if (!self)
                           return;
                       if (error && self->phase_ == phase::starting) {
                           // Not a service's failure (those end as
                           // start_failed, after their stop): the start
                           // itself broke. What started can still be stopped.
                           self->host_log_->critical("The host's start failed: {}", describe(error));
                           self->fail(1);
                           self->phase_ = phase::started;
                           self->stages_.notify();
                           self->lifetime_->stop_application();
                       }
                       {
                           std::lock_guard lock(self->mutex_);
                           self->start_finished_ = true;
                           self->start_error_ = error;
                       }
                       self->changed_.notify_all();
                       self->start_done_.set();
                   });
}

void host_core::launch_stop()
{
    if (stop_launched_.exchange(true))
        return;
    asio::co_spawn(orch_, [self = shared_from_this()] { return self->do_stop(); },
                   [weak = weak_from_this()](std::exception_ptr error) {
                       auto self = weak.lock();
                       if (!self)
                           return;
                       if (error) {
                           self->host_log_->critical("The host's stop failed: {}", describe(error));
                           self->fail(1);
                           self->phase_ = phase::stopped;
                           lifetime_access::fire_stopped(*self->lifetime_);
                           self->tell_stopped();
                       }
                       {
                           std::lock_guard lock(self->mutex_);
                           self->stop_finished_ = true;
                       }
                       self->changed_.notify_all();
                       self->stop_done_.set();
                   });
}

asio::awaitable<void> host_core::start()
{
    if (start_called_.exchange(true))
        throw std::logic_error("host: start() called twice");
    ensure_threads();
    tell_lifetimes("starting", [](host_lifetime& l) { l.starting(); });
    launch_start();
    co_await start_done_.wait();
    std::exception_ptr error;
    {
        std::lock_guard lock(mutex_);
        error = start_error_;
    }
    if (error)
        std::rethrow_exception(error);
}

bool host_core::start_failed_already() const
{
    std::lock_guard lock(mutex_);
    return start_finished_ && start_error_;
}

asio::awaitable<void> host_core::stop()
{
    // Nothing to stop: never started, or a start that failed has stopped
    // what it had started already (and its threads may be gone).
    if (!start_called_.load() || start_failed_already()) {
        lifetime_->stop_application();
        co_return;
    }
    launch_stop();
    co_await stop_done_.wait();
}

asio::awaitable<int> host_core::wait_for_shutdown()
{
    co_await stop_requested_.wait();
    co_await stop();
    co_return exit_code();
}

void host_core::start_blocking()
{
    if (is_loop_thread())
        throw std::logic_error("host: start_blocking() called on a thread that runs the host's io_context; "
                               "use co_await host.start() there");
    if (start_called_.exchange(true))
        throw std::logic_error("host: start() called twice");
    ensure_threads();
    tell_lifetimes("starting", [](host_lifetime& l) { l.starting(); });
    const auto began = clock::now();
    launch_start();

    // The loop may be blocked by a service: bound the wait from here.
    std::unique_lock lock(mutex_);
    auto limit = [&] {
        // Once a stop is requested (a startup timeout requests one too), the
        // services that started get the whole shutdown deadline.
        if (stop_requested_flag_)
            return saturating_add(stop_deadline(), report_grace);
        if (settings_.options.startup_timeout)
            // Generous: the loop notices its own timeout first unless blocked.
            return saturating_add(began + *settings_.options.startup_timeout, thread_grace + report_grace * 4);
        return clock::time_point::max();
    };
    while (!start_finished_) {
        auto until = limit();
        if (clock::now() >= until)
            break;
        if (until == clock::time_point::max())
            changed_.wait(lock);
        else
            changed_.wait_until(lock, until);
    }
    if (!start_finished_) {
        lock.unlock();
        report_stragglers("during the start");
        tell_stopped();
        join_threads(clock::now());
        throw start_failed("host: the start did not finish in time and the event loop does not respond");
    }
    auto error = start_error_;
    lock.unlock();
    if (error) {
        join_threads(saturating_add(stop_deadline(), thread_grace));
        std::rethrow_exception(error);
    }
}

void host_core::stop_blocking()
{
    if (is_loop_thread())
        throw std::logic_error("host: stop_blocking() called on a thread that runs the host's io_context; "
                               "use co_await host.stop() there");
    lifetime_->stop_application();
    {
        std::lock_guard lock(mutex_);
        if (!start_called_.load() || !threads_started_ || (start_finished_ && start_error_))
            return;
    }
    launch_stop();
    std::unique_lock lock(mutex_);
    bool finished =
        changed_.wait_until(lock, saturating_add(stop_deadline(), report_grace), [this] { return stop_finished_; });
    lock.unlock();
    if (!finished)
        report_stragglers("during the stop");
    tell_stopped();
    join_threads(finished ? saturating_add(stop_deadline(), thread_grace) : clock::now());
}

int host_core::run()
{
    if (is_loop_thread())
        throw std::logic_error("host: run() called on a thread that runs the host's io_context");
    try {
        start_blocking();
    } catch (const start_failed&) {
        return exit_code() == 0 ? 1 : exit_code();
    }
    {
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [this] { return stop_requested_flag_; });
    }
    stop_blocking();
    return exit_code();
}

} // namespace hosting::detail
