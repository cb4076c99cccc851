#include <hosting/logging.hpp>

#include <spdlog/details/log_msg.h>
#include <spdlog/sinks/stdout_color_sinks.h>

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <chrono>
#include <ctime>

namespace hosting {

logger_factory::logger_factory(logging_options options) : options_(std::move(options))
{
    if (options_.sinks.empty())
        options_.sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    for (auto& sink : options_.sinks)
        sink->set_pattern(options_.pattern);
}

spdlog::level::level_enum logger_factory::level_for(std::string_view category) const
{
    // "a.b.c" falls back to "a.b", then "a", then the default.
    std::string_view name = category;
    for (;;) {
        if (auto it = options_.category_levels.find(name); it != options_.category_levels.end())
            return it->second;
        auto dot = name.rfind('.');
        if (dot == std::string_view::npos)
            return options_.level;
        name = name.substr(0, dot);
    }
}

std::shared_ptr<spdlog::logger> logger_factory::get(std::string_view category)
{
    std::lock_guard lock(mutex_);
    if (auto it = loggers_.find(category); it != loggers_.end())
        return it->second;
    auto logger = std::make_shared<spdlog::logger>(std::string(category), options_.sinks.begin(),
                                                   options_.sinks.end());
    logger->set_level(level_for(category));
    // Errors are rare and matter most when the process is about to die.
    logger->flush_on(spdlog::level::err);
    loggers_.emplace(std::string(category), logger);
    return logger;
}

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
    std::tm tm{};
    gmtime_r(&t, &tm);
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
