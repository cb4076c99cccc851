// coordination: leases with fencing terms, a leader, and what runs the
// services registered with single_instance(). Nodes share a lease storage:
// PostgreSQL across machines, or a SQLite file for processes on one machine.
//
//   auto store = std::make_shared<coordination::sqlite_lease_store>("app.db");
//   coordination::add_coordination(builder, store);
//   builder.services().add_hosted_service<nightly_report>().single_instance();
//
// A lease row holds (name, holder, term, expiry). Taking a free or expired
// lease adds one to its term, so terms only grow; the holder renews it
// every renew_interval, and gives it up at once on a graceful stop. Expiry
// is judged by the storage's clock alone (PostgreSQL's now(); on SQLite the
// machine's monotonic clock), never by comparing two nodes' clocks.
#pragma once

#include <hosting/core/single_instance.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace hosting {
class host_builder;
class configuration;
} // namespace hosting

namespace hosting::coordination {

// A lease storage could not be opened or did not answer; the message names
// the storage (never a password).
class lease_store_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The lease a coordinator with elect_leader holds while it leads.
inline constexpr const char* leader_lease = "leader";

// One lease as the storage has it.
struct lease_record {
    std::string name;
    std::string holder;                 // empty when released
    std::uint64_t term = 0;             // of the last holder
    std::chrono::milliseconds expires_in{0}; // zero or less: free to take
};

// Where leases live. Every call blocks and may throw lease_store_error;
// the coordinator makes them from a thread of its own, one at a time, so
// an implementation needs no locking of its own.
class lease_store {
public:
    virtual ~lease_store() = default;

    // Takes `name` for `holder` for `duration`: when the lease is free,
    // expired, or held by `holder` itself (a restarted process with a fixed
    // node id: what it held before it died is its own no longer), with the
    // term one more than the last. Returns the new term, or nothing when
    // another holder's lease is still running.
    virtual std::optional<std::uint64_t> acquire(const std::string& name, const std::string& holder,
                                                 std::chrono::milliseconds duration) = 0;

    // Extends the lease by `duration` from now if `holder` still holds it
    // in `term`; false when it does not (taken over, or released).
    virtual bool renew(const std::string& name, const std::string& holder, std::uint64_t term,
                       std::chrono::milliseconds duration) = 0;

    // Frees the lease at once if `holder` holds it in `term`, keeping the
    // term so that the next holder's is larger.
    virtual void release(const std::string& name, const std::string& holder, std::uint64_t term) = 0;

    // Every lease, by name.
    virtual std::vector<lease_record> leases() = 0;

    // Where it is, for logs and errors: never a password.
    virtual std::string describe() const = 0;
};

struct coordination_options {
    // This node's name as a holder: unique among live nodes. Empty: the
    // host name, the process id and a random suffix. A fixed id (a
    // StatefulSet pod name) takes back what it held before a restart,
    // with new terms.
    std::string node_id;
    // How long a lease runs without renewal: how long a dead holder keeps
    // it. A holder that has not renewed for lease_duration - stop_margin
    // stops its service. Failover after a crash takes at most
    // lease_duration + retry_interval.
    std::chrono::milliseconds lease_duration{std::chrono::seconds(5)};
    // Zero: lease_duration / 3.
    std::chrono::milliseconds renew_interval{0};
    // How often a node that waits for a lease tries to take it. Zero:
    // lease_duration / 20 (250 ms by default), which is also how soon a
    // released lease is taken.
    std::chrono::milliseconds retry_interval{0};
    // How long before its lease could expire an unrenewed holder is told
    // it lost it (its service's stop token fires). Zero: lease_duration / 5.
    std::chrono::milliseconds stop_margin{0};
    // Take part in electing a leader (the lease "leader"): see
    // coordinator::is_leader().
    bool elect_leader = true;

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

// The coordination of one host: grants the leases of its single-instance
// services and, with elect_leader, keeps trying to be the leader.
// Registered as a singleton (and as the host's instance_coordinator) by
// add_coordination(). Thread-safe.
class coordinator : public instance_coordinator {
public:
    coordinator(std::shared_ptr<lease_store> store, coordination_options options);
    ~coordinator() override;
    coordinator(const coordinator&) = delete;
    coordinator& operator=(const coordinator&) = delete;

    asio::awaitable<std::shared_ptr<instance_lease>> acquire(std::string name, std::stop_token cancel) override;

    // Starts the coordinator's threads, logging to `log` when given
    // (add_coordination does it when the host starts, with the category
    // "hosting.coordination"). Idempotent.
    void start(std::shared_ptr<spdlog::logger> log = {});
    // Stops taking leases, fails the acquire() calls that wait, and gives
    // the leader's lease up; a lease a service holds stays its own (and is
    // renewed) until it releases it. The destructor stops the threads.
    void stop() noexcept;

    const std::string& node_id() const noexcept;
    const coordination_options& options() const noexcept;

    // This node leads (elect_leader): it holds the lease "leader" and has
    // renewed it within lease_duration - stop_margin.
    bool is_leader() const noexcept;
    // Its term while it leads.
    std::optional<std::uint64_t> leader_term() const noexcept;

    // What this node holds, as it last renewed it.
    struct holding {
        std::string name;
        std::uint64_t term = 0;
        std::chrono::steady_clock::time_point renewed;
    };
    std::vector<holding> holdings() const;

    // Every lease in the storage (who holds what), read on the
    // coordinator's thread. Throws std::logic_error before start().
    asio::awaitable<std::vector<lease_record>> leases() const;

    // The storage's last error, empty while calls succeed.
    std::string last_error() const;

    struct impl; // opaque

private:
    std::shared_ptr<impl> impl_;
};

// Registers a coordinator on `store` for the host (as coordinator and as
// instance_coordinator), started before every other service and stopped
// after them; a health check "coordination" (unhealthy while the storage
// fails, with who holds what), and the metrics
// hosting_coordination_lease_held{lease} and
// hosting_coordination_lease_term{lease}. Returns the coordinator. Throws
// std::invalid_argument for a null store or invalid options, and
// std::logic_error when called twice on one builder.
std::shared_ptr<coordinator> add_coordination(host_builder& builder, std::shared_ptr<lease_store> store,
                                              coordination_options options = {});

// A SQLite file as the lease storage, for processes on one machine: expiry
// is judged by the machine's monotonic clock (and a lease from before the
// machine restarted counts as expired). The file may be the job storage's
// own; the table is hosting_leases. Throws lease_store_error naming the
// file when it cannot be opened.
class sqlite_lease_store final : public lease_store {
public:
    explicit sqlite_lease_store(std::string path);
    ~sqlite_lease_store() override;

    std::optional<std::uint64_t> acquire(const std::string& name, const std::string& holder,
                                         std::chrono::milliseconds duration) override;
    bool renew(const std::string& name, const std::string& holder, std::uint64_t term,
               std::chrono::milliseconds duration) override;
    void release(const std::string& name, const std::string& holder, std::uint64_t term) override;
    std::vector<lease_record> leases() override;
    std::string describe() const override;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

} // namespace hosting::coordination
