// coordination/open_lease_store.hpp: the lease storage a configuration
// names, in the same words as the job storage's (jobs/open_storage.hpp).
#pragma once

#include <hosting/coordination/coordination.hpp>

#include <memory>
#include <string>

namespace hosting {
class configuration;
}

namespace hosting::coordination {

// Opens `where`: "postgresql://...", "postgres://..." or a libpq connection
// string (leases in `schema`, "hosting_coordination" when empty), else a
// SQLite file ("sqlite:<path>" or the path). Throws std::invalid_argument
// for an empty location and lease_store_error when the storage cannot be
// opened; neither message holds a password.
std::shared_ptr<lease_store> open_lease_store(const std::string& where, const std::string& schema = {});

// The same, from configuration: Coordination:Storage, else Jobs:Storage
// (so the leases live beside the jobs), else "coordination.db"; and
// Coordination:Schema.
std::shared_ptr<lease_store> open_lease_store(const configuration& config);

} // namespace hosting::coordination
