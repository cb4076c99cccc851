// Replays fuzz inputs without libFuzzer, so that the normal test suite (and
// any compiler) runs every kept input of every target:
//
//   fuzz_replay <target> <file or folder>...
//
// A target that crashes or aborts fails the test; the count of inputs run is
// printed, so an empty corpus is seen.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

using fuzz_target = int (*)(const std::uint8_t*, std::size_t);

extern "C" int hosting_fuzz_cron(const std::uint8_t*, std::size_t);
extern "C" int hosting_fuzz_configuration(const std::uint8_t*, std::size_t);
extern "C" int hosting_fuzz_job_arguments(const std::uint8_t*, std::size_t);
extern "C" int hosting_fuzz_sqlite_file(const std::uint8_t*, std::size_t);
extern "C" int hosting_fuzz_http_request(const std::uint8_t*, std::size_t);

namespace {

struct named_target {
    std::string_view name;
    fuzz_target run;
};

constexpr named_target targets[] = {
    {"cron", hosting_fuzz_cron},
    {"configuration", hosting_fuzz_configuration},
    {"job_arguments", hosting_fuzz_job_arguments},
    {"sqlite_file", hosting_fuzz_sqlite_file},
    {"http_request", hosting_fuzz_http_request},
};

} // namespace

int main(int argc, char** argv)
{
    namespace fs = std::filesystem;
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s <target> <file or folder>...\n", argv[0]);
        return 64;
    }
    const auto target = std::find_if(std::begin(targets), std::end(targets),
                                     [&](const named_target& t) { return t.name == argv[1]; });
    if (target == std::end(targets)) {
        std::fprintf(stderr, "fuzz_replay: no target named '%s'\n", argv[1]);
        return 64;
    }
    std::vector<fs::path> inputs;
    for (int i = 2; i < argc; ++i) {
        const fs::path p(argv[i]);
        if (fs::is_directory(p)) {
            for (const auto& entry : fs::directory_iterator(p))
                if (entry.is_regular_file())
                    inputs.push_back(entry.path());
        } else if (fs::exists(p)) {
            inputs.push_back(p);
        }
    }
    std::sort(inputs.begin(), inputs.end());
    for (const auto& path : inputs) {
        std::ifstream in(path, std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::fprintf(stderr, "%s\n", path.c_str());
        target->run(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    }
    std::printf("%s: %zu inputs replayed\n", argv[1], inputs.size());
    return inputs.empty() ? 1 : 0;
}
