#include <hosting/logging/logging.hpp>

#include <spdlog/logger.h>
#include <spdlog/sinks/stdout_color_sinks.h>



namespace hosting {

static_assert(static_cast<int>(spdlog::level::info) == 2, "logging_options::level names spdlog::level::info by its value");

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

} // namespace hosting
