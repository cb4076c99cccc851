// How the host observes a background_service; not part of the public API.
#pragma once

#include <hosting/background_service.hpp>

#include <functional>

namespace hosting::detail {

struct background_service_access {
    // Called on the service's strand when execute ends, with the state it
    // ended in (stopped, completed or faulted) and the exception, if any.
    using observer = std::function<void(service_state, std::exception_ptr)>;
    static void set_observer(background_service& service, observer fn);
    // True once execute has ended (any thread).
    static bool execute_ended(const background_service& service) noexcept;
};

} // namespace hosting::detail
