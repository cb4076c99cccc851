#include <hosting/jobs/storage.hpp>

#include <algorithm>
#include <limits>
#include <map>
#include <set>
#include <tuple>
#include <utility>
#include <unordered_map>

namespace hosting::jobs {

struct memory_storage::state {
    job_id next = 1;
    std::map<job_id, job> jobs;
    struct uniqueness {
        state_set states;
        std::string slot; // unique_slot(): the key within its kind, or across kinds
    };
    std::unordered_map<job_id, uniqueness> unique_of; // jobs with a unique key
    std::map<std::string, job_id> unique;            // slot -> the job holding it
    std::set<std::tuple<std::string, int, time_point, job_id>> ready; // available: queue, priority, run_at, id
    std::set<std::pair<time_point, job_id>> due;                     // scheduled and retryable, by run_at
    std::set<job_id> running;
    std::multimap<job_id, job_id> children;  // parent -> continuations
    std::set<std::string> held_keys;         // concurrency keys of running jobs
    std::set<job_id> flagged;                // noted as of an unknown kind
    std::set<job_id> started;                // running, and its node reported the start
    std::set<job_id> refunded;               // had an unstarted claim's attempt back once
    job_counts counts;                       // kept by index() and unindex()
    std::map<std::tuple<std::string, std::string, job_state>, std::int64_t> by_queue_kind; // the same, finer
    std::map<std::string, node_info> nodes;
    std::set<std::string> paused;            // queues
    std::map<std::string, recurring_job> recurring;

    static std::tuple<std::string, int, time_point, job_id> ready_key(const job& j)
    {
        return {j.queue, j.priority, j.run_at, j.id};
    }

    // Every job enters and leaves its state's indexes here, which keeps the
    // counts, so that counts() is not a walk over every job.
    void unindex(const job& j)
    {
        --counts.by_state[static_cast<std::size_t>(j.state)];
        if (auto it = by_queue_kind.find({j.queue, j.kind, j.state}); it != by_queue_kind.end() && --it->second == 0)
            by_queue_kind.erase(it);
        switch (j.state) {
        case job_state::available: ready.erase(ready_key(j)); break;
        case job_state::scheduled:
        case job_state::retryable: due.erase({j.run_at, j.id}); break;
        case job_state::running:
            running.erase(j.id);
            started.erase(j.id);
            break;
        default: break;
        }
    }

    void index(const job& j)
    {
        ++counts.by_state[static_cast<std::size_t>(j.state)];
        ++by_queue_kind[{j.queue, j.kind, j.state}];
        switch (j.state) {
        case job_state::available: ready.insert(ready_key(j)); break;
        case job_state::scheduled:
        case job_state::retryable: due.insert({j.run_at, j.id}); break;
        case job_state::running: running.insert(j.id); break;
        default: break;
        }
    }

    // Every change of state goes through here, so that the history, the
    // indexes and the unique key never disagree.
    void transition(job& j, job_state to, time_point now, std::string reason, std::string error = {},
                    std::optional<time_point> run_at = {})
    {
        if (!can_transition(j.state, to))
            throw invalid_transition(j.id, j.state, to);
        if (!j.unique_key.empty()) {
            // Whether it holds the key, not whether its state would: a job
            // deleted while another held its key does not hold it.
            const auto& mine = unique_of.at(j.id);
            const auto holder = unique.find(mine.slot);
            const bool holds = holder != unique.end() && holder->second == j.id;
            const bool wants = mine.states.contains(to);
            if (wants && !holds) {
                if (holder == unique.end())
                    unique.emplace(mine.slot, j.id);
                else if (to != job_state::deleted) // a delete goes ahead without the key
                    throw invalid_transition(j.id, j.state, to,
                                             "job " + std::to_string(holder->second) + " holds its unique key '" +
                                                 j.unique_key + "'");
            } else if (!wants && holds) {
                unique.erase(holder);
            }
        }
        unindex(j);
        if (!j.concurrency_key.empty()) {
            if (to == job_state::running)
                held_keys.insert(j.concurrency_key);
            else if (j.state == job_state::running)
                held_keys.erase(j.concurrency_key);
        }
        j.history.push_back({j.state, to, now, std::move(reason), error});
        j.state = to;
        if (run_at)
            j.run_at = *run_at;
        if (!error.empty())
            j.last_error = std::move(error);
        if (to != job_state::running) {
            j.lease_owner.clear();
            j.lease_expires = {};
        }
        index(j);
        if (is_final(to))
            resolve_children(j.id, to, now);
    }

    // A parent reached a final state: each awaiting continuation becomes
    // available or deleted as fate_of() says, or goes on waiting (a failed
    // or cancelled parent can still be requeued and succeed).
    void resolve_children(job_id parent, job_state ended, time_point now)
    {
        auto [first, last] = children.equal_range(parent);
        std::vector<std::pair<job_id, continuation_fate>> settled;
        for (auto it = first; it != last;) {
            auto child = jobs.find(it->second);
            // Gone (pruned) or no longer waiting (deleted by a client): the
            // entry has no more use.
            if (child == jobs.end() || child->second.state != job_state::awaiting) {
                it = children.erase(it);
                continue;
            }
            const auto fate = fate_of(child->second.condition, ended);
            if (fate == continuation_fate::wait) {
                ++it;
                continue;
            }
            settled.emplace_back(it->second, fate);
            it = children.erase(it);
        }
        // Each transition may settle the child's own continuations in turn.
        for (const auto& [id, fate] : settled) {
            auto& child = jobs.at(id);
            if (child.state != job_state::awaiting)
                continue;
            if (fate == continuation_fate::run)
                transition(child, job_state::available, now,
                           "parent " + std::to_string(parent) + " " + std::string(to_string(ended)), {}, now);
            else
                transition(child, job_state::deleted, now,
                           "parent " + std::to_string(parent) + " ended " + std::string(to_string(ended)) +
                               "; the continuation runs only when it " + wanted(child.condition));
        }
    }

    // The parent is about to be pruned: what still waits for it can never run.
    void drop_children_of_pruned(const job& parent, time_point now)
    {
        auto [first, last] = children.equal_range(parent.id);
        std::vector<job_id> waiting;
        for (auto it = first; it != last; ++it)
            waiting.push_back(it->second);
        children.erase(first, last);
        for (auto id : waiting) {
            auto child = jobs.find(id);
            if (child == jobs.end() || child->second.state != job_state::awaiting)
                continue;
            transition(child->second, job_state::deleted, now,
                       "parent " + std::to_string(parent.id) + " was pruned (it had ended " +
                           std::string(to_string(parent.state)) + "); the continuation runs only when it " +
                           wanted(child->second.condition));
        }
    }

    static const char* wanted(continuation_condition c)
    {
        switch (c) {
        case continuation_condition::on_success: return "succeeded";
        case continuation_condition::on_any_final: return "ended";
        case continuation_condition::on_deleted: return "was deleted";
        }
        return "ended";
    }

    void add(const enqueue_request& r, time_point now, std::vector<enqueue_result>& out)
    {
        auto initial = r.run_at && *r.run_at > now ? job_state::scheduled : job_state::available;
        const job* parent = nullptr;
        if (r.parent_id != 0) {
            auto it = jobs.find(r.parent_id);
            if (it == jobs.end()) {
                out.push_back({0, false, "jobs: no job " + std::to_string(r.parent_id) + " to continue"});
                return;
            }
            parent = &it->second;
            initial = job_state::awaiting;
        }
        const auto slot = unique_slot(r.kind, r.unique_key, r.unique_across_kinds);
        if (!slot.empty() && r.unique_states.contains(initial)) {
            if (auto it = unique.find(slot); it != unique.end()) {
                out.push_back({it->second, false, {}});
                return;
            }
        }
        job j;
        j.id = next++;
        j.kind = r.kind;
        j.queue = r.queue;
        j.args = r.args;
        j.priority = r.priority;
        j.state = initial;
        j.max_attempts = r.max_attempts;
        j.timeout = r.timeout;
        j.created_at = now;
        j.run_at = r.run_at.value_or(now);
        j.unique_key = r.unique_key;
        j.concurrency_key = r.concurrency_key;
        j.parent_id = r.parent_id;
        j.condition = r.condition;
        j.recurring_id = r.recurring_id;
        j.history.push_back({initial, initial, now, r.reason, {}});
        if (!slot.empty()) {
            unique_of[j.id] = {r.unique_states, slot};
            if (r.unique_states.contains(initial))
                unique.emplace(slot, j.id);
        }
        const auto id = j.id;
        auto& stored = jobs.emplace(id, std::move(j)).first->second;
        index(stored);
        out.push_back({id, true, {}});
        if (parent) {
            children.emplace(r.parent_id, id);
            if (is_final(parent->state))
                resolve_children(r.parent_id, parent->state, now);
        }
    }

    // A running job whose node is gone (its lease expired, or its node id
    // started again in another process).
    void recover(job& j, const std::string& reason, time_point now)
    {
        // A job asked to stop does not start again because its node died.
        if (j.cancel_requested) {
            j.cancel_requested = false;
            if (std::exchange(j.delete_requested, false))
                transition(j, job_state::deleted, now, reason + " while a delete was pending");
            else
                transition(j, job_state::cancelled, now, reason + " while a cancel was pending");
            return;
        }
        // The attempt counts, unless the node never reported its start, and
        // then once only: a job that kills its node must not loop forever.
        if (!started.erase(j.id) && refunded.insert(j.id).second)
            --j.attempt;
        if (j.attempt >= j.max_attempts)
            transition(j, job_state::failed, now, reason, reason);
        else
            transition(j, job_state::available, now, reason);
    }
};

memory_storage::memory_storage() : state_(std::make_unique<state>()) {}
memory_storage::~memory_storage() = default;

std::vector<enqueue_result> memory_storage::enqueue(std::span<const enqueue_request> requests, time_point now)
{
    std::lock_guard lock(mutex_);
    std::vector<enqueue_result> out;
    out.reserve(requests.size());
    for (const auto& r : requests)
        state_->add(r, now, out);
    return out;
}

std::vector<job> memory_storage::complete_and_claim(std::span<const completion> done, const claim_request& claim,
                                                    time_point now)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    for (const auto& c : done) {
        auto it = s.jobs.find(c.id);
        // Deleted (or cancelled and requeued) while it ran: the result is moot.
        if (it == s.jobs.end() || it->second.state != job_state::running || it->second.lease_owner != claim.node ||
            it->second.attempt != c.attempt)
            continue;
        auto& j = it->second;
        // Cancelled or deleted while it ran, from this process or another:
        // that ends it, whatever the attempt's outcome, the attempt counted.
        const bool cancelling = std::exchange(j.cancel_requested, false);
        if (std::exchange(j.delete_requested, false)) {
            s.transition(j, job_state::deleted, now, "deleted while running; the attempt ended: " + c.reason, c.error);
            continue;
        }
        if (cancelling) {
            s.transition(j, job_state::cancelled, now,
                         c.what == outcome::cancelled ? c.reason
                                                      : "cancelled while running; the attempt ended: " + c.reason,
                         c.error);
            continue;
        }
        const auto effect = effect_of(c.what);
        j.attempt += effect.attempt_delta;
        s.transition(j, effect.to, now, c.reason, c.error,
                     effect.uses_run_at ? std::optional<time_point>(c.run_at) : std::nullopt);
    }
    for (std::size_t promoted = 0;
         promoted < max_rows_per_write && !s.due.empty() && s.due.begin()->first <= now; ++promoted) {
        auto& j = s.jobs.at(s.due.begin()->second);
        s.transition(j, job_state::available, now, "due");
    }
    std::vector<job> claimed;
    std::map<std::string, std::size_t, std::less<>> kind_left(claim.kind_caps.begin(), claim.kind_caps.end());
    // In claim order, passing over what may not be taken, however much of it
    // comes first (see claim_request).
    for (const auto& [queue, cap] : claim.queues) {
        if (s.paused.contains(queue))
            continue;
        const auto count = std::min(cap, claim.total - std::min(claim.total, claimed.size()));
        auto it = s.ready.lower_bound({queue, std::numeric_limits<int>::min(), time_point::min(), 0});
        std::size_t taken = 0;
        while (taken < count && it != s.ready.end() && std::get<0>(*it) == queue) {
            auto& j = s.jobs.at(std::get<3>(*it));
            ++it; // before the transition unindexes it
            if (std::find(claim.kinds.begin(), claim.kinds.end(), j.kind) == claim.kinds.end())
                continue;
            const auto left = kind_left.find(j.kind);
            if (left != kind_left.end() && left->second == 0)
                continue;
            // Held by a running job, this claim's earlier ones included.
            if (!j.concurrency_key.empty() && s.held_keys.contains(j.concurrency_key))
                continue;
            if (left != kind_left.end())
                --left->second;
            s.transition(j, job_state::running, now, "claimed by " + claim.node);
            ++j.attempt;
            j.lease_owner = claim.node;
            j.lease_expires = claim.lease_until;
            job copy = j;
            copy.history.clear();
            claimed.push_back(std::move(copy));
            ++taken;
        }
    }
    return claimed;
}

lease_renewal memory_storage::renew_leases(const std::string& node, std::span<const held_lease> held,
                                          time_point lease_until, time_point)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    lease_renewal out;
    for (const auto& h : held) {
        auto it = s.jobs.find(h.id);
        if (it == s.jobs.end() || it->second.state != job_state::running || it->second.lease_owner != node ||
            it->second.attempt != h.attempt) {
            out.lost.push_back(h.id);
            continue;
        }
        it->second.lease_expires = lease_until;
        if (h.started)
            s.started.insert(h.id);
        if (it->second.cancel_requested)
            out.cancel_requested.push_back(h.id);
    }
    return out;
}

std::vector<job_id> memory_storage::recover_expired(time_point now)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    std::vector<job_id> expired;
    for (auto id : s.running)
        if (s.jobs.at(id).lease_expires < now)
            expired.push_back(id);
    for (auto id : expired) {
        auto& j = s.jobs.at(id);
        s.recover(j, "the lease of node " + j.lease_owner + " expired", now);
    }
    return expired;
}

std::vector<job_id> memory_storage::recover_node(const std::string& node, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    std::vector<job_id> held;
    for (auto id : s.running)
        if (s.jobs.at(id).lease_owner == node)
            held.push_back(id);
    for (auto id : held)
        s.recover(s.jobs.at(id), "node " + node + " started again", now);
    return held;
}

job_state memory_storage::change_state(job_id id, job_state to, const std::string& reason, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    auto it = s.jobs.find(id);
    if (it == s.jobs.end())
        throw job_not_found(id);
    auto& j = it->second;
    const auto change = outside_change_of(id, j.state, to);
    if (change == outside_change::stop_running) {
        j.cancel_requested = true;
        j.delete_requested = j.delete_requested || to == job_state::deleted;
        return j.state;
    }
    if (change == outside_change::requeue) {
        s.transition(j, to, now, reason, {}, now); // first: it may refuse, and then nothing changed
        j.attempt = 0;
        j.cancel_requested = false;
    } else {
        s.transition(j, to, now, reason);
    }
    return j.state;
}

std::optional<job> memory_storage::find(job_id id, bool with_history)
{
    std::lock_guard lock(mutex_);
    auto it = state_->jobs.find(id);
    if (it == state_->jobs.end())
        return std::nullopt;
    job copy = it->second;
    if (!with_history)
        copy.history.clear();
    return copy;
}

std::vector<job> memory_storage::list(const job_filter& filter)
{
    std::lock_guard lock(mutex_);
    std::vector<job> out;
    std::size_t skipped = 0;
    const auto take = [&](const job& j) {
        if ((filter.state && j.state != *filter.state) || (filter.queue && j.queue != *filter.queue) ||
            (filter.kind && j.kind != *filter.kind) || (filter.before != 0 && j.id >= filter.before) ||
            (filter.after != 0 && j.id <= filter.after) || (filter.parent != 0 && j.parent_id != filter.parent))
            return true;
        if (skipped++ < filter.offset)
            return true;
        if (out.size() >= filter.limit)
            return false;
        out.push_back(j);
        if (!filter.with_history)
            out.back().history.clear();
        return true;
    };
    if (filter.newest_first) {
        for (auto it = state_->jobs.rbegin(); it != state_->jobs.rend() && take(it->second); ++it) {
        }
    } else {
        for (auto it = state_->jobs.begin(); it != state_->jobs.end() && take(it->second); ++it) {
        }
    }
    return out;
}

job_counts memory_storage::counts()
{
    std::lock_guard lock(mutex_);
    return state_->counts;
}

std::vector<queue_kind_count> memory_storage::counts_by_queue_and_kind()
{
    std::lock_guard lock(mutex_);
    std::vector<queue_kind_count> out;
    for (const auto& [key, n] : state_->by_queue_kind)
        out.push_back({std::get<0>(key), std::get<1>(key), std::get<2>(key), n});
    return out;
}

void memory_storage::announce_node(const node_info& node, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& nodes = state_->nodes;
    std::erase_if(nodes, [&](const auto& n) { return n.second.heartbeat_at < now - std::chrono::hours(24); });
    auto& slot = nodes[node.id];
    slot = node;
    slot.heartbeat_at = now;
    slot.running = 0;
}

void memory_storage::remove_node(const std::string& id)
{
    std::lock_guard lock(mutex_);
    state_->nodes.erase(id);
}

std::vector<node_info> memory_storage::list_nodes()
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    std::vector<node_info> out;
    for (const auto& [id, n] : s.nodes) {
        out.push_back(n);
        for (auto j : s.running)
            out.back().running += s.jobs.at(j).lease_owner == id;
    }
    return out;
}

void memory_storage::set_queue_paused(const std::string& queue, bool paused, time_point)
{
    std::lock_guard lock(mutex_);
    if (paused)
        state_->paused.insert(queue);
    else
        state_->paused.erase(queue);
}

std::vector<std::string> memory_storage::paused_queues()
{
    std::lock_guard lock(mutex_);
    return {state_->paused.begin(), state_->paused.end()};
}

std::optional<time_point> memory_storage::next_due()
{
    std::lock_guard lock(mutex_);
    if (state_->due.empty())
        return std::nullopt;
    return state_->due.begin()->first;
}

} // namespace hosting::jobs

namespace hosting::jobs {

std::size_t memory_storage::prune(job_state state, time_point before, std::size_t limit, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    std::vector<job_id> doomed;
    for (const auto& [id, j] : s.jobs) {
        if (doomed.size() >= limit)
            break;
        if (j.state == state && !j.history.empty() && j.history.back().at < before)
            doomed.push_back(id);
    }
    for (auto id : doomed) {
        auto& j = s.jobs.at(id);
        s.drop_children_of_pruned(j, now);
        s.unindex(j);
        if (auto u = s.unique_of.find(id); u != s.unique_of.end()) {
            if (auto it = s.unique.find(u->second.slot); it != s.unique.end() && it->second == id)
                s.unique.erase(it);
            s.unique_of.erase(u);
        }
        s.flagged.erase(id);
        s.refunded.erase(id);
        s.jobs.erase(id);
    }
    return doomed.size();
}

std::size_t memory_storage::flag_unknown_kinds(const std::vector<std::string>& known, const std::string& node,
                                               time_point now)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    std::size_t noted = 0;
    for (const auto& key : s.ready) {
        if (noted == max_rows_per_write)
            break;
        auto& j = s.jobs.at(std::get<3>(key));
        if (std::find(known.begin(), known.end(), j.kind) != known.end() || s.flagged.contains(j.id))
            continue;
        s.flagged.insert(j.id);
        j.history.push_back({j.state, j.state, now,
                             "node " + node + " does not know kind '" + j.kind + "'; waiting for one that does", {}});
        ++noted;
    }
    return noted;
}

void memory_storage::upsert_recurring(const recurring_job& r)
{
    std::lock_guard lock(mutex_);
    auto& slot = state_->recurring[r.id];
    const bool existed = !slot.id.empty();
    const bool same_schedule = existed && slot.cron == r.cron && slot.zone == r.zone;
    auto kept_next = slot.next_fire;
    auto kept_last = slot.last_fire;
    const bool kept_paused = slot.paused;
    slot = r;
    slot.last_fire = kept_last;
    if (existed)
        slot.paused = kept_paused; // a redeploy does not resume it
    if (same_schedule)
        slot.next_fire = kept_next;
}

bool memory_storage::remove_recurring(const std::string& id)
{
    std::lock_guard lock(mutex_);
    return state_->recurring.erase(id) > 0;
}

bool memory_storage::set_recurring_paused(const std::string& id, bool paused, time_point next_fire)
{
    std::lock_guard lock(mutex_);
    auto it = state_->recurring.find(id);
    if (it == state_->recurring.end())
        return false;
    if (it->second.paused && !paused)
        it->second.next_fire = next_fire;
    it->second.paused = paused;
    return true;
}

std::vector<recurring_job> memory_storage::list_recurring()
{
    std::lock_guard lock(mutex_);
    std::vector<recurring_job> out;
    for (const auto& [id, r] : state_->recurring)
        out.push_back(r);
    return out;
}

bool memory_storage::fire_recurring(const std::string& id, time_point expected, time_point next_fire,
                                    std::span<const enqueue_request> occurrences, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& s = *state_;
    auto it = s.recurring.find(id);
    if (it == s.recurring.end() || it->second.next_fire != expected || it->second.paused)
        return false;
    std::vector<enqueue_result> ignored;
    for (const auto& r : occurrences)
        s.add(r, now, ignored);
    it->second.next_fire = next_fire;
    if (!occurrences.empty())
        it->second.last_fire = occurrences.back().run_at.value_or(expected);
    return true;
}

} // namespace hosting::jobs
