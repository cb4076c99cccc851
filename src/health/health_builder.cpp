#include <hosting/health/health.hpp>

#include <hosting/core/host_builder.hpp>
#include <hosting/core/host_lifetime.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/logging/logging.hpp>

#include "health/detail/health_core.hpp"
#include "health/detail/health_state.hpp"

#include <optional>
#include <stdexcept>

namespace hosting {

namespace {

// Readiness and the health's own tasks follow the host's life.
class health_lifetime final : public host_lifetime {
public:
    health_lifetime(std::shared_ptr<health_builder::state> state, std::shared_ptr<metrics_registry> metrics)
        : state_(std::move(state)), metrics_(std::move(metrics))
    {
    }

    void attach(const host_lifetime_context& context) override
    {
        auto& s = *state_;
        s.core = std::make_shared<detail::health_core>(s.options, std::move(s.checks), std::move(s.publishers),
                                                       metrics_, context.loggers.get("hosting.health"));
        s.core->attach(context.loop, context.service_statuses);
    }
    void started() override
    {
        state_->core->set_ready(true);
        state_->core->start_tasks();
    }
    // On the thread that asked for the stop: readiness turns false at once,
    // even when the loop is blocked.
    void stopping() override { state_->core->stop_tasks(); }

private:
    std::shared_ptr<health_builder::state> state_;
    std::shared_ptr<metrics_registry> metrics_;
};

} // namespace

health_builder::health_builder(host_builder& builder) : state_(std::make_shared<state>())
{
    builder.on_build([state = state_](host_builder& b) {
        state->validate();
        auto metrics = add_metrics(b);
        b.services().add_singleton_factory<health_monitor>(
            [state](service_provider&) { return std::make_shared<health_monitor>(state->core); });
        b.add_lifetime(std::make_shared<health_lifetime>(state, metrics));
    });
}

health_options& health_builder::options() noexcept { return state_->options; }

health_builder& health_builder::add(health_check_registration check)
{
    if (check.name.empty())
        throw std::invalid_argument("health: a check needs a name");
    if (!check.fn)
        throw std::invalid_argument("health: check '" + check.name + "' has an empty function");
    if (check.timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("health: check '" + check.name + "' needs a positive timeout");
    state_->checks.push_back(std::move(check));
    return *this;
}

health_builder& health_builder::add_publisher(std::string name, health_publisher_function fn,
                                              health_publisher_options options)
{
    if (!fn)
        throw std::invalid_argument("health: publisher '" + name + "' has an empty function");
    if (options.period <= std::chrono::milliseconds::zero() || options.delay < std::chrono::milliseconds::zero())
        throw std::invalid_argument("health: publisher '" + name +
                                    "' needs a positive period and a delay that is not negative");
    state_->publishers.push_back({std::move(name), std::move(fn), std::move(options)});
    return *this;
}

health_builder& add_health_checks(host_builder& builder) { return builder.feature<health_builder>(); }

} // namespace hosting
