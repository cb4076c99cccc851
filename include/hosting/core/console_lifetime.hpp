// console_lifetime: a host run from a terminal or by a process supervisor.
#pragma once

#include <hosting/core/host_lifetime.hpp>

#include <memory>

namespace hosting {

// SIGINT, SIGTERM and SIGQUIT start a graceful stop; a second one during the
// stop ends the process at once with exit code 128 + the signal's number;
// SIGHUP reloads the configuration. The signals are waited for on a thread
// of its own, so a service that blocks the event loop cannot delay the
// second-signal exit.
//
// On Windows, console control events take the signals' place: Ctrl+C and
// Ctrl+Break start a graceful stop, and a second one ends the process at
// once with exit code 130 or 149 (128 + SIGINT's or SIGBREAK's number). The
// console's close, the user's logoff and the system's shutdown also start a
// graceful stop, and hold the process (which the system ends as soon as the
// handler returns) until the host has stopped or its deadline has passed.
// Windows has no SIGHUP: the configuration is not reloaded from outside.
//
// Every host built by host_builder has one unless
// host_builder::use_console_lifetime(false) switches it off (when the
// program handles signals itself).
class console_lifetime final : public host_lifetime {
public:
    console_lifetime();
    ~console_lifetime() override;
    console_lifetime(const console_lifetime&) = delete;
    console_lifetime& operator=(const console_lifetime&) = delete;

    void attach(const host_lifetime_context& context) override;
    void starting() override;
    void started() override;
    void stopped(int exit_code) override;

private:
    struct state;
    std::shared_ptr<state> state_;
};

} // namespace hosting
