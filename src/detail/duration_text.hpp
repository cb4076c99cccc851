// Durations as log and report text: "1500 ms".
#pragma once

#include <chrono>
#include <string>

namespace hosting::detail {

template <class Rep, class Period>
std::string ms_text(std::chrono::duration<Rep, Period> d)
{
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
}

} // namespace hosting::detail
