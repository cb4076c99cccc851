#include "jobs/detail/engine.hpp"

#include <hosting/async/cancellation.hpp>
#include <hosting/scheduling/cron.hpp>
#include <hosting/core/host_options.hpp>
#include <hosting/logging/logging.hpp>

#include "detail/describe.hpp"
#include "jobs/detail/stored.hpp"
#include "detail/duration_text.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <deque>
#include <unordered_map>

#include <unistd.h>

namespace hosting::jobs {

namespace {

using hosting::detail::ms_text;

struct recurring_result {
    std::optional<time_point> next;
    std::size_t fired = 0;
    std::vector<std::string> errors;
};

// Enqueues the due occurrences of every recurring job, on the storage
// thread. Several servers may run it at once: fire_recurring lets exactly
// one of them move a schedule on, and the occurrence's unique key backs that.
recurring_result recurring_pass(storage& s, detail::engine& e, time_point now, clock::duration tolerance)
{
    recurring_result out;
    auto earliest = [&](time_point t) { out.next = out.next ? std::min(*out.next, t) : t; };
    for (const auto& r : s.list_recurring()) {
        if (r.paused)
            continue;
        if (r.next_fire > now) {
            earliest(r.next_fire);
            continue;
        }
        // Each firing is a transaction: many due at once (midnight, or a
        // restart after a long stop) must not keep this node's leases
        // from being renewed until the last.
        e.renew_if_due();
        try {
            const auto expression = cron_expression::parse(r.cron);
            const auto zone = time_zone::locate(r.zone);
            std::vector<time_point> fires;
            for (std::optional<time_point> t = r.next_fire; t && *t <= now && fires.size() < max_missed_runs;
                 t = expression.next(*t, zone))
                fires.push_back(*t);
            // The loop stops at max_missed_runs: the latest occurrence may lie
            // beyond it (the last one at or before now).
            auto latest = fires.back();
            const bool capped = fires.size() == max_missed_runs;
            if (capped) {
                if (const auto last = expression.previous(now + clock::duration(1), zone); last && *last > latest)
                    latest = *last;
            }
            const auto next = expression.next(now, zone);
            std::vector<enqueue_request> occurrences;
            const auto missed = fires.size() - 1;
            switch (r.missed) {
            case missed_policy::run_all: // the first max_missed_runs of them
                for (auto f : fires)
                    occurrences.push_back(e.occurrence_request(r, f));
                break;
            case missed_policy::run_once:
                occurrences.push_back(e.occurrence_request(r, latest));
                if (missed > 0)
                    occurrences.back().reason += " (one run for " + std::string(capped ? "at least " : "") +
                                                 std::to_string(fires.size()) + " occurrences)";
                break;
            case missed_policy::skip:
                if (now - latest <= tolerance)
                    occurrences.push_back(e.occurrence_request(r, latest));
                break;
            }
            // Never firing again (only near the end of time): park it far away.
            const auto moved_to = next.value_or(time_point::max() - std::chrono::hours(24 * 365));
            if (s.fire_recurring(r.id, r.next_fire, moved_to, occurrences, now))
                out.fired += occurrences.size();
            earliest(moved_to);
        } catch (const row_lock_timeout& ex) {
            // This one's occurrence waits on a row another transaction holds
            // (its unique key, taken by an application's open transaction):
            // the others fire, and it is tried again after a poll interval.
            out.errors.push_back("recurring job '" + r.id + "': " + ex.what() + "; tried again after poll_interval");
            earliest(now + std::chrono::duration_cast<clock::duration>(e.options().poll_interval));
        } catch (const storage_error&) {
            throw;
        } catch (const std::exception& ex) {
            out.errors.push_back("recurring job '" + r.id + "': " + ex.what());
        }
    }
    return out;
}

} // namespace

struct server::run : std::enable_shared_from_this<server::run> {
    enum class cause { none, timeout, cancel, shutdown, lost };
    struct active {
        job j;
        std::stop_source stop;
        asio::cancellation_signal signal;
        cause why = cause::none;
        std::optional<asio::steady_timer> timeout;
        std::unique_ptr<job_context> context;
        std::chrono::steady_clock::time_point started;
        bool reported = false; // its start went to the storage thread
        bool lost = false;     // a renewal found its lease gone: its end is not recorded
    };

    std::shared_ptr<detail::engine> engine;
    std::shared_ptr<spdlog::logger> log;
    service_provider* provider = nullptr; // the host's; it outlives its services
    asio::any_io_executor ex; // the service's executor; everything below is touched only there
    std::optional<asio::steady_timer> wake_timer;
    bool woken = false;
    bool stopping = false;
    bool standing = false; // a claim of ours waits in the engine (engine::stand)
    std::vector<completion> done;
    std::deque<job> buffered;
    std::unordered_map<job_id, std::shared_ptr<active>> running;
    std::unordered_map<std::string, std::size_t> running_in_queue;
    std::unordered_map<std::string, std::size_t> running_of_kind;
    std::unordered_map<std::string, std::size_t> buffered_of_kind;
    bool recurring_dirty = true; // read the recurring jobs again
    bool pruning = false;
    std::optional<time_point> next_recurring;
    metrics_registry* metrics = nullptr;
    struct kind_metrics {
        metric_counter* succeeded;
        metric_counter* failed;
        metric_counter* retried;
        metric_histogram* duration;
    };
    std::unordered_map<std::string, kind_metrics> by_kind;
    std::shared_ptr<std::atomic<std::int64_t>> state_counts =
        std::shared_ptr<std::atomic<std::int64_t>>(new std::atomic<std::int64_t>[job_state_count](),
                                                   std::default_delete<std::atomic<std::int64_t>[]>());
    std::unordered_map<std::string, std::size_t> buffered_in_queue;
    std::optional<asio::steady_timer> idle_event; // wakes the shutdown wait
    // Here, not in execute's frame: the housekeeping coroutine clears its
    // slot when it ends, which may be after execute returned.
    asio::cancellation_signal housekeeping_stop;
    // Set when execute() sends its last completions: a handler that
    // outlived the grace (its lease still renewed) sends its own when it ends.
    bool finished = false;
    // Until when the last renewal extended the leases it found held; set
    // here, after the jobs it found lost were dropped.
    time_point renewed_until{};

    const server_options& options() const { return engine->options(); }
    time_point now() const { return engine->now(); }

    // On the server's executor: the main loop looks for work again.
    void wake()
    {
        woken = true;
        if (wake_timer)
            wake_timer->cancel();
    }

    // From any thread.
    void poke()
    {
        asio::post(ex, [self = shared_from_this()] { self->wake(); });
    }

    // From a thread of the engine's (the storage thread) or the clock's:
    // runs fn on the server's executor while the host's io_context lives,
    // and keeps no reference to the run once posted, so that the last one
    // never goes on that thread (it would take the engine with it, which
    // cannot join its own thread). False when there is nobody to tell.
    using liveness_ptr = std::shared_ptr<hosting::detail::context_liveness>;
    template <class F>
    static bool post_from_outside(const std::weak_ptr<run>& weak, const liveness_ptr& liveness, F fn)
    {
        std::lock_guard lock(liveness->mutex);
        if (!liveness->alive)
            return false;
        auto alive = weak.lock();
        if (!alive)
            return false;
        auto executor = alive->ex;
        asio::post(executor, [alive = std::move(alive), fn = std::move(fn)]() mutable { fn(*alive); });
        return true;
    }

    std::size_t capacity(const queue_options& q) const
    {
        return q.concurrency == 0 ? options().workers : std::min(q.concurrency, options().workers);
    }

    claim_request make_claim() const
    {
        claim_request c;
        c.node = engine->node();
        // A limited kind is claimed only up to its limit: more of it would
        // wait here, holding the room that other work could use (and while
        // other nodes could run them), so a backlog of it would idle workers.
        for (const auto& [name, kind] : engine->kinds()) {
            const auto limit = kind.options.concurrency;
            if (limit > 0) {
                const auto held = count(running_of_kind, name) + count(buffered_of_kind, name);
                if (held >= limit)
                    continue;
                c.kind_caps.emplace_back(name, limit - held);
            }
            c.kinds.push_back(name);
        }
        c.lease_until = now() + options().lease_duration;
        if (stopping)
            return c;
        const auto prefetch = claim_ahead();
        // The room is shared: what an earlier queue does not find goes to
        // the later ones, in the same claim. However many workers and
        // prefetch say, a claim takes half of max_rows_per_write at most:
        // another process's lease renewal waits for the whole transaction,
        // which carries the completions since the last one too (as many as
        // the jobs this node held, which its claims bound).
        c.total = std::min(room_for(options().workers * prefetch, buffered.size() + running.size()),
                           max_rows_per_write / 2);
        for (const auto& q : options().queues) {
            const auto held = count(buffered_in_queue, q.name) + count(running_in_queue, q.name);
            c.queues.emplace_back(q.name, std::min(c.total, room_for(capacity(q) * prefetch, held)));
        }
        return c;
    }

    // The room a claim sent now takes, for `limit` jobs and `held` now.
    // held_then() is an estimate, from past runs: whatever it says, the
    // jobs held once the claim returns are at most twice the limit, as
    // server_options::prefetch promises (a transaction far longer than the
    // runs would otherwise claim a full buffer again and again, ahead of
    // workers that turn out slower than their past runs).
    std::size_t room_for(std::size_t limit, std::size_t held) const
    {
        const auto room = limit - std::min(limit, held_then(held));
        return std::min(room, 2 * limit - std::min(2 * limit, held));
    }

    // How many jobs per worker a claim takes. Claims of a few quick jobs per
    // transaction would make every commit the bottleneck, so quick jobs are
    // claimed ahead, as many as the workers start within claim_horizon (up
    // to `prefetch` each). Slower ones are claimed for free workers only:
    // held in a buffer they would wait while another node could run them,
    // and the first node to look would take all the work.
    std::size_t claim_ahead() const
    {
        const auto cap = options().prefetch;
        if (cap <= 1 || mean_run_seconds <= 0)
            return 1;
        const auto fits = claim_horizon_seconds / mean_run_seconds;
        return fits >= static_cast<double>(cap) ? cap : std::max<std::size_t>(1, static_cast<std::size_t>(fits));
    }
    static constexpr double claim_horizon_seconds = 0.02;

    // Of `held` jobs (running or waiting here), those still here when a
    // claim sent now returns. Jobs claimed ahead are quick: those the
    // workers will have run by then leave their room to the claim's jobs,
    // or each transaction would carry only the room made before it was
    // sent, and its commit be shared by fewer jobs.
    std::size_t held_then(std::size_t held) const
    {
        if (held == 0 || claim_ahead() <= 1 || mean_transaction_seconds <= 0)
            return held;
        const auto runs = mean_transaction_seconds * static_cast<double>(options().workers) / mean_run_seconds;
        return runs >= static_cast<double>(held) ? 0 : held - static_cast<std::size_t>(runs);
    }
    // Both weighted to the latest sample; 0: none yet.
    double mean_run_seconds = 0;         // of recent runs
    double mean_transaction_seconds = 0; // of recent claims, from their call to their result
    static void weigh(double& mean, double sample) { mean = mean <= 0 ? sample : 0.9 * mean + 0.1 * sample; }

    // Quick jobs are claimed ahead, up to claim_horizon of work. While more
    // than a quarter of that is still to run, a transaction would claim
    // the few that ran since the last one and commit their completions:
    // its commit, round trips and statements would be shared by a handful
    // of jobs. Waiting until three quarters are free makes each carry most
    // of the buffer, and the quarter left (5 ms of work) keeps the workers
    // busy while it commits. Jobs the workers run faster than a transaction
    // commits count as free (held_then): the next transaction goes as soon
    // as the last one returned, or the storage would wait on the workers.
    bool worth_a_transaction() const
    {
        // A worker that is free while jobs wait here waits for a limit:
        // other work may need the claim now.
        if (!taken_back || stopping || buffered.empty() || running.size() < options().workers)
            return true;
        const auto ahead = claim_ahead();
        if (ahead <= 1)
            return true;
        const auto cap = options().workers * ahead;
        const auto room = room_for(cap, buffered.size() + running.size());
        return room * 4 >= cap * 3 || done.size() >= cap;
    }
    // But not for longer than this: workers taken by runs far longer than
    // the ones before would otherwise keep the completions of the jobs that
    // ended (and the jobs waiting here) from the storage until they end.
    // Five times what the buffer holds: a slow host (a sanitizer, a busy
    // machine) that takes longer than claim_horizon to run it still waits
    // for the room.
    static constexpr std::chrono::milliseconds hold_limit{100};
    std::optional<std::chrono::steady_clock::time_point> holding_since;

    // How long to wait for a fuller transaction; none: send one now.
    std::optional<std::chrono::steady_clock::duration> hold()
    {
        if (worth_a_transaction()) {
            holding_since.reset();
            return std::nullopt;
        }
        const auto now = std::chrono::steady_clock::now();
        if (!holding_since)
            holding_since = now;
        const auto left = *holding_since + hold_limit - now;
        if (left <= std::chrono::steady_clock::duration::zero()) {
            holding_since.reset();
            return std::nullopt;
        }
        return left;
    }

    static std::size_t count(const std::unordered_map<std::string, std::size_t>& m, const std::string& k)
    {
        auto it = m.find(k);
        return it == m.end() ? 0 : it->second;
    }

    void accept(std::vector<job> claimed)
    {
        // Claimed again while this node still holds it: its lease was lost
        // (a stalled heartbeat), it was recovered, and this claim took it
        // back. The run here goes on under the new claim, so that its end
        // counts: otherwise the new claim, renewed by this node's
        // heartbeats and run by nobody, would hold the job forever. A run
        // that ended meanwhile has its completion waiting in `done`: it
        // then completes the new claim. (A run here that lost its lease and
        // is still stopping is not this claim's: the claim waits in the
        // buffer until it ends.)
        // The attempts this node holds waiting to start or to be completed,
        // by job: looked up rather than searched for each claimed job, since
        // a quick drain's claim returns a thousand jobs while a thousand
        // completions wait, and a search per job kept the storage thread
        // waiting a millisecond per transaction. The buffer goes first.
        std::unordered_map<job_id, int*> held_here;
        held_here.reserve(buffered.size() + done.size());
        for (auto& b : buffered)
            held_here.emplace(b.id, &b.attempt);
        for (auto& d : done)
            held_here.emplace(d.id, &d.attempt);
        for (auto& j : claimed) {
            int* mine = nullptr;
            if (auto it = running.find(j.id); it != running.end() && !it->second->lost) {
                mine = &it->second->j.attempt;
                it->second->reported = false; // the new claim is told of the start at the next one
            } else if (auto h = held_here.find(j.id); h != held_here.end()) {
                mine = h->second;
            }
            if (mine) {
                log->warn("Job {} was claimed again while this node still holds it (its lease was lost); it goes on "
                          "as attempt {}",
                          j.id, j.attempt);
                *mine = j.attempt;
                continue;
            }
            ++buffered_in_queue[j.queue];
            ++buffered_of_kind[j.kind];
            buffered.push_back(std::move(j)); // a deque's push_back leaves the pointers in held_here valid
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
                if (it->queue != q.name || count(running_in_queue, q.name) >= capacity(q) || kind_full(it->kind) ||
                    !lease_current(*it) || running.contains(it->id)) {
                    ++it;
                    continue;
                }
                job j = std::move(*it);
                it = buffered.erase(it);
                --buffered_in_queue[j.queue];
                --buffered_of_kind[j.kind];
                start(std::move(j));
            }
        }
    }

    // The kind's backoff for the attempt that failed, within a year: a
    // backoff that throws must not leave the job running here for good (its
    // completion never made), nor one past the clock's range wrap into the
    // past and retry at once, for ever.
    clock::duration retry_delay(const job& j, const detail::kind_entry* kind) const
    {
        clock::duration delay{};
        try {
            delay = kind ? kind->options.retry.delay_after(j.attempt) : retry_policy::default_backoff(j.attempt);
        } catch (...) {
            log->error("Job {} ({}): its kind's retry backoff threw ({}); the default backoff is used", j.id, j.kind,
                       hosting::detail::describe(std::current_exception()));
            delay = retry_policy::default_backoff(j.attempt);
        }
        return std::clamp<clock::duration>(delay, clock::duration::zero(), std::chrono::hours(24 * 365));
    }

    // Whether this node may still count on holding the job: its lease, as
    // its claim or the last renewal set it, has not run out. One that has
    // may have gone to another node (this process was stopped, or the
    // storage unreachable, for longer than the lease): it waits for the
    // next renewal to say whether it is still held.
    bool lease_current(const job& j) const { return std::max(j.lease_expires, renewed_until) > now(); }

    bool kind_full(const std::string& name) const
    {
        const auto* kind = engine->kind(name);
        return kind && kind->options.concurrency > 0 && count(running_of_kind, name) >= kind->options.concurrency;
    }

    kind_metrics& metrics_for(const std::string& kind, const std::string& queue)
    {
        const auto key = kind + '\n' + queue;
        auto it = by_kind.find(key);
        if (it != by_kind.end())
            return it->second;
        const metric_labels labels{{"kind", kind}, {"queue", queue}};
        auto outcome = [&](const char* o) {
            return &metrics->counter("hosting_jobs_completed_total",
                                     "Job attempts that ended, by kind, queue and outcome",
                                     {{"kind", kind}, {"queue", queue}, {"outcome", o}});
        };
        return by_kind
            .emplace(key, kind_metrics{outcome("succeeded"), outcome("failed"), outcome("retried"),
                                       &metrics->histogram("hosting_jobs_duration_seconds",
                                                           "How long job handlers ran, by kind and queue",
                                                           default_duration_buckets(), labels)})
            .first->second;
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
        ++running_of_kind[a->j.kind];
        a->started = std::chrono::steady_clock::now();
        running.emplace(a->j.id, a);
        a->context = std::make_unique<job_context>(a->j, a->stop.get_token(), log, provider);
        if (a->j.timeout > std::chrono::milliseconds::zero()) {
            a->timeout.emplace(ex, a->j.timeout);
            a->timeout->async_wait([weak = std::weak_ptr<active>(a)](boost::system::error_code ec) {
                if (auto alive = weak.lock(); alive && !ec)
                    interrupt(*alive, cause::timeout);
            });
        }
        asio::co_spawn(ex, kind->invoke(a->j.args, *a->context),
                       asio::bind_cancellation_slot(a->signal.slot(), [self = shared_from_this(), a](std::exception_ptr e) {
                           self->finish(*a, e);
                       }));
    }

    // The stop: nothing starts any more, and the running handlers are
    // told, once. Told as soon as the host asks (from the stop token's
    // callback), not when the server's loop gets there: that loop may be
    // awaiting a storage call that takes seconds, and the handlers' grace
    // runs from here.
    void begin_stop()
    {
        if (std::exchange(stopping, true))
            return;
        stop_began = std::chrono::steady_clock::now();
        for (auto& [id, a] : running)
            interrupt(*a, cause::shutdown);
    }
    std::chrono::steady_clock::time_point stop_began{}; // once stopping

    static void interrupt(active& a, cause why)
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
        const auto* kind = engine->kind(j.kind);
        auto fail = [&](std::string error, const char* not_retried = nullptr) {
            c.error = std::move(error);
            if (not_retried) {
                c.what = outcome::failed;
                c.reason = "attempt " + std::to_string(j.attempt) + " of " + std::to_string(j.max_attempts) +
                           " failed; not retried: " + not_retried;
                log->error("Job {} ({}) failed, not retried ({}): {}", j.id, j.kind, not_retried, c.error);
            } else if (j.attempt < j.max_attempts) {
                const auto delay = retry_delay(j, kind);
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
            } catch (const discard& d) {
                // The handler's word goes, whatever interrupted it.
                fail(d.what(), "discarded by its handler");
            } catch (const cancel_job& x) {
                c.what = outcome::cancelled;
                c.reason = std::string("cancelled by its handler: ") + x.what();
                log->info("Job {} ({}) cancelled by its handler: {}", j.id, j.kind, x.what());
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
                case cause::lost: break; // not recorded: see below
                case cause::none:
                    if (kind && !kind->options.retry.retries(e))
                        fail(hosting::detail::describe(e), "its kind never retries this error");
                    else
                        fail(hosting::detail::describe(e));
                    break;
                }
            }
        }
        // A handler's message may hold any bytes; a job's history holds
        // JSON text (in SQLite and PostgreSQL alike), which the bytes that
        // are not UTF-8 would damage or have refused.
        for (auto* text : {&c.error, &c.reason})
            if (!detail::json_safe(*text))
                *text = detail::valid_text(*text);
        --running_in_queue[j.queue];
        --running_of_kind[j.kind];
        const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - a.started).count();
        weigh(mean_run_seconds, took);
        if (metrics && !a.lost) { // a lost run's end is not recorded, nor counted
            auto& m = metrics_for(j.kind, j.queue);
            m.duration->observe(took);
            if (c.what == outcome::succeeded)
                m.succeeded->inc();
            else if (c.what == outcome::failed)
                m.failed->inc();
            else if (c.what == outcome::retry)
                m.retried->inc();
        }
        if (a.lost)
            log->warn("Job {} ({}) attempt {} stopped after its lease was lost; its end is not recorded here",
                      j.id, j.kind, j.attempt);
        else if (finished)
            send_late(std::move(c));
        else
            done.push_back(std::move(c));
        running.erase(j.id); // `a` may die here: nothing below touches it
        start_ready();
        wake();
        if (idle_event)
            idle_event->cancel();
    }

    // The renewal found that this node no longer holds the job: its lease
    // ran out and another node recovered it. It is not started, its run is
    // stopped, and nothing of it is recorded: it is another node's now.
    void lose(job_id id)
    {
        // A run already lost may have a new claim of the job waiting in the
        // buffer behind it: that one is what this loss is about.
        if (auto it = running.find(id); it != running.end() && !it->second->lost) {
            log->warn("Job {} ({}) lost its lease while it ran here (this process or its storage stalled for longer "
                      "than the lease); its handler is asked to stop",
                      id, it->second->j.kind);
            // Whatever else was stopping it (a timeout, the shutdown), its
            // end is not this node's to record any more.
            it->second->lost = true;
            interrupt(*it->second, cause::lost);
            return;
        }
        if (auto b = std::find_if(buffered.begin(), buffered.end(), [&](const job& x) { return x.id == id; });
            b != buffered.end()) {
            log->warn("Job {} ({}) lost its lease before it started here; it is not started", id, b->kind);
            --buffered_in_queue[b->queue];
            --buffered_of_kind[b->kind];
            buffered.erase(b);
            return;
        }
        std::erase_if(done, [&](const completion& c) { return c.id == id; });
    }

    // A completion after execute() ended: committed on its own.
    void send_late(completion c)
    {
        engine->submit([e = engine.get(), c = std::move(c), log = log](storage& s) {
            try {
                claim_request none; // completes this node's attempt, claims nothing
                none.node = e->node();
                e->complete_and_claim(s, std::span<const completion>(&c, 1), none, e->now());
            } catch (const std::exception& ex) {
                // Not renewed any more: its lease runs out, and another node
                // (or this one's next start) recovers it.
                e->forget(c.id, c.attempt);
                log->error("Job {}: its completion after the server stopped failed: {}; it is recovered once its "
                           "lease runs out",
                           c.id, ex.what());
            }
        });
    }

    // A cancel() for a job this node holds: stop it, or drop it from the buffer.
    void cancel_local(job_id id)
    {
        if (auto it = running.find(id); it != running.end()) {
            interrupt(*it->second, cause::cancel);
            // A run already lost may have a new claim of the job waiting in
            // the buffer behind it: that one is what the cancel is about.
            if (!it->second->lost)
                return;
        }
        for (auto it = buffered.begin(); it != buffered.end(); ++it) {
            if (it->id != id)
                continue;
            --buffered_in_queue[it->queue];
            --buffered_of_kind[it->kind];
            done.push_back({it->id, it->attempt, outcome::cancelled, {}, {}, "cancelled before it started"});
            buffered.erase(it);
            wake();
            return;
        }
    }

    // Deletes finished jobs past their retention, a batch per transaction so
    // that claims interleave with it.
    asio::awaitable<void> prune()
    {
        const auto& keep = options().retention;
        const std::pair<job_state, std::optional<std::chrono::milliseconds>> rules[] = {
            {job_state::succeeded, keep.succeeded},
            {job_state::cancelled, keep.cancelled},
            {job_state::deleted, keep.deleted},
            {job_state::failed, keep.failed},
        };
        std::size_t total = 0;
        for (const auto& [state, age] : rules) {
            if (!age)
                continue;
            // The stop ends it between batches: what is left waits for the
            // next start, and the host's stop does not wait for it.
            for (int round = 0; round < 100 && !stopping; ++round) {
                std::function<std::size_t(storage&)> batch = [state = state, at = now(), age = *age,
                                                              limit = keep.batch](storage& s) {
                    return s.prune(state, at - age, limit, at);
                };
                const auto n = co_await engine->call<std::size_t>(std::move(batch));
                total += n;
                if (n < keep.batch)
                    break;
            }
        }
        if (total > 0)
            log->info("Pruned {} finished jobs past their retention", total);
    }

    // The completions in flight, kept until their transaction committed: a
    // failed call puts them back, or their jobs would stay running (and
    // leased by this node's heartbeat) for as long as the process lives.
    std::shared_ptr<std::vector<completion>> in_flight;
    // Set once a claim went through: until then each claim first recovers
    // what this node's id held in an earlier process.
    bool taken_back = false;

    // The claim left standing in the engine comes back: withdrawn, or, when
    // enqueues took it, once its jobs arrive here.
    asio::awaitable<void> settle_standing()
    {
        if (standing && engine->withdraw())
            standing = false;
        while (standing) {
            wake_timer->expires_at(asio::steady_timer::time_point::max());
            boost::system::error_code ec;
            co_await wake_timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
    }

    // What the standing claim took, when enqueues made it.
    void standing_claimed(std::vector<job> claimed)
    {
        standing = false;
        accept(std::move(claimed));
        wake();
    }

    void restore_in_flight()
    {
        if (in_flight && !in_flight->empty())
            done.insert(done.begin(), in_flight->begin(), in_flight->end());
        in_flight.reset();
    }

    std::function<std::pair<std::vector<job>, std::optional<time_point>>(storage&)> claim_op()
    {
        in_flight = std::make_shared<std::vector<completion>>(std::exchange(done, {}));
        // Every claim says which runs started since the last one (at most
        // the workers), so that renewals can tell the storage.
        std::vector<held_lease> started;
        for (auto& [id, a] : running)
            if (!std::exchange(a->reported, true))
                started.push_back({id, a->j.attempt, true});
        return [e = engine.get(), d = in_flight, c = make_claim(), take_back = !taken_back, log = log,
                started = std::move(started)](storage& s) mutable {
            e->note_started(started);
            // A fixed node_id (a StatefulSet pod's name) that restarted: what
            // its previous process held would stay running forever, its
            // leases renewed by this process's heartbeats.
            if (take_back) {
                if (const auto n = s.recover_node(c.node, e->now()).size(); n > 0)
                    log->warn("Node {} started again: {} jobs its previous process held were recovered", c.node, n);
            }
            // The lease runs from when the claim is sent, not from when it
            // was queued: a claim that waited behind other storage calls
            // (another process's write lock, a long batch) would store
            // leases that run out at once, or have run out already, and
            // another node could take its jobs as they start here.
            std::vector<job_id> waiting;
            auto claimed = e->settle_and_claim(s, *d, std::move(c), waiting);
            for (const auto id : waiting)
                log->warn("Job {}: its completion waits on a row another transaction holds (such as an "
                          "application's open transaction that enqueued a continuation of it); the node's other "
                          "completions and claims go on without it, and it is tried again every lease_duration",
                          id);
            // Only an idle server sleeps, and needs to know until when.
            auto due = claimed.empty() ? s.next_due() : std::nullopt;
            return std::make_pair(std::move(claimed), due);
        };
    }
};

namespace {
// What the release of unfinished jobs needs after the grace: one commit.
constexpr std::chrono::milliseconds release_margin{500};
} // namespace

server::server(service_provider& provider, std::shared_ptr<detail::engine> engine)
    : engine_(std::move(engine)),
      provider_(&provider),
      metrics_(provider.try_get<metrics_registry>()),
      grace_(engine_->options().shutdown_grace)
{
    // The grace runs inside the host's deadline: one that does not fit would
    // have the host abandon the server before it puts its jobs back, and
    // they would wait for their leases to expire instead. A host may want a
    // short deadline (0 cancels at once), so the grace is cut to fit, and
    // execute() says so.
    if (const auto* host = provider.try_get<host_options>()) {
        const auto room = host->shutdown_timeout - host->shutdown_delay - release_margin;
        const auto fits = std::max(std::chrono::milliseconds::zero(), room);
        if (grace_ > fits) {
            grace_note_ = "The jobs server's shutdown_grace of " + ms_text(grace_) + " is cut to " + ms_text(fits) +
                          ", to fit the host's shutdown_timeout (" + ms_text(host->shutdown_timeout) +
                          ") minus its shutdown_delay (" + ms_text(host->shutdown_delay) + ") minus " +
                          ms_text(release_margin) + " to release unfinished jobs";
            grace_ = fits;
        }
    }
}
server::~server() = default;

const std::string& server::node_id() const noexcept { return engine_->node(); }

void server::wake()
{
    if (auto r = run_.load())
        r->poke();
}

asio::awaitable<void> server::execute(std::stop_token stopping)
{
    auto r = std::make_shared<run>();
    r->engine = engine_;
    r->log = service_logger();
    if (!r->log)
        r->log = std::make_shared<spdlog::logger>("hosting.jobs"); // outside a host: silent
    if (!grace_note_.empty())
        r->log->warn("{}", grace_note_);
    r->ex = co_await asio::this_coro::executor;
    r->wake_timer.emplace(r->ex);
    r->metrics = metrics_;
    r->provider = provider_;
    if (metrics_) {
        metrics_->add_collector([counts = r->state_counts](metrics_writer& out) {
            for (std::size_t i = 0; i < job_state_count; ++i)
                out.gauge("hosting_jobs", "Jobs in storage by state, as of the last heartbeat",
                          {{"state", std::string(to_string(static_cast<job_state>(i)))}},
                          static_cast<double>(counts.get()[i].load()));
        });
    }
    run_.store(r);
    std::weak_ptr<run> weak = r;
    const auto liveness = hosting::detail::liveness_of(asio::query(r->ex, asio::execution::context));
    engine_->set_waker([weak, liveness] { run::post_from_outside(weak, liveness, [](run& alive) { alive.wake(); }); });
    engine_->set_local_cancel([weak, liveness](job_id id) {
        run::post_from_outside(weak, liveness, [id](run& alive) { alive.cancel_local(id); });
    });
    auto tell_stop = [weak, liveness] { run::post_from_outside(weak, liveness, [](run& alive) { alive.begin_stop(); }); };
    std::stop_callback<decltype(tell_stop)> told(stopping, std::move(tell_stop));
    // Kept after execute() ends, for handlers that outlive the grace. When
    // the server or the host's io_context is gone, so are those handlers:
    // the engine then lets their leases run out.
    engine_->set_renewal_listener([weak, liveness](detail::engine::renewal_report report) {
        return run::post_from_outside(weak, liveness, [report = std::move(report)](run& alive) {
            if (report.announce_error)
                alive.log->warn("Jobs server: announcing this node failed: {}",
                                hosting::detail::describe(report.announce_error));
            if (report.error) {
                alive.log->error("Jobs lease renewal failed: {}", hosting::detail::describe(report.error));
                return;
            }
            for (auto id : report.found.lost)
                alive.lose(id);
            for (auto id : report.found.cancel_requested)
                alive.cancel_local(id);
            if (report.renewed_until)
                alive.renewed_until = *report.renewed_until;
            alive.start_ready(); // buffered jobs wait for a renewal when their claim's lease ran out
        });
    });
    engine_->options().clock->on_change(
        [weak, liveness] { run::post_from_outside(weak, liveness, [](run& alive) { alive.wake(); }); });
    {
        node_info self;
        self.id = engine_->node();
        char host[256] = {};
        ::gethostname(host, sizeof host - 1);
        self.host = host;
        self.pid = ::getpid();
        self.workers = engine_->options().workers;
        for (const auto& q : engine_->options().queues) {
            self.queues.push_back(q.name);
            self.queue_limits.push_back(q.concurrency);
        }
        self.started_at = r->now();
        engine_->set_node(std::move(self));
    }
    if (engine_->kinds().empty())
        r->log->warn("The jobs server has no kinds registered; it will claim nothing");
    r->log->info("Jobs server {} started: {} workers, queues {}", engine_->node(), engine_->options().workers,
                 [&] {
                     std::string q;
                     for (const auto& o : engine_->options().queues)
                         q += (q.empty() ? "" : ", ") + o.name;
                     return q;
                 }());

    // Housekeeping, every heartbeat_interval: recover the jobs of nodes that
    // died, count the jobs, prune. (Leases are renewed by the engine.)
    auto housekeeping = [r]() -> asio::awaitable<void> {
        asio::steady_timer timer(r->ex);
        auto next_prune = std::chrono::steady_clock::now();
        auto next_survey = std::chrono::steady_clock::now();
        // The cost of the last look for unknown kinds, which scans the
        // available jobs: it runs at most 2% of the time, so that a deep
        // backlog does not keep the storage thread from claims.
        auto survey_cost = std::make_shared<std::atomic<std::int64_t>>(0);
        // Fixed once the host runs: not copied for every beat.
        const auto known = std::make_shared<const std::vector<std::string>>(r->engine->kind_names());
        for (;;) {
            timer.expires_after(r->options().heartbeat_interval);
            co_await timer.async_wait(asio::use_awaitable);
            const auto now = r->now();
            const bool survey = std::chrono::steady_clock::now() >= next_survey;
            std::function<std::size_t(storage&)> beat =
                [node = r->engine->node(), now, known, counts = r->state_counts, survey, survey_cost](storage& s) {
                    auto recovered = s.recover_expired(now);
                    if (survey) {
                        const auto began = std::chrono::steady_clock::now();
                        s.flag_unknown_kinds(*known, node, now);
                        *survey_cost = (std::chrono::steady_clock::now() - began).count();
                    }
                    const auto c = s.counts();
                    for (std::size_t i = 0; i < job_state_count; ++i)
                        counts.get()[i] = c.by_state[i];
                    return recovered.size();
                };
            try {
                const auto recovered = co_await r->engine->call<std::size_t>(std::move(beat));
                if (survey)
                    next_survey = std::chrono::steady_clock::now() +
                                  std::max<std::chrono::steady_clock::duration>(
                                      r->options().heartbeat_interval,
                                      std::chrono::steady_clock::duration(*survey_cost * 50));
                if (recovered > 0)
                    r->log->warn("Recovered {} jobs whose node's lease expired", recovered);
                // Other processes may have changed the recurring jobs.
                r->recurring_dirty = true;
                r->poke();
                const auto& prune_if = r->options().retention.prune_if;
                bool prune_now = false;
                if (std::chrono::steady_clock::now() >= next_prune && !r->pruning) {
                    try {
                        prune_now = !prune_if || prune_if();
                    } catch (const std::exception& e) {
                        r->log->error("Jobs pruning: retention.prune_if threw: {}; asked again in {}", e.what(),
                                      ms_text(r->options().retention.interval));
                        next_prune = std::chrono::steady_clock::now() + r->options().retention.interval;
                    }
                }
                if (prune_now) {
                    // On its own: a long prune must not hold up lease renewals.
                    next_prune = std::chrono::steady_clock::now() + r->options().retention.interval;
                    r->pruning = true;
                    asio::co_spawn(r->ex, r->prune(), [r](std::exception_ptr e) {
                        r->pruning = false;
                        if (e && !is_cancellation(e))
                            r->log->error("Jobs pruning failed: {}", hosting::detail::describe(e));
                    });
                }
            } catch (const std::exception& e) {
                if (is_cancellation(std::current_exception()))
                    throw; // the stop
                // Whatever else failed, the next beat tries again:
                // housekeeping that ended would leave dead nodes' jobs
                // unrecovered.
                r->log->error("Jobs housekeeping failed: {}", e.what());
            }
        }
    };
    asio::co_spawn(r->ex, std::move(housekeeping),
                   asio::bind_cancellation_slot(r->housekeeping_stop.slot(), [](std::exception_ptr) {}));

    std::exception_ptr fault;
    try {
        while (!stopping.stop_requested()) {
            r->woken = false;
            if (r->recurring_dirty || (r->next_recurring && *r->next_recurring <= r->now())) {
                r->recurring_dirty = false;
                std::function<recurring_result(storage&)> pass =
                    [e = engine_.get(), at = r->now(), tolerance = std::chrono::duration_cast<clock::duration>(
                                                     engine_->options().heartbeat_interval * 2)](storage& s) {
                        return recurring_pass(s, *e, at, tolerance);
                    };
                try {
                    auto fired = co_await engine_->call<recurring_result>(std::move(pass));
                    r->next_recurring = fired.next;
                    for (const auto& error : fired.errors)
                        r->log->error("Jobs scheduler: {}", error);
                } catch (const storage_error& e) {
                    r->log->error("Jobs scheduler: the storage call failed: {}", e.what());
                    // Tried again after a poll interval, not at once: with a
                    // due time in the past, the loop would try again, and
                    // log, as fast as the storage can fail.
                    r->next_recurring = r->now() + std::chrono::duration_cast<clock::duration>(
                                                       engine_->options().poll_interval);
                }
                if (stopping.stop_requested())
                    break;
            }
            if (const auto wait = r->hold()) {
                // A completion wakes the loop again, or the hold ends.
                r->wake_timer->expires_after(*wait);
                boost::system::error_code ec;
                co_await r->wake_timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
                continue;
            }
            auto op = r->claim_op();
            std::pair<std::vector<job>, std::optional<time_point>> result;
            try {
                const auto sent = std::chrono::steady_clock::now();
                result = co_await engine_->call<std::pair<std::vector<job>, std::optional<time_point>>>(std::move(op));
                run::weigh(r->mean_transaction_seconds,
                           std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count());
                r->restore_in_flight(); // those that wait on another transaction's row, for the next call
                r->taken_back = true;
            } catch (const storage_error& e) {
                // The storage is unreachable: keep the completions for the
                // next try, after a poll interval.
                r->log->error("Jobs storage call failed: {}", e.what());
                r->restore_in_flight();
            }
            const bool claimed_any = !result.first.empty();
            const auto next_due = result.second;
            r->accept(std::move(result.first));
            if (r->woken || claimed_any)
                continue;
            auto wait = std::chrono::duration_cast<clock::duration>(engine_->options().poll_interval);
            if (next_due)
                wait = std::min(wait, std::max(clock::duration::zero(), *next_due - r->now()));
            if (r->next_recurring)
                wait = std::min(wait, std::max(clock::duration::zero(), *r->next_recurring - r->now()));
            // Idle with room: the claim waits in the engine, where the next
            // enqueue of this process takes it into its own transaction.
            if (r->taken_back && r->done.empty()) {
                auto c = r->make_claim();
                if (c.total > 0) {
                    r->standing = true;
                    engine_->stand({std::move(c), [weak, liveness](std::vector<job> claimed) {
                                        run::post_from_outside(weak, liveness, [claimed = std::move(claimed)](
                                                                                   run& alive) mutable {
                                            alive.standing_claimed(std::move(claimed));
                                        });
                                    }});
                }
            }
            r->wake_timer->expires_after(wait);
            boost::system::error_code ec;
            co_await r->wake_timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
            co_await r->settle_standing();
        }
    } catch (...) {
        // A fault still goes through the shutdown below (housekeeping
        // stopped, jobs released), then ends execute with its exception.
        // Completions of a call that failed go with the release: left
        // where they were, the next call would drop them, and their jobs
        // stay running, renewed, for as long as the process lives.
        r->restore_in_flight();
        if (!stopping.stop_requested() || !is_cancellation(std::current_exception()))
            fault = std::current_exception();
    }

    // Stopping: no more claims; running jobs are asked to stop and get the
    // grace period; the jobs not started go back to available. After a
    // fault the host's stop may come during the grace and cancel its wait:
    // that wakes the wait, which goes on, rather than throwing at the next
    // co_await and leaving the buffer unreleased and the handlers' ends
    // unsent.
    co_await asio::this_coro::reset_cancellation_state();
    co_await asio::this_coro::throw_if_cancelled(false);
    // The handlers hear first (if the stop token's callback has not told
    // them already): the standing claim may be in an enqueue's transaction
    // that the storage holds, and their grace runs meanwhile.
    r->begin_stop();
    const auto grace_end = r->stop_began + grace_;
    // Its jobs, if enqueues took it, are released below with the buffer.
    co_await r->settle_standing();
    r->housekeeping_stop.emit(asio::cancellation_type::terminal);
    r->idle_event.emplace(r->ex, asio::steady_timer::time_point::max());
    while (!r->running.empty() && std::chrono::steady_clock::now() < grace_end) {
        r->idle_event->expires_at(grace_end);
        boost::system::error_code ec;
        co_await r->idle_event->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    // A handler still running after the grace keeps its job: released, the
    // job could start on another node while this one still runs it. The
    // engine renews its lease until it ends (and sends its completion) or
    // the process exits (and the lease runs out).
    const auto outlived = r->running.size();
    for (auto& j : r->buffered)
        r->done.push_back({j.id, j.attempt, outcome::released, {}, {}, "released: the server stopped"});
    r->buffered.clear();
    // From here a handler that ends sends its own completion.
    r->finished = true;
    auto op = r->claim_op();
    try {
        co_await engine_->call<std::pair<std::vector<job>, std::optional<time_point>>>(std::move(op));
    } catch (const std::exception& e) {
        // Once more, each on its own, or the jobs would stay held (and their
        // leases renewed) for as long as this process lives.
        r->log->error("Jobs server: releasing its jobs failed: {}; trying once more", e.what());
    }
    // What was not recorded (a call that failed, or a completion that waits
    // on another transaction's row) goes on its own.
    for (auto& c : *r->in_flight)
        r->send_late(std::move(c));
    r->in_flight.reset();
    if (outlived > 0)
        r->log->warn("{} jobs did not stop within the shutdown grace; they keep their leases until their handlers "
                     "end or the process exits",
                     outlived);
    engine_->set_waker({});
    engine_->set_local_cancel({});
    engine_->clear_node();
    r->log->info("Jobs server {} stopped", engine_->node());
    if (fault)
        std::rethrow_exception(fault);
}

jobs_registration add_jobs(host_builder& builder, std::shared_ptr<storage> store, server_options options)
{
    auto engine = std::make_shared<detail::engine>(std::move(store), std::move(options));
    builder.services().add_singleton<client>(std::make_shared<client>(engine));
    builder.services().add_hosted_service<server>(engine).name("hosting.jobs");
    // Readiness depends on the storage: a server that cannot reach it must
    // not receive traffic that enqueues.
    add_health_checks(builder).add_check(
        "jobs_storage",
        [engine](std::stop_token) -> asio::awaitable<health_check_result> {
            if (auto why = engine->write_failure(); !why.empty())
                co_return health_check_result::unhealthy("writes fail: " + why);
            std::function<job_counts(storage&)> fn = [](storage& s) { return s.counts(); };
            auto counts = co_await engine->call<job_counts>(std::move(fn), detail::engine::lane::reads);
            co_return health_check_result::healthy(
                "reachable", {{"available", std::to_string(counts[job_state::available])},
                              {"running", std::to_string(counts[job_state::running])},
                              {"failed", std::to_string(counts[job_state::failed])}});
        },
        {std::string(health_tags::ready), "jobs"}, std::chrono::seconds(5));
    return jobs_registration(engine);
}

} // namespace hosting::jobs
