#include <hosting/host.hpp>
#include <hosting/host_builder.hpp>

#include "host_core.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <sys/stat.h>
#include <unistd.h>
#include <stdexcept>
#include <string>

namespace hosting {

namespace {
std::string ms(std::chrono::milliseconds value) { return std::to_string(value.count()) + "ms"; }
} // namespace

void host_options::validate() const
{
    if (shutdown_timeout < std::chrono::milliseconds::zero())
        throw std::invalid_argument("host_options: shutdown_timeout must not be negative (got " +
                                    ms(shutdown_timeout) + ")");
    if (shutdown_delay < std::chrono::milliseconds::zero())
        throw std::invalid_argument("host_options: shutdown_delay must not be negative (got " + ms(shutdown_delay) +
                                    ")");
    if (shutdown_delay > std::chrono::milliseconds::zero() && shutdown_delay >= shutdown_timeout)
        throw std::invalid_argument("host_options: shutdown_delay (" + ms(shutdown_delay) +
                                    ") must be shorter than shutdown_timeout (" + ms(shutdown_timeout) +
                                    "): the delay counts inside the shutdown deadline");
    if (startup_timeout && *startup_timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("host_options: startup_timeout must be positive when set (got " +
                                    ms(*startup_timeout) + ")");
    if (worker_threads == 0)
        throw std::invalid_argument("host_options: worker_threads must be at least 1 (got 0)");
    if (background_service_exception_behavior != hosting::background_service_exception_behavior::stop_host &&
        background_service_exception_behavior != hosting::background_service_exception_behavior::ignore)
        throw std::invalid_argument("host_options: background_service_exception_behavior has an invalid value (" +
                                    std::to_string(static_cast<int>(background_service_exception_behavior)) +
                                    ")");
}

namespace {

host_environment make_environment(int argc, char** argv)
{
    host_environment e;
    const char* name = std::getenv("HOSTING_ENVIRONMENT");
    e.environment_name = name && *name ? name : "Production";
    e.application_name = argc > 0 && argv && argv[0] ? std::filesystem::path(argv[0]).filename().string() : "";
    std::error_code ec;
    e.content_root = std::filesystem::current_path(ec).string();
    return e;
}

std::vector<std::string> arguments(int argc, char** argv)
{
    std::vector<std::string> out;
    for (int i = 1; i < argc && argv; ++i)
        out.emplace_back(argv[i]);
    return out;
}

std::optional<spdlog::level::level_enum> parse_level(std::string_view text)
{
    static const std::pair<const char*, spdlog::level::level_enum> names[] = {
        {"trace", spdlog::level::trace},      {"debug", spdlog::level::debug},
        {"information", spdlog::level::info}, {"info", spdlog::level::info},
        {"warning", spdlog::level::warn},     {"warn", spdlog::level::warn},
        {"error", spdlog::level::err},        {"critical", spdlog::level::critical},
        {"none", spdlog::level::off},         {"off", spdlog::level::off},
    };
    for (const auto& [name, level] : names)
        if (detail::key_equals(text, name))
            return level;
    return std::nullopt;
}

// $JOURNAL_STREAM is "device:inode" of the journal's stream; a child that
// inherited the variable but writes elsewhere must not use the format.
bool stderr_is_journal()
{
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (!stream || !*stream)
        return false;
    unsigned long long device = 0, inode = 0;
    if (std::sscanf(stream, "%llu:%llu", &device, &inode) != 2)
        return false;
    struct stat st {};
    if (::fstat(STDERR_FILENO, &st) != 0)
        return false;
    return static_cast<unsigned long long>(st.st_dev) == device && static_cast<unsigned long long>(st.st_ino) == inode;
}

} // namespace

host_builder::host_builder(int argc, char** argv)
    : args_(arguments(argc, argv)),
      environment_info_(make_environment(argc, argv)),
      configuration_(configuration::from({
          json_file_source((std::filesystem::path(environment_info_.content_root) / "appsettings.json").string()),
          json_file_source((std::filesystem::path(environment_info_.content_root) /
                            ("appsettings." + environment_info_.environment_name + ".json"))
                               .string()),
          environment_source(),
          command_line_source(args_),
      }))
{
}

void host_builder::apply_configuration()
{
    auto h = configuration_.section("Hosting");
    auto seconds = [&](const char* key) {
        const double value = h.get<double>(key);
        // A year is more than any host needs; beyond it (or NaN) is a typo.
        if (!(value >= -1e-9 && value <= 365.0 * 24 * 3600))
            throw configuration_error("configuration: key 'Hosting:" + std::string(key) + "' has value \"" +
                                      *h.value(key) + "\", which is not a number of seconds between 0 and a year");
        return std::chrono::milliseconds(static_cast<std::int64_t>(value * 1000.0));
    };
    if (h.value("ShutdownTimeoutSeconds"))
        options_.shutdown_timeout = seconds("ShutdownTimeoutSeconds");
    if (h.value("ShutdownDelaySeconds"))
        options_.shutdown_delay = seconds("ShutdownDelaySeconds");
    if (h.value("StartupTimeoutSeconds"))
        options_.startup_timeout = seconds("StartupTimeoutSeconds");
    if (h.value("WorkerThreads"))
        options_.worker_threads = h.get<std::size_t>("WorkerThreads");
    options_.services_start_concurrently = h.get<bool>("ServicesStartConcurrently", options_.services_start_concurrently);
    options_.services_stop_concurrently = h.get<bool>("ServicesStopConcurrently", options_.services_stop_concurrently);
    options_.stop_when_all_background_services_complete =
        h.get<bool>("StopWhenAllBackgroundServicesComplete", options_.stop_when_all_background_services_complete);
    if (auto b = h.value("BackgroundServiceExceptionBehavior")) {
        if (detail::key_equals(*b, "StopHost") || detail::key_equals(*b, "stop_host"))
            options_.background_service_exception_behavior = background_service_exception_behavior::stop_host;
        else if (detail::key_equals(*b, "Ignore"))
            options_.background_service_exception_behavior = background_service_exception_behavior::ignore;
        else
            throw configuration_error("configuration: key 'Hosting:BackgroundServiceExceptionBehavior' has value \"" +
                                      *b + "\", which is not StopHost or Ignore");
    }

    // Development logs at debug unless configuration says otherwise.
    auto levels = configuration_.section("Logging:LogLevel");
    if (environment_info_.is_development() && !levels.value("Default"))
        logging_.level = spdlog::level::debug;
    for (const auto& category : levels.children()) {
        auto value = levels.value(category);
        if (!value)
            continue; // a section below LogLevel, not a level
        const auto& text = *value;
        auto level = parse_level(text);
        if (!level)
            throw configuration_error("configuration: key 'Logging:LogLevel:" + category + "' has value \"" + text +
                                      "\", which is not a log level (Trace, Debug, Information, Warning, "
                                      "Error, Critical or None)");
        if (detail::key_equals(category, "Default"))
            logging_.level = *level;
        else
            logging_.category_levels[category] = *level;
    }
    if (auto format = configuration_.value("Logging:Console:FormatterName")) {
        if (*format == "json" && logging_.sinks.empty())
            logging_.sinks.push_back(std::make_shared<json_console_sink>());
        else if (*format != "json" && *format != "simple")
            throw configuration_error("configuration: key 'Logging:Console:FormatterName' has value \"" + *format +
                                      "\", which is not simple or json");
    }
}

host_builder& host_builder::use_io_context(asio::io_context& io) noexcept
{
    external_io_ = &io;
    return *this;
}

host_builder& host_builder::use_console_lifetime(bool enabled) noexcept
{
    console_lifetime_ = enabled;
    return *this;
}

host_builder& host_builder::add_lifetime(std::shared_ptr<host_lifetime> lifetime)
{
    if (!lifetime)
        throw std::invalid_argument("host_builder: add_lifetime got a null lifetime");
    lifetimes_.push_back(std::move(lifetime));
    return *this;
}

host_builder& host_builder::use_systemd(systemd_options options)
{
    if (notifier_)
        throw std::logic_error("host_builder: use_systemd() called twice");
    notifier_ = std::make_shared<systemd_notifier>();
    return add_lifetime(std::make_shared<systemd_lifetime>(notifier_, options));
}

host_builder& host_builder::add_health_endpoint(health_endpoint_options options)
{
    if (endpoint_)
        throw std::logic_error("host_builder: add_health_endpoint() called twice");
    options.validate();
    endpoint_ = std::move(options);
    return *this;
}

host_builder& host_builder::environment_name(std::string name)
{
    if (name.empty())
        throw std::invalid_argument("host_builder: environment_name must not be empty");
    environment_info_.environment_name = std::move(name);
    return *this;
}

host host_builder::build()
{
    if (built_)
        throw std::logic_error("host_builder: build() called twice; a builder builds one host");
    apply_configuration();
    options_.validate();
    health_.validate();
    built_ = true;
    if (notifier_) {
        const bool to_journal = stderr_is_journal() || notifier_->active();
        if (to_journal && logging_.sinks.empty())
            logging_.sinks.push_back(std::make_shared<journal_sink>());
    }
    services_.add_singleton<hosting::configuration>(std::make_shared<hosting::configuration>(configuration_));
    services_.add_singleton<host_environment>(std::make_shared<host_environment>(environment_info_));
    services_.add_singleton<host_options>(std::make_shared<host_options>(options_));
    // Services may always ask for the notifier; it only speaks under systemd.
    services_.add_singleton<systemd_notifier>(notifier_ ? notifier_ : std::make_shared<systemd_notifier>(""));
    auto core = std::make_shared<detail::host_core>(
        detail::host_core::settings{options_, logging_, external_io_, console_lifetime_,
                                    environment_info_.environment_name, lifetimes_, configuration_, health_.options_,
                                    std::move(health_.checks_), std::move(health_.publishers_), endpoint_});
    auto hosted = std::move(services_.hosted_);
    core->build(std::move(services_), std::move(hosted));
    return host(std::move(core));
}

host_builder host::create_builder(int argc, char** argv) { return host_builder(argc, argv); }

host::host(std::shared_ptr<detail::host_core> core) : core_(std::move(core)) {}
host::host(host&&) noexcept = default;

host& host::operator=(host&& other) noexcept
{
    if (this != &other) {
        if (core_)
            core_->close();
        core_ = std::move(other.core_);
    }
    return *this;
}

host::~host()
{
    if (core_)
        core_->close();
}

int host::run() { return core_->run(); }
asio::awaitable<void> host::start() { return core_->start(); }
asio::awaitable<void> host::stop() { return core_->stop(); }
void host::start_blocking() { core_->start_blocking(); }
void host::stop_blocking() { core_->stop_blocking(); }
int host::exit_code() const noexcept { return core_->exit_code(); }
service_provider& host::services() noexcept { return core_->provider(); }
application_lifetime& host::lifetime() noexcept { return core_->lifetime(); }
std::vector<service_status> host::service_statuses() const { return core_->statuses(); }

asio::awaitable<int> host::wait_for_shutdown()
{
    return core_->wait_for_shutdown();
}

} // namespace hosting
