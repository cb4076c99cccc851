// coordination/postgres_lease_store.hpp: leases in PostgreSQL, for nodes on
// many machines. Expiry is judged by the server's clock (now()) alone.
#pragma once

#include <hosting/coordination/coordination.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace hosting::coordination {

struct postgres_lease_options {
    // The schema of the leases table, created when missing.
    std::string schema = "hosting_coordination";
    // A statement, or a connection attempt, that gets no answer within
    // this is given up, and the connection opened again for the next call.
    // Keep it under the lease's duration: the coordinator's thread waits
    // on it (the holder is told it lost its lease in time all the same).
    std::chrono::milliseconds timeout{std::chrono::seconds(2)};
};

// A connection of its own (a libpq connection string or URI), opened again
// after the server restarted or the network dropped. It takes no session
// advisory lock, so it works through PgBouncer in transaction mode. Throws
// lease_store_error naming the server (never the password) when it cannot
// connect or migrate.
class postgres_lease_store final : public lease_store {
public:
    explicit postgres_lease_store(std::string conninfo, postgres_lease_options options = {});
    ~postgres_lease_store() override;

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
