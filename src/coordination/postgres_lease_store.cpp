#include <hosting/coordination/postgres_lease_store.hpp>

#include "detail/postgres_connect.hpp"
#include "detail/trimmed.hpp"

#include <libpq-fe.h>

#include <charconv>
#include <memory>

namespace hosting::coordination {

namespace {

using hosting::detail::trimmed;

struct result_clearer {
    void operator()(PGresult* r) const { PQclear(r); }
};
using result = std::unique_ptr<PGresult, result_clearer>;

std::int64_t integer(const result& r, int row, int col)
{
    const char* p = PQgetvalue(r.get(), row, col);
    const char* end = p + PQgetlength(r.get(), row, col);
    std::int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(p, end, v);
    if (ec != std::errc() || ptr != end)
        throw lease_store_error("coordination: postgresql returned '" + std::string(p, end) + "' for an integer");
    return v;
}

} // namespace

struct postgres_lease_store::impl {
    std::string conninfo;
    postgres_lease_options options;
    PGconn* conn = nullptr;
    std::string server = "postgresql"; // where, for messages: never the connection string

    ~impl() { PQfinish(conn); }

    std::string quoted_schema() const
    {
        char* q = PQescapeIdentifier(conn, options.schema.data(), options.schema.size());
        if (!q)
            throw lease_store_error("coordination: postgresql: schema name '" + options.schema +
                                    "' is refused: " + trimmed(PQerrorMessage(conn)));
        std::string out(q);
        PQfreemem(q);
        return out;
    }

    // Opens the connection when there is none, or when the last one broke
    // or went unanswered.
    void ensure_connected()
    {
        if (conn && PQstatus(conn) == CONNECTION_OK)
            return;
        PQfinish(conn);
        conn = nullptr;
        const auto seconds = std::to_string(std::max<long long>(
            2, std::chrono::duration_cast<std::chrono::seconds>(options.timeout).count()));
        conn = hosting::detail::connect_postgres(conninfo, seconds);
        if (!conn)
            throw lease_store_error("coordination: postgresql: out of memory for a connection");
        if (PQstatus(conn) != CONNECTION_OK) {
            const std::string why = hosting::detail::connect_error(conn, conninfo);
            PQfinish(conn);
            conn = nullptr;
            throw lease_store_error("coordination: cannot connect to postgresql: " + why);
        }
        const char* host = PQhost(conn);
        const char* port = PQport(conn);
        const char* db = PQdb(conn);
        server = std::string("postgresql ") + (db ? db : "?") + " at " + (host ? host : "?") + ":" +
                 (port ? port : "?");
        PQsetNoticeProcessor(conn, [](void*, const char*) {}, nullptr);
        try {
            if (schema_quoted.empty())
                schema_quoted = quoted_schema();
            script("BEGIN; SET LOCAL statement_timeout = " + std::to_string(options.timeout.count()) +
                   "; SELECT pg_advisory_xact_lock(hashtextextended('hosting_coordination_schema', 7200)); "
                   "CREATE SCHEMA IF NOT EXISTS " +
                   schema_quoted + "; CREATE TABLE IF NOT EXISTS " + schema_quoted +
                   ".leases (name text PRIMARY KEY, holder text NOT NULL, term bigint NOT NULL, "
                   "expires_at timestamptz NOT NULL); COMMIT");
        } catch (...) {
            PQfinish(conn);
            conn = nullptr;
            throw;
        }
    }

    // The next result of what was sent, waiting no longer than `deadline`:
    // the timeout and a second more for the server, which would have
    // cancelled the statement itself by then were it answering. Null at
    // the end of a statement's results.
    result next(std::chrono::steady_clock::time_point deadline)
    {
        if (const auto failed = hosting::detail::await_result(conn, deadline))
            fail(failed->timed_out ? "no answer within " +
                                         std::to_string((options.timeout + std::chrono::seconds(1)).count()) +
                                         " ms; the connection is given up"
                                   : failed->why);
        return result(PQgetResult(conn));
    }

    std::chrono::steady_clock::time_point deadline() const
    {
        return std::chrono::steady_clock::now() + options.timeout + std::chrono::seconds(1);
    }

    static bool succeeded(const result& r)
    {
        return r && (PQresultStatus(r.get()) == PGRES_COMMAND_OK || PQresultStatus(r.get()) == PGRES_TUPLES_OK);
    }

    // Several statements in one text (the table's creation).
    void script(const std::string& text)
    {
        if (!PQsendQuery(conn, text.c_str()))
            fail("sending a statement failed: " + trimmed(PQerrorMessage(conn)));
        const auto until = deadline();
        std::string error;
        while (auto r = next(until))
            if (!succeeded(r) && error.empty())
                error = trimmed(PQresultErrorMessage(r.get()));
        if (!error.empty())
            throw lease_store_error("coordination: " + server + ": " + error);
    }

    // One statement, in a transaction of its own that sets its
    // statement_timeout, all in one round trip: nothing is left in the
    // session, which through a pooler in transaction mode (PgBouncer's
    // pool_mode = transaction) would be other clients' next.
    result run(const std::string& text, const std::vector<std::string>& values)
    {
        std::vector<const char*> pointers;
        for (const auto& v : values)
            pointers.push_back(v.c_str());
        const std::string timeout = std::to_string(options.timeout.count());
        const char* timeout_value = timeout.c_str();
        const bool sent =
            PQenterPipelineMode(conn) == 1 &&
            PQsendQueryParams(conn, "BEGIN", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1 &&
            PQsendQueryParams(conn, "SELECT set_config('statement_timeout', $1, true)", 1, nullptr, &timeout_value,
                              nullptr, nullptr, 0) == 1 &&
            PQsendQueryParams(conn, text.c_str(), static_cast<int>(values.size()), nullptr, pointers.data(), nullptr,
                              nullptr, 0) == 1 &&
            PQsendQueryParams(conn, "COMMIT", 0, nullptr, nullptr, nullptr, nullptr, 0) == 1 &&
            PQpipelineSync(conn) == 1;
        if (!sent)
            fail("sending a statement failed: " + trimmed(PQerrorMessage(conn)));
        const auto until = deadline();
        result kept;
        std::string error;
        for (int statement = 0; statement < 4; ++statement)
            while (auto r = next(until)) {
                if (!succeeded(r) && error.empty())
                    error = PQresultStatus(r.get()) == PGRES_PIPELINE_ABORTED ? "a statement was not run"
                                                                              : trimmed(PQresultErrorMessage(r.get()));
                if (statement == 2)
                    kept = std::move(r);
            }
        auto sync = next(until);
        if (!sync || PQresultStatus(sync.get()) != PGRES_PIPELINE_SYNC)
            fail(error.empty() ? trimmed(PQerrorMessage(conn)) : error);
        PQexitPipelineMode(conn);
        if (!error.empty()) {
            // A transaction left aborted is rolled back, within the same
            // bound; a connection that cannot is opened again by the next
            // call.
            if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
                bool rolled_back = PQsendQuery(conn, "ROLLBACK") == 1;
                while (auto r = next(until))
                    rolled_back = rolled_back && succeeded(r);
                if (!rolled_back || PQtransactionStatus(conn) != PQTRANS_IDLE) {
                    PQfinish(conn);
                    conn = nullptr;
                }
            }
            throw lease_store_error("coordination: " + server + ": " + error);
        }
        return kept;
    }

    // The connection is closed, and opened again by the next call: whether
    // the statement took effect is unknown, which a lease call tolerates
    // (the holder renews or tries again; a term is never reused).
    [[noreturn]] void fail(const std::string& why)
    {
        PQfinish(conn);
        conn = nullptr;
        throw lease_store_error("coordination: " + server + ": " + why);
    }

    result call(const std::string& text, const std::vector<std::string>& values)
    {
        ensure_connected();
        return run(text, values);
    }

    // The schema's name quoted, from the first connection on: the
    // statements name the table without a connection to escape it with.
    std::string schema_quoted;
    std::string table() const { return schema_quoted + ".leases"; }
};

postgres_lease_store::postgres_lease_store(std::string conninfo, postgres_lease_options options)
    : impl_(std::make_unique<impl>())
{
    impl_->conninfo = std::move(conninfo);
    impl_->options = std::move(options);
    if (impl_->options.schema.empty())
        throw lease_store_error("coordination: postgresql: the schema name is empty");
    if (impl_->options.timeout.count() <= 0)
        throw lease_store_error("coordination: postgresql: the timeout must be positive");
    impl_->ensure_connected();
}

postgres_lease_store::~postgres_lease_store() = default;

std::string postgres_lease_store::describe() const { return impl_->server; }

std::optional<std::uint64_t> postgres_lease_store::acquire(const std::string& name, const std::string& holder,
                                                           std::chrono::milliseconds duration)
{
    // One statement: a free, expired or own row gets the next term; a row
    // another holder's running lease keeps returns nothing.
    auto r = impl_->call("INSERT INTO " + impl_->table() +
                            " AS l (name, holder, term, expires_at) VALUES ($1, $2, 1, now() + $3 * interval '1 "
                            "millisecond') ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, term = l.term "
                            "+ 1, expires_at = excluded.expires_at WHERE l.holder = '' OR l.holder = excluded.holder "
                            "OR l.expires_at <= now() RETURNING term",
                        {name, holder, std::to_string(duration.count())});
    if (PQntuples(r.get()) == 0)
        return std::nullopt;
    return static_cast<std::uint64_t>(integer(r, 0, 0));
}

bool postgres_lease_store::renew(const std::string& name, const std::string& holder, std::uint64_t term,
                                 std::chrono::milliseconds duration)
{
    auto r = impl_->call("UPDATE " + impl_->table() +
                            " SET expires_at = now() + $4 * interval '1 millisecond' WHERE name = $1 AND holder = $2 "
                            "AND term = $3",
                        {name, holder, std::to_string(term), std::to_string(duration.count())});
    return std::string_view(PQcmdTuples(r.get())) == "1";
}

void postgres_lease_store::release(const std::string& name, const std::string& holder, std::uint64_t term)
{
    impl_->call("UPDATE " + impl_->table() +
                   " SET holder = '', expires_at = '-infinity' WHERE name = $1 AND holder = $2 AND term = $3",
               {name, holder, std::to_string(term)});
}

std::vector<lease_record> postgres_lease_store::leases()
{
    // Rounded up: a lease with any time left is not reported as expired
    // (a cast would round 0.4 ms to 0, and a caller would take it too soon).
    auto r = impl_->call("SELECT name, holder, term, CASE WHEN expires_at > now() THEN ceil(extract(epoch FROM "
                        "expires_at - now()) * 1000)::bigint ELSE 0 END FROM " +
                            impl_->table() + " ORDER BY name",
                        {});
    std::vector<lease_record> out;
    for (int i = 0; i < PQntuples(r.get()); ++i) {
        lease_record l;
        l.name = PQgetvalue(r.get(), i, 0);
        l.holder = PQgetvalue(r.get(), i, 1);
        l.term = static_cast<std::uint64_t>(integer(r, i, 2));
        l.expires_in = std::chrono::milliseconds(l.holder.empty() ? 0 : integer(r, i, 3));
        out.push_back(std::move(l));
    }
    return out;
}

} // namespace hosting::coordination
