// host_builder: collects services, options and logging, then builds a host.
#pragma once

#include <hosting/configuration.hpp>
#include <hosting/health.hpp>
#include <hosting/health_endpoint.hpp>
#include <hosting/host_options.hpp>
#include <hosting/logging.hpp>
#include <hosting/services.hpp>
#include <hosting/systemd.hpp>

#include <boost/asio/io_context.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace hosting {

namespace asio = boost::asio;

class host;

class host_builder {
public:
    host_builder(int argc, char** argv);

    // The command line, without the program name.
    const std::vector<std::string>& args() const noexcept { return args_; }

    service_collection& services() noexcept { return services_; }
    host_options& options() noexcept { return options_; }
    logging_options& logging() noexcept { return logging_; }

    // Layered, later sources winning: appsettings.json, then
    // appsettings.{Environment}.json (both optional, in the content root),
    // then environment variables ("__" for ':'), then the command line
    // (--Key=Value, --Key Value, --Section:Key=Value), then the sources added
    // here in code. Malformed files throw configuration_error from
    // create_builder, naming the file, line and column. build() applies
    // Hosting:* to the options (ShutdownTimeoutSeconds,
    // StartupTimeoutSeconds, WorkerThreads, ServicesStartConcurrently,
    // ServicesStopConcurrently, StopWhenAllBackgroundServicesComplete,
    // BackgroundServiceExceptionBehavior) and Logging:LogLevel:* to the
    // logging levels, configuration winning over code, and registers the
    // configuration for services. With console lifetime, SIGHUP reloads it.
    hosting::configuration& configuration() noexcept { return configuration_; }
    const host_environment& environment() const noexcept { return environment_info_; }

    // Embeds the host in a program that owns `io` and the threads that run
    // it. The host then creates no worker threads of its own. `io` must
    // outlive the host.
    host_builder& use_io_context(asio::io_context& io) noexcept;

    // SIGINT, SIGTERM and SIGQUIT start a graceful stop, and a second one
    // during the stop ends the process with 128 + the signal's number. On by
    // default; switch it off when the program handles signals itself.
    host_builder& use_console_lifetime(bool enabled = true) noexcept;

    // Adds a lifetime (see host_lifetime.hpp); they are told about the
    // start and stop in the order they were added.
    host_builder& add_lifetime(std::shared_ptr<host_lifetime> lifetime);

    // Runs as a systemd service: adds a systemd_lifetime, registers the
    // systemd_notifier for services (to send STATUS=), and, when the output
    // goes to the journal and no sinks were set, logs in the journal's
    // format. Without $NOTIFY_SOCKET it does nothing else, so the same
    // program also runs by hand. Without use_systemd() the registered
    // notifier is inactive.
    host_builder& use_systemd(systemd_options options = {});

    // Health checks, publishers and the health options (health.hpp). The
    // host's own entries (services, event loop, readiness) need nothing here.
    health_builder& health() noexcept { return health_; }

    // Serves /health/live, /health/ready, /health and /metrics over HTTP
    // (health_endpoint.hpp). Throws std::invalid_argument for bad options
    // and std::logic_error when called twice.
    host_builder& add_health_endpoint(health_endpoint_options options = {});

    // The environment's name ("Production" unless HOSTING_ENVIRONMENT says
    // otherwise). appsettings.{Environment}.json is chosen when the builder
    // is created, from HOSTING_ENVIRONMENT; setting the name here changes
    // what host_environment and the log report, and the Development default
    // log level, but reads no other file: set HOSTING_ENVIRONMENT for that.
    const std::string& environment_name() const noexcept { return environment_info_.environment_name; }
    host_builder& environment_name(std::string name);

    // Validates the options (std::invalid_argument naming the option),
    // constructs every singleton, then every hosted service in registration
    // order. A builder builds one host; a second build() throws
    // std::logic_error.
    host build();

private:
    void apply_configuration();

    std::vector<std::string> args_;
    service_collection services_;
    host_options options_;
    logging_options logging_;
    asio::io_context* external_io_ = nullptr;
    bool console_lifetime_ = true;
    std::vector<std::shared_ptr<host_lifetime>> lifetimes_;
    std::shared_ptr<systemd_notifier> notifier_;
    health_builder health_;
    std::optional<health_endpoint_options> endpoint_;
    bool built_ = false;
    host_environment environment_info_;
    hosting::configuration configuration_;
};

} // namespace hosting
