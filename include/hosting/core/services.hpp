// The service registry: what services are built from and what they can ask for.
#pragma once

#include <hosting/core/background_service.hpp>
#include <hosting/core/hosted_service.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeindex>
#include <typeinfo>
#include <unordered_map>
#include <utility>
#include <vector>

namespace hosting {

class service_provider;

// Thrown by service_provider::get<T>() (and so by build(), when a service's
// constructor asks for something nobody registered). The message names T.
class service_not_found : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

namespace detail {

std::string demangle(const std::type_info& type);

template <class T>
std::string type_name()
{
    // Demangling is slow enough to matter when registering thousands of
    // services of one type.
    static const std::string name = demangle(typeid(T));
    return name;
}

template <class T, class... Args>
std::shared_ptr<T> construct(service_provider& provider, Args&... args)
{
    if constexpr (std::is_constructible_v<T, service_provider&, Args&...>)
        return std::make_shared<T>(provider, args...);
    else {
        static_assert(std::is_constructible_v<T, Args&...>,
                      "hosting: the type can be constructed neither from (service_provider&, args...) nor from (args...)");
        return std::make_shared<T>(args...);
    }
}

struct singleton_descriptor {
    std::string type_name;
    std::function<std::shared_ptr<void>(service_provider&)> factory;
};

template <class T>
const std::shared_ptr<const std::string>& shared_type_name()
{
    // One string for every instance of T, however many are registered.
    static const auto name = std::make_shared<const std::string>(type_name<T>());
    return name;
}

} // namespace detail

// When the host restarts a background_service whose execute ended.
enum class restart_mode {
    never,      // the default: an ended service stays ended
    on_failure, // after execute faulted
    always,     // after execute faulted or returned by itself
};

// A supervision policy, like systemd's Restart=, RestartSec= and
// StartLimitBurst=/StartLimitIntervalSec=. The n-th restart within `window`
// waits initial_delay * multiplier^(n-1), capped at max_delay, then spread by
// +-jitter (a fraction) so that many services do not restart in step. When
// `burst` restarts have happened within `window`, the next end is final:
// host_options::background_service_exception_behavior applies to it.
//
// A restart builds a new instance with the registration's factory (the same
// constructor and arguments as the first one), launches its execute on the
// same strand, and then destroys the old instance, so nothing of its state
// carries over. (The new one exists before the old one dies: a resource the
// constructor takes exclusively belongs in execute.)
struct restart_policy {
    restart_mode mode = restart_mode::never;
    std::chrono::milliseconds initial_delay{std::chrono::seconds(1)};
    std::chrono::milliseconds max_delay{std::chrono::minutes(1)};
    double multiplier = 2.0;
    double jitter = 0.2;
    std::size_t burst = 5;
    std::chrono::milliseconds window{std::chrono::minutes(5)};

    static restart_policy never() { return {}; }
    static restart_policy on_failure() { return {restart_mode::on_failure}; }
    static restart_policy always() { return {restart_mode::always}; }

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

namespace detail {
struct hosted_descriptor {
    std::shared_ptr<const std::string> name;
    std::function<std::shared_ptr<hosted_service>(service_provider&)> factory;
    std::shared_ptr<const restart_policy> restart; // null: never
    std::shared_ptr<const std::string> single_instance; // the lease's name (empty: the service's); null: every node
    bool starts_first = false;
    bool background = false; // the factory makes a background_service
};
// Registrations lie side by side, several to a block, and build() frees
// each block as soon as it has read it: ten thousand registrations then
// leave no holes between the records the running host keeps.
struct hosted_descriptors {
    std::deque<hosted_descriptor> items;
    bool built = false;
};
} // namespace detail

// What add_hosted_service returns, to adjust that one registration before
// the host is built. Adding more services never invalidates it; once
// build() has read the registrations, each adjustment throws
// std::logic_error, since it could no longer take effect.
class hosted_service_registration {
public:
    hosted_service_registration(std::shared_ptr<detail::hosted_descriptors> list, std::size_t index)
        : list_(std::move(list)), index_(index)
    {
    }

    // The name used in logs and statuses; the type's name by default.
    hosted_service_registration& name(std::string value)
    {
        descriptor().name = std::make_shared<const std::string>(std::move(value));
        return *this;
    }

    // Restarts the service when its execute ends, per the policy; only a
    // background_service can be restarted (build() throws
    // std::invalid_argument naming any other). Validates the policy at once.
    hosted_service_registration& restart(restart_policy policy)
    {
        policy.validate();
        auto& d = descriptor();
        d.restart = policy.mode == restart_mode::never ? nullptr
                                                        : std::make_shared<const restart_policy>(std::move(policy));
        return *this;
    }
    hosted_service_registration& restart(restart_mode mode) { return restart(restart_policy{mode}); }

    // Starts the service before every service registered without it, and
    // stops it after them all, even when services start or stop
    // concurrently: for what the others and the outside world rely on
    // during the whole start and stop (the HTTP server that probes watch).
    // Services marked so keep their registration order among themselves.
    hosted_service_registration& starts_first()
    {
        descriptor().starts_first = true;
        return *this;
    }

    // Runs the service's execute on one node at a time, among all the
    // processes that share the host's coordination storage: this node runs
    // it only while it holds the lease `lease_name` (the service's name when
    // empty), and stops it (its stop token fires, its awaited operations
    // are cancelled) before the lease can pass to another node. Each hold
    // builds a new instance with the registration's factory; inside
    // execute, co_await fencing_token() gives the hold's term
    // (single_instance.hpp). A restart policy applies to the whole: an
    // execute that faults gives the lease up and is restarted per the
    // policy. build() throws std::invalid_argument when the service is not
    // a background_service or when no coordination is registered (see
    // hosting::coordination::add_coordination).
    hosted_service_registration& single_instance(std::string lease_name = {})
    {
        descriptor().single_instance = std::make_shared<const std::string>(std::move(lease_name));
        return *this;
    }

private:
    detail::hosted_descriptor& descriptor();

    std::shared_ptr<detail::hosted_descriptors> list_;
    std::size_t index_;
};

// Collects registrations before the host is built. Not thread-safe; it is
// meant to be filled by one thread before build().
class service_collection {
public:
    // Registers a hosted service, constructed by build() in registration
    // order as T(service_provider&, args...) when that constructor exists,
    // else T(args...). Registering the same type twice gives two instances,
    // started and stopped independently. The arguments are copied.
    template <std::derived_from<hosted_service> T, class... Args>
    hosted_service_registration add_hosted_service(Args&&... args)
    {
        return add_hosted(detail::shared_type_name<T>(),
                          [... captured = std::forward<Args>(args)](service_provider& provider) mutable {
                              return std::shared_ptr<hosted_service>(detail::construct<T>(provider, captured...));
                          },
                          std::derived_from<T, background_service>);
    }

    // Registers a hosted service made by `factory(provider)` at build(), for
    // a service that is also reachable another way (a singleton the factory
    // returns, say). A restart policy calls the factory again, so it must
    // then make a new instance each time.
    template <std::derived_from<hosted_service> T, class F>
        requires std::is_invocable_r_v<std::shared_ptr<T>, F&, service_provider&>
    hosted_service_registration add_hosted_service_factory(F factory)
    {
        return add_hosted(detail::shared_type_name<T>(),
                          [factory = std::move(factory)](service_provider& provider) mutable {
                              return std::shared_ptr<hosted_service>(factory(provider));
                          },
                          std::derived_from<T, background_service>);
    }

    // Registers one shared instance of T, built by build() (before the hosted
    // services) as T(service_provider&, args...) or T(args...). Registering a
    // type twice throws std::invalid_argument naming it.
    template <class T, class... Args>
        requires(!(sizeof...(Args) == 1 && (std::is_same_v<std::remove_cvref_t<Args>, std::shared_ptr<T>> && ...)))
    service_collection& add_singleton(Args&&... args)
    {
        return add(typeid(T), detail::type_name<T>(),
                   [... captured = std::forward<Args>(args)](service_provider& provider) mutable {
                       return std::shared_ptr<void>(detail::construct<T>(provider, captured...));
                   });
    }

    // Registers Impl, resolvable as Interface.
    template <class Interface, std::derived_from<Interface> Impl>
        requires(!std::is_same_v<Interface, Impl>)
    service_collection& add_singleton()
    {
        return add(typeid(Interface), detail::type_name<Interface>(), [](service_provider& provider) {
            std::shared_ptr<Interface> made = detail::construct<Impl>(provider);
            return std::shared_ptr<void>(std::move(made));
        });
    }

    // Registers a factory that build() calls once, with the provider, to
    // make the shared instance of T (for instances that need something only
    // the built host has).
    template <class T, class F>
        requires std::is_invocable_r_v<std::shared_ptr<T>, F&, service_provider&>
    service_collection& add_singleton_factory(F factory)
    {
        return add(typeid(T), detail::type_name<T>(),
                   [factory = std::move(factory)](service_provider& provider) mutable {
                       std::shared_ptr<T> made = factory(provider);
                       if (!made)
                           throw std::logic_error("service_collection: the factory of " + detail::type_name<T>() +
                                                  " returned null");
                       return std::shared_ptr<void>(std::move(made));
                   });
    }

    // Registers an existing instance; the host shares ownership of it.
    template <class T>
    service_collection& add_singleton(std::shared_ptr<T> instance)
    {
        if (!instance)
            throw std::invalid_argument("service_collection: add_singleton got a null shared_ptr<" +
                                        detail::type_name<T>() + ">");
        return add(typeid(T), detail::type_name<T>(),
                   [instance](service_provider&) { return std::shared_ptr<void>(instance); });
    }

    template <class T>
    bool contains() const
    {
        return singletons_.contains(std::type_index(typeid(T)));
    }

    std::size_t hosted_service_count() const noexcept { return hosted_ ? hosted_->items.size() : 0; }

private:
    friend class service_provider;
    friend class host_builder;

    service_collection& add(const std::type_info& key, std::string name,
                            std::function<std::shared_ptr<void>(service_provider&)> factory);
    hosted_service_registration add_hosted(std::shared_ptr<const std::string> name,
                                           std::function<std::shared_ptr<hosted_service>(service_provider&)> factory,
                                           bool background);

    std::unordered_map<std::type_index, detail::singleton_descriptor> singletons_;
    std::vector<std::type_index> singleton_order_;
    std::shared_ptr<detail::hosted_descriptors> hosted_; // made by the first registration
};

// Resolves the singletons registered on a service_collection. Every singleton
// is constructed by host_builder::build(), so get() and try_get() are
// read-only afterwards and safe from any thread.
class service_provider {
public:
    explicit service_provider(service_collection registrations);
    service_provider(const service_provider&) = delete;
    service_provider& operator=(const service_provider&) = delete;
    ~service_provider();

    // The instance registered as T; throws service_not_found naming T.
    template <class T>
    T& get()
    {
        return *static_cast<T*>(resolve(typeid(T), detail::type_name<T>, true));
    }

    // The instance registered as T, or nullptr.
    template <class T>
    T* try_get()
    {
        return static_cast<T*>(resolve(typeid(T), detail::type_name<T>, false));
    }

    // Constructs every registered singleton now (in registration order,
    // dependencies first). Throws service_not_found for a missing dependency
    // and std::logic_error for a dependency cycle, naming the types.
    void construct_all();

private:
    void* resolve(const std::type_info& type, std::string (*name)(), bool required);

    struct entry {
        detail::singleton_descriptor descriptor;
        std::shared_ptr<void> instance;
        bool constructing = false;
    };
    void* instance_of(std::pair<const std::type_index, entry>& item);
    std::unordered_map<std::type_index, entry> entries_;
    std::vector<std::type_index> order_;
    std::vector<std::type_index> construction_stack_;
    // Instances die in reverse construction order, like objects on a stack.
    std::vector<std::type_index> constructed_;
};

} // namespace hosting
