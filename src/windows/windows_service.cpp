#include <hosting/windows/windows_service.hpp>

#include <hosting/core/host_builder.hpp>
#include <hosting/logging/logging.hpp>

#include "core/detail/windows_process.hpp"

#include <boost/asio/post.hpp>

#include <spdlog/logger.h>
#include <spdlog/details/file_helper.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/win_eventlog_sink.h>

#include <windows.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace hosting {

bool is_windows_service() { return detail::started_by_service_control_manager(); }

// Shared by the host's hooks, the control dispatcher's thread (ServiceMain
// and the control handler) and the progress thread.
struct windows_service_lifetime::state {
    windows_service_options options;
    asio::any_io_executor loop;
    std::shared_ptr<spdlog::logger> log;
    std::chrono::milliseconds shutdown_timeout{};

    std::mutex mutex;
    std::condition_variable changed;
    // Null once the host is gone; the control handler calls it only while
    // counted in `in_flight`, which the destructor waits to drain.
    application_lifetime* lifetime = nullptr;
    int in_flight = 0;
    SERVICE_STATUS_HANDLE handle = nullptr;
    SERVICE_STATUS status{};
    std::chrono::steady_clock::time_point pending_since{};
    bool registered = false;       // ServiceMain has run
    DWORD register_error = 0;      // of RegisterServiceCtrlHandlerExW, on the dispatcher's thread
    bool dispatcher_ended = false; // StartServiceCtrlDispatcher returned
    DWORD dispatcher_error = 0;
    std::optional<int> exit_code; // run()'s, once the host has stopped
    bool quit = false;
    std::thread dispatcher;
    std::thread progress;
    // steady_clock ticks of the last time the loop ran a posted probe.
    std::shared_ptr<std::atomic<std::chrono::steady_clock::rep>> loop_seen =
        std::make_shared<std::atomic<std::chrono::steady_clock::rep>>(0);

    // ServiceMain has no context: the one service of the process is here.
    static std::atomic<state*>& current()
    {
        static std::atomic<state*> s{nullptr};
        return s;
    }

    // A wait hint in the DWORD of milliseconds the service control manager
    // takes, whatever the configured durations.
    static DWORD hint_of(std::chrono::milliseconds wait)
    {
        constexpr auto longest = std::chrono::milliseconds(std::chrono::hours(24));
        return static_cast<DWORD>(std::clamp(wait, std::chrono::milliseconds(0), longest).count());
    }

    // Under `mutex`.
    void report(DWORD new_state, DWORD exit_code = NO_ERROR)
    {
        if (!handle || status.dwCurrentState == SERVICE_STOPPED)
            return;
        const bool pending = new_state == SERVICE_START_PENDING || new_state == SERVICE_STOP_PENDING;
        if (pending && new_state != status.dwCurrentState)
            pending_since = std::chrono::steady_clock::now();
        status.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
        status.dwCheckPoint = pending && new_state == status.dwCurrentState ? status.dwCheckPoint + 1 : (pending ? 1 : 0);
        status.dwCurrentState = new_state;
        status.dwControlsAccepted = new_state == SERVICE_RUNNING
                                        ? SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN | SERVICE_ACCEPT_PRESHUTDOWN
                                        : 0;
        if (new_state == SERVICE_STOPPED && exit_code != 0) {
            status.dwWin32ExitCode = ERROR_SERVICE_SPECIFIC_ERROR;
            status.dwServiceSpecificExitCode = exit_code;
        } else {
            status.dwWin32ExitCode = NO_ERROR;
            status.dwServiceSpecificExitCode = 0;
        }
        const auto progress_hint = options.progress_every * 2;
        const auto hint = new_state == SERVICE_STOP_PENDING
                              ? std::max(progress_hint, std::min(shutdown_timeout, std::chrono::milliseconds(
                                                                                       std::chrono::hours(24))) +
                                                            std::chrono::seconds(1))
                              : progress_hint;
        status.dwWaitHint = pending ? hint_of(hint) : 0;
        if (!SetServiceStatus(handle, &status) && log)
            log->error("SetServiceStatus failed (error {})", GetLastError());
        changed.notify_all();
    }

    static DWORD WINAPI on_control(DWORD control, DWORD, void*, void* context)
    {
        auto& self = *static_cast<state*>(context);
        switch (control) {
        case SERVICE_CONTROL_STOP:
        case SERVICE_CONTROL_SHUTDOWN:
        case SERVICE_CONTROL_PRESHUTDOWN: {
            const char* what = control == SERVICE_CONTROL_STOP       ? "stop"
                               : control == SERVICE_CONTROL_SHUTDOWN ? "shutdown"
                                                                     : "preshutdown";
            application_lifetime* lifetime = nullptr;
            {
                std::lock_guard lock(self.mutex);
                if (!self.lifetime || self.status.dwCurrentState == SERVICE_STOP_PENDING ||
                    self.status.dwCurrentState == SERVICE_STOPPED)
                    return NO_ERROR;
                self.report(SERVICE_STOP_PENDING);
                lifetime = self.lifetime;
                ++self.in_flight;
            }
            self.log->info("The service control manager sent {}; shutting down", what);
            // Outside the mutex: the host tells every lifetime that it is
            // stopping, this one included, from within.
            lifetime->stop_application();
            {
                std::lock_guard lock(self.mutex);
                --self.in_flight;
            }
            self.changed.notify_all();
            return NO_ERROR;
        }
        case SERVICE_CONTROL_INTERROGATE: return NO_ERROR;
        default: return ERROR_CALL_NOT_IMPLEMENTED;
        }
    }

    static void WINAPI service_main(DWORD, LPWSTR*)
    {
        state* self = current().load();
        if (!self)
            return;
        // A service of its own process (SERVICE_WIN32_OWN_PROCESS): the
        // name is not checked.
        const auto handle = RegisterServiceCtrlHandlerExW(L"", on_control, self);
        const DWORD error = handle ? 0 : GetLastError();
        std::lock_guard lock(self->mutex);
        self->handle = handle;
        self->register_error = error;
        self->registered = true;
        if (handle)
            self->report(SERVICE_START_PENDING);
        self->changed.notify_all();
    }

    void run_dispatcher()
    {
        SERVICE_TABLE_ENTRYW table[] = {{const_cast<wchar_t*>(L""), service_main}, {nullptr, nullptr}};
        const BOOL ok = StartServiceCtrlDispatcherW(table);
        const DWORD error = ok ? 0 : GetLastError();
        std::lock_guard lock(mutex);
        dispatcher_ended = true;
        dispatcher_error = error;
        changed.notify_all();
    }

    // Reports a new checkpoint every progress_every while a start or stop
    // is pending, the loop still runs what is posted to it, and the start or
    // stop has not been pending for longer than max_pending.
    void run_progress()
    {
        using namespace std::chrono;
        std::unique_lock lock(mutex);
        while (!quit) {
            const auto asked = steady_clock::now();
            lock.unlock();
            asio::post(loop, [seen = loop_seen] { seen->store(steady_clock::now().time_since_epoch().count()); });
            lock.lock();
            changed.wait_for(lock, options.progress_every, [&] { return quit; });
            if (quit)
                break;
            const auto pending = status.dwCurrentState;
            const auto seen = steady_clock::time_point(steady_clock::duration(loop_seen->load()));
            if ((pending == SERVICE_START_PENDING || pending == SERVICE_STOP_PENDING) && seen >= asked &&
                steady_clock::now() - pending_since < options.max_pending)
                report(pending);
        }
    }

    void end_progress()
    {
        {
            std::lock_guard lock(mutex);
            quit = true;
        }
        changed.notify_all();
        if (progress.joinable() && progress.get_id() != std::this_thread::get_id())
            progress.join();
    }

    // Once the host is gone (or the process exits with it still there):
    // STOPPED, after which the service control manager may end the process
    // at any moment.
    std::once_flag stopped_once; // the destructor and the program's exit may both get here

    void report_stopped()
    {
        std::call_once(stopped_once, [this] { report_stopped_once(); });
    }

    void report_stopped_once()
    {
        end_progress();
        std::unique_lock lock(mutex);
        lifetime = nullptr;
        changed.wait(lock, [&] { return in_flight == 0; });
        report(SERVICE_STOPPED, static_cast<DWORD>(exit_code.value_or(1)));
    }

    void end_dispatcher()
    {
        // The dispatcher returns once STOPPED has been reported; should the
        // service control manager not answer, the process exits without it
        // (nothing of the host is used by it any more).
        std::unique_lock lock(mutex);
        const bool ended = changed.wait_for(lock, std::chrono::seconds(5), [&] { return dispatcher_ended; });
        lock.unlock();
        if (dispatcher.joinable()) {
            if (ended)
                dispatcher.join();
            else
                dispatcher.detach();
        }
    }
};

windows_service_lifetime::windows_service_lifetime(windows_service_options options)
    : state_(std::make_shared<state>())
{
    if (options.progress_every <= std::chrono::milliseconds(0))
        throw std::invalid_argument("windows_service_options: progress_every must be positive");
    if (options.max_pending <= std::chrono::milliseconds(0))
        throw std::invalid_argument("windows_service_options: max_pending must be positive");
    state_->options = std::move(options);
}

windows_service_lifetime::~windows_service_lifetime()
{
    state* self = state_.get();
    if (state::current().load() == self) {
        state_->report_stopped();
        state_->end_dispatcher();
        state::current().store(nullptr);
    } else {
        state_->end_progress();
    }
}

void windows_service_lifetime::attach(const host_lifetime_context& context)
{
    std::lock_guard lock(state_->mutex);
    state_->lifetime = &context.lifetime;
    state_->loop = context.loop;
    state_->log = context.loggers.get("hosting.lifetime");
    state_->shutdown_timeout = context.options.shutdown_timeout;
}

void windows_service_lifetime::starting()
{
    auto& s = *state_;
    state* expected = nullptr;
    if (!s.lifetime || !state::current().compare_exchange_strong(expected, &s)) {
        if (s.log)
            s.log->error("A process runs one Windows service; this host is not reported to the service control manager");
        return;
    }
    // Should the program end without destroying its host, STOPPED still
    // goes out (with the host's exit code once it has stopped). A host in
    // static storage is destroyed after this runs: it reports STOPPED before
    // its own stop, so a service's host belongs in main.
    static std::once_flag at_exit;
    std::call_once(at_exit, [] {
        std::atexit([] {
            if (state* current = state::current().load())
                current->report_stopped();
        });
    });
    s.dispatcher = std::thread([self = state_] { self->run_dispatcher(); });
    std::unique_lock lock(s.mutex);
    // The service control manager waits 30 s for a service to connect.
    s.changed.wait_for(lock, std::chrono::seconds(30), [&] { return s.registered || s.dispatcher_ended; });
    if (!s.handle) {
        const auto error = s.registered ? s.register_error : s.dispatcher_error;
        lock.unlock();
        s.log->error("Could not connect to the service control manager (error {}); running without it", error);
        return;
    }
    lock.unlock();
    s.progress = std::thread([self = state_] { self->run_progress(); });
}

void windows_service_lifetime::started()
{
    std::lock_guard lock(state_->mutex);
    if (state_->status.dwCurrentState == SERVICE_START_PENDING)
        state_->report(SERVICE_RUNNING);
}

void windows_service_lifetime::stopping()
{
    std::lock_guard lock(state_->mutex);
    if (state_->status.dwCurrentState != SERVICE_STOP_PENDING)
        state_->report(SERVICE_STOP_PENDING);
}

void windows_service_lifetime::stopped(int exit_code)
{
    // STOPPED waits for the host's destruction (.NET's waits for its
    // disposal): the service control manager may end the process as soon as
    // it has it, and the program still has its host to take down.
    std::lock_guard lock(state_->mutex);
    state_->exit_code = exit_code;
}

namespace {

struct windows_service_feature {};

// A service's log is read while it runs (by an operator, a log shipper):
// every record reaches the file at once, appended to what was there.
class service_log_file final : public spdlog::sinks::base_sink<std::mutex> {
public:
    explicit service_log_file(const std::string& path) { file_.open(path, false); }

protected:
    void sink_it_(const spdlog::details::log_msg& msg) override
    {
        spdlog::memory_buf_t line;
        formatter_->format(msg, line);
        file_.write(line);
        file_.flush();
    }
    void flush_() override { file_.flush(); }

private:
    spdlog::details::file_helper file_;
};

} // namespace

void use_windows_service(host_builder& builder, windows_service_options options)
{
    if (builder.has_feature<windows_service_feature>())
        throw std::logic_error("use_windows_service: called twice on one host_builder");
    builder.feature<windows_service_feature>();
    if (!is_windows_service())
        return;
    builder.use_console_lifetime(false);
    auto file = options.log_file.empty()
                    ? (std::filesystem::path(detail::program_folder()) / (detail::program_stem() + ".log")).string()
                    : options.log_file;
    auto source = options.event_log_source.empty() ? detail::program_stem() : options.event_log_source;
    builder.add_lifetime(std::make_shared<windows_service_lifetime>(std::move(options)));
    builder.on_build([file = std::move(file), source = std::move(source)](host_builder& b) {
        auto& sinks = b.logging().sinks;
        if (!sinks.empty())
            return;
        sinks.push_back(std::make_shared<service_log_file>(file));
        sinks.push_back(std::make_shared<spdlog::sinks::win_eventlog_sink_mt>(source));
    });
}

} // namespace hosting
