// service_status: a snapshot of one hosted service, as the host sees it.
#pragma once

#include <hosting/core/hosted_service.hpp>

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>

namespace hosting {

struct service_status {
    std::string name;
    service_state state = service_state::not_started;
    std::exception_ptr error;                // set when state is faulted
    std::shared_ptr<hosted_service> service; // the current instance (a restart replaces it)

    // Supervision (see restart_policy in services.hpp).
    std::uint32_t restarts = 0;      // how many times it was re-created and started again
    std::uint32_t faults = 0;        // how many times its execute faulted
    bool restart_pending = false;    // it ended and a restart is scheduled
    bool restarts_exhausted = false; // it ended once more after the restart limit was reached

    // Heartbeats, for a background_service that declared an interval.
    std::chrono::milliseconds heartbeat_interval{0}; // zero: none declared
    std::chrono::steady_clock::time_point last_heartbeat{};
};

} // namespace hosting
