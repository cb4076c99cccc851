#pragma once

#include <libpq-fe.h>

#include <string>

namespace hosting::detail {

// What every connection of the library's own to PostgreSQL asks libpq for,
// before the caller's connection string, which overrides any of it:
//  - connect_timeout: a server that does not answer the connection gives up
//    after that many seconds, rather than wait for ever;
//  - TCP keepalives after 30 s of silence, every 10 s, 3 missed: a
//    connection the network dropped without a word (a NAT or a load
//    balancer forgetting it, a machine gone) is found dead in about a
//    minute, not after the system's two hours. A listener that only waits
//    for notifications sends nothing, and would never find out otherwise;
//  - tcp_user_timeout of 60 s: data sent and never acknowledged ends the
//    connection then, rather than after the system's retransmissions
//    (about 15 minutes).
// None of it applies to a Unix socket. `start`: PQconnectStartParams, whose
// PQconnectPoll the caller drives; else PQconnectdbParams.
inline PGconn* connect_postgres(const std::string& conninfo, const std::string& connect_timeout, bool start = false)
{
    const char* keys[] = {"connect_timeout", "keepalives",       "keepalives_idle", "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout", "dbname",          nullptr};
    const char* values[] = {connect_timeout.c_str(), "1", "30", "10", "3", "60000", conninfo.c_str(), nullptr};
    return start ? PQconnectStartParams(keys, values, 1) : PQconnectdbParams(keys, values, 1);
}

} // namespace hosting::detail
