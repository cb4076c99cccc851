// jobs/postgres_storage.hpp: jobs in PostgreSQL, for many nodes on many
// machines.
#pragma once

#include <hosting/jobs/storage.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

// libpq's connection (PGconn), for enqueue_in_transaction.
struct pg_conn;

namespace hosting::jobs {

struct postgres_options {
    // The schema that holds the job tables, created when missing: several
    // applications (or test runs) share one database, each in its own
    // schema, and the tables never mix with the application's own.
    std::string schema = "hosting_jobs";
    // How long one statement may run (a lock held by a stalled node
    // included) before the server cancels it and the call fails with
    // storage_error; zero: no limit.
    std::chrono::milliseconds statement_timeout{std::chrono::seconds(30)};
    // How long the schema's migration may take, in place of the
    // statement_timeout: a node that starts while another migrates waits
    // for it this long, and a migration that rewrites a large table gets
    // this long to do it. zero: no limit. Past it, the constructor throws
    // storage_error and the migration is rolled back whole.
    std::chrono::milliseconds migration_timeout{std::chrono::minutes(10)};
    // How long one of the storage's statements waits for a lock that
    // another transaction holds before the call fails with storage_error
    // (an application's transaction that enqueued a job with the same
    // unique key and has not committed, say); zero: up to the
    // statement_timeout. Keep it well under the servers' lease: a node's
    // renewals wait behind its storage calls. A node's claims and
    // completions wait at most a quarter of its lease, whatever this says.
    std::chrono::milliseconds lock_timeout{std::chrono::seconds(2)};
    // A node hears of jobs other nodes enqueue through LISTEN/NOTIFY (sent
    // in the enqueue's own transaction, so only once it commits) and claims
    // them at once; the server's polling stays as the fallback. Off: polling
    // only, for a network or a proxy that does not carry notifications.
    bool notifications = true;
    // The connection string names a pooler in transaction mode (PgBouncer's
    // pool_mode = transaction), which gives each transaction whichever
    // server session is free: the storage then keeps nothing in a session.
    // Its statements go unprepared, its search_path and timeouts are set
    // inside each transaction (a read is one transaction too), and it does
    // not LISTEN through it, which needs a session of its own: its nodes
    // find each other's work by polling (poll_interval), unless
    // listen_conninfo names a way to the server that keeps sessions. Their
    // enqueues still NOTIFY. Off (the default): a direct connection or a
    // pooler in session mode, with prepared statements and a listener.
    bool transaction_pooling = false;
    // Where the listener connects, when not where the storage does (a
    // libpq connection string or URI, its password kept out of messages as
    // the storage's is): behind a pooler in transaction mode, the server
    // itself or a pooler in session mode, so that nodes hear of each
    // other's work at once. One connection per storage object.
    std::string listen_conninfo{};
    // At most this many connections for calls (the listener has one more):
    // each call takes one for itself, so a page of the dashboard, a
    // readiness check or an application's enqueue runs beside the engine's
    // claims rather than behind them. Opened when first needed; at least 1.
    std::size_t pool_size = 4;
};

// Jobs on a PostgreSQL server (a connection string "host=... dbname=..."
// or a "postgresql://" URI), with the schema migrated on open: the version is
// recorded in the schema, and nodes that start together migrate it once.
// Claims take jobs with FOR UPDATE SKIP LOCKED, so many nodes claim at once
// without waiting on each other and never share a claim. After the server
// restarts or the network drops, the call that finds the connection broken
// fails with storage_error, and the next one connects again: a write is
// never repeated when it is not known whether it committed. Blocking: the
// engine calls it from its own thread, never from the host's loop.
class postgres_storage final : public storage {
public:
    // Connects and migrates; throws storage_error with the server's message
    // (the connection string, which may hold a password, is never in it).
    explicit postgres_storage(std::string conninfo, postgres_options options = {});
    ~postgres_storage() override;

    std::vector<enqueue_result> enqueue(std::span<const enqueue_request> jobs, time_point now) override;
    std::vector<job> complete_and_claim(std::span<const completion> done, const claim_request& claim,
                                        time_point now) override;
    enqueued_and_claimed enqueue_and_claim(std::span<const enqueue_request> jobs, const claim_request& claim,
                                           time_point now) override;
    lease_renewal renew_leases(const std::string& node, std::span<const held_lease> held, time_point lease_until,
                               time_point now) override;
    std::vector<job_id> recover_expired(time_point now) override;
    std::vector<job_id> recover_node(const std::string& node, time_point now) override;
    job_state change_state(job_id id, job_state to, const std::string& reason, time_point now) override;
    std::vector<state_change_result> change_states(std::span<const job_id> ids, job_state to, const std::string& reason,
                                                   time_point now) override;
    std::optional<job> find(job_id id, bool with_history = true) override;
    std::vector<job> list(const job_filter& filter) override;
    job_counts counts() override;
    std::vector<queue_kind_count> counts_by_queue_and_kind() override;
    void announce_node(const node_info& node, time_point now) override;
    void remove_node(const std::string& id) override;
    std::vector<node_info> list_nodes() override;
    void set_queue_paused(const std::string& queue, bool paused, time_point now) override;
    std::vector<std::string> paused_queues() override;
    std::optional<time_point> next_due() override;
    std::size_t prune(job_state state, time_point before, std::size_t limit, time_point now) override;
    std::size_t flag_unknown_kinds(const std::vector<std::string>& known, const std::string& node,
                                   time_point now) override;
    void upsert_recurring(const recurring_job& r) override;
    bool remove_recurring(const std::string& id) override;
    bool set_recurring_paused(const std::string& id, bool paused, time_point next_fire) override;
    std::vector<recurring_job> list_recurring() override;
    bool fire_recurring(const std::string& id, time_point expected, time_point next_fire,
                        std::span<const enqueue_request> occurrences, time_point now) override;
    // Enqueues `jobs` on the caller's own libpq connection, inside the
    // transaction it has open: they commit or roll back with it, and other
    // nodes hear of them (NOTIFY) only once it commits. So a row of the
    // application and the job that handles it are never one without the
    // other. The caller's search_path is left as it was. Throws
    // storage_error when the connection has no transaction open or a
    // statement fails (which, as any failed statement, aborts the caller's
    // transaction). client::requests_for(batch) makes the requests, with
    // each kind's defaults, from a job_batch. Thread safety: the
    // connection's, which is the caller's to keep to one thread.
    std::vector<enqueue_result> enqueue_in_transaction(pg_conn* connection, std::span<const enqueue_request> jobs,
                                                       time_point now = clock::now());

    // A connection of its own LISTENs, on a thread of its own, connecting
    // again (and calling `wake` once, for what it may have missed) when the
    // server restarts.
    void listen_for_work(std::function<void()> wake) override;

    const postgres_options& options() const noexcept { return options_; }
    // The schema version this library writes.
    static constexpr int schema_version = 6;

private:
    struct connection;
    struct listener;
    // The claims of complete_and_claim and enqueue_and_claim, inside the
    // caller's transaction.
    static std::vector<job> claim_jobs(connection& c, const claim_request& claim, time_point now, bool& keyed);
    static std::vector<job> claim_in_order(connection& c, const claim_request& claim, time_point now);
    std::string conninfo_;
    postgres_options options_;
    struct pool;
    std::unique_ptr<pool> pool_;
    std::mutex listener_mutex_;
    std::unique_ptr<listener> listener_;
};

} // namespace hosting::jobs
