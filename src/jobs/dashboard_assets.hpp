// The dashboard's page, script and style, compiled into the library from
// src/jobs/dashboard/ (cmake/embed_assets.cmake writes their definition).
#pragma once

#include <span>
#include <string_view>

namespace hosting::jobs::detail {

struct dashboard_asset {
    std::string_view name;
    std::string_view content_type;
    std::string_view body;
};

std::span<const dashboard_asset> dashboard_assets();

} // namespace hosting::jobs::detail
