#include <hosting/core/services.hpp>

#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace hosting {

std::string_view to_string(service_state state) noexcept
{
    switch (state) {
    case service_state::not_started: return "not_started";
    case service_state::starting: return "starting";
    case service_state::running: return "running";
    case service_state::stopping: return "stopping";
    case service_state::stopped: return "stopped";
    case service_state::completed: return "completed";
    case service_state::faulted: return "faulted";
    }
    return "unknown";
}

namespace detail {

std::string demangle(const std::type_info& type)
{
    int status = 0;
    std::unique_ptr<char, void (*)(void*)> name{abi::__cxa_demangle(type.name(), nullptr, nullptr, &status),
                                                std::free};
    return status == 0 && name ? std::string(name.get()) : std::string(type.name());
}

} // namespace detail

hosted_service_registration
service_collection::add_hosted(std::shared_ptr<const std::string> name,
                               std::function<std::shared_ptr<hosted_service>(service_provider&)> factory,
                               bool background)
{
    if (!hosted_)
        hosted_ = std::make_shared<detail::hosted_descriptors>();
    auto& descriptor = hosted_->items.emplace_back();
    descriptor.name = std::move(name);
    descriptor.factory = std::move(factory);
    descriptor.background = background;
    return hosted_service_registration{hosted_, hosted_->items.size() - 1};
}

detail::hosted_descriptor& hosted_service_registration::descriptor()
{
    if (list_->built)
        throw std::logic_error("hosted_service_registration: the host was already built; adjust a registration "
                               "before build()");
    return list_->items[index_];
}

service_collection& service_collection::add(const std::type_info& key, std::string name,
                                             std::function<std::shared_ptr<void>(service_provider&)> factory)
{
    std::type_index index(key);
    if (singletons_.contains(index))
        throw std::invalid_argument("service_collection: " + name + " is already registered");
    singletons_.emplace(index, detail::singleton_descriptor{std::move(name), std::move(factory)});
    singleton_order_.push_back(index);
    return *this;
}

service_provider::service_provider(service_collection registrations)
{
    for (auto& [key, descriptor] : registrations.singletons_)
        entries_.emplace(key, entry{std::move(descriptor), nullptr, false});
    order_ = std::move(registrations.singleton_order_);
}

service_provider::~service_provider()
{
    // Reverse construction order, the instance and every other reference
    // the provider holds to it (a registered shared_ptr sits in its factory
    // too): a singleton may use the ones it was built from until it dies.
    while (!constructed_.empty()) {
        auto& e = entries_.at(constructed_.back());
        e.instance.reset();
        e.descriptor.factory = nullptr;
        constructed_.pop_back();
    }
}

void service_provider::construct_all()
{
    for (auto key : order_)
        instance_of(*entries_.find(key));
}

void* service_provider::resolve(const std::type_info& type, std::string (*name)(), bool required)
{
    auto it = entries_.find(std::type_index(type));
    if (it == entries_.end()) {
        if (!required)
            return nullptr;
        std::string message = "service_provider: no service registered for " + name();
        if (!construction_stack_.empty())
            message += " (needed by " + entries_.at(construction_stack_.back()).descriptor.type_name + ")";
        throw service_not_found(message);
    }
    return instance_of(*it);
}

void* service_provider::instance_of(std::pair<const std::type_index, entry>& item)
{
    entry& e = item.second;
    if (e.instance)
        return e.instance.get();
    if (e.constructing) {
        std::string cycle;
        for (auto key : construction_stack_)
            cycle += entries_.at(key).descriptor.type_name + " -> ";
        throw std::logic_error("service_provider: dependency cycle: " + cycle + e.descriptor.type_name);
    }
    e.constructing = true;
    construction_stack_.push_back(item.first);
    try {
        e.instance = e.descriptor.factory(*this);
    } catch (...) {
        construction_stack_.pop_back();
        e.constructing = false;
        throw;
    }
    construction_stack_.pop_back();
    e.constructing = false;
    constructed_.push_back(item.first);
    return e.instance.get();
}

} // namespace hosting

namespace hosting {

void restart_policy::validate() const
{
    auto fail = [](const std::string& what) { throw std::invalid_argument("restart_policy: " + what); };
    if (mode != restart_mode::never && mode != restart_mode::on_failure && mode != restart_mode::always)
        fail("mode has an invalid value (" + std::to_string(static_cast<int>(mode)) + ")");
    if (initial_delay < std::chrono::milliseconds::zero())
        fail("initial_delay must not be negative");
    if (max_delay < initial_delay)
        fail("max_delay must not be shorter than initial_delay");
    if (!(multiplier >= 1.0) || !std::isfinite(multiplier))
        fail("multiplier must be at least 1");
    if (!(jitter >= 0.0 && jitter <= 1.0))
        fail("jitter must be between 0 and 1");
    if (burst == 0)
        fail("burst must be at least 1 (use restart_mode::never for no restarts)");
    if (window <= std::chrono::milliseconds::zero())
        fail("window must be positive");
}

} // namespace hosting
