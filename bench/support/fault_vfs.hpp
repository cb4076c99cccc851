// bench/support/fault_vfs.hpp: a SQLite VFS that fails I/O on demand, the
// way SQLite's own test harness does (test_vfs.c, "ioerr" tests): the N-th
// operation from now fails, once or from then on, or every write reports
// the disk full. It wraps the default VFS and becomes the default, so the
// storage under test opens its file through it unchanged.
#pragma once

#include <cstdint>

namespace fault_vfs {

enum class mode {
    once,       // the N-th operation fails, later ones pass
    persistent, // the N-th and every later operation fail
    disk_full,  // the N-th write and every later one fail with SQLITE_FULL; reads pass
};

// Registers the shim as SQLite's default VFS (idempotent).
void install();

// Counts operations from zero; the n-th (1-based) fails as `m` says.
void arm(std::int64_t n, mode m);
// Nothing fails from now; the counters keep their values.
void disarm();

// Operations (reads, writes, syncs, truncates, opens, sizes) counted since arm().
std::int64_t operations();
// Faults injected since arm().
std::int64_t injected();

} // namespace fault_vfs
