#include <hosting/scheduling/cron.hpp>

#include <catch2/catch.hpp>

#include <cstdio>
#include <ctime>
#include <string>
#include <vector>

namespace {

using time_point = std::chrono::system_clock::time_point;

time_point at(const std::string& iso)
{
    std::tm tm{};
    if (std::sscanf(iso.c_str(), "%d-%d-%dT%d:%d:%dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                    &tm.tm_min, &tm.tm_sec) != 6)
        throw std::invalid_argument("bad instant " + iso);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return std::chrono::system_clock::from_time_t(timegm(&tm));
}

std::string iso(std::optional<time_point> t)
{
    if (!t)
        return "none";
    std::time_t s = std::chrono::system_clock::to_time_t(*t);
    std::tm tm{};
    gmtime_r(&s, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

struct table_case {
    const char* expression;
    const char* zone;
    const char* instant;
    const char* next;
    const char* previous;
};

const std::vector<table_case> table = {
#include "cron_cases.inc"
};

std::string next_in(const char* expression, const char* zone, const char* instant)
{
    return iso(hosting::cron_expression::parse(expression).next(at(instant), hosting::time_zone::locate(zone)));
}

std::string previous_in(const char* expression, const char* zone, const char* instant)
{
    return iso(
        hosting::cron_expression::parse(expression).previous(at(instant), hosting::time_zone::locate(zone)));
}

} // namespace

TEST_CASE("cron: the generated table of next and previous occurrences", "[cron]")
{
    REQUIRE(table.size() >= 200);
    for (const auto& c : table) {
        INFO(c.expression << " in " << c.zone << " around " << c.instant);
        auto e = hosting::cron_expression::parse(c.expression);
        auto zone = hosting::time_zone::locate(c.zone);
        CHECK(iso(e.next(at(c.instant), zone)) == c.next);
        CHECK(iso(e.previous(at(c.instant), zone)) == c.previous);
    }
}

TEST_CASE("cron: next and previous are strict and chain", "[cron]")
{
    auto e = hosting::cron_expression::parse("0 * * * *");
    CHECK(iso(e.next(at("2024-05-01T10:00:00Z"))) == "2024-05-01T11:00:00Z");
    CHECK(iso(e.previous(at("2024-05-01T10:00:00Z"))) == "2024-05-01T09:00:00Z");
    // A fraction of a second still counts.
    auto just_after = at("2024-05-01T10:00:00Z") + std::chrono::milliseconds(1);
    CHECK(iso(e.previous(just_after)) == "2024-05-01T10:00:00Z");
    CHECK(iso(e.next(just_after)) == "2024-05-01T11:00:00Z");
}

TEST_CASE("cron: a wall time in a spring-forward gap runs once at the first instant after it", "[cron][dst]")
{
    // New York, 2024-03-10: 02:00 EST jumps to 03:00 EDT (07:00 UTC).
    CHECK(next_in("30 2 * * *", "America/New_York", "2024-03-10T06:00:00Z") == "2024-03-10T07:00:00Z");
    CHECK(next_in("30 2 * * *", "America/New_York", "2024-03-10T07:00:00Z") == "2024-03-11T06:30:00Z");
    // Two wall times in the same gap still run once.
    auto e = hosting::cron_expression::parse("0,30 2 * * *");
    auto ny = hosting::time_zone::locate("America/New_York");
    auto first = e.next(at("2024-03-10T06:00:00Z"), ny);
    CHECK(iso(first) == "2024-03-10T07:00:00Z");
    CHECK(iso(e.next(*first, ny)) == "2024-03-11T06:00:00Z"); // 02:00 EDT the next day
    // London, 2024-03-31: 01:00 GMT jumps to 02:00 BST (01:00 UTC).
    CHECK(next_in("30 1 * * *", "Europe/London", "2024-03-31T00:00:00Z") == "2024-03-31T01:00:00Z");
    // Lord Howe, 2024-10-06: 02:00 +10:30 jumps half an hour to 02:30 +11 (15:30 UTC the day before).
    CHECK(next_in("15 2 * * *", "Australia/Lord_Howe", "2024-10-05T15:00:00Z") == "2024-10-05T15:30:00Z");
    CHECK(previous_in("15 2 * * *", "Australia/Lord_Howe", "2024-10-05T16:00:00Z") == "2024-10-05T15:30:00Z");
}

TEST_CASE("cron: a wall time in a fall-back overlap runs once at its first occurrence", "[cron][dst]")
{
    // New York, 2024-11-03: 01:00-02:00 happens twice, first EDT (05:xx UTC) then EST (06:xx UTC).
    CHECK(next_in("30 1 * * *", "America/New_York", "2024-11-03T04:00:00Z") == "2024-11-03T05:30:00Z");
    CHECK(next_in("30 1 * * *", "America/New_York", "2024-11-03T05:30:00Z") == "2024-11-04T06:30:00Z");
    CHECK(previous_in("30 1 * * *", "America/New_York", "2024-11-03T07:00:00Z") == "2024-11-03T05:30:00Z");
    // London, 2024-10-27: 01:00-02:00 twice, BST (00:xx UTC) then GMT (01:xx UTC).
    CHECK(next_in("30 1 * * *", "Europe/London", "2024-10-27T00:40:00Z") == "2024-10-28T01:30:00Z");
    CHECK(next_in("30 1 * * *", "Europe/London", "2024-10-26T23:00:00Z") == "2024-10-27T00:30:00Z");
    // Lord Howe, 2024-04-07: 01:30-02:00 twice, +11 (14:30-15:00 UTC) then +10:30 (15:00-15:30 UTC).
    CHECK(next_in("45 1 * * *", "Australia/Lord_Howe", "2024-04-06T14:00:00Z") == "2024-04-06T14:45:00Z");
    CHECK(next_in("45 1 * * *", "Australia/Lord_Howe", "2024-04-06T14:45:00Z") == "2024-04-07T15:15:00Z");
}

TEST_CASE("cron: every-N-minutes expressions keep firing by elapsed time through transitions", "[cron][dst]")
{
    auto count = [](const char* expression, const char* zone, const char* from, const char* to) {
        auto e = hosting::cron_expression::parse(expression);
        auto z = hosting::time_zone::locate(zone);
        int n = 0;
        std::optional<time_point> t = at(from);
        time_point prev = *t;
        while ((t = e.next(*t, z)) && *t <= at(to)) {
            // Never more than the step apart in elapsed time.
            CHECK(*t - prev <= std::chrono::minutes(15));
            prev = *t;
            ++n;
        }
        return n;
    };
    // Four real hours around each transition: 16 quarter hours either way.
    CHECK(count("*/15 * * * *", "America/New_York", "2024-03-10T05:00:00Z", "2024-03-10T09:00:00Z") == 16);
    CHECK(count("*/15 * * * *", "America/New_York", "2024-11-03T04:00:00Z", "2024-11-03T08:00:00Z") == 16);
    CHECK(count("*/15 * * * *", "Europe/London", "2024-10-26T23:00:00Z", "2024-10-27T03:00:00Z") == 16);
    CHECK(count("*/15 * * * *", "Australia/Lord_Howe", "2024-04-06T13:00:00Z", "2024-04-06T17:00:00Z") == 16);
    CHECK(count("*/15 * * * *", "Australia/Lord_Howe", "2024-10-05T14:00:00Z", "2024-10-05T18:00:00Z") == 16);
    // Seconds too.
    auto e = hosting::cron_expression::parse("*/30 * * * * *");
    auto ny = hosting::time_zone::locate("America/New_York");
    CHECK(iso(e.next(at("2024-11-03T05:59:45Z"), ny)) == "2024-11-03T06:00:00Z");
}

TEST_CASE("cron: leap years and the 29th of February", "[cron]")
{
    CHECK(next_in("0 0 29 2 *", "Etc/UTC", "2024-03-01T00:00:00Z") == "2028-02-29T00:00:00Z");
    CHECK(previous_in("0 0 29 2 *", "Etc/UTC", "2024-03-01T00:00:00Z") == "2024-02-29T00:00:00Z");
    CHECK(next_in("0 0 29 2 *", "Etc/UTC", "2096-03-01T00:00:00Z") == "2104-02-29T00:00:00Z"); // 2100 is not leap
    CHECK(next_in("0 0 L 2 *", "Etc/UTC", "2023-01-01T00:00:00Z") == "2023-02-28T00:00:00Z");
    CHECK(next_in("0 0 L 2 *", "Etc/UTC", "2024-01-01T00:00:00Z") == "2024-02-29T00:00:00Z");
    // OR rule, within February only: the next Monday in February.
    CHECK(next_in("0 0 29 2 MON", "Etc/UTC", "2024-03-01T00:00:00Z") == "2025-02-03T00:00:00Z");
}

TEST_CASE("cron: L, W, LW and #", "[cron]")
{
    // June 2024: the 1st is a Saturday, the 30th a Sunday.
    CHECK(next_in("0 0 1W 6 *", "Etc/UTC", "2024-05-01T00:00:00Z") == "2024-06-03T00:00:00Z");
    CHECK(next_in("0 0 30W 6 *", "Etc/UTC", "2024-05-01T00:00:00Z") == "2024-06-28T00:00:00Z");
    CHECK(next_in("0 0 15W * *", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-14T00:00:00Z"); // Sat -> Fri
    CHECK(next_in("0 0 LW * *", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-28T00:00:00Z");
    CHECK(next_in("0 0 L * *", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-30T00:00:00Z");
    CHECK(next_in("0 0 L-1 * *", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-29T00:00:00Z");
    CHECK(next_in("0 0 31W * *", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-07-31T00:00:00Z"); // no 31st in June
    CHECK(next_in("0 0 * * 5L", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-28T00:00:00Z");
    CHECK(next_in("0 0 * * 6#3", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-15T00:00:00Z");
    CHECK(next_in("0 0 * * SUN#5", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-30T00:00:00Z");
    CHECK(next_in("0 0 * * FRI#5", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-08-30T00:00:00Z");
    CHECK(previous_in("0 0 * * 1#1", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-05-06T00:00:00Z");
}

TEST_CASE("cron: several L offsets, a spelled-out every hour, and the end of system_clock", "[cron]")
{
    CHECK(next_in("0 0 L,L-3 * *", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-27T00:00:00Z");
    CHECK(next_in("0 0 L,L-3 * *", "Etc/UTC", "2024-06-27T00:00:00Z") == "2024-06-30T00:00:00Z");
    // "0-23" is every hour too: elapsed time through the New York fall-back.
    CHECK(next_in("*/15 0-23 * * *", "America/New_York", "2024-11-03T05:50:00Z") == "2024-11-03T06:00:00Z");
    // Beyond 2262 system_clock cannot say when: no occurrence rather than garbage.
    auto e = hosting::cron_expression::parse("0 0 1 1 *");
    CHECK_FALSE(e.next(std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 30)).has_value());
    CHECK_FALSE(e.previous(std::chrono::system_clock::time_point::min() + std::chrono::hours(24 * 30)).has_value());
}

TEST_CASE("cron: macros and field counts", "[cron]")
{
    CHECK(next_in("@yearly", "Etc/UTC", "2024-06-01T00:00:00Z") == "2025-01-01T00:00:00Z");
    CHECK(next_in("@annually", "Etc/UTC", "2024-06-01T00:00:00Z") == "2025-01-01T00:00:00Z");
    CHECK(next_in("@monthly", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-07-01T00:00:00Z");
    CHECK(next_in("@weekly", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-02T00:00:00Z");
    CHECK(next_in("@daily", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-02T00:00:00Z");
    CHECK(next_in("@midnight", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-02T00:00:00Z");
    CHECK(next_in("@hourly", "Etc/UTC", "2024-06-01T00:00:00Z") == "2024-06-01T01:00:00Z");
    CHECK(hosting::cron_expression::parse("*/5 * * * * *").has_seconds());
    CHECK_FALSE(hosting::cron_expression::parse("* * * * *").has_seconds());
    CHECK(next_in("  0   12  *  jan-MAR  *  ", "Etc/UTC", "2024-06-01T00:00:00Z") == "2025-01-01T12:00:00Z");
}

TEST_CASE("cron: every parse error names the field, the token and the reason", "[cron]")
{
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"0 24 * * *", R"(cron: field 'hour': value 24 out of range 0-23 in "0 24 * * *")"},
        {"60 * * * *", R"(cron: field 'minute': value 60 out of range 0-59 in "60 * * * *")"},
        {"0 0 0 * *", R"(cron: field 'day-of-month': value 0 out of range 1-31 in "0 0 0 * *")"},
        {"0 0 * 13 *", R"(cron: field 'month': value 13 out of range 1-12 in "0 0 * 13 *")"},
        {"0 0 * * 8", R"(cron: field 'day-of-week': value 8 out of range 0-7 in "0 0 * * 8")"},
        {"61 * * * * *", R"(cron: field 'second': value 61 out of range 0-59 in "61 * * * * *")"},
        {"* * * *", R"(cron: expected 5 or 6 fields, got 4 in "* * * *")"},
        {"* * * * * * *", R"(cron: expected 5 or 6 fields, got 7 in "* * * * * * *")"},
        {"", R"(cron: expected 5 or 6 fields, got 0 in "")"},
        {"@often", R"(cron: unknown macro '@often' in "@often")"},
        {"x * * * *", R"(cron: field 'minute': invalid token 'x' in "x * * * *")"},
        {"0 0 * FOO *", R"(cron: field 'month': invalid token 'FOO' in "0 0 * FOO *")"},
        {"0 0 * * MON-FOO", R"(cron: field 'day-of-week': invalid token 'FOO' in "0 0 * * MON-FOO")"},
        {"*/0 * * * *", R"(cron: field 'minute': step 0 in '*/0' must be positive in "*/0 * * * *")"},
        {"*/x * * * *", R"(cron: field 'minute': step 'x' in '*/x' is not a number in "*/x * * * *")"},
        {"0 5-3 * * *", R"(cron: field 'hour': range '5-3' is reversed in "0 5-3 * * *")"},
        {"0 ? * * *", R"(cron: field 'hour': '?' is only allowed in day-of-month and day-of-week in "0 ? * * *")"},
        {"0 0 L * L", R"(cron: field 'day-of-week': invalid token 'L' in "0 0 L * L")"},
        {"0 0 5#2 * *", R"(cron: field 'day-of-month': invalid token '5#2' in "0 0 5#2 * *")"},
        {"0 0 * * 6#6", R"(cron: field 'day-of-week': occurrence 6 in '6#6' out of range 1-5 in "0 0 * * 6#6")"},
        {"0 0 * * 6#0", R"(cron: field 'day-of-week': occurrence 0 in '6#0' must be positive in "0 0 * * 6#0")"},
        {"0 0 32W * *", R"(cron: field 'day-of-month': value 32 out of range 1-31 in "0 0 32W * *")"},
        {"0 0 L-31 * *", R"(cron: field 'day-of-month': offset 31 in 'L-31' out of range 1-30 in "0 0 L-31 * *")"},
        {"0 0 1, * *", R"(cron: field 'day-of-month': empty value in '' in "0 0 1, * *")"},
        {"0 0 L-x * *", R"(cron: field 'day-of-month': offset 'x' in 'L-x' is not a number in "0 0 L-x * *")"},
        {"0 0 ?/2 * *", R"(cron: field 'day-of-month': '?' takes no step in "0 0 ?/2 * *")"},
        {"0 0 * * 6#x", R"(cron: field 'day-of-week': occurrence 'x' in '6#x' is not a number in "0 0 * * 6#x")"},
        {"0 0 * * 1-", R"(cron: field 'day-of-week': empty value in '1-' in "0 0 * * 1-")"},
        {"0 0 * * 5W", R"(cron: field 'day-of-week': invalid token '5W' in "0 0 * * 5W")"},
        {"0 0 L/2 * *", R"(cron: field 'day-of-month': invalid token 'L/2' in "0 0 L/2 * *")"},
        {"0 0 l * *", R"(cron: field 'day-of-month': invalid token 'l' in "0 0 l * *")"},
        {"0 0 30 2 *",
         R"(cron: the expression never fires (no day matches its day-of-month, month and day-of-week) in "0 0 30 2 *")"},
        {"0 0 31 4,6,9,11 *",
         R"(cron: the expression never fires (no day matches its day-of-month, month and day-of-week) in "0 0 31 4,6,9,11 *")"},
    };
    for (const auto& [text, message] : cases) {
        INFO(text);
        CHECK_THROWS_MATCHES(hosting::cron_expression::parse(text), hosting::cron_parse_error,
                             Catch::Message(message));
    }
}

TEST_CASE("cron: an unknown time zone is an error that names it", "[cron]")
{
    CHECK_THROWS_MATCHES(hosting::time_zone::locate("Mars/Olympus_Mons"), hosting::unknown_time_zone,
                         Catch::Message(R"(time zone: unknown IANA time zone "Mars/Olympus_Mons")"));
    CHECK(hosting::time_zone::locate("Europe/Berlin").name() == "Europe/Berlin");
    CHECK(hosting::time_zone::locate("Asia/Kolkata").offset(at("2024-01-01T00:00:00Z")) ==
          std::chrono::minutes(330));
}
