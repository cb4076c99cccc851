#include "fault_vfs.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace fault_vfs {
namespace {

std::atomic<bool> armed{false};
std::atomic<std::int64_t> target{0};
std::atomic<mode> how{mode::once};
std::atomic<std::int64_t> counted{0};
std::atomic<std::int64_t> faults{0};
std::atomic<bool> volatile_writes{false};

sqlite3_vfs* real_vfs = nullptr;
sqlite3_vfs shim_vfs;

enum class op { read, write, other };

// Whether this operation fails; counts it either way.
bool fail(op what)
{
    if (!armed.load())
        return false;
    const auto m = how.load();
    if (m == mode::disk_full && what != op::write)
        return false;
    const auto n = ++counted;
    const auto t = target.load();
    const bool hit = m == mode::once ? n == t : n >= t;
    if (hit)
        ++faults;
    return hit;
}

// Writes not synced yet, in the order they were made (lose_unsynced_writes).
struct pending_write {
    sqlite3_int64 offset;
    std::string bytes;
};

struct file {
    sqlite3_file base;
    sqlite3_file* real; // follows this struct in the same allocation
    std::vector<pending_write>* pending; // null unless writes are volatile
};

sqlite3_file* real_of(sqlite3_file* f) { return reinterpret_cast<file*>(f)->real; }

std::vector<pending_write>* pending_of(sqlite3_file* f) { return reinterpret_cast<file*>(f)->pending; }

int flush(sqlite3_file* f)
{
    auto* p = pending_of(f);
    if (!p)
        return SQLITE_OK;
    auto* r = real_of(f);
    for (const auto& w : *p)
        if (int rc = r->pMethods->xWrite(r, w.bytes.data(), static_cast<int>(w.bytes.size()), w.offset);
            rc != SQLITE_OK)
            return rc;
    p->clear();
    return SQLITE_OK;
}

int io_error(int code) { return how.load() == mode::disk_full ? SQLITE_FULL : code; }

int x_close(sqlite3_file* f)
{
    auto* r = real_of(f);
    // A process that closes its file lives: the kernel keeps what it wrote.
    flush(f);
    delete pending_of(f);
    return r->pMethods ? r->pMethods->xClose(r) : SQLITE_OK;
}
int x_read(sqlite3_file* f, void* buffer, int amount, sqlite3_int64 offset)
{
    if (fail(op::read))
        return SQLITE_IOERR_READ;
    auto* r = real_of(f);
    auto* p = pending_of(f);
    if (!p || p->empty())
        return r->pMethods->xRead(r, buffer, amount, offset);
    int rc = r->pMethods->xRead(r, buffer, amount, offset);
    if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ)
        return rc;
    // What is pending covers the file as written, in order.
    sqlite3_int64 end_seen = 0;
    if (rc == SQLITE_IOERR_SHORT_READ) {
        sqlite3_int64 size = 0;
        r->pMethods->xFileSize(r, &size);
        end_seen = std::max<sqlite3_int64>(size, offset);
    } else {
        end_seen = offset + amount;
    }
    auto* out = static_cast<char*>(buffer);
    for (const auto& w : *p) {
        const auto from = std::max(offset, w.offset);
        const auto to = std::min(offset + amount, w.offset + static_cast<sqlite3_int64>(w.bytes.size()));
        if (from >= to)
            continue;
        std::memcpy(out + (from - offset), w.bytes.data() + (from - w.offset), static_cast<std::size_t>(to - from));
        end_seen = std::max(end_seen, to);
    }
    return end_seen >= offset + amount ? SQLITE_OK : SQLITE_IOERR_SHORT_READ;
}
int x_write(sqlite3_file* f, const void* buffer, int amount, sqlite3_int64 offset)
{
    if (fail(op::write))
        return io_error(SQLITE_IOERR_WRITE);
    if (auto* p = pending_of(f)) {
        p->push_back({offset, std::string(static_cast<const char*>(buffer), static_cast<std::size_t>(amount))});
        return SQLITE_OK;
    }
    auto* r = real_of(f);
    return r->pMethods->xWrite(r, buffer, amount, offset);
}
int x_truncate(sqlite3_file* f, sqlite3_int64 size)
{
    if (fail(op::other))
        return SQLITE_IOERR_TRUNCATE;
    // Made durable with what came before it: simpler than a pending
    // truncation, and it loses less, never more, than a crash would.
    if (int rc = flush(f); rc != SQLITE_OK)
        return rc;
    auto* r = real_of(f);
    return r->pMethods->xTruncate(r, size);
}
int x_sync(sqlite3_file* f, int flags)
{
    if (fail(op::other))
        return SQLITE_IOERR_FSYNC;
    if (int rc = flush(f); rc != SQLITE_OK)
        return rc;
    auto* r = real_of(f);
    return r->pMethods->xSync(r, flags);
}
int x_file_size(sqlite3_file* f, sqlite3_int64* size)
{
    if (fail(op::other))
        return SQLITE_IOERR_FSTAT;
    auto* r = real_of(f);
    if (int rc = r->pMethods->xFileSize(r, size); rc != SQLITE_OK)
        return rc;
    if (auto* p = pending_of(f))
        for (const auto& w : *p)
            *size = std::max(*size, w.offset + static_cast<sqlite3_int64>(w.bytes.size()));
    return SQLITE_OK;
}
int x_lock(sqlite3_file* f, int level) { auto* r = real_of(f); return r->pMethods->xLock(r, level); }
int x_unlock(sqlite3_file* f, int level) { auto* r = real_of(f); return r->pMethods->xUnlock(r, level); }
int x_check_reserved_lock(sqlite3_file* f, int* out)
{
    auto* r = real_of(f);
    return r->pMethods->xCheckReservedLock(r, out);
}
int x_file_control(sqlite3_file* f, int op, void* arg)
{
    auto* r = real_of(f);
    return r->pMethods->xFileControl(r, op, arg);
}
int x_sector_size(sqlite3_file* f) { auto* r = real_of(f); return r->pMethods->xSectorSize(r); }
int x_device_characteristics(sqlite3_file* f)
{
    auto* r = real_of(f);
    return r->pMethods->xDeviceCharacteristics(r);
}
// Shared memory is the WAL index, rebuilt from the WAL whenever it is in
// doubt: it is not what a disk failure damages, so it passes through.
int x_shm_map(sqlite3_file* f, int page, int size, int extend, void volatile** out)
{
    auto* r = real_of(f);
    return r->pMethods->xShmMap(r, page, size, extend, out);
}
int x_shm_lock(sqlite3_file* f, int offset, int n, int flags)
{
    auto* r = real_of(f);
    return r->pMethods->xShmLock(r, offset, n, flags);
}
void x_shm_barrier(sqlite3_file* f) { auto* r = real_of(f); r->pMethods->xShmBarrier(r); }
int x_shm_unmap(sqlite3_file* f, int del)
{
    auto* r = real_of(f);
    return r->pMethods->xShmUnmap(r, del);
}
// Memory-mapped reads would bypass xRead: refuse them, so every read counts.
int x_fetch(sqlite3_file*, sqlite3_int64, int, void** out)
{
    *out = nullptr;
    return SQLITE_OK;
}
int x_unfetch(sqlite3_file* f, sqlite3_int64 offset, void* p)
{
    auto* r = real_of(f);
    return r->pMethods->iVersion >= 3 ? r->pMethods->xUnfetch(r, offset, p) : SQLITE_OK;
}

const sqlite3_io_methods methods = {
    3,
    x_close,
    x_read,
    x_write,
    x_truncate,
    x_sync,
    x_file_size,
    x_lock,
    x_unlock,
    x_check_reserved_lock,
    x_file_control,
    x_sector_size,
    x_device_characteristics,
    x_shm_map,
    x_shm_lock,
    x_shm_barrier,
    x_shm_unmap,
    x_fetch,
    x_unfetch,
};

int x_open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags)
{
    auto* shim = reinterpret_cast<file*>(f);
    shim->base.pMethods = nullptr;
    shim->real = reinterpret_cast<sqlite3_file*>(shim + 1);
    shim->real->pMethods = nullptr;
    shim->pending = nullptr;
    if (fail(op::other))
        return SQLITE_CANTOPEN;
    const int rc = real_vfs->xOpen(real_vfs, name, shim->real, flags, out_flags);
    if (shim->real->pMethods) {
        shim->base.pMethods = &methods;
        // The WAL only (see lose_unsynced_writes).
        if (volatile_writes.load() && (flags & SQLITE_OPEN_WAL))
            shim->pending = new std::vector<pending_write>();
    }
    return rc;
}
int x_delete(sqlite3_vfs*, const char* name, int sync_dir)
{
    if (fail(op::other))
        return SQLITE_IOERR_DELETE;
    return real_vfs->xDelete(real_vfs, name, sync_dir);
}
int x_access(sqlite3_vfs*, const char* name, int flags, int* out)
{
    if (fail(op::other))
        return SQLITE_IOERR_ACCESS;
    return real_vfs->xAccess(real_vfs, name, flags, out);
}
int x_full_pathname(sqlite3_vfs*, const char* name, int n, char* out)
{
    return real_vfs->xFullPathname(real_vfs, name, n, out);
}
void* x_dl_open(sqlite3_vfs*, const char* name) { return real_vfs->xDlOpen(real_vfs, name); }
void x_dl_error(sqlite3_vfs*, int n, char* out) { real_vfs->xDlError(real_vfs, n, out); }
void (*x_dl_sym(sqlite3_vfs*, void* h, const char* sym))(void) { return real_vfs->xDlSym(real_vfs, h, sym); }
void x_dl_close(sqlite3_vfs*, void* h) { real_vfs->xDlClose(real_vfs, h); }
int x_randomness(sqlite3_vfs*, int n, char* out) { return real_vfs->xRandomness(real_vfs, n, out); }
int x_sleep(sqlite3_vfs*, int us) { return real_vfs->xSleep(real_vfs, us); }
int x_current_time(sqlite3_vfs*, double* out) { return real_vfs->xCurrentTime(real_vfs, out); }
int x_get_last_error(sqlite3_vfs*, int n, char* out) { return real_vfs->xGetLastError(real_vfs, n, out); }
int x_current_time_int64(sqlite3_vfs*, sqlite3_int64* out) { return real_vfs->xCurrentTimeInt64(real_vfs, out); }

} // namespace

void install()
{
    static std::once_flag once;
    std::call_once(once, [] {
        real_vfs = sqlite3_vfs_find(nullptr);
        std::memset(&shim_vfs, 0, sizeof shim_vfs);
        shim_vfs.iVersion = 2;
        shim_vfs.szOsFile = static_cast<int>(sizeof(file)) + real_vfs->szOsFile;
        shim_vfs.mxPathname = real_vfs->mxPathname;
        shim_vfs.zName = "fault";
        shim_vfs.xOpen = x_open;
        shim_vfs.xDelete = x_delete;
        shim_vfs.xAccess = x_access;
        shim_vfs.xFullPathname = x_full_pathname;
        shim_vfs.xDlOpen = x_dl_open;
        shim_vfs.xDlError = x_dl_error;
        shim_vfs.xDlSym = x_dl_sym;
        shim_vfs.xDlClose = x_dl_close;
        shim_vfs.xRandomness = x_randomness;
        shim_vfs.xSleep = x_sleep;
        shim_vfs.xCurrentTime = x_current_time;
        shim_vfs.xGetLastError = x_get_last_error;
        shim_vfs.xCurrentTimeInt64 = x_current_time_int64;
        sqlite3_vfs_register(&shim_vfs, 1);
    });
}

void arm(std::int64_t n, mode m)
{
    armed = false;
    counted = 0;
    faults = 0;
    target = n;
    how = m;
    armed = true;
}

void disarm() { armed = false; }

void lose_unsynced_writes(bool on) { volatile_writes = on; }

std::int64_t operations() { return counted.load(); }
std::int64_t injected() { return faults.load(); }

} // namespace fault_vfs
