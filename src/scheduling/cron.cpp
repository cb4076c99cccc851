#include <hosting/scheduling/cron.hpp>

#include <date/date.h>
#include <date/tz.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <charconv>
#include <vector>

namespace hosting {

namespace {

using date::days;
using date::local_days;
using date::local_seconds;
using date::sys_seconds;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

// Far enough for any expression that fires at all: the Gregorian calendar,
// weekdays included, repeats every 400 years.
constexpr auto search_horizon = date::years(401);

const date::time_zone* tz(const void* zone) { return static_cast<const date::time_zone*>(zone); }

// ---------------------------------------------------------------------------
// Parsing

struct field_spec {
    const char* name;
    int min;
    int max;
    const std::array<const char*, 12>* names; // value min + i is names[i]
};

constexpr std::array<const char*, 12> month_names = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                                     "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
constexpr std::array<const char*, 12> weekday_names = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT",
                                                       nullptr, nullptr, nullptr, nullptr, nullptr};

constexpr field_spec second_field{"second", 0, 59, nullptr};
constexpr field_spec minute_field{"minute", 0, 59, nullptr};
constexpr field_spec hour_field{"hour", 0, 23, nullptr};
constexpr field_spec day_field{"day-of-month", 1, 31, nullptr};
constexpr field_spec month_field{"month", 1, 12, &month_names};
constexpr field_spec weekday_field{"day-of-week", 0, 7, &weekday_names};

class parser {
public:
    explicit parser(std::string_view text) : text_(text) {}

    [[noreturn]] void fail(const field_spec& f, const std::string& reason) const
    {
        throw cron_parse_error("cron: field '" + std::string(f.name) + "': " + reason + " in \"" +
                               std::string(text_) + "\"");
    }
    [[noreturn]] void fail(const std::string& reason) const
    {
        throw cron_parse_error("cron: " + reason + " in \"" + std::string(text_) + "\"");
    }

    // A number or, where the field has them, a name.
    int value(const field_spec& f, std::string_view token, std::string_view whole) const
    {
        if (token.empty())
            fail(f, "empty value in '" + std::string(whole) + "'");
        int v = 0;
        if (std::isdigit(static_cast<unsigned char>(token.front()))) {
            auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), v);
            if (ec != std::errc() || end != token.data() + token.size())
                fail(f, "invalid token '" + std::string(token) + "'");
        } else {
            bool found = false;
            if (f.names) {
                std::string upper;
                for (char c : token)
                    upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
                for (std::size_t i = 0; i < f.names->size(); ++i)
                    if ((*f.names)[i] && upper == (*f.names)[i]) {
                        v = f.min + static_cast<int>(i);
                        found = true;
                    }
            }
            if (!found)
                fail(f, "invalid token '" + std::string(token) + "'");
        }
        if (v < f.min || v > f.max)
            fail(f, "value " + std::to_string(v) + " out of range " + std::to_string(f.min) + "-" +
                        std::to_string(f.max));
        return v;
    }

    int positive(const field_spec& f, std::string_view token, std::string_view whole, const char* what) const
    {
        int v = 0;
        auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), v);
        if (token.empty() || ec != std::errc() || end != token.data() + token.size())
            fail(f, std::string(what) + " '" + std::string(token) + "' in '" + std::string(whole) +
                        "' is not a number");
        if (v <= 0)
            fail(f, std::string(what) + " " + std::to_string(v) + " in '" + std::string(whole) +
                        "' must be positive");
        return v;
    }

    // Plain elements: *, ?, a, a-b, with an optional /step. Returns the bits.
    std::uint64_t plain(const field_spec& f, std::string_view element, bool question_allowed) const
    {
        std::string_view range = element;
        int step = 1;
        if (auto slash = element.find('/'); slash != std::string_view::npos) {
            range = element.substr(0, slash);
            step = positive(f, element.substr(slash + 1), element, "step");
        }
        int lo = f.min, hi = f.max;
        if (range == "*") {
            // Day-of-week 7 is Sunday again, not an eighth day.
            if (f.max == 7)
                hi = 6;
        } else if (range == "?") {
            if (!question_allowed)
                fail(f, "'?' is only allowed in day-of-month and day-of-week");
            if (step != 1)
                fail(f, "'?' takes no step");
            if (f.max == 7)
                hi = 6;
        } else if (auto dash = range.find('-'); dash != std::string_view::npos && dash > 0) {
            lo = value(f, range.substr(0, dash), element);
            hi = value(f, range.substr(dash + 1), element);
            if (lo > hi)
                fail(f, "range '" + std::string(range) + "' is reversed");
        } else {
            lo = value(f, range, element);
            // "a/step" runs from a to the end of the field.
            hi = element.find('/') != std::string_view::npos ? (f.max == 7 ? 6 : f.max) : lo;
        }
        std::uint64_t bits = 0;
        for (int v = lo; v <= hi; v += step)
            bits |= std::uint64_t{1} << (f.max == 7 && v == 7 ? 0 : v);
        return bits;
    }

    std::string_view text_;
};

std::vector<std::string_view> split(std::string_view s, char sep)
{
    std::vector<std::string_view> out;
    std::size_t start = 0;
    for (;;) {
        auto pos = s.find(sep, start);
        out.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
        if (pos == std::string_view::npos)
            return out;
        start = pos + 1;
    }
}

std::vector<std::string_view> fields_of(std::string_view s)
{
    std::vector<std::string_view> out;
    std::size_t i = 0;
    while (i < s.size()) {
        while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i])))
            ++i;
        std::size_t start = i;
        while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i])))
            ++i;
        if (i > start)
            out.push_back(s.substr(start, i - start));
    }
    return out;
}

std::string_view macro(std::string_view name)
{
    if (name == "@yearly" || name == "@annually")
        return "0 0 1 1 *";
    if (name == "@monthly")
        return "0 0 1 * *";
    if (name == "@weekly")
        return "0 0 * * 0";
    if (name == "@daily" || name == "@midnight")
        return "0 0 * * *";
    if (name == "@hourly")
        return "0 * * * *";
    return {};
}

int next_bit(std::uint64_t bits, int from)
{
    if (from >= 64)
        return -1;
    std::uint64_t masked = bits & (~std::uint64_t{0} << from);
    return masked ? std::countr_zero(masked) : -1;
}

int prev_bit(std::uint64_t bits, int from)
{
    if (from < 0)
        return -1;
    std::uint64_t masked = from >= 63 ? bits : bits & ((std::uint64_t{2} << from) - 1);
    return masked ? 63 - std::countl_zero(masked) : -1;
}

} // namespace

// The evaluation, with access to the expression's fields.
struct cron_access {
    const cron_expression& e;

    bool day_matches(date::year_month_day ymd) const
    {
        const unsigned d = static_cast<unsigned>(ymd.day());
        const unsigned last = static_cast<unsigned>((ymd.year() / ymd.month() / date::last).day());
        const date::weekday wd{local_days(ymd)};
        const unsigned w = wd.c_encoding();

        bool dom = (e.days_ >> d) & 1u;
        if (!dom && e.last_day_offsets_ && d <= last && ((e.last_day_offsets_ >> (last - d)) & 1u))
            dom = true;
        if (!dom && (e.last_weekday_of_month_ || e.nearest_weekday_) && (w >= 1 && w <= 5)) {
            if (e.last_weekday_of_month_) {
                unsigned lw = last;
                unsigned lw_w = date::weekday{local_days(ymd.year() / ymd.month() / date::last)}.c_encoding();
                if (lw_w == 6)
                    lw -= 1;
                else if (lw_w == 0)
                    lw -= 2;
                dom = lw == d;
            }
            for (unsigned n = 1; !dom && n <= 31; ++n) {
                if (!((e.nearest_weekday_ >> n) & 1u) || n > last)
                    continue;
                unsigned nw = date::weekday{local_days(ymd.year() / ymd.month() / date::day(n))}.c_encoding();
                unsigned target = n;
                if (nw == 6) // Saturday: the Friday before, unless that leaves the month
                    target = n == 1 ? 3 : n - 1;
                else if (nw == 0) // Sunday: the Monday after, unless that leaves the month
                    target = n == last ? n - 2 : n + 1;
                dom = target == d;
            }
        }

        bool dow = (e.weekdays_ >> w) & 1u;
        if (!dow && ((e.last_weekdays_ >> w) & 1u) && d + 7 > last)
            dow = true;
        if (!dow && e.nth_weekdays_) {
            unsigned k = (d - 1) / 7 + 1;
            dow = (e.nth_weekdays_ >> (8 * k + w)) & 1u;
        }
        // Classic cron: OR when both are restricted, AND otherwise (where an
        // unrestricted "*" matches every day anyway).
        return e.days_restricted_ && e.weekdays_restricted_ ? (dom || dow) : (dom && dow);
    }

    bool month_matches(date::month m) const { return (e.months_ >> static_cast<unsigned>(m)) & 1u; }

    // The first local time at or after `t` whose fields match.
    std::optional<local_seconds> next_local(local_seconds t, local_seconds limit) const
    {
        while (t <= limit) {
            const auto day = date::floor<days>(t);
            const date::year_month_day ymd{day};
            if (!month_matches(ymd.month())) {
                t = local_days((ymd.year() / ymd.month() + date::months(1)) / 1);
                continue;
            }
            if (!ymd.ok() || !day_matches(ymd)) {
                t = day + days(1);
                continue;
            }
            const auto in_day = t - day;
            const int h = static_cast<int>(in_day / hours(1));
            const int mi = static_cast<int>(in_day % hours(1) / minutes(1));
            const int s = static_cast<int>(in_day % minutes(1) / seconds(1));
            const int nh = next_bit(e.hours_, h);
            if (nh < 0) {
                t = day + days(1);
                continue;
            }
            if (nh > h) {
                t = day + hours(nh);
                continue;
            }
            const int nm = next_bit(e.minutes_, mi);
            if (nm < 0) {
                t = day + hours(h + 1);
                continue;
            }
            if (nm > mi) {
                t = day + hours(h) + minutes(nm);
                continue;
            }
            const int ns = next_bit(e.seconds_, s);
            if (ns < 0) {
                t = day + hours(h) + minutes(mi + 1);
                continue;
            }
            return day + hours(h) + minutes(mi) + seconds(ns);
        }
        return std::nullopt;
    }

    // The last local time at or before `t` whose fields match.
    std::optional<local_seconds> previous_local(local_seconds t, local_seconds limit) const
    {
        while (t >= limit) {
            const auto day = date::floor<days>(t);
            const date::year_month_day ymd{day};
            if (!month_matches(ymd.month())) {
                t = local_days(ymd.year() / ymd.month() / 1) - seconds(1);
                continue;
            }
            if (!day_matches(ymd)) {
                t = day - seconds(1);
                continue;
            }
            const auto in_day = t - day;
            const int h = static_cast<int>(in_day / hours(1));
            const int mi = static_cast<int>(in_day % hours(1) / minutes(1));
            const int s = static_cast<int>(in_day % minutes(1) / seconds(1));
            const int ph = prev_bit(e.hours_, h);
            if (ph < 0) {
                t = day - seconds(1);
                continue;
            }
            if (ph < h) {
                t = day + hours(ph + 1) - seconds(1);
                continue;
            }
            const int pm = prev_bit(e.minutes_, mi);
            if (pm < 0) {
                t = day + hours(h) - seconds(1);
                continue;
            }
            if (pm < mi) {
                t = day + hours(h) + minutes(pm + 1) - seconds(1);
                continue;
            }
            const int ps = prev_bit(e.seconds_, s);
            if (ps < 0) {
                t = day + hours(h) + minutes(mi) - seconds(1);
                continue;
            }
            return day + hours(h) + minutes(mi) + seconds(ps);
        }
        return std::nullopt;
    }

    // Wall-clock rule: a time in a gap runs at the first instant after it,
    // a time in an overlap at its first occurrence. Non-decreasing in `l`.
    static sys_seconds to_instant(const date::time_zone* z, local_seconds l)
    {
        const auto info = z->get_info(l);
        if (info.result == date::local_info::nonexistent)
            return info.first.end;
        return sys_seconds(l.time_since_epoch() - info.first.offset);
    }

    // The smallest and largest offsets in effect around `t`, so that a scan
    // of local times starting there cannot miss an occurrence.
    static std::pair<seconds, seconds> offsets_around(const date::time_zone* z, sys_seconds t)
    {
        const auto now = z->get_info(t);
        seconds lo = now.offset, hi = now.offset;
        if (now.begin > sys_seconds::min() + days(1)) {
            auto before = z->get_info(now.begin - seconds(1)).offset;
            lo = std::min(lo, before), hi = std::max(hi, before);
        }
        if (now.end < sys_seconds::max() - days(1)) {
            auto after = z->get_info(now.end).offset;
            lo = std::min(lo, after), hi = std::max(hi, after);
        }
        return {lo, hi};
    }

    std::optional<sys_seconds> next(const date::time_zone* z, sys_seconds after) const
    {
        if (e.every_hour_) {
            // By elapsed time: the first instant whose wall clock matches,
            // one constant-offset interval at a time.
            sys_seconds t = after + seconds(1);
            const sys_seconds limit = t + search_horizon;
            while (t <= limit) {
                const auto info = z->get_info(t);
                const local_seconds from{t.time_since_epoch() + info.offset};
                auto l = next_local(from, from + search_horizon);
                if (!l)
                    return std::nullopt;
                const sys_seconds s{l->time_since_epoch() - info.offset};
                if (s < info.end)
                    return s;
                t = info.end;
            }
            return std::nullopt;
        }
        const auto [lo, hi] = offsets_around(z, after);
        local_seconds l{after.time_since_epoch() + lo};
        const local_seconds limit = l + search_horizon;
        while (auto m = next_local(l, limit)) {
            const auto s = to_instant(z, *m);
            if (s > after)
                return s;
            l = *m + seconds(1);
        }
        return std::nullopt;
    }

    std::optional<sys_seconds> previous(const date::time_zone* z, sys_seconds before) const
    {
        if (e.every_hour_) {
            sys_seconds t = before - seconds(1);
            const sys_seconds limit = t - search_horizon;
            while (t >= limit) {
                const auto info = z->get_info(t);
                const local_seconds from{t.time_since_epoch() + info.offset};
                auto l = previous_local(from, from - search_horizon);
                if (!l)
                    return std::nullopt;
                const sys_seconds s{l->time_since_epoch() - info.offset};
                if (s >= info.begin)
                    return s;
                t = info.begin - seconds(1);
            }
            return std::nullopt;
        }
        const auto [lo, hi] = offsets_around(z, before);
        local_seconds l{before.time_since_epoch() + hi};
        const local_seconds limit = l - search_horizon;
        while (auto m = previous_local(l, limit)) {
            const auto s = to_instant(z, *m);
            if (s < before)
                return s;
            l = *m - seconds(1);
        }
        return std::nullopt;
    }
};

// ---------------------------------------------------------------------------

time_zone time_zone::locate(std::string_view name)
{
    try {
        return time_zone(date::locate_zone(name));
    } catch (const std::exception&) {
        throw unknown_time_zone("time zone: unknown IANA time zone \"" + std::string(name) + "\"");
    }
}

time_zone time_zone::utc()
{
    static const time_zone zone = locate("Etc/UTC");
    return zone;
}

std::string_view time_zone::name() const { return tz(zone_)->name(); }

std::chrono::seconds time_zone::offset(std::chrono::system_clock::time_point t) const
{
    return tz(zone_)->get_info(date::floor<seconds>(t)).offset;
}

cron_expression cron_expression::parse(std::string_view text)
{
    parser p(text);
    std::string_view body = text;
    auto trimmed = fields_of(text);
    if (trimmed.size() == 1 && !trimmed[0].empty() && trimmed[0][0] == '@') {
        body = macro(trimmed[0]);
        if (body.empty())
            p.fail("unknown macro '" + std::string(trimmed[0]) + "'");
    }
    auto fields = fields_of(body);
    if (fields.size() != 5 && fields.size() != 6)
        p.fail("expected 5 or 6 fields, got " + std::to_string(fields.size()));

    cron_expression e;
    e.text_ = std::string(text);
    e.has_seconds_ = fields.size() == 6;
    std::size_t i = 0;
    auto plain_field = [&](const field_spec& f, std::string_view field) {
        std::uint64_t bits = 0;
        for (auto element : split(field, ','))
            bits |= p.plain(f, element, false);
        return bits;
    };
    e.seconds_ = e.has_seconds_ ? plain_field(second_field, fields[i++]) : 1;
    e.minutes_ = plain_field(minute_field, fields[i++]);
    e.hours_ = static_cast<std::uint32_t>(plain_field(hour_field, fields[i++]));
    // Every hour, however it is spelled ("*", "*/1", "0-23"): then the
    // expression is evaluated by elapsed time.
    e.every_hour_ = e.hours_ == 0xFFFFFFu;
    const auto day_text = fields[i++];
    const auto month_text = fields[i++];
    const auto weekday_text = fields[i++];
    e.months_ = static_cast<std::uint16_t>(plain_field(month_field, month_text));

    // Day of month, with L, L-n, nW and LW.
    e.days_restricted_ = !(day_text.starts_with('*') || day_text == "?");
    for (auto element : split(day_text, ',')) {
        if (element == "L") {
            e.last_day_offsets_ |= 1u;
        } else if (element.starts_with("L-")) {
            int n = p.positive(day_field, element.substr(2), element, "offset");
            if (n > 30)
                p.fail(day_field, "offset " + std::to_string(n) + " in '" + std::string(element) +
                                      "' out of range 1-30");
            e.last_day_offsets_ |= std::uint32_t{1} << n;
        } else if (element == "LW") {
            e.last_weekday_of_month_ = true;
        } else if (element.size() > 1 && element.back() == 'W') {
            int n = p.value(day_field, element.substr(0, element.size() - 1), element);
            e.nearest_weekday_ |= std::uint32_t{1} << n;
        } else if (element.find_first_of("LW#") != std::string_view::npos) {
            p.fail(day_field, "invalid token '" + std::string(element) + "'");
        } else {
            e.days_ |= static_cast<std::uint32_t>(p.plain(day_field, element, true));
        }
    }

    // Day of week, with nL and n#k.
    e.weekdays_restricted_ = !(weekday_text.starts_with('*') || weekday_text == "?");
    for (auto element : split(weekday_text, ',')) {
        if (auto hash = element.find('#'); hash != std::string_view::npos) {
            int w = p.value(weekday_field, element.substr(0, hash), element) % 7;
            int k = p.positive(weekday_field, element.substr(hash + 1), element, "occurrence");
            if (k > 5)
                p.fail(weekday_field, "occurrence " + std::to_string(k) + " in '" + std::string(element) +
                                          "' out of range 1-5");
            e.nth_weekdays_ |= std::uint64_t{1} << (8 * k + w);
        } else if (element.size() > 1 && element.back() == 'L') {
            int w = p.value(weekday_field, element.substr(0, element.size() - 1), element) % 7;
            e.last_weekdays_ |= static_cast<std::uint8_t>(1u << w);
        } else {
            // Anything else, a stray "L" or "W" included, must be a plain
            // element; the names (WED has a W) are plain too.
            e.weekdays_ |= static_cast<std::uint8_t>(p.plain(weekday_field, element, true));
        }
    }

    cron_access a{e};
    const local_seconds epoch{local_days(date::year(1970) / 1 / 1)};
    if (!a.next_local(epoch, epoch + search_horizon))
        p.fail("the expression never fires (no day matches its day-of-month, month and day-of-week)");
    return e;
}

namespace {

// system_clock counts nanoseconds: it ends in 2262, long before date/tz
// does. An occurrence it cannot represent is no occurrence.
std::optional<cron_expression::time_point> representable(std::optional<sys_seconds> s)
{
    using tp = cron_expression::time_point;
    if (!s || *s > date::floor<seconds>(tp::max()) || *s < date::ceil<seconds>(tp::min()))
        return std::nullopt;
    return tp(*s);
}

} // namespace

std::optional<cron_expression::time_point> cron_expression::next(time_point after, const time_zone& zone) const
{
    return representable(cron_access{*this}.next(tz(zone.zone_), date::floor<seconds>(after)));
}

std::optional<cron_expression::time_point> cron_expression::previous(time_point before,
                                                                     const time_zone& zone) const
{
    // Strictly before: a `before` with a fraction of a second still has its
    // whole second in front of it.
    return representable(cron_access{*this}.previous(tz(zone.zone_), date::ceil<seconds>(before)));
}

} // namespace hosting
