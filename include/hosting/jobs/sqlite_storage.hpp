// jobs/sqlite_storage.hpp: jobs in a SQLite file, the default storage.
#pragma once

#include <hosting/jobs/storage.hpp>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

namespace hosting::jobs {

struct sqlite_options {
    // WAL mode always. full (the default) syncs the WAL at every commit, so
    // a committed job survives a power loss. normal syncs only at
    // checkpoints: a committed job survives the process crashing, but the
    // last commits can be lost if the machine loses power; it commits about
    // five times faster.
    enum class durability { full, normal };
    durability sync = durability::full;
    // How long a call waits for another process's write lock before it
    // fails with storage_error.
    std::chrono::milliseconds busy_timeout{std::chrono::seconds(10)};
};

// One connection, in WAL mode, with the schema migrated on open (versions
// are recorded in the file). Several processes may share the file: claims
// and leases are transactions, so a job is never claimed twice. Blocking:
// the engine calls it from its own thread, never from the host's loop.
class sqlite_storage final : public storage {
public:
    // Opens (creating it when missing) and migrates the file; throws
    // storage_error naming the file and SQLite's message.
    explicit sqlite_storage(std::string path, sqlite_options options = {});
    ~sqlite_storage() override;

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

    const std::string& path() const noexcept { return path_; }
    // The schema version this library writes.
    static constexpr int schema_version = 12;

private:
    struct connection;
    // The bodies of enqueue and complete_and_claim, inside a transaction
    // the caller opened.
    static std::vector<enqueue_result> enqueue_in(connection& c, std::span<const enqueue_request> requests,
                                                  time_point now);
    static std::vector<job> complete_and_claim_in(connection& c, std::span<const completion> done,
                                                  const claim_request& claim, time_point now);
    std::string path_;
    std::mutex mutex_;
    std::unique_ptr<connection> db_;
};

} // namespace hosting::jobs
