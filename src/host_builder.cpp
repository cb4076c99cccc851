#include <hosting/host.hpp>
#include <hosting/host_builder.hpp>

#include "host_core.hpp"

#include <cstdlib>
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

host_builder::host_builder(int argc, char** argv)
{
    for (int i = 1; i < argc && argv; ++i)
        args_.emplace_back(argv[i]);
    const char* environment = std::getenv("HOSTING_ENVIRONMENT");
    environment_ = environment && *environment ? environment : "Production";
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

host_builder& host_builder::environment_name(std::string name)
{
    if (name.empty())
        throw std::invalid_argument("host_builder: environment_name must not be empty");
    environment_ = std::move(name);
    return *this;
}

host host_builder::build()
{
    if (built_)
        throw std::logic_error("host_builder: build() called twice; a builder builds one host");
    options_.validate();
    built_ = true;
    if (notifier_) {
        const bool to_journal = std::getenv("JOURNAL_STREAM") || notifier_->active();
        if (to_journal && logging_.sinks.empty())
            logging_.sinks.push_back(std::make_shared<journal_sink>());
    }
    // Services may always ask for the notifier; it only speaks under systemd.
    services_.add_singleton<systemd_notifier>(notifier_ ? notifier_ : std::make_shared<systemd_notifier>(""));
    auto core = std::make_shared<detail::host_core>(
        detail::host_core::settings{options_, logging_, external_io_, console_lifetime_, environment_, lifetimes_});
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
