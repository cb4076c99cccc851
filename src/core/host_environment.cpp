#include <hosting/core/host_environment.hpp>

#include <algorithm>
#include <cctype>

namespace hosting {

bool host_environment::is(std::string_view name) const
{
    return environment_name.size() == name.size() &&
           std::equal(name.begin(), name.end(), environment_name.begin(), [](char a, char b) {
               return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
           });
}

} // namespace hosting
