// libpq's messages end in a newline (sometimes more): ours are one line.
#pragma once

#include <string>

namespace hosting::detail {

inline std::string trimmed(const char* message)
{
    std::string out = message ? message : "";
    while (!out.empty() && (out.back() == '\n' || out.back() == ' '))
        out.pop_back();
    return out;
}

} // namespace hosting::detail
