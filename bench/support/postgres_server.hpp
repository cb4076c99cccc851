// A PostgreSQL server of a bench program's own, started with
// tests/tools/postgres-server in a directory it is given and thrown away
// with it. The script's path comes from HOSTING_POSTGRES_SERVER.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <unistd.h>

class postgres_server {
public:
    // durable: fsync on, as a real server (for figures of speed).
    explicit postgres_server(std::string dir, bool durable = false) : dir_(std::move(dir)), durable_(durable) {}
    ~postgres_server()
    {
        if (started_)
            run("stop");
    }
    postgres_server(const postgres_server&) = delete;
    postgres_server& operator=(const postgres_server&) = delete;

    // Its libpq connection string, or empty when it could not start.
    std::string start()
    {
        if (!run("start", durable_ ? " durable" : ""))
            return {};
        started_ = true;
        return first_line("conninfo");
    }
    // The same server through the PgBouncer in transaction mode the script
    // starts in front of it where PgBouncer is installed; else empty.
    std::string pooled_conninfo() const { return started_ ? first_line("pooled-conninfo") : std::string(); }
    // Stopped at once, every connection broken, and started again.
    bool restart() { return run("restart"); }

private:
    std::string first_line(const char* file) const
    {
        std::string out;
        if (std::FILE* f = std::fopen((dir_ + "/" + file).c_str(), "r")) {
            char line[512] = {};
            if (std::fgets(line, sizeof line, f))
                out = line;
            std::fclose(f);
        }
        while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
            out.pop_back();
        return out;
    }
    bool run(const char* action, const char* extra = "")
    {
        const std::string command =
            std::string(HOSTING_POSTGRES_SERVER) + " " + action + " '" + dir_ + "'" + extra + " > /dev/null";
        return std::system(command.c_str()) == 0;
    }
    std::string dir_;
    bool durable_;
    bool started_ = false;
};

// The server a bench measures: HOSTING_BENCH_POSTGRES (a libpq connection
// string), or `own`, started now; empty, after saying so, when neither is
// there.
inline std::string bench_postgres(postgres_server& own)
{
    std::string conninfo;
    if (const char* given = std::getenv("HOSTING_BENCH_POSTGRES"))
        conninfo = given;
    else
        conninfo = own.start();
    if (conninfo.empty())
        std::printf("postgresql: no server (set HOSTING_BENCH_POSTGRES, or install Debian's postgresql)\n");
    return conninfo;
}
