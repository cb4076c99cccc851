// health_endpoint: the health report and the metrics over HTTP, for probes
// and Prometheus.
#pragma once

#include <hosting/core/hosted_service.hpp>
#include <hosting/core/services.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace spdlog {
class logger;
}

namespace hosting {

namespace detail {
class health_core;
}

struct health_endpoint_options {
    // Loopback by default: a health endpoint is for the node's own probes
    // and scrapers; expose it on purpose ("0.0.0.0") or through a proxy.
    std::string address = "127.0.0.1";
    std::uint16_t port = 8081; // 0 picks a free port; see health_endpoint::port()

    // Against hostile or broken clients. A connection over the cap is closed
    // at once; a request whose header or body is too big gets 431 or 413;
    // a client that takes longer than read_timeout to send a request (or to
    // read the answer) is disconnected.
    std::size_t max_connections = 128;
    std::size_t max_header_bytes = 8 * 1024;
    std::size_t max_body_bytes = 1024;
    std::chrono::milliseconds read_timeout{std::chrono::seconds(5)};

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

// Serves, on a thread of its own so that neither a blocked service loop nor
// hostile traffic can hold the other up:
//   GET /health/live   entries tagged "live" (services, the event loop)
//   GET /health/ready  entries tagged "ready" (readiness, checks tagged so)
//   GET /health        every entry and check; ?tag=x keeps those tagged x
//   GET /metrics       Prometheus text format 0.0.4
// 200 when healthy or degraded, 503 when unhealthy, as JSON; 404 for other
// paths, 405 for other methods (HEAD is GET without the body), 400 for
// malformed requests, 500 (and a log line) when answering threw. Checks run on the host's loop with their timeouts, so a
// blocked loop shows as timed-out checks, not as a hung endpoint.
//
// Registered by add_health_endpoint() with starts_first(): it starts before
// the other services and stops after them, even when they start or stop
// concurrently, so probes see readiness turn false during the shutdown
// delay and the stop.
class health_endpoint;
class host_builder;
class health_builder;

// Serves the host's health over HTTP (adding the health itself, see
// add_health_checks()). Throws std::invalid_argument for bad options and
// std::logic_error when called twice on a builder. Returns the health's
// builder, for checks.
health_builder& add_health_endpoint(host_builder& builder, health_endpoint_options options = {});

class health_endpoint final : public hosted_service {
public:
    // Serves the health_monitor registered with `provider`.
    health_endpoint(service_provider& provider, health_endpoint_options options);
    ~health_endpoint() override;

    // Binds (throwing a std::system_error that names the address when it
    // cannot) and starts serving.
    asio::awaitable<void> start(std::stop_token cancel) override;
    // Stops accepting, closes every connection and joins the thread.
    asio::awaitable<void> stop(std::stop_token cancel) override;

    // The port it listens on once started (useful with port 0); 0 before.
    std::uint16_t port() const noexcept;

private:
    struct impl;
    std::shared_ptr<impl> impl_;
};

} // namespace hosting
