// cancellation_bridge: a std::stop_token driving Asio's per-operation
// cancellation.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/cancellation_type.hpp>

#include <memory>
#include <stop_token>

namespace hosting {

namespace asio = boost::asio;

// Bridges a std::stop_token to Asio's per-operation cancellation.
//
//   asio::steady_timer timer{executor, 1h};
//   hosting::cancellation_bridge bridge{executor, token};
//   co_await timer.async_wait(asio::bind_cancellation_slot(bridge.slot(), asio::use_awaitable));
//
// When `token` fires (from any thread), `type` is emitted on the bridge's
// signal, posted to `executor`: cancellation_signal::emit is not thread-safe,
// so it must run where the operation runs. Give it the operation's own
// executor (a strand when the operation lives on one) and destroy the bridge
// there too.
//
// Lifetimes: Asio leaves the last bound operation's handler in the slot, and
// that handler points into the operation's I/O object. So bind only
// operations of objects that outlive the bridge: declare the bridge after
// them, as above. One operation at a time (a signal has one slot); binding the
// next operation replaces the previous one's handler.
//
// Binding a slot replaces the awaiting coroutine's own slot for that
// operation; inside background_service::execute pass the `stopping` token (or
// a token linked to it) so the host's stop still reaches the operation.
class cancellation_bridge {
public:
    cancellation_bridge(asio::any_io_executor executor, std::stop_token token,
                        asio::cancellation_type type = asio::cancellation_type::terminal);
    ~cancellation_bridge();
    cancellation_bridge(const cancellation_bridge&) = delete;
    cancellation_bridge& operator=(const cancellation_bridge&) = delete;

    asio::cancellation_slot slot() noexcept;

private:
    struct state;
    struct fire {
        std::shared_ptr<state> target;
        void operator()() noexcept;
    };
    std::shared_ptr<state> state_;
    std::unique_ptr<std::stop_callback<fire>> callback_;
};

} // namespace hosting
