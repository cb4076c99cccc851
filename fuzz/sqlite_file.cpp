// A damaged job file: opening it and working on it either succeeds or throws
// storage_error naming what is wrong; it never crashes, hangs or throws
// anything else.
//
// Input: the bytes of the file. The seeds are real job files.
#include <hosting/jobs/sqlite_storage.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

namespace {

std::string file_path()
{
    static const std::string path =
        (std::filesystem::temp_directory_path() / ("hosting-fuzz-" + std::to_string(::getpid()) + ".db")).string();
    return path;
}

void remove_files(const std::string& path)
{
    for (const char* suffix : {"", "-wal", "-shm", "-journal"})
        std::remove((path + suffix).c_str());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    namespace jobs = hosting::jobs;
    const auto path = file_path();
    remove_files(path);
    {
        std::ofstream out(path, std::ios::binary);
        out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    }
    const auto now = std::chrono::system_clock::time_point(std::chrono::hours(24 * 365 * 56));
    try {
        jobs::sqlite_options options;
        options.busy_timeout = std::chrono::milliseconds(0);
        jobs::sqlite_storage storage(path, options);
        (void)storage.counts();
        (void)storage.counts_by_queue_and_kind();
        jobs::job_filter all;
        all.limit = 20;
        all.with_history = true;
        (void)storage.list(all);
        (void)storage.list_recurring();
        (void)storage.list_nodes();
        (void)storage.next_due();
        (void)storage.recover_expired(now);
        jobs::claim_request claim;
        claim.node = "fuzz";
        claim.queues = {{"default", 4}};
        claim.kinds = {"a", "b"};
        claim.lease_until = now + std::chrono::minutes(1);
        for (const auto& j : storage.complete_and_claim({}, claim, now))
            (void)storage.find(j.id);
        jobs::enqueue_request request;
        request.kind = "a";
        request.queue = "default";
        request.args = "{}";
        (void)storage.enqueue({&request, 1}, now);
    } catch (const jobs::storage_error&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "sqlite file: not a storage_error: %s\n", e.what());
        std::abort();
    }
    remove_files(path);
    return 0;
}
