// sqlite_faults: fails the N-th I/O operation of each storage operation
// (enqueue, claim, complete, recurring tick, prune, migration) for N = 1,
// 2, 3, ... until the operation passes untouched; once, from then on, and
// as a full disk. After every fault, whatever the operation reported:
//   - the connection that saw the fault still works (and its next enqueue
//     is acknowledged),
//   - PRAGMA integrity_check says ok, and the file opens again,
//   - no acknowledged enqueue is lost, the operation happened entirely or
//     not at all, and when it was acknowledged it happened,
//   - no job is running without a live lease, and the maintained counts
//     match the rows.
// Prints the faults injected and the violations; exits 1 on any violation.
//
//   sqlite_faults [--dir D] [--max-n N]
#include "support/fault_vfs.hpp"

#include <hosting/jobs/sqlite_storage.hpp>

#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

namespace jobs = hosting::jobs;
using jobs::job_state;
using namespace std::chrono_literals;

namespace {

// Whole microseconds: what the file keeps of a time.
const jobs::time_point t0 = std::chrono::floor<std::chrono::microseconds>(jobs::clock::now());
const std::string node = "faulty-node";

jobs::enqueue_request request(int n)
{
    jobs::enqueue_request r;
    r.kind = "k";
    r.queue = "default";
    r.args = std::to_string(n);
    r.max_attempts = 3;
    return r;
}

jobs::claim_request claim_of(std::size_t n)
{
    return {node, {{"default", n}}, {"k"}, t0 + 1h};
}

// What the file must hold, as far as the program was told.
struct ledger {
    std::set<jobs::job_id> acknowledged; // enqueues that returned
    std::set<jobs::job_id> claimed;      // claims that returned, not completed since
    std::size_t total_before = 0;        // jobs before the operation
};

struct scenario {
    std::string name;
    // Before the fault is armed, on the live connection.
    std::function<void(jobs::sqlite_storage&, ledger&)> setup;
    // Under the fault; records what it acknowledged. Opens the file itself
    // when `opens` (a migration): then `live` is null.
    std::function<void(jobs::sqlite_storage* live, const std::string& path, ledger&)> op;
    // After the fault, on the file opened again: returns what is wrong.
    // `acked`: the operation returned.
    std::function<std::string(jobs::sqlite_storage&, const ledger&, bool acked)> check;
    bool opens = false;
};

std::size_t total(jobs::sqlite_storage& s)
{
    std::size_t n = 0;
    for (auto c : s.counts().by_state)
        n += static_cast<std::size_t>(c);
    return n;
}

std::vector<jobs::job> all_in(jobs::sqlite_storage& s, job_state state)
{
    jobs::job_filter f;
    f.state = state;
    f.limit = 100000;
    return s.list(f);
}

void enqueue_acked(jobs::sqlite_storage& s, ledger& l, int n, int first = 0)
{
    std::vector<jobs::enqueue_request> batch;
    for (int i = 0; i < n; ++i)
        batch.push_back(request(first + i));
    for (const auto& r : s.enqueue(batch, t0))
        l.acknowledged.insert(r.id);
}

void claim_acked(jobs::sqlite_storage& s, ledger& l, std::size_t n)
{
    for (const auto& j : s.complete_and_claim({}, claim_of(n), t0))
        l.claimed.insert(j.id);
}

std::vector<scenario> scenarios()
{
    std::vector<scenario> all;
    all.push_back({
        "enqueue",
        [](jobs::sqlite_storage& s, ledger& l) { enqueue_acked(s, l, 20); },
        [](jobs::sqlite_storage* s, const std::string&, ledger& l) { enqueue_acked(*s, l, 10, 100); },
        [](jobs::sqlite_storage& s, const ledger& l, bool acked) -> std::string {
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
        [](jobs::sqlite_storage& s, ledger& l) { enqueue_acked(s, l, 20); },
        [](jobs::sqlite_storage* s, const std::string&, ledger& l) { claim_acked(*s, l, 5); },
        [](jobs::sqlite_storage& s, const ledger&, bool acked) -> std::string {
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
        [](jobs::sqlite_storage& s, ledger& l) {
            enqueue_acked(s, l, 20);
            claim_acked(s, l, 5);
        },
        [](jobs::sqlite_storage* s, const std::string&, ledger& l) {
            std::vector<jobs::completion> done;
            for (auto id : l.claimed)
                done.push_back({id, 1, jobs::outcome::succeeded, {}, {}, "done"});
            // And the next claim, as the server sends them.
            auto next = s->complete_and_claim(done, claim_of(3), t0);
            l.claimed.clear();
            for (const auto& j : next)
                l.claimed.insert(j.id);
        },
        [](jobs::sqlite_storage& s, const ledger&, bool acked) -> std::string {
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
        [](jobs::sqlite_storage& s, ledger& l) {
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
        [](jobs::sqlite_storage* s, const std::string&, ledger&) {
            auto occurrence = request(7);
            occurrence.recurring_id = "tick";
            occurrence.run_at = t0;
            occurrence.unique_key = "recurring:tick:0";
            occurrence.unique_states = jobs::state_set::all();
            if (!s->fire_recurring("tick", t0, t0 + 1h, std::span(&occurrence, 1), t0))
                throw std::runtime_error("the tick was refused");
        },
        [](jobs::sqlite_storage& s, const ledger& l, bool acked) -> std::string {
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
        [](jobs::sqlite_storage& s, ledger& l) {
            enqueue_acked(s, l, 30);
            claim_acked(s, l, 30);
            std::vector<jobs::completion> done;
            for (auto id : l.claimed)
                done.push_back({id, 1, jobs::outcome::succeeded, {}, {}, "done"});
            s.complete_and_claim(done, claim_of(0), t0);
            l.claimed.clear();
            enqueue_acked(s, l, 5, 50);
        },
        [](jobs::sqlite_storage* s, const std::string&, ledger& l) {
            // Pruned on purpose: no longer expected, whatever prune reports.
            for (auto it = l.acknowledged.begin(); it != l.acknowledged.end();)
                it = *it <= 30 ? l.acknowledged.erase(it) : std::next(it);
            if (s->prune(job_state::succeeded, t0 + 1h, 1000, t0 + 1h) != 30)
                throw std::runtime_error("prune removed another number");
        },
        [](jobs::sqlite_storage& s, const ledger&, bool acked) -> std::string {
            const auto ok = all_in(s, job_state::succeeded).size();
            if (acked && ok != 0)
                return "an acknowledged prune left " + std::to_string(ok) + " jobs";
            if (ok != 0 && ok != 30)
                return "a prune was half stored: " + std::to_string(ok) + " left";
            return {};
        },
    });
    // Creating the schema in an empty file.
    all.push_back({
        "migration (new file)",
        {},
        [](jobs::sqlite_storage*, const std::string& path, ledger&) { jobs::sqlite_storage s(path); },
        [](jobs::sqlite_storage& s, const ledger&, bool) -> std::string {
            return total(s) == 0 ? std::string() : "jobs in a new file";
        },
        true,
    });
    // Schema 5 to 6: the counts rebuilt from the rows, tables added.
    all.push_back({
        "migration (schema 5)",
        [](jobs::sqlite_storage& s, ledger& l) {
            enqueue_acked(s, l, 40);
            claim_acked(s, l, 6);
        },
        [](jobs::sqlite_storage*, const std::string& path, ledger&) { jobs::sqlite_storage s(path); },
        [](jobs::sqlite_storage& s, const ledger&, bool) -> std::string {
            if (all_in(s, job_state::running).size() != 6 || all_in(s, job_state::available).size() != 34)
                return "the migrated file lost jobs or their states";
            return {};
        },
        true,
    });
    return all;
}

// Turns the file back into what schema 5 wrote (see the migration tests).
void downgrade_to_5(const std::string& path)
{
    sqlite3* raw = nullptr;
    sqlite3_open(path.c_str(), &raw);
    const char* sql = "DROP TABLE nodes; DROP TABLE paused_queues; ALTER TABLE recurring_jobs DROP COLUMN paused; "
                      "DELETE FROM hosting_jobs_schema WHERE version >= 6;";
    char* error = nullptr;
    if (sqlite3_exec(raw, sql, nullptr, nullptr, &error) != SQLITE_OK) {
        std::fprintf(stderr, "downgrade failed: %s\n", error);
        std::exit(2);
    }
    sqlite3_close(raw);
}

std::string integrity(const std::string& path)
{
    sqlite3* raw = nullptr;
    if (sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK) {
        std::string e = sqlite3_errmsg(raw);
        sqlite3_close(raw);
        return "cannot open: " + e;
    }
    std::string result;
    sqlite3_exec(
        raw, "PRAGMA integrity_check",
        [](void* out, int, char** values, char**) {
            auto& r = *static_cast<std::string*>(out);
            r += values[0] ? values[0] : "null";
            return 0;
        },
        &result, nullptr);
    sqlite3_close(raw);
    return result;
}

// The checks every scenario shares, on the file opened again.
std::string common_checks(jobs::sqlite_storage& s, const ledger& l)
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

void remove_files(const std::string& path)
{
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm", "-journal"})
        std::filesystem::remove(path + suffix, ec);
}

struct totals {
    long runs = 0, faults = 0, failed_ops = 0, violations = 0, committed_but_failed = 0;
};

const char* mode_name(fault_vfs::mode m)
{
    switch (m) {
    case fault_vfs::mode::once: return "once";
    case fault_vfs::mode::persistent: return "persistent";
    case fault_vfs::mode::disk_full: return "disk full";
    }
    return "?";
}

} // namespace

int main(int argc, char** argv)
{
    std::string dir = std::filesystem::temp_directory_path().string();
    long max_n = 100000;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--dir")
            dir = argv[i + 1];
        else if (a == "--max-n")
            max_n = std::atol(argv[i + 1]);
        else {
            std::fprintf(stderr, "usage: sqlite_faults [--dir D] [--max-n N]\n");
            return 2;
        }
    }
    fault_vfs::install();
    const std::string path = dir + "/hosting-faults-" + std::to_string(::getpid()) + ".db";
    const auto started = std::chrono::steady_clock::now();
    totals all;
    std::printf("%-22s %-11s %6s %7s %7s %9s %10s\n", "operation", "fault", "ops", "faults", "errors", "committed",
                "violations");
    for (const auto& sc : scenarios()) {
        for (auto m : {fault_vfs::mode::once, fault_vfs::mode::persistent, fault_vfs::mode::disk_full}) {
            totals t;
            long n = 1;
            std::int64_t ops_clean = 0;
            for (; n <= max_n; ++n) {
                remove_files(path);
                ledger l;
                std::unique_ptr<jobs::sqlite_storage> live;
                if (sc.setup || !sc.opens) {
                    jobs::sqlite_storage s(path);
                    if (sc.setup)
                        sc.setup(s, l);
                    l.total_before = total(s);
                }
                if (sc.name == "migration (schema 5)")
                    downgrade_to_5(path);
                if (!sc.opens)
                    live = std::make_unique<jobs::sqlite_storage>(path);
                std::string violation;
                bool acked = false;
                fault_vfs::arm(n, m);
                try {
                    sc.op(live.get(), path, l);
                    acked = true;
                } catch (const jobs::storage_error&) {
                    ++t.failed_ops;
                } catch (const std::exception& e) {
                    violation = std::string("not a storage_error: ") + e.what();
                }
                fault_vfs::disarm();
                const auto faults = fault_vfs::injected();
                const auto ops = fault_vfs::operations();
                t.faults += faults;
                ++t.runs;
                // The connection that saw the fault goes on working.
                if (violation.empty() && live) {
                    try {
                        enqueue_acked(*live, l, 1, 900);
                        ++l.total_before; // the checks compare what the operation did
                        live->counts();
                    } catch (const std::exception& e) {
                        violation = std::string("the connection does not recover: ") + e.what();
                    }
                }
                live.reset();
                // A new file whose creation failed may not exist: nothing
                // was acknowledged in it.
                const bool absent = sc.opens && !sc.setup && !std::filesystem::exists(path);
                if (violation.empty() && !absent) {
                    if (auto r = integrity(path); r != "ok")
                        violation = "integrity_check: " + r;
                }
                if (violation.empty() && !absent) {
                    try {
                        jobs::sqlite_storage again(path);
                        violation = common_checks(again, l);
                        if (violation.empty())
                            violation = sc.check(again, l, acked);
                        if (violation.empty() && !acked && sc.name == "enqueue" && total(again) != l.total_before)
                            ++t.committed_but_failed;
                    } catch (const std::exception& e) {
                        violation = std::string("the file does not open again: ") + e.what();
                    }
                }
                if (!violation.empty()) {
                    ++t.violations;
                    std::printf("VIOLATION %s, %s fault at operation %ld: %s\n", sc.name.c_str(), mode_name(m), n,
                                violation.c_str());
                }
                if (faults == 0) {
                    // Past its last I/O operation: it must pass untouched.
                    if (!acked) {
                        ++t.violations;
                        std::printf("VIOLATION %s failed with no fault injected\n", sc.name.c_str());
                    }
                    ops_clean = ops;
                    break;
                }
            }
            if (n > max_n) {
                ++t.violations;
                std::printf("VIOLATION %s, %s: still failing at operation %ld\n", sc.name.c_str(), mode_name(m),
                            max_n);
            }
            std::printf("%-22s %-11s %6lld %7ld %7ld %9ld %10ld\n", sc.name.c_str(), mode_name(m),
                        static_cast<long long>(ops_clean), t.faults, t.failed_ops, t.committed_but_failed,
                        t.violations);
            std::fflush(stdout);
            all.runs += t.runs;
            all.faults += t.faults;
            all.failed_ops += t.failed_ops;
            all.violations += t.violations;
        }
    }
    remove_files(path);
    const auto seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("runs %ld, faults injected %ld, operations that reported an error %ld, violations %ld (%.1f s)\n",
                all.runs, all.faults, all.failed_ops, all.violations, seconds);
    return all.violations == 0 ? 0 : 1;
}
