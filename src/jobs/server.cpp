#include "engine.hpp"

#include <hosting/cancellation.hpp>
#include <hosting/logging.hpp>

#include "../describe.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <spdlog/logger.h>

#include <deque>
#include <unordered_map>

namespace hosting::jobs {

namespace {

// How many claimed jobs may wait for a worker, per unit of a queue's
// concurrency: a claim of a few jobs per transaction would make every
// commit's flush the bottleneck.
constexpr std::size_t prefetch_per_worker = 32;

std::string ms_text(std::chrono::milliseconds d) { return std::to_string(d.count()) + " ms"; }

} // namespace

struct server::run : std::enable_shared_from_this<server::run> {
    enum class cause { none, timeout, cancel, shutdown };
    struct active {
        job j;
        std::stop_source stop;
        asio::cancellation_signal signal;
        cause why = cause::none;
        std::optional<asio::steady_timer> timeout;
        std::unique_ptr<job_context> context;
    };

    std::shared_ptr<detail::engine> engine;
    std::shared_ptr<spdlog::logger> log;
    asio::any_io_executor ex; // the service's executor; everything below is touched only there
    std::optional<asio::steady_timer> wake_timer;
    bool woken = false;
    bool stopping = false;
    std::vector<completion> done;
    std::deque<job> buffered;
    std::unordered_map<job_id, std::shared_ptr<active>> running;
    std::unordered_map<std::string, std::size_t> running_in_queue;
    std::unordered_map<std::string, std::size_t> buffered_in_queue;
    std::optional<time_point> next_due;
    std::optional<asio::steady_timer> idle_event; // wakes the shutdown wait
    // Here, not in execute's frame: the heartbeat coroutine clears its slot
    // when it ends, which may be after execute returned.
    asio::cancellation_signal heartbeat_stop;

    const server_options& options() const { return engine->options(); }
    time_point now() const { return engine->now(); }

    // From any thread.
    void poke()
    {
        asio::post(ex, [self = shared_from_this()] {
            self->woken = true;
            if (self->wake_timer)
                self->wake_timer->cancel();
        });
    }

    std::size_t capacity(const queue_options& q) const
    {
        return q.concurrency == 0 ? options().workers : std::min(q.concurrency, options().workers);
    }

    claim_request make_claim() const
    {
        claim_request c;
        c.node = engine->node();
        c.kinds = engine->kind_names();
        c.lease_until = now() + options().lease_duration;
        if (stopping)
            return c;
        std::size_t room = options().workers * prefetch_per_worker;
        room -= std::min(room, buffered.size());
        for (const auto& q : options().queues) {
            auto limit = capacity(q) * prefetch_per_worker;
            auto has = count(buffered_in_queue, q.name) + count(running_in_queue, q.name);
            auto want = std::min(room, limit - std::min(limit, has));
            c.queues.emplace_back(q.name, want);
            room -= want;
        }
        return c;
    }

    static std::size_t count(const std::unordered_map<std::string, std::size_t>& m, const std::string& k)
    {
        auto it = m.find(k);
        return it == m.end() ? 0 : it->second;
    }

    void accept(std::vector<job> claimed)
    {
        for (auto& j : claimed) {
            ++buffered_in_queue[j.queue];
            buffered.push_back(std::move(j));
        }
        start_ready();
    }

    // Starts buffered jobs while workers and their queues' limits allow,
    // in queue order.
    void start_ready()
    {
        if (stopping)
            return;
        for (const auto& q : options().queues) {
            for (auto it = buffered.begin(); it != buffered.end() && running.size() < options().workers;) {
                if (it->queue != q.name || count(running_in_queue, q.name) >= capacity(q)) {
                    ++it;
                    continue;
                }
                job j = std::move(*it);
                it = buffered.erase(it);
                --buffered_in_queue[j.queue];
                start(std::move(j));
            }
        }
    }

    void start(job j)
    {
        const auto* kind = engine->kind(j.kind);
        if (!kind) {
            // Claims only ask for known kinds; this is a storage's mistake.
            done.push_back({j.id, j.attempt, outcome::released, {}, {}, "no handler for kind '" + j.kind + "' here"});
            return;
        }
        auto a = std::make_shared<active>();
        a->j = std::move(j);
        ++running_in_queue[a->j.queue];
        running.emplace(a->j.id, a);
        a->context = std::make_unique<job_context>(a->j, a->stop.get_token(), log);
        if (a->j.timeout > std::chrono::milliseconds::zero()) {
            a->timeout.emplace(ex, a->j.timeout);
            a->timeout->async_wait([weak = std::weak_ptr<active>(a)](boost::system::error_code ec) {
                auto alive = weak.lock();
                if (ec || !alive || alive->why != cause::none)
                    return;
                alive->why = cause::timeout;
                alive->stop.request_stop();
                alive->signal.emit(asio::cancellation_type::terminal);
            });
        }
        asio::co_spawn(ex, kind->invoke(a->j.args, *a->context),
                       asio::bind_cancellation_slot(a->signal.slot(), [self = shared_from_this(), a](std::exception_ptr e) {
                           self->finish(*a, e);
                       }));
    }

    void interrupt(active& a, cause why)
    {
        if (a.why != cause::none)
            return;
        a.why = why;
        a.stop.request_stop();
        a.signal.emit(asio::cancellation_type::terminal);
    }

    void finish(active& a, std::exception_ptr e)
    {
        if (a.timeout)
            a.timeout->cancel();
        const auto& j = a.j;
        completion c;
        c.id = j.id;
        c.attempt = j.attempt;
        auto fail = [&](std::string error) {
            c.error = std::move(error);
            if (j.attempt < j.max_attempts) {
                const auto* kind = engine->kind(j.kind);
                const auto delay = kind ? kind->options.retry.delay_after(j.attempt)
                                        : retry_policy::default_backoff(j.attempt);
                c.what = outcome::retry;
                c.run_at = now() + delay;
                c.reason = "attempt " + std::to_string(j.attempt) + " of " + std::to_string(j.max_attempts) +
                           " failed; retrying in " + ms_text(delay);
                log->warn("Job {} ({}) attempt {} of {} failed: {}; retrying in {}", j.id, j.kind, j.attempt,
                          j.max_attempts, c.error, ms_text(delay));
            } else {
                c.what = outcome::failed;
                c.reason = "attempt " + std::to_string(j.attempt) + " of " + std::to_string(j.max_attempts) +
                           " failed; no attempts left";
                log->error("Job {} ({}) failed for good after {} attempts: {}", j.id, j.kind, j.attempt, c.error);
            }
        };
        if (!e) {
            c.what = outcome::succeeded;
            c.reason = "succeeded";
        } else {
            try {
                std::rethrow_exception(e);
            } catch (const snooze& s) {
                c.what = outcome::snoozed;
                c.run_at = now() + s.delay();
                c.reason = "snoozed for " + ms_text(s.delay());
            } catch (const bad_arguments& b) {
                c.what = outcome::failed;
                c.error = b.what();
                c.reason = "its arguments do not convert; not retried";
                log->error("Job {} ({}) failed: {}", j.id, j.kind, c.error);
            } catch (...) {
                switch (a.why) {
                case cause::shutdown:
                    c.what = outcome::released;
                    c.reason = "released: the server stopped before it finished";
                    break;
                case cause::cancel:
                    c.what = outcome::cancelled;
                    c.reason = "cancelled while running";
                    break;
                case cause::timeout: fail("timed out after " + ms_text(j.timeout)); break;
                case cause::none: fail(hosting::detail::describe(e)); break;
                }
            }
        }
        --running_in_queue[j.queue];
        done.push_back(std::move(c));
        running.erase(j.id); // `a` may die here: nothing below touches it
        start_ready();
        woken = true;
        if (wake_timer)
            wake_timer->cancel();
        if (idle_event)
            idle_event->cancel();
    }

    // A cancel() for a job this node holds: stop it, or drop it from the buffer.
    void cancel_local(job_id id)
    {
        if (auto it = running.find(id); it != running.end()) {
            interrupt(*it->second, cause::cancel);
            return;
        }
        for (auto it = buffered.begin(); it != buffered.end(); ++it) {
            if (it->id != id)
                continue;
            --buffered_in_queue[it->queue];
            done.push_back({it->id, it->attempt, outcome::cancelled, {}, {}, "cancelled before it started"});
            buffered.erase(it);
            woken = true;
            if (wake_timer)
                wake_timer->cancel();
            return;
        }
    }

    std::function<std::pair<std::vector<job>, std::optional<time_point>>(storage&)> claim_op()
    {
        return [d = std::exchange(done, {}), c = make_claim(), at = now()](storage& s) {
            auto claimed = s.complete_and_claim(d, c, at);
            return std::make_pair(std::move(claimed), s.next_due());
        };
    }
};

server::server(std::shared_ptr<detail::engine> engine) : engine_(std::move(engine)) {}
server::~server() = default;

const std::string& server::node_id() const noexcept { return engine_->node(); }

void server::wake()
{
    if (auto r = run_)
        r->poke();
}

asio::awaitable<void> server::execute(std::stop_token stopping)
{
    auto r = std::make_shared<run>();
    r->engine = engine_;
    r->log = service_logger();
    if (!r->log)
        r->log = std::make_shared<spdlog::logger>("hosting.jobs"); // outside a host: silent
    r->ex = co_await asio::this_coro::executor;
    r->wake_timer.emplace(r->ex);
    run_ = r;
    std::weak_ptr<run> weak = r;
    engine_->set_waker([weak] {
        if (auto alive = weak.lock())
            alive->poke();
    });
    engine_->set_local_cancel([weak](job_id id) {
        if (auto alive = weak.lock())
            asio::post(alive->ex, [alive, id] { alive->cancel_local(id); });
    });
    engine_->options().clock->on_change([weak] {
        if (auto alive = weak.lock())
            alive->poke();
    });
    if (engine_->kind_names().empty())
        r->log->warn("The jobs server has no kinds registered; it will claim nothing");
    r->log->info("Jobs server {} started: {} workers, queues {}", engine_->node(), engine_->options().workers,
                 [&] {
                     std::string q;
                     for (const auto& o : engine_->options().queues)
                         q += (q.empty() ? "" : ", ") + o.name;
                     return q;
                 }());

    // Heartbeats: renew leases, pick up cancels from other processes, and
    // recover the jobs of nodes that died.
    auto heartbeat_loop = [r]() -> asio::awaitable<void> {
        asio::steady_timer timer(r->ex);
        for (;;) {
            timer.expires_after(r->options().heartbeat_interval);
            co_await timer.async_wait(asio::use_awaitable);
            const auto now = r->now();
            std::function<std::pair<std::vector<job_id>, std::size_t>(storage&)> beat =
                [node = r->engine->node(), until = now + r->options().lease_duration, now](storage& s) {
                    auto cancels = s.heartbeat(node, until, now);
                    auto recovered = s.recover_expired(now);
                    return std::make_pair(std::move(cancels), recovered.size());
                };
            try {
                auto [cancels, recovered] = co_await r->engine->call<std::pair<std::vector<job_id>, std::size_t>>(
                    std::move(beat));
                for (auto id : cancels)
                    r->cancel_local(id);
                if (recovered > 0) {
                    r->log->warn("Recovered {} jobs whose node's lease expired", recovered);
                    r->poke();
                }
            } catch (const storage_error& e) {
                r->log->error("Jobs heartbeat failed: {}", e.what());
            }
        }
    };
    asio::co_spawn(r->ex, std::move(heartbeat_loop),
                   asio::bind_cancellation_slot(r->heartbeat_stop.slot(), [](std::exception_ptr) {}));

    try {
        while (!stopping.stop_requested()) {
            r->woken = false;
            auto op = r->claim_op();
            std::pair<std::vector<job>, std::optional<time_point>> result;
            try {
                result = co_await engine_->call<std::pair<std::vector<job>, std::optional<time_point>>>(std::move(op));
            } catch (const storage_error& e) {
                // The storage is unreachable: keep the completions' jobs
                // leased (their leases expire and they are recovered) and
                // try again after a poll interval.
                r->log->error("Jobs storage call failed: {}", e.what());
            }
            const bool claimed_any = !result.first.empty();
            r->next_due = result.second;
            r->accept(std::move(result.first));
            if (r->woken || claimed_any)
                continue;
            auto wait = std::chrono::duration_cast<clock::duration>(engine_->options().poll_interval);
            if (r->next_due)
                wait = std::min(wait, std::max(clock::duration::zero(), *r->next_due - r->now()));
            r->wake_timer->expires_after(wait);
            boost::system::error_code ec;
            co_await r->wake_timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
    } catch (...) {
        if (!stopping.stop_requested() || !is_cancellation(std::current_exception()))
            throw;
    }

    // Stopping: no more claims; running jobs are asked to stop and get the
    // grace period; the rest go back to available.
    co_await asio::this_coro::reset_cancellation_state();
    r->stopping = true;
    r->heartbeat_stop.emit(asio::cancellation_type::terminal);
    for (auto& [id, a] : r->running)
        r->interrupt(*a, run::cause::shutdown);
    r->idle_event.emplace(r->ex, asio::steady_timer::time_point::max());
    const auto grace_end = std::chrono::steady_clock::now() + engine_->options().shutdown_grace;
    while (!r->running.empty() && std::chrono::steady_clock::now() < grace_end) {
        r->idle_event->expires_at(grace_end);
        boost::system::error_code ec;
        co_await r->idle_event->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    for (auto& [id, a] : r->running)
        r->done.push_back({a->j.id, a->j.attempt, outcome::released, {}, {},
                           "released: it did not stop within the shutdown grace"});
    const auto abandoned = r->running.size();
    for (auto& j : r->buffered)
        r->done.push_back({j.id, j.attempt, outcome::released, {}, {}, "released: the server stopped"});
    r->buffered.clear();
    auto op = r->claim_op();
    co_await engine_->call<std::pair<std::vector<job>, std::optional<time_point>>>(std::move(op));
    if (abandoned > 0)
        r->log->warn("{} jobs did not stop within the shutdown grace and were released", abandoned);
    engine_->set_waker({});
    engine_->set_local_cancel({});
    r->log->info("Jobs server {} stopped", engine_->node());
}

jobs_registration add_jobs(host_builder& builder, std::shared_ptr<storage> store, server_options options)
{
    auto engine = std::make_shared<detail::engine>(std::move(store), std::move(options));
    builder.services().add_singleton<client>(std::make_shared<client>(engine));
    builder.services().add_hosted_service<server>(engine).name("hosting.jobs");
    return jobs_registration(engine);
}

} // namespace hosting::jobs
