// Job arguments: whatever text a storage hands back, decoding it for a
// handler either gives the typed arguments or throws bad_arguments, never
// anything else, and never crashes.
#include <hosting/jobs/server.hpp>

#include <boost/describe/class.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace {

struct address {
    std::string host;
    int port = 0;
};
BOOST_DESCRIBE_STRUCT(address, (), (host, port))

// The shapes handlers take: numbers, strings, optionals, containers, nesting.
struct email {
    std::string to;
    std::vector<std::string> cc;
    std::int64_t attempt = 0;
    double weight = 0;
    bool urgent = false;
    std::optional<std::string> reply_to;
    std::map<std::string, std::string> headers;
    std::vector<address> relays;
};
BOOST_DESCRIBE_STRUCT(email, (), (to, cc, attempt, weight, urgent, reply_to, headers, relays))

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        (void)hosting::jobs::decode_arguments<email>(text);
    } catch (const hosting::jobs::bad_arguments&) {
    } catch (...) {
        std::fprintf(stderr, "job arguments: something other than bad_arguments was thrown\n");
        std::abort();
    }
    try {
        (void)hosting::jobs::decode_arguments<std::vector<std::int32_t>>(text);
    } catch (const hosting::jobs::bad_arguments&) {
    }
    return 0;
}
