#include <hosting/jobs/open_storage.hpp>

#include <hosting/configuration/configuration.hpp>
#include <hosting/jobs/postgres_storage.hpp>
#include <hosting/jobs/sqlite_storage.hpp>

#include "detail/storage_location.hpp"

namespace hosting::jobs {

std::shared_ptr<storage> open_storage(const std::string& where, const std::string& schema, const std::string& sync,
                                      bool transaction_pooling)
{
    if (where.empty())
        throw invalid_storage_location("jobs: the storage location is empty (a SQLite file's path, "
                                       "sqlite:<path>, postgresql://... or a libpq connection string)");
    if (hosting::detail::names_postgres(where)) {
        postgres_options options;
        if (!schema.empty())
            options.schema = schema;
        options.transaction_pooling = transaction_pooling;
        return std::make_shared<postgres_storage>(where, options);
    }
    sqlite_options options;
    if (sync == "normal")
        options.sync = sqlite_options::durability::normal;
    else if (!sync.empty() && sync != "full")
        throw invalid_storage_location("jobs: SQLite sync '" + sync + "' is neither full nor normal");
    auto path = hosting::detail::sqlite_path(where);
    if (path.empty())
        throw invalid_storage_location("jobs: 'sqlite:' names no file");
    return std::make_shared<sqlite_storage>(std::move(path), options);
}

std::shared_ptr<storage> open_storage(const configuration& config)
{
    return open_storage(config.get<std::string>("Jobs:Storage", "jobs.db"), config.get<std::string>("Jobs:Schema", ""),
                        config.get<std::string>("Jobs:Sync", ""), config.get<bool>("Jobs:TransactionPooling", false));
}

} // namespace hosting::jobs
