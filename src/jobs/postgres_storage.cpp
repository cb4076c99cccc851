#include <hosting/jobs/postgres_storage.hpp>

#include "detail/postgres_connect.hpp"
#include "detail/trimmed.hpp"
#include "jobs/detail/stored.hpp"

#include <libpq-fe.h>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <iterator>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <optional>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

namespace hosting::jobs {

namespace {

using namespace detail;

// A statement the server refused, with its SQLSTATE: the write that met a
// deadlock, a serialization failure or a unique key taken by a racing
// transaction is rolled back whole and can be tried again.
class server_error : public storage_error {
public:
    server_error(const std::string& message, std::string sqlstate)
        : storage_error(message), sqlstate_(std::move(sqlstate))
    {
    }
    bool retryable() const noexcept
    {
        return sqlstate_ == "40001" || sqlstate_ == "40P01" || sqlstate_ == "23505";
    }

private:
    std::string sqlstate_;
};

using hosting::detail::trimmed;

struct result_clearer {
    void operator()(PGresult* r) const { PQclear(r); }
};

// A result in text format.
class result {
public:
    explicit result(PGresult* r) : r_(r) {}
    int rows() const { return PQntuples(r_.get()); }
    bool is_null(int row, int col) const { return PQgetisnull(r_.get(), row, col) != 0; }
    std::string text(int row, int col) const
    {
        return std::string(PQgetvalue(r_.get(), row, col), static_cast<std::size_t>(PQgetlength(r_.get(), row, col)));
    }
    std::int64_t integer(int row, int col) const
    {
        if (is_null(row, col))
            return 0;
        const char* p = PQgetvalue(r_.get(), row, col);
        const char* end = p + PQgetlength(r_.get(), row, col);
        std::int64_t v = 0;
        if (*p == 't' || *p == 'f') // a boolean
            return *p == 't' ? 1 : 0;
        const auto [ptr, ec] = std::from_chars(p, end, v);
        if (ec != std::errc() || ptr != end)
            throw storage_error("jobs: postgresql returned '" + std::string(p, end) + "' for an integer");
        return v;
    }
    PGresult* raw() const noexcept { return r_.get(); }
    std::int64_t affected() const
    {
        const char* n = PQcmdTuples(r_.get());
        std::int64_t v = 0;
        std::from_chars(n, n + std::char_traits<char>::length(n), v);
        return v;
    }

private:
    std::unique_ptr<PGresult, result_clearer> r_;
};

// The parameters of one statement, as text; NULL where absent.
class params {
public:
    params& add(std::int64_t v) { return put(std::to_string(v)); }
    params& add(int v) { return put(std::to_string(v)); }
    params& add(std::string_view v) { return put(std::string(v)); }
    params& add(const char* v) { return put(std::string(v)); }
    params& add(const std::string& v) { return put(v); }
    params& add(bool v) { return put(v ? "true" : "false"); }
    params& add_null()
    {
        values_.emplace_back();
        return *this;
    }
    // NULL for an empty string: the columns that mean "none" that way.
    params& add_or_null(std::string_view v) { return v.empty() ? add_null() : add(v); }
    template <class T>
    params& add(const std::optional<T>& v)
    {
        return v ? add(*v) : add_null();
    }

    int size() const { return static_cast<int>(values_.size()); }
    std::vector<const char*> pointers() const
    {
        std::vector<const char*> out;
        out.reserve(values_.size());
        for (const auto& v : values_)
            out.push_back(v ? v->c_str() : nullptr);
        return out;
    }

private:
    params& put(std::string v)
    {
        // A C string ends at the first NUL: the value would be cut short.
        if (v.find('\0') != std::string::npos)
            throw storage_error("jobs: postgresql cannot store a text that holds a NUL character ('\\0'): " +
                                v.substr(0, v.find('\0')) + "...");
        values_.emplace_back(std::move(v));
        return *this;
    }
    std::vector<std::optional<std::string>> values_;
};

// An array literal for a text[] parameter; with empty_as_null, an empty
// string is NULL (the columns that mean "none" that way).
std::string text_array(const std::vector<std::string>& items, bool empty_as_null = false)
{
    std::string out = "{";
    for (const auto& item : items) {
        if (out.size() > 1)
            out += ',';
        if (empty_as_null && item.empty()) {
            out += "NULL";
            continue;
        }
        out += '"';
        for (char ch : item) {
            if (ch == '"' || ch == '\\')
                out += '\\';
            out += ch;
        }
        out += '"';
    }
    out += '}';
    return out;
}

template <class Range>
std::string integer_array(const Range& items)
{
    std::string out = "{";
    for (const auto& item : items) {
        if (out.size() > 1)
            out += ',';
        out += std::to_string(item);
    }
    out += '}';
    return out;
}

// The channel nodes of one schema hear each other on (a channel name is
// at most 63 bytes).
std::string channel_of(const std::string& schema)
{
    std::string channel = "hosting_jobs." + schema;
    if (channel.size() <= 63)
        return channel;
    // Too long: a hash that every node computes alike (FNV-1a), never a cut
    // through a character.
    std::uint64_t h = 14695981039346656037ull;
    for (unsigned char ch : schema)
        h = (h ^ ch) * 1099511628211ull;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    return "hosting_jobs." + std::string(hex);
}

std::string job_columns(bool with_history)
{
    return std::string("id, kind, queue, args, priority, state, attempt, max_attempts, timeout_ms, "
                       "created_at, run_at, unique_key, lease_owner, lease_expires, last_error, cancel_requested, ") +
           (with_history ? "history_text" : "NULL") + ", concurrency_key, parent_id, condition, recurring_id";
}

// As many NULLs as job_columns() has columns: a row that is no job.
std::string job_nulls()
{
    const auto columns = job_columns(false);
    std::string out = "NULL";
    for (auto n = std::count(columns.begin(), columns.end(), ','); n > 0; --n)
        out += ", NULL";
    return out;
}

// One line of a job's history as JSON text, [from, to, at_us, reason,
// error], each argument SQL. to_json() quotes the strings.
std::string history_line(const std::string& from, const std::string& to, const std::string& at,
                         const std::string& reason, const std::string& error)
{
    return "'[' || " + from + " || ',' || " + to + " || ',' || " + at + " || ',' || coalesce(to_json((" + reason +
           ")::text)::text, 'null') || ',' || coalesce(to_json((" + error + ")::text)::text, 'null') || ']'";
}

// A job's first history: the array of its one line.
std::string first_history(const std::string& state, const std::string& at, const std::string& reason)
{
    return "'[' || " + history_line(state, state, at, reason, "''") + " || ']'";
}

// A new line of a job's history, appended as the row changes. The history
// is JSON text (schema 6), never empty, and the line goes in before its
// closing bracket: a jsonb array would be taken apart and built again
// whole at every change (without the history, the same claims and
// completions took about a third less of the server's time).
std::string logged(const std::string& to, const std::string& at, const std::string& reason,
                   const std::string& error = "''")
{
    return "history_text = left(history_text, -1) || ',' || " + history_line("state", to, at, reason, error) +
           " || ']'";
}

// The same line, its reason and error quoted as JSON by the program rather
// than by the server: `tail` is SQL for the text after the line's time,
// `,"reason","error"]]`. The statements that claim and complete jobs by
// the hundred write their lines so: to_json() for each of them took about
// a twentieth of a drain's time on the server.
std::string logged_tail(const std::string& to, const std::string& at, const std::string& tail)
{
    return "history_text = left(history_text, -1) || ',[' || state || ',' || " + to + " || ',' || " + at + " || " +
           tail;
}

// The tail of a claim's line.
std::string claimed_tail(const std::string& node)
{
    std::string out = ",";
    out.append(json_string(valid_text("claimed by " + node))).append(",\"\"]]");
    return out;
}

// The counts a statement's own rows change, written by the statement
// (schema 5): `rows` names a WITH query of the jobs it wrote, with their
// queue, kind and new state. An insert counts each row in its state; a
// change counts those that went from `from` to `to`, and the other rows are
// left to the trigger.
std::string counted(const std::string& rows, const std::string& from = {}, const std::string& to = {})
{
    if (from.empty())
        return "counted AS (INSERT INTO job_counts (queue, kind, state, n) SELECT r.queue, r.kind, r.state, count(*) "
               "FROM " + rows + " AS r GROUP BY r.queue, r.kind, r.state)";
    // Grouped before the pair of changes is joined to each group: grouped
    // after, every row went through the join and the hash twice.
    return "counted AS (INSERT INTO job_counts (queue, kind, state, n) SELECT r.queue, r.kind, s.state, s.n * r.c "
           "FROM (SELECT queue, kind, count(*) AS c FROM " + rows + " WHERE state = " + to + " GROUP BY queue, kind) "
           "AS r, (VALUES (" + from + ", -1), (" + to + ", 1)) AS s(state, n))";
}

// Counts by queue, kind and state are kept as deltas appended (by
// statement-level triggers here; by the statements and a row-level trigger
// since schema 5): concurrent writers never wait on one counter row (nor
// deadlock over two), and announce_node() folds them now and then. The
// functions keep the schema they were created in, so that a job written on
// another connection (whatever its search_path) is counted here.
const char* const migration_1 = R"sql(
CREATE TABLE jobs (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    args             TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    state            INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    timeout_ms       BIGINT  NOT NULL,
    created_at       BIGINT  NOT NULL,
    run_at           BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    unique_key       TEXT,
    unique_states    INTEGER NOT NULL DEFAULT 0,
    unique_scoped    TEXT,
    -- unique_scoped while the state is one of unique_states, else NULL:
    -- the unique index enforces "one job per key in those states".
    unique_slot      TEXT UNIQUE,
    lease_owner      TEXT,
    lease_expires    BIGINT,
    -- bit 0: the node reported the handler started; bit 1: a recovery gave
    -- an unstarted claim's attempt back once already.
    claim_flags      INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    concurrency_key  TEXT,
    parent_id        BIGINT,
    condition        INTEGER NOT NULL DEFAULT 0,
    recurring_id     TEXT,
    unknown_flagged  BOOLEAN NOT NULL DEFAULT false,
    -- [[from, to, at_us, reason, error], ...]
    history          JSONB   NOT NULL
);
CREATE INDEX jobs_ready    ON jobs (queue, priority, run_at, id) WHERE state = 1;
CREATE INDEX jobs_due      ON jobs (run_at, id) WHERE state IN (0, 4);
CREATE INDEX jobs_running  ON jobs (lease_owner) WHERE state = 3;
CREATE INDEX jobs_state    ON jobs (state, id);
CREATE INDEX jobs_aged     ON jobs (state, updated_at) WHERE state IN (5, 6, 7, 8);
CREATE INDEX jobs_waiting  ON jobs (parent_id) WHERE state = 2;
CREATE INDEX jobs_held     ON jobs (concurrency_key) WHERE state = 3 AND concurrency_key IS NOT NULL;
-- A job's row is rewritten at each change of state and each lease renewal,
-- and pruned in the end: room left in each page lets a renewal (which no
-- index reads: expired leases are found through jobs_running) rewrite the
-- row in place, and autovacuum comes for the dead rows at 2% of the table
-- rather than at the default 20%.
ALTER TABLE jobs SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
CREATE TABLE recurring_jobs (
    id                  TEXT    PRIMARY KEY,
    cron                TEXT    NOT NULL,
    zone                TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    args                TEXT    NOT NULL,
    queue               TEXT    NOT NULL,
    priority            INTEGER NOT NULL,
    max_attempts        INTEGER NOT NULL,
    timeout_ms          BIGINT  NOT NULL,
    missed              INTEGER NOT NULL,
    next_fire           BIGINT  NOT NULL,
    last_fire           BIGINT,
    unique_key          TEXT,
    unique_states       INTEGER NOT NULL DEFAULT 0,
    concurrency_key     TEXT,
    overlap             INTEGER NOT NULL DEFAULT 0,
    unique_across_kinds BOOLEAN NOT NULL DEFAULT false,
    paused              BOOLEAN NOT NULL DEFAULT false
);
CREATE TABLE job_counts (queue TEXT NOT NULL, kind TEXT NOT NULL, state INTEGER NOT NULL, n BIGINT NOT NULL);
ALTER TABLE job_counts SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE FUNCTION jobs_counted_insert() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts SELECT queue, kind, state, count(*) FROM new_rows GROUP BY queue, kind, state;
    RETURN NULL;
END $$;
CREATE FUNCTION jobs_counted_delete() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts SELECT queue, kind, state, -count(*) FROM old_rows GROUP BY queue, kind, state;
    RETURN NULL;
END $$;
CREATE FUNCTION jobs_counted_update() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts
        SELECT queue, kind, state, sum(n) FROM (
            SELECT queue, kind, state, -1 AS n FROM old_rows
            UNION ALL SELECT queue, kind, state, 1 FROM new_rows) AS changed
        GROUP BY queue, kind, state HAVING sum(n) <> 0;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_counted_insert();
CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_counted_delete();
CREATE TRIGGER jobs_counted_update AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_counted_update();
CREATE TABLE nodes (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, pid BIGINT NOT NULL, workers BIGINT NOT NULL,
    queues TEXT NOT NULL, started_at BIGINT NOT NULL, heartbeat_at BIGINT NOT NULL
);
CREATE TABLE paused_queues (queue TEXT PRIMARY KEY, paused_at BIGINT NOT NULL);
)sql";

// A job's continuations in any state, for a dashboard's job page: only
// continuations are in it, so the jobs without a parent cost it nothing.
const char* const migration_2 = R"sql(
CREATE INDEX IF NOT EXISTS jobs_children ON jobs (parent_id) WHERE parent_id IS NOT NULL;
)sql";

// Each node's queue limits, for a dashboard's queues page; old nodes'
// rows say none.
// And the oldest program schema that may use this one: a later migration
// that only adds leaves it, so that a node a version behind still starts
// (a rolling upgrade, a rollback). Schemas 2 and 3 only add to 1.
const char* const migration_3 = R"sql(
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS queue_limits TEXT NOT NULL DEFAULT '[]';
CREATE TABLE IF NOT EXISTS schema_readers (oldest INTEGER NOT NULL);
INSERT INTO schema_readers SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM schema_readers);
)sql";

// Fewer index entries for each change of state: an update that changes the
// state writes a new entry into every index whose rows it belongs to, and
// every job belonged to the unique constraint's index (most with no key)
// and to jobs_state. The unique index now holds only the jobs that hold a
// key, and jobs_state leaves out the running jobs, which jobs_running
// lists. Programs of schema 3 and before name the constraint in their
// inserts: they may not use this schema.
const char* const migration_4 = R"sql(
ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_unique_slot_key;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_slot ON jobs (unique_slot) WHERE unique_slot IS NOT NULL;
DROP INDEX IF EXISTS jobs_state;
CREATE INDEX jobs_state ON jobs (state, id) WHERE state <> 3;
UPDATE schema_readers SET oldest = 4;
)sql";

// A job's insert, claim and success are counted by the statements that make
// them (counted()), not by statement-level triggers: those copied every
// row the statement wrote, old and new, into tables for a PL/pgSQL function
// to group, and ran it for every statement, a claim that took nothing
// included. A row-level trigger counts the other changes (retries,
// failures, recoveries, cancels, requeues, promotions), which are rarer;
// its condition leaves out the pairs the statements count, and costs the
// rows it leaves out nothing else. Programs of schema 4 would leave their
// changes uncounted: they may not use this schema. The counts are made
// again from the rows, in the migration's transaction.
const char* const migration_5 = R"sql(
DROP TRIGGER jobs_counted_insert ON jobs;
DROP TRIGGER jobs_counted_update ON jobs;
DROP FUNCTION jobs_counted_insert();
DROP FUNCTION jobs_counted_update();
CREATE FUNCTION jobs_counted_change() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO job_counts VALUES (OLD.queue, OLD.kind, OLD.state, -1), (NEW.queue, NEW.kind, NEW.state, 1);
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_counted_change AFTER UPDATE ON jobs FOR EACH ROW
    WHEN ((OLD.state, OLD.queue, OLD.kind) IS DISTINCT FROM (NEW.state, NEW.queue, NEW.kind)
          AND NOT (OLD.state = 1 AND NEW.state = 3) AND NOT (OLD.state = 3 AND NEW.state = 5))
    EXECUTE FUNCTION jobs_counted_change();
LOCK TABLE jobs IN SHARE MODE;
DELETE FROM job_counts;
INSERT INTO job_counts SELECT queue, kind, state, count(*) FROM jobs GROUP BY queue, kind, state;
UPDATE schema_readers SET oldest = 5;
)sql";

// A job's history is JSON text, appended to (logged()), not jsonb rebuilt
// at every change. The rows are rewritten once, here. The column takes a
// new name: a program of schema 5 still running would otherwise append
// jsonb to the text, which PostgreSQL takes as text, and the histories it
// touched would no longer read back; its statements now fail instead. Nor
// may such a program start on this schema.
const char* const migration_6 = R"sql(
ALTER TABLE jobs ALTER COLUMN history TYPE TEXT USING history::text;
ALTER TABLE jobs RENAME COLUMN history TO history_text;
UPDATE schema_readers SET oldest = 6;
)sql";

// Schema N is made by migrations[N - 1] from schema N - 1.
const char* const migrations[] = {migration_1, migration_2, migration_3, migration_4, migration_5, migration_6};
static_assert(std::size(migrations) == postgres_storage::schema_version);

// What a completion does to its job, for one row or many: `to` the state
// its outcome asks for, the rest likewise SQL for its values; `reason` is
// the reason as a JSON string, and `tail` what follows it in the history's
// line (logged_tail()). A job cancelled (1) or deleted (2) while it ran,
// from any node, ends cancelled or deleted whatever the attempt's outcome,
// its attempt counted, and its reason says so: the words go in after the
// JSON string's opening quote.
std::string completion_set(const std::string& to, const std::string& delta, const std::string& run_at,
                           const std::string& error, const std::string& now, const std::string& reason,
                           const std::string& tail)
{
    const std::string ended = "(CASE cancel_requested WHEN 2 THEN 8 WHEN 1 THEN 7 ELSE " + to + " END)";
    const std::string said = "(CASE cancel_requested WHEN 2 THEN '\"deleted while running; the attempt ended: ' || "
                             "substr(" + reason + ", 2) WHEN 1 THEN CASE WHEN " + to + " = 7 THEN " + reason +
                             " ELSE '\"cancelled while running; the attempt ended: ' || substr(" + reason +
                             ", 2) END ELSE " + reason + " END)";
    return "state = " + ended + ", attempt = attempt + CASE WHEN cancel_requested <> 0 THEN 0 ELSE " + delta +
           " END, run_at = CASE WHEN cancel_requested <> 0 THEN run_at ELSE coalesce(" + run_at +
           ", run_at) END, last_error = coalesce(" + error +
           ", last_error), lease_owner = NULL, lease_expires = NULL, cancel_requested = 0, updated_at = " + now +
           ", " + logged_tail(ended, now, "',' || " + said + " || " + tail) +
           ", unique_slot = CASE WHEN (unique_states >> " + ended + ") & 1 = 1 THEN unique_scoped END";
}

// The statements the engine runs over and over, prepared once per
// connection.
struct prepared_sql {
    const char* name;
    std::string sql;
};

std::vector<prepared_sql> make_statements()
{
    const std::string not_held = "(concurrency_key IS NULL OR NOT EXISTS (SELECT 1 FROM jobs AS held "
                                 "WHERE held.state = 3 AND held.concurrency_key = jobs.concurrency_key))";
    return {
        {"insert",
         "WITH added AS (INSERT INTO jobs (kind, queue, args, priority, state, max_attempts, timeout_ms, created_at, "
         "run_at, unique_key, unique_states, unique_slot, history_text, concurrency_key, parent_id, condition, "
         "recurring_id, updated_at, unique_scoped) VALUES ($1, $2, $3, $4, $5::int, $6, $7, $8::bigint, $9, $10, "
         "$11, $12, " + first_history("$5::int", "$8::bigint", "$13::text") + ", $14, $15, "
         "$16, $17, $8::bigint, $18) ON CONFLICT (unique_slot) WHERE unique_slot IS NOT NULL DO NOTHING "
         "RETURNING id, queue, kind, state), " + counted("added") + " SELECT id FROM added"},
        // Many plain jobs (no unique key, no parent) in one statement, in
        // the order given: ids are drawn as the rows are inserted.
        {"insert_many",
         "WITH added AS (INSERT INTO jobs (kind, queue, args, priority, state, max_attempts, timeout_ms, "
         "created_at, run_at, concurrency_key, recurring_id, updated_at, history_text) "
         "SELECT kind, queue, args, priority, state, max_attempts, timeout_ms, $1::bigint, run_at, concurrency_key, "
         "recurring_id, $1::bigint, " + first_history("state", "$1::bigint", "reason") + " "
         "FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::int[], $7::int[], $8::bigint[], "
         "$9::bigint[], $10::text[], $11::text[], $12::text[]) WITH ORDINALITY AS r(kind, queue, args, priority, "
         "state, max_attempts, timeout_ms, run_at, concurrency_key, recurring_id, reason, ord) "
         "ORDER BY ord RETURNING id, queue, kind, state), " + counted("added") + " SELECT id FROM added"},
        // One plain job: the same values as insert_many's, each alone. A row
        // of VALUES costs the server less than arrays to unnest and sort,
        // and an enqueue of one job is the common case whose latency counts.
        {"insert_one",
         "WITH added AS (INSERT INTO jobs (kind, queue, args, priority, state, max_attempts, timeout_ms, "
         "created_at, run_at, concurrency_key, recurring_id, updated_at, history_text) VALUES ($2, $3, $4, $5, "
         "$6::int, "
         "$7, $8, $1::bigint, $9, $10, $11, $1::bigint, " + first_history("$6::int", "$1::bigint", "$12::text") +
             ") RETURNING id, queue, kind, state), " +
             counted("added") + " SELECT id FROM added"},
        {"find_unique", "SELECT id FROM jobs WHERE unique_slot = $1"},
        // What a session would hold, for this transaction only, through a
        // pooler in transaction mode (postgres_options::transaction_pooling):
        // $1 the quoted schema, $2 the statement_timeout, $3 the lock_timeout.
        {"session_settings",
         "SELECT set_config('search_path', $1, true), set_config('statement_timeout', $2, true), "
         "set_config('lock_timeout', $3, true)"},
        // For this transaction only (write_generic()); $1 the lock_timeout.
        {"generic_plans",
         "SELECT set_config('plan_cache_mode', 'force_generic_plan', true), set_config('lock_timeout', $1, true)"},
        // $2 new state, $3 attempt delta, $4 run_at or NULL, $5 error or NULL, $6 now, $7 reason.
        {"complete",
         "WITH ended AS (UPDATE jobs SET " +
             completion_set("$2::int", "$3::int", "$4::bigint", "$5::text", "$6::bigint",
                            "to_json($7::text)::text",
                            "',' || to_json(coalesce($5::text, ''))::text || ']]'") +
             " WHERE id = $1 AND state = 3 AND lease_owner = $8 AND attempt = $9 RETURNING queue, kind, state), " +
             counted("ended", "3", "5") + " SELECT state FROM ended"},
        // A node's completions in one statement: $1 now, $9 the node, the
        // rest one array per column, the reasons ($7) as JSON strings and
        // $10 the tails of their history lines. The jobs are found by id: written as
        // they are, the conditions on state and owner would let the planner
        // read the node's entries in jobs_running instead, and that index
        // keeps an entry for every job the node ran until a vacuum, so each
        // completion would walk all of them.
        {"complete_many",
         "WITH ended AS (UPDATE jobs SET " +
             completion_set("d.d_to", "d.d_delta", "d.d_run_at", "d.d_error", "$1::bigint", "d.d_reason",
                            "d.d_tail") +
             " FROM unnest($2::bigint[], $3::int[], $4::int[], $5::bigint[], $6::text[], $7::text[], $8::int[], "
             "$10::text[]) AS d(d_id, d_to, d_delta, d_run_at, d_error, d_reason, d_attempt, d_tail) "
             "WHERE jobs.id = d.d_id AND jobs.state + 0 = 3 AND jobs.lease_owner || '' = $9 AND jobs.attempt = d.d_attempt "
             "RETURNING jobs.id, jobs.queue, jobs.kind, jobs.state), " +
             counted("ended", "3", "5") + " SELECT id, state FROM ended"},
        // Locked in order and skipping rows another node has locked: two
        // nodes promoting at once never wait on each other.
        {"promote",
         "UPDATE jobs SET state = 1, updated_at = $1::bigint, " + logged("1", "$1::bigint", "'due'") +
             ", unique_slot = CASE WHEN (unique_states >> 1) & 1 = 1 THEN unique_scoped END "
             "WHERE id IN (SELECT id FROM jobs WHERE state IN (0, 4) AND run_at <= $1::bigint "
             "ORDER BY run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)"},
        // One page of candidates in claim order after ($3, $4, $5), passing
        // over jobs whose key a running job holds; none when the queue is
        // paused.
        {"candidates",
         "SELECT id, concurrency_key, kind, priority, run_at FROM jobs WHERE state = 1 AND queue = $1 "
         "AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE paused_queues.queue = $1) "
         "AND kind = ANY($2::text[]) AND " + not_held +
             " AND (priority, run_at, id) > ($3::int, $4::bigint, $5::bigint) ORDER BY priority, run_at, id LIMIT $6"},
        // The keys this claim may take: a key another node is claiming at
        // this moment is passed over (its transaction holds the lock).
        {"lock_keys",
         "SELECT k FROM unnest($1::text[]) AS k WHERE pg_try_advisory_xact_lock(hashtextextended($2 || k, 7201))"},
        // $1 node, $2 lease_until, $3 now, $4 ids, $5 the tail of the
        // history's line (claimed_tail()). A job another node took
        // meanwhile (locked, or no longer available) is skipped, and so is
        // one whose key a job claimed since holds.
        {"claim",
         "WITH claimed AS (UPDATE jobs SET state = 3, attempt = attempt + 1, claim_flags = claim_flags & 2, "
         "lease_owner = $1, lease_expires = $2, updated_at = $3::bigint, " +
             logged_tail("3", "$3::bigint", "$5") +
             ", unique_slot = CASE WHEN (unique_states >> 3) & 1 = 1 THEN unique_scoped END "
             "WHERE id IN (SELECT id FROM jobs WHERE id = ANY($4::bigint[]) AND state = 1 ORDER BY id "
             "FOR UPDATE SKIP LOCKED) AND " + not_held + " RETURNING " + job_columns(false) + "), " +
             counted("claimed", "1", "3") + " SELECT * FROM claimed"},
        // The claim of the common case, in one statement: $1 node, $2
        // lease_until, $3 now, $4 queue, $5 kinds, $6 count, $7 the tail
        // of the history's line. The first jobs
        // in claim order that no other node is claiming, none taken when a
        // concurrency key is among them: then one row of NULLs says so, and
        // the general claim settles those.
        {"claim_first",
         "WITH first AS (SELECT id, concurrency_key FROM jobs WHERE state = 1 AND queue = $4 "
         "AND NOT EXISTS (SELECT 1 FROM paused_queues WHERE paused_queues.queue = $4) "
         "AND kind = ANY($5::text[]) ORDER BY priority, run_at, id LIMIT $6 FOR UPDATE SKIP LOCKED), "
         "keyed AS (SELECT EXISTS (SELECT 1 FROM first WHERE concurrency_key IS NOT NULL) AS held), "
         "claimed AS (UPDATE jobs SET state = 3, attempt = attempt + 1, claim_flags = claim_flags & 2, "
         "lease_owner = $1, lease_expires = $2, updated_at = $3::bigint, " +
             logged_tail("3", "$3::bigint", "$7") +
             ", unique_slot = CASE WHEN (unique_states >> 3) & 1 = 1 THEN unique_scoped END "
             "WHERE id IN (SELECT id FROM first) AND NOT (SELECT held FROM keyed) RETURNING " + job_columns(false) +
             "), " + counted("claimed", "1", "3") + " SELECT * FROM claimed UNION ALL SELECT " + job_nulls() +
             " FROM keyed WHERE held"},
        // Locked, and read again if another transaction changed them: a
        // continuation cancelled meanwhile is no longer awaiting.
        {"children",
         "SELECT id, condition, parent_id FROM jobs WHERE parent_id = ANY($1::bigint[]) AND state = 2 "
         "ORDER BY id FOR UPDATE"},
        // Locked in id order: a renewal and a recovery never deadlock.
        // Found by id, as complete_many's jobs are, for the same reason.
        {"renew",
         "UPDATE jobs SET lease_expires = $2, claim_flags = jobs.claim_flags | h.started "
         "FROM unnest($3::bigint[], $4::int[], $5::int[]) AS h(id, attempt, started) "
         "WHERE jobs.id = h.id AND jobs.id IN (SELECT id FROM jobs WHERE id = ANY($3::bigint[]) ORDER BY id FOR UPDATE) "
         "AND jobs.state + 0 = 3 AND jobs.lease_owner || '' = $1 AND jobs.attempt = h.attempt "
         "RETURNING jobs.id, jobs.cancel_requested"},
        {"expired",
         "SELECT id, attempt, max_attempts, lease_owner, cancel_requested, claim_flags FROM jobs "
         "WHERE state = 3 AND lease_expires < $1 ORDER BY id FOR UPDATE SKIP LOCKED"},
        {"held",
         "SELECT id, attempt, max_attempts, lease_owner, cancel_requested, claim_flags FROM jobs "
         "WHERE state = 3 AND lease_owner = $1 ORDER BY id FOR UPDATE"},
        {"state_of", "SELECT state FROM jobs WHERE id = $1"},
        {"state_for_update", "SELECT state FROM jobs WHERE id = $1 FOR UPDATE"},
        // A parent and its continuations: the enqueue of a continuation
        // holds its parent's lock shared, and whoever settles the parent's
        // continuations holds it alone, so each sees the other's work. A
        // lock apart from the row: a row lock would hold up the renewal of
        // the parent's lease for as long as an application's transaction
        // (enqueue_in_transaction) stays open.
        {"lock_parent_shared", "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 7203))"},
        {"lock_parents",
         "SELECT pg_advisory_xact_lock(hashtextextended(k, 7203)) FROM (SELECT unnest($1::text[]) AS k ORDER BY 1) AS s"},
        {"refunded", "UPDATE jobs SET claim_flags = 2 WHERE id = $1"},
        // An outside transition of a job that is not running: $2 new state,
        // $3 now, $4 reason. A state that holds the key takes it only if no
        // other job holds it.
        {"transition",
         "UPDATE jobs SET state = $2::int, cancel_requested = 0, lease_owner = NULL, lease_expires = NULL, "
         "updated_at = $3::bigint, " + logged("$2::int", "$3::bigint", "$4::text") +
             ", unique_slot = CASE WHEN (unique_states >> $2::int) & 1 = 1 AND NOT EXISTS (SELECT 1 FROM jobs AS "
             "other WHERE other.unique_slot = jobs.unique_scoped AND other.id <> jobs.id) THEN unique_scoped END "
             "WHERE id = $1"},
        {"key_holder",
         "SELECT other.id, me.unique_key FROM jobs AS me JOIN jobs AS other "
         "ON other.unique_slot = me.unique_scoped AND other.id <> me.id "
         "WHERE me.id = $1 AND (me.unique_states >> 1) & 1 = 1"},
        {"requeue",
         "UPDATE jobs SET state = 1, attempt = 0, run_at = $2::bigint, cancel_requested = 0, updated_at = $2::bigint, " +
             logged("1", "$2::bigint", "$3::text") +
             ", unique_slot = CASE WHEN (unique_states >> 1) & 1 = 1 THEN unique_scoped END WHERE id = $1"},
        {"stop_running", "UPDATE jobs SET cancel_requested = greatest(cancel_requested, $2) WHERE id = $1"},
        {"find", "SELECT " + job_columns(true) + " FROM jobs WHERE id = $1"},
        {"next_due", "SELECT min(run_at) FROM jobs WHERE state IN (0, 4)"},
        {"counts", "SELECT state, sum(n) FROM job_counts GROUP BY state"},
        {"notify", "SELECT pg_notify($1, '')"},
    };
}

// Built once: each connection prepares them, and each borrowed connection
// (enqueue_in_transaction) looks them up.
const std::vector<prepared_sql>& statements()
{
    static const std::vector<prepared_sql> all = make_statements();
    return all;
}

// A connection of the storage's own is closed with it; one borrowed from
// the caller (enqueue_in_transaction) is not.
struct connection_closer {
    bool owned = true;
    void operator()(PGconn* c) const
    {
        if (owned)
            PQfinish(c);
    }
};

} // namespace

struct postgres_storage::connection {
    std::unique_ptr<PGconn, connection_closer> conn;
    std::string conninfo;
    postgres_options options;
    const std::vector<prepared_sql>& sql = statements();
    bool prepared = false;
    // This transaction made jobs available: other nodes hear of it at commit.
    bool wake_others = false;
    // A statement had no answer in time (the server stalled, the network
    // dropped without a word): the connection is opened again before the
    // next call, as a broken one is.
    bool broken = false;
    std::string no_answer;
    // write() began a transaction whose BEGIN is not sent yet: it goes in
    // one round trip with the transaction's first statement.
    bool begin_pending = false;
    // The body of write() sent its last statement with the COMMIT.
    bool committed = false;
    // The transaction write_generic() began: its statements run on generic
    // plans (see "generic_plans").
    bool generic = false;
    // And wait no longer than this for a lock (milliseconds; empty: the
    // session's, postgres_options::lock_timeout).
    std::string lock_wait;
    // The pool's generation when this connection was last known good.
    std::uint64_t generation = 0;

    // The caller's connection, inside its transaction: statements run
    // unprepared (the names are the caller's to use), and nothing begins or
    // commits.
    connection(PGconn* borrowed, postgres_options opts)
        : conn(borrowed, connection_closer{false}), options(std::move(opts)), prepared(true)
    {
    }

    // A connection of the storage's own; the first one migrates the schema.
    connection(std::string info, postgres_options opts, bool migrating)
        : conninfo(std::move(info)), options(std::move(opts))
    {
        if (options.schema.empty())
            throw storage_error("jobs: postgresql: the schema name is empty");
        open();
        if (migrating)
            migrate();
    }

    void open()
    {
        // Gives up after 10 s without an answer (see connect_postgres).
        conn.reset(hosting::detail::connect_postgres(conninfo, "10"));
        if (!conn)
            throw storage_error("jobs: postgresql: out of memory for a connection");
        if (PQstatus(conn.get()) != CONNECTION_OK)
            throw storage_error("jobs: cannot connect to postgresql: " +
                                hosting::detail::connect_error(conn.get(), conninfo));
        // The server's notices ("already exists, skipping" from a migration
        // that finds its work done) are not the program's to print.
        PQsetNoticeProcessor(conn.get(), [](void*, const char*) {}, nullptr);
        set_up_session();
    }

    // Where the server is, for messages: never the connection string, which
    // may hold a password.
    std::string where() const
    {
        const char* host = PQhost(conn.get());
        const char* port = PQport(conn.get());
        const char* db = PQdb(conn.get());
        return std::string("postgresql ") + (db ? db : "?") + " at " + (host ? host : "?") + ":" + (port ? port : "?");
    }

    std::string quoted_schema() const
    {
        char* q = PQescapeIdentifier(conn.get(), options.schema.data(), options.schema.size());
        if (!q)
            throw storage_error("jobs: postgresql: schema name '" + options.schema +
                                "' is refused: " + trimmed(PQerrorMessage(conn.get())));
        std::string out(q);
        PQfreemem(q);
        return out;
    }

    // Through a pooler in transaction mode, each transaction may get another
    // server session, and a session's state would go to other clients.
    bool pooled() const { return options.transaction_pooling && conn.get_deleter().owned; }
    // Statements are sent with their text: the caller's connection has
    // none of ours prepared, and a pooled session may be anyone's.
    bool unprepared() const { return options.transaction_pooling || !conn.get_deleter().owned; }
    // A statement with no transaction open goes in one of its own, which
    // carries the settings a pooled session does not keep (alone()).
    bool needs_own_transaction() const
    {
        return pooled() && !begin_pending && PQtransactionStatus(conn.get()) == PQTRANS_IDLE;
    }
    // What a transaction's locks may wait: write_generic()'s bound, or the
    // session's.
    std::string lock_bound() const { return generic && !lock_wait.empty() ? lock_wait : session_lock_wait(); }

    params session_settings(const std::string& lock_wait_ms) const
    {
        return params()
            .add(quoted_schema())
            .add(std::to_string(std::max<std::int64_t>(0, options.statement_timeout.count())))
            .add(lock_wait_ms);
    }

    void set_up_session()
    {
        prepared = pooled(); // nothing to prepare, nor to set: see session_settings
        if (prepared)
            return;
        exec("SET search_path TO " + quoted_schema());
        exec("SET statement_timeout = " + std::to_string(options.statement_timeout.count()));
        exec("SET lock_timeout = " + session_lock_wait());
    }

    std::string session_lock_wait() const
    {
        return std::to_string(std::max<std::int64_t>(0, options.lock_timeout.count()));
    }

    // A broken connection (the server restarted, the network dropped) is
    // opened again before the next call; the call that broke it has failed.
    void ensure_connected()
    {
        begin_pending = false;
        if (broken || PQstatus(conn.get()) != CONNECTION_OK) {
            broken = false;
            // One given up inside a pipeline is opened afresh: a reset
            // keeps nothing of it, but a new connection is sure not to.
            if (PQpipelineStatus(conn.get()) != PQ_PIPELINE_OFF) {
                try {
                    open();
                } catch (const storage_error& e) {
                    broken = true;
                    throw storage_error(std::string("jobs: cannot reconnect to postgresql: ") + e.what());
                }
            } else {
                PQreset(conn.get());
                if (PQstatus(conn.get()) != CONNECTION_OK)
                    throw storage_error("jobs: cannot reconnect to postgresql: " +
                                        trimmed(PQerrorMessage(conn.get())));
                set_up_session();
            }
        } else if (PQtransactionStatus(conn.get()) != PQTRANS_IDLE) {
            exec("ROLLBACK");
        }
        if (!prepared) {
            // Those a failed round prepared go first: a name is prepared once.
            exec("DEALLOCATE ALL");
            for (const auto& s : sql) {
                result r(answer(PQsendPrepare(conn.get(), s.name, s.sql.c_str(), 0, nullptr)));
                check(r, s.name);
            }
            prepared = true;
        }
    }

    void check(const result& r, const char* what) const
    {
        auto* raw = r.raw();
        const auto status = raw ? PQresultStatus(raw) : PGRES_FATAL_ERROR;
        if (status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK)
            return;
        const char* state = raw ? PQresultErrorField(raw, PG_DIAG_SQLSTATE) : nullptr;
        std::string message = raw                 ? trimmed(PQresultErrorMessage(raw))
                              : !no_answer.empty() ? no_answer
                                                   : trimmed(PQerrorMessage(conn.get()));
        // A lock wait that our own bound ended: say whose bound, and what
        // holds the lock.
        if (state && std::string_view(state) == "55P03" && conn.get_deleter().owned) {
            if (!lock_wait.empty())
                message.append(" (after ")
                    .append(lock_wait)
                    .append(" ms, a quarter of the lease: another transaction holds what this one must change, "
                            "such as one that enqueued a continuation of a job ending here and has not committed; "
                            "the node renews its leases and tries again)");
            else if (options.lock_timeout.count() > 0)
                message.append(" (after postgres_options::lock_timeout, ")
                    .append(session_lock_wait())
                    .append(" ms: another transaction holds what this call must change, such as one that "
                            "enqueued a job with the same unique key and has not committed)");
        }
        if (state && std::string_view(state) == "57014" && migrating_now)
            message.append(" (after postgres_options::migration_timeout, ")
                .append(std::to_string(options.migration_timeout.count()))
                .append(" ms: the schema's migration, or the wait for another node's)");
        // A prepared statement gone from a connection that prepared it: the
        // session behind it changed, as through a pooler in transaction mode.
        if (state && std::string_view(state) == "26000" && !unprepared())
            message.append(" (this connection's prepared statements are gone from the server session it reaches: "
                           "behind a pooler in transaction mode, such as PgBouncer's pool_mode = transaction, set "
                           "postgres_options::transaction_pooling, or Jobs:TransactionPooling=true)");
        if (state && std::string_view(state) == "55P03")
            throw row_lock_timeout("jobs: " + where() + ": " + what + ": " + message);
        throw server_error("jobs: " + where() + ": " + what + ": " + message, state ? state : "");
    }

    // The answer to the query just sent (`sent` is what sending returned):
    // its last result, or its first error. On a connection of the
    // storage's own it waits no longer than the statement_timeout and 2 s
    // more: past that, the server that would have cancelled the statement
    // is not answering at all, and the connection is given up.
    PGresult* answer(int sent)
    {
        no_answer.clear();
        if (sent == 0)
            return nullptr;
        const auto limit = migrating_now ? options.migration_timeout : options.statement_timeout;
        const bool bounded = conn.get_deleter().owned && limit.count() > 0;
        const auto deadline = std::chrono::steady_clock::now() + limit + std::chrono::seconds(2);
        PGresult* kept = nullptr;
        for (;;) {
            if (auto failed =
                    hosting::detail::await_result(conn.get(), bounded ? std::optional(deadline) : std::nullopt)) {
                PQclear(kept);
                broken = true;
                no_answer = !failed->timed_out
                                ? std::move(failed->why)
                                : "no answer within " + std::to_string((limit + std::chrono::seconds(2)).count()) +
                                      (migrating_now ? " ms (the migration_timeout and 2 s)"
                                                     : " ms (the statement_timeout and 2 s)") +
                                      "; the connection is given up";
                return nullptr;
            }
            PGresult* r = PQgetResult(conn.get());
            if (!r)
                return kept;
            // The first error wins; otherwise the last result.
            const auto succeeded = [](PGresult* x) {
                return PQresultStatus(x) == PGRES_COMMAND_OK || PQresultStatus(x) == PGRES_TUPLES_OK;
            };
            if (kept && !succeeded(kept)) {
                PQclear(r);
                continue;
            }
            PQclear(kept);
            kept = r;
        }
    }

    result exec(const std::string& text, const params& p = {})
    {
        // A text goes on its own (a migration is several statements in
        // one, which a pipeline does not take), after the statements that
        // open the transaction it waits for: the BEGIN and the settings
        // that go with it, in one round trip.
        if (needs_own_transaction())
            return alone({"statement", p, text});
        if (begin_pending)
            pipeline({});
        // Without parameters, the simple protocol: a migration is several
        // statements in one text.
        const auto values = p.pointers();
        result r(answer(p.size() == 0 ? PQsendQuery(conn.get(), text.c_str())
                                      : PQsendQueryParams(conn.get(), text.c_str(), p.size(), nullptr, values.data(),
                                                          nullptr, nullptr, 0)));
        check(r, "statement");
        return r;
    }

    // Sends one statement (a prepared one by name; BEGIN or COMMIT as
    // text, with the extended protocol that a pipeline takes); 0 when it
    // could not be sent.
    // `text`, when given, is sent as it is and `name` only names it.
    int send(const char* name, const params& p, const std::string& text = {})
    {
        const auto values = p.pointers();
        if (!text.empty())
            return PQsendQueryParams(conn.get(), text.c_str(), p.size(), nullptr, values.data(), nullptr, nullptr,
                                     0);
        if (std::string_view(name) == "BEGIN" || std::string_view(name) == "COMMIT")
            return PQsendQueryParams(conn.get(), name, 0, nullptr, nullptr, nullptr, nullptr, 0);
        if (unprepared()) {
            const auto s = std::find_if(sql.begin(), sql.end(), [&](const prepared_sql& s) {
                return std::string_view(s.name) == name;
            });
            if (s == sql.end())
                throw storage_error(std::string("jobs: postgresql: no statement named ") + name);
            return PQsendQueryParams(conn.get(), s->sql.c_str(), p.size(), nullptr, values.data(), nullptr, nullptr,
                                     0);
        }
        return PQsendQueryPrepared(conn.get(), name, p.size(), values.data(), nullptr, nullptr, 0);
    }

    struct step {
        const char* name;
        params values;
        std::string text = {}; // a statement not among the prepared ones
    };

    // Statements sent together and answered together, in one round trip
    // (the BEGIN a transaction waits for goes first): a claim's own
    // statements, and an enqueue's, are most of what a job's latency is
    // made of on a network. Each result in order; the first error is
    // thrown, and the statements after it were not run (the server skips
    // them, and the transaction is aborted).
    std::vector<result> pipeline(std::vector<step> steps)
    {
        std::size_t opening = 0;
        if (std::exchange(begin_pending, false)) {
            std::vector<step> first;
            first.push_back({"BEGIN", {}});
            // Through a pooler the settings go in each transaction. Its
            // statements are planned at each call, and still generic: a
            // custom plan for a transaction of a few hundred jobs may read
            // them along jobs_state (a bitmap scan of the ids among the
            // entries a drain leaves there) rather than by primary key,
            // and drained 5,067 jobs/s where generic plans drained 36,380
            // (postgres_nodes, claims of 512).
            if (pooled())
                first.push_back({"session_settings", session_settings(lock_bound())});
            if (generic)
                first.push_back({"generic_plans", params().add(lock_bound())});
            opening = first.size();
            steps.insert(steps.begin(), std::make_move_iterator(first.begin()), std::make_move_iterator(first.end()));
        }
        if (PQenterPipelineMode(conn.get()) == 0)
            throw storage_error("jobs: " + where() + ": cannot pipeline: " + trimmed(PQerrorMessage(conn.get())));
        bool sent = true;
        for (const auto& s : steps)
            sent = sent && send(s.name, s.values, s.text) != 0;
        sent = sent && PQpipelineSync(conn.get()) != 0;
        no_answer.clear();
        std::vector<result> out;
        out.reserve(steps.size());
        // Once one answer did not come in time, the others are not waited
        // for: the call's bound is one statement_timeout, not one per step.
        for (std::size_t i = 0; i < steps.size(); ++i)
            out.emplace_back(sent && !broken ? answer(1) : nullptr);
        if (sent && !broken) {
            result sync(answer(1));
            if (!sync.raw() || PQresultStatus(sync.raw()) != PGRES_PIPELINE_SYNC)
                broken = true;
        } else {
            broken = true; // a pipeline cut short leaves answers unread: opened again
        }
        if (!broken)
            PQexitPipelineMode(conn.get());
        for (std::size_t i = 0; i < steps.size(); ++i)
            check(out[i], steps[i].name);
        if (broken)
            throw server_error("jobs: " + where() + ": " + steps.front().name + ": " +
                                   (no_answer.empty() ? trimmed(PQerrorMessage(conn.get())) : no_answer),
                               "");
        out.erase(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(opening));
        return out;
    }

    // The second statement's result; the first one's is not needed, so
    // both go in one round trip.
    result run_after(const char* first, params first_values, const char* second, params second_values)
    {
        auto out = pipeline({{first, std::move(first_values)}, {second, std::move(second_values)}});
        return std::move(out.back());
    }

    // The transaction's last statement, sent with its COMMIT (and the
    // NOTIFY, when it makes work for others) in the same round trip: a job
    // enqueued alone, or claimed on a quiet node, costs one round trip
    // and one commit. The body of write() sends nothing after it.
    result run_and_commit(const char* name, params p)
    {
        std::vector<step> steps;
        steps.push_back({name, std::move(p)});
        return std::move(commit_with(std::move(steps)).front());
    }

    // The transaction's last statements, sent with the COMMIT; their
    // results in order.
    std::vector<result> commit_with(std::vector<step> steps)
    {
        const auto n = steps.size();
        if (wake_others && options.notifications)
            steps.push_back({"notify", params().add(channel_of(options.schema))});
        steps.push_back({"COMMIT", {}});
        auto out = pipeline(std::move(steps));
        committed = true;
        out.erase(out.begin() + static_cast<std::ptrdiff_t>(n), out.end());
        return out;
    }

    // A statement outside any transaction, through a pooler in transaction
    // mode: a transaction of its own, which carries the session's settings,
    // in one round trip.
    result alone(step s)
    {
        wake_others = false;
        begin_pending = true;
        try {
            auto out = commit_with({std::move(s)});
            committed = false;
            return std::move(out.front());
        } catch (...) {
            committed = false;
            rollback_quietly();
            throw;
        }
    }

    result run(const char* name, const params& p)
    {
        if (needs_own_transaction())
            return alone({name, p});
        if (begin_pending)
            return std::move(pipeline({{name, p}}).back());
        result r(answer(send(name, p)));
        check(r, name);
        return r;
    }

    // Runs `body` in one transaction. A deadlock, a serialization failure
    // or a unique key taken by a racing transaction rolls it back whole,
    // and it runs again; a broken connection is never retried here: whether
    // the commit happened is then unknown.
    template <class F>
    auto write(F&& body)
    {
        for (int attempt = 1;; ++attempt) {
            begin_pending = true;
            committed = false;
            wake_others = false;
            try {
                if constexpr (std::is_void_v<decltype(body())>) {
                    body();
                    commit();
                    return;
                } else {
                    auto out = body();
                    commit();
                    return out;
                }
            } catch (const server_error& e) {
                rollback_quietly();
                if (e.retryable() && attempt < 8 && !broken && PQstatus(conn.get()) == CONNECTION_OK)
                    continue;
                throw;
            } catch (...) {
                rollback_quietly();
                throw;
            }
        }
    }

    // write() for the claims and completions: their statements are planned
    // once per connection. Left to choose, the server plans a claim again
    // at each call (a custom plan for its LIMIT looks cheaper than the
    // generic one, and planning costs more than running it), and the
    // plans it makes have the same shape: ids through the primary key,
    // candidates in the order of jobs_ready.
    // A lock_bound above zero bounds each wait for a lock (see
    // complete_and_claim()).
    template <class F>
    auto write_generic(F&& body, std::chrono::milliseconds lock_bound = {})
    {
        generic = true;
        if (lock_bound.count() > 0)
            lock_wait = std::to_string(lock_bound.count());
        struct reset {
            connection& c;
            ~reset()
            {
                c.generic = false;
                c.lock_wait.clear();
            }
        } done{*this};
        return write(std::forward<F>(body));
    }

    // A notification is sent with the transaction, and only if it commits.
    void commit()
    {
        if (std::exchange(committed, false))
            return;
        if (std::exchange(begin_pending, false))
            return; // nothing was sent, not even the BEGIN
        if (wake_others && options.notifications)
            pipeline({{"notify", params().add(channel_of(options.schema))}, {"COMMIT", {}}});
        else
            exec("COMMIT");
    }

    void rollback_quietly()
    {
        if (std::exchange(begin_pending, false))
            return;
        if (!broken && PQstatus(conn.get()) == CONNECTION_OK && PQtransactionStatus(conn.get()) != PQTRANS_IDLE)
            PQclear(answer(PQsendQuery(conn.get(), "ROLLBACK")));
    }

    // The migration's statements are bounded by migration_timeout, not
    // statement_timeout: the server's bound and the wait for its answer.
    bool migrating_now = false;

    void migrate()
    {
        migrating_now = true;
        struct reset {
            bool& flag;
            ~reset() { flag = false; }
        } done{migrating_now};
        write([&] {
            // Nodes that start together migrate one after the other, each
            // waiting for the one before it (up to migration_timeout).
            exec("SET LOCAL lock_timeout = 0");
            exec("SET LOCAL statement_timeout = " +
                 std::to_string(std::max<std::int64_t>(0, options.migration_timeout.count())));
            exec("SELECT pg_advisory_xact_lock(hashtextextended($1, 7200))",
                 params().add("hosting_jobs_schema:" + options.schema));
            exec("CREATE SCHEMA IF NOT EXISTS " + quoted_schema());
            exec("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)");
            auto v = exec("SELECT max(version) FROM schema_version");
            const int version = v.is_null(0, 0) ? 0 : static_cast<int>(v.integer(0, 0));
            if (version > schema_version) {
                // Newer: usable if what it added leaves this program's
                // reads and writes as they were.
                int oldest = version;
                auto readers = exec("SELECT to_regclass('schema_readers') IS NOT NULL");
                if (readers.text(0, 0) == "t") {
                    auto o = exec("SELECT max(oldest) FROM schema_readers");
                    if (!o.is_null(0, 0))
                        oldest = static_cast<int>(o.integer(0, 0));
                }
                if (oldest > schema_version)
                    throw storage_error("jobs: " + where() + ": schema '" + options.schema + "' has version " +
                                        std::to_string(version) + ", which needs a program of schema " +
                                        std::to_string(oldest) + " or newer; this program's is " +
                                        std::to_string(schema_version));
            }
            for (int next = version + 1; next <= schema_version; ++next) {
                exec(migrations[next - 1]);
                exec("INSERT INTO schema_version (version) VALUES (" + std::to_string(next) + ")");
            }
        });
    }

    static job read_job(const result& r, int row, bool with_history)
    {
        job j;
        j.id = r.integer(row, 0);
        j.kind = r.text(row, 1);
        j.queue = r.text(row, 2);
        j.args = r.text(row, 3);
        j.priority = static_cast<int>(r.integer(row, 4));
        j.state = stored_state(r.integer(row, 5), j.id);
        j.attempt = static_cast<int>(r.integer(row, 6));
        j.max_attempts = static_cast<int>(r.integer(row, 7));
        j.timeout = stored_timeout(r.integer(row, 8));
        j.created_at = from_micros(r.integer(row, 9));
        j.run_at = from_micros(r.integer(row, 10));
        j.unique_key = r.text(row, 11);
        j.lease_owner = r.text(row, 12);
        j.lease_expires = r.is_null(row, 13) ? time_point{} : from_micros(r.integer(row, 13));
        j.last_error = r.text(row, 14);
        j.cancel_requested = r.integer(row, 15) != 0;
        j.delete_requested = r.integer(row, 15) == 2;
        j.concurrency_key = r.text(row, 17);
        j.parent_id = r.is_null(row, 18) ? 0 : r.integer(row, 18);
        j.condition = static_cast<continuation_condition>(r.integer(row, 19));
        j.recurring_id = r.text(row, 20);
        if (with_history)
            j.history = stored_history(r.text(row, 16), j.id);
        return j;
    }

    std::optional<job_state> state_if_any(job_id id, const char* how = "state_of")
    {
        auto r = run(how, params().add(id));
        if (r.rows() == 0)
            return std::nullopt;
        return stored_state(r.integer(0, 0), id);
    }

    // Inserts one job, inside the caller's transaction: the one path for
    // enqueues and recurring occurrences alike.
    enqueue_result add(const enqueue_request& r, time_point now)
    {
        auto initial = r.run_at && *r.run_at > now ? job_state::scheduled : job_state::available;
        std::optional<job_state> parent;
        if (r.parent_id != 0) {
            run("lock_parent_shared", params().add(parent_key(r.parent_id)));
            parent = state_if_any(r.parent_id);
            if (!parent)
                return {0, false, "jobs: no job " + std::to_string(r.parent_id) + " to continue"};
            initial = job_state::awaiting;
        }
        const auto slot = unique_slot(r.kind, r.unique_key, r.unique_across_kinds);
        params p;
        p.add(r.kind).add(r.queue).add(r.args).add(r.priority).add(code(initial));
        p.add(r.max_attempts).add(static_cast<std::int64_t>(r.timeout.count())).add(micros(now));
        p.add(micros(r.run_at.value_or(now)));
        p.add_or_null(r.unique_key);
        p.add(r.unique_key.empty() ? std::int64_t{0} : static_cast<std::int64_t>(r.unique_states.bits()));
        p.add_or_null(r.unique_states.contains(initial) ? std::string_view(slot) : std::string_view());
        p.add(r.reason).add_or_null(r.concurrency_key);
        if (r.parent_id == 0)
            p.add_null();
        else
            p.add(r.parent_id);
        p.add(static_cast<int>(r.condition)).add_or_null(r.recurring_id).add_or_null(slot);
        // The job holding the key may let it go between the insert and the
        // look for it; each statement sees what committed before it, so a
        // few rounds settle it.
        for (int round = 0; round < 16; ++round) {
            auto inserted = run("insert", p);
            if (inserted.rows() == 1) {
                const auto id = inserted.integer(0, 0);
                wake_others |= initial == job_state::available;
                if (parent && is_final(*parent))
                    resolve_children(r.parent_id, *parent, now);
                return {id, true, {}};
            }
            auto holder = run("find_unique", params().add(slot));
            if (holder.rows() != 0)
                return {holder.integer(0, 0), false, {}};
        }
        throw storage_error("jobs: " + where() + ": unique key '" + r.unique_key +
                            "' kept changing hands; the enqueue was not made");
    }

    // Plain jobs (no unique key, no parent) in one statement, inside the
    // caller's transaction; `out` gets their results in order. With
    // `commit`, the statement is the transaction's last, sent with its
    // COMMIT.
    void add_many(std::span<const enqueue_request> requests, time_point now, std::span<enqueue_result> out,
                  bool commit = false)
    {
        std::vector<std::string> kind, queue, args, concurrency_key, recurring_id, reason;
        std::vector<std::int64_t> priority, state, max_attempts, timeout_ms, run_at;
        for (const auto& r : requests) {
            kind.push_back(r.kind);
            queue.push_back(r.queue);
            args.push_back(r.args);
            priority.push_back(r.priority);
            state.push_back(code(r.run_at && *r.run_at > now ? job_state::scheduled : job_state::available));
            max_attempts.push_back(r.max_attempts);
            timeout_ms.push_back(static_cast<std::int64_t>(r.timeout.count()));
            run_at.push_back(micros(r.run_at.value_or(now)));
            concurrency_key.push_back(r.concurrency_key);
            recurring_id.push_back(r.recurring_id);
            reason.push_back(r.reason);
        }
        wake_others |= std::find(state.begin(), state.end(), code(job_state::available)) != state.end();
        params insert;
        insert.add(micros(now));
        const char* statement = "insert_many";
        if (requests.size() == 1) {
            statement = "insert_one";
            insert.add(kind[0])
                .add(queue[0])
                .add(args[0])
                .add(priority[0])
                .add(state[0])
                .add(max_attempts[0])
                .add(timeout_ms[0])
                .add(run_at[0])
                .add_or_null(concurrency_key[0])
                .add_or_null(recurring_id[0])
                .add(reason[0]);
        } else {
            insert.add(text_array(kind))
                .add(text_array(queue))
                .add(text_array(args))
                .add(integer_array(priority))
                .add(integer_array(state))
                .add(integer_array(max_attempts))
                .add(integer_array(timeout_ms))
                .add(integer_array(run_at))
                .add(text_array(concurrency_key, true))
                .add(text_array(recurring_id, true))
                .add(text_array(reason));
        }
        auto ids = commit ? run_and_commit(statement, std::move(insert)) : run(statement, insert);
        if (ids.rows() != static_cast<int>(requests.size()))
            throw storage_error("jobs: " + where() + ": a batch of " + std::to_string(requests.size()) +
                                " jobs stored " + std::to_string(ids.rows()));
        // Drawn in the statement's order: sorted, they are the batch's.
        std::vector<job_id> sorted;
        for (int i = 0; i < ids.rows(); ++i)
            sorted.push_back(ids.integer(i, 0));
        std::sort(sorted.begin(), sorted.end());
        for (std::size_t k = 0; k < requests.size(); ++k)
            out[k] = {sorted[k], true, {}};
    }

    // The jobs, in order, inside the caller's transaction.
    std::vector<enqueue_result> enqueue_all(std::span<const enqueue_request> requests, time_point now)
    {
        std::vector<enqueue_result> out(requests.size());
        // Each run of plain jobs goes in one statement; a job with a unique
        // key or a parent goes alone, as it must see the rows before it.
        // Ids follow the order of the batch either way.
        std::size_t run_start = 0;
        for (std::size_t i = 0; i <= requests.size(); ++i) {
            if (i < requests.size() && requests[i].unique_key.empty() && requests[i].parent_id == 0)
                continue;
            if (i > run_start)
                add_many(requests.subspan(run_start, i - run_start), now,
                         std::span(out).subspan(run_start, i - run_start));
            if (i < requests.size())
                out[i] = add(requests[i], now);
            run_start = i + 1;
        }
        return out;
    }

    // A transition asked for from outside the engine, inside the caller's
    // transaction: change_state, and each job of change_states.
    job_state change(job_id id, job_state to, const std::string& reason, time_point now)
    {
        const auto state = state_if_any(id, "state_for_update");
        if (!state)
            throw job_not_found(id);
        const auto from = *state;
        const auto how = outside_change_of(id, from, to);
        if (how == outside_change::stop_running) {
            run("stop_running", params().add(id).add(to == job_state::deleted ? 2 : 1));
            return from;
        }
        if (how == outside_change::requeue) {
            auto holder = run("key_holder", params().add(id));
            if (holder.rows() != 0)
                throw invalid_transition(id, from, to,
                                         "job " + std::to_string(holder.integer(0, 0)) + " holds its unique key '" +
                                             holder.text(0, 1) + "'");
            run("requeue", params().add(id).add(micros(now)).add(reason));
            wake_others = true;
        } else {
            apply_transition(id, to, now, reason);
        }
        return to;
    }

    void apply_transition(job_id id, job_state to, time_point now, const std::string& reason)
    {
        run("transition", params().add(id).add(code(to)).add(micros(now)).add(reason));
        if (is_final(to))
            resolve_children(id, to, now);
    }

    // A job's key among the parents' locks.
    std::string parent_key(job_id id) const { return options.schema + ":" + std::to_string(id); }

    void resolve_children(job_id parent, job_state ended, time_point now)
    {
        resolve_children(std::vector<std::pair<job_id, job_state>>{{parent, ended}}, now);
    }

    // Parents that reached a final state: each awaiting continuation
    // becomes available or deleted as fate_of() says, or goes on waiting.
    void resolve_children(const std::vector<std::pair<job_id, job_state>>& parents, time_point now)
    {
        if (parents.empty())
            return;
        std::vector<std::string> keys;
        std::vector<job_id> ids;
        std::unordered_map<job_id, job_state> ended;
        for (const auto& [id, state] : parents) {
            keys.push_back(parent_key(id));
            ids.push_back(id);
            ended.emplace(id, state);
        }
        // The children are read once the lock is held: each statement sees
        // what committed before it started.
        resolve_waiting(run_after("lock_parents", params().add(text_array(keys)), "children",
                                  params().add(integer_array(ids))),
                        ended, now);
    }

    // What "children" read for parents of which those in `ended` reached a
    // final state (each as given); the others' continuations go on waiting.
    void resolve_waiting(const result& waiting, const std::unordered_map<job_id, job_state>& ended, time_point now)
    {
        for (int i = 0; i < waiting.rows(); ++i) {
            const auto id = waiting.integer(i, 0);
            const auto condition = static_cast<continuation_condition>(waiting.integer(i, 1));
            const auto parent = waiting.integer(i, 2);
            const auto it = ended.find(parent);
            if (it == ended.end())
                continue;
            const auto state = it->second;
            switch (fate_of(condition, state)) {
            case continuation_fate::wait: break;
            case continuation_fate::run:
                wake_others = true;
                run("requeue", params().add(id).add(micros(now)).add("parent " + std::to_string(parent) + " " +
                                                                    std::string(to_string(state))));
                break;
            case continuation_fate::drop:
                apply_transition(id, job_state::deleted, now,
                                 "parent " + std::to_string(parent) + " ended " + std::string(to_string(state)) +
                                     "; the continuation runs only when it " + wanted(condition));
                break;
            }
        }
    }

    void drop_children_of_pruned(const std::vector<job_id>& parents, job_state was, time_point now)
    {
        std::vector<std::string> keys;
        for (auto id : parents)
            keys.push_back(parent_key(id));
        run("lock_parents", params().add(text_array(keys)));
        auto waiting = run("children", params().add(integer_array(parents)));
        for (int i = 0; i < waiting.rows(); ++i)
            apply_transition(waiting.integer(i, 0), job_state::deleted, now,
                             "parent " + std::to_string(waiting.integer(i, 2)) + " was pruned (it had ended " +
                                 std::string(to_string(was)) + "); the continuation runs only when it " +
                                 wanted(static_cast<continuation_condition>(waiting.integer(i, 1))));
    }

    // Running jobs whose node is gone, as read (and locked) by `found`:
    // id, attempt, max_attempts, lease_owner, cancel_requested, claim_flags.
    template <class Why>
    std::vector<job_id> recover(const result& found, time_point now, Why why)
    {
        std::vector<job_id> out;
        for (int i = 0; i < found.rows(); ++i) {
            const auto id = found.integer(i, 0);
            const auto attempt = static_cast<int>(found.integer(i, 1));
            const auto max_attempts = static_cast<int>(found.integer(i, 2));
            const auto owner = found.text(i, 3);
            const auto cancel_requested = found.integer(i, 4);
            const auto claim_flags = found.integer(i, 5);
            out.push_back(id);
            const auto r = recovery_of(attempt, max_attempts, cancel_requested, claim_flags);
            const std::string reason = r.reason(why(owner));
            // A job asked to stop does not start again because its node died.
            if (r.to == job_state::deleted || r.to == job_state::cancelled) {
                apply_transition(id, r.to, now, reason);
                continue;
            }
            if (r.refund)
                run("refunded", params().add(id));
            const bool failed = r.to == job_state::failed;
            params p;
            p.add(id).add(code(r.to)).add(r.refund ? -1 : 0);
            p.add_null().add_or_null(failed ? std::string_view(reason) : std::string_view());
            p.add(micros(now)).add(reason).add(owner).add(attempt);
            run("complete", p);
            if (failed)
                resolve_children(id, job_state::failed, now);
            wake_others |= !failed;
        }
        return out;
    }
};

// The storage's connections. Each call takes one for itself, so calls
// from several threads (the engine's writes and its reads, an
// application's own) run at once, up to pool_size; past that a call waits
// for one to come back. The one given back last goes out first, so a
// storage used by one thread at a time keeps one connection busy and the
// others idle. A connection found broken (the server restarted) marks the
// idle ones as suspect: each is opened again before its next call, rather
// than fail that call as the first one did.
struct postgres_storage::pool {
    std::string conninfo;
    postgres_options options;
    std::mutex mutex;
    std::condition_variable returned;
    std::vector<std::unique_ptr<connection>> idle; // mutex
    std::size_t open = 0;                          // mutex
    std::uint64_t generation = 0;                  // mutex: bumped when one is found broken

    class lease {
    public:
        lease(pool& p, std::unique_ptr<connection> c) : pool_(&p), c_(std::move(c)) {}
        lease(lease&& other) noexcept = default;
        lease& operator=(lease&&) = delete;
        ~lease()
        {
            if (c_)
                pool_->give_back(std::move(c_));
        }
        connection& operator*() const { return *c_; }

    private:
        pool* pool_;
        std::unique_ptr<connection> c_;
    };

    pool(std::string info, postgres_options opts) : conninfo(std::move(info)), options(std::move(opts))
    {
        if (options.pool_size < 1)
            throw storage_error("jobs: postgresql: pool_size must be at least 1");
        idle.push_back(std::make_unique<connection>(conninfo, options, true));
        open = 1;
    }

    // A connection, connected and out of any transaction.
    lease take()
    {
        std::unique_lock lock(mutex);
        returned.wait(lock, [&] { return !idle.empty() || open < options.pool_size; });
        std::unique_ptr<connection> c;
        if (!idle.empty()) {
            c = std::move(idle.back());
            idle.pop_back();
            if (c->generation < generation)
                c->broken = true;
        } else {
            ++open;
            lock.unlock();
            try {
                c = std::make_unique<connection>(conninfo, options, false);
            } catch (...) {
                lock.lock();
                --open;
                returned.notify_one();
                throw;
            }
            lock.lock();
        }
        c->generation = generation;
        lock.unlock();
        lease out(*this, std::move(c));
        (*out).ensure_connected();
        return out;
    }

    void give_back(std::unique_ptr<connection> c)
    {
        {
            std::lock_guard lock(mutex);
            if (c->broken || PQstatus(c->conn.get()) != CONNECTION_OK) {
                c->broken = true;
                c->generation = ++generation;
            }
            idle.push_back(std::move(c));
        }
        returned.notify_one();
    }
};

postgres_storage::postgres_storage(std::string conninfo, postgres_options options)
    : conninfo_(conninfo), options_(options), pool_(std::make_unique<pool>(std::move(conninfo), std::move(options)))
{
}

postgres_storage::~postgres_storage() { listen_for_work({}); }

// A connection that LISTENs on the schema's channel, on a thread of its
// own. It never blocks where a stop cannot reach it: the connection is made
// without blocking, and every wait is a poll() that also watches an eventfd
// the stop writes to.
struct postgres_storage::listener {
    std::string conninfo;
    std::string channel;
    std::function<void()> wake;
    int stop_fd = -1;
    std::thread thread;

    listener(std::string info, std::string chan, std::function<void()> fn)
        : conninfo(std::move(info)), channel(std::move(chan)), wake(std::move(fn))
    {
        stop_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (stop_fd < 0)
            throw storage_error("jobs: postgresql: cannot make an eventfd for the listener");
        thread = std::thread([this] { run(); });
    }
    ~listener()
    {
        const std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(stop_fd, &one, sizeof one);
        thread.join();
        ::close(stop_fd);
    }

    // Waits until `fd` is ready for `events`, the stop is asked, or the
    // time passes: true only for the first.
    bool wait(int fd, short events, int timeout_ms) const
    {
        pollfd fds[2] = {{stop_fd, POLLIN, 0}, {fd, events, 0}};
        const int n = ::poll(fds, fd < 0 ? 1 : 2, timeout_ms);
        if (n < 0 || (fds[0].revents & POLLIN) != 0)
            return false;
        return fd >= 0 && fds[1].revents != 0;
    }
    bool stopping() const
    {
        pollfd fd{stop_fd, POLLIN, 0};
        return ::poll(&fd, 1, 0) > 0;
    }

    PGconn* connect() const
    {
        PGconn* conn = hosting::detail::connect_postgres(conninfo, "10", true);
        if (!conn)
            return nullptr;
        auto status = PGRES_POLLING_WRITING;
        while (status != PGRES_POLLING_OK && status != PGRES_POLLING_FAILED) {
            if (!wait(PQsocket(conn), status == PGRES_POLLING_READING ? POLLIN : POLLOUT, 10000)) {
                PQfinish(conn);
                return nullptr;
            }
            status = PQconnectPoll(conn);
        }
        if (status == PGRES_POLLING_FAILED) {
            PQfinish(conn);
            return nullptr;
        }
        PQsetNoticeProcessor(conn, [](void*, const char*) {}, nullptr);
        char* quoted = PQescapeIdentifier(conn, channel.data(), channel.size());
        bool listening = false;
        if (quoted) {
            listening = PQsendQuery(conn, (std::string("LISTEN ") + quoted).c_str()) == 1;
            PQfreemem(quoted);
        }
        // Its results waited for as the connection was, so that a server
        // that stopped answering holds up neither this thread's stop nor
        // the servers waiting for it.
        bool ok = false;
        while (listening) {
            while (listening && PQisBusy(conn) == 1)
                listening = wait(PQsocket(conn), POLLIN, 10000) && PQconsumeInput(conn) == 1;
            PGresult* r = listening ? PQgetResult(conn) : nullptr;
            if (!r)
                break;
            ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            PQclear(r);
        }
        if (!listening || !ok) {
            PQfinish(conn);
            return nullptr;
        }
        return conn;
    }

    void run()
    {
        PGconn* conn = nullptr;
        while (!stopping()) {
            if (!conn) {
                conn = connect();
                if (!conn) {
                    wait(-1, 0, 1000); // the server is away: try again in a second
                    continue;
                }
                // Notifications sent while no connection listened are lost:
                // one look makes up for them.
                wake();
            }
            if (!wait(PQsocket(conn), POLLIN, 60000))
                continue;
            if (PQconsumeInput(conn) == 0) {
                PQfinish(conn); // the server went away: connect again
                conn = nullptr;
                continue;
            }
            bool heard = false;
            while (PGnotify* n = PQnotifies(conn)) {
                heard = true;
                PQfreemem(n);
            }
            if (heard) {
                wake();
            }
        }
        if (conn)
            PQfinish(conn);
    }
};

void postgres_storage::listen_for_work(std::function<void()> wake)
{
    std::lock_guard lock(listener_mutex_);
    listener_.reset();
    // A LISTEN through a pooler in transaction mode would be made on a
    // session that goes to other clients: such nodes poll, unless told of
    // another way to the server.
    const auto& where = options_.listen_conninfo.empty() ? conninfo_ : options_.listen_conninfo;
    if (wake && options_.notifications && (!options_.transaction_pooling || !options_.listen_conninfo.empty()))
        listener_ = std::make_unique<listener>(where, channel_of(options_.schema), std::move(wake));
}

std::vector<enqueue_result> postgres_storage::enqueue(std::span<const enqueue_request> requests, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    const bool plain = std::all_of(requests.begin(), requests.end(), [](const enqueue_request& r) {
        return r.unique_key.empty() && r.parent_id == 0;
    });
    if (plain && !requests.empty())
        return c.write([&] {
            std::vector<enqueue_result> out(requests.size());
            c.add_many(requests, now, out, true);
            return out;
        });
    return c.write([&] { return c.enqueue_all(requests, now); });
}

std::vector<enqueue_result> postgres_storage::enqueue_in_transaction(pg_conn* caller,
                                                                     std::span<const enqueue_request> requests,
                                                                     time_point now)
{
    for (const auto& r : requests)
        validate_request(r); // before anything is sent: the caller's transaction stays as it was
    if (!caller || PQstatus(caller) != CONNECTION_OK)
        throw storage_error("jobs: enqueue_in_transaction: the connection is not open");
    if (PQtransactionStatus(caller) != PQTRANS_INTRANS)
        throw storage_error("jobs: enqueue_in_transaction: the connection has no transaction open "
                            "(BEGIN first; a failed statement aborts it too)");
    connection c(caller, options_);
    // The tables are found through this schema for these statements only:
    // the caller's search_path is put back, within its transaction.
    auto saved = c.exec("SELECT current_setting('search_path')");
    const auto previous = saved.text(0, 0);
    c.exec("SELECT set_config('search_path', $1, true)", params().add(c.quoted_schema()));
    try {
        auto out = c.enqueue_all(requests, now);
        if (c.wake_others && options_.notifications)
            c.run("notify", params().add(channel_of(options_.schema)));
        c.exec("SELECT set_config('search_path', $1, true)", params().add(previous));
        return out;
    } catch (...) {
        // Put back if the transaction still takes statements; an aborted
        // one ends with a rollback, which puts it back itself.
        PQclear(PQexecParams(caller, "SELECT set_config('search_path', $1, true)", 1, nullptr,
                             std::array<const char*, 1>{previous.c_str()}.data(), nullptr, nullptr, 0));
        throw;
    }
}

// The claim of every case, in the order claim_request gives, inside the
// caller's transaction (which its last statement may commit).
std::vector<job> postgres_storage::claim_in_order(connection& c, const claim_request& claim, time_point now)
{
    const auto at = micros(now);
    const auto promote = params().add(at).add(static_cast<std::int64_t>(max_rows_per_write));
    // Promotion goes with the first page of candidates, in one round trip.
    bool promoted = false;
    std::vector<job> claimed;
    if (claim.kinds.empty()) {
        c.run("promote", promote);
        return claimed;
    }
    const auto kinds = text_array(claim.kinds);
    std::unordered_map<std::string, std::size_t> kind_left(claim.kind_caps.begin(), claim.kind_caps.end());
    for (const auto& [queue, cap] : claim.queues) {
        auto count = std::min(cap, claim.total - std::min(claim.total, claimed.size()));
        if (count == 0 || c.committed)
            continue;
        // Pages of candidates in claim order until there are enough or
        // none is left (see claim_request): the statement passes over
        // jobs whose key a running job holds, this loop over those of a
        // kind whose cap is reached, those whose key an earlier
        // candidate took, and those whose key another node is claiming.
        std::tuple<std::int64_t, std::int64_t, std::int64_t> after{INT_MIN, INT64_MIN, INT64_MIN};
        std::unordered_set<std::string> taken_keys;
        const std::int64_t page = static_cast<std::int64_t>(std::max<std::size_t>(count * 2, 32));
        for (;;) {
            auto page_params = params()
                                   .add(queue)
                                   .add(kinds)
                                   .add(std::get<0>(after))
                                   .add(std::get<1>(after))
                                   .add(std::get<2>(after))
                                   .add(page);
            auto q = std::exchange(promoted, true) ? c.run("candidates", page_params)
                                                   : c.run_after("promote", promote, "candidates", page_params);
            // The candidates chosen, with the kind each charged to its cap.
            std::vector<std::pair<job_id, std::string>> chosen;
            std::vector<std::pair<job_id, std::string>> keyed;
            int examined = 0;
            for (; examined < q.rows() && chosen.size() < count; ++examined) {
                const int i = examined;
                after = {q.integer(i, 3), q.integer(i, 4), q.integer(i, 0)};
                auto left = kind_left.find(q.text(i, 2));
                if (left != kind_left.end() && left->second == 0)
                    continue;
                if (!q.is_null(i, 1) && !taken_keys.insert(q.text(i, 1)).second)
                    continue;
                if (left != kind_left.end())
                    --left->second;
                chosen.emplace_back(q.integer(i, 0), q.text(i, 2));
                if (!q.is_null(i, 1))
                    keyed.emplace_back(q.integer(i, 0), q.text(i, 1));
            }
            std::unordered_set<job_id> passed; // keyed jobs whose key another node is claiming
            if (!keyed.empty()) {
                std::vector<std::string> keys;
                for (const auto& k : keyed)
                    keys.push_back(k.second);
                auto locked = c.run("lock_keys", params().add(text_array(keys)).add(c.options.schema + ":"));
                std::unordered_set<std::string> ours;
                for (int i = 0; i < locked.rows(); ++i)
                    ours.insert(locked.text(i, 0));
                for (const auto& [id, key] : keyed)
                    if (!ours.contains(key))
                        passed.insert(id);
            }
            std::vector<job_id> ids;
            for (const auto& [id, kind] : chosen)
                if (!passed.contains(id))
                    ids.push_back(id);
            std::unordered_set<job_id> got;
            if (!ids.empty()) {
                auto take = params()
                                .add(claim.node)
                                .add(micros(claim.lease_until))
                                .add(at)
                                .add(integer_array(ids))
                                .add(claimed_tail(claim.node));
                // Nothing would follow this claim (enough were chosen,
                // or none is left, and no later queue has room): it
                // goes with the COMMIT. If another node took some of
                // them meanwhile, the next claim makes up for them.
                const bool fills = ids.size() == count;
                const bool none_left = examined == q.rows() && q.rows() < page;
                const bool last =
                    (fills || none_left) && (&queue == &claim.queues.back().first ||
                                             (fills && claimed.size() + ids.size() >= claim.total));
                auto r = last ? c.run_and_commit("claim", std::move(take)) : c.run("claim", take);
                const auto first = claimed.size();
                for (int i = 0; i < r.rows(); ++i) {
                    claimed.push_back(connection::read_job(r, i, false));
                    got.insert(claimed.back().id);
                }
                std::sort(claimed.begin() + static_cast<std::ptrdiff_t>(first), claimed.end(),
                          [](const job& a, const job& b) {
                              return std::tie(a.priority, a.run_at, a.id) < std::tie(b.priority, b.run_at, b.id);
                          });
                count -= std::min(count, got.size());
            }
            // A candidate another node took meanwhile gives its kind's
            // place back to the candidates after it.
            for (const auto& [id, kind] : chosen) {
                auto left = kind_left.find(kind);
                if (left != kind_left.end() && !got.contains(id))
                    ++left->second;
            }
            if (count == 0 || (examined == q.rows() && q.rows() < page) || c.committed)
                break;
        }
    }
    if (!promoted)
        c.run("promote", promote);
    return claimed;
}

// The common case (one queue with room, no kind at its cap) goes in one
// round trip with promotion and the COMMIT: the first jobs in claim order,
// unless a concurrency key is among them, which only claim_in_order()
// settles. Then this claims nothing and sets `keyed`: the caller claims
// again with claim_in_order(), in a transaction of its own.
std::vector<job> postgres_storage::claim_jobs(connection& c, const claim_request& claim, time_point now, bool& keyed)
{
    const auto with_room =
        std::count_if(claim.queues.begin(), claim.queues.end(), [](const auto& q) { return q.second > 0; });
    if (with_room != 1 || claim.total == 0 || !claim.kind_caps.empty() || claim.kinds.empty())
        return claim_in_order(c, claim, now);
    const auto at = micros(now);
    const auto& roomy =
        *std::find_if(claim.queues.begin(), claim.queues.end(), [](const auto& q) { return q.second > 0; });
    const auto count = static_cast<std::int64_t>(std::min(roomy.second, claim.total));
    auto r = c.commit_with({{"promote", params().add(at).add(static_cast<std::int64_t>(max_rows_per_write))},
                            {"claim_first", params()
                                                .add(claim.node)
                                                .add(micros(claim.lease_until))
                                                .add(at)
                                                .add(roomy.first)
                                                .add(text_array(claim.kinds))
                                                .add(count)
                                                .add(claimed_tail(claim.node))}});
    std::vector<job> out;
    const auto& claimed = r[1];
    for (int i = 0; i < claimed.rows(); ++i) {
        if (claimed.is_null(i, 0))
            keyed = true;
        else
            out.push_back(connection::read_job(claimed, i, false));
    }
    std::sort(out.begin(), out.end(), [](const job& a, const job& b) {
        return std::tie(a.priority, a.run_at, a.id) < std::tie(b.priority, b.run_at, b.id);
    });
    return out;
}

postgres_storage::enqueued_and_claimed postgres_storage::enqueue_and_claim(std::span<const enqueue_request> requests,
                                                                           const claim_request& claim, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    bool keyed = false;
    auto out = c.write_generic([&] {
        enqueued_and_claimed both;
        both.enqueued = c.enqueue_all(requests, now);
        both.claimed = claim_jobs(c, claim, now, keyed);
        return both;
    });
    if (keyed)
        out.claimed = c.write_generic([&] { return claim_in_order(c, claim, now); });
    return out;
}

std::vector<job> postgres_storage::complete_and_claim(std::span<const completion> done, const claim_request& claim,
                                                      time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    const auto at = micros(now);
    auto settle = [&] {
        if (!done.empty()) {
            std::vector<std::int64_t> ids, to, delta, attempt;
            std::vector<std::string> errors, reasons, tails;
            std::string run_at = "{";
            for (const auto& d : done) {
                const auto effect = effect_of(d.what);
                ids.push_back(d.id);
                to.push_back(code(effect.to));
                delta.push_back(effect.attempt_delta);
                attempt.push_back(d.attempt);
                errors.push_back(d.error);
                reasons.push_back(json_string(valid_text(d.reason)));
                tails.push_back(",");
                tails.back().append(json_string(valid_text(d.error))).append("]]");
                if (run_at.size() > 1)
                    run_at += ',';
                run_at += effect.uses_run_at ? std::to_string(micros(d.run_at)) : "NULL";
            }
            run_at += '}';
            // The completions, the locks of the parents among them that
            // end whatever the storage holds (a success, a last failure),
            // and their continuations, in one round trip. Those that end
            // only because a cancel or a delete was pending are found in
            // the result and resolved after it.
            std::vector<job_id> ending;
            std::unordered_set<job_id> foreseen;
            std::vector<std::string> keys;
            for (const auto& d : done)
                if (is_final(effect_of(d.what).to)) {
                    ending.push_back(d.id);
                    foreseen.insert(d.id);
                    keys.push_back(c.parent_key(d.id));
                }
            std::vector<connection::step> steps;
            steps.push_back({"complete_many", params()
                                                  .add(at)
                                                  .add(integer_array(ids))
                                                  .add(integer_array(to))
                                                  .add(integer_array(delta))
                                                  .add(run_at)
                                                  .add(text_array(errors, true))
                                                  .add(text_array(reasons))
                                                  .add(integer_array(attempt))
                                                  .add(claim.node)
                                                  .add(text_array(tails))});
            if (!ending.empty()) {
                steps.push_back({"lock_parents", params().add(text_array(keys))});
                steps.push_back({"children", params().add(integer_array(ending))});
            }
            auto r = c.pipeline(std::move(steps));
            // Those not this node's attempt any more are not returned: their
            // result is moot.
            std::unordered_map<job_id, job_state> finished;
            std::vector<std::pair<job_id, job_state>> unforeseen;
            for (int i = 0; i < r[0].rows(); ++i) {
                const auto id = r[0].integer(i, 0);
                const auto ended = stored_state(r[0].integer(i, 1), id);
                if (!is_final(ended))
                    continue;
                if (foreseen.contains(id))
                    finished.emplace(id, ended);
                else
                    unforeseen.emplace_back(id, ended);
            }
            if (!ending.empty())
                c.resolve_waiting(r[2], finished, now);
            std::sort(unforeseen.begin(), unforeseen.end());
            c.resolve_children(unforeseen, now);
        }
    };
    // The node renews its leases on this thread, between calls: a wait for
    // a lock that another transaction holds for long (an application's,
    // which enqueued a continuation of a job ending here or a job with a
    // unique key claimed here, and has not committed) would let them
    // expire, and other nodes run its jobs while it lives. A quarter of the
    // lease, and the call fails; the engine sends it again later.
    const auto lock_bound = std::chrono::duration_cast<std::chrono::milliseconds>(claim.lease_until - now) / 4;
    bool keyed = false;
    auto claimed = c.write_generic(
        [&] {
            settle();
            return claim_jobs(c, claim, now, keyed);
        },
        lock_bound);
    if (!keyed)
        return claimed;
    return c.write_generic([&] { return claim_in_order(c, claim, now); }, lock_bound);
}

lease_renewal postgres_storage::renew_leases(const std::string& node, std::span<const held_lease> held,
                                            time_point lease_until, time_point)
{
    auto db = pool_->take();
    auto& c = *db;
    lease_renewal out;
    if (held.empty())
        return out;
    std::vector<std::int64_t> ids, attempts, started;
    for (const auto& h : held) {
        ids.push_back(h.id);
        attempts.push_back(h.attempt);
        started.push_back(h.started ? 1 : 0);
    }
    auto r = c.write([&] {
        return c.run("renew", params()
                                  .add(node)
                                  .add(micros(lease_until))
                                  .add(integer_array(ids))
                                  .add(integer_array(attempts))
                                  .add(integer_array(started)));
    });
    std::unordered_map<job_id, bool> renewed;
    for (int i = 0; i < r.rows(); ++i)
        renewed.emplace(r.integer(i, 0), r.integer(i, 1) != 0);
    for (const auto& h : held) {
        const auto it = renewed.find(h.id);
        if (it == renewed.end())
            out.lost.push_back(h.id);
        else if (it->second)
            out.cancel_requested.push_back(h.id);
    }
    return out;
}

std::vector<job_id> postgres_storage::recover_expired(time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    return c.write([&] {
        auto found = c.run("expired", params().add(micros(now)));
        return c.recover(found, now, [](const std::string& owner) { return "the lease of node " + owner + " expired"; });
    });
}

std::vector<job_id> postgres_storage::recover_node(const std::string& node, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    return c.write([&] {
        auto found = c.run("held", params().add(node));
        return c.recover(found, now, [](const std::string& owner) { return "node " + owner + " started again"; });
    });
}

job_state postgres_storage::change_state(job_id id, job_state to, const std::string& reason, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    return c.write([&] { return c.change(id, to, reason, now); });
}

std::vector<storage::state_change_result> postgres_storage::change_states(std::span<const job_id> ids, job_state to,
                                                                          const std::string& reason, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    // A refusal is thrown before any statement of its job fails: the
    // transaction goes on with the others.
    return c.write([&] {
        std::vector<state_change_result> out;
        for (const auto id : ids)
            out.push_back(change_one(id, [&] { return c.change(id, to, reason, now); }));
        return out;
    });
}

std::optional<job> postgres_storage::find(job_id id, bool with_history)
{
    auto db = pool_->take();
    auto& c = *db;
    auto r = c.run("find", params().add(id));
    if (r.rows() == 0)
        return std::nullopt;
    return connection::read_job(r, 0, with_history); // without: the history is not parsed
}

std::vector<job> postgres_storage::list(const job_filter& filter)
{
    auto db = pool_->take();
    auto& c = *db;
    std::string sql = "SELECT " + job_columns(filter.with_history) + " FROM jobs WHERE true";
    params p;
    // The state written out, not bound: jobs_state leaves out running jobs,
    // and a plan uses a partial index only where the query says it holds.
    if (filter.state)
        sql += " AND state = " + std::to_string(code(*filter.state));
    if (filter.queue) {
        p.add(*filter.queue);
        sql += " AND queue = $" + std::to_string(p.size());
    }
    if (filter.kind) {
        p.add(*filter.kind);
        sql += " AND kind = $" + std::to_string(p.size());
    }
    if (filter.before != 0) {
        p.add(filter.before);
        sql += " AND id < $" + std::to_string(p.size());
    }
    if (filter.after != 0) {
        p.add(filter.after);
        sql += " AND id > $" + std::to_string(p.size());
    }
    if (filter.parent != 0) {
        p.add(filter.parent);
        sql += " AND parent_id = $" + std::to_string(p.size());
    }
    p.add(static_cast<std::int64_t>(std::min<std::size_t>(filter.limit, INT64_MAX)));
    sql += std::string(filter.newest_first ? " ORDER BY id DESC" : " ORDER BY id") + " LIMIT $" +
           std::to_string(p.size());
    p.add(static_cast<std::int64_t>(std::min<std::size_t>(filter.offset, INT64_MAX)));
    sql += " OFFSET $" + std::to_string(p.size());
    auto r = c.exec(sql, p);
    std::vector<job> out;
    out.reserve(static_cast<std::size_t>(r.rows()));
    for (int i = 0; i < r.rows(); ++i)
        out.push_back(connection::read_job(r, i, filter.with_history));
    return out;
}

job_counts postgres_storage::counts()
{
    auto db = pool_->take();
    auto& c = *db;
    auto r = c.run("counts", {});
    job_counts out;
    for (int i = 0; i < r.rows(); ++i) {
        const auto state = r.integer(i, 0);
        if (state >= 0 && state < static_cast<std::int64_t>(job_state_count))
            out.by_state[static_cast<std::size_t>(state)] = r.integer(i, 1);
    }
    return out;
}

std::vector<queue_kind_count> postgres_storage::counts_by_queue_and_kind()
{
    auto db = pool_->take();
    auto& c = *db;
    auto r = c.exec("SELECT queue, kind, state, sum(n) FROM job_counts GROUP BY queue, kind, state "
                    "HAVING sum(n) <> 0 ORDER BY queue, kind, state");
    std::vector<queue_kind_count> out;
    for (int i = 0; i < r.rows(); ++i) {
        const auto state = r.integer(i, 2);
        if (state >= 0 && state < static_cast<std::int64_t>(job_state_count))
            out.push_back({r.text(i, 0), r.text(i, 1), static_cast<job_state>(state), r.integer(i, 3)});
    }
    return out;
}

void postgres_storage::announce_node(const node_info& node, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    c.write([&] {
        c.exec("DELETE FROM nodes WHERE heartbeat_at < $1", params().add(micros(now - std::chrono::hours(24))));
        c.exec("INSERT INTO nodes (id, host, pid, workers, queues, started_at, heartbeat_at, queue_limits) "
               "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE SET host = excluded.host, "
               "pid = excluded.pid, workers = excluded.workers, queues = excluded.queues, "
               "started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at, "
               "queue_limits = excluded.queue_limits",
               params()
                   .add(node.id)
                   .add(node.host)
                   .add(node.pid)
                   .add(static_cast<std::int64_t>(node.workers))
                   .add(json_array_of(node.queues))
                   .add(micros(node.started_at))
                   .add(micros(now))
                   .add(json_array_of(node.queue_limits)));
    });
    // The count deltas since the last fold become one row per queue, kind
    // and state, by whichever node gets there first, and only when some
    // group has more than one: an idle cluster's beats write nothing.
    c.write([&] {
        c.exec("WITH folded AS (DELETE FROM job_counts WHERE pg_try_advisory_xact_lock(hashtextextended($1, 7202)) "
               "AND EXISTS (SELECT FROM job_counts GROUP BY queue, kind, state HAVING count(*) > 1) "
               "RETURNING queue, kind, state, n) "
               "INSERT INTO job_counts SELECT queue, kind, state, sum(n) FROM folded GROUP BY queue, kind, state "
               "HAVING sum(n) <> 0",
               params().add(c.options.schema));
    });
}

void postgres_storage::remove_node(const std::string& id)
{
    auto db = pool_->take();
    auto& c = *db;
    c.exec("DELETE FROM nodes WHERE id = $1", params().add(id));
}

std::vector<node_info> postgres_storage::list_nodes()
{
    auto db = pool_->take();
    auto& c = *db;
    auto r = c.exec("SELECT id, host, pid, workers, queues, started_at, heartbeat_at, "
                    "(SELECT count(*) FROM jobs WHERE state = 3 AND lease_owner = nodes.id), queue_limits "
                    "FROM nodes ORDER BY id");
    std::vector<node_info> out;
    for (int i = 0; i < r.rows(); ++i) {
        node_info n;
        n.id = r.text(i, 0);
        n.host = r.text(i, 1);
        n.pid = r.integer(i, 2);
        n.workers = static_cast<std::size_t>(r.integer(i, 3));
        n.queues = strings_of(r.text(i, 4));
        n.started_at = from_micros(r.integer(i, 5));
        n.heartbeat_at = from_micros(r.integer(i, 6));
        n.running = r.integer(i, 7);
        n.queue_limits = sizes_of(r.text(i, 8));
        out.push_back(std::move(n));
    }
    return out;
}

void postgres_storage::set_queue_paused(const std::string& queue, bool paused, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    if (paused)
        c.exec("INSERT INTO paused_queues (queue, paused_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
               params().add(queue).add(micros(now)));
    else
        c.exec("DELETE FROM paused_queues WHERE queue = $1", params().add(queue));
}

std::vector<std::string> postgres_storage::paused_queues()
{
    auto db = pool_->take();
    auto& c = *db;
    auto r = c.exec("SELECT queue FROM paused_queues ORDER BY queue");
    std::vector<std::string> out;
    for (int i = 0; i < r.rows(); ++i)
        out.push_back(r.text(i, 0));
    return out;
}

std::optional<time_point> postgres_storage::next_due()
{
    auto db = pool_->take();
    auto& c = *db;
    auto r = c.run("next_due", {});
    if (r.rows() == 0 || r.is_null(0, 0))
        return std::nullopt;
    return from_micros(r.integer(0, 0));
}

std::size_t postgres_storage::prune(job_state state, time_point before, std::size_t limit, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    // Ids come from a sequence and are never given twice: unlike SQLite's,
    // the newest job can go too.
    return c.write([&] {
        auto doomed = c.exec(is_final(state) ? "SELECT id FROM jobs WHERE state = $1 AND state IN (5, 6, 7, 8) "
                                               "AND updated_at < $2 ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED"
                                             : "SELECT id FROM jobs WHERE state = $1 AND updated_at < $2 "
                                               "ORDER BY updated_at LIMIT $3 FOR UPDATE SKIP LOCKED",
                             params().add(code(state)).add(micros(before)).add(static_cast<std::int64_t>(limit)));
        if (doomed.rows() == 0)
            return std::size_t{0};
        std::vector<job_id> ids;
        for (int i = 0; i < doomed.rows(); ++i)
            ids.push_back(doomed.integer(i, 0));
        c.drop_children_of_pruned(ids, state, now);
        auto gone = c.exec("DELETE FROM jobs WHERE id = ANY($1::bigint[])", params().add(integer_array(ids)));
        return static_cast<std::size_t>(gone.affected());
    });
}

std::size_t postgres_storage::flag_unknown_kinds(const std::vector<std::string>& known, const std::string& node,
                                                 time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    auto unknown = c.exec("SELECT DISTINCT kind FROM jobs WHERE state = 1 AND NOT unknown_flagged "
                          "AND kind <> ALL($1::text[])",
                          params().add(text_array(known)));
    if (unknown.rows() == 0)
        return 0;
    return c.write([&] {
        std::size_t flagged = 0;
        for (int i = 0; i < unknown.rows() && flagged < max_rows_per_write; ++i) {
            auto r = c.exec("UPDATE jobs SET unknown_flagged = true, " +
                                logged("state", "$2::bigint",
                                       "'node ' || $3::text || ' does not know kind ''' || kind || "
                                       "'''; waiting for one that does'") +
                                " WHERE id IN (SELECT id FROM jobs WHERE state = 1 AND kind = $1 "
                                "AND NOT unknown_flagged LIMIT $4 FOR UPDATE SKIP LOCKED)",
                            params()
                                .add(unknown.text(i, 0))
                                .add(micros(now))
                                .add(node)
                                .add(static_cast<std::int64_t>(max_rows_per_write - flagged)));
            flagged += static_cast<std::size_t>(r.affected());
        }
        return flagged;
    });
}

void postgres_storage::upsert_recurring(const recurring_job& r)
{
    auto db = pool_->take();
    auto& c = *db;
    // The schedule's own next_fire survives when cron and zone did not change.
    c.exec("INSERT INTO recurring_jobs (id, cron, zone, kind, args, queue, priority, max_attempts, timeout_ms, "
           "missed, next_fire, last_fire, unique_key, unique_states, concurrency_key, overlap, unique_across_kinds) "
           "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13, $14, $15, $16) "
           "ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, args = excluded.args, queue = excluded.queue, "
           "priority = excluded.priority, max_attempts = excluded.max_attempts, timeout_ms = excluded.timeout_ms, "
           "missed = excluded.missed, unique_key = excluded.unique_key, unique_states = excluded.unique_states, "
           "concurrency_key = excluded.concurrency_key, overlap = excluded.overlap, "
           "unique_across_kinds = excluded.unique_across_kinds, "
           "next_fire = CASE WHEN recurring_jobs.cron = excluded.cron AND recurring_jobs.zone = excluded.zone "
           "THEN recurring_jobs.next_fire ELSE excluded.next_fire END, cron = excluded.cron, zone = excluded.zone",
           params()
               .add(r.id)
               .add(r.cron)
               .add(r.zone)
               .add(r.kind)
               .add(r.args)
               .add(r.queue)
               .add(r.priority)
               .add(r.max_attempts)
               .add(static_cast<std::int64_t>(r.timeout.count()))
               .add(static_cast<int>(r.missed))
               .add(micros(r.next_fire))
               .add_or_null(r.unique_key)
               .add(r.unique_key.empty() ? std::int64_t{0} : static_cast<std::int64_t>(r.unique_states.bits()))
               .add_or_null(r.concurrency_key)
               .add(static_cast<int>(r.overlap))
               .add(r.unique_across_kinds));
}

bool postgres_storage::set_recurring_paused(const std::string& id, bool paused, time_point next_fire)
{
    auto db = pool_->take();
    auto& c = *db;
    auto r = c.exec("UPDATE recurring_jobs SET next_fire = CASE WHEN paused AND NOT $2::boolean THEN $3 "
                    "ELSE next_fire END, paused = $2::boolean WHERE id = $1",
                    params().add(id).add(paused).add(micros(next_fire)));
    return r.affected() > 0;
}

bool postgres_storage::remove_recurring(const std::string& id)
{
    auto db = pool_->take();
    auto& c = *db;
    return c.exec("DELETE FROM recurring_jobs WHERE id = $1", params().add(id)).affected() > 0;
}

std::vector<recurring_job> postgres_storage::list_recurring()
{
    auto db = pool_->take();
    auto& c = *db;
    auto s = c.exec("SELECT id, cron, zone, kind, args, queue, priority, max_attempts, timeout_ms, missed, "
                    "next_fire, last_fire, unique_key, unique_states, concurrency_key, overlap, unique_across_kinds, "
                    "paused FROM recurring_jobs ORDER BY id");
    std::vector<recurring_job> out;
    for (int i = 0; i < s.rows(); ++i) {
        recurring_job r;
        r.id = s.text(i, 0);
        r.cron = s.text(i, 1);
        r.zone = s.text(i, 2);
        r.kind = s.text(i, 3);
        r.args = s.text(i, 4);
        r.queue = s.text(i, 5);
        r.priority = static_cast<int>(s.integer(i, 6));
        r.max_attempts = static_cast<int>(s.integer(i, 7));
        r.timeout = stored_timeout(s.integer(i, 8));
        r.missed = static_cast<missed_policy>(s.integer(i, 9));
        r.next_fire = from_micros(s.integer(i, 10));
        if (!s.is_null(i, 11))
            r.last_fire = from_micros(s.integer(i, 11));
        r.unique_key = s.text(i, 12);
        if (!r.unique_key.empty())
            r.unique_states = state_set::from_bits(static_cast<std::uint32_t>(s.integer(i, 13)));
        r.concurrency_key = s.text(i, 14);
        r.overlap = static_cast<overlap_policy>(s.integer(i, 15));
        r.unique_across_kinds = s.integer(i, 16) != 0;
        r.paused = s.integer(i, 17) != 0;
        out.push_back(std::move(r));
    }
    return out;
}

bool postgres_storage::fire_recurring(const std::string& id, time_point expected, time_point next_fire,
                                      std::span<const enqueue_request> occurrences, time_point now)
{
    auto db = pool_->take();
    auto& c = *db;
    return c.write([&] {
        params p;
        p.add(id).add(micros(expected)).add(micros(next_fire));
        if (occurrences.empty())
            p.add_null();
        else
            p.add(micros(occurrences.back().run_at.value_or(expected)));
        // Of several nodes racing for one occurrence, the row lock makes the
        // others wait, and they then find next_fire moved.
        auto r = c.exec("UPDATE recurring_jobs SET next_fire = $3, last_fire = coalesce($4::bigint, last_fire) "
                        "WHERE id = $1 AND next_fire = $2 AND NOT paused",
                        p);
        if (r.affected() == 0)
            return false;
        for (const auto& o : occurrences)
            c.add(o, now);
        return true;
    });
}

} // namespace hosting::jobs
