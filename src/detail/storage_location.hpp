// What a storage location in configuration names: a PostgreSQL server or a
// SQLite file. Shared by the job storage and the lease storage, so that one
// string means the same to both.
#pragma once

#include <cctype>
#include <string>
#include <string_view>

namespace hosting::detail {

// A libpq connection string begins with a keyword and '=' ("host=...",
// "dbname = ..."): a file name rarely does, and "sqlite:" says so when one
// must.
inline bool is_conninfo(const std::string& s)
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

// "postgresql://...", "postgres://..." or a libpq connection string.
inline bool names_postgres(const std::string& where)
{
    return where.rfind("postgresql://", 0) == 0 || where.rfind("postgres://", 0) == 0 || is_conninfo(where);
}

// The SQLite file's path: "sqlite:<path>" or the location itself.
inline std::string sqlite_path(const std::string& where)
{
    return where.rfind("sqlite:", 0) == 0 ? where.substr(7) : where;
}

} // namespace hosting::detail
