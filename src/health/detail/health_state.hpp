// What the health feature collects on a host_builder.
#pragma once

#include <hosting/health/health.hpp>

#include "health/detail/health_core.hpp"

#include <memory>
#include <stdexcept>
#include <vector>

namespace hosting {

struct health_builder::state {
    health_options options;
    std::vector<health_check_registration> checks;
    std::vector<health_publisher_registration> publishers;
    bool endpoint_added = false;
    // Made when the host attaches its lifetimes, before any singleton.
    std::shared_ptr<detail::health_core> core;

    void validate() const
    {
        options.validate();
        for (std::size_t i = 0; i < checks.size(); ++i) {
            const auto& name = checks[i].name;
            if (name.rfind("service:", 0) == 0 || name == "event_loop" || name == "readiness")
                throw std::invalid_argument("health: check name '" + name +
                                            "' is reserved for the host's own entries");
            for (std::size_t j = 0; j < i; ++j)
                if (checks[j].name == name)
                    throw std::invalid_argument("health: two checks are named '" + name + "'");
        }
    }
};

} // namespace hosting
