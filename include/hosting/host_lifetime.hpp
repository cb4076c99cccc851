// host_lifetime: what ties a host to whatever runs it.
#pragma once

#include <hosting/host_options.hpp>
#include <hosting/lifetime.hpp>
#include <hosting/logging.hpp>

#include <boost/asio/any_io_executor.hpp>

namespace hosting {

namespace asio = boost::asio;

// What a host_lifetime may use of the host. Valid from attach() until the
// host is destroyed.
struct host_lifetime_context {
    application_lifetime& lifetime;
    asio::any_io_executor loop; // the services' event loop
    logger_factory& loggers;
    const host_options& options;
};

// A service manager's view of the host: a console, systemd, and (where it can
// be built) the Windows service control manager are implementations of it,
// added with host_builder::add_lifetime (or use_systemd). The host calls the
// hooks in this order, each once. They must return quickly; an exception
// from one is logged and ignored.
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
    // The stop begins (on the thread that requested it; the event loop may
    // be blocked at that moment).
    virtual void stopping() {}
    // The stop has ended, or its deadline passed (exit_code is run()'s).
    virtual void stopped(int /*exit_code*/) {}
    // Around a configuration reload (SIGHUP), whether it succeeded or not.
    virtual void reloading() {}
    virtual void reloaded() {}
};

} // namespace hosting
