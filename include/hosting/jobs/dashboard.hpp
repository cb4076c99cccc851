// jobs/dashboard.hpp: the jobs dashboard, served by the host's HTTP server:
// what ran, what failed and why, and the actions an operator takes on it.
#pragma once

#include <hosting/http/server.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace hosting {
class host_builder;
}

namespace hosting::jobs {

// What a request may do: nothing (403), look, or look and act.
enum class dashboard_access { none, read_only, full };

struct dashboard_options {
    // Where it is mounted: the page at `path`, its assets and its JSON below.
    std::string path = "/jobs";
    // Who may see and do what, asked of every request (and of each event
    // of a page's event stream, with the request that opened it): a header
    // set by an authenticating proxy, a client certificate's name, a token.
    // Called on the server's thread; one that throws refuses. Unset:
    // full access for whoever reaches it, which the next option and the
    // server's loopback address limit to this machine by default; then a
    // request a proxy forwarded (Forwarded, X-Forwarded-For, X-Real-IP,
    // X-Forwarded-Host) is refused, as a proxy on this machine would
    // otherwise pass the network's requests off as local.
    std::function<dashboard_access(const http::request&)> authorize{};
    // Requests from an address other than loopback are refused (403) unless
    // this is set: the dashboard changes jobs, so exposing it takes a
    // decision here, not only a server bound to another address. Needs
    // `authorize`: anonymous access from the network is never a default.
    bool allow_remote = false;
    // The names (a request's Host, without its port) the dashboard answers
    // to, besides localhost and loopback addresses; any other gets 403.
    // Empty: loopback names only, unless allow_remote, then any. A page of
    // another site whose name its owner points at 127.0.0.1 (DNS
    // rebinding) reaches a loopback server from the browser as if it were
    // its own: its Host is its own name, and that is how it is told apart.
    std::vector<std::string> allowed_hosts{};
    // A filter by queue, kind, creation time or text in the arguments
    // reads at most this many jobs (newest first, past the state's index)
    // for one page, and the page says so when it stopped there: its cost
    // is bounded on a store of millions.
    std::size_t scan_limit = 20'000;
    // How often the one stats poller of the process reads the counts, for
    // every open page at once (the realtime chart's resolution).
    std::chrono::milliseconds poll_interval{std::chrono::seconds(1)};
    // Shown in the page's title and heading.
    std::string title = "Jobs";

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

// Mounts the dashboard on the host's HTTP server (added if missing; see
// http::add_http_server for its address and limits), after add_jobs() on
// the same builder. Every asset is compiled into the library: nothing is
// fetched from the network. Every change is a POST that must carry the
// page's CSRF token and come from the same origin. Throws
// std::invalid_argument for invalid options.
void add_jobs_dashboard(host_builder& builder, dashboard_options options = {});

} // namespace hosting::jobs
