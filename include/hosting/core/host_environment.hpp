// host_environment: where and as what the program runs.
#pragma once

#include <string>
#include <string_view>

namespace hosting {

// Registered in the host's service_provider.
struct host_environment {
    std::string environment_name = "Production"; // from HOSTING_ENVIRONMENT
    std::string application_name;                // the program's file name
    std::string content_root;                    // where appsettings.json is read from

    bool is(std::string_view name) const;        // case-insensitive
    bool is_development() const { return is("Development"); }
    bool is_staging() const { return is("Staging"); }
    bool is_production() const { return is("Production"); }
};

} // namespace hosting
