// console_lifetime on Windows: console control events instead of signals.
#include <hosting/core/console_lifetime.hpp>

#include <hosting/logging/logging.hpp>

#include <spdlog/logger.h>

#include <windows.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <vector>

namespace hosting {

namespace {

struct event_kind {
    const char* name;
    bool graceful_only; // the system ends the process when the handler returns
    int exit_code;      // for a second Ctrl+C or Ctrl+Break: 128 + the C signal's number
};

event_kind describe(DWORD type)
{
    switch (type) {
    case CTRL_C_EVENT: return {"Ctrl+C", false, 128 + 2};           // SIGINT
    case CTRL_BREAK_EVENT: return {"Ctrl+Break", false, 128 + 21};  // SIGBREAK
    case CTRL_CLOSE_EVENT: return {"the console's close", true, 0};
    case CTRL_LOGOFF_EVENT: return {"the user's logoff", true, 0};
    default: return {"the system's shutdown", true, 0};
    }
}

} // namespace

struct console_lifetime::state {
    application_lifetime* lifetime = nullptr;
    std::shared_ptr<spdlog::logger> log;
    std::chrono::milliseconds shutdown_timeout{};
    std::atomic<bool> event_received{false};

    std::mutex mutex;
    std::condition_variable changed;
    bool stopped = false; // the host has stopped, or is gone: `lifetime` is not used any more
    int in_flight = 0;    // handlers inside stop_application

    void on_event(DWORD type)
    {
        const auto kind = describe(type);
        {
            std::lock_guard lock(mutex);
            if (stopped)
                return;
        }
        if (event_received.exchange(true)) {
            if (kind.graceful_only)
                return; // the stop is under way; the handler waits for it
            // Only a second event ends the process: a stop that began
            // another way (stop_application, a fault) still deserves its
            // graceful run.
            log->critical("Received {} while shutting down; exiting at once with code {}", kind.name,
                          kind.exit_code);
            log->flush();
            std::_Exit(kind.exit_code);
        }
        if (kind.graceful_only)
            log->info("Received {}; shutting down", kind.name);
        else
            log->info("Received {}; shutting down (press it again to exit at once)", kind.name);
        {
            std::lock_guard lock(mutex);
            if (stopped)
                return;
            ++in_flight;
        }
        lifetime->stop_application();
        {
            std::lock_guard lock(mutex);
            --in_flight;
        }
        changed.notify_all();
    }

    // From stopped() or the destructor: no handler uses the host after this.
    void finish()
    {
        std::unique_lock lock(mutex);
        stopped = true;
        changed.notify_all();
        changed.wait(lock, [&] { return in_flight == 0; });
    }

    // The system ends the process when a close, logoff or shutdown handler
    // returns (or, for a close, 5 s after the event whatever the handler
    // does): hold it until the host has stopped or its deadline has passed,
    // so that the services get their graceful run.
    void wait_stopped()
    {
        const auto longest = std::chrono::milliseconds(std::chrono::hours(24));
        std::unique_lock lock(mutex);
        changed.wait_for(lock, std::min(shutdown_timeout, longest) + std::chrono::seconds(1), [&] { return stopped; });
    }

    // Console control handlers are process-wide functions without a
    // context: the started lifetimes are found here.
    static std::mutex& registry_mutex()
    {
        static std::mutex m;
        return m;
    }
    static std::vector<std::shared_ptr<state>>& registry()
    {
        static std::vector<std::shared_ptr<state>> r;
        return r;
    }

    static BOOL WINAPI on_console_event(DWORD type)
    {
        std::vector<std::shared_ptr<state>> states;
        {
            std::lock_guard lock(registry_mutex());
            states = registry();
        }
        if (states.empty())
            return FALSE;
        for (auto& s : states)
            s->on_event(type);
        if (describe(type).graceful_only)
            for (auto& s : states)
                s->wait_stopped();
        return TRUE;
    }

    static void enlist(const std::shared_ptr<state>& s)
    {
        // Installed once and never removed: the system holds its own lock
        // while it runs the handlers and takes it in SetConsoleCtrlHandler,
        // so changing the handlers under registry_mutex could deadlock with
        // a handler that waits for it. With no lifetime listed, the handler
        // passes the event on (the default ends the process).
        static std::once_flag installed;
        std::call_once(installed, [] { SetConsoleCtrlHandler(on_console_event, TRUE); });
        std::lock_guard lock(registry_mutex());
        auto& r = registry();
        if (std::find(r.begin(), r.end(), s) == r.end())
            r.push_back(s);
    }

    static void delist(const std::shared_ptr<state>& s)
    {
        {
            std::lock_guard lock(registry_mutex());
            auto& r = registry();
            r.erase(std::remove(r.begin(), r.end(), s), r.end());
        }
        s->finish();
    }
};

console_lifetime::console_lifetime() : state_(std::make_shared<state>()) {}

console_lifetime::~console_lifetime() { state::delist(state_); }

void console_lifetime::attach(const host_lifetime_context& context)
{
    state_->lifetime = &context.lifetime;
    state_->log = context.loggers.get("hosting.lifetime");
    state_->shutdown_timeout = context.options.shutdown_timeout;
}

void console_lifetime::starting()
{
    if (state_->lifetime)
        state::enlist(state_);
}

void console_lifetime::started() {}

void console_lifetime::stopped(int)
{
    // As on Linux: once the host has stopped, Ctrl+C ends the process the
    // system's way.
    state::delist(state_);
}

} // namespace hosting
