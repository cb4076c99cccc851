#include <hosting/coordination/coordination.hpp>

#include <hosting/core/host_builder.hpp>
#include <hosting/core/hosted_service.hpp>
#include <hosting/core/services.hpp>
#include <hosting/health/health.hpp>
#include <hosting/logging/logging.hpp>
#include <hosting/metrics/metrics.hpp>

#include "detail/describe.hpp"
#include "detail/node_id.hpp"
#include "detail/remote_completion.hpp"

#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/logger.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

namespace hosting::coordination {

namespace {

using clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// The options with each zero replaced by its default, which derives from
// lease_duration.
coordination_options with_defaults(coordination_options o)
{
    if (!o.renew_interval.count())
        o.renew_interval = o.lease_duration / 3;
    if (!o.retry_interval.count())
        o.retry_interval = o.lease_duration / 20;
    if (!o.stop_margin.count())
        o.stop_margin = o.lease_duration / 5;
    return o;
}

} // namespace

void coordination_options::validate() const
{
    auto fail = [](const std::string& what) { throw std::invalid_argument("coordination_options: " + what); };
    if (lease_duration < milliseconds(100))
        fail("lease_duration must be at least 100 ms");
    if (renew_interval.count() < 0 || retry_interval.count() < 0 || stop_margin.count() < 0)
        fail("renew_interval, retry_interval and stop_margin must not be negative");
    const auto resolved = with_defaults(*this);
    const auto margin = resolved.stop_margin;
    const auto renew = resolved.renew_interval;
    if (margin >= lease_duration)
        fail("stop_margin must be shorter than lease_duration");
    if (renew >= lease_duration - margin)
        fail("renew_interval must be shorter than lease_duration - stop_margin, or a holder would stop "
             "before its first renewal");
    if (resolved.retry_interval >= lease_duration - margin - renew)
        fail("retry_interval must be shorter than lease_duration - stop_margin - renew_interval, or one failed "
             "renewal would lose the lease before it is tried again");
}

// One term of a lease this node holds.
class held_lease final : public instance_lease {
public:
    held_lease(std::shared_ptr<coordinator::impl> owner, std::string name, std::uint64_t term,
               clock::time_point valid_until)
        : owner_(std::move(owner)), name_(std::move(name)), term_(term), valid_until(valid_until.time_since_epoch().count()),
          renewed(clock::now().time_since_epoch().count())
    {
    }

    const std::string& name() const noexcept override { return name_; }
    std::uint64_t term() const noexcept override { return term_; }
    std::stop_token lost() const noexcept override { return lost_.get_token(); }
    asio::awaitable<void> release() override;

    // From any thread; the first reason wins. Marks it lost only: fire()
    // runs what the holder registered on lost().
    bool lose(const std::string& why)
    {
        std::lock_guard lock(mutex_);
        if (lost_flag_.exchange(true))
            return false;
        why_ = why;
        return true;
    }
    void fire() { lost_.request_stop(); }
    bool is_lost() const noexcept { return lost_flag_.load(); }
    // Neither lost nor past the time it may be acted on, whether or not
    // the watchdog has got to it yet.
    bool is_current() const noexcept
    {
        return !is_lost() && clock::now().time_since_epoch().count() < valid_until.load();
    }
    std::string why_lost() const
    {
        std::lock_guard lock(mutex_);
        return why_;
    }

private:
    // Weak: the coordinator holds its leases, and a lease that outlives it
    // (one its service never gave back) has nothing left to release.
    std::weak_ptr<coordinator::impl> owner_;
    std::string name_;
    std::uint64_t term_;
    std::atomic<bool> lost_flag_{false};
    std::stop_source lost_;
    mutable std::mutex mutex_;
    std::string why_;

public:
    // Until when this node may act on it: the last renewal's start plus the
    // lease's duration, less the stop margin.
    std::atomic<clock::rep> valid_until;
    std::atomic<clock::rep> renewed;
};

struct coordinator::impl : std::enable_shared_from_this<coordinator::impl> {
    impl(std::shared_ptr<lease_store> s, coordination_options o) : store(std::move(s)), options(std::move(o))
    {
        if (!store)
            throw std::invalid_argument("coordination: the lease store is null");
        options.validate();
        options = with_defaults(std::move(options));
        if (options.node_id.empty())
            options.node_id = hosting::detail::default_node_id();
    }

    // A shut_down() from the coordinator's own thread joined nothing.
    ~impl() { join_notifiers(); }

    std::shared_ptr<lease_store> store;
    coordination_options options;
    std::shared_ptr<spdlog::logger> log;

    asio::io_context io{1};
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
    std::thread thread;
    std::atomic<bool> started{false};
    std::atomic<bool> stopping{false};

    // A coroutine waiting in acquire().
    struct request {
        std::string name;
        std::function<void(std::exception_ptr, std::shared_ptr<instance_lease>)> complete;
        // Abandons the wait when the caller's token fires.
        std::optional<std::stop_callback<std::function<void()>>> on_stop;
        bool done = false; // coordinator thread only
    };

    // Coordinator thread only, but for `held`, which holdings() reads
    // under `mutex`.
    struct slot {
        std::string name;
        std::list<std::shared_ptr<request>> waiting;
        bool wants_leader = false;
        std::shared_ptr<held_lease> held;
        std::optional<asio::steady_timer> timer;
        bool trying = false; // an attempt or renewal is scheduled
    };
    std::map<std::string, slot, std::less<>> slots;

    mutable std::mutex mutex; // what other threads read
    std::vector<std::shared_ptr<held_lease>> holding;
    std::string error;
    std::shared_ptr<held_lease> leading;

    // The watchdog: tells a holder it lost its lease once valid_until has
    // passed without a renewal, from a thread of its own, so that a
    // storage call that hangs cannot keep a lapsed holder running.
    std::thread watchdog;
    // What a holder registered on its lease's lost() runs on a thread of
    // its own for each loss: a stop callback that blocks (a cancel sent to
    // a server that does not answer) must hold up neither the watchdog's
    // word to the other holders nor the renewals. Losses are rare; those
    // that ended are joined at the next one.
    struct notifier {
        std::thread thread;
        std::shared_ptr<std::atomic<bool>> ended;
    };
    std::mutex notifiers_mutex;
    std::vector<notifier> notifiers; // notifiers_mutex

    void join_notifiers()
    {
        std::lock_guard lock(notifiers_mutex);
        for (auto& n : notifiers)
            if (n.thread.get_id() != std::this_thread::get_id())
                n.thread.join();
            else
                n.thread.detach(); // the holder's callback let the coordinator go
        notifiers.clear();
    }
    std::condition_variable watchdog_wake;
    bool watchdog_stop = false; // under mutex

    void start(std::shared_ptr<spdlog::logger> logger)
    {
        if (started.exchange(true))
            return;
        log = std::move(logger);
        work.emplace(io.get_executor());
        auto self = shared_from_this();
        thread = std::thread([self] { self->io.run(); });
        watchdog = std::thread([self] { self->watch(); });
        // What is posted to `io` or waits in it holds `this` plainly: `io`
        // is this object's own, and its thread is joined before it dies.
        if (options.elect_leader)
            asio::post(io, [this] {
                auto& s = slot_of(leader_lease);
                s.wants_leader = true;
                attempt(s);
            });
    }

    // Stops taking leases and gives up the leader's; the leases services
    // hold stay theirs (and are renewed) until they release them.
    void stop_taking() noexcept
    {
        if (!started.load() || stopping.exchange(true))
            return;
        try {
            asio::post(io, [this] {
                for (auto& [name, s] : slots) {
                    for (auto& r : s.waiting)
                        finish(*r, std::make_exception_ptr(boost::system::system_error(asio::error::operation_aborted)),
                               nullptr);
                    s.waiting.clear();
                    s.wants_leader = false;
                    if (s.name == leader_lease)
                        give_up(s);
                }
            });
        } catch (...) {
        }
    }

    void shut_down() noexcept
    {
        if (!started.load())
            return;
        stop_taking();
        {
            std::lock_guard lock(mutex);
            watchdog_stop = true;
        }
        watchdog_wake.notify_all();
        // What is still scheduled runs first: the leader's release above.
        work.reset();
        asio::post(io, [this] { io.stop(); });
        if (thread.joinable() && thread.get_id() == std::this_thread::get_id())
            return; // never from its own thread: what it runs is still here
        if (thread.joinable())
            thread.join();
        if (watchdog.joinable())
            watchdog.join();
        join_notifiers();
        // A lease a service still holds (its host stopped before it gave
        // the lease back) expires in the storage.
        slots.clear();
        std::lock_guard lock(mutex);
        holding.clear();
        leading.reset();
    }

    slot& slot_of(const std::string& name)
    {
        auto it = slots.find(name);
        if (it == slots.end()) {
            it = slots.emplace(name, slot{}).first;
            it->second.name = name;
            it->second.timer.emplace(io);
        }
        return it->second;
    }

    void finish(request& r, std::exception_ptr error, std::shared_ptr<instance_lease> lease)
    {
        if (r.done)
            return;
        r.done = true;
        // Let go of the caller's handler once it is answered.
        auto complete = std::move(r.complete);
        r.complete = nullptr;
        complete(std::move(error), std::move(lease));
    }

    // Logged outside the mutex, which the watchdog takes: a sink that
    // blocks (a full pipe) must not hold up the word of a lost lease.
    void note_error(const std::string& what)
    {
        std::string before;
        {
            std::lock_guard lock(mutex);
            before = std::exchange(error, what);
        }
        // Once when the storage starts failing, not at every try.
        if (log) {
            if (before.empty())
                log->warn("Coordination on {}: {}", store->describe(), what);
            else if (before != what)
                log->debug("Coordination on {}: {}", store->describe(), what);
        }
    }
    void note_success()
    {
        std::string before;
        {
            std::lock_guard lock(mutex);
            before = std::exchange(error, std::string());
        }
        if (!before.empty() && log)
            log->info("Coordination on {} answers again", store->describe());
    }

    void schedule(slot& s, milliseconds after, void (impl::*step)(slot&))
    {
        s.trying = true;
        s.timer->expires_after(after);
        s.timer->async_wait([this, name = s.name, step](boost::system::error_code ec) {
            auto it = slots.find(name);
            if (ec || it == slots.end())
                return;
            it->second.trying = false;
            (this->*step)(it->second);
        });
    }

    // Takes the lease for the first waiter (or for leading), or tries
    // again after retry_interval.
    void attempt(slot& s)
    {
        std::erase_if(s.waiting, [](const auto& r) { return r->done; });
        if (s.held || s.trying || (s.waiting.empty() && !s.wants_leader) || (stopping.load() && s.waiting.empty()))
            return;
        const auto sent = clock::now();
        const auto term = try_acquire(s.name);
        if (!term) {
            schedule(s, options.retry_interval, &impl::attempt);
            return;
        }
        const auto until = sent + options.lease_duration - options.stop_margin;
        if (until <= clock::now()) {
            // Taken, but the answer came too late to act on (a storage that
            // was slow to connect): its service would be told at once that
            // it lost it, and taken again, and again. Given back; tried again.
            note_error(std::string("taking lease '") + s.name +
                       "' took longer than the lease allows; given back, and tried again");
            try {
                store->release(s.name, options.node_id, *term);
            } catch (const std::exception&) {
                // It expires instead.
            }
            schedule(s, options.retry_interval, &impl::attempt);
            return;
        }
        auto lease = std::make_shared<held_lease>(shared_from_this(), s.name, *term, until);
        s.held = lease;
        {
            std::lock_guard lock(mutex);
            holding.push_back(lease);
            if (s.wants_leader)
                leading = lease;
        }
        watchdog_wake.notify_all();
        if (log)
            log->debug("Node '{}' took lease '{}' (term {})", options.node_id, s.name, *term);
        if (s.wants_leader) {
            if (log)
                log->info("Node '{}' leads (term {})", options.node_id, *term);
        } else {
            auto r = s.waiting.front();
            s.waiting.pop_front();
            finish(*r, nullptr, lease);
        }
        schedule(s, renew_interval_from(sent), &impl::renew);
    }

    // Nothing when another node holds it or the storage fails (noted).
    // Returned whole from here: GCC 12 at -O2 was seen to leave an
    // optional assigned inside a try block engaged, with a garbage value,
    // when the call that was to fill it threw.
    std::optional<std::uint64_t> try_acquire(const std::string& name)
    {
        try {
            auto term = store->acquire(name, options.node_id, options.lease_duration);
            note_success();
            return term;
        } catch (const std::exception& e) {
            note_error(std::string("taking lease '") + name + "' failed: " + e.what());
            return std::nullopt;
        }
    }

    void renew(slot& s)
    {
        auto lease = s.held;
        if (!lease)
            return;
        if (lease->is_lost()) {
            after_loss(s);
            return;
        }
        const auto sent = clock::now();
        bool kept = false;
        try {
            kept = store->renew(s.name, options.node_id, lease->term(), options.lease_duration);
            note_success();
        } catch (const std::exception& e) {
            note_error(std::string("renewing lease '") + s.name + "' failed: " + e.what());
            schedule(s, options.retry_interval, &impl::renew);
            return;
        }
        if (!kept) {
            lose(lease, "the storage says another node took it");
            after_loss(s);
            return;
        }
        const auto until = sent + options.lease_duration - options.stop_margin;
        if (until <= clock::now()) {
            // The answer came too late to count: the watchdog has told, or
            // is about to tell, the holder that it lost the lease.
            lose(lease, "its renewal took longer than the lease allows");
            after_loss(s);
            return;
        }
        lease->valid_until.store(until.time_since_epoch().count());
        lease->renewed.store(sent.time_since_epoch().count());
        watchdog_wake.notify_all();
        schedule(s, renew_interval_from(sent), &impl::renew);
    }

    // The next renewal goes renew_interval after this one was sent, not
    // after it returned: the lease counts from the sending, and a storage
    // slow to answer would otherwise add its time twice to the gap that
    // the lease must cover (a renewal's wait, then the interval, then the
    // next renewal's wait).
    milliseconds renew_interval_from(clock::time_point sent) const
    {
        const auto took = std::chrono::duration_cast<milliseconds>(clock::now() - sent);
        return std::max(milliseconds(0), options.renew_interval - took);
    }

    // A service's lost lease stays in its slot until the service has
    // stopped and gives it back; the leader's own is given up at once.
    void after_loss(slot& s)
    {
        if (s.name == leader_lease)
            give_up(s);
    }

    void lose(const std::shared_ptr<held_lease>& lease, const std::string& why)
    {
        if (!lease->lose(why))
            return;
        // Told first, logged after, and neither on the watchdog's thread: a
        // sink that blocks (a full pipe) holds up neither this stop nor the
        // word of the next lease to lapse.
        auto tell = [lease, why, log = log, node = options.node_id] {
            lease->fire();
            if (log && why != "released")
                log->warn("Node '{}' lost lease '{}' (term {}): {}", node, lease->name(), lease->term(), why);
        };
        bool no_thread = false;
        {
            std::lock_guard lock(notifiers_mutex);
            std::erase_if(notifiers, [](notifier& n) {
                if (!n.ended->load())
                    return false;
                n.thread.join();
                return true;
            });
            try {
                auto ended = std::make_shared<std::atomic<bool>>(false);
                // Room first: once the thread runs, storing it cannot throw.
                notifiers.reserve(notifiers.size() + 1);
                notifiers.push_back({std::thread([tell, ended] {
                                         tell();
                                         *ended = true;
                                     }),
                                     ended});
            } catch (...) {
                no_thread = true;
            }
        }
        // No thread to be had: here, then, but outside the lock, which a
        // holder's callback that blocks would otherwise keep from every
        // later loss.
        if (no_thread)
            tell();
    }

    // Frees the lease in the storage (when it may still be ours) and the
    // slot, then serves the next waiter.
    void give_up(slot& s)
    {
        auto lease = s.held;
        if (!lease)
            return;
        lose(lease, "released");
        try {
            store->release(s.name, options.node_id, lease->term());
        } catch (const std::exception& e) {
            note_error(std::string("releasing lease '") + s.name + "' failed (it expires instead): " + e.what());
        }
        s.held.reset();
        s.timer->cancel();
        s.trying = false;
        {
            std::lock_guard lock(mutex);
            std::erase(holding, lease);
            if (leading == lease)
                leading.reset();
        }
        if (!stopping.load() || !s.waiting.empty())
            attempt(s);
    }

    void watch()
    {
        std::unique_lock lock(mutex);
        while (!watchdog_stop) {
            auto next = clock::time_point::max();
            const auto now = clock::now();
            std::vector<std::shared_ptr<held_lease>> lapsed;
            for (auto& l : holding) {
                if (l->is_lost())
                    continue;
                const auto until = clock::time_point(clock::duration(l->valid_until.load()));
                if (until <= now)
                    lapsed.push_back(l);
                else
                    next = std::min(next, until);
            }
            if (!lapsed.empty()) {
                lock.unlock();
                for (auto& l : lapsed)
                    lose(l, "no renewal succeeded in time (the storage did not answer, or this process was paused)");
                lock.lock();
                continue;
            }
            if (next == clock::time_point::max())
                watchdog_wake.wait(lock);
            else
                watchdog_wake.wait_until(lock, next);
        }
    }

    // Runs `fn` on the coordinator's thread and resumes the caller on its
    // own executor with the result. Not a coroutine, and taking a
    // reference: a by-value argument would be a temporary inside the
    // caller's co_await, which GCC 12 can destroy twice.
    template <class R>
    asio::awaitable<R> call(std::function<R()>&& fn)
    {
        return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, R)>(
            [this, fn = std::move(fn)](auto handler) mutable {
                using completion = hosting::detail::remote_completion<decltype(handler), std::exception_ptr, R>;
                auto done = std::make_shared<completion>(std::move(handler));
                asio::post(io, [fn = std::move(fn), done] {
                    std::exception_ptr error;
                    R result{};
                    try {
                        result = fn();
                    } catch (...) {
                        error = std::current_exception();
                    }
                    done->complete(std::move(error), std::move(result));
                });
            },
            asio::use_awaitable);
    }
};

// Not waited for: the coordinator's thread may be in a storage call that
// takes seconds (a server that does not answer), and a host that stops
// must not spend its deadline there. The thread gives it up in turn, before
// any later acquire of this node's, and a release that cannot reach the
// storage lets the lease expire instead.
asio::awaitable<void> held_lease::release()
{
    auto owner = owner_.lock();
    if (!owner)
        co_return;
    try {
        asio::post(owner->io, [owner = owner.get(), name = name_, term = term_] {
            auto it = owner->slots.find(name);
            if (it != owner->slots.end() && it->second.held && it->second.held->term() == term)
                owner->give_up(it->second);
        });
    } catch (...) {
        // It expires instead.
    }
    co_return;
}

coordinator::coordinator(std::shared_ptr<lease_store> store, coordination_options options)
    : impl_(std::make_shared<impl>(std::move(store), std::move(options)))
{
}

coordinator::~coordinator() { impl_->shut_down(); }

void coordinator::start(std::shared_ptr<spdlog::logger> log) { impl_->start(std::move(log)); }
void coordinator::stop() noexcept { impl_->stop_taking(); }

const std::string& coordinator::node_id() const noexcept { return impl_->options.node_id; }
const coordination_options& coordinator::options() const noexcept { return impl_->options; }

bool coordinator::is_leader() const noexcept
{
    std::lock_guard lock(impl_->mutex);
    return impl_->leading && impl_->leading->is_current();
}

std::optional<std::uint64_t> coordinator::leader_term() const noexcept
{
    std::lock_guard lock(impl_->mutex);
    if (impl_->leading && impl_->leading->is_current())
        return impl_->leading->term();
    return std::nullopt;
}

std::vector<coordinator::holding> coordinator::holdings() const
{
    std::lock_guard lock(impl_->mutex);
    std::vector<holding> out;
    for (const auto& l : impl_->holding)
        if (l->is_current())
            out.push_back({l->name(), l->term(), clock::time_point(clock::duration(l->renewed.load()))});
    return out;
}

asio::awaitable<std::vector<lease_record>> coordinator::leases() const
{
    if (!impl_->started.load())
        throw std::logic_error("coordination: leases() before the coordinator started");
    std::function<std::vector<lease_record>()> read = [store = impl_->store] { return store->leases(); };
    return impl_->call<std::vector<lease_record>>(std::move(read));
}

std::string coordinator::last_error() const
{
    std::lock_guard lock(impl_->mutex);
    return impl_->error;
}

asio::awaitable<std::shared_ptr<instance_lease>> coordinator::acquire(std::string name, std::stop_token cancel)
{
    if (!impl_->started.load())
        throw std::logic_error("coordination: acquire() before the coordinator started");
    if (name == leader_lease)
        throw std::invalid_argument("coordination: the lease name 'leader' is the leader election's own");
    auto owner = impl_;
    return asio::async_initiate<decltype(asio::use_awaitable),
                                void(std::exception_ptr, std::shared_ptr<instance_lease>)>(
        [owner, name = std::move(name), cancel = std::move(cancel)](auto handler) mutable {
            using completion = hosting::detail::remote_completion<decltype(handler), std::exception_ptr,
                                                                  std::shared_ptr<instance_lease>>;
            auto slot = asio::get_associated_cancellation_slot(handler);
            auto done = std::make_shared<completion>(std::move(handler));
            auto r = std::make_shared<impl::request>();
            r->name = name;
            r->complete = [done](std::exception_ptr e, std::shared_ptr<instance_lease> l) {
                done->complete(std::move(e), std::move(l));
            };
            // A cancelled wait leaves the queue on the coordinator's thread.
            // Weak: what waits in the coordinator's queue, or in the
            // request it keeps, must not keep the coordinator alive.
            auto abandon = [weak_owner = std::weak_ptr<impl>(owner), weak = std::weak_ptr<impl::request>(r)] {
                auto o = weak_owner.lock();
                if (!o)
                    return;
                try {
                    asio::post(o->io, [o = o.get(), weak] {
                        if (auto r = weak.lock())
                            o->finish(*r,
                                      std::make_exception_ptr(
                                          boost::system::system_error(asio::error::operation_aborted)),
                                      nullptr);
                    });
                } catch (...) {
                }
            };
            if (slot.is_connected())
                slot.assign([abandon](asio::cancellation_type) { abandon(); });
            asio::post(owner->io, [owner = owner.get(), r, cancel, abandon] {
                if (owner->stopping.load()) {
                    owner->finish(*r,
                                  std::make_exception_ptr(boost::system::system_error(asio::error::operation_aborted)),
                                  nullptr);
                    return;
                }
                auto& s = owner->slot_of(r->name);
                s.waiting.push_back(r);
                r->on_stop.emplace(cancel, std::function<void()>(abandon));
                owner->attempt(s);
            });
        },
        asio::use_awaitable);
}

namespace {

// Starts the coordinator before every other service, and stops taking
// leases after they all stopped.
class coordination_service final : public hosted_service {
public:
    coordination_service(service_provider& provider, std::shared_ptr<coordinator> c)
        : coordinator_(std::move(c)), log_(provider.get<logger_factory>().get("hosting.coordination"))
    {
    }
    asio::awaitable<void> start(std::stop_token) override
    {
        coordinator_->start(log_);
        co_return;
    }
    asio::awaitable<void> stop(std::stop_token) override
    {
        coordinator_->stop();
        co_return;
    }

private:
    std::shared_ptr<coordinator> coordinator_;
    std::shared_ptr<spdlog::logger> log_;
};

struct coordination_feature {
    std::shared_ptr<coordinator> instance;
};

} // namespace

std::shared_ptr<coordinator> add_coordination(host_builder& builder, std::shared_ptr<lease_store> store,
                                              coordination_options options)
{
    auto& feature = builder.feature<coordination_feature>();
    if (feature.instance)
        throw std::logic_error("coordination: add_coordination() was already called on this builder");
    auto made = std::make_shared<coordinator>(std::move(store), std::move(options));
    feature.instance = made;
    builder.services().add_singleton<coordinator>(made);
    builder.services().add_singleton<instance_coordinator>(std::shared_ptr<instance_coordinator>(made));
    builder.services().add_hosted_service<coordination_service>(made).name("hosting.coordination").starts_first();

    auto metrics = add_metrics(builder);
    metrics->add_collector([weak = std::weak_ptr<coordinator>(made)](metrics_writer& out) {
        auto c = weak.lock();
        if (!c)
            return;
        for (const auto& h : c->holdings()) {
            out.gauge("hosting_coordination_lease_held", "1 while this node holds the lease", {{"lease", h.name}}, 1);
            out.gauge("hosting_coordination_lease_term", "The term this node holds the lease in", {{"lease", h.name}},
                      static_cast<double>(h.term));
        }
    });
    // One reading of the leases at a time: a probe that comes while one is
    // on its way (a storage slow to answer) reports what the last one read,
    // rather than queue another on the coordinator's thread, ahead of the
    // renewals, at every probe.
    struct readings {
        std::mutex mutex;
        bool reading = false;                      // mutex
        std::optional<std::vector<lease_record>> last; // mutex
    };
    add_health_checks(builder).add_check(
        "coordination",
        [weak = std::weak_ptr<coordinator>(made),
         shared = std::make_shared<readings>()](std::stop_token) -> asio::awaitable<health_check_result> {
            auto c = weak.lock();
            if (!c)
                co_return health_check_result::unhealthy("the coordinator is gone");
            std::map<std::string, std::string> data{{"node", c->node_id()},
                                                    {"leader", c->is_leader() ? "yes" : "no"}};
            bool mine = false;
            std::optional<std::vector<lease_record>> last;
            {
                std::lock_guard lock(shared->mutex);
                mine = !std::exchange(shared->reading, true);
                if (!mine)
                    last = shared->last;
            }
            std::vector<lease_record> all;
            if (mine) {
                struct done_reading {
                    readings& r;
                    ~done_reading()
                    {
                        std::lock_guard lock(r.mutex);
                        r.reading = false;
                    }
                } done{*shared};
                try {
                    auto reading = c->leases();
                    all = co_await std::move(reading);
                } catch (const std::exception& e) {
                    co_return health_check_result::unhealthy(std::string("the lease storage fails: ") + e.what(),
                                                             std::move(data));
                }
                std::lock_guard lock(shared->mutex);
                shared->last = all;
            } else if (last) {
                all = std::move(*last);
                data["leases read"] = "by an earlier check: a reading is still on its way";
            } else {
                co_return health_check_result::unhealthy("the lease storage has not answered yet",
                                                         std::move(data));
            }
            for (const auto& l : all)
                data["lease:" + l.name] = l.expires_in.count() > 0
                                              ? l.holder + " (term " + std::to_string(l.term) + ")"
                                              : "free (last term " + std::to_string(l.term) + ")";
            if (auto why = c->last_error(); !why.empty())
                co_return health_check_result::unhealthy(why, std::move(data));
            co_return health_check_result::healthy("reachable", std::move(data));
        },
        {std::string(health_tags::ready), "coordination"}, std::chrono::seconds(5));
    return made;
}

} // namespace hosting::coordination
