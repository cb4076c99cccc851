#include <hosting/logging/sinks.hpp>

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <spdlog/details/os.h>

#include <chrono>
#include <ctime>

namespace hosting {

void line_sink::log(const spdlog::details::log_msg& msg)
{
    if (!should_log(msg.level))
        return;
    auto line = format(msg);
    std::lock_guard lock(mutex_);
    std::fwrite(line.data(), 1, line.size(), out_);
}

void line_sink::flush()
{
    std::lock_guard lock(mutex_);
    std::fflush(out_);
}

std::string json_console_sink::format(const spdlog::details::log_msg& msg) const
{
    auto t = std::chrono::system_clock::to_time_t(msg.time);
    const std::tm tm = spdlog::details::os::gmtime(t);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count() % 1000;
    char full[48];
    std::snprintf(full, sizeof full, "%s.%03dZ", stamp, static_cast<int>(ms));
    boost::json::object o;
    o["time"] = full;
    auto level = spdlog::level::to_string_view(msg.level);
    o["level"] = std::string_view(level.data(), level.size());
    o["category"] = std::string_view(msg.logger_name.data(), msg.logger_name.size());
    o["message"] = std::string_view(msg.payload.data(), msg.payload.size());
    return boost::json::serialize(o) + "\n";
}

} // namespace hosting
