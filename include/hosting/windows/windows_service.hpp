// use_windows_service: a host run by the Windows service control manager.
// Part of hosting::windows, which only Windows builds have.
#pragma once

#include <hosting/core/host_lifetime.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace hosting {

class host_builder;

struct windows_service_options {
    // While a start or a stop is under way and the host's loop still runs,
    // the service reports progress (a new checkpoint) this often, and asks
    // the service control manager to wait twice as long for the next one:
    // a slow start is not taken for a hung one, like systemd's
    // EXTEND_TIMEOUT_USEC. A start or stop whose loop is blocked reports
    // nothing, and the service control manager may give up on it.
    std::chrono::milliseconds progress_every{std::chrono::seconds(2)};
    // A start or stop pending this long reports no more progress, even on a
    // responsive loop (a start that awaits something that never comes is
    // not progressing): the service control manager then judges it.
    std::chrono::milliseconds max_pending{std::chrono::minutes(5)};
    // Where the service's log file goes; empty: <program>.log beside the
    // program (a service's working folder is the system's).
    std::string log_file;
    // The event log source records are written under; empty: the program's
    // name without its extension.
    std::string event_log_source;
};

// True when the process was started by the service control manager (its
// parent is services.exe), the way .NET decides. Always false elsewhere.
bool is_windows_service();

// As .NET's UseWindowsService: when the process runs as a Windows service,
// the host reports its life to the service control manager (START_PENDING,
// RUNNING, STOP_PENDING, then STOPPED with run()'s exit code once the host
// is destroyed, or at the program's exit if it never is), the stop,
// shutdown and preshutdown controls start the graceful stop under the
// host's deadline, there is no console lifetime, and the log goes to the
// Windows event log and to a file (unless sinks were configured). When it
// runs from a console it does nothing, so the same program runs both ways.
// A host built by host_builder already reads appsettings.json from the
// program's folder when it runs as a service.
//
// Throws std::logic_error when called twice on one builder.
void use_windows_service(host_builder& builder, windows_service_options options = {});

// The host_lifetime use_windows_service adds; one per process.
class windows_service_lifetime final : public host_lifetime {
public:
    explicit windows_service_lifetime(windows_service_options options = {});
    ~windows_service_lifetime() override;
    windows_service_lifetime(const windows_service_lifetime&) = delete;
    windows_service_lifetime& operator=(const windows_service_lifetime&) = delete;

    void attach(const host_lifetime_context& context) override;
    void starting() override;
    void started() override;
    void stopping() override;
    void stopped(int exit_code) override;

private:
    struct state;
    std::shared_ptr<state> state_;
};

} // namespace hosting
