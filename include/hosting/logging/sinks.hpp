// Sinks that write one formatted line per record, and the JSON console
// format.
#pragma once

#include <spdlog/common.h>
#include <spdlog/details/log_msg.h>
#include <spdlog/sinks/sink.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

namespace hosting {

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
