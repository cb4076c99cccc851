#include <hosting/background_service.hpp>
#include <hosting/cancellation.hpp>

#include "background_service_access.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <mutex>
#include <optional>
#include <stdexcept>

namespace hosting {

// Shared with the spawned coroutine's completion handler, which may run
// after stop() gave up waiting; so it is not part of the object itself.
struct background_service::execution {
    std::atomic<service_state> state{service_state::not_started};
    std::atomic<bool> ended{false};
    mutable std::mutex error_mutex;
    std::exception_ptr error;
    std::stop_source stopping;
    asio::cancellation_signal signal;              // strand only
    std::optional<asio::steady_timer> ended_event; // strand only; cancelled when execute ends
    detail::background_service_access::observer observer;
};

background_service::background_service() : execution_(std::make_shared<execution>()) {}

background_service::~background_service() = default;

service_state background_service::state() const noexcept { return execution_->state.load(); }

std::exception_ptr background_service::exception() const
{
    std::lock_guard lock(execution_->error_mutex);
    return execution_->error;
}

asio::awaitable<void> background_service::start(std::stop_token)
{
    auto e = execution_;
    if (e->state.load() != service_state::not_started)
        throw std::logic_error("background_service: start() called twice on the same instance");
    auto executor = co_await asio::this_coro::executor;
    e->ended_event.emplace(executor, asio::steady_timer::time_point::max());
    e->state = service_state::running;

    auto on_end = [e](std::exception_ptr error) {
        service_state final_state;
        if (!error)
            final_state = e->stopping.stop_requested() ? service_state::stopped : service_state::completed;
        else if (e->stopping.stop_requested() && is_cancellation(error))
            final_state = service_state::stopped;
        else {
            final_state = service_state::faulted;
            std::lock_guard lock(e->error_mutex);
            e->error = error;
        }
        e->state = final_state;
        e->ended = true;
        e->ended_event->cancel();
        if (e->observer)
            e->observer(final_state, final_state == service_state::faulted ? error : nullptr);
    };
    // The lambda is copied into the coroutine frame, so its captures live as
    // long as the coroutine does.
    asio::co_spawn(
        executor, [this, e]() -> asio::awaitable<void> { co_await execute(e->stopping.get_token()); },
        asio::bind_cancellation_slot(e->signal.slot(), std::move(on_end)));
    co_return;
}

asio::awaitable<void> background_service::stop(std::stop_token cancel)
{
    auto e = execution_;
    if (e->state.load() == service_state::not_started)
        co_return;
    auto executor = co_await asio::this_coro::executor;
    e->stopping.request_stop();
    if (!e->ended.load())
        // We run on the service's strand, where execute runs: emitting here
        // is safe. terminal is the only type co_spawn accepts by default.
        e->signal.emit(asio::cancellation_type::terminal);

    struct wake {
        std::shared_ptr<execution> e;
        asio::any_io_executor executor;
        void operator()() noexcept
        {
            try {
                asio::post(executor, [e = e] { e->ended_event->cancel(); });
            } catch (...) {
            }
        }
    };
    std::stop_callback<wake> on_cancel(cancel, wake{e, executor});
    while (!e->ended.load() && !cancel.stop_requested()) {
        boost::system::error_code ec;
        co_await e->ended_event->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
}

namespace detail {

void background_service_access::set_observer(background_service& service, observer fn)
{
    service.execution_->observer = std::move(fn);
}

bool background_service_access::execute_ended(const background_service& service) noexcept
{
    return service.execution_->ended.load();
}

} // namespace detail
} // namespace hosting
