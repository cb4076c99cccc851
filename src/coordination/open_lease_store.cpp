#include <hosting/coordination/open_lease_store.hpp>

#include <hosting/configuration/configuration.hpp>
#include <hosting/coordination/postgres_lease_store.hpp>

#include "detail/storage_location.hpp"

#include <stdexcept>

namespace hosting::coordination {

std::shared_ptr<lease_store> open_lease_store(const std::string& where, const std::string& schema)
{
    if (where.empty())
        throw std::invalid_argument("coordination: the lease storage location is empty (a SQLite file's path, "
                                    "sqlite:<path>, postgresql://... or a libpq connection string)");
    if (hosting::detail::names_postgres(where)) {
        postgres_lease_options options;
        if (!schema.empty())
            options.schema = schema;
        return std::make_shared<postgres_lease_store>(where, options);
    }
    auto path = hosting::detail::sqlite_path(where);
    if (path.empty())
        throw std::invalid_argument("coordination: 'sqlite:' names no file");
    return std::make_shared<sqlite_lease_store>(std::move(path));
}

std::shared_ptr<lease_store> open_lease_store(const configuration& config)
{
    auto where = config.get<std::string>("Coordination:Storage", "");
    if (where.empty())
        where = config.get<std::string>("Jobs:Storage", "coordination.db");
    return open_lease_store(where, config.get<std::string>("Coordination:Schema", ""));
}

} // namespace hosting::coordination
