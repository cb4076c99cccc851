// Logging: one named spdlog logger per category.
#pragma once

#include <spdlog/common.h>
#include <spdlog/logger.h>
#include <spdlog/sinks/sink.h>

#include <cstdio>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace hosting {

struct logging_options {
    // The level of every category that has no level of its own.
    spdlog::level::level_enum level = spdlog::level::info;
    // Per-category levels, for example {"hosting.lifetime", warn}. A category
    // "a.b" without an entry uses the entry of "a", then `level`.
    std::map<std::string, spdlog::level::level_enum, std::less<>> category_levels;
    // Where records go; a coloured stderr sink when empty.
    std::vector<spdlog::sink_ptr> sinks;
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

// A sink that writes one formatted line per record to a FILE*, under a
// lock; the base of the formats below. Patterns do not apply to it.
class line_sink : public spdlog::sinks::sink {
public:
    explicit line_sink(std::FILE* out) : out_(out) {}
    void log(const spdlog::details::log_msg& msg) final;
    void flush() final;
    void set_pattern(const std::string&) final {}
    void set_formatter(std::unique_ptr<spdlog::formatter>) final {}

protected:
    // The whole line, newline included.
    virtual std::string format(const spdlog::details::log_msg& msg) const = 0;

private:
    std::mutex mutex_;
    std::FILE* out_;
};

// One JSON object per line on stderr, for log shippers:
//   {"time":"2026-01-01T12:00:00.000Z","level":"info","category":"app","message":"..."}
// Selected with Logging:Console:FormatterName = json.
class json_console_sink : public line_sink {
public:
    explicit json_console_sink(std::FILE* out = stderr) : line_sink(out) {}

protected:
    std::string format(const spdlog::details::log_msg& msg) const override;
};

} // namespace hosting
