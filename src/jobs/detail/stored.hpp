// jobs/detail/stored.hpp: how the SQL storages write values and read them
// back (times in microseconds, states as integers, histories and lists as
// JSON), so that a damaged row reads back as a storage_error naming the
// job, never as an out-of-range value.
#pragma once

#include <hosting/jobs/storage.hpp>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

namespace hosting::jobs::detail {

inline std::int64_t micros(time_point t)
{
    return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

// A damaged file may hold any integer. Times read back are kept within half
// the clock's range on either side of its epoch (1824 to 2116), so that the
// differences the server takes between them cannot overflow either.
inline time_point from_micros(std::int64_t us)
{
    using limits = std::numeric_limits<clock::duration::rep>;
    constexpr auto per = std::chrono::duration_cast<clock::duration>(std::chrono::microseconds(1)).count();
    static_assert(per >= 1);
    constexpr std::int64_t bound = limits::max() / 2 / per;
    const auto kept = std::chrono::microseconds(std::clamp(us, -bound, bound));
    return time_point(std::chrono::duration_cast<clock::duration>(kept));
}

// A timeout read back: no longer than a century, so that a timer of the
// clock's nanoseconds holds it.
inline std::chrono::milliseconds stored_timeout(std::int64_t ms)
{
    constexpr std::int64_t century = std::int64_t(100) * 366 * 24 * 3600 * 1000;
    return std::chrono::milliseconds(std::clamp<std::int64_t>(ms, 0, century));
}

inline int code(job_state s) { return static_cast<int>(s); }

// A JSON string holding text as it is: the caller has made sure that JSON
// carries it unchanged (json_safe), or does not need it to.
inline std::string json_string(std::string_view text)
{
    return boost::json::serialize(boost::json::string_view(text.data(), text.size()));
}

// A JSON array of strings (SQLite reads it with json_each).
inline std::string json_array_of(const std::vector<std::string>& items)
{
    std::string out = "[";
    for (const auto& item : items) {
        if (out.size() > 1)
            out += ',';
        out += json_string(item);
    }
    out += ']';
    return out;
}

// The length of the UTF-8 sequence text starts with, or 0 where it holds
// none: a NUL, a stray or missing continuation byte, an overlong form, a
// surrogate, or what lies past U+10FFFF.
inline std::size_t utf8_sequence(std::string_view text)
{
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const unsigned char c = p[0];
    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    std::size_t n;
    std::uint32_t code;
    if ((c & 0xE0) == 0xC0) {
        n = 1;
        code = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        n = 2;
        code = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        n = 3;
        code = c & 0x07;
    } else {
        return 0;
    }
    if (text.size() <= n)
        return 0;
    for (std::size_t k = 1; k <= n; ++k) {
        if ((p[k] & 0xC0) != 0x80)
            return 0;
        code = (code << 6) | (p[k] & 0x3F);
    }
    static constexpr std::uint32_t least[] = {0, 0x80, 0x800, 0x10000};
    if (code < least[n] || (code >= 0xD800 && code <= 0xDFFF) || code > 0x10FFFF)
        return 0;
    return n + 1;
}

// Whether text goes through a JSON string and back unchanged, whoever
// parses it: valid UTF-8 with no NUL (a parser may end a string at an
// escaped NUL, or pass bytes that are not UTF-8 on, or not).
inline bool json_safe(std::string_view text)
{
    while (!text.empty()) {
        const auto n = utf8_sequence(text);
        if (n == 0)
            return false;
        text.remove_prefix(n);
    }
    return true;
}

// Text every storage keeps as it is: each byte that starts no valid UTF-8
// sequence, and each NUL, becomes U+FFFD. For the texts a job's history
// holds (an error's message, a reason), which are JSON text in SQLite and
// PostgreSQL alike: neither takes any byte string.
inline std::string valid_text(std::string_view text)
{
    if (json_safe(text))
        return std::string(text);
    std::string out;
    out.reserve(text.size() + 8);
    while (!text.empty()) {
        auto n = utf8_sequence(text);
        if (n == 0) {
            out += "\xEF\xBF\xBD";
            n = 1;
        } else {
            out.append(text.data(), n);
        }
        text.remove_prefix(n);
    }
    return out;
}

// A JSON array of numbers.
inline std::string json_array_of(const std::vector<std::size_t>& items)
{
    std::string out = "[";
    for (const auto item : items) {
        if (out.size() > 1)
            out += ',';
        out += std::to_string(item);
    }
    out += ']';
    return out;
}

// The numbers of a JSON array that json_array_of() wrote; what is not a
// non-negative integer is left out.
inline std::vector<std::size_t> sizes_of(const std::string& text)
{
    std::vector<std::size_t> out;
    boost::system::error_code ec;
    const auto value = boost::json::parse(text, ec);
    if (ec || !value.is_array())
        return out;
    for (const auto& item : value.as_array()) {
        if (item.is_uint64())
            out.push_back(static_cast<std::size_t>(item.as_uint64()));
        else if (item.is_int64() && item.as_int64() >= 0)
            out.push_back(static_cast<std::size_t>(item.as_int64()));
    }
    return out;
}

// A state read back from storage: a damaged one is a storage_error naming
// the job, never an enum value out of range.
inline job_state stored_state(std::int64_t value, job_id id)
{
    if (value < 0 || value >= static_cast<std::int64_t>(job_state_count))
        throw storage_error("jobs: job " + std::to_string(id) + " has a damaged state (" + std::to_string(value) +
                            ") in storage");
    return static_cast<job_state>(value);
}

// A job's history as the storage wrote it: an array of [from, to, at,
// reason, error]; anything else is a storage_error naming the job.
inline std::vector<state_change> stored_history(const std::string& text, job_id id)
{
    std::vector<state_change> out;
    try {
        const auto history = boost::json::parse(text);
        for (const auto& item : history.as_array()) {
            const auto& a = item.as_array();
            out.push_back({stored_state(a.at(0).to_number<int>(), id), stored_state(a.at(1).to_number<int>(), id),
                           from_micros(a.at(2).to_number<std::int64_t>()), std::string(a.at(3).as_string()),
                           std::string(a.at(4).as_string())});
        }
    } catch (const storage_error&) {
        throw;
    } catch (const std::exception& e) {
        throw storage_error("jobs: job " + std::to_string(id) + " has a damaged history in storage (" + e.what() +
                            ")");
    }
    return out;
}

// The strings of a JSON array that json_array_of() wrote.
inline std::vector<std::string> strings_of(const std::string& text)
{
    std::vector<std::string> out;
    boost::system::error_code ec;
    const auto value = boost::json::parse(text, ec);
    if (ec || !value.is_array())
        return out;
    for (const auto& item : value.as_array())
        if (item.is_string())
            out.emplace_back(item.as_string());
    return out;
}

// What a continuation waits for, for the reason of its deletion.
inline const char* wanted(continuation_condition c)
{
    switch (c) {
    case continuation_condition::on_success: return "succeeded";
    case continuation_condition::on_any_final: return "ended";
    case continuation_condition::on_deleted: return "was deleted";
    }
    return "ended";
}

// What recovering a running job whose node is gone does, from its row (see
// storage::recover_expired): a job asked to stop (cancel_requested 1, or 2
// for a delete) ends cancelled or deleted; any other is charged its
// attempt, unless its node never reported its start (claim_flags bit 0)
// and it never had one back (bit 1): then the attempt is refunded, once in
// its life. It becomes available while attempts are left, failed after.
struct recovery {
    job_state to;
    bool refund = false;

    // The history's reason, given why the node is gone.
    std::string reason(const std::string& why) const
    {
        return to == job_state::deleted     ? why + " while a delete was pending"
               : to == job_state::cancelled ? why + " while a cancel was pending"
                                            : why;
    }
};

inline recovery recovery_of(int attempt, int max_attempts, std::int64_t cancel_requested, std::int64_t claim_flags)
{
    if (cancel_requested == 2)
        return {job_state::deleted};
    if (cancel_requested != 0)
        return {job_state::cancelled};
    const bool refund = (claim_flags & 3) == 0;
    return {attempt - (refund ? 1 : 0) < max_attempts ? job_state::available : job_state::failed, refund};
}

} // namespace hosting::jobs::detail
