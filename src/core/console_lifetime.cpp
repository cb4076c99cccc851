#include <hosting/core/console_lifetime.hpp>

#include <hosting/logging/logging.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include <spdlog/logger.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <functional>
#include <optional>
#include <thread>

namespace hosting {

namespace {

const char* signal_name(int number)
{
    switch (number) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGQUIT: return "SIGQUIT";
    case SIGHUP: return "SIGHUP";
    default: return "a signal";
    }
}

} // namespace

// Signals are waited for on a thread of its own so that a blocked service
// loop cannot delay the second-signal exit.
struct console_lifetime::state : std::enable_shared_from_this<console_lifetime::state> {
    application_lifetime* lifetime = nullptr;
    std::function<void()> reload;
    std::shared_ptr<spdlog::logger> log;
    asio::io_context io;
    std::optional<asio::signal_set> signals;
    std::thread thread;
    std::atomic<bool> signal_received{false};

    void wait()
    {
        // Shared: the last owner of the host may be dropped from this
        // thread (a reload's callback), and the state must outlive it here.
        signals->async_wait([this, self = shared_from_this()](boost::system::error_code ec, int number) {
            if (ec)
                return;
            if (number == SIGHUP) {
                log->info("Received SIGHUP; reloading the configuration");
                reload();
                wait();
                return;
            }
            // Only a second signal ends the process: a stop that began
            // another way (stop_application, a fault) still deserves its
            // graceful run.
            if (signal_received.exchange(true)) {
                log->critical("Received {} while shutting down; exiting at once with code {}", signal_name(number),
                              128 + number);
                log->flush();
                std::_Exit(128 + number);
            }
            log->info("Received {}; shutting down (send it again to exit at once)", signal_name(number));
            lifetime->stop_application();
            wait();
        });
    }

    void release()
    {
        if (!thread.joinable())
            return;
        asio::post(io, [self = shared_from_this()] { self->signals.reset(); });
        if (thread.get_id() == std::this_thread::get_id())
            thread.detach();
        else
            thread.join();
    }
};

console_lifetime::console_lifetime() : state_(std::make_shared<state>()) {}

console_lifetime::~console_lifetime() { state_->release(); }

void console_lifetime::attach(const host_lifetime_context& context)
{
    state_->lifetime = &context.lifetime;
    state_->reload = context.reload_configuration;
    state_->log = context.loggers.get("hosting.lifetime");
}

void console_lifetime::starting()
{
    auto& s = *state_;
    if (s.thread.joinable() || !s.lifetime)
        return;
    s.signals.emplace(s.io, SIGINT, SIGTERM, SIGQUIT);
    if (s.reload)
        s.signals->add(SIGHUP);
    s.wait();
    s.thread = std::thread([self = state_] { self->io.run(); });
}

void console_lifetime::started() {}

void console_lifetime::stopped(int) { state_->release(); }

} // namespace hosting
