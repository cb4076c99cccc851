// jobs/job.hpp: what a persistent job is, its states and how they change.
#pragma once

#include <chrono>
#include <concepts>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace hosting::jobs {

// Jobs outlive processes, so their times are wall-clock times.
using clock = std::chrono::system_clock;
using time_point = clock::time_point;

using job_id = std::int64_t;

enum class job_state : std::uint8_t {
    scheduled, // waits for its run_at
    available, // may be claimed by a worker
    awaiting,  // a continuation waiting for its parent to end
    running,   // claimed by a node, under a lease
    retryable, // failed with attempts left; available again at its run_at
    succeeded,
    failed,    // attempts used up; kept until pruned, never silently dropped
    cancelled,
    deleted,
};
inline constexpr std::size_t job_state_count = 9;

std::string_view to_string(job_state state) noexcept;
// Throws std::invalid_argument naming the text when it is not a state.
job_state parse_job_state(std::string_view text);

// Whether a job in this state will not run again by itself.
constexpr bool is_final(job_state s) noexcept
{
    return s == job_state::succeeded || s == job_state::failed || s == job_state::cancelled ||
           s == job_state::deleted;
}

// The state machine. Everything else is rejected with invalid_transition:
//   scheduled, retryable -> available (due), running (claimed when due)
//   available            -> running
//   awaiting             -> available (its parent's state meets the
//                           condition), deleted (its parent settled so that
//                           the condition can no longer be met)
//   running              -> succeeded, retryable, failed, cancelled,
//                           scheduled (snoozed), available (released at
//                           shutdown, or its node's lease expired)
//   succeeded, failed, cancelled, deleted -> available (requeue)
//   any state that is not final -> cancelled, deleted
//   any final state but deleted -> deleted
bool can_transition(job_state from, job_state to) noexcept;

class invalid_transition : public std::logic_error {
public:
    invalid_transition(job_id id, job_state from, job_state to);
    // The same, saying why a transition the state machine allows cannot
    // happen now (another job holds the unique key it would take).
    invalid_transition(job_id id, job_state from, job_state to, const std::string& why);
    job_state from() const noexcept { return from_; }
    job_state to() const noexcept { return to_; }

private:
    job_state from_;
    job_state to_;
};

// Thrown by client calls on an id that does not exist.
class job_not_found : public std::runtime_error {
public:
    explicit job_not_found(job_id id);
};

// One line of a job's history.
struct state_change {
    job_state from;
    job_state to;
    time_point at;
    std::string reason;
    std::string error; // for failures
};

// A set of states, for unique keys and queries.
class state_set {
public:
    constexpr state_set() = default;
    constexpr state_set(std::initializer_list<job_state> states)
    {
        for (auto s : states)
            bits_ |= bit(s);
    }
    constexpr bool contains(job_state s) const noexcept { return (bits_ & bit(s)) != 0; }
    constexpr std::uint32_t bits() const noexcept { return bits_; }
    static constexpr state_set from_bits(std::uint32_t bits) noexcept
    {
        state_set s;
        s.bits_ = bits;
        return s;
    }
    constexpr bool empty() const noexcept { return bits_ == 0; }
    static constexpr state_set all() noexcept { return from_bits((1u << job_state_count) - 1); }

private:
    static constexpr std::uint32_t bit(job_state s) noexcept { return 1u << static_cast<unsigned>(s); }
    std::uint32_t bits_ = 0;
};

// While a job with a unique key is in one of these states, enqueueing the
// same key returns that job instead of creating another.
inline constexpr state_set default_unique_states{job_state::scheduled, job_state::available, job_state::awaiting,
                                                 job_state::running, job_state::retryable};

// When a continuation runs, given its parent's state. It waits (awaiting)
// for as long as its parent can still meet the condition: a parent that
// failed or was cancelled can be requeued, and may then succeed or be
// deleted, so neither state settles an on_success or on_deleted
// continuation. Only a parent that succeeds or is deleted settles them, as in
// Hangfire: the condition then holds and the continuation becomes available,
// or it can no longer hold and the continuation is deleted, with the reason
// in its history. So is a continuation whose parent is pruned while it waits
// (a failed or cancelled parent past its retention): no requeue can bring a
// pruned parent back. storage.hpp's fate_of() says it for every storage.
enum class continuation_condition : std::uint8_t {
    on_success,   // runs when the parent succeeds (the default); deleted if it is deleted
    on_any_final, // runs when the parent first reaches any final state
    on_deleted,   // runs when the parent is deleted; deleted if it succeeds
};

// Per-call options of client::enqueue and friends; unset members take the
// kind's defaults.
struct job_options {
    std::optional<std::string> queue;
    std::optional<int> priority; // lower runs first
    std::optional<int> max_attempts;
    std::optional<std::chrono::milliseconds> timeout;
    // Empty: none. Another job of the same kind holding the key in one of
    // unique_states makes the enqueue return that job instead
    // (enqueued::created false); of any kind with unique_across_kinds.
    std::string unique_key;
    state_set unique_states = default_unique_states;
    bool unique_across_kinds = false;
    // Jobs sharing a concurrency key never run at the same time, on any node:
    // the key is held by the running job's lease, so it cannot expire under
    // a job that still runs, and a dead node's key frees when its lease does.
    // Claims pass over the jobs whose key is held to those behind them, so a
    // backlog of one key never keeps a free worker idle.
    std::string concurrency_key;
};

// Binds an arguments type to its kind once, so that client.enqueue(email{...})
// and register_kind<email>(handler) need no string at each call site. The
// name stays what is stored (renaming the type breaks nothing). Either the
// type says it:
//     struct email { ...; static constexpr std::string_view job_kind = "send_email"; };
// or, for a type you cannot change, a specialization does:
//     template <> struct hosting::jobs::kind_name<email> {
//         static constexpr std::string_view value = "send_email";
//     };
template <class Args>
struct kind_name {};

template <class Args>
    requires requires {
        { Args::job_kind } -> std::convertible_to<std::string_view>;
    }
struct kind_name<Args> {
    static constexpr std::string_view value = Args::job_kind;
};

template <class Args>
concept named_kind = requires {
    { kind_name<Args>::value } -> std::convertible_to<std::string_view>;
};

// What an enqueue, a schedule or a continuation completes with: the job's
// id, and whether this call stored it (false: a job holding the same unique
// key was found, and that is its id). Converts to the id.
struct enqueued {
    job_id id = 0;
    bool created = false;
    operator job_id() const noexcept { return id; }
};

// A job as stored.
struct job {
    job_id id = 0;
    std::string kind;
    std::string queue;
    std::string args; // JSON
    int priority = 0;
    job_state state = job_state::available;
    int attempt = 0; // attempts started so far
    int max_attempts = 1;
    std::chrono::milliseconds timeout{0}; // zero: none
    time_point created_at{};
    time_point run_at{};
    std::string unique_key;
    std::string lease_owner; // node id, while running
    time_point lease_expires{};
    std::string last_error;
    bool cancel_requested = false;
    // delete_job() reached it while it ran: it holds its lease and its
    // concurrency key until its handler has stopped, then ends deleted.
    bool delete_requested = false;
    std::string concurrency_key;
    job_id parent_id = 0; // a continuation's parent; 0: none
    continuation_condition condition = continuation_condition::on_success;
    std::string recurring_id; // the recurring job this is an occurrence of
    std::vector<state_change> history; // filled by queries that ask for it
};

// What to do about occurrences of a recurring job that passed while no
// server ran.
enum class missed_policy : std::uint8_t {
    run_once, // one run for all of them, at the latest (the default)
    run_all,  // one run for each, the first max_missed_runs of them
    skip,     // none; wait for the next occurrence
};
inline constexpr std::size_t max_missed_runs = 1000;

// What an occurrence of a recurring job does when an earlier one (or a run
// triggered by hand) has not ended yet: a job that runs longer than its
// period would otherwise run beside itself, on any node.
enum class overlap_policy : std::uint8_t {
    allow, // it is enqueued and runs as any job does (the default)
    skip,  // it is not enqueued while an earlier one is scheduled, available,
           // running or retryable: at most one is pending at a time (the
           // unique key "recurring:<id>", in the default unique states);
           // Kubernetes' concurrencyPolicy Forbid
    wait,  // it is enqueued and waits for the earlier ones to end: they run
           // one at a time, on any node (the concurrency key "recurring:<id>")
};

// A recurring job: a cron expression in a time zone, and what to enqueue.
// Every job_options field given at registration holds for each occurrence.
struct recurring_job {
    std::string id;
    std::string cron;
    std::string zone = "UTC";
    std::string kind;
    std::string args; // JSON
    std::string queue;
    int priority = 0;
    int max_attempts = 1;
    std::chrono::milliseconds timeout{0};
    missed_policy missed = missed_policy::run_once;
    time_point next_fire{};
    std::optional<time_point> last_fire;
    // Empty: each occurrence gets its own key, "recurring:<id>:<time>", in
    // every state, so that it is enqueued once, ever.
    std::string unique_key;
    state_set unique_states = default_unique_states;
    bool unique_across_kinds = false;
    std::string concurrency_key;
    overlap_policy overlap = overlap_policy::allow;
    // Paused: no occurrence fires; those due meanwhile are skipped.
    bool paused = false;
};

} // namespace hosting::jobs
