#include <hosting/jobs/open_storage.hpp>

#include <hosting/configuration/configuration.hpp>
#include <hosting/jobs/postgres_storage.hpp>
#include <hosting/jobs/sqlite_storage.hpp>

#include "detail/storage_location.hpp"

namespace hosting::jobs {

namespace {

std::shared_ptr<storage> open_at(const std::string& where, const std::string& schema, const std::string& sync,
                                 postgres_options options)
{
    if (where.empty())
        throw invalid_storage_location("jobs: the storage location is empty (a SQLite file's path, "
                                       "sqlite:<path>, postgresql://... or a libpq connection string)");
    if (hosting::detail::names_postgres(where)) {
        if (!schema.empty())
            options.schema = schema;
        return std::make_shared<postgres_storage>(where, options);
    }
    sqlite_options sqlite;
    if (sync == "normal")
        sqlite.sync = sqlite_options::durability::normal;
    else if (!sync.empty() && sync != "full")
        throw invalid_storage_location("jobs: SQLite sync '" + sync + "' is neither full nor normal");
    auto path = hosting::detail::sqlite_path(where);
    if (path.empty())
        throw invalid_storage_location("jobs: 'sqlite:' names no file");
    return std::make_shared<sqlite_storage>(std::move(path), sqlite);
}

} // namespace

std::shared_ptr<storage> open_storage(const std::string& where, const std::string& schema, const std::string& sync)
{
    return open_at(where, schema, sync, {});
}

std::shared_ptr<storage> open_storage(const configuration& config)
{
    postgres_options options;
    options.transaction_pooling = config.get<bool>("Jobs:TransactionPooling", false);
    options.listen_conninfo = config.get<std::string>("Jobs:ListenConnection", "");
    return open_at(config.get<std::string>("Jobs:Storage", "jobs.db"), config.get<std::string>("Jobs:Schema", ""),
                   config.get<std::string>("Jobs:Sync", ""), std::move(options));
}

} // namespace hosting::jobs
