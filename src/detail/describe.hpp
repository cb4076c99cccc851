// The message of an exception held in an exception_ptr, for logs.
#pragma once

#include <exception>
#include <string>

namespace hosting::detail {

inline std::string describe(const std::exception_ptr& error)
{
    if (!error)
        return "no exception";
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "an exception not derived from std::exception";
    }
}

} // namespace hosting::detail
