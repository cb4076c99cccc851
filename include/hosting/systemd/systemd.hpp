// systemd integration: the sd_notify protocol, spoken directly on the
// datagram socket (no libsystemd), and a host_lifetime that uses it.
#pragma once

#include <hosting/core/host_lifetime.hpp>


#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace hosting {

// Sends sd_notify messages to $NOTIFY_SOCKET (a path, or an abstract
// address written with a leading '@'). Inactive, and every call a no-op,
// when the variable is unset: the same program runs under systemd and by
// hand. Thread-safe.
class host_builder;

class systemd_notifier {
public:
    // From $NOTIFY_SOCKET.
    systemd_notifier();
    // From an explicit address (empty: inactive).
    explicit systemd_notifier(std::string socket);
    ~systemd_notifier();
    systemd_notifier(const systemd_notifier&) = delete;
    systemd_notifier& operator=(const systemd_notifier&) = delete;

    bool active() const noexcept { return fd_ >= 0; }
    const std::string& socket() const noexcept { return socket_; }

    // Sends one datagram ("READY=1", "STATUS=...", several lines at once).
    // False when inactive or when the send failed.
    bool notify(std::string_view message) const;

    // STATUS=<text>, shown by `systemctl status`.
    bool status(std::string_view text) const;

private:
    std::string socket_;
    int fd_ = -1;
    std::string address_; // the packed sockaddr_un
};

struct systemd_options {
    // While a start or a stop is still running, EXTEND_TIMEOUT_USEC is sent
    // this often, asking for twice as much again, so that a slow but
    // progressing start or stop is not killed by TimeoutStartSec/StopSec.
    std::chrono::milliseconds extend_timeout_every{std::chrono::seconds(5)};
};

// READY=1 once the host has started, STOPPING=1 when the stop begins,
// EXTEND_TIMEOUT_USEC while a start or stop is in progress, RELOADING=1 and
// READY=1 around a reload of a started host, and WATCHDOG=1 every
// WATCHDOG_USEC/2 (when WATCHDOG_PID is absent or this process). Pings and
// extensions go out only while a heartbeat on the host's event loop keeps
// up: a loop blocked by a misbehaving service stops them, and systemd
// restarts the service. (With several worker threads, one free thread keeps
// the heartbeat going.) Does nothing when the notifier is inactive.
class systemd_lifetime : public host_lifetime {
public:
    systemd_lifetime(std::shared_ptr<systemd_notifier> notifier, systemd_options options = {});
    ~systemd_lifetime() override;

    void attach(const host_lifetime_context& context) override;
    void starting() override;
    void started() override;
    void stopping() override;
    void stopped(int exit_code) override;
    void reloading() override;
    void reloaded() override;

    // The watchdog interval systemd asked for, or zero.
    std::chrono::microseconds watchdog_interval() const noexcept { return watchdog_; }

private:
    bool running() const;
    struct state;
    std::shared_ptr<systemd_notifier> notifier_;
    systemd_options options_;
    std::chrono::microseconds watchdog_{0};
    std::shared_ptr<state> state_;
};


// Runs the host as a systemd service: adds a systemd_lifetime, registers the
// systemd_notifier for services (to send STATUS=), and, when the output goes
// to the journal and no sinks were set, logs in the journal's format
// (journal_sink.hpp). Without $NOTIFY_SOCKET the notifier is inactive and
// nothing else changes, so the same program also runs by hand. Throws
// std::logic_error when called twice on a builder.
void use_systemd(host_builder& builder, systemd_options options = {});

} // namespace hosting
