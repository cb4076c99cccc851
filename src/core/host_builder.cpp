#include <hosting/core/host_builder.hpp>

#include <hosting/configuration/configuration.hpp>
#include <hosting/core/console_lifetime.hpp>
#include <hosting/core/host.hpp>
#include <hosting/logging/logging.hpp>
#include <hosting/logging/sinks.hpp>

#include "core/detail/host_core.hpp"
#ifdef _WIN32
#include "core/detail/windows_process.hpp"
#endif

#include <spdlog/common.h>

#include <cstdlib>
#include <filesystem>
#include <utility>
#include <stdexcept>
#include <string>

namespace hosting {

namespace {

host_environment make_environment(int argc, char** argv)
{
    host_environment e;
    const char* name = std::getenv("HOSTING_ENVIRONMENT");
    e.environment_name = name && *name ? name : "Production";
    e.application_name = argc > 0 && argv && argv[0] ? std::filesystem::path(argv[0]).filename().string() : "";
    std::error_code ec;
    e.content_root = std::filesystem::current_path(ec).string();
#ifdef _WIN32
    // A service starts in the system's folder; its settings are beside it
    // (what .NET's builder does too).
    if (detail::started_by_service_control_manager())
        e.content_root = detail::program_folder();
#endif
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

} // namespace

namespace detail {

struct builder_state {
    builder_state(int argc, char** argv)
        : args(arguments(argc, argv)),
          environment(make_environment(argc, argv)),
          config(configuration::from({
              json_file_source((std::filesystem::path(environment.content_root) / "appsettings.json").string()),
              json_file_source((std::filesystem::path(environment.content_root) /
                                ("appsettings." + environment.environment_name + ".json"))
                                   .string()),
              environment_source(),
              command_line_source(args),
          }))
    {
    }

    std::vector<std::string> args;
    service_collection services;
    host_options options;
    logging_options logging;
    asio::io_context* external_io = nullptr;
    bool console_lifetime = true;
    std::vector<std::shared_ptr<host_lifetime>> lifetimes;
    std::vector<std::pair<const std::type_info*, std::shared_ptr<void>>> features;
    std::vector<std::function<void(host_builder&)>> build_hooks;
    bool built = false;
    host_environment environment;
    hosting::configuration config;
};

} // namespace detail

host_builder::host_builder(int argc, char** argv) : state_(std::make_unique<detail::builder_state>(argc, argv)) {}
host_builder::host_builder(host_builder&&) noexcept = default;
host_builder& host_builder::operator=(host_builder&&) noexcept = default;
host_builder::~host_builder() = default;

const std::vector<std::string>& host_builder::args() const noexcept { return state_->args; }
service_collection& host_builder::services() noexcept { return state_->services; }
host_options& host_builder::options() noexcept { return state_->options; }
logging_options& host_builder::logging() noexcept { return state_->logging; }
hosting::configuration& host_builder::configuration() noexcept { return state_->config; }
const host_environment& host_builder::environment() const noexcept { return state_->environment; }
const std::string& host_builder::environment_name() const noexcept { return state_->environment.environment_name; }

void* host_builder::find_feature(const std::type_info& type) const noexcept
{
    for (const auto& [t, f] : state_->features)
        if (*t == type)
            return f.get();
    return nullptr;
}

void host_builder::add_feature(const std::type_info& type, std::shared_ptr<void> feature)
{
    state_->features.emplace_back(&type, std::move(feature));
}

host_builder& host_builder::on_build(std::function<void(host_builder&)> hook)
{
    if (!hook)
        throw std::invalid_argument("host_builder: on_build got an empty hook");
    state_->build_hooks.push_back(std::move(hook));
    return *this;
}

static void apply_configuration(detail::builder_state& st);

void apply_configuration(detail::builder_state& st)
{
    auto h = st.config.section("Hosting");
    auto seconds = [&](const char* key) {
        const double value = h.get<double>(key);
        // A year is more than any host needs; beyond it (or NaN) is a typo.
        if (!(value >= -1e-9 && value <= 365.0 * 24 * 3600))
            throw configuration_error("configuration: key 'Hosting:" + std::string(key) + "' has value \"" +
                                      *h.value(key) + "\", which is not a number of seconds between 0 and a year");
        return std::chrono::milliseconds(static_cast<std::int64_t>(value * 1000.0));
    };
    if (h.value("ShutdownTimeoutSeconds"))
        st.options.shutdown_timeout = seconds("ShutdownTimeoutSeconds");
    if (h.value("ShutdownDelaySeconds"))
        st.options.shutdown_delay = seconds("ShutdownDelaySeconds");
    if (h.value("StartupTimeoutSeconds"))
        st.options.startup_timeout = seconds("StartupTimeoutSeconds");
    if (h.value("WorkerThreads"))
        st.options.worker_threads = h.get<std::size_t>("WorkerThreads");
    st.options.services_start_concurrently = h.get<bool>("ServicesStartConcurrently", st.options.services_start_concurrently);
    st.options.services_stop_concurrently = h.get<bool>("ServicesStopConcurrently", st.options.services_stop_concurrently);
    st.options.stop_when_all_background_services_complete =
        h.get<bool>("StopWhenAllBackgroundServicesComplete", st.options.stop_when_all_background_services_complete);
    if (auto b = h.value("BackgroundServiceExceptionBehavior")) {
        if (detail::key_equals(*b, "StopHost") || detail::key_equals(*b, "stop_host"))
            st.options.background_service_exception_behavior = background_service_exception_behavior::stop_host;
        else if (detail::key_equals(*b, "Ignore"))
            st.options.background_service_exception_behavior = background_service_exception_behavior::ignore;
        else
            throw configuration_error("configuration: key 'Hosting:BackgroundServiceExceptionBehavior' has value \"" +
                                      *b + "\", which is not StopHost or Ignore");
    }

    // Development logs at debug unless configuration says otherwise.
    auto levels = st.config.section("Logging:LogLevel");
    if (st.environment.is_development() && !levels.value("Default"))
        st.logging.level = spdlog::level::debug;
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
            st.logging.level = *level;
        else
            st.logging.category_levels[category] = *level;
    }
    if (auto format = st.config.value("Logging:Console:FormatterName")) {
        if (*format == "json" && st.logging.sinks.empty())
            st.logging.sinks.push_back(std::make_shared<json_console_sink>());
        else if (*format != "json" && *format != "simple")
            throw configuration_error("configuration: key 'Logging:Console:FormatterName' has value \"" + *format +
                                      "\", which is not simple or json");
    }
}

host_builder& host_builder::use_io_context(asio::io_context& io) noexcept
{
    state_->external_io = &io;
    return *this;
}

host_builder& host_builder::use_console_lifetime(bool enabled) noexcept
{
    state_->console_lifetime = enabled;
    return *this;
}

host_builder& host_builder::add_lifetime(std::shared_ptr<host_lifetime> lifetime)
{
    if (!lifetime)
        throw std::invalid_argument("host_builder: add_lifetime got a null lifetime");
    state_->lifetimes.push_back(std::move(lifetime));
    return *this;
}

host_builder& host_builder::environment_name(std::string name)
{
    if (name.empty())
        throw std::invalid_argument("host_builder: environment_name must not be empty");
    state_->environment.environment_name = std::move(name);
    return *this;
}

host host_builder::build()
{
    auto& st = *state_;
    if (st.built)
        throw std::logic_error("host_builder: build() called twice; a builder builds one host");
    apply_configuration(st);
    st.options.validate();
    st.built = true;
    // A hook may add hooks (a feature that uses another): run until none is left.
    for (std::size_t i = 0; i < st.build_hooks.size(); ++i) {
        auto hook = st.build_hooks[i];
        hook(*this);
    }
    if (st.console_lifetime)
        st.lifetimes.insert(st.lifetimes.begin(), std::make_shared<console_lifetime>());
    st.services.add_singleton<hosting::configuration>(std::make_shared<hosting::configuration>(st.config));
    st.services.add_singleton<host_environment>(std::make_shared<host_environment>(st.environment));
    st.services.add_singleton<host_options>(std::make_shared<host_options>(st.options));
    auto core = std::make_shared<detail::host_core>(detail::host_core::settings{
        st.options, st.logging, st.external_io, st.console_lifetime, st.environment.environment_name,
        st.environment.content_root, std::exchange(st.lifetimes, {}),
        st.config});
    auto hosted = std::exchange(st.services.hosted_, nullptr);
    // The builder may outlive the host, so it keeps nothing of it (a
    // feature's state holds objects of the host's loop); declared after
    // `core`, the features die before it even when build() throws.
    auto features = std::move(st.features);
    st.build_hooks.clear();
    core->build(std::move(st.services), std::move(hosted));
    return host(std::move(core));
}

} // namespace hosting
