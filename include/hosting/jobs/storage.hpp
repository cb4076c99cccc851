// jobs/storage.hpp: where jobs live. The engine's whole contract with a
// database, shaped so that SQLite (one writer, no group commit) and
// PostgreSQL (SKIP LOCKED claims, LISTEN/NOTIFY) can both serve it well:
// every call is one transaction, and the calls that matter for throughput
// take batches.
#pragma once

#include <hosting/jobs/job.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace hosting::jobs {

struct enqueue_request {
    std::string kind;
    std::string queue;
    std::string args;
    int priority = 0;
    int max_attempts = 1;
    std::chrono::milliseconds timeout{0};
    std::optional<time_point> run_at; // none: available now
    std::string unique_key;
    state_set unique_states = default_unique_states;
    bool unique_across_kinds = false; // else the key is only compared with jobs of the same kind
    std::string concurrency_key;
    job_id parent_id = 0; // a continuation: awaiting until its parent is final
    continuation_condition condition = continuation_condition::on_success;
    std::string recurring_id;
    std::string reason = "enqueued";
};

// Throws std::invalid_argument naming what is wrong with a request: an
// empty kind or queue, max_attempts below 1, a negative timeout, or a
// unique key whose unique_states leave out a state that is not final. The
// client checks each request it makes; postgres_storage::
// enqueue_in_transaction checks those an application makes itself.
void validate_request(const enqueue_request& r);

// What a storage compares for uniqueness: the key within its kind, or
// across kinds. The kind's length comes first so that no kind and key can
// spell another's; '*' is no digit, so a key across kinds spells no kind's.
inline std::string unique_slot(const std::string& kind, const std::string& key, bool across_kinds)
{
    if (key.empty())
        return {};
    return across_kinds ? "*" + key : std::to_string(kind.size()) + ":" + kind + key;
}

struct enqueue_result {
    job_id id = 0;
    bool created = false; // false: a job with the unique key was returned
    std::string error;    // this one job was refused (its parent does not exist)
};

// How a claimed attempt ended.
enum class outcome : std::uint8_t {
    succeeded,
    retry,     // failed with attempts left: retryable at run_at
    failed,    // failed for good
    cancelled, // cancel() reached it
    snoozed,   // asked to run later: scheduled at run_at, the attempt not counted
    released,  // not finished at shutdown: available again, the attempt not counted
};

// What an outcome does to its job, for every storage alike (unless a cancel
// or a delete was requested while it ran, from any process: then the job
// ends cancelled or deleted whatever the outcome, its attempt kept).
struct outcome_effect {
    job_state to;
    int attempt_delta; // -1: the attempt does not count
    bool uses_run_at;  // the completion's run_at becomes the job's
};

constexpr outcome_effect effect_of(outcome what)
{
    switch (what) {
    case outcome::succeeded: return {job_state::succeeded, 0, false};
    case outcome::retry: return {job_state::retryable, 0, true};
    case outcome::failed: return {job_state::failed, 0, false};
    case outcome::cancelled: return {job_state::cancelled, 0, false};
    case outcome::snoozed: return {job_state::scheduled, -1, true};
    case outcome::released: return {job_state::available, -1, false};
    }
    return {job_state::failed, 0, false};
}

// What a parent's state does to a continuation awaiting it, for every
// storage alike (see continuation_condition): it waits while the parent can
// still meet its condition, runs (becomes available) once the parent has,
// and is dropped (deleted) once the parent has settled so that it cannot.
// Storages apply it whenever a parent reaches a final state, and to a
// continuation enqueued under a parent that already has one. A continuation
// still waiting when its parent is pruned is dropped too.
enum class continuation_fate : std::uint8_t { wait, run, drop };

constexpr continuation_fate fate_of(continuation_condition condition, job_state parent)
{
    switch (condition) {
    case continuation_condition::on_success:
        return parent == job_state::succeeded ? continuation_fate::run
               : parent == job_state::deleted ? continuation_fate::drop
                                              : continuation_fate::wait;
    case continuation_condition::on_any_final:
        return is_final(parent) ? continuation_fate::run : continuation_fate::wait;
    case continuation_condition::on_deleted:
        return parent == job_state::deleted     ? continuation_fate::run
               : parent == job_state::succeeded ? continuation_fate::drop
                                                : continuation_fate::wait;
    }
    return continuation_fate::wait;
}

// What a transition asked for from outside the engine (storage::
// change_state) does, for every storage alike: cancelling or deleting a
// running job only asks its node to stop it (its completion then ends it,
// and until then it keeps its lease and its concurrency key); available
// means a requeue, which only a job that ended can have (a running one would
// end up with two runs). Only a claim starts a run and only its node ends
// it: running is never a target from outside (the job would have no node
// and no lease), and a running job takes no other change (its handler would
// go on with its end already written). Anything else the state machine
// forbids throws invalid_transition too.
enum class outside_change : std::uint8_t { stop_running, requeue, transition };

inline outside_change outside_change_of(job_id id, job_state from, job_state to)
{
    if (from == job_state::running && (to == job_state::cancelled || to == job_state::deleted))
        return outside_change::stop_running;
    if (to == job_state::running)
        throw invalid_transition(id, from, to, "only a claim starts a run");
    if (from == job_state::running && can_transition(from, to))
        throw invalid_transition(id, from, to, "only its node ends a run (cancelling or deleting asks it to stop)");
    if (!can_transition(from, to) || (to == job_state::available && !is_final(from)))
        throw invalid_transition(id, from, to);
    return to == job_state::available ? outside_change::requeue : outside_change::transition;
}

// Matched against the claim: a completion from a node whose lease was lost
// (the job recovered and claimed again elsewhere) changes nothing.
struct completion {
    job_id id = 0;
    int attempt = 0; // the attempt the claim started
    outcome what = outcome::succeeded;
    time_point run_at{}; // retry and snoozed
    std::string error;   // retry, failed
    std::string reason;
};

// What a claim may take: up to `count` jobs of each queue, of the kinds this
// node knows, and up to `total` in all. Queues are served in this order, so
// earlier queues win, and what an earlier queue leaves goes to later ones.
// Every storage chooses the same jobs: in each queue, the available jobs by
// priority, run_at and id, passing over those of unknown kinds, those whose
// concurrency key a running job holds (or a job this claim took before, in
// any queue) and those of a kind whose cap the claim has reached, however
// many of them come first: a backlog of limited jobs never hides the jobs
// behind it from a free worker.
struct claim_request {
    std::string node;
    std::vector<std::pair<std::string, std::size_t>> queues;
    std::vector<std::string> kinds;
    time_point lease_until{};
    std::size_t total = std::numeric_limits<std::size_t>::max();
    // At most this many jobs of these kinds, in all queues (a kind's
    // concurrency limit, less what the node holds of it); other kinds have
    // no cap of their own.
    std::vector<std::pair<std::string, std::size_t>> kind_caps{};
};

// A job a node believes it holds: the attempt its claim started, and
// whether its handler has started (a claim runs ahead of the workers).
struct held_lease {
    job_id id = 0;
    int attempt = 0;
    bool started = false;
};

struct lease_renewal {
    std::vector<job_id> cancel_requested; // held, and cancel() or delete_job() asked to stop them
    std::vector<job_id> lost;             // no longer held by this node at this attempt
};

struct job_filter {
    std::optional<job_state> state{};
    std::optional<std::string> queue{};
    std::optional<std::string> kind{};
    std::size_t limit = 100;
    std::size_t offset = 0;
    bool with_history = false;
    // Newest first (by id, descending) rather than oldest first.
    bool newest_first = false;
    // Keyset paging: only jobs whose id is below `before` (newest first)
    // or above `after` (oldest first), when not 0. A page that ended at id
    // N asks for the next with before = N: unlike an offset, it costs the
    // same on the millionth page as on the first, and jobs added meanwhile
    // never shift it.
    job_id before = 0;
    job_id after = 0;
    // Only the continuations of this job, when not 0 (an index serves it).
    job_id parent = 0;
};

// How many jobs of one kind in one queue are in one state: kept by the
// storage as jobs change, so reading them never scans the jobs.
struct queue_kind_count {
    std::string queue;
    std::string kind;
    job_state state = job_state::available;
    std::int64_t count = 0;
};

// A server process, as it announces itself with each lease renewal.
struct node_info {
    std::string id;
    std::string host;
    std::int64_t pid = 0;
    std::size_t workers = 0;
    std::vector<std::string> queues;
    // Each queue's limit on this node (queue_options::concurrency), in the
    // order of `queues`; 0: up to its workers. Empty from a node that did
    // not say.
    std::vector<std::size_t> queue_limits{};
    time_point started_at{};
    time_point heartbeat_at{};
    std::int64_t running = 0; // jobs it holds (claimed, started or not); list_nodes() fills it
};

struct job_counts {
    std::array<std::int64_t, job_state_count> by_state{};
    std::int64_t operator[](job_state s) const noexcept { return by_state[static_cast<std::size_t>(s)]; }
};

// A backlog never makes a write longer than this many rows: due jobs are
// made available, and jobs of unknown kinds noted, this many at a time, and
// the engine commits at most this many enqueues together. So another
// process's lease renewal waits a fraction of the lease (5,000 rows are
// tens of milliseconds of SQLite's time, against a 10-second lease), never
// for the backlog. Writes the running jobs size (a dead node's recovery, a
// parent's continuations) are not cut.
inline constexpr std::size_t max_rows_per_write = 5000;

class storage_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A write that waited past the storage's bound for a row another
// transaction holds (an application's uncommitted job with the same unique
// key, or a job it is changing), and was rolled back whole: nothing of it
// happened, and it may succeed once that transaction ends. Only a storage
// that locks rows throws it (PostgreSQL); SQLite's lock is the whole file,
// and its wait ends in a plain storage_error.
class row_lock_timeout : public storage_error {
public:
    using storage_error::storage_error;
};

// Each call is one transaction (enqueue_and_claim's default is two) and
// either fully happens or throws storage_error. Implementations are safe to
// call from several threads (the engine calls each from one thread at a
// time, off the host's loop).
class storage {
public:
    virtual ~storage() = default;

    // Inserts the jobs, honouring unique keys, and returns one result per
    // request in order. An id is never given twice, even after the job that
    // had it was pruned: it is the job's idempotency key.
    virtual std::vector<enqueue_result> enqueue(std::span<const enqueue_request> jobs, time_point now) = 0;

    // Records the completions (those of claim.node's own running attempts),
    // makes due scheduled and retryable jobs available (at most
    // max_rows_per_write, the earliest due first; the rest on the calls that
    // follow, which next_due() then says are due), then claims jobs for
    // `claim` (marking them running under
    // its lease, attempt + 1): the engine's hot path, fused so that a drain
    // costs one commit per batch.
    virtual std::vector<job> complete_and_claim(std::span<const completion> done, const claim_request& claim,
                                                time_point now) = 0;

    // Inserts the jobs as enqueue() does, then claims as complete_and_claim()
    // does with no completions: what the engine calls when jobs are
    // enqueued beside an idle server of the same process, so that one of
    // them starts after one commit rather than two. A storage that can
    // make it one transaction overrides it; this default makes the two
    // calls, and a claim that fails after the enqueue committed claims
    // nothing (the server's next claim meets the error again).
    struct enqueued_and_claimed {
        std::vector<enqueue_result> enqueued;
        std::vector<job> claimed;
    };
    virtual enqueued_and_claimed enqueue_and_claim(std::span<const enqueue_request> jobs, const claim_request& claim,
                                                   time_point now)
    {
        enqueued_and_claimed out;
        out.enqueued = enqueue(jobs, now);
        try {
            out.claimed = complete_and_claim({}, claim, now);
        } catch (const storage_error&) {
        }
        return out;
    }

    // The node is alive: extends to `lease_until` the lease of each job it
    // holds (claimed by it, with that attempt, and still running), notes
    // those whose handler started (see recover_expired), and
    // says which of them cancel() asked to stop and which it no longer
    // holds (their lease expired and another node recovered them, or a
    // restart of its id took them back): those it must neither start nor
    // let run. Rows the node does not name are left alone, so a renewal
    // never revives a lease by owner alone.
    virtual lease_renewal renew_leases(const std::string& node, std::span<const held_lease> held,
                                       time_point lease_until, time_point now) = 0;

    // Running jobs whose lease expired before `now` (their node died) become
    // available again; returns them. The claim charged each an attempt; a
    // job whose start its node never reported (renew_leases, started) gets
    // it back, once in the job's life: a node that dies holding jobs it
    // claimed ahead charges none of them, while a job that kills its node
    // as it starts (before a renewal reports it) is charged at least every
    // other time, and so still runs out of attempts.
    virtual std::vector<job_id> recover_expired(time_point now) = 0;

    // A node id starts again (a fixed node_id: a StatefulSet pod's name, a
    // systemd instance): the running jobs its previous process held are
    // recovered as recover_expired() recovers them (their attempts too),
    // whatever their leases say; returns them. The server calls it before its first claim.
    virtual std::vector<job_id> recover_node(const std::string& node, time_point now) = 0;

    // A transition asked for from outside the engine (cancel, delete_job,
    // requeue). Throws job_not_found or invalid_transition. Cancelling or
    // deleting a running job only sets cancel_requested (and
    // delete_requested): the job keeps its lease and its concurrency key
    // until the node that runs it has stopped it, and its completion (of any
    // outcome: a retry, a snooze or a release too), or the recovery of its
    // expired lease, then ends it cancelled or deleted.
    // Returns the state the job is in afterwards.
    virtual job_state change_state(job_id id, job_state to, const std::string& reason, time_point now) = 0;

    // What change_states did to one job: the state it is in afterwards, or
    // why it was refused (no such job, or a transition it may not make).
    struct state_change_result {
        job_id id = 0;
        std::optional<job_state> state{};
        std::string error{};
    };
    // Changes each job as change_state does, in one transaction (callers
    // keep a batch to max_rows_per_write): a job refused is refused alone,
    // with why, and the others go ahead; a storage failure fails them all.
    // The default calls change_state for each, one transaction each.
    virtual std::vector<state_change_result> change_states(std::span<const job_id> ids, job_state to,
                                                           const std::string& reason, time_point now)
    {
        std::vector<state_change_result> out;
        for (const auto id : ids)
            out.push_back(change_one(id, [&] { return change_state(id, to, reason, now); }));
        return out;
    }

    virtual std::optional<job> find(job_id id, bool with_history = true) = 0;
    virtual std::vector<job> list(const job_filter& filter) = 0;
    virtual job_counts counts() = 0;
    // The non-zero counts by queue, kind and state.
    virtual std::vector<queue_kind_count> counts_by_queue_and_kind() = 0;

    // Nodes: a server announces itself with every renewal (an upsert), and
    // removes itself when it stops; list_nodes() gives every announced node
    // with how many jobs it holds, whoever reads it judging from
    // heartbeat_at whether it still lives. A node silent for a day is
    // dropped by the next announce.
    virtual void announce_node(const node_info& node, time_point now) = 0;
    virtual void remove_node(const std::string& id) = 0;
    virtual std::vector<node_info> list_nodes() = 0;

    // A paused queue's jobs are not claimed by any node (those running go
    // on) until it is resumed; enqueues into it go on too. Pausing twice or
    // resuming a queue that is not paused changes nothing.
    virtual void set_queue_paused(const std::string& queue, bool paused, time_point now) = 0;
    virtual std::vector<std::string> paused_queues() = 0;

    // When the next scheduled or retryable job is due, if any.
    virtual std::optional<time_point> next_due() = 0;

    // Deletes up to `limit` jobs in `state` that reached it before `before`
    // (one batch, so that pruning never holds the write lock for long);
    // returns how many. A storage whose ids come from its newest row (SQLite)
    // keeps the newest job until a newer one exists, or its id would be given
    // again. Continuations still awaiting a pruned job (one that failed or
    // was cancelled) can no longer run: they become deleted at `now`, with
    // the reason in their history.
    virtual std::size_t prune(job_state state, time_point before, std::size_t limit, time_point now) = 0;

    // Available jobs whose kind is none of `known` get one note in their
    // history saying so (once per job, at most max_rows_per_write per call);
    // returns how many were noted.
    virtual std::size_t flag_unknown_kinds(const std::vector<std::string>& known, const std::string& node,
                                           time_point now) = 0;

    // Recurring jobs. upsert keeps next_fire when the schedule (cron and
    // zone) did not change, so that redeploying never skips nor repeats.
    virtual void upsert_recurring(const recurring_job& r) = 0;
    virtual bool remove_recurring(const std::string& id) = 0;
    // A paused recurring job fires no occurrence (those due meanwhile are
    // skipped, not run at the resume); upsert_recurring keeps it paused. A
    // resume moves next_fire to `next_fire`. False when there is no such job.
    virtual bool set_recurring_paused(const std::string& id, bool paused, time_point next_fire) = 0;
    virtual std::vector<recurring_job> list_recurring() = 0;
    // Enqueues `occurrences` and moves next_fire from `expected` to
    // `next_fire`, only if it still is `expected`: of several servers racing
    // for one occurrence, exactly one wins. False when another did.
    virtual bool fire_recurring(const std::string& id, time_point expected, time_point next_fire,
                                std::span<const enqueue_request> occurrences, time_point now) = 0;

    // Work other processes write: a storage that hears of it (PostgreSQL's
    // LISTEN/NOTIFY) calls `wake`, from a thread of its own, soon after
    // another connection commits jobs that can run now, so that the server
    // claims them at once rather than at its next poll. An empty function
    // stops it, and returns once no call of the previous one runs. The
    // default hears nothing: the server finds such work by polling. One
    // function at a time: the servers of a process that share a storage
    // object set one between them, which wakes them all.
    virtual void listen_for_work(std::function<void()> wake) { (void)wake; }

protected:
    // One job of change_states: `change` refused (job_not_found,
    // invalid_transition) becomes that job's error.
    template <class F>
    static state_change_result change_one(job_id id, F&& change)
    {
        try {
            return {id, change(), {}};
        } catch (const job_not_found& e) {
            return {id, std::nullopt, e.what()};
        } catch (const invalid_transition& e) {
            return {id, std::nullopt, e.what()};
        }
    }
};

// In memory: for tests and ephemeral work; nothing survives the process.
class memory_storage final : public storage {
public:
    memory_storage();
    ~memory_storage() override;

    std::vector<enqueue_result> enqueue(std::span<const enqueue_request> jobs, time_point now) override;
    std::vector<job> complete_and_claim(std::span<const completion> done, const claim_request& claim,
                                        time_point now) override;
    lease_renewal renew_leases(const std::string& node, std::span<const held_lease> held, time_point lease_until,
                               time_point now) override;
    std::vector<job_id> recover_expired(time_point now) override;
    std::vector<job_id> recover_node(const std::string& node, time_point now) override;
    job_state change_state(job_id id, job_state to, const std::string& reason, time_point now) override;
    std::optional<job> find(job_id id, bool with_history = true) override;
    std::vector<job> list(const job_filter& filter) override;
    job_counts counts() override;
    std::vector<queue_kind_count> counts_by_queue_and_kind() override;
    void announce_node(const node_info& node, time_point now) override;
    void remove_node(const std::string& id) override;
    std::vector<node_info> list_nodes() override;
    void set_queue_paused(const std::string& queue, bool paused, time_point now) override;
    std::vector<std::string> paused_queues() override;
    std::optional<time_point> next_due() override;
    std::size_t prune(job_state state, time_point before, std::size_t limit, time_point now) override;
    std::size_t flag_unknown_kinds(const std::vector<std::string>& known, const std::string& node,
                                   time_point now) override;
    void upsert_recurring(const recurring_job& r) override;
    bool remove_recurring(const std::string& id) override;
    bool set_recurring_paused(const std::string& id, bool paused, time_point next_fire) override;
    std::vector<recurring_job> list_recurring() override;
    bool fire_recurring(const std::string& id, time_point expected, time_point next_fire,
                        std::span<const enqueue_request> occurrences, time_point now) override;

private:
    struct state;
    std::mutex mutex_;
    std::unique_ptr<state> state_;
};

} // namespace hosting::jobs
