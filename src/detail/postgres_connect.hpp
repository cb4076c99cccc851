#pragma once

#include "detail/trimmed.hpp"

#include <libpq-fe.h>

#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
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

// Why a connection failed, as libpq says, unless libpq could not read the
// connection string at all: its message then quotes the part it could not
// read ('invalid percent-encoded token: "s3c%zz"', 'missing "=" after
// "secret"'), which may be a password, and every quoted part is left out.
inline std::string connect_error(PGconn* conn, const std::string& conninfo)
{
    std::string why;
    // A bare database name is read as one, not as a connection string.
    const bool a_string = conninfo.find('=') != std::string::npos || conninfo.rfind("postgres://", 0) == 0 ||
                          conninfo.rfind("postgresql://", 0) == 0;
    char* error = nullptr;
    PQconninfoOption* read = a_string ? PQconninfoParse(conninfo.c_str(), &error) : nullptr;
    if (!a_string || read) {
        PQconninfoFree(read);
        why = conn ? PQerrorMessage(conn) : "out of memory for a connection";
    } else {
        const std::string said = error ? error : "out of memory";
        PQfreemem(error);
        why = "the connection string cannot be read (what it quotes of it is left out: it may be a password): ";
        bool quoted = false;
        for (const char c : said) {
            if (c == '"') {
                if (!quoted)
                    why += "\"...\"";
                quoted = !quoted;
            } else if (!quoted) {
                why += c;
            }
        }
    }
    return trimmed(why.c_str());
}

// Why await_result stopped waiting: the deadline passed, or poll() failed.
struct result_wait_failure {
    bool timed_out = false;
    std::string why; // poll()'s error, when not timed out
};

// Reads what the server sends until PQgetResult can return without
// waiting: PQgetResult itself would wait without a bound. Nothing when it
// can (a broken connection included: PQgetResult says so). No deadline:
// no bound, as on a connection the application owns.
inline std::optional<result_wait_failure>
await_result(PGconn* conn, std::optional<std::chrono::steady_clock::time_point> deadline)
{
    while (PQisBusy(conn)) {
        int wait_ms = -1;
        if (deadline) {
            const auto left =
                std::chrono::ceil<std::chrono::milliseconds>(*deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0)
                return result_wait_failure{true, {}};
            wait_ms = static_cast<int>(left.count());
        }
        pollfd fd{PQsocket(conn), POLLIN, 0};
        if (::poll(&fd, 1, wait_ms) < 0 && errno != EINTR)
            return result_wait_failure{false, std::string("cannot wait for the server: ") + std::strerror(errno)};
        if (PQconsumeInput(conn) == 0)
            break;
    }
    return std::nullopt;
}

} // namespace hosting::detail
