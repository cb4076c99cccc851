#include "support.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace test {

void recorder::add(std::string event)
{
    {
        std::lock_guard lock(mutex_);
        events_.push_back(std::move(event));
    }
    changed_.notify_all();
}

std::vector<std::string> recorder::events() const
{
    std::lock_guard lock(mutex_);
    return events_;
}

bool recorder::contains(const std::string& event) const { return count(event) > 0; }

std::size_t recorder::count(const std::string& event) const
{
    std::lock_guard lock(mutex_);
    return static_cast<std::size_t>(std::count(events_.begin(), events_.end(), event));
}

bool recorder::wait_for(const std::string& event, std::chrono::milliseconds timeout)
{
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
        return std::find(events_.begin(), events_.end(), event) != events_.end();
    });
}

bool recorder::wait_for_count(std::size_t n, std::chrono::milliseconds timeout)
{
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] { return events_.size() >= n; });
}

void capture_sink::sink_it_(const spdlog::details::log_msg& msg)
{
    lines_.push_back({msg.level, std::string(msg.logger_name.begin(), msg.logger_name.end()),
                      std::string(msg.payload.begin(), msg.payload.end())});
    changed_.notify_all();
}

std::vector<capture_sink::line> capture_sink::lines()
{
    std::lock_guard lock(mutex_);
    return lines_;
}

bool capture_sink::has(const std::string& text, std::optional<spdlog::level::level_enum> level,
                       const std::string& category)
{
    std::lock_guard lock(mutex_);
    return std::any_of(lines_.begin(), lines_.end(), [&](const line& l) {
        return l.text.find(text) != std::string::npos && (!level || l.level == *level) &&
               (category.empty() || l.category == category);
    });
}

bool capture_sink::wait_for(const std::string& text, std::chrono::milliseconds timeout)
{
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
        return std::any_of(lines_.begin(), lines_.end(),
                           [&](const line& l) { return l.text.find(text) != std::string::npos; });
    });
}

std::string capture_sink::dump()
{
    std::lock_guard lock(mutex_);
    std::string out;
    for (const auto& l : lines_)
        out += "[" + l.category + "] " + l.text + "\n";
    return out;
}

hosting::host_builder make_builder(std::shared_ptr<capture_sink> sink, spdlog::level::level_enum level)
{
    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    builder.logging().level = level;
    builder.logging().sinks.push_back(std::move(sink));
    if (std::getenv("HOSTING_TEST_VERBOSE"))
        builder.logging().sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    return builder;
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout)
{
    const auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        if (condition())
            return true;
        if (std::chrono::steady_clock::now() >= until)
            return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

} // namespace test
