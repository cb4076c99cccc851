#include <hosting/async/cancellation.hpp>
#include <hosting/async/cancellation_bridge.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/system/system_error.hpp>

#include "detail/timer_canceller.hpp"

#include <boost/throw_exception.hpp>

#include <cstring>

#include <mutex>
#include <optional>
#include <typeinfo>

namespace hosting {

namespace {

#if defined(__GLIBCXX__)
// Every stopped background service ends with a cancellation, and looking
// into an exception_ptr portably costs a rethrow: on a host of ten thousand
// services that was a third of the stop. libstdc++ documents
// exception_ptr::__cxa_exception_type(), and its exception_ptr holds the
// address of the thrown object (checked below, and pinned by the test
// "the cancellation check reads exceptions the way a rethrow would"): for
// the two exact types that carry the library's cancellation error, read the
// code without a rethrow. Any other type, or another standard library,
// takes the portable path.
static_assert(sizeof(std::exception_ptr) == sizeof(void*));

const void* thrown_object(const std::exception_ptr& error) noexcept
{
    const void* object = nullptr;
    std::memcpy(&object, &error, sizeof object);
    return object;
}

std::optional<bool> is_cancellation_fast(const std::exception_ptr& error) noexcept
{
    const std::type_info* type = error.__cxa_exception_type();
    if (!type)
        return std::nullopt;
    if (*type == typeid(operation_canceled))
        return true; // always carries operation_aborted
    if (*type == typeid(boost::wrapexcept<boost::system::system_error>)) {
        auto* e = static_cast<const boost::wrapexcept<boost::system::system_error>*>(thrown_object(error));
        return static_cast<const boost::system::system_error*>(e)->code() == asio::error::operation_aborted;
    }
    if (*type == typeid(boost::system::system_error))
        return static_cast<const boost::system::system_error*>(thrown_object(error))->code() ==
               asio::error::operation_aborted;
    return std::nullopt;
}
#else
std::optional<bool> is_cancellation_fast(const std::exception_ptr&) noexcept { return std::nullopt; }
#endif

} // namespace

bool is_cancellation(const std::exception_ptr& error) noexcept
{
    if (!error)
        return false;
    if (auto fast = is_cancellation_fast(error))
        return *fast;
    try {
        std::rethrow_exception(error);
    } catch (const boost::system::system_error& e) {
        return e.code() == asio::error::operation_aborted;
    } catch (...) {
        return false;
    }
}

linked_stop_source::linked_stop_source(std::initializer_list<std::stop_token> tokens)
{
    for (const auto& token : tokens)
        link(token);
}

linked_stop_source::linked_stop_source(const std::vector<std::stop_token>& tokens)
{
    for (const auto& token : tokens)
        link(token);
}

void linked_stop_source::link(const std::stop_token& token)
{
    // A token that has already fired runs the callback here, at once.
    links_.push_back(std::make_unique<std::stop_callback<forward>>(token, forward{source_}));
}

struct timed_stop_source::state {
    explicit state(const asio::any_io_executor& executor) : timer(executor) {}
    asio::steady_timer timer;
    std::stop_source source;
};

timed_stop_source::timed_stop_source(const asio::any_io_executor& executor,
                                     std::chrono::steady_clock::duration timeout)
    : state_(std::make_shared<state>(executor))
{
    state_->timer.expires_after(timeout);
    // The handler holds the state, not `this`: the source may be moved.
    state_->timer.async_wait([st = state_](boost::system::error_code ec) {
        if (!ec)
            st->source.request_stop();
    });
}

timed_stop_source::~timed_stop_source()
{
    if (!state_)
        return;
    // steady_timer is not thread-safe: cancel it where it runs.
    asio::post(state_->timer.get_executor(), [st = state_] { st->timer.cancel(); });
}

std::stop_token timed_stop_source::get_token() const noexcept { return state_->source.get_token(); }
bool timed_stop_source::request_stop() noexcept { return state_->source.request_stop(); }
bool timed_stop_source::stop_requested() const noexcept { return state_->source.stop_requested(); }

struct cancellation_bridge::state {
    state(asio::any_io_executor ex, asio::cancellation_type t) : executor(std::move(ex)), type(t) {}
    asio::any_io_executor executor;
    asio::cancellation_type type;
    asio::cancellation_signal signal;
    bool alive = true; // executor only: false once the bridge is gone
};

void cancellation_bridge::fire::operator()() noexcept
{
    // Runs on whichever thread requested the stop; the emit must happen on
    // the operation's executor. The post holds the state so a bridge that is
    // already gone makes the emit a harmless no-op.
    try {
        asio::post(target->executor, [st = target] {
            // The handler an operation leaves in the slot points into that
            // operation's I/O object; once the bridge is gone, so may be the
            // object.
            if (st->alive)
                st->signal.emit(st->type);
        });
    } catch (...) {
        // post only throws on allocation failure; nothing sane to do here.
    }
}

cancellation_bridge::cancellation_bridge(asio::any_io_executor executor, std::stop_token token,
                                         asio::cancellation_type type)
    : state_(std::make_shared<state>(std::move(executor), type))
{
    callback_ = std::make_unique<std::stop_callback<fire>>(std::move(token), fire{state_});
}

cancellation_bridge::~cancellation_bridge()
{
    // Deregister first (this waits for a callback running on another
    // thread), then make a late posted emit a no-op and drop the handler
    // the last operation left in the slot. Runs on the executor, like the
    // posted emit, so the flag needs no lock.
    callback_.reset();
    state_->alive = false;
    state_->signal.slot().clear();
}

asio::cancellation_slot cancellation_bridge::slot() noexcept { return state_->signal.slot(); }

namespace detail {

asio::awaitable<void> delay_for(std::chrono::steady_clock::duration duration, std::stop_token token)
{
    if (token.stop_requested())
        throw operation_canceled();
    auto executor = co_await asio::this_coro::executor;
    if (duration <= std::chrono::steady_clock::duration::zero()) {
        co_return;
    }
    auto timer = std::make_shared<asio::steady_timer>(executor, duration);
    std::stop_callback<timer_canceller> on_stop(token, timer_canceller{timer});
    boost::system::error_code ec;
    // The coroutine's own cancellation slot still applies: a stop of the
    // enclosing background_service aborts the wait too. A coroutine that was
    // cancelled before the wait throws from the co_await itself.
    try {
        co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
    } catch (const boost::system::system_error& e) {
        if (e.code() == asio::error::operation_aborted)
            throw operation_canceled();
        throw;
    }
    if (ec == asio::error::operation_aborted || token.stop_requested())
        throw operation_canceled();
    if (ec)
        throw boost::system::system_error(ec, "hosting::delay");
}

} // namespace detail
} // namespace hosting
