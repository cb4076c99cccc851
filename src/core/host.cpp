#include <hosting/core/host.hpp>

#include "core/detail/host_core.hpp"

namespace hosting {

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
