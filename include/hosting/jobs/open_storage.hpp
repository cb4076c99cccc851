// jobs/open_storage.hpp: the storage a configuration names, so that one
// binary runs on a SQLite file on a laptop and on PostgreSQL in a cluster.
#pragma once

#include <hosting/jobs/storage.hpp>

#include <memory>
#include <stdexcept>
#include <string>

namespace hosting {
class configuration;
}

namespace hosting::jobs {

// What open_storage() was given names no storage it can open.
class invalid_storage_location : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

// Opens `where`:
//   "postgresql://..." or "postgres://..."   a PostgreSQL URI
//   "host=db1 dbname=app ..."                a libpq connection string
//   "sqlite:/var/lib/app/jobs.db"            a SQLite file
//   anything else                            a SQLite file's path
// For PostgreSQL, `schema` names the schema of the tables (empty: the
// default, "hosting_jobs"); for SQLite, `sync` is "full" (the default) or
// "normal" (see sqlite_options). Throws invalid_storage_location for what
// names no storage (an empty location, an unknown sync), and storage_error
// when the storage cannot be opened; neither message holds a password.
std::shared_ptr<storage> open_storage(const std::string& where, const std::string& schema = {},
                                      const std::string& sync = {});

// The same, from configuration: Jobs:Storage (default "jobs.db"),
// Jobs:Schema and Jobs:Sync, and for PostgreSQL behind a pooler in
// transaction mode Jobs:TransactionPooling (true or false) and
// Jobs:ListenConnection (see postgres_options). So
// `--Jobs:Storage=postgresql://db1/app`, or `Jobs__Storage` in the
// environment, moves a program to PostgreSQL.
std::shared_ptr<storage> open_storage(const configuration& config);

} // namespace hosting::jobs
