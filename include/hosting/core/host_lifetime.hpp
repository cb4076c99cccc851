// host_lifetime: what ties a host to whatever runs it (a console, systemd,
// a service manager), and what features use to follow the host's life.
#pragma once

#include <hosting/core/application_lifetime.hpp>
#include <hosting/core/host_options.hpp>
#include <hosting/core/service_status.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <functional>
#include <vector>

namespace hosting {

namespace asio = boost::asio;

class logger_factory;

// What a host_lifetime may use of the host. Valid from attach() until the
// host is destroyed.
struct host_lifetime_context {
    application_lifetime& lifetime;
    asio::any_io_executor loop; // the services' event loop
    logger_factory& loggers;
    const host_options& options;
    // A snapshot of every hosted service, in start order (registration order,
    // starts_first() ones first). Thread-safe.
    std::function<std::vector<service_status>()> service_statuses;
    // Reloads the host's configuration and calls its on_change subscribers,
    // telling every lifetime's reloading() and reloaded() around it; errors
    // are logged, never thrown. From any thread but the event loop's (what
    // a SIGHUP does under console_lifetime).
    std::function<void()> reload_configuration;
};

// A service manager's view of the host: console_lifetime, systemd_lifetime
// and (where it can be built) the Windows service control manager implement
// it; features such as health use it to follow the host's life. Added with
// host_builder::add_lifetime. The host calls the hooks in this order, each
// once. They must return quickly; an exception from one is logged and
// ignored.
class host_lifetime {
public:
    virtual ~host_lifetime() = default;

    // During build(), before any service is constructed.
    virtual void attach(const host_lifetime_context&) {}
    // The start begins (on the thread that starts the host).
    virtual void starting() {}
    // Every service has started and application_started has fired (on the
    // host's event loop).
    virtual void started() {}
    // A stop was requested (on the thread that requested it; the event loop
    // may be blocked at that moment).
    virtual void stopping() {}
    // The stop has ended, or its deadline passed (exit_code is run()'s).
    virtual void stopped(int /*exit_code*/) {}
    // Around a configuration reload, whether it succeeded or not.
    virtual void reloading() {}
    virtual void reloaded() {}
};

} // namespace hosting
