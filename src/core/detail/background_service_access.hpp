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
    // What the host tells a service about itself. One is shared by every
    // instance registered under a name, so that each service pays for a
    // pointer to it rather than for its contents.
    struct binding {
        std::shared_ptr<observer> watcher;
        std::shared_ptr<const std::string> name;      // what service_name() returns
        std::shared_ptr<spdlog::logger> logger;       // what service_logger() returns
    };
    // `cookie` is handed back to the observer.
    static void bind(background_service& service, std::shared_ptr<const binding> b, void* cookie);

    // What start() does, from any thread: spawns execute on `executor`.
    static void launch(background_service& service, const asio::any_io_executor& executor);

    // What stop() does before it waits: requests the stopping token and
    // cancels execute's awaited operation, both on the service's executor.
    // Completion is reported through the observer.
    // `executor` is the one execute was launched on.
    static void request_stop(background_service& service, const asio::any_io_executor& executor);

    // Requests the `stopping` token only, from any thread: a handler that
    // checks it sees it at once, even while the service's executor is busy.
    static void request_stop_token(background_service& service) noexcept;

    // True once execute has ended (any thread).
    static bool execute_ended(const background_service& service) noexcept;
};

} // namespace hosting::detail
