#include <hosting/health/health_endpoint.hpp>

#include <hosting/health/health.hpp>
#include <hosting/metrics/metrics.hpp>

#include "health/detail/health_core.hpp"
#include "health/detail/health_state.hpp"

#include <stdexcept>

namespace hosting {

namespace {

asio::awaitable<http::response> report_for(std::shared_ptr<health_builder::state> state, std::string tag,
                                           std::shared_ptr<void> keep_alive)
{
    auto& health = *state->core;
    health_report report;
    if (health.has_checks(tag)) {
        // The operation is made outside the co_await: its by-value arguments
        // must not be temporaries of a suspending expression (GCC 12).
        auto op = health.check(tag, std::move(keep_alive));
        report = co_await std::move(op);
    } else {
        report = health.host_entries(tag);
    }
    http::response out;
    out.status = report.status == health_status::unhealthy ? 503u : 200u;
    out.body = report.to_json();
    co_return out;
}

} // namespace

health_builder& add_health_endpoint(host_builder& builder, health_endpoint_options options)
{
    auto& health = add_health_checks(builder);
    auto state = health.state_;
    if (state->endpoint_added)
        throw std::logic_error("add_health_endpoint: called twice on one host_builder");
    options.validate();
    state->endpoint_added = true;
    auto& server = http::add_http_server(builder);
    server.options() = std::move(options);
    auto metrics = add_metrics(builder);
    server.route("/health/live", [state](const http::request& r) {
        return report_for(state, std::string(health_tags::live), r.keep_alive);
    });
    server.route("/health/ready", [state](const http::request& r) {
        return report_for(state, std::string(health_tags::ready), r.keep_alive);
    });
    server.route("/health", [state](const http::request& r) -> asio::awaitable<http::response> {
        std::optional<std::string> tag;
        try {
            tag = r.query_parameter("tag");
        } catch (const std::invalid_argument&) {
            co_return http::response::error(400, "malformed tag in the query");
        }
        auto op = report_for(state, tag.value_or(""), r.keep_alive);
        http::response res = co_await std::move(op);
        co_return res;
    });
    server.route("/metrics", [metrics](const http::request&) -> asio::awaitable<http::response> {
        http::response out;
        out.content_type = metrics_registry::content_type;
        out.body = metrics->render();
        co_return out;
    });
    return health;
}

} // namespace hosting
