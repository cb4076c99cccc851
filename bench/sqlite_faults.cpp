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
#include "support/fault_scenarios.hpp"
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

using namespace fault_scenarios;

namespace {

std::vector<scenario> scenarios()
{
    auto all = common_scenarios();
    // Creating the schema in an empty file.
    all.push_back({
        "migration (new file)",
        {},
        [](jobs::storage*, const std::string& path, ledger&) { jobs::sqlite_storage s(path); },
        [](jobs::storage& s, const ledger&, bool) -> std::string {
            return total(s) == 0 ? std::string() : "jobs in a new file";
        },
        true,
    });
    // Schema 5 to 6: the counts rebuilt from the rows, tables added.
    all.push_back({
        "migration (schema 5)",
        [](jobs::storage& s, ledger& l) {
            enqueue_acked(s, l, 40);
            claim_acked(s, l, 6);
        },
        [](jobs::storage*, const std::string& path, ledger&) { jobs::sqlite_storage s(path); },
        [](jobs::storage& s, const ledger&, bool) -> std::string {
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

void remove_files(const std::string& path)
{
    std::error_code ec;
    for (const char* suffix : {"", "-wal", "-shm", "-journal"})
        std::filesystem::remove(path + suffix, ec);
}

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
