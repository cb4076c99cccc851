#include <hosting/health/health_endpoint.hpp>
#include <hosting/logging/logging.hpp>

#include "detail/describe.hpp"
#include "health/detail/health_core.hpp"
#include "detail/owned_io_context.hpp"
#include "detail/remote_completion.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stop_token>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <unordered_set>

namespace hosting {

namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

void health_endpoint_options::validate() const
{
    boost::system::error_code ec;
    asio::ip::make_address(address, ec);
    if (ec)
        throw std::invalid_argument("health_endpoint_options: address '" + address + "' is not an IP address");
    if (max_connections == 0)
        throw std::invalid_argument("health_endpoint_options: max_connections must be at least 1");
    if (max_header_bytes < 256)
        throw std::invalid_argument("health_endpoint_options: max_header_bytes must be at least 256");
    if (read_timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("health_endpoint_options: read_timeout must be positive");
}

namespace {

enum class route { live, ready, health, metrics, other };

const char* route_name(route r)
{
    switch (r) {
    case route::live: return "/health/live";
    case route::ready: return "/health/ready";
    case route::health: return "/health";
    case route::metrics: return "/metrics";
    case route::other: return "other";
    }
    return "other";
}

int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

// Percent-decodes a query value; nullopt when malformed.
std::optional<std::string> url_decode(std::string_view text)
{
    std::string out;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '+') {
            out += ' ';
        } else if (text[i] == '%') {
            if (i + 2 >= text.size())
                return std::nullopt;
            int hi = hex_value(text[i + 1]), lo = hex_value(text[i + 2]);
            if (hi < 0 || lo < 0)
                return std::nullopt;
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else {
            out += text[i];
        }
    }
    return out;
}

std::string error_json(std::string_view message)
{
    return boost::json::serialize(boost::json::object{{"error", message}});
}

} // namespace

struct health_endpoint::impl : std::enable_shared_from_this<health_endpoint::impl> {
    health_endpoint_options options;
    std::shared_ptr<detail::health_core> health;
    std::shared_ptr<spdlog::logger> log;
    // Shut down in stop(), which destroys the queued handlers.
    std::shared_ptr<detail::owned_io_context> io = std::make_shared<detail::owned_io_context>(1);
    std::optional<tcp::acceptor> acceptor; // io thread only, after start
    std::thread thread;
    std::atomic<std::uint16_t> bound_port{0};

    // io thread only.
    bool closing = false;
    std::unordered_set<beast::tcp_stream*> connections;
    std::map<std::pair<route, unsigned>, metric_counter*> request_counters;
    metric_counter* rejected = nullptr;
    metric_gauge* open_connections = nullptr;

    // The end of the io thread, told to a stop() waiting for it.
    std::mutex end_mutex;
    bool thread_done = false;               // under end_mutex
    std::function<void()> on_thread_done;   // under end_mutex
    std::optional<std::stop_callback<std::function<void()>>> on_deadline;

    impl(health_endpoint_options o, std::shared_ptr<detail::health_core> h, std::shared_ptr<spdlog::logger> l)
        : options(std::move(o)), health(std::move(h)), log(std::move(l))
    {
        auto& m = health->metrics();
        rejected = &m.counter("hosting_http_connections_rejected_total",
                              "Connections to the health endpoint closed at once because of max_connections");
        open_connections = &m.gauge("hosting_http_open_connections", "Open connections to the health endpoint");
    }

    void count(route r, unsigned code)
    {
        auto& c = request_counters[{r, code}];
        if (!c)
            c = &health->metrics().counter("hosting_http_requests_total", "Requests to the health endpoint",
                                           {{"path", route_name(r)}, {"code", std::to_string(code)}});
        c->inc();
    }

    static asio::awaitable<void> accept_loop(std::shared_ptr<impl> self)
    {
        for (;;) {
            boost::system::error_code ec;
            tcp::socket socket = co_await self->acceptor->async_accept(asio::redirect_error(asio::use_awaitable, ec));
            if (self->closing)
                co_return;
            if (ec) {
                // Out of descriptors, typically: back off instead of spinning.
                self->log->warn("Health endpoint: accept failed: {}", ec.message());
                asio::steady_timer pause(*self->io, std::chrono::milliseconds(50));
                co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                continue;
            }
            if (self->connections.size() >= self->options.max_connections) {
                self->rejected->inc();
                socket.close(ec);
                continue;
            }
            asio::co_spawn(*self->io, session(self, std::move(socket)), asio::detached);
        }
    }

    struct reply {
        unsigned code;
        std::string body;
        std::string_view content_type = "application/json";
        route r = route::other;
        bool allow_get = false;
        bool unread_input = false; // the request was refused before it was read whole
    };

    // Closing a socket with unread input makes the kernel send a reset,
    // which can destroy the error response before the client reads it; so
    // read and drop what the client still sends, for a bounded time and size,
    // the way web servers do a lingering close.
    static asio::awaitable<void> linger(const std::shared_ptr<impl>& self, beast::tcp_stream& stream)
    {
        boost::system::error_code ec;
        stream.socket().shutdown(tcp::socket::shutdown_send, ec);
        stream.expires_after(std::min<std::chrono::milliseconds>(self->options.read_timeout, std::chrono::seconds(1)));
        char sink[4096];
        for (std::size_t total = 0; !ec && total < 1024 * 1024 && !self->closing;)
            total += co_await stream.async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
    }

    static asio::awaitable<reply> answer(std::shared_ptr<impl> self, const http::request<http::string_body>& req)
    {
        const std::string_view target = req.target();
        const auto question = target.find('?');
        const std::string_view path = target.substr(0, question);
        const std::string_view query = question == std::string_view::npos ? "" : target.substr(question + 1);

        route r = route::other;
        if (path == "/health/live")
            r = route::live;
        else if (path == "/health/ready")
            r = route::ready;
        else if (path == "/health")
            r = route::health;
        else if (path == "/metrics")
            r = route::metrics;
        if (r == route::other)
            co_return reply{404, error_json("no such path; try /health, /health/live, /health/ready or /metrics")};
        if (req.method() != http::verb::get && req.method() != http::verb::head) {
            reply out{405, error_json("only GET and HEAD are allowed"), "application/json", r};
            out.allow_get = true;
            co_return out;
        }
        if (r == route::metrics)
            co_return reply{200, self->health->metrics().render(), metrics_registry::content_type, r};

        std::string tag;
        if (r == route::live)
            tag = health_tags::live;
        else if (r == route::ready)
            tag = health_tags::ready;
        else {
            for (std::string_view rest = query; !rest.empty();) {
                const auto amp = rest.find('&');
                const auto pair = rest.substr(0, amp);
                rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
                if (pair.rfind("tag=", 0) != 0)
                    continue;
                auto decoded = url_decode(pair.substr(4));
                if (!decoded)
                    co_return reply{400, error_json("malformed tag in the query"), "application/json", r};
                tag = std::move(*decoded);
            }
        }
        health_report report;
        if (self->health->has_checks(tag)) {
            // Named: a converted temporary inside co_await is what GCC 12
            // can destroy twice.
            std::shared_ptr<void> keep = self->io;
            // The operation is made outside the co_await: its by-value
            // arguments must not be temporaries of a suspending expression.
            auto op = self->health->check(tag, std::move(keep));
            report = co_await std::move(op);
        }
        else
            report = self->health->host_entries(tag);
        co_return reply{report.status == health_status::unhealthy ? 503u : 200u, report.to_json(),
                        "application/json", r};
    }

    static asio::awaitable<void> session(std::shared_ptr<impl> self, tcp::socket socket)
    {
        beast::tcp_stream stream(std::move(socket));
        // However the session ends (an exception included), it leaves the set.
        struct registration {
            impl& owner;
            beast::tcp_stream* stream;
            registration(impl& o, beast::tcp_stream* s) : owner(o), stream(s)
            {
                owner.connections.insert(stream);
                owner.open_connections->set(static_cast<double>(owner.connections.size()));
            }
            ~registration()
            {
                owner.connections.erase(stream);
                owner.open_connections->set(static_cast<double>(owner.connections.size()));
            }
        } registered(*self, &stream);
        // The buffer's cap is what keeps a flood of bytes from growing memory.
        beast::flat_buffer buffer(self->options.max_header_bytes + self->options.max_body_bytes + 1024);
        for (;;) {
            http::request_parser<http::string_body> parser;
            parser.header_limit(static_cast<std::uint32_t>(self->options.max_header_bytes));
            parser.body_limit(self->options.max_body_bytes);
            stream.expires_after(self->options.read_timeout);
            boost::system::error_code ec;
            co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
            if (self->closing)
                break;
            reply out{0, {}};
            bool keep_alive = false;
            bool head = false;
            if (!ec) {
                keep_alive = parser.get().keep_alive();
                std::exception_ptr failure;
                try {
                    auto op = answer(self, parser.get());
                    out = co_await std::move(op);
                } catch (...) {
                    failure = std::current_exception();
                }
                if (failure) {
                    // A throwing metrics collector, say: the client gets a
                    // 500, the log the reason, and the endpoint stays up.
                    self->log->error("Health endpoint: {} {} failed: {}", std::string(parser.get().method_string()),
                                     std::string(parser.get().target()), detail::describe(failure));
                    out = reply{500, error_json("internal error; see the log")};
                    keep_alive = false;
                }
                head = parser.get().method() == http::verb::head;
            } else if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
                out = reply{431, error_json("request header too large")};
                out.unread_input = true;
            } else if (ec == http::error::body_limit) {
                out = reply{413, error_json("request body too large")};
                out.unread_input = true;
            } else if (ec == http::error::end_of_stream || ec == http::error::partial_message) {
                break; // the client closed
            } else if (ec.category() == http::make_error_code(http::error::bad_method).category()) {
                out = reply{400, error_json("malformed request: " + ec.message())};
                out.unread_input = true;
            } else {
                break; // timeout, reset, or the stop closing the socket
            }
            if (self->closing)
                break;
            self->count(out.r, out.code);

            http::response<http::string_body> res{static_cast<http::status>(out.code), 11};
            res.set(http::field::content_type, out.content_type);
            res.set(http::field::cache_control, "no-store");
            if (out.allow_get)
                res.set(http::field::allow, "GET");
            res.keep_alive(keep_alive);
            res.body() = std::move(out.body);
            res.prepare_payload();
            if (head)
                res.body().clear(); // Content-Length stays the GET's
            stream.expires_after(self->options.read_timeout);
            co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
            if (!ec && out.unread_input)
                co_await linger(self, stream);
            if (ec || !keep_alive)
                break;
        }
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }
};

health_endpoint::health_endpoint(service_provider& provider, health_endpoint_options options)
{
    options.validate();
    impl_ = std::make_shared<impl>(std::move(options), provider.get<health_monitor>().core_,
                                   provider.get<logger_factory>().get("hosting.health"));
}

health_endpoint::~health_endpoint()
{
    if (impl_->thread.joinable() && impl_->thread.get_id() == std::this_thread::get_id()) {
        // The endpoint's own thread dropped the last reference to the host:
        // it cannot join itself, and it is about to return anyway.
        impl_->io->stop();
        impl_->thread.detach();
        return;
    }
    if (impl_->thread.joinable()) {
        impl_->io->stop();
        impl_->thread.join();
    }
    impl_->io->shutdown();
}

std::uint16_t health_endpoint::port() const noexcept { return impl_->bound_port.load(); }

asio::awaitable<void> health_endpoint::start(std::stop_token)
{
    auto& s = *impl_;
    const tcp::endpoint where(asio::ip::make_address(s.options.address), s.options.port);
    tcp::acceptor acceptor(*s.io);
    try {
        acceptor.open(where.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        acceptor.bind(where);
        acceptor.listen(asio::socket_base::max_listen_connections);
    } catch (const boost::system::system_error& e) {
        throw std::system_error(e.code(), "health endpoint: cannot listen on " + s.options.address + ":" +
                                              std::to_string(s.options.port));
    }
    s.bound_port = acceptor.local_endpoint().port();
    s.acceptor.emplace(std::move(acceptor));
    asio::co_spawn(*s.io, impl::accept_loop(impl_), asio::detached);
    s.thread = std::thread([self = impl_] {
        for (;;) {
            try {
                self->io->run();
                break;
            } catch (...) {
                self->log->error("Health endpoint: unexpected error: {}", detail::describe(std::current_exception()));
            }
        }
        std::function<void()> tell;
        {
            std::lock_guard lock(self->end_mutex);
            self->thread_done = true;
            tell = std::move(self->on_thread_done);
        }
        if (tell)
            tell();
    });
    s.log->info("Health endpoint listening on http://{}:{}/health", s.options.address, s.bound_port.load());
    co_return;
}

asio::awaitable<void> health_endpoint::stop(std::stop_token cancel)
{
    auto self = impl_;
    if (!self->thread.joinable())
        co_return;
    // Close everything; connections waiting on a check cannot be woken, so
    // the loop is stopped after a short grace, and ~health_endpoint (or the
    // shutdown below) destroys what is left of them.
    asio::post(*self->io, [self] {
        self->closing = true;
        boost::system::error_code ec;
        self->acceptor->close(ec);
        for (auto* c : self->connections)
            c->socket().close(ec);
    });
    auto timer = std::make_shared<asio::steady_timer>(*self->io, std::chrono::milliseconds(200));
    timer->async_wait([self, timer](boost::system::error_code) { self->io->stop(); });
    asio::post(*self->io, [self] {
        if (self->connections.empty())
            self->io->stop();
    });

    // Waits, without blocking the caller's thread, for the io thread's end or
    // the stop's own deadline, whichever comes first.
    auto ended = asio::async_initiate<decltype(asio::use_awaitable), void()>(
        [self, cancel](auto handler) {
            auto done = std::make_shared<detail::remote_completion<decltype(handler)>>(std::move(handler));
            std::function<void()> fire = [done] { done->complete(); };
            std::lock_guard lock(self->end_mutex);
            if (self->thread_done) {
                fire();
                return;
            }
            self->on_thread_done = fire;
            self->on_deadline.emplace(cancel, std::move(fire));
        },
        asio::use_awaitable);
    co_await std::move(ended);
    bool thread_done = false;
    {
        std::lock_guard lock(self->end_mutex);
        thread_done = self->thread_done;
        self->on_thread_done = nullptr;
    }
    self->on_deadline.reset(); // waits for a callback running now, so not under end_mutex
    if (thread_done) {
        self->thread.join();
        // Destroys suspended sessions now; checks they were waiting for hold
        // the io_context itself until they finish.
        self->io->shutdown();
    }
    self->log->debug("Health endpoint stopped");
}

} // namespace hosting
