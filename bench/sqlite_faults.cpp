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
//     match the rows,
//   - while a fault lasts (from then on, a full disk), a host with the jobs
//     server on the same file starts and reports not ready (HTTP 503 on
//     /health/ready), and ready again (200) once it is lifted.
// Prints the faults injected and the violations; exits 1 on any violation.
//
//   sqlite_faults [--dir D] [--max-n N]
#include "support/fault_scenarios.hpp"
#include "support/fault_vfs.hpp"
#include "support/readiness_probe.hpp"

#include <hosting/jobs/sqlite_storage.hpp>

#include <sqlite3.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
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
    const char* sql = "UPDATE jobs SET unique_slot = unique_held WHERE unique_held IS NOT NULL; "
                      "DROP INDEX jobs_unique_held; ALTER TABLE jobs DROP COLUMN unique_held; "
                      "DROP TABLE hosting_jobs_readers; "
                      "CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN INSERT INTO job_counts "
                      "VALUES (new.queue, new.kind, new.state, 1) ON CONFLICT DO UPDATE SET n = n + 1; END; "
                      "CREATE TRIGGER jobs_counted_update AFTER UPDATE OF state ON jobs WHEN old.state <> new.state "
                      "BEGIN UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND kind = old.kind "
                      "AND state = old.state; INSERT INTO job_counts VALUES (new.queue, new.kind, new.state, 1) "
                      "ON CONFLICT DO UPDATE SET n = n + 1; END; "
                      "DROP TABLE nodes; DROP TABLE paused_queues; ALTER TABLE recurring_jobs DROP COLUMN paused; "
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
    long readiness_probes = 0;
    print_header();
    for (const auto& sc : scenarios()) {
        for (auto m : {fault_vfs::mode::once, fault_vfs::mode::persistent, fault_vfs::mode::disk_full}) {
            all.add(until_clean(sc.name, mode_name(m), max_n, [&](long n) {
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
                // Opened and built before the fault; started once it fired.
                bench::readiness_around_fault readiness(m != fault_vfs::mode::once && !sc.opens
                                                            ? std::make_shared<jobs::sqlite_storage>(path)
                                                            : nullptr);
                auto while_failing = [&] { return readiness.while_failing(fault_vfs::injected() != 0, readiness_probes); };
                auto once_lifted = [&] { return readiness.once_lifted(); };
                fault_vfs::arm(n, m);
                auto counted = [] { return std::pair<long, long>(fault_vfs::injected(), fault_vfs::operations()); };
                auto lift = [] { fault_vfs::disarm(); };
                // A new file whose creation failed may not exist: nothing
                // was acknowledged in it. Otherwise the file must pass
                // SQLite's own check before it is opened again.
                return operate(sc, live.get(), path, l, counted, lift, 1, [&]() -> std::unique_ptr<jobs::storage> {
                    live.reset();
                    if (sc.opens && !sc.setup && !std::filesystem::exists(path))
                        return nullptr;
                    if (auto r = integrity(path); r != "ok")
                        throw std::runtime_error("integrity_check: " + r);
                    return std::make_unique<jobs::sqlite_storage>(path);
                }, while_failing, once_lifted);
            }));
        }
    }
    remove_files(path);
    print_summary(all, std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    std::printf("hosts started on the failing storage and probed for readiness: %ld\n", readiness_probes);
    return all.violations == 0 ? 0 : 1;
}
