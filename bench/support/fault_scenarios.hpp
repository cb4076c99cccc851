// What the storage fault programs (sqlite_faults, postgres_faults) break
// and check: the same operations and the same promises for every storage;
// only how a fault is injected differs.
#pragma once

#include <hosting/jobs/storage.hpp>

#include <chrono>
#include <functional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace fault_scenarios {

namespace jobs = hosting::jobs;
using jobs::job_state;
using namespace std::chrono_literals;

// Whole microseconds: what a storage keeps of a time.
inline const jobs::time_point t0 = std::chrono::floor<std::chrono::microseconds>(jobs::clock::now());
inline const std::string node = "faulty-node";

inline jobs::enqueue_request request(int n)
{
    jobs::enqueue_request r;
    r.kind = "k";
    r.queue = "default";
    r.args = std::to_string(n);
    r.max_attempts = 3;
    return r;
}

inline jobs::claim_request claim_of(std::size_t n)
{
    return {node, {{"default", n}}, {"k"}, t0 + 1h};
}

// What the storage must hold, as far as the program was told.
struct ledger {
    std::set<jobs::job_id> acknowledged; // enqueues that returned
    std::set<jobs::job_id> claimed;      // claims that returned, not completed since
    std::size_t total_before = 0;        // jobs before the operation
};

struct scenario {
    std::string name;
    // Before the fault is armed, on the live connection.
    std::function<void(jobs::storage&, ledger&)> setup;
    // Under the fault; records what it acknowledged. Opens the storage
    // itself at `where` when `opens` (a migration): then `live` is null.
    std::function<void(jobs::storage* live, const std::string& where, ledger&)> op;
    // After the fault, on the storage opened again: returns what is wrong.
    // `acked`: the operation returned.
    std::function<std::string(jobs::storage&, const ledger&, bool acked)> check;
    bool opens = false;
};

inline std::size_t total(jobs::storage& s)
{
    std::size_t n = 0;
    for (auto c : s.counts().by_state)
        n += static_cast<std::size_t>(c);
    return n;
}

inline std::vector<jobs::job> all_in(jobs::storage& s, job_state state)
{
    jobs::job_filter f;
    f.state = state;
    f.limit = 100000;
    return s.list(f);
}

inline void enqueue_acked(jobs::storage& s, ledger& l, int n, int first = 0)
{
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < n; ++i)
        batch.push_back(request(first + i));
    for (const auto& r : s.enqueue(batch, t0))
        l.acknowledged.insert(r.id);
}

inline void claim_acked(jobs::storage& s, ledger& l, std::size_t n)
{
    for (const auto& j : s.complete_and_claim({}, claim_of(n), t0))
        l.claimed.insert(j.id);
}

// The operations both fault programs break; each adds its migrations.
inline std::vector<scenario> common_scenarios()
{
    std::vector<scenario> all;
    all.push_back({
        "enqueue",
        [](jobs::storage& s, ledger& l) { enqueue_acked(s, l, 20); },
        [](jobs::storage* s, const std::string&, ledger& l) { enqueue_acked(*s, l, 10, 100); },
        [](jobs::storage& s, const ledger& l, bool acked) -> std::string {
            const auto n = total(s);
            if (acked && n != l.total_before + 10)
                return "acknowledged batch of 10 left " + std::to_string(n - l.total_before) + " jobs";
            if (n != l.total_before && n != l.total_before + 10)
                return "a batch of 10 was half stored: " + std::to_string(n - l.total_before);
            return {};
        },
    });
    all.push_back({
        "claim",
        [](jobs::storage& s, ledger& l) { enqueue_acked(s, l, 20); },
        [](jobs::storage* s, const std::string&, ledger& l) { claim_acked(*s, l, 5); },
        [](jobs::storage& s, const ledger&, bool acked) -> std::string {
            const auto running = all_in(s, job_state::running).size();
            if (acked && running != 5)
                return "acknowledged claim of 5 left " + std::to_string(running) + " running";
            if (running != 0 && running != 5)
                return "a claim of 5 was half stored: " + std::to_string(running);
            return {};
        },
    });
    all.push_back({
        "complete",
        [](jobs::storage& s, ledger& l) {
            enqueue_acked(s, l, 20);
            claim_acked(s, l, 5);
        },
        [](jobs::storage* s, const std::string&, ledger& l) {
            std::vector<jobs::completion> done;
            for (auto id : l.claimed)
                done.push_back({id, 1, jobs::outcome::succeeded, {}, {}, "done"});
            // And the next claim, as the server sends them.
            auto next = s->complete_and_claim(done, claim_of(3), t0);
            l.claimed.clear();
            for (const auto& j : next)
                l.claimed.insert(j.id);
        },
        [](jobs::storage& s, const ledger&, bool acked) -> std::string {
            const auto ok = all_in(s, job_state::succeeded).size();
            const auto running = all_in(s, job_state::running).size();
            if (acked && (ok != 5 || running != 3))
                return "acknowledged completion left " + std::to_string(ok) + " succeeded, " +
                       std::to_string(running) + " running";
            if (!(ok == 0 && running == 5) && !(ok == 5 && running == 3))
                return "a completion was half stored: " + std::to_string(ok) + " succeeded, " +
                       std::to_string(running) + " running";
            return {};
        },
    });
    all.push_back({
        "recurring tick",
        [](jobs::storage& s, ledger& l) {
            enqueue_acked(s, l, 5);
            jobs::recurring_job r;
            r.id = "tick";
            r.cron = "0 * * * *";
            r.kind = "k";
            r.args = "1";
            r.queue = "default";
            r.next_fire = t0;
            s.upsert_recurring(r);
        },
        [](jobs::storage* s, const std::string&, ledger&) {
            auto occurrence = request(7);
            occurrence.recurring_id = "tick";
            occurrence.run_at = t0;
            occurrence.unique_key = "recurring:tick:0";
            occurrence.unique_states = jobs::state_set::all();
            if (!s->fire_recurring("tick", t0, t0 + 1h, std::span(&occurrence, 1), t0))
                throw std::runtime_error("the tick was refused");
        },
        [](jobs::storage& s, const ledger& l, bool acked) -> std::string {
            const auto n = total(s) - l.total_before;
            const auto r = s.list_recurring();
            if (r.size() != 1)
                return "the recurring job is gone";
            const bool moved = r[0].next_fire == t0 + 1h;
            if (acked && (n != 1 || !moved))
                return "an acknowledged tick left " + std::to_string(n) + " occurrences";
            if (moved != (n == 1) || n > 1)
                return "a tick was half stored: " + std::to_string(n) + " occurrences, next fire " +
                       (moved ? "moved" : "kept");
            return {};
        },
    });
    all.push_back({
        "prune",
        [](jobs::storage& s, ledger& l) {
            enqueue_acked(s, l, 30);
            claim_acked(s, l, 30);
            std::vector<jobs::completion> done;
            for (auto id : l.claimed)
                done.push_back({id, 1, jobs::outcome::succeeded, {}, {}, "done"});
            s.complete_and_claim(done, claim_of(0), t0);
            l.claimed.clear();
            enqueue_acked(s, l, 5, 50);
        },
        [](jobs::storage* s, const std::string&, ledger& l) {
            // Pruned on purpose: no longer expected, whatever prune reports.
            for (auto it = l.acknowledged.begin(); it != l.acknowledged.end();)
                it = *it <= 30 ? l.acknowledged.erase(it) : std::next(it);
            if (s->prune(job_state::succeeded, t0 + 1h, 1000, t0 + 1h) != 30)
                throw std::runtime_error("prune removed another number");
        },
        [](jobs::storage& s, const ledger&, bool acked) -> std::string {
            const auto ok = all_in(s, job_state::succeeded).size();
            if (acked && ok != 0)
                return "an acknowledged prune left " + std::to_string(ok) + " jobs";
            if (ok != 0 && ok != 30)
                return "a prune was half stored: " + std::to_string(ok) + " left";
            return {};
        },
    });
    return all;
}

// The checks every scenario shares, on the storage opened again.
inline std::string common_checks(jobs::storage& s, const ledger& l)
{
    for (auto id : l.acknowledged)
        if (!s.find(id, false))
            return "acknowledged job " + std::to_string(id) + " lost";
    const auto now = jobs::clock::now();
    for (const auto& j : all_in(s, job_state::running))
        if (j.lease_owner != node || j.lease_expires <= now)
            return "job " + std::to_string(j.id) + " running without a live lease";
    const auto counts = s.counts();
    for (std::size_t i = 0; i < jobs::job_state_count; ++i) {
        const auto state = static_cast<job_state>(i);
        const auto rows = all_in(s, state).size();
        if (static_cast<std::size_t>(counts[state]) != rows)
            return std::string("count of ") + std::string(jobs::to_string(state)) + " is " +
                   std::to_string(counts[state]) + ", rows " + std::to_string(rows);
    }
    return {};
}

struct totals {
    long runs = 0, faults = 0, failed_ops = 0, violations = 0, committed_but_failed = 0;
};

} // namespace fault_scenarios
