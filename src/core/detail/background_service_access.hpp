// How the host drives a background_service; not part of the public API.
//
// background_service::start and stop are final, so the host knows exactly
// what they do and skips the coroutine round trips they would cost: with ten
// thousand services that is most of the start and stop time.
#pragma once

#include <hosting/core/background_service.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <exception>
#include <string>
#include <memory>

namespace hosting::detail {

struct background_service_access {
    struct observer {
        virtual ~observer() = default;
        // Called on the service's executor when execute ends, with the state
        // it ended in (stopped, completed or faulted) and the exception.
        virtual void execute_ended(void* cookie, service_state state, std::exception_ptr error) = 0;
    };
    static void set_observer(background_service& service, std::shared_ptr<observer> fn, void* cookie);

    // What service_name() and service_logger() return.
    static void set_identity(background_service& service, std::shared_ptr<const std::string> name,
                             std::shared_ptr<spdlog::logger> logger);

    // What start() does, from any thread: spawns execute on `executor`.
    static void launch(background_service& service, const asio::any_io_executor& executor);

    // What stop() does before it waits: requests the stopping token and
    // cancels execute's awaited operation, both on the service's executor.
    // Completion is reported through the observer.
    // `executor` is the one execute was launched on.
    static void request_stop(background_service& service, const asio::any_io_executor& executor);

    // True once execute has ended (any thread).
    static bool execute_ended(const background_service& service) noexcept;
};

} // namespace hosting::detail
