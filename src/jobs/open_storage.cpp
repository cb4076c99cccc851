#include <hosting/jobs/open_storage.hpp>

#include <hosting/configuration/configuration.hpp>
#include <hosting/jobs/postgres_storage.hpp>
#include <hosting/jobs/sqlite_storage.hpp>

#include <cctype>

namespace hosting::jobs {

namespace {

bool starts_with(const std::string& s, std::string_view prefix) { return s.rfind(prefix, 0) == 0; }

// A libpq connection string begins with a keyword and '=' ("host=...",
// "dbname = ..."): a file name rarely does, and "sqlite:" says so when one
// must.
bool is_conninfo(const std::string& s)
{
    std::size_t i = 0;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i])))
        ++i;
    const auto start = i;
    while (i < s.size() && (std::isalnum(static_cast<unsigned char>(s[i])) || s[i] == '_'))
        ++i;
    if (i == start)
        return false;
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i])))
        ++i;
    return i < s.size() && s[i] == '=';
}

} // namespace

std::shared_ptr<storage> open_storage(const std::string& where, const std::string& schema, const std::string& sync)
{
    if (where.empty())
        throw invalid_storage_location("jobs: the storage location is empty (a SQLite file's path, "
                                       "sqlite:<path>, postgresql://... or a libpq connection string)");
    if (starts_with(where, "postgresql://") || starts_with(where, "postgres://") || is_conninfo(where)) {
        postgres_options options;
        if (!schema.empty())
            options.schema = schema;
        return std::make_shared<postgres_storage>(where, options);
    }
    sqlite_options options;
    if (sync == "normal")
        options.sync = sqlite_options::durability::normal;
    else if (!sync.empty() && sync != "full")
        throw invalid_storage_location("jobs: SQLite sync '" + sync + "' is neither full nor normal");
    auto path = starts_with(where, "sqlite:") ? where.substr(7) : where;
    if (path.empty())
        throw invalid_storage_location("jobs: 'sqlite:' names no file");
    return std::make_shared<sqlite_storage>(std::move(path), options);
}

std::shared_ptr<storage> open_storage(const configuration& config)
{
    return open_storage(config.get<std::string>("Jobs:Storage", "jobs.db"), config.get<std::string>("Jobs:Schema", ""),
                        config.get<std::string>("Jobs:Sync", ""));
}

} // namespace hosting::jobs
