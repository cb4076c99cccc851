// Logging: one named spdlog logger per category.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

// Only named here, so that a translation unit that sets up a host does not
// pay for spdlog's formatting headers; include <spdlog/spdlog.h> (or
// <spdlog/logger.h>) to log.
namespace spdlog {
class logger;
namespace sinks {
class sink;
}
namespace level {
enum level_enum : int;
}
} // namespace spdlog

namespace hosting {

struct logging_options {
    // The level of every category that has no level of its own: one of
    // spdlog::level (info unless configured otherwise).
    spdlog::level::level_enum level = static_cast<spdlog::level::level_enum>(2); // spdlog::level::info
    // Per-category levels, for example {"hosting.lifetime", warn}. A category
    // "a.b" without an entry uses the entry of "a", then `level`.
    std::map<std::string, spdlog::level::level_enum, std::less<>> category_levels;
    // Where records go; a coloured stderr sink when empty.
    std::vector<std::shared_ptr<spdlog::sinks::sink>> sinks;
    // spdlog pattern; %n is the category.
    std::string pattern = "%Y-%m-%dT%H:%M:%S.%e %^%-5l%$ [%n] %v";
};

// Hands out one logger per category, all writing to the same sinks. Owned by
// the host and registered in its service_provider:
//
//   auto log = provider.get<hosting::logger_factory>().get("my_app.worker");
//
// get() is thread-safe. The loggers are not put in spdlog's global registry,
// so two hosts in one process never clash.
class logger_factory {
public:
    explicit logger_factory(logging_options options);

    std::shared_ptr<spdlog::logger> get(std::string_view category);

    spdlog::level::level_enum level_for(std::string_view category) const;
    const logging_options& options() const noexcept { return options_; }

private:
    logging_options options_;
    mutable std::mutex mutex_;
    std::map<std::string, std::shared_ptr<spdlog::logger>, std::less<>> loggers_;
};

} // namespace hosting
