// journal_sink: log lines with the priority prefix the journal reads.
#pragma once

#include <hosting/logging/sinks.hpp>

#include <cstdio>
#include <string>

namespace hosting {

// Writes log records for the journal: "<N>" syslog priority prefixes, no
// colours, one line per record. use_systemd() installs it when
// the output goes to the journal ($JOURNAL_STREAM set, or under systemd) and
// no sinks were configured.
class journal_sink : public line_sink {
public:
    explicit journal_sink(std::FILE* out = stderr) : line_sink(out) {}

protected:
    std::string format(const spdlog::details::log_msg& msg) const override;
};

} // namespace hosting
