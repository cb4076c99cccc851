#include <hosting/systemd/journal_sink.hpp>

#include <spdlog/details/log_msg.h>

#include <string_view>

namespace hosting {

std::string journal_sink::format(const spdlog::details::log_msg& msg) const
{
    int priority = 6;
    switch (msg.level) {
    case spdlog::level::trace:
    case spdlog::level::debug: priority = 7; break;
    case spdlog::level::info: priority = 6; break;
    case spdlog::level::warn: priority = 4; break;
    case spdlog::level::err: priority = 3; break;
    case spdlog::level::critical: priority = 2; break;
    default: break;
    }
    // Appended, not "<" + ...: GCC 12 at -O3 warns falsely (-Wrestrict) on
    // a literal plus a temporary string.
    std::string line(1, '<');
    line += std::to_string(priority);
    line += ">[";
    line.append(msg.logger_name.begin(), msg.logger_name.end());
    line += "] ";
    // One line per record: the journal splits on newlines.
    for (char c : std::string_view(msg.payload.data(), msg.payload.size()))
        line += (c == '\n' || c == '\r') ? ' ' : c;
    line += '\n';
    return line;
}

} // namespace hosting
