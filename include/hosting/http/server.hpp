// hosting::http::server: the host's HTTP server, which features mount
// routes on (the health endpoint, the jobs dashboard).
#pragma once

#include <hosting/core/hosted_service.hpp>
#include <hosting/core/services.hpp>

#include <boost/asio/awaitable.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace hosting {
class host_builder;
}

namespace hosting::http {

namespace asio = boost::asio;

struct server_options {
    // Loopback by default: what the host serves is for the node's own
    // probes, scrapers and operators; expose it on purpose ("0.0.0.0") or
    // through a proxy.
    std::string address = "127.0.0.1";
    std::uint16_t port = 8081; // 0 picks a free port; see server::port()

    // Against hostile or broken clients, so that probes keep being answered
    // (docs/health.md says what the server withstands).
    //
    // Admission: at max_connections, a new connection evicts an open one
    // without a request in progress (still sending its request, idle
    // between keep-alive requests, or not reading its answer): of the
    // client address that holds the most connections, the one that has
    // waited longest. A connection whose request a handler is answering is
    // never evicted. When every
    // connection it could displace is busy with a request, it gets one of
    // reserved_connections slots kept for requests that complete quickly
    // (at most half of them, at least one, for one address): its request
    // must arrive, and its answer be read, within reserved_request_timeout
    // each, and the connection is closed after its response. Only when
    // those are taken too is it closed at once.
    // One client address holds at most max_connections_per_address of them
    // (0: a quarter of max_connections, at least 1): past that, a new
    // connection from it evicts that address's own oldest waiting one.
    std::size_t max_connections = 128;
    std::size_t max_connections_per_address = 0;
    std::size_t reserved_connections = 4;
    std::chrono::milliseconds reserved_request_timeout{500};
    // A request whose header or body is too big gets 431 or 413.
    std::size_t max_header_bytes = 8 * 1024;
    std::size_t max_body_bytes = 1024;
    // Time limits, each on the whole of what it covers (not per byte), each
    // closing the connection and counted in hosting_http_timeouts_total:
    // receiving a request, head and body, from the accept or from its
    // first byte on a kept-alive connection;
    std::chrono::milliseconds request_timeout{std::chrono::seconds(5)};
    // waiting for the next request on a kept-alive connection;
    std::chrono::milliseconds idle_timeout{std::chrono::seconds(30)};
    // writing a response (a client that does not read it).
    std::chrono::milliseconds write_timeout{std::chrono::seconds(5)};

    // Throws std::invalid_argument naming the first invalid member.
    void validate() const;
};

// A request as a handler sees it. The views point into the server's
// buffers and are valid until the handler's coroutine completes.
struct request {
    std::string_view method; // "GET", "HEAD", "POST", ...
    std::string_view target; // path and query, as sent
    std::string_view path;
    std::string_view query; // after '?', still percent-encoded
    std::string_view body;
    std::string remote_address;
    std::vector<std::pair<std::string_view, std::string_view>> headers;
    // Owns the server's execution context: hand it to an operation that
    // completes on another thread (a check run on the host's loop), so that
    // the context outlives that completion even if the server stops first.
    std::shared_ptr<void> keep_alive;

    // The first header of that name (case-insensitive), if any.
    std::optional<std::string_view> header(std::string_view name) const noexcept;
    // The first query parameter of that name, percent-decoded; an empty
    // optional when absent; throws std::invalid_argument when malformed.
    std::optional<std::string> query_parameter(std::string_view name) const;
};

// The body of a response that is sent as it is made (Server-Sent Events):
// what response::stream is given. Its calls are made on the server's
// thread, except wake().
class body_stream {
public:
    virtual ~body_stream() = default;

    // Sends `data` as the next part of the body, within the server's
    // write_timeout. Completes with true once written, false once the
    // stream must end: the client went away or did not read in time, the
    // connection was displaced to admit another (see server_options), or
    // the server stops. Never throws.
    virtual asio::awaitable<bool> write(std::string data) = 0;
    // Waits for `timeout`, or less if wake() is called meanwhile (or was
    // since the last wait), or until the stream must end. Completes with
    // false when it must end, true otherwise. Never throws.
    virtual asio::awaitable<bool> wait(std::chrono::milliseconds timeout) = 0;
    // Ends the current or the next wait early. From any thread; harmless
    // after the stream ended.
    virtual void wake() noexcept = 0;
};

struct response {
    unsigned status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers; // Cache-Control: no-store unless set here
    // When set, `body` is ignored: the head goes out without a length (and
    // with Connection: close), then this runs on the server's thread and
    // writes the body in parts until it returns, and the connection is
    // closed. While it runs the connection counts as waiting, not busy: it
    // may be displaced to admit another (a browser's EventSource comes
    // back by itself), and it ends as soon as the client closes or sends
    // anything more. A HEAD request gets the head alone, and so does a
    // connection admitted to a reserved slot (see server_options), with an
    // empty body: an EventSource tries again, where an error would stop
    // it. An exception ends the stream and is logged.
    std::function<asio::awaitable<void>(std::shared_ptr<body_stream>)> stream{};

    // {"error": message}, escaped.
    static response error(unsigned status, std::string_view message);
};

// A route's handler: runs on the server's own thread (never the host's
// event loop), one request at a time per connection.
//
// Completes with the response to send.
// Lifetimes: the request, and the views in it, are valid until the handler's
// coroutine completes; copy what must live longer. request::keep_alive keeps
// the server's io_context alive for an operation that completes on another
// thread.
// Executor: the server's own io_context, which one thread runs: the handlers
// of every connection take turns on it, so a handler that blocks holds up
// every other request. The handler resumes there.
// Cancellation: none reaches it: it gets no token, its coroutine is not
// cancelled when the client goes away, and no timeout bounds it (the
// server's timeouts cover reading the request and writing the response). When the server
// stops, a handler still suspended after a grace of 200 ms is never resumed.
// Errors: an exception becomes a 500 and a log line naming the request's
// method and target, and the connection is closed after that response; the
// server keeps serving.
// Thread safety: it runs on the server's thread while the host's threads run
// the services: what it shares with them must be thread-safe.
using handler = std::function<asio::awaitable<response>(const request&)>;

// What add_http_server() returns: the options and the routes, before
// build(). One per host_builder.
class server_builder {
public:
    explicit server_builder(host_builder& builder);

    server_options& options() noexcept;

    // Serves `path` with `h` for `methods` (GET also answers HEAD, without
    // the body). A path that ends with "/*" serves everything below it
    // ("/jobs/*" serves "/jobs" and "/jobs/a/b"); the longest match wins.
    // Other methods on a served path get 405 with Allow. Throws
    // std::invalid_argument for a path that does not start with '/', or one
    // mounted twice.
    server_builder& route(std::string path, handler h, std::vector<std::string> methods = {"GET"});

    struct state; // opaque: what build() acts on

private:
    std::shared_ptr<state> state_;
};

// Adds the host's HTTP server (once per builder) and returns its builder.
// The server is a hosted service registered with starts_first(), so it is
// up during the whole start and stop of the other services, and a
// singleton (get<hosting::http::server>()) for its port().
server_builder& add_http_server(host_builder& builder);

// Serves the mounted routes on a thread of its own, so that neither a
// blocked service loop nor hostile traffic can hold the other up. Requests
// are counted in the metrics: hosting_http_requests_total by route and
// code, hosting_http_open_connections, hosting_http_connections_evicted_total
// by reason (capacity, address), hosting_http_connections_reserved_total
// (admitted to a reserved slot), hosting_http_connections_rejected_total
// (every slot busy) and hosting_http_timeouts_total by kind (request, idle,
// write).
class server final : public hosted_service {
public:
    server(service_provider& provider, std::shared_ptr<server_builder::state> state);
    ~server() override;

    // Binds and starts serving on the server's own thread.
    //
    // Completes once it listens (port() is then set) and its thread runs,
    // without waiting for any request.
    // Lifetimes: the server must outlive the operation; the host owns it.
    // Executor: binds on the caller's executor and completes there without
    // suspending; requests are then served on the server's thread.
    // Cancellation: `cancel` is not used: nothing in it waits.
    // Errors: throws a std::system_error that names the address when it
    // cannot bind or listen.
    // Thread safety: call it once, not concurrently with stop(); the host
    // calls both on the service's strand.
    asio::awaitable<void> start(std::stop_token cancel) override;

    // Stops accepting, closes every connection and, once the server's thread
    // has ended, joins it; completes by `cancel` at the latest.
    //
    // Completes when the thread has ended (its io_context is stopped at once
    // when no connection is open, else after a grace of 200 ms), or when
    // `cancel` fires first; at once when the server was never started.
    // Lifetimes: the server must outlive the operation.
    // Executor: the closing runs on the server's thread; the caller resumes on
    // its own executor, whose thread is not blocked while it waits.
    // Cancellation: `cancel` (the host's shutdown deadline) ends the wait; the
    // thread is then left to end, and ~server stops and joins it. Cancelling
    // the awaiting coroutine does not cut the wait short.
    // Errors: none of its own.
    // Thread safety: not concurrently with start(); the host calls both on
    // the service's strand.
    asio::awaitable<void> stop(std::stop_token cancel) override;

    // The port it listens on once started (useful with port 0); 0 before.
    std::uint16_t port() const noexcept;

private:
    struct impl;
    std::shared_ptr<impl> impl_;
};

} // namespace hosting::http
