// The health report and the metrics over HTTP, for probes and Prometheus.
#pragma once

#include <hosting/http/server.hpp>

namespace hosting {

class host_builder;
class health_builder;

// The options of the HTTP server the endpoint is mounted on.
using health_endpoint_options = http::server_options;

// Mounts on the host's HTTP server (http/server.hpp), adding the server and
// the health itself (add_health_checks()) when they are not there yet:
//   GET /health/live   entries tagged "live" (services, the event loop)
//   GET /health/ready  entries tagged "ready" (readiness, checks tagged so)
//   GET /health        every entry and check; ?tag=x keeps those tagged x
//   GET /metrics       Prometheus text format 0.0.4
// 200 when healthy or degraded, 503 when unhealthy, as JSON; 404 for other
// paths, 405 for other methods (HEAD is GET without the body), 400 for
// malformed requests, 500 (and a log line) when answering threw. Checks
// run on the host's loop with their timeouts, so a blocked loop shows as
// timed-out checks, not as a hung endpoint. The server starts before the
// other services and stops after them, so probes see readiness turn false
// during the shutdown delay and the stop.
//
// `options` become the server's. Throws std::invalid_argument for bad
// options and std::logic_error when called twice on a builder. Returns the
// health's builder, for checks.
health_builder& add_health_endpoint(host_builder& builder, health_endpoint_options options = {});

} // namespace hosting
