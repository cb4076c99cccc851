#include <hosting/jobs/sqlite_storage.hpp>

#include "jobs/detail/stored.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <array>
#include <functional>
#include <iterator>
#include <limits>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

namespace hosting::jobs {

namespace {

using namespace detail;

// What went wrong, naming the file: a process may open several, and
// "database is locked" alone says neither which nor why.
std::string failure(sqlite3* db, int rc, const std::string& what)
{
    const char* file = sqlite3_db_filename(db, "main");
    std::string out = "jobs: SQLite file '" + std::string(file ? file : "?") + "': " + what + ": " + sqlite3_errmsg(db);
    if ((rc & 0xff) == SQLITE_BUSY)
        out += " (another process held its write lock past sqlite_options::busy_timeout)";
    return out;
}

// A prepared statement, reset after each use.
class statement {
public:
    statement(sqlite3* db, const char* sql) : db_(db)
    {
        if (const int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr); rc != SQLITE_OK)
            throw storage_error(failure(db, rc, "cannot prepare a statement"));
    }
    ~statement() { sqlite3_finalize(stmt_); }
    statement(const statement&) = delete;
    statement& operator=(const statement&) = delete;

    statement& bind(int i, std::int64_t v)
    {
        check(sqlite3_bind_int64(stmt_, i, v));
        return *this;
    }
    statement& bind(int i, int v) { return bind(i, static_cast<std::int64_t>(v)); }
    statement& bind(int i, std::string_view v)
    {
        check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
        return *this;
    }
    statement& bind_null(int i)
    {
        check(sqlite3_bind_null(stmt_, i));
        return *this;
    }
    // NULL for an empty string: the columns that mean "none" that way.
    statement& bind_or_null(int i, std::string_view v) { return v.empty() ? bind_null(i) : bind(i, v); }

    // True while there is a row.
    bool step()
    {
        const int rc = sqlite3_step(stmt_);
        if (rc == SQLITE_ROW)
            return true;
        if (rc == SQLITE_DONE)
            return false;
        std::string message = failure(db_, rc, "a statement failed");
        sqlite3_reset(stmt_);
        throw storage_error(message);
    }
    void run()
    {
        while (step()) {
        }
    }
    void reset()
    {
        sqlite3_reset(stmt_);
        sqlite3_clear_bindings(stmt_);
    }

    std::int64_t integer(int i) const { return sqlite3_column_int64(stmt_, i); }
    bool is_null(int i) const { return sqlite3_column_type(stmt_, i) == SQLITE_NULL; }
    std::string text(int i) const { return std::string(view(i)); }
    // Valid until the next step or reset.
    std::string_view view(int i) const
    {
        auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, i));
        return p ? std::string_view(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_, i))) : std::string_view();
    }

private:
    void check(int rc)
    {
        if (rc != SQLITE_OK)
            throw storage_error(failure(db_, rc, "cannot bind a value"));
    }
    sqlite3* db_;
    sqlite3_stmt* stmt_ = nullptr;
};

// Resets the statement when the scope ends, however it ends.
struct using_statement {
    statement& s;
    ~using_statement() { s.reset(); }
};

// A JSON array of ids, each item's by `id_of` (SQLite reads it with
// json_each).
template <class Range, class Id = std::identity>
std::string json_ids(const Range& items, Id id_of = {})
{
    std::string out = "[";
    for (const auto& item : items) {
        if (out.size() > 1)
            out += ',';
        out += std::to_string(id_of(item));
    }
    out += ']';
    return out;
}

// The columns read_job reads. Without the history, NULL takes its place:
// a claim need not copy every claimed job's whole history.
std::string job_columns(bool with_history)
{
    return std::string("id, kind, queue, args, priority, state, attempt, max_attempts, timeout_ms, "
                       "created_at, run_at, unique_key, lease_owner, lease_expires, last_error, cancel_requested, ") +
           (with_history ? "history" : "NULL") + ", concurrency_key, parent_id, condition, recurring_id";
}

// The assignment that appends one line to a job's history, `line` SQL for
// its JSON array as text (a json_array(), which is never NULL, or a bound
// history_line()). The line goes in as text, between the history's last
// line and its closing bracket, where json_insert parsed the whole history
// for each line: about 2% of a claim's and a completion's instructions
// (callgrind). Every line ends in a string (its error, "" if none), so
// trimming the brackets at the end stops at that string's closing quote,
// whatever the string holds. A history is never empty (its first line is
// written with the job), but one that were ('[]') would still come out as
// JSON: put in brackets as text, since json_array() would take a bound
// line for a string.
std::string history_plus(const std::string& line)
{
    return "history = CASE history WHEN '[]' THEN '[' || " + line + " || ']' ELSE rtrim(history, ']') || '],' || " +
           line + " || ']' END";
}

// One line of a history, [from, to, at_us, reason, error], as the JSON text
// json_array() would make of it: bound once for a whole batch whose rows
// all add the same line, rather than made by SQLite for each row, which
// cost 4% of a claim's and a completion's instructions (callgrind).
std::string history_line(job_state from, job_state to, std::int64_t at, std::string_view reason)
{
    return '[' + std::to_string(code(from)) + ',' + std::to_string(code(to)) + ',' + std::to_string(at) + ',' +
           json_string(valid_text(reason)) + ",\"\"]";
}

// What a completion does to its job, for one row (complete) or many
// (complete_many): `to` the state its outcome asks for, the rest likewise
// SQL for their values. A job cancelled (cancel_requested = 1) or deleted
// (2) while it ran, from this process or another, ends cancelled or
// deleted, whatever the attempt's outcome, the attempt counted.
// `plain_line`, if given, is SQL for the history line of a job that was not
// asked to stop (a history_line()); the others' lines are made here.
std::string completion_set(const std::string& to, const std::string& delta, const std::string& run_at,
                           const std::string& error, const std::string& now, const std::string& reason,
                           const std::string& plain_line = {})
{
    const std::string stopping = "cancel_requested <> 0";
    const std::string ended = "(CASE cancel_requested WHEN 2 THEN 8 WHEN 1 THEN 7 ELSE " + to + " END)";
    return "state = " + ended + ", attempt = attempt + CASE WHEN " + stopping + " THEN 0 ELSE " + delta +
           " END, run_at = CASE WHEN " + stopping + " THEN run_at ELSE coalesce(" + run_at +
           ", run_at) END, last_error = coalesce(" + error + ", last_error), lease_owner = NULL, "
           "lease_expires = NULL, cancel_requested = 0, updated_at = " + now +
           ", " +
           history_plus((plain_line.empty() ? std::string() : "CASE cancel_requested WHEN 0 THEN " + plain_line + " ELSE ") +
                        "json_array(state, " + ended + ", " + now +
                        ", CASE cancel_requested WHEN 2 THEN 'deleted while running; the attempt ended: ' || " +
                        reason + " WHEN 1 THEN CASE WHEN " + to + " = 7 THEN " + reason +
                        " ELSE 'cancelled while running; the attempt ended: ' || " + reason + " END ELSE " + reason +
                        " END, coalesce(" + error + ", ''))" + (plain_line.empty() ? "" : " END")) +
           ", unique_held = CASE WHEN (unique_states >> " + ended +
           ") & 1 THEN unique_scoped END";
}

// The closer of the connection's handle, declared before its statements so
// that they are finalized first, whichever way the connection ends.
struct database_closer {
    void operator()(sqlite3* db) const { sqlite3_close(db); }
};

const char* const migration_1 = R"sql(
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    kind             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    args             TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    state            INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    unique_key       TEXT,
    unique_states    INTEGER NOT NULL DEFAULT 0,
    -- The unique key while the state is one of unique_states, else NULL:
    -- the unique index then enforces "one job per key in those states".
    unique_slot      TEXT UNIQUE,
    lease_owner      TEXT,
    lease_expires    INTEGER,
    last_error       TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    concurrency_key  TEXT,
    parent_id        INTEGER,
    condition        INTEGER NOT NULL DEFAULT 0,
    recurring_id     TEXT,
    unknown_flagged  INTEGER NOT NULL DEFAULT 0,
    updated_at       INTEGER NOT NULL,
    -- [[from, to, at_us, reason, error], ...]
    history          TEXT    NOT NULL
);
CREATE TABLE recurring_jobs (
    id           TEXT    PRIMARY KEY,
    cron         TEXT    NOT NULL,
    zone         TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    args         TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    priority     INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    timeout_ms   INTEGER NOT NULL,
    missed       INTEGER NOT NULL,
    next_fire    INTEGER NOT NULL,
    last_fire    INTEGER
);
-- Partial indexes: claims and promotions only ever look at these rows.
CREATE INDEX jobs_ready   ON jobs (queue, priority, run_at, id) WHERE state = 1;
CREATE INDEX jobs_due     ON jobs (run_at) WHERE state IN (0, 4);
CREATE INDEX jobs_running ON jobs (lease_owner) WHERE state = 3;
CREATE INDEX jobs_state   ON jobs (state, id);
CREATE INDEX jobs_aged    ON jobs (state, updated_at);
CREATE INDEX jobs_waiting ON jobs (parent_id) WHERE state = 2;
CREATE INDEX jobs_held    ON jobs (concurrency_key) WHERE state = 3 AND concurrency_key IS NOT NULL;
)sql";

// Counting by state cost a scan of the whole table on every heartbeat,
// which a table holding a week of finished jobs cannot afford. Triggers
// keep the counts in step with every write, from any process.
const char* const migration_2 = R"sql(
CREATE TABLE job_counts (state INTEGER PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
WITH RECURSIVE s(state) AS (SELECT 0 UNION ALL SELECT state + 1 FROM s WHERE state < 8)
INSERT INTO job_counts SELECT s.state, (SELECT count(*) FROM jobs WHERE jobs.state = s.state) FROM s;
CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
    UPDATE job_counts SET n = n + 1 WHERE state = new.state;
END;
CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = old.state;
END;
CREATE TRIGGER jobs_counted_update AFTER UPDATE OF state ON jobs WHEN old.state <> new.state BEGIN
    UPDATE job_counts SET n = n - 1 WHERE state = old.state;
    UPDATE job_counts SET n = n + 1 WHERE state = new.state;
END;
)sql";

// Recurring jobs keep every job_options field, and their overlap policy.
// Rows written before have none of them, which is how they behaved.
const char* const migration_3 = R"sql(
ALTER TABLE recurring_jobs ADD COLUMN unique_key      TEXT;
ALTER TABLE recurring_jobs ADD COLUMN unique_states   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recurring_jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE recurring_jobs ADD COLUMN overlap         INTEGER NOT NULL DEFAULT 0;
)sql";

// Unique keys are compared within a kind unless the enqueue asked for
// every kind. What the slot holds (unique_slot() in storage.hpp) is kept
// beside the key. Rows written before held keys compared across kinds; they
// now hold them within their kind, as the keys of a kind's rule always read
// (they start with the kind's name), so that the jobs of that kind enqueued
// after this one find them; except the keys the engine gives a recurring
// job's occurrences, which it compares across kinds. The slots are cleared
// before they are set again: a unique index is checked row by row, and one
// row's new slot may be another's old one.
const char* const migration_4 = R"sql(
ALTER TABLE jobs ADD COLUMN unique_scoped TEXT;
UPDATE jobs SET unique_scoped = CASE
    WHEN recurring_id IS NOT NULL AND (unique_key = 'recurring:' || recurring_id
                                       OR substr(unique_key, 1, length('recurring:' || recurring_id || ':'))
                                          = 'recurring:' || recurring_id || ':')
    THEN '*' || unique_key
    ELSE length(CAST(kind AS BLOB)) || ':' || kind || unique_key END
    WHERE unique_key IS NOT NULL AND unique_key <> '';
CREATE TEMP TABLE holding AS SELECT id FROM jobs WHERE unique_slot IS NOT NULL;
UPDATE jobs SET unique_slot = NULL WHERE unique_slot IS NOT NULL;
UPDATE jobs SET unique_slot = unique_scoped WHERE id IN (SELECT id FROM holding);
DROP TABLE holding;
ALTER TABLE recurring_jobs ADD COLUMN unique_across_kinds INTEGER NOT NULL DEFAULT 0;
)sql";

// What a claim knows of its job beyond the attempt: bit 0, its node
// reported that the handler started; bit 1, a recovery gave an unstarted
// claim's attempt back once already (see storage::recover_expired).
const char* const migration_5 = R"sql(
ALTER TABLE jobs ADD COLUMN claim_flags INTEGER NOT NULL DEFAULT 0;
)sql";

// What a dashboard reads: counts by queue, kind and state (kept by the
// triggers in place of the counts by state, which are their sums: the same
// two b-tree edits per change of state), the nodes, paused queues and
// paused recurring jobs. And the age index for finished jobs only.
const char* const migration_6 = R"sql(
DROP TRIGGER jobs_counted_insert;
DROP TRIGGER jobs_counted_delete;
DROP TRIGGER jobs_counted_update;
DROP TABLE job_counts;
CREATE TABLE job_counts (
    queue TEXT NOT NULL, kind TEXT NOT NULL, state INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (queue, kind, state)
) WITHOUT ROWID;
INSERT INTO job_counts SELECT queue, kind, state, count(*) FROM jobs GROUP BY queue, kind, state;
CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO job_counts VALUES (new.queue, new.kind, new.state, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND kind = old.kind AND state = old.state;
END;
CREATE TRIGGER jobs_counted_update AFTER UPDATE OF state ON jobs WHEN old.state <> new.state BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND kind = old.kind AND state = old.state;
    INSERT INTO job_counts VALUES (new.queue, new.kind, new.state, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TABLE nodes (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, workers INTEGER NOT NULL,
    queues TEXT NOT NULL, started_at INTEGER NOT NULL, heartbeat_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE paused_queues (queue TEXT PRIMARY KEY, paused_at INTEGER NOT NULL) WITHOUT ROWID;
ALTER TABLE recurring_jobs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
-- Only pruning reads jobs by age, and only finished ones: the jobs on their
-- way through (each change of state moved their entry) stay out of it.
DROP INDEX jobs_aged;
CREATE INDEX jobs_aged ON jobs (state, updated_at) WHERE state IN (5, 6, 7, 8);
)sql";

// A job's continuations in any state, for a dashboard's job page: only
// continuations are in it, so the jobs without a parent cost it nothing.
const char* const migration_7 = R"sql(
CREATE INDEX IF NOT EXISTS jobs_children ON jobs (parent_id) WHERE parent_id IS NOT NULL;
)sql";

// Each node's queue limits, for a dashboard's queues page; old nodes'
// rows say none.
// And the oldest program schema that may use this file: a later migration
// that only adds leaves it, so that a program a version behind still opens
// it (a rolling upgrade, a rollback). Schemas 7 and 8 only add to 6.
const char* const migration_8 = R"sql(
ALTER TABLE nodes ADD COLUMN queue_limits TEXT NOT NULL DEFAULT '[]';
CREATE TABLE IF NOT EXISTS hosting_jobs_readers (oldest INTEGER NOT NULL);
INSERT INTO hosting_jobs_readers SELECT 6 WHERE NOT EXISTS (SELECT 1 FROM hosting_jobs_readers);
)sql";

// Fewer index edits for each change of state. The unique slot moves to a
// column whose unique index holds only the jobs that hold a key: the
// column constraint's index held every job, and each claim and completion
// rewrote its entry. And jobs_state leaves out the running jobs, which
// jobs_running lists: a claim only takes a job out of it and a completion
// only puts it back, where each moved it. Programs of schema 8 and before
// would keep keys in the old column: they may not use this file.
const char* const migration_9 = R"sql(
ALTER TABLE jobs ADD COLUMN unique_held TEXT;
UPDATE jobs SET unique_held = unique_slot, unique_slot = NULL WHERE unique_slot IS NOT NULL;
CREATE UNIQUE INDEX jobs_unique_held ON jobs (unique_held) WHERE unique_held IS NOT NULL;
DROP INDEX jobs_state;
CREATE INDEX jobs_state ON jobs (state, id) WHERE state <> 3;
UPDATE hosting_jobs_readers SET oldest = 9;
)sql";

// The counts of the changes every job makes (its insert, its claim, its
// success) are kept by the statements that make them, one edit per queue,
// kind and state for a whole batch (connection::count): the triggers cost
// two edits and a trigger program for each job, a tenth of a claim's and a
// completion's work. The rarer changes keep their trigger. Programs of
// schema 9 and before would leave these changes uncounted: they may not use
// this file.
const char* const migration_10 = R"sql(
DROP TRIGGER jobs_counted_insert;
DROP TRIGGER jobs_counted_update;
CREATE TRIGGER jobs_counted_update AFTER UPDATE OF state ON jobs
WHEN old.state <> new.state AND NOT (old.state = 1 AND new.state = 3) AND NOT (old.state = 3 AND new.state = 5) BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND kind = old.kind AND state = old.state;
    INSERT INTO job_counts VALUES (new.queue, new.kind, new.state, 1) ON CONFLICT DO UPDATE SET n = n + 1;
END;
UPDATE hosting_jobs_readers SET oldest = 10;
)sql";

// jobs_aged's predicate without an IN list: SQLite evaluates a partial
// index's predicate for the old and the new row of every UPDATE, and an IN
// list of more than two values is built into a temporary b-tree each time
// (a sixth of a claim's and a completion's CPU). Pruning says the same
// terms. A program of schema 10 still reads and writes this file as it
// did; only its pruning no longer finds the index.
const char* const migration_11 = R"sql(
DROP INDEX jobs_aged;
CREATE INDEX jobs_aged ON jobs (state, updated_at) WHERE state >= 5;
)sql";

// Every change of state is counted by the statement that makes it
// (connection::count), as schema 10 began with the frequent ones. The
// trigger that counted the rest ran its program for every row of every
// claim and completion, and made each read the row's queue and kind, only
// to find most of them counted already: a twentieth of their work. Rows
// still count their own deletes. Programs of schema 11 and before would
// leave their rarer changes uncounted: they may not use this file.
const char* const migration_12 = R"sql(
DROP TRIGGER jobs_counted_update;
UPDATE hosting_jobs_readers SET oldest = 12;
)sql";

// Schema N is made by migrations[N - 1] from schema N - 1.
const char* const migrations[] = {migration_1, migration_2, migration_3,  migration_4,  migration_5,  migration_6,
                                  migration_7, migration_8, migration_9, migration_10, migration_11, migration_12};
static_assert(std::size(migrations) == sqlite_storage::schema_version);


} // namespace

struct sqlite_storage::connection {
    std::unique_ptr<sqlite3, database_closer> handle;
    sqlite3* db = nullptr; // handle's
    std::unique_ptr<statement> begin, commit, rollback;
    std::unique_ptr<statement> insert, find_unique, complete, complete_many, complete_succeeded, promote, candidates,
        due, claim, claimed, renew, expired, held, state_of, transition, key_holder, requeue, find, next_due, counts, children,
        refunded, paused, add_count, awaited;
    // add_plain()'s inserts of 1 to rows_per_insert rows, each prepared
    // when first needed.
    static constexpr std::size_t rows_per_insert = 64;
    std::array<std::unique_ptr<statement>, rows_per_insert> insert_rows;

    // The count changes of this transaction that no trigger makes (see
    // migration_10), by queue, kind and state, written just before it
    // commits. A batch holds a few queues and kinds, so a list searched in
    // turn: a claim counts each of its jobs, and copies their names once.
    struct count_change {
        std::string queue, kind;
        int state = 0;
        std::int64_t n = 0;
    };
    std::vector<count_change> counted;

    void count(std::string_view queue, std::string_view kind, job_state state, std::int64_t n)
    {
        auto it = std::find_if(counted.begin(), counted.end(), [&](const count_change& c) {
            return c.state == code(state) && c.queue == queue && c.kind == kind;
        });
        if (it == counted.end())
            it = counted.insert(counted.end(), {std::string(queue), std::string(kind), code(state), 0});
        it->n += n;
    }

    // A change of state a statement made, from `from`.
    void count_move(std::string_view queue, std::string_view kind, job_state from, job_state to)
    {
        count(queue, kind, from, -1);
        count(queue, kind, to, 1);
    }

    void write_counts()
    {
        for (const auto& c : counted) {
            if (c.n == 0)
                continue;
            using_statement u{*add_count};
            add_count->bind(1, c.queue).bind(2, c.kind).bind(3, c.state).bind(4, c.n);
            add_count->run();
        }
        counted.clear();
    }

    explicit connection(const std::string& path, const sqlite_options& options)
    {
        const int rc = sqlite3_open_v2(path.c_str(), &db,
                                       SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
        handle.reset(db); // sqlite3_open_v2 may return a handle even when it fails
        if (rc != SQLITE_OK)
            throw storage_error("jobs: cannot open the SQLite file '" + path +
                                "': " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)));
        sqlite3_busy_timeout(db, static_cast<int>(options.busy_timeout.count()));
        {
            // SQLite answers with the mode it is in, and keeps another
            // without an error where WAL cannot be (a database in memory):
            // then nothing is durable, and no other process shares it.
            statement wal(db, "PRAGMA journal_mode = WAL");
            const std::string mode = wal.step() ? wal.text(0) : std::string();
            if (mode != "wal")
                throw storage_error("jobs: SQLite file '" + path + "' cannot use write-ahead logging (its journal "
                                    "mode is '" + mode + "'): give sqlite_storage a file on a local disk");
        }
        exec(options.sync == sqlite_options::durability::full ? "PRAGMA synchronous = FULL"
                                                               : "PRAGMA synchronous = NORMAL",
             path);
        exec("PRAGMA foreign_keys = ON", path);
        migrate(path);
        // A statement that changes rows an earlier one of its transaction
        // changed (a claim after a batch of completions) keeps their pages
        // in a statement journal, which SQLite writes to a temporary file
        // once it passes 64 KiB: a file created, written and deleted for
        // most transactions. In memory, after the migrations, whose
        // statements may touch every row; every later write is bounded by
        // max_rows_per_write.
        exec("PRAGMA temp_store = MEMORY", path);
        prepare();
    }

    void exec(const char* sql, const std::string& path)
    {
        char* error = nullptr;
        if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
            std::string message = error ? error : sqlite3_errmsg(db);
            sqlite3_free(error);
            throw storage_error("jobs: SQLite file '" + path + "': " + message);
        }
    }

    void migrate(const std::string& path)
    {
        exec("BEGIN IMMEDIATE", path);
        try {
            exec("CREATE TABLE IF NOT EXISTS hosting_jobs_schema (version INTEGER NOT NULL)", path);
            int version = 0;
            {
                statement s(db, "SELECT max(version) FROM hosting_jobs_schema");
                if (s.step() && !s.is_null(0))
                    version = static_cast<int>(s.integer(0));
            }
            if (version > schema_version) {
                // Newer: usable if what it added leaves this program's
                // reads and writes as they were.
                int oldest = version;
                {
                    statement exists(db, "SELECT count(*) FROM sqlite_master WHERE name = 'hosting_jobs_readers'");
                    if (exists.step() && exists.integer(0) == 1) {
                        statement s(db, "SELECT max(oldest) FROM hosting_jobs_readers");
                        if (s.step() && !s.is_null(0))
                            oldest = static_cast<int>(s.integer(0));
                    }
                }
                if (oldest > schema_version)
                    throw storage_error("jobs: SQLite file '" + path + "' has schema version " +
                                        std::to_string(version) + ", which needs a program of schema " +
                                        std::to_string(oldest) + " or newer; this program's is " +
                                        std::to_string(schema_version));
            }
            for (int next = version + 1; next <= schema_version; ++next) {
                exec(migrations[next - 1], path);
                exec(("INSERT INTO hosting_jobs_schema (version) VALUES (" + std::to_string(next) + ")").c_str(),
                     path);
            }
            exec("COMMIT", path);
        } catch (...) {
            sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
            throw;
        }
    }

    void prepare()
    {
        begin = std::make_unique<statement>(db, "BEGIN IMMEDIATE");
        commit = std::make_unique<statement>(db, "COMMIT");
        rollback = std::make_unique<statement>(db, "ROLLBACK");
        insert = std::make_unique<statement>(
            db, "INSERT INTO jobs (kind, queue, args, priority, state, max_attempts, timeout_ms, created_at, run_at, "
                "unique_key, unique_states, unique_held, history, concurrency_key, parent_id, condition, recurring_id, "
                "updated_at, unique_scoped) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, "
                "?14, ?15, ?16, ?17, ?8, ?18)"
                " ON CONFLICT (unique_held) WHERE unique_held IS NOT NULL DO NOTHING RETURNING id");
        find_unique = std::make_unique<statement>(db, "SELECT id FROM jobs WHERE unique_held = ?1");
        add_count = std::make_unique<statement>(
            db, "INSERT INTO job_counts VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO UPDATE SET n = n + excluded.n");
        // ?2 new state, ?3 attempt delta, ?4 run_at or NULL, ?5 error or NULL, ?6 now, ?7 reason.
        // Returns the state it ended in.
        complete = std::make_unique<statement>(
            db, ("UPDATE jobs SET " + completion_set("?2", "?3", "?4", "?5", "?6", "?7") +
                 " WHERE id = ?1 AND state = 3 AND lease_owner = ?8 AND attempt = ?9 RETURNING state, queue, kind")
                    .c_str());
        // A node's completions in one statement, as complete does each:
        // ?1 now, ?2 the node, ?3 one JSON array per completion, [id, new
        // state, attempt delta, run_at or null, error or null, reason,
        // attempt]. One statement rather than one per job: each run of a
        // statement sets up its program and its RETURNING anew. The
        // completions are read first and the jobs looked up by id: the
        // other conditions are kept off the indexes (+), so that the
        // planner never walks the running jobs for each completion.
        complete_many = std::make_unique<statement>(
            db, ("UPDATE jobs SET " +
                 completion_set("d.d_to", "d.d_delta", "d.d_run_at", "d.d_error", "?1", "d.d_reason") +
                 " FROM (SELECT value ->> 0 AS d_id, value ->> 1 AS d_to, value ->> 2 AS d_delta, "
                 "value ->> 3 AS d_run_at, value ->> 4 AS d_error, value ->> 5 AS d_reason, value ->> 6 AS d_attempt "
                 "FROM json_each(?3)) AS d "
                 "WHERE jobs.id = d.d_id AND +jobs.state = 3 AND +jobs.lease_owner = ?2 AND +jobs.attempt = d.d_attempt "
                 "RETURNING jobs.id, jobs.state, jobs.queue, jobs.kind")
                    .c_str());
        // The completions that are plain successes (no error), most of a
        // drain's, as complete_many does them: ?3 a JSON object of id to
        // attempt, ?4 their reason, ?5 their history line (a
        // history_line()). Its keys and values are read in one parse, where
        // each field complete_many reads from its array costs a parse of
        // that array: a job's claim and completion take a quarter fewer
        // instructions with this statement (callgrind).
        complete_succeeded = std::make_unique<statement>(
            db, ("UPDATE jobs SET " +
                 completion_set(std::to_string(code(job_state::succeeded)),
                                std::to_string(effect_of(outcome::succeeded).attempt_delta), "NULL", "NULL", "?1",
                                "?4", "?5") +
                 " FROM json_each(?3) AS d WHERE jobs.id = CAST(d.key AS INTEGER) AND +jobs.state = 3 "
                 "AND +jobs.lease_owner = ?2 AND +jobs.attempt = d.value RETURNING jobs.id, jobs.state, jobs.queue, "
                 "jobs.kind")
                    .c_str());
        // The jobs that came due, ?1 now, ?2 at most how many; then
        // promote makes them available, ?1 now, ?2 their ids (JSON array).
        due = std::make_unique<statement>(db, "SELECT id, state, queue, kind FROM jobs WHERE state IN (0, 4) "
                                              "AND run_at <= ?1 ORDER BY run_at, id LIMIT ?2");
        promote = std::make_unique<statement>(
            db, ("UPDATE jobs SET state = 1, updated_at = ?1, " + history_plus("json_array(state, 1, ?1, 'due', '')") +
                 ", unique_held = CASE WHEN (unique_states >> 1) & 1 THEN unique_scoped END "
                 "WHERE id IN (SELECT value FROM json_each(?2)) AND state IN (0, 4)")
                    .c_str());
        // ?1 queue, ?2 kinds (JSON array). In claim order along jobs_ready,
        // with no window: the caller steps until it has what it wants, so a
        // backlog of jobs whose key is held never hides those behind it.
        // Those jobs are passed over here, without leaving SQLite: the held
        // keys (of running jobs, this claim's earlier queues included) are
        // read once per run through jobs_held, named because without
        // statistics the planner would read every running row instead.
        candidates = std::make_unique<statement>(
            db, "SELECT id, concurrency_key, kind FROM jobs WHERE state = 1 AND queue = ?1 "
                "AND kind IN (SELECT value FROM json_each(?2)) "
                "AND (concurrency_key IS NULL OR concurrency_key NOT IN (SELECT held.concurrency_key FROM jobs AS held "
                "INDEXED BY jobs_held WHERE held.state = 3 AND held.concurrency_key IS NOT NULL)) "
                "ORDER BY priority, run_at, id");
        // ?1 node, ?2 lease_until, ?3 now, ?4 ids (JSON array), ?5 their
        // history line (a history_line(): they were all available).
        std::string claim_sql = "UPDATE jobs SET state = 3, attempt = attempt + 1, claim_flags = claim_flags & 2, "
                                "lease_owner = ?1, "
                                "lease_expires = ?2, updated_at = ?3, " +
                                history_plus("?5") +
                                ", unique_held = CASE WHEN (unique_states >> 3) & 1 THEN unique_scoped END "
                                "WHERE state = 1 AND id IN (SELECT value FROM json_each(?4))";
        claim = std::make_unique<statement>(db, claim_sql.c_str());
        // What claim took, ?1 its ids (JSON array), ?2 the node: the same
        // columns as find, so that read_job reads both. Read by a SELECT
        // after it rather than returned by it: SQLite's RETURNING reads
        // every column of each row before the change and copies the result
        // through a temporary table, which cost 3% of a claim's and a
        // completion's instructions (callgrind). The candidates were available
        // in this transaction, so the jobs among them running here now are
        // the ones it took.
        claimed = std::make_unique<statement>(
            db, ("SELECT " + job_columns(false) +
                 " FROM jobs WHERE id IN (SELECT value FROM json_each(?1)) AND +state = 3 AND +lease_owner = ?2")
                    .c_str());
        children = std::make_unique<statement>(db, "SELECT id, condition FROM jobs WHERE parent_id = ?1 AND state = 2");
        // CROSS JOIN: the ids first, each looked up along jobs_waiting.
        awaited = std::make_unique<statement>(
            db, "SELECT DISTINCT c.parent_id FROM json_each(?1) AS p CROSS JOIN jobs AS c "
                "WHERE c.parent_id = p.value AND c.state = 2");
        renew = std::make_unique<statement>(
            db, "UPDATE jobs SET lease_expires = ?2, claim_flags = claim_flags | ?5 "
                "WHERE id = ?3 AND state = 3 AND lease_owner = ?1 AND attempt = ?4 RETURNING cancel_requested");
        expired = std::make_unique<statement>(
            db, "SELECT id, attempt, max_attempts, lease_owner, cancel_requested, claim_flags FROM jobs "
                "WHERE state = 3 AND lease_expires < ?1");
        held = std::make_unique<statement>(
            db, "SELECT id, attempt, max_attempts, lease_owner, cancel_requested, claim_flags FROM jobs "
                "WHERE state = 3 AND lease_owner = ?1");
        state_of = std::make_unique<statement>(db, "SELECT state FROM jobs WHERE id = ?1");
        refunded = std::make_unique<statement>(db, "UPDATE jobs SET claim_flags = 2 WHERE id = ?1");
        // An outside transition of a job that is not running: ?2 new state, ?3 now, ?4 reason.
        // A state that holds the key takes it only if no other job holds it:
        // a delete goes ahead without it (a requeue is refused before).
        transition = std::make_unique<statement>(
            db, ("UPDATE jobs SET state = ?2, cancel_requested = 0, lease_owner = NULL, lease_expires = NULL, "
                 "updated_at = ?3, " +
                 history_plus("json_array(state, ?2, ?3, ?4, '')") +
                 ", unique_held = CASE WHEN (unique_states >> ?2) & 1 AND NOT EXISTS (SELECT 1 FROM jobs AS other "
                 "WHERE other.unique_held = jobs.unique_scoped AND other.id <> jobs.id) THEN unique_scoped END "
                 "WHERE id = ?1 RETURNING queue, kind")
                    .c_str());
        // Another job that holds the unique key job ?1 would take when
        // requeued (available holds it): its id and the key.
        key_holder = std::make_unique<statement>(
            db, "SELECT other.id, me.unique_key FROM jobs AS me JOIN jobs AS other "
                "ON other.unique_held = me.unique_scoped AND other.id <> me.id "
                "WHERE me.id = ?1 AND (me.unique_states >> 1) & 1");
        requeue = std::make_unique<statement>(
            db, ("UPDATE jobs SET state = 1, attempt = 0, run_at = ?2, cancel_requested = 0, updated_at = ?2, " +
                 history_plus("json_array(state, 1, ?2, ?3, '')") +
                 ", unique_held = CASE WHEN (unique_states >> 1) & 1 THEN unique_scoped END WHERE id = ?1 "
                 "RETURNING queue, kind")
                    .c_str());
        find = std::make_unique<statement>(db, ("SELECT " + job_columns(true) + " FROM jobs WHERE id = ?1").c_str());
        next_due = std::make_unique<statement>(db, "SELECT min(run_at) FROM jobs WHERE state IN (0, 4)");
        counts = std::make_unique<statement>(db, "SELECT state, sum(n) FROM job_counts GROUP BY state");
        paused = std::make_unique<statement>(db, "SELECT 1 FROM paused_queues WHERE queue = ?1");
    }

    // Runs `body` in one write transaction.
    template <class F>
    auto write(F&& body)
    {
        {
            using_statement u{*begin};
            begin->run();
        }
        counted.clear();
        try {
            if constexpr (std::is_void_v<decltype(body())>) {
                body();
                write_counts();
                using_statement u{*commit};
                commit->run();
            } else {
                auto result = body();
                write_counts();
                using_statement u{*commit};
                commit->run();
                return result;
            }
        } catch (...) {
            counted.clear();
            using_statement u{*rollback};
            try {
                rollback->run();
            } catch (...) {
            }
            throw;
        }
    }

    static job read_job(const statement& s, bool with_history)
    {
        job j;
        j.id = s.integer(0);
        j.kind = s.text(1);
        j.queue = s.text(2);
        j.args = s.text(3);
        j.priority = static_cast<int>(s.integer(4));
        j.state = stored_state(s.integer(5), j.id);
        j.attempt = static_cast<int>(s.integer(6));
        j.max_attempts = static_cast<int>(s.integer(7));
        j.timeout = stored_timeout(s.integer(8));
        j.created_at = from_micros(s.integer(9));
        j.run_at = from_micros(s.integer(10));
        j.unique_key = s.text(11);
        j.lease_owner = s.text(12);
        j.lease_expires = s.is_null(13) ? time_point{} : from_micros(s.integer(13));
        j.last_error = s.text(14);
        j.cancel_requested = s.integer(15) != 0;
        j.delete_requested = s.integer(15) == 2;
        j.concurrency_key = s.text(17);
        j.parent_id = s.is_null(18) ? 0 : s.integer(18);
        j.condition = static_cast<continuation_condition>(s.integer(19));
        j.recurring_id = s.text(20);
        if (with_history)
            j.history = stored_history(s.text(16), j.id);
        return j;
    }

    std::optional<job_state> state_if_any(job_id id)
    {
        using_statement u{*state_of};
        state_of->bind(1, id);
        if (!state_of->step())
            return std::nullopt;
        return stored_state(state_of->integer(0), id);
    }

    job_state current_state(job_id id)
    {
        if (auto state = state_if_any(id))
            return *state;
        throw job_not_found(id);
    }

    // Inserts one job, inside the caller's transaction: the one path for
    // enqueues and recurring occurrences alike.
    enqueue_result add(const enqueue_request& r, time_point now)
    {
        auto initial = r.run_at && *r.run_at > now ? job_state::scheduled : job_state::available;
        std::optional<job_state> parent;
        if (r.parent_id != 0) {
            parent = state_if_any(r.parent_id);
            if (!parent)
                return {0, false, "jobs: no job " + std::to_string(r.parent_id) + " to continue"};
            initial = job_state::awaiting;
        }
        auto& s = *insert;
        using_statement u{s};
        s.bind(1, r.kind).bind(2, r.queue).bind(3, r.args).bind(4, r.priority).bind(5, code(initial));
        s.bind(6, r.max_attempts).bind(7, static_cast<std::int64_t>(r.timeout.count())).bind(8, micros(now));
        s.bind(9, micros(r.run_at.value_or(now)));
        const auto slot = unique_slot(r.kind, r.unique_key, r.unique_across_kinds);
        s.bind_or_null(10, r.unique_key);
        s.bind(11, r.unique_key.empty() ? 0 : static_cast<std::int64_t>(r.unique_states.bits()));
        s.bind_or_null(12, r.unique_states.contains(initial) ? std::string_view(slot) : std::string_view());
        s.bind_or_null(18, slot);
        s.bind(13, first_history(initial, micros(now), r.reason)).bind_or_null(14, r.concurrency_key);
        if (r.parent_id == 0)
            s.bind_null(15);
        else
            s.bind(15, r.parent_id);
        s.bind(16, static_cast<int>(r.condition)).bind_or_null(17, r.recurring_id);
        if (s.step()) {
            const auto id = s.integer(0);
            s.reset();
            count(r.queue, r.kind, initial, 1);
            if (parent && is_final(*parent))
                resolve_children(r.parent_id, *parent, now);
            return {id, true, {}};
        }
        using_statement u2{*find_unique};
        find_unique->bind(1, slot);
        if (!find_unique->step())
            throw storage_error("jobs: sqlite: an insert conflicted but no job holds unique key '" + r.unique_key +
                                "'");
        return {find_unique->integer(0), false, {}};
    }

    // A new job's history: its one line, [state, state, at_us, reason, ""].
    // Made here, not by json_array() in the insert, which costs SQLite more
    // than the rest of a row of a bulk enqueue.
    static std::string first_history(job_state initial, std::int64_t at, const std::string& reason)
    {
        return '[' + history_line(initial, initial, at, reason) + ']';
    }

    // Jobs with no unique key and no parent, many rows to a statement: each
    // run of a statement costs its setup again, which a batch of thousands
    // need not pay, and bound values cost SQLite nothing to read where a
    // JSON array per job (as before) was parsed again for each column. The
    // rowids a statement allocates grow in the order of its rows, which is
    // the batch's.
    static constexpr int values_per_row = 11;
    static std::string insert_rows_sql(std::size_t rows)
    {
        std::string sql = "INSERT INTO jobs (kind, queue, args, priority, state, max_attempts, timeout_ms, run_at, "
                          "concurrency_key, recurring_id, history, created_at, updated_at, unique_states, condition) "
                          "VALUES ";
        int n = 2;
        for (std::size_t row = 0; row < rows; ++row) {
            sql += row == 0 ? "(" : ", (";
            for (int v = 0; v < values_per_row; ++v, ++n)
                sql.append("?").append(std::to_string(n)).append(", ");
            sql += "?1, ?1, 0, 0)";
        }
        return sql.append(" RETURNING id");
    }

    void add_plain(std::span<const enqueue_request> plain, time_point now, std::vector<enqueue_result>& out)
    {
        if (plain.empty())
            return;
        const auto at = micros(now);
        std::vector<job_id> ids;
        ids.reserve(plain.size());
        for (std::size_t first = 0; first < plain.size(); first += rows_per_insert) {
            const auto rows = std::min(rows_per_insert, plain.size() - first);
            auto& prepared = insert_rows[rows - 1];
            if (!prepared)
                prepared = std::make_unique<statement>(db, insert_rows_sql(rows).c_str());
            auto& s = *prepared;
            using_statement u{s};
            s.bind(1, at);
            int n = 2;
            for (std::size_t i = first; i < first + rows; ++i) {
                const auto& r = plain[i];
                const auto initial = r.run_at && *r.run_at > now ? job_state::scheduled : job_state::available;
                count(r.queue, r.kind, initial, 1); // dropped with the transaction if the insert fails
                s.bind(n, r.kind)
                    .bind(n + 1, r.queue)
                    .bind(n + 2, r.args)
                    .bind(n + 3, r.priority)
                    .bind(n + 4, static_cast<int>(code(initial)))
                    .bind(n + 5, r.max_attempts)
                    .bind(n + 6, static_cast<std::int64_t>(r.timeout.count()))
                    .bind(n + 7, micros(r.run_at.value_or(now)))
                    .bind_or_null(n + 8, r.concurrency_key)
                    .bind_or_null(n + 9, r.recurring_id)
                    .bind(n + 10, first_history(initial, at, r.reason));
                n += values_per_row;
            }
            while (s.step())
                ids.push_back(s.integer(0));
        }
        if (ids.size() != plain.size())
            throw storage_error("jobs: sqlite: a batch of " + std::to_string(plain.size()) + " jobs stored " +
                                std::to_string(ids.size()));
        std::sort(ids.begin(), ids.end());
        for (const auto id : ids)
            out.push_back({id, true, {}});
    }

    // What add_plain() can store: no key to compare, no parent to look up.
    static bool plain(const enqueue_request& r) { return r.unique_key.empty() && r.parent_id == 0; }

    // A transition asked for from outside the engine, inside the caller's
    // transaction: change_state, and each job of change_states.
    job_state change(job_id id, job_state to, const std::string& reason, time_point now)
    {
        const auto from = current_state(id);
        const auto how = outside_change_of(id, from, to);
        if (how == outside_change::stop_running) {
            statement s(db, "UPDATE jobs SET cancel_requested = max(cancel_requested, ?2) WHERE id = ?1");
            s.bind(1, id).bind(2, to == job_state::deleted ? 2 : 1);
            s.run();
            return from;
        }
        if (how == outside_change::requeue) {
            // Another job took its unique key while it was final: a requeue
            // would make two.
            {
                using_statement u{*key_holder};
                key_holder->bind(1, id);
                if (key_holder->step())
                    throw invalid_transition(id, from, to,
                                             "job " + std::to_string(key_holder->integer(0)) +
                                                 " holds its unique key '" + key_holder->text(1) + "'");
            }
            apply_requeue(id, from, now, valid_text(reason));
        } else {
            apply_transition(id, from, to, now, reason);
        }
        return to;
    }

    // The job `id`, in state `from` in this transaction, goes to `to`.
    void apply_transition(job_id id, job_state from, job_state to, time_point now, const std::string& reason)
    {
        {
            using_statement u{*transition};
            transition->bind(1, id).bind(2, code(to)).bind(3, micros(now)).bind(4, valid_text(reason));
            if (transition->step())
                count_move(transition->view(0), transition->view(1), from, to);
        }
        if (is_final(to))
            resolve_children(id, to, now);
    }

    // The job `id`, in state `from` in this transaction, runs again from
    // its first attempt.
    void apply_requeue(job_id id, job_state from, time_point now, const std::string& reason)
    {
        using_statement u{*requeue};
        requeue->bind(1, id).bind(2, micros(now)).bind(3, reason);
        if (requeue->step())
            count_move(requeue->view(0), requeue->view(1), from, job_state::available);
    }

    // Makes available the jobs that came due, up to max_rows_per_write.
    void promote_due(std::int64_t at)
    {
        std::string ids = "[";
        {
            using_statement u{*due};
            due->bind(1, at).bind(2, static_cast<std::int64_t>(max_rows_per_write));
            while (due->step()) {
                if (ids.size() > 1)
                    ids += ',';
                ids += std::to_string(due->integer(0));
                count_move(due->view(2), due->view(3), stored_state(due->integer(1), due->integer(0)),
                           job_state::available);
            }
        }
        if (ids.size() == 1)
            return;
        ids += ']';
        using_statement u{*promote};
        promote->bind(1, at).bind(2, ids);
        promote->run();
    }

    // A parent reached a final state: each awaiting continuation becomes
    // available or deleted as fate_of() says, or goes on waiting (a failed
    // or cancelled parent can still be requeued and succeed).
    void resolve_children(job_id parent, job_state ended, time_point now)
    {
        std::vector<std::pair<job_id, continuation_condition>> waiting;
        {
            using_statement u{*children};
            children->bind(1, parent);
            while (children->step())
                waiting.emplace_back(children->integer(0), static_cast<continuation_condition>(children->integer(1)));
        }
        for (const auto& [id, condition] : waiting) {
            switch (fate_of(condition, ended)) {
            case continuation_fate::wait: break;
            case continuation_fate::run:
                apply_requeue(id, job_state::awaiting, now,
                              "parent " + std::to_string(parent) + " " + std::string(to_string(ended)));
                break;
            case continuation_fate::drop:
                apply_transition(id, job_state::awaiting, job_state::deleted, now,
                                 "parent " + std::to_string(parent) + " ended " + std::string(to_string(ended)) +
                                     "; the continuation runs only when it " + wanted(condition));
                break;
            }
        }
    }

    // Which of `jobs` continuations wait for.
    std::unordered_set<job_id> awaited_among(const std::vector<std::pair<job_id, job_state>>& jobs)
    {
        std::unordered_set<job_id> out;
        if (jobs.empty())
            return out;
        using_statement u{*awaited};
        awaited->bind(1, json_ids(jobs, [](const auto& j) { return j.first; }));
        while (awaited->step())
            out.insert(awaited->integer(0));
        return out;
    }

    // The jobs `parents` (a JSON array of ids), all in state `was`, are about
    // to be pruned: the continuations still waiting for them can never run.
    void drop_children_of_pruned(const std::string& parents, job_state was, time_point now)
    {
        std::vector<std::tuple<job_id, job_id, continuation_condition>> waiting;
        {
            // CROSS JOIN: the ids first, then jobs_waiting for each (without
            // statistics the planner would read every awaiting row instead).
            statement s(db, "SELECT c.id, c.parent_id, c.condition FROM json_each(?1) AS p CROSS JOIN jobs AS c "
                            "WHERE c.parent_id = p.value AND c.state = 2");
            s.bind(1, parents);
            while (s.step())
                waiting.emplace_back(s.integer(0), s.integer(1), static_cast<continuation_condition>(s.integer(2)));
        }
        for (const auto& [id, parent, condition] : waiting)
            apply_transition(id, job_state::awaiting, job_state::deleted, now,
                             "parent " + std::to_string(parent) + " was pruned (it had ended " +
                                 std::string(to_string(was)) + "); the continuation runs only when it " +
                                 wanted(condition));
    }

    // Running jobs whose node is gone, as `select` (bound by the caller)
    // reads them: id, attempt, max_attempts, lease_owner, cancel_requested.
    // `why(owner)` says what became of the node.
    template <class Why>
    std::vector<job_id> recover(statement& select, time_point now, Why why)
    {
        struct found {
            job_id id;
            int attempt;
            int max_attempts;
            std::string owner;
            std::int64_t cancel_requested; // 2: a delete
            std::int64_t claim_flags;
        };
        std::vector<found> gone;
        {
            using_statement u{select};
            while (select.step())
                gone.push_back({select.integer(0), static_cast<int>(select.integer(1)),
                                static_cast<int>(select.integer(2)), select.text(3), select.integer(4),
                                select.integer(5)});
        }
        std::vector<job_id> out;
        for (const auto& f : gone) {
            out.push_back(f.id);
            const auto r = recovery_of(f.attempt, f.max_attempts, f.cancel_requested, f.claim_flags);
            const std::string reason = r.reason(why(f.owner));
            // A job asked to stop does not start again because its node died.
            if (r.to == job_state::deleted || r.to == job_state::cancelled) {
                apply_transition(f.id, job_state::running, r.to, now, reason);
                continue;
            }
            if (r.refund) {
                using_statement u{*refunded};
                refunded->bind(1, f.id).run();
            }
            const bool failed = r.to == job_state::failed;
            auto& s = *complete;
            using_statement u{s};
            s.bind(1, f.id).bind(2, code(r.to)).bind(3, r.refund ? -1 : 0);
            s.bind_null(4).bind_or_null(5, failed ? std::string_view(reason) : std::string_view());
            s.bind(6, micros(now)).bind(7, reason).bind(8, f.owner).bind(9, f.attempt);
            if (s.step())
                count_move(s.view(1), s.view(2), job_state::running, stored_state(s.integer(0), f.id));
            s.reset();
            if (failed)
                resolve_children(f.id, job_state::failed, now);
        }
        return out;
    }
};

sqlite_storage::sqlite_storage(std::string path, sqlite_options options)
    : path_(std::move(path)), db_(std::make_unique<connection>(path_, options))
{
}

sqlite_storage::~sqlite_storage() = default;

std::vector<enqueue_result> sqlite_storage::enqueue(std::span<const enqueue_request> requests, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] { return enqueue_in(c, requests, now); });
}

sqlite_storage::enqueued_and_claimed sqlite_storage::enqueue_and_claim(std::span<const enqueue_request> requests,
                                                                       const claim_request& claim, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        enqueued_and_claimed out;
        out.enqueued = enqueue_in(c, requests, now);
        out.claimed = complete_and_claim_in(c, {}, claim, now);
        return out;
    });
}

std::vector<enqueue_result> sqlite_storage::enqueue_in(connection& c, std::span<const enqueue_request> requests,
                                                       time_point now)
{
    std::vector<enqueue_result> out;
    out.reserve(requests.size());
    // Runs of plain jobs go in statements of up to 64 rows (add_plain());
    // the others one by one, in between, so that the results keep the
    // requests' order.
    std::size_t i = 0;
    while (i < requests.size()) {
        std::size_t end = i;
        while (end < requests.size() && connection::plain(requests[end]))
            ++end;
        if (end > i) {
            c.add_plain(requests.subspan(i, end - i), now, out);
            i = end;
        } else {
            out.push_back(c.add(requests[i], now));
            ++i;
        }
    }
    return out;
}

std::vector<job> sqlite_storage::complete_and_claim(std::span<const completion> done, const claim_request& claim,
                                                    time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] { return complete_and_claim_in(c, done, claim, now); });
}

std::vector<job> sqlite_storage::complete_and_claim_in(connection& c, std::span<const completion> done,
                                                       const claim_request& claim, time_point now)
{
    const auto at = micros(now);
    if (!done.empty()) {
        // A history is JSON: its texts are made valid first, which also
        // lets the whole batch travel as JSON. Successes with no error and
        // the first one's reason go in complete_succeeded, the rest in
        // complete_many.
        const auto succeeded_plainly = [](const completion& d) {
            return d.what == outcome::succeeded && d.error.empty();
        };
        const auto first = std::find_if(done.begin(), done.end(), succeeded_plainly);
        std::string succeeded = "{", each = "[";
        for (const auto& d : done) {
            if (first != done.end() && succeeded_plainly(d) && d.reason == first->reason) {
                if (succeeded.size() > 1)
                    succeeded += ',';
                succeeded += '"' + std::to_string(d.id) + "\":" + std::to_string(d.attempt);
                continue;
            }
            const auto effect = effect_of(d.what);
            if (each.size() > 1)
                each += ',';
            each += '[' + std::to_string(d.id) + ',' + std::to_string(code(effect.to)) + ',' +
                    std::to_string(effect.attempt_delta) + ',' +
                    (effect.uses_run_at ? std::to_string(micros(d.run_at)) : std::string("null")) + ',' +
                    (d.error.empty() ? std::string("null") : json_string(valid_text(d.error))) + ',' +
                    json_string(valid_text(d.reason)) + ',' + std::to_string(d.attempt) + ']';
        }
        succeeded += '}';
        each += ']';
        // Those not this node's attempt any more are not returned: their
        // result is moot.
        std::vector<std::pair<job_id, job_state>> finished;
        // ?1 to ?3 are alike in both statements; complete_succeeded's ?4,
        // the reason, is bound where it is called.
        const auto complete = [&](statement& s, const std::string& batch) {
            using_statement u{s};
            s.bind(1, at).bind(2, claim.node).bind(3, batch);
            while (s.step()) {
                const auto id = s.integer(0);
                const auto ended = stored_state(s.integer(1), id);
                c.count_move(s.view(2), s.view(3), job_state::running, ended);
                if (is_final(ended))
                    finished.emplace_back(id, ended);
            }
        };
        if (succeeded.size() > 2)
            complete(c.complete_succeeded->bind(4, valid_text(first->reason))
                         .bind(5, history_line(job_state::running, job_state::succeeded, at, first->reason)),
                     succeeded);
        if (each.size() > 2)
            complete(*c.complete_many, each);
        // In id order, as one job at a time would have settled them;
        // only those that continuations wait for, found by one
        // statement rather than one per job.
        std::sort(finished.begin(), finished.end());
        const auto awaited = c.awaited_among(finished);
        for (const auto& [id, ended] : finished)
            if (awaited.contains(id))
                c.resolve_children(id, ended, now);
    }
    c.promote_due(at);
    std::vector<job> claimed;
    if (claim.kinds.empty())
        return claimed;
    const auto kinds = json_array_of(claim.kinds);
    std::unordered_map<std::string, std::size_t> kind_left(claim.kind_caps.begin(), claim.kind_caps.end());
    for (const auto& [queue, cap] : claim.queues) {
        const auto count = std::min(cap, claim.total - std::min(claim.total, claimed.size()));
        if (count == 0)
            continue;
        {
            using_statement u{*c.paused};
            if (c.paused->bind(1, queue).step())
                continue;
        }
        // Candidates in claim order, stepped through until there are
        // enough (see claim_request): the statement passes over jobs
        // whose key a running job holds, and this loop over those of a
        // kind whose cap is reached and those whose key an earlier
        // candidate of the queue took. Keys taken in earlier queues are
        // held by then, their jobs claimed (running) by the UPDATE below.
        std::vector<job_id> ids;
        std::unordered_set<std::string> taken_keys;
        {
            auto& q = *c.candidates;
            using_statement u{q};
            q.bind(1, queue).bind(2, kinds);
            while (ids.size() < count && q.step()) {
                auto left = kind_left.end();
                if (!kind_left.empty()) {
                    left = kind_left.find(q.text(2));
                    if (left != kind_left.end() && left->second == 0)
                        continue;
                }
                if (!q.is_null(1) && !taken_keys.insert(q.text(1)).second)
                    continue;
                if (left != kind_left.end())
                    --left->second;
                ids.push_back(q.integer(0));
            }
        }
        if (ids.empty())
            continue;
        const auto taken = json_ids(ids);
        {
            using_statement u{*c.claim};
            c.claim->bind(1, claim.node).bind(2, micros(claim.lease_until)).bind(3, at).bind(4, taken);
            c.claim->bind(5, history_line(job_state::available, job_state::running, at, "claimed by " + claim.node));
            c.claim->run();
        }
        auto& s = *c.claimed;
        using_statement u{s};
        s.bind(1, taken).bind(2, claim.node);
        const auto first = claimed.size();
        while (s.step()) {
            claimed.push_back(connection::read_job(s, false));
            c.count(claimed.back().queue, claimed.back().kind, job_state::available, -1);
            c.count(claimed.back().queue, claimed.back().kind, job_state::running, 1);
        }
        // In claim order, which the SELECT's need not be.
        std::sort(claimed.begin() + static_cast<std::ptrdiff_t>(first), claimed.end(),
                  [](const job& a, const job& b) {
                      return std::tie(a.priority, a.run_at, a.id) < std::tie(b.priority, b.run_at, b.id);
                  });
    }
    return claimed;
}

lease_renewal sqlite_storage::renew_leases(const std::string& node, std::span<const held_lease> held,
                                          time_point lease_until, time_point)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        lease_renewal out;
        // One primary-key update per held job: a node holds hundreds at
        // most, and a renewal by id and attempt is its own fencing check.
        for (const auto& h : held) {
            using_statement u{*c.renew};
            c.renew->bind(1, node).bind(2, micros(lease_until)).bind(3, h.id).bind(4, h.attempt).bind(5, h.started ? 1 : 0);
            if (!c.renew->step())
                out.lost.push_back(h.id);
            else if (c.renew->integer(0) != 0)
                out.cancel_requested.push_back(h.id);
        }
        return out;
    });
}

std::vector<job_id> sqlite_storage::recover_expired(time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        c.expired->bind(1, micros(now));
        return c.recover(*c.expired, now,
                         [](const std::string& owner) { return "the lease of node " + owner + " expired"; });
    });
}

std::vector<job_id> sqlite_storage::recover_node(const std::string& node, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        c.held->bind(1, node);
        return c.recover(*c.held, now, [](const std::string& owner) { return "node " + owner + " started again"; });
    });
}

job_state sqlite_storage::change_state(job_id id, job_state to, const std::string& reason, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] { return c.change(id, to, reason, now); });
}

std::vector<storage::state_change_result> sqlite_storage::change_states(std::span<const job_id> ids, job_state to,
                                                                        const std::string& reason, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        std::vector<state_change_result> out;
        for (const auto id : ids)
            out.push_back(change_one(id, [&] { return c.change(id, to, reason, now); }));
        return out;
    });
}

std::optional<job> sqlite_storage::find(job_id id, bool with_history)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    using_statement u{*c.find};
    c.find->bind(1, id);
    if (!c.find->step())
        return std::nullopt;
    return connection::read_job(*c.find, with_history);
}

std::vector<job> sqlite_storage::list(const job_filter& filter)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    std::string sql = "SELECT " + job_columns(filter.with_history) + " FROM jobs WHERE 1";
    // The state written out, not bound: jobs_state leaves out running jobs,
    // and the planner uses a partial index only where the query itself
    // says that it holds.
    if (filter.state)
        sql += " AND state = " + std::to_string(code(*filter.state));
    if (filter.queue)
        sql += " AND queue = ?2";
    if (filter.kind)
        sql += " AND kind = ?3";
    if (filter.before != 0)
        sql += " AND id < ?6";
    if (filter.after != 0)
        sql += " AND id > ?7";
    if (filter.parent != 0)
        sql += " AND parent_id = ?8";
    sql += filter.newest_first ? " ORDER BY id DESC" : " ORDER BY id";
    sql += " LIMIT ?4 OFFSET ?5";
    statement s(c.db, sql.c_str());
    if (filter.before != 0)
        s.bind(6, filter.before);
    if (filter.after != 0)
        s.bind(7, filter.after);
    if (filter.parent != 0)
        s.bind(8, filter.parent);
    if (filter.queue)
        s.bind(2, *filter.queue);
    if (filter.kind)
        s.bind(3, *filter.kind);
    s.bind(4, static_cast<std::int64_t>(filter.limit)).bind(5, static_cast<std::int64_t>(filter.offset));
    std::vector<job> out;
    while (s.step())
        out.push_back(connection::read_job(s, filter.with_history));
    return out;
}

job_counts sqlite_storage::counts()
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    using_statement u{*c.counts};
    job_counts out;
    while (c.counts->step()) {
        const auto state = c.counts->integer(0);
        if (state >= 0 && state < static_cast<std::int64_t>(job_state_count))
            out.by_state[static_cast<std::size_t>(state)] = c.counts->integer(1);
    }
    return out;
}

std::vector<queue_kind_count> sqlite_storage::counts_by_queue_and_kind()
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    statement s(c.db, "SELECT queue, kind, state, n FROM job_counts WHERE n <> 0 ORDER BY queue, kind, state");
    std::vector<queue_kind_count> out;
    while (s.step()) {
        // As counts(): a damaged count row is left out, not reported.
        const auto state = s.integer(2);
        if (state >= 0 && state < static_cast<std::int64_t>(job_state_count))
            out.push_back({s.text(0), s.text(1), static_cast<job_state>(state), s.integer(3)});
    }
    return out;
}

void sqlite_storage::announce_node(const node_info& node, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    c.write([&] {
        statement gone(c.db, "DELETE FROM nodes WHERE heartbeat_at < ?1");
        gone.bind(1, micros(now - std::chrono::hours(24))).run();
        statement s(c.db, "INSERT INTO nodes (id, host, pid, workers, queues, started_at, heartbeat_at, queue_limits) "
                          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO UPDATE SET host = excluded.host, "
                          "pid = excluded.pid, workers = excluded.workers, queues = excluded.queues, "
                          "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
                          "queue_limits = excluded.queue_limits");
        s.bind(1, node.id).bind(2, node.host).bind(3, node.pid).bind(4, static_cast<std::int64_t>(node.workers));
        s.bind(5, json_array_of(node.queues)).bind(6, micros(node.started_at)).bind(7, micros(now));
        s.bind(8, json_array_of(node.queue_limits));
        s.run();
    });
}

void sqlite_storage::remove_node(const std::string& id)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    c.write([&] {
        statement s(c.db, "DELETE FROM nodes WHERE id = ?1");
        s.bind(1, id).run();
    });
}

std::vector<node_info> sqlite_storage::list_nodes()
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    // jobs_running holds the running jobs by owner: a count per node reads
    // only them.
    statement s(c.db, "SELECT id, host, pid, workers, queues, started_at, heartbeat_at, "
                      "(SELECT count(*) FROM jobs INDEXED BY jobs_running WHERE state = 3 AND lease_owner = nodes.id), "
                      "queue_limits FROM nodes ORDER BY id");
    std::vector<node_info> out;
    while (s.step()) {
        node_info n;
        n.id = s.text(0);
        n.host = s.text(1);
        n.pid = s.integer(2);
        n.workers = static_cast<std::size_t>(s.integer(3));
        n.queues = strings_of(s.text(4));
        n.started_at = from_micros(s.integer(5));
        n.heartbeat_at = from_micros(s.integer(6));
        n.running = s.integer(7);
        n.queue_limits = sizes_of(s.text(8));
        out.push_back(std::move(n));
    }
    return out;
}

void sqlite_storage::set_queue_paused(const std::string& queue, bool paused, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    c.write([&] {
        if (paused) {
            statement s(c.db, "INSERT INTO paused_queues (queue, paused_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING");
            s.bind(1, queue).bind(2, micros(now)).run();
        } else {
            statement s(c.db, "DELETE FROM paused_queues WHERE queue = ?1");
            s.bind(1, queue).run();
        }
    });
}

std::vector<std::string> sqlite_storage::paused_queues()
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    statement s(c.db, "SELECT queue FROM paused_queues ORDER BY queue");
    std::vector<std::string> out;
    while (s.step())
        out.push_back(s.text(0));
    return out;
}

std::optional<time_point> sqlite_storage::next_due()
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    using_statement u{*c.next_due};
    if (c.next_due->step() && !c.next_due->is_null(0))
        return from_micros(c.next_due->integer(0));
    return std::nullopt;
}

} // namespace hosting::jobs

namespace hosting::jobs {

std::size_t sqlite_storage::prune(job_state state, time_point before, std::size_t limit, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        // Never the job with the highest id: SQLite gives a new row the
        // highest id plus one, so deleting it would give its id, and so its
        // idempotency key, to the next job.
        std::string doomed = "[";
        {
            // The same terms as jobs_aged's, so that the index serves it.
            statement s(c.db, is_final(state) ? "SELECT id FROM jobs WHERE state = ?1 AND state >= 5 "
                                                "AND updated_at < ?2 AND id < (SELECT max(id) FROM jobs) LIMIT ?3"
                                              : "SELECT id FROM jobs WHERE state = ?1 AND updated_at < ?2 "
                                                "AND id < (SELECT max(id) FROM jobs) LIMIT ?3");
            s.bind(1, code(state)).bind(2, micros(before)).bind(3, static_cast<std::int64_t>(limit));
            while (s.step()) {
                if (doomed.size() > 1)
                    doomed += ',';
                doomed += std::to_string(s.integer(0));
            }
        }
        if (doomed.size() == 1)
            return std::size_t{0};
        doomed += ']';
        c.drop_children_of_pruned(doomed, state, now);
        statement s(c.db, "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?1))");
        s.bind(1, doomed);
        s.run();
        return static_cast<std::size_t>(sqlite3_changes(c.db));
    });
}

std::size_t sqlite_storage::flag_unknown_kinds(const std::vector<std::string>& known, const std::string& node,
                                               time_point now)
{
    const auto kinds = json_array_of(known);
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    // Read first, outside a write transaction: the scan of the available
    // jobs then blocks no other process's writes, and most scans find none.
    std::vector<std::string> unknown;
    {
        statement s(c.db, "SELECT DISTINCT kind FROM jobs WHERE state = 1 AND unknown_flagged = 0 "
                          "AND kind NOT IN (SELECT value FROM json_each(?1))");
        s.bind(1, kinds);
        while (s.step())
            unknown.push_back(s.text(0));
    }
    if (unknown.empty())
        return 0;
    return c.write([&] {
        std::size_t flagged = 0;
        statement s(c.db, ("UPDATE jobs SET unknown_flagged = 1, " +
                           history_plus("json_array(state, state, ?2, 'node ' || ?3 || ' does not know kind ''' || "
                                        "kind || '''; waiting for one that does', '')") +
                           " WHERE id IN (SELECT id FROM jobs WHERE state = 1 AND kind = ?1 AND unknown_flagged = 0 "
                           "LIMIT ?4)")
                              .c_str());
        for (const auto& kind : unknown) {
            if (flagged == max_rows_per_write)
                break;
            s.bind(1, kind).bind(2, micros(now)).bind(3, node);
            s.bind(4, static_cast<std::int64_t>(max_rows_per_write - flagged));
            s.run();
            flagged += static_cast<std::size_t>(sqlite3_changes(c.db));
            s.reset();
        }
        return flagged;
    });
}

void sqlite_storage::upsert_recurring(const recurring_job& r)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    c.write([&] {
        // The schedule's own next_fire survives when cron and zone did not change.
        statement s(c.db,
                    "INSERT INTO recurring_jobs (id, cron, zone, kind, args, queue, priority, max_attempts, "
                    "timeout_ms, missed, next_fire, last_fire, unique_key, unique_states, concurrency_key, overlap, "
                    "unique_across_kinds) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, ?12, ?13, ?14, ?15, ?16) "
                    "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, args = excluded.args, "
                    "queue = excluded.queue, priority = excluded.priority, max_attempts = excluded.max_attempts, "
                    "timeout_ms = excluded.timeout_ms, missed = excluded.missed, "
                    "unique_key = excluded.unique_key, unique_states = excluded.unique_states, "
                    "concurrency_key = excluded.concurrency_key, overlap = excluded.overlap, "
                    "unique_across_kinds = excluded.unique_across_kinds, "
                    "next_fire = CASE WHEN cron = excluded.cron AND zone = excluded.zone THEN next_fire "
                    "ELSE excluded.next_fire END, cron = excluded.cron, zone = excluded.zone");
        s.bind(1, r.id).bind(2, r.cron).bind(3, r.zone).bind(4, r.kind).bind(5, r.args).bind(6, r.queue);
        s.bind(7, r.priority).bind(8, r.max_attempts).bind(9, static_cast<std::int64_t>(r.timeout.count()));
        s.bind(10, static_cast<int>(r.missed)).bind(11, micros(r.next_fire));
        s.bind_or_null(12, r.unique_key);
        s.bind(13, r.unique_key.empty() ? std::int64_t{0} : static_cast<std::int64_t>(r.unique_states.bits()));
        s.bind_or_null(14, r.concurrency_key).bind(15, static_cast<int>(r.overlap));
        s.bind(16, r.unique_across_kinds ? 1 : 0);
        s.run();
    });
}

bool sqlite_storage::set_recurring_paused(const std::string& id, bool paused, time_point next_fire)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        statement s(c.db, "UPDATE recurring_jobs SET next_fire = CASE WHEN paused AND NOT ?2 THEN ?3 ELSE next_fire END, "
                          "paused = ?2 WHERE id = ?1");
        s.bind(1, id).bind(2, paused ? 1 : 0).bind(3, micros(next_fire)).run();
        return sqlite3_changes(c.db) > 0;
    });
}

bool sqlite_storage::remove_recurring(const std::string& id)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        statement s(c.db, "DELETE FROM recurring_jobs WHERE id = ?1");
        s.bind(1, id);
        s.run();
        return sqlite3_changes(c.db) > 0;
    });
}

std::vector<recurring_job> sqlite_storage::list_recurring()
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    statement s(c.db, "SELECT id, cron, zone, kind, args, queue, priority, max_attempts, timeout_ms, missed, "
                      "next_fire, last_fire, unique_key, unique_states, concurrency_key, overlap, unique_across_kinds, "
                      "paused FROM recurring_jobs ORDER BY id");
    std::vector<recurring_job> out;
    while (s.step()) {
        recurring_job r;
        r.id = s.text(0);
        r.cron = s.text(1);
        r.zone = s.text(2);
        r.kind = s.text(3);
        r.args = s.text(4);
        r.queue = s.text(5);
        r.priority = static_cast<int>(s.integer(6));
        r.max_attempts = static_cast<int>(s.integer(7));
        r.timeout = stored_timeout(s.integer(8));
        r.missed = static_cast<missed_policy>(s.integer(9));
        r.next_fire = from_micros(s.integer(10));
        if (!s.is_null(11))
            r.last_fire = from_micros(s.integer(11));
        r.unique_key = s.text(12);
        if (!r.unique_key.empty())
            r.unique_states = state_set::from_bits(static_cast<std::uint32_t>(s.integer(13)));
        r.concurrency_key = s.text(14);
        r.overlap = static_cast<overlap_policy>(s.integer(15));
        r.unique_across_kinds = s.integer(16) != 0;
        r.paused = s.integer(17) != 0;
        out.push_back(std::move(r));
    }
    return out;
}

bool sqlite_storage::fire_recurring(const std::string& id, time_point expected, time_point next_fire,
                                    std::span<const enqueue_request> occurrences, time_point now)
{
    std::lock_guard lock(mutex_);
    auto& c = *db_;
    return c.write([&] {
        statement s(c.db, "UPDATE recurring_jobs SET next_fire = ?3, last_fire = coalesce(?4, last_fire) "
                          "WHERE id = ?1 AND next_fire = ?2 AND NOT paused");
        s.bind(1, id).bind(2, micros(expected)).bind(3, micros(next_fire));
        if (occurrences.empty())
            s.bind_null(4);
        else
            s.bind(4, micros(occurrences.back().run_at.value_or(expected)));
        s.run();
        if (sqlite3_changes(c.db) == 0)
            return false;
        for (const auto& r : occurrences)
            c.add(r, now);
        return true;
    });
}

} // namespace hosting::jobs
