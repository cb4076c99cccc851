// host_builder: collects services, options, logging and features, then
// builds a host.
#pragma once

#include <hosting/core/host_environment.hpp>
#include <hosting/core/host_options.hpp>
#include <hosting/core/services.hpp>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace hosting {

namespace asio = boost::asio;

class host;
class host_lifetime;
class configuration;
struct logging_options;

namespace detail {
struct builder_state;
}

class host_builder {
public:
    host_builder(int argc, char** argv);
    host_builder(host_builder&&) noexcept;
    host_builder& operator=(host_builder&&) noexcept;
    ~host_builder();

    // The command line, without the program name.
    const std::vector<std::string>& args() const noexcept;

    service_collection& services() noexcept;
    host_options& options() noexcept;
    // The levels, sinks and pattern (<hosting/logging/logging.hpp>).
    logging_options& logging() noexcept;

    // Layered, later sources winning: appsettings.json, then
    // appsettings.{Environment}.json (both optional, in the content root),
    // then environment variables ("__" for ':'), then the command line
    // (--Key=Value, --Key Value, --Section:Key=Value), then the sources added
    // here in code (<hosting/configuration/configuration.hpp>). Malformed
    // files throw configuration_error from create_builder, naming the file,
    // line and column. build() applies Hosting:* to the options
    // (ShutdownTimeoutSeconds, ShutdownDelaySeconds, StartupTimeoutSeconds,
    // WorkerThreads, ServicesStartConcurrently, ServicesStopConcurrently,
    // StopWhenAllBackgroundServicesComplete,
    // BackgroundServiceExceptionBehavior) and Logging:LogLevel:* to the
    // logging levels, configuration winning over code, and registers the
    // configuration for services. With the console lifetime, SIGHUP
    // reloads it.
    hosting::configuration& configuration() noexcept;
    const host_environment& environment() const noexcept;

    // The environment's name ("Production" unless HOSTING_ENVIRONMENT says
    // otherwise). appsettings.{Environment}.json is chosen when the builder
    // is created, from HOSTING_ENVIRONMENT; setting the name here changes
    // what host_environment and the log report, and the Development default
    // log level, but reads no other file: set HOSTING_ENVIRONMENT for that.
    const std::string& environment_name() const noexcept;
    host_builder& environment_name(std::string name);

    // Embeds the host in a program that owns `io` and the threads that run
    // it. The host then creates no worker threads of its own. `io` must
    // outlive the host.
    host_builder& use_io_context(asio::io_context& io) noexcept;

    // The console_lifetime (console_lifetime.hpp): SIGINT, SIGTERM and
    // SIGQUIT stop gracefully, a second one exits at once, SIGHUP reloads.
    // On by default; switch it off when the program handles signals itself.
    host_builder& use_console_lifetime(bool enabled = true) noexcept;

    // Adds a lifetime (host_lifetime.hpp); lifetimes are told about the
    // start and stop in the order they were added (the console lifetime
    // first). Throws std::invalid_argument for a null one.
    host_builder& add_lifetime(std::shared_ptr<host_lifetime> lifetime);

    // --- For features (health, systemd, jobs, ...), which extend the
    // builder from outside rather than being known to it.

    // The one T of this builder, created on first use as T(host_builder&)
    // when that constructor exists, else T(). A feature keeps what it
    // collects before build() here (checks, routes, options) and, from its
    // constructor, registers an on_build hook to act on it.
    template <class T>
    T& feature()
    {
        if (void* existing = find_feature(typeid(T)))
            return *static_cast<T*>(existing);
        std::shared_ptr<T> made;
        if constexpr (std::is_constructible_v<T, host_builder&>)
            made = std::make_shared<T>(*this);
        else
            made = std::make_shared<T>();
        T& out = *made;
        add_feature(typeid(T), std::move(made));
        return out;
    }
    template <class T>
    bool has_feature() const noexcept
    {
        return find_feature(typeid(T)) != nullptr;
    }

    // Runs `hook(*this)` inside build(), after the configuration has been
    // applied and the options validated, before any service is constructed,
    // in the order the hooks were added. A hook may register services,
    // singletons and lifetimes, and change the logging options.
    host_builder& on_build(std::function<void(host_builder&)> hook);

    // Validates the options (std::invalid_argument naming the option), runs
    // the on_build hooks, constructs every singleton, then every hosted
    // service in start order (registration order, starts_first() first). A
    // builder builds one host; a second build() throws std::logic_error.
    // Afterwards the builder holds nothing of the host, and may outlive it.
    host build();

private:
    void* find_feature(const std::type_info& type) const noexcept;
    void add_feature(const std::type_info& type, std::shared_ptr<void> feature);

    std::unique_ptr<detail::builder_state> state_;
};

} // namespace hosting
