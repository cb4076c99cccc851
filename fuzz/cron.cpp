// Cron expressions: parsing never crashes or hangs; an expression that parses
// has next and previous that agree on the set of its occurrences, in any zone:
// with n = next(t), p = previous(n) is at or before t and next(p) is n; with
// q = previous(t), next(q) is at or after t.
//
// Input: 8 bytes of instant, 1 byte of zone, then the expression.
#include <hosting/scheduling/cron.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cstdio>
#include <string_view>

namespace {

using hosting::cron_expression;
using hosting::time_zone;

const time_zone& zone(std::uint8_t which)
{
    // UTC, two zones with daylight-saving time on either side of the
    // equator, a 30-minute shift and a 45-minute offset.
    static const time_zone zones[] = {
        time_zone::utc(),
        time_zone::locate("Europe/Berlin"),
        time_zone::locate("America/New_York"),
        time_zone::locate("Australia/Lord_Howe"),
        time_zone::locate("Asia/Kathmandu"),
    };
    return zones[which % std::size(zones)];
}

[[noreturn]] void violated(const char* what, std::string_view text)
{
    std::fprintf(stderr, "cron: %s for \"%.*s\"\n", what, static_cast<int>(text.size()), text.data());
    std::abort();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    if (size < 9)
        return 0;
    std::uint64_t raw;
    std::memcpy(&raw, data, sizeof raw);
    const auto& tz = zone(data[8]);
    const std::string_view text(reinterpret_cast<const char*>(data + 9), size - 9);

    std::optional<cron_expression> e;
    try {
        e = cron_expression::parse(text);
    } catch (const hosting::cron_parse_error&) {
        return 0;
    }
    // 1970 to 2170, to the second.
    const auto t = cron_expression::time_point(std::chrono::seconds(raw % (200ull * 365 * 86400)));
    const auto n = e->next(t, tz);
    if (!n)
        violated("no next occurrence within 400 years", text);
    if (*n <= t)
        violated("next is not after its instant", text);
    // previous(n) is the last occurrence before n, so nothing lies between
    // it and n: the next after it is n again.
    // Every expression that parses fires at least every few years, so
    // within 1970 to 2170 there is always an earlier occurrence.
    const auto p = e->previous(*n, tz);
    if (!p)
        violated("no previous occurrence within 400 years", text);
    if (*p >= *n)
        violated("previous is not before its instant", text);
    if (*p > t)
        violated("previous(next(t)) lies between t and next(t)", text);
    const auto again = e->next(*p, tz);
    if (!again || *again != *n)
        violated("next(previous(next(t))) is not next(t)", text);
    // And the mirror: nothing lies between previous(t) and t either.
    const auto q = e->previous(t, tz);
    if (!q)
        violated("no previous occurrence within 400 years", text);
    if (*q >= t)
        violated("previous is not before its instant", text);
    const auto after = e->next(*q, tz);
    if (!after || *after < t)
        violated("next(previous(t)) lies before t", text);
    return 0;
}
