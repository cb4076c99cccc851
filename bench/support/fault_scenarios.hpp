// What the storage fault programs (sqlite_faults, postgres_faults) break
// and check: the same operations and the same promises for every storage;
// only how a fault is injected differs.
#pragma once

#include <hosting/jobs/storage.hpp>

#include <chrono>
#include <cstdio>
#include <memory>
#include <tuple>
#include <utility>
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
    void add(const totals& t)
    {
        runs += t.runs;
        faults += t.faults;
        failed_ops += t.failed_ops;
        violations += t.violations;
        committed_but_failed += t.committed_but_failed;
    }
};

// How one run at N went.
struct outcome {
    long faults = 0; // injected
    long ops = 0;    // the I/O operations the run counted
    bool acked = false;
    bool failed = false; // reported a storage_error
    bool committed_but_failed = false;
    std::string violation;
};

// What a run does between arming and lifting its fault: the operation,
// then the checks every storage shares. `counted` tells the faults injected
// and the I/O operations counted so far; `lift` lifts the fault. `live` (null for a migration) must
// go on working: its next enqueue is acknowledged within `recover_tries`
// calls (a network storage's first call may find its connection broken).
// `reopen` opens the storage again for the checks, or returns null when
// there is nothing to check (a new file whose creation failed).
// `while_failing` and `once_lifted`, when given, look at what the rest of
// the process sees (a host's readiness) before and after the lift; each
// returns what is wrong.
inline outcome operate(const scenario& sc, jobs::storage* live, const std::string& where, ledger& l,
                       const std::function<std::pair<long, long>()>& counted, const std::function<void()>& lift,
                       int recover_tries,
                       const std::function<std::unique_ptr<jobs::storage>()>& reopen,
                       const std::function<std::string()>& while_failing = {},
                       const std::function<std::string()>& once_lifted = {})
{
    outcome o;
    try {
        sc.op(live, where, l);
        o.acked = true;
    } catch (const jobs::storage_error&) {
        o.failed = true;
    } catch (const std::exception& e) {
        o.violation = std::string("not a storage_error: ") + e.what();
    }
    // The operation's own faults and I/O, before anything else meets the
    // fault.
    std::tie(o.faults, o.ops) = counted();
    if (o.violation.empty() && while_failing)
        o.violation = while_failing();
    lift();
    if (o.violation.empty() && once_lifted)
        o.violation = once_lifted();
    if (o.violation.empty() && live) {
        for (int attempt = 1;; ++attempt) {
            try {
                enqueue_acked(*live, l, 1, 900);
                ++l.total_before; // the checks compare what the operation did
                live->counts();
                break;
            } catch (const std::exception& e) {
                if (attempt < recover_tries)
                    continue;
                o.violation = std::string("the storage does not recover: ") + e.what();
                break;
            }
        }
    }
    if (o.violation.empty() && reopen) {
        try {
            auto again = reopen();
            if (!again)
                return o;
            o.violation = common_checks(*again, l);
            if (o.violation.empty())
                o.violation = sc.check(*again, l, o.acked);
            o.committed_but_failed = o.violation.empty() && !o.acked && sc.name == "enqueue" &&
                                     total(*again) != l.total_before;
        } catch (const std::exception& e) {
            o.violation = std::string("the storage does not open again: ") + e.what();
        }
    }
    return o;
}

inline void print_header()
{
    std::printf("%-22s %-11s %6s %7s %7s %9s %10s\n", "operation", "fault", "ops", "faults", "errors", "committed",
                "violations");
}

// Runs `run(n)` for N = 1, 2, 3, ... until a run injects no fault (it must
// then have passed), printing each violation and the scenario's row.
inline totals until_clean(const std::string& name, const char* fault, long max_n,
                          const std::function<outcome(long n)>& run)
{
    totals t;
    long n = 1;
    long ops_clean = 0;
    for (; n <= max_n; ++n) {
        const auto o = run(n);
        ++t.runs;
        t.faults += o.faults;
        t.failed_ops += o.failed ? 1 : 0;
        t.committed_but_failed += o.committed_but_failed ? 1 : 0;
        if (!o.violation.empty()) {
            ++t.violations;
            std::printf("VIOLATION %s, %s fault at operation %ld: %s\n", name.c_str(), fault, n, o.violation.c_str());
        }
        if (o.faults == 0) {
            // Past its last operation: it must pass untouched.
            if (!o.acked) {
                ++t.violations;
                std::printf("VIOLATION %s failed with no fault injected\n", name.c_str());
            }
            ops_clean = o.ops;
            break;
        }
    }
    if (n > max_n) {
        ++t.violations;
        std::printf("VIOLATION %s, %s: still failing at operation %ld\n", name.c_str(), fault, max_n);
    }
    std::printf("%-22s %-11s %6ld %7ld %7ld %9ld %10ld\n", name.c_str(), fault, ops_clean, t.faults, t.failed_ops,
                t.committed_but_failed, t.violations);
    std::fflush(stdout);
    return t;
}

inline void print_summary(const totals& all, double seconds)
{
    std::printf("runs %ld, faults injected %ld, operations that reported an error %ld, violations %ld (%.1f s)\n",
                all.runs, all.faults, all.failed_ops, all.violations, seconds);
}

} // namespace fault_scenarios
