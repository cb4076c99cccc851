#include <hosting/coordination/coordination.hpp>

#include <sqlite3.h>

#include <chrono>
#include <fstream>

namespace hosting::coordination {

namespace {

// The processes that share a SQLite file share a machine, and so its
// monotonic clock, which no one can set: a lease cannot lapse early because
// the wall clock jumped. It restarts with the machine, so each row also
// keeps the boot it was written in, and one from another boot has lapsed.
std::int64_t machine_now_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

std::string this_boot()
{
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string id;
    std::getline(in, id);
    return id;
}

struct statement {
    sqlite3_stmt* s = nullptr;
    statement(sqlite3* db, const char* sql, const std::string& where)
    {
        if (sqlite3_prepare_v2(db, sql, -1, &s, nullptr) != SQLITE_OK)
            throw lease_store_error("coordination: " + where + ": " + sqlite3_errmsg(db));
    }
    ~statement() { sqlite3_finalize(s); }
    statement(const statement&) = delete;
    statement& operator=(const statement&) = delete;
};

} // namespace

struct sqlite_lease_store::impl {
    std::string path;
    std::string boot = this_boot();
    sqlite3* db = nullptr;

    std::string where() const { return "SQLite file '" + path + "'"; }

    [[noreturn]] void fail(const std::string& what) const
    {
        throw lease_store_error("coordination: " + where() + ": " + what + ": " + sqlite3_errmsg(db));
    }

    void exec(const char* sql)
    {
        if (sqlite3_exec(db, sql, nullptr, nullptr, nullptr) != SQLITE_OK)
            fail(sql);
    }

    void step_done(statement& st, const char* what)
    {
        const int rc = sqlite3_step(st.s);
        if (rc != SQLITE_DONE && rc != SQLITE_ROW)
            fail(what);
    }

    void bind(statement& st, int i, const std::string& v)
    {
        sqlite3_bind_text(st.s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    }
};

sqlite_lease_store::sqlite_lease_store(std::string path) : impl_(std::make_unique<impl>())
{
    impl_->path = std::move(path);
    if (impl_->path.empty())
        throw lease_store_error("coordination: the SQLite file's path is empty");
    if (sqlite3_open_v2(impl_->path.c_str(), &impl_->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
        SQLITE_OK) {
        const std::string why = impl_->db ? sqlite3_errmsg(impl_->db) : "out of memory";
        sqlite3_close(impl_->db);
        throw lease_store_error("coordination: cannot open " + impl_->where() + ": " + why);
    }
    try {
        // Short: the coordinator's thread must not wait long on another
        // process's write; a renewal that fails is tried again soon.
        sqlite3_busy_timeout(impl_->db, 1000);
        // Opening can find the file locked for longer than that: another
        // process recovering the log of one killed mid-write, on a busy
        // machine. Opening is not a renewal, and may wait longer.
        const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        for (;;) {
            try {
                // SQLite answers with the mode it is in, and keeps another
                // without an error where WAL cannot be (a database in
                // memory, which no other process could share).
                std::string mode;
                {
                    statement wal(impl_->db, "PRAGMA journal_mode=WAL", impl_->where());
                    if (sqlite3_step(wal.s) != SQLITE_ROW)
                        impl_->fail("PRAGMA journal_mode=WAL");
                    if (const auto* text = sqlite3_column_text(wal.s, 0))
                        mode = reinterpret_cast<const char*>(text);
                }
                if (mode != "wal")
                    throw lease_store_error("coordination: " + impl_->where() +
                                            " cannot use write-ahead logging (its journal mode is '" + mode +
                                            "'): give the lease store a file on a local disk");
                // A lease is worth nothing after the machine lost power:
                // NORMAL keeps it across a process's crash, which is what
                // matters.
                impl_->exec("PRAGMA synchronous=NORMAL");
                impl_->exec("CREATE TABLE IF NOT EXISTS hosting_leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, "
                            "term INTEGER NOT NULL, expires_at INTEGER NOT NULL, boot TEXT NOT NULL) WITHOUT ROWID");
                break;
            } catch (const lease_store_error&) {
                const int code = sqlite3_errcode(impl_->db) & 0xff;
                if ((code != SQLITE_BUSY && code != SQLITE_LOCKED) || std::chrono::steady_clock::now() >= until)
                    throw;
            }
        }
    } catch (...) {
        sqlite3_close(impl_->db);
        throw;
    }
}

sqlite_lease_store::~sqlite_lease_store() { sqlite3_close(impl_->db); }

std::string sqlite_lease_store::describe() const { return impl_->where(); }

std::optional<std::uint64_t> sqlite_lease_store::acquire(const std::string& name, const std::string& holder,
                                                         std::chrono::milliseconds duration)
{
    auto& d = *impl_;
    d.exec("BEGIN IMMEDIATE");
    try {
        std::uint64_t last_term = 0;
        {
            statement read(d.db, "SELECT holder, term, expires_at, boot FROM hosting_leases WHERE name = ?",
                           d.where());
            d.bind(read, 1, name);
            const int rc = sqlite3_step(read.s);
            if (rc == SQLITE_ROW) {
                const std::string current = reinterpret_cast<const char*>(sqlite3_column_text(read.s, 0));
                last_term = static_cast<std::uint64_t>(sqlite3_column_int64(read.s, 1));
                const auto expires = sqlite3_column_int64(read.s, 2);
                const std::string boot = reinterpret_cast<const char*>(sqlite3_column_text(read.s, 3));
                const bool running = !current.empty() && boot == d.boot && expires > machine_now_ms();
                if (running && current != holder) {
                    d.exec("ROLLBACK");
                    return std::nullopt;
                }
            } else if (rc != SQLITE_DONE)
                d.fail("reading lease '" + name + "'");
        }
        const std::uint64_t term = last_term + 1;
        statement write(d.db,
                        "INSERT INTO hosting_leases (name, holder, term, expires_at, boot) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, term = excluded.term, "
                        "expires_at = excluded.expires_at, boot = excluded.boot",
                        d.where());
        d.bind(write, 1, name);
        d.bind(write, 2, holder);
        sqlite3_bind_int64(write.s, 3, static_cast<sqlite3_int64>(term));
        sqlite3_bind_int64(write.s, 4, machine_now_ms() + duration.count());
        d.bind(write, 5, d.boot);
        d.step_done(write, ("taking lease '" + name + "'").c_str());
        d.exec("COMMIT");
        return term;
    } catch (...) {
        sqlite3_exec(d.db, "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
    }
}

bool sqlite_lease_store::renew(const std::string& name, const std::string& holder, std::uint64_t term,
                               std::chrono::milliseconds duration)
{
    auto& d = *impl_;
    statement st(d.db,
                 "UPDATE hosting_leases SET expires_at = ? WHERE name = ? AND holder = ? AND term = ? AND boot = ?",
                 d.where());
    sqlite3_bind_int64(st.s, 1, machine_now_ms() + duration.count());
    d.bind(st, 2, name);
    d.bind(st, 3, holder);
    sqlite3_bind_int64(st.s, 4, static_cast<sqlite3_int64>(term));
    d.bind(st, 5, d.boot);
    d.step_done(st, ("renewing lease '" + name + "'").c_str());
    return sqlite3_changes(d.db) == 1;
}

void sqlite_lease_store::release(const std::string& name, const std::string& holder, std::uint64_t term)
{
    auto& d = *impl_;
    statement st(d.db, "UPDATE hosting_leases SET holder = '', expires_at = 0 WHERE name = ? AND holder = ? AND term = ?",
                 d.where());
    d.bind(st, 1, name);
    d.bind(st, 2, holder);
    sqlite3_bind_int64(st.s, 3, static_cast<sqlite3_int64>(term));
    d.step_done(st, ("releasing lease '" + name + "'").c_str());
}

std::vector<lease_record> sqlite_lease_store::leases()
{
    auto& d = *impl_;
    statement st(d.db, "SELECT name, holder, term, expires_at, boot FROM hosting_leases ORDER BY name", d.where());
    std::vector<lease_record> out;
    const auto now = machine_now_ms();
    for (;;) {
        const int rc = sqlite3_step(st.s);
        if (rc == SQLITE_DONE)
            break;
        if (rc != SQLITE_ROW)
            d.fail("reading the leases");
        lease_record r;
        r.name = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 0));
        r.holder = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 1));
        r.term = static_cast<std::uint64_t>(sqlite3_column_int64(st.s, 2));
        const std::string boot = reinterpret_cast<const char*>(sqlite3_column_text(st.s, 4));
        const auto left = boot == d.boot ? sqlite3_column_int64(st.s, 3) - now : 0;
        r.expires_in = std::chrono::milliseconds(r.holder.empty() ? 0 : std::max<std::int64_t>(left, 0));
        out.push_back(std::move(r));
    }
    return out;
}

} // namespace hosting::coordination
