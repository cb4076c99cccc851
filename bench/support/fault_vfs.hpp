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

// From now, what this process writes to a WAL file stays in its memory
// until the file is synced (or closed): a SIGKILL loses it, as a power loss
// loses what the disk had not made durable. Reads see it. Other processes
// see it once synced, which keeps the file true to what every process saw
// in WAL mode with synchronous=FULL only: there a commit's frames are synced
// before the commit becomes visible. The database file's writes go
// through: a checkpoint cut short (a busy reader) leaves pages written and
// not synced that other processes then read, so dropping them would show
// a file no machine could hold.
void lose_unsynced_writes(bool on);

// Operations (reads, writes, syncs, truncates, opens, sizes) counted since arm().
std::int64_t operations();
// Faults injected since arm().
std::int64_t injected();

} // namespace fault_vfs
