// Cron expressions evaluated in IANA time zones.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace hosting {

// Thrown by cron_expression::parse. The message names the field, the token
// and the reason, for example
//   cron: field 'hour': value 24 out of range 0-23 in "0 24 * * *"
class cron_parse_error : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

// Thrown by time_zone::locate for a name the system's tzdata does not know.
class unknown_time_zone : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

// An IANA time zone from the system's tzdata (/usr/share/zoneinfo). Cheap to
// copy; the zone data itself lives for the whole process.
class time_zone {
public:
    // Throws unknown_time_zone naming `name`.
    static time_zone locate(std::string_view name);
    static time_zone utc();

    std::string_view name() const;

    // Offset from UTC in effect at `t` (negative west of Greenwich).
    std::chrono::seconds offset(std::chrono::system_clock::time_point t) const;

    friend bool operator==(const time_zone& a, const time_zone& b) noexcept { return a.zone_ == b.zone_; }

private:
    explicit time_zone(const void* zone) noexcept : zone_(zone) {}
    friend class cron_expression;
    const void* zone_; // a const date::time_zone*, kept out of this header
};

// A parsed cron expression.
//
// Syntax: 5 fields (minute hour day-of-month month day-of-week) or 6 with
// seconds first; `*`, lists `1,5`, ranges `1-5`, steps `*/15`, `10-40/10` and
// `5/15` (from 5 to the end of the field; Saturday, in day-of-week);
// month names JAN-DEC and weekday names SUN-SAT (case-insensitive; 0 and 7
// are Sunday); `?` for "no restriction" in day-of-month or day-of-week; in
// day-of-month `L` (last day), `L-3` (three days before it), `15W` (the
// weekday nearest the 15th, within the month) and `LW` (last weekday); in
// day-of-week `5L` (last Friday of the month) and `6#3` (third Saturday);
// and the macros @yearly (@annually), @monthly, @weekly, @daily (@midnight)
// and @hourly.
//
// Day-of-month and day-of-week: when both are restricted (neither starts
// with `*` nor is `?`), a day matches when EITHER matches, as in classic
// (Vixie) cron: "0 0 13 * FRI" fires on every 13th and on every Friday.
// When one of them is unrestricted, the other one decides.
//
// Time zones and daylight-saving time:
// - An expression whose hour field covers every hour (`*`, `*/1`, `0-23`) is evaluated
//   by elapsed time: it fires at every instant whose local wall-clock time
//   matches, so "*/15 * * * *" keeps firing every 15 minutes through both
//   transitions (twice through a repeated hour, never in a skipped one,
//   whose wall times do not exist).
// - Any other expression is evaluated by wall-clock time: a wall time that
//   falls into a spring-forward gap fires once, at the first instant after
//   the gap; a wall time that occurs twice in a fall-back overlap fires
//   once, at its first occurrence.
//
// Parsing rejects an expression that can never fire ("0 0 30 2 *").
class cron_expression {
public:
    using time_point = std::chrono::system_clock::time_point;

    // Throws cron_parse_error.
    static cron_expression parse(std::string_view text);

    // The first occurrence strictly after `after` (strictly before `before`),
    // or nothing when there is none within 400 years (only possible near the
    // ends of the representable range).
    std::optional<time_point> next(time_point after, const time_zone& zone = time_zone::utc()) const;
    std::optional<time_point> previous(time_point before, const time_zone& zone = time_zone::utc()) const;

    const std::string& text() const noexcept { return text_; }
    bool has_seconds() const noexcept { return has_seconds_; }

private:
    cron_expression() = default;
    friend struct cron_access;

    std::string text_;
    bool has_seconds_ = false;
    std::uint64_t seconds_ = 0;       // bit n: second n
    std::uint64_t minutes_ = 0;       // bit n: minute n
    std::uint32_t hours_ = 0;         // bit n: hour n
    std::uint32_t days_ = 0;          // bit n: day n (1-31)
    std::uint16_t months_ = 0;        // bit n: month n (1-12)
    std::uint8_t weekdays_ = 0;       // bit n: weekday n (0 = Sunday)
    std::uint8_t last_weekdays_ = 0;  // bit n: last weekday n of the month ("5L")
    std::uint64_t nth_weekdays_ = 0;  // bit 8*k+n: k-th (1-5) weekday n ("6#3")
    std::uint32_t nearest_weekday_ = 0; // bit n: weekday nearest day n ("15W")
    std::uint32_t last_day_offsets_ = 0; // bit n: n days before the last day ("L" is bit 0, "L-3" bit 3)
    bool last_weekday_of_month_ = false; // "LW"
    bool days_restricted_ = false;
    bool weekdays_restricted_ = false;
    bool every_hour_ = false;         // the hour field covers all 24 hours: evaluated by elapsed time
};

} // namespace hosting
