#include <hosting/core/background_service.hpp>
#include <hosting/async/cancellation.hpp>

#include "core/detail/background_service_access.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>

namespace hosting {

// Shared with the spawned coroutine's completion handler, which may run
// after stop() gave up waiting; so it is not part of the object itself.
// Kept small: a host may hold ten thousand of these.
struct background_service::execution {
    std::atomic<service_state> state{service_state::not_started};
    std::atomic<bool> ended{false};
    // Milliseconds fit 24 days in 32 bits, and the field then shares a word
    // with the two above.
    std::atomic<std::int32_t> heartbeat_interval_ms{0};
    std::exception_ptr error; // written once before `ended` is set
    std::stop_source stopping;
    asio::cancellation_signal signal;          // executor only
    asio::steady_timer* ended_event = nullptr; // executor only; set while stop() waits
    std::shared_ptr<const detail::background_service_access::binding> binding;
    void* cookie = nullptr;
    std::atomic<std::chrono::steady_clock::rep> last_heartbeat{0};

    // `cancelled`: execute ended by the library's cancellation error (see
    // operation_canceled), recognised where it was caught.
    void on_end(std::exception_ptr e, bool cancelled)
    {
        service_state final_state;
        if (!e)
            final_state = stopping.stop_requested() ? service_state::stopped : service_state::completed;
        else if (stopping.stop_requested() && cancelled)
            final_state = service_state::stopped;
        else {
            final_state = service_state::faulted;
            error = e;
        }
        state = final_state;
        ended.store(true, std::memory_order_release);
        if (ended_event)
            ended_event->cancel();
        if (binding && binding->watcher)
            binding->watcher->execute_ended(cookie, final_state, final_state == service_state::faulted ? e : nullptr);
    }

    void cancel_execute()
    {
        stopping.request_stop();
        if (!ended.load())
            // On the executor execute runs on, so the emit is safe. terminal
            // is the only type co_spawn accepts by default.
            signal.emit(asio::cancellation_type::terminal);
    }
};

background_service::background_service() : execution_(std::make_shared<execution>()) {}

background_service::~background_service() = default;

service_state background_service::state() const noexcept { return execution_->state.load(); }

std::exception_ptr background_service::exception() const
{
    if (!execution_->ended.load(std::memory_order_acquire))
        return nullptr;
    return execution_->error;
}

const std::string& background_service::service_name() const noexcept
{
    static const std::string none;
    const auto& b = execution_->binding;
    return b && b->name ? *b->name : none;
}

const std::shared_ptr<spdlog::logger>& background_service::service_logger() const noexcept
{
    static const std::shared_ptr<spdlog::logger> none;
    const auto& b = execution_->binding;
    return b ? b->logger : none;
}

std::chrono::milliseconds background_service::heartbeat_interval() const noexcept
{
    return std::chrono::milliseconds(execution_->heartbeat_interval_ms.load(std::memory_order_relaxed));
}

std::chrono::steady_clock::time_point background_service::last_heartbeat() const noexcept
{
    return std::chrono::steady_clock::time_point(
        std::chrono::steady_clock::duration(execution_->last_heartbeat.load(std::memory_order_relaxed)));
}

void background_service::expect_heartbeat(std::chrono::milliseconds interval) noexcept
{
    const auto ms = std::clamp<std::int64_t>(interval.count(), 0, std::numeric_limits<std::int32_t>::max());
    execution_->heartbeat_interval_ms.store(static_cast<std::int32_t>(ms), std::memory_order_relaxed);
}

void background_service::heartbeat() noexcept
{
    execution_->last_heartbeat.store(std::chrono::steady_clock::now().time_since_epoch().count(),
                                     std::memory_order_relaxed);
}

asio::awaitable<void> background_service::start(std::stop_token)
{
    // Named first: a temporary inside a call holding a co_await is what GCC
    // 12 can destroy twice.
    const asio::any_io_executor executor = co_await asio::this_coro::executor;
    detail::background_service_access::launch(*this, executor);
}

asio::awaitable<void> background_service::stop(std::stop_token cancel)
{
    auto e = execution_;
    if (e->state.load() == service_state::not_started)
        co_return;
    auto executor = co_await asio::this_coro::executor;
    e->cancel_execute();
    if (e->ended.load())
        co_return;

    asio::steady_timer ended_event(executor, asio::steady_timer::time_point::max());
    e->ended_event = &ended_event;
    // However this coroutine ends (its own cancellation throws out of the
    // wait below), nothing may keep pointing at the timer once it is gone.
    struct forget {
        execution& e;
        asio::steady_timer* timer;
        ~forget()
        {
            if (e.ended_event == timer)
                e.ended_event = nullptr;
        }
    } forget_timer{*e, &ended_event};
    struct wake {
        std::shared_ptr<execution> e;
        asio::any_io_executor executor;
        void operator()() noexcept
        {
            try {
                asio::post(executor, [e = e] {
                    if (e->ended_event)
                        e->ended_event->cancel();
                });
            } catch (...) {
            }
        }
    };
    {
        std::stop_callback<wake> on_cancel(cancel, wake{e, executor});
        while (!e->ended.load() && !cancel.stop_requested()) {
            boost::system::error_code ec;
            co_await ended_event.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
    }
}

namespace detail {

void background_service_access::bind(background_service& service, std::shared_ptr<const binding> b, void* cookie)
{
    service.execution_->binding = std::move(b);
    service.execution_->cookie = cookie;
}

void background_service_access::launch(background_service& service, const asio::any_io_executor& executor)
{
    auto& e = service.execution_;
    service_state expected = service_state::not_started;
    if (!e->state.compare_exchange_strong(expected, service_state::running))
        throw std::logic_error("background_service: started twice; create a new instance to run it again");
    service.heartbeat();
    // A member coroutine keeps `this` in its frame, and the token is a
    // parameter copied there: nothing dangles once this function returns.
    asio::co_spawn(executor, service.execute(e->stopping.get_token()),
                   asio::bind_cancellation_slot(e->signal.slot(), [e = e](std::exception_ptr error) {
                       e->on_end(error, error && is_cancellation(error));
                   }));
}

void background_service_access::request_stop(background_service& service, const asio::any_io_executor& executor)
{
    auto& e = service.execution_;
    if (e->state.load() == service_state::not_started || e->ended.load())
        return;
    // dispatch: from the host's own single-threaded loop this runs at once
    // instead of costing a trip through the queue.
    asio::dispatch(executor, [e = e] { e->cancel_execute(); });
}

void background_service_access::request_stop_token(background_service& service) noexcept
{
    service.execution_->stopping.request_stop();
}

bool background_service_access::execute_ended(const background_service& service) noexcept
{
    return service.execution_->ended.load();
}

} // namespace detail
} // namespace hosting
