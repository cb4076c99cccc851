// The baseline for the latency across nodes, shared by the benchmarks that
// print it: a bare queue table, a row inserted and a NOTIFY sent in one
// transaction, the listener woken by it taking the row with SKIP LOCKED.
// No engine, no handler.
#pragma once

#include <libpq-fe.h>

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace bench {

inline void exec_or_die(PGconn* c, const char* sql)
{
    PGresult* r = PQexec(c, sql);
    const auto status = PQresultStatus(r);
    if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
        std::fprintf(stderr, "bench: %s: %s", sql, PQerrorMessage(c));
        std::exit(1);
    }
    PQclear(r);
}

// Enqueue-to-claim of each sample, in microseconds, sorted; `pause` between
// samples lets the consumer go idle, as an engine's node does.
inline std::vector<double> bare_notify_latencies(const std::string& conninfo, std::size_t samples,
                                                 std::chrono::microseconds pause = {})
{
    PGconn* producer = PQconnectdb(conninfo.c_str());
    PGconn* consumer = PQconnectdb(conninfo.c_str());
    if (PQstatus(producer) != CONNECTION_OK || PQstatus(consumer) != CONNECTION_OK) {
        std::fprintf(stderr, "bench: cannot connect to postgresql: %s", PQerrorMessage(producer));
        std::exit(1);
    }
    PQsetNoticeProcessor(producer, [](void*, const char*) {}, nullptr);
    exec_or_die(producer, "DROP TABLE IF EXISTS bench_queue; CREATE TABLE bench_queue (id bigserial PRIMARY KEY, v int)");
    exec_or_die(consumer, "LISTEN bench_queue");
    std::vector<double> micros;
    for (std::size_t i = 0; i < samples; ++i) {
        const auto sent = std::chrono::steady_clock::now();
        exec_or_die(producer, "BEGIN; INSERT INTO bench_queue (v) VALUES (1); NOTIFY bench_queue; COMMIT");
        for (bool heard = false; !heard;) {
            pollfd fd{PQsocket(consumer), POLLIN, 0};
            ::poll(&fd, 1, 1000);
            PQconsumeInput(consumer);
            while (PGnotify* n = PQnotifies(consumer)) {
                heard = true;
                PQfreemem(n);
            }
        }
        exec_or_die(consumer, "DELETE FROM bench_queue WHERE id = (SELECT id FROM bench_queue ORDER BY id LIMIT 1 "
                              "FOR UPDATE SKIP LOCKED) RETURNING id");
        micros.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - sent).count());
        if (pause.count() > 0)
            std::this_thread::sleep_for(pause);
    }
    std::sort(micros.begin(), micros.end());
    exec_or_die(producer, "DROP TABLE bench_queue");
    PQfinish(producer);
    PQfinish(consumer);
    return micros;
}

} // namespace bench
