// The same ticking coroutine written with raw Asio, stopped by a signal: the baseline.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdio>
namespace asio = boost::asio;
using namespace std::chrono_literals;

asio::awaitable<void> ticker()
{
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (int i = 1;; ++i) {
        timer.expires_after(1s);
        co_await timer.async_wait(asio::use_awaitable);
        std::printf("tick %d\n", i);
    }
}

int main()
{
    asio::io_context io;
    asio::signal_set signals(io, SIGINT, SIGTERM);
    asio::cancellation_signal cancel;
    asio::co_spawn(io, ticker(), asio::bind_cancellation_slot(cancel.slot(), asio::detached));
    signals.async_wait([&](auto, int) { cancel.emit(asio::cancellation_type::terminal); });
    io.run();
}
