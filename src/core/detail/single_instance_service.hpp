// What single_instance() turns a registration into: a background service
// that runs the registered one only while this node holds its lease.
#pragma once

#include <hosting/core/background_service.hpp>
#include <hosting/core/services.hpp>
#include <hosting/core/single_instance.hpp>

#include <functional>
#include <memory>
#include <string>

namespace hosting::detail {

class single_instance_service final : public background_service {
public:
    using hosted_factory = std::function<std::shared_ptr<hosted_service>(service_provider&)>;

    single_instance_service(std::shared_ptr<instance_coordinator> coordinator, std::string lease_name,
                            hosted_factory factory, service_provider& provider);

private:
    asio::awaitable<void> execute(std::stop_token stopping) override;
    static asio::awaitable<void> release(instance_lease& lease);

    std::shared_ptr<instance_coordinator> coordinator_;
    std::string lease_name_;
    hosted_factory factory_;
    service_provider& provider_;
};

} // namespace hosting::detail
