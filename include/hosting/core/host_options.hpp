// host_options: plain settings, validated by host_builder::build().
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>

namespace hosting {

// What a fault in a background_service's execute does to the host.
enum class background_service_exception_behavior {
    stop_host, // log it, stop the host, and make run() return non-zero (the default)
    ignore,    // log it and leave the other services running
};

struct host_options {
    // One deadline for the whole stop: every service's stop token fires when
    // it is over, and run() returns at most 250 ms later even if a service
    // blocks its thread. Zero means "cancel at once". Must not be negative.
    std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(5)};

    // Draining: after a stop is requested, readiness turns false at once but
    // the services keep running this long before application_stopping fires
    // and they are stopped, so that load balancers stop sending traffic
    // first. It counts inside shutdown_timeout (the deadline runs from the
    // stop request), so it must be shorter: shutdown_timeout = shutdown_delay
    // + the time the services need to stop. Zero (the default) means none.
    std::chrono::milliseconds shutdown_delay{0};

    // Bound on the whole start; none by default. When it passes, the start
    // token fires and the start fails. Must be positive when set.
    std::optional<std::chrono::milliseconds> startup_timeout{};

    bool services_start_concurrently = false;
    bool services_stop_concurrently = false;

    // Stop the host once every background_service's execute has ended by
    // itself (a console worker run by a scheduler).
    bool stop_when_all_background_services_complete = false;

    hosting::background_service_exception_behavior background_service_exception_behavior =
        hosting::background_service_exception_behavior::stop_host;

    // Threads that run the host's own io_context (ignored with
    // use_io_context, whose threads belong to the program). At least 1.
    std::size_t worker_threads = 1;

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

} // namespace hosting
