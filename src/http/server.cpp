#include <hosting/http/server.hpp>

#include <hosting/core/host_builder.hpp>
#include <hosting/logging/logging.hpp>
#include <hosting/metrics/metrics.hpp>

#include "detail/describe.hpp"
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
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <spdlog/logger.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <system_error>
#include <limits>
#include <list>
#include <thread>
#include <unordered_map>

namespace hosting::http {

namespace beast = boost::beast;
namespace bhttp = beast::http;
using tcp = asio::ip::tcp;

void server_options::validate() const
{
    boost::system::error_code ec;
    asio::ip::make_address(address, ec);
    if (ec)
        throw std::invalid_argument("http::server_options: address '" + address + "' is not an IP address");
    if (max_connections == 0)
        throw std::invalid_argument("http::server_options: max_connections must be at least 1");
    if (max_header_bytes < 256)
        throw std::invalid_argument("http::server_options: max_header_bytes must be at least 256");
    if (max_connections_per_address > max_connections)
        throw std::invalid_argument("http::server_options: max_connections_per_address must not exceed "
                                    "max_connections");
    if (reserved_request_timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("http::server_options: reserved_request_timeout must be positive");
    if (request_timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("http::server_options: request_timeout must be positive");
    if (idle_timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("http::server_options: idle_timeout must be positive");
    if (write_timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("http::server_options: write_timeout must be positive");
}

namespace {

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

bool iequals(std::string_view a, std::string_view b)
{
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

} // namespace

std::optional<std::string_view> request::header(std::string_view name) const noexcept
{
    for (const auto& [n, v] : headers)
        if (iequals(n, name))
            return v;
    return std::nullopt;
}

std::optional<std::string> request::query_parameter(std::string_view name) const
{
    for (std::string_view rest = query; !rest.empty();) {
        const auto amp = rest.find('&');
        const auto pair = rest.substr(0, amp);
        rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
        const auto eq = pair.find('=');
        if (pair.substr(0, eq) != name)
            continue;
        auto decoded = url_decode(eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1));
        if (!decoded)
            throw std::invalid_argument("malformed query parameter '" + std::string(name) + "'");
        return decoded;
    }
    return std::nullopt;
}

response response::error(unsigned status, std::string_view message)
{
    response r;
    r.status = status;
    r.body = boost::json::serialize(boost::json::object{{"error", message}});
    return r;
}

// ---------------------------------------------------------------------------
// The builder

struct route_entry {
    std::string path;  // without the "/*"
    bool prefix = false;
    handler fn;
    std::vector<std::string> methods;
    std::string allow; // for 405
};

struct server_builder::state {
    server_options options;
    std::vector<route_entry> routes;
};

server_builder::server_builder(host_builder& builder) : state_(std::make_shared<state>())
{
    add_metrics(builder);
    builder.on_build([state = state_](host_builder& b) {
        state->options.validate();
        b.services().add_singleton<server>(state);
        // The provider owns the singleton and outlives the host's service
        // entries, so the entry need not own it too.
        b.services()
            .add_hosted_service_factory<server>(
                [](service_provider& p) { return std::shared_ptr<server>(&p.get<server>(), [](server*) {}); })
            .name("hosting.http_server")
            .starts_first();
    });
}

server_options& server_builder::options() noexcept { return state_->options; }

server_builder& server_builder::route(std::string path, handler h, std::vector<std::string> methods)
{
    if (path.empty() || path.front() != '/')
        throw std::invalid_argument("http::server_builder: route '" + path + "' must start with '/'");
    if (!h)
        throw std::invalid_argument("http::server_builder: route '" + path + "' has an empty handler");
    if (methods.empty())
        throw std::invalid_argument("http::server_builder: route '" + path + "' has no methods");
    route_entry e;
    e.prefix = path.size() >= 2 && path.compare(path.size() - 2, 2, "/*") == 0;
    e.path = e.prefix ? path.substr(0, path.size() - 2) : path;
    for (const auto& r : state_->routes)
        if (r.path == e.path && r.prefix == e.prefix)
            throw std::invalid_argument("http::server_builder: route '" + path + "' is mounted twice");
    e.fn = std::move(h);
    e.methods = std::move(methods);
    for (const auto& m : e.methods)
        e.allow += (e.allow.empty() ? "" : ", ") + m;
    state_->routes.push_back(std::move(e));
    return *this;
}

server_builder& add_http_server(host_builder& builder) { return builder.feature<server_builder>(); }

// ---------------------------------------------------------------------------
// The server

struct server::impl : std::enable_shared_from_this<server::impl> {
    server_options options;
    std::vector<route_entry> routes;
    std::shared_ptr<metrics_registry> metrics;
    std::shared_ptr<spdlog::logger> log;
    // Shut down in stop(), which destroys the queued handlers.
    std::shared_ptr<detail::owned_io_context> io = std::make_shared<detail::owned_io_context>(1);
    std::optional<tcp::acceptor> acceptor; // io thread only, after start
    std::thread thread;
    std::atomic<std::uint16_t> bound_port{0};

    // A streamed body, as its route writes it (response::stream).
    struct live_stream final : body_stream, std::enable_shared_from_this<live_stream> {
        // The io_context outlives the timer, even past the server's stop,
        // for a route that holds the stream a moment longer.
        std::shared_ptr<void> keep_alive;
        impl* owner;
        beast::tcp_stream* stream; // the session's, while not ended
        asio::steady_timer timer;
        bool ended = false; // io thread only, as the rest
        bool woken = false;

        live_stream(impl& o, beast::tcp_stream& s)
            : keep_alive(o.io), owner(&o), stream(&s), timer(s.get_executor())
        {
        }

        asio::awaitable<bool> write(std::string data) override
        {
            if (ended)
                co_return false;
            boost::system::error_code ec;
            stream->expires_after(owner->options.write_timeout);
            co_await asio::async_write(*stream, asio::buffer(data), asio::redirect_error(asio::use_awaitable, ec));
            if (ended)
                co_return false;
            stream->expires_never();
            if (ec) {
                if (ec == beast::error::timeout)
                    owner->timeout_write->inc();
                end();
                co_return false;
            }
            co_return true;
        }

        asio::awaitable<bool> wait(std::chrono::milliseconds timeout) override
        {
            if (!ended && !woken) {
                timer.expires_after(timeout);
                boost::system::error_code ec;
                co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            }
            woken = false;
            co_return !ended;
        }

        void wake() noexcept override
        {
            try {
                asio::post(timer.get_executor(), [weak = weak_from_this()] {
                    if (auto self = weak.lock()) {
                        self->woken = true;
                        self->timer.cancel();
                    }
                });
            } catch (...) {
                // Out of memory: the wait ends at its timeout instead.
            }
        }

        // Displaced, the server stopping, or the route returned: no more
        // writes, and a wait ends now.
        void end() noexcept
        {
            ended = true;
            timer.cancel();
        }
    };

    // One open connection, as admission sees it.
    struct connection {
        beast::tcp_stream* stream = nullptr;
        asio::ip::address peer;
        // Since the accept or the end of the last response: what eviction
        // orders by, oldest first.
        std::chrono::steady_clock::time_point waiting_since;
        bool busy = false;     // a request was read whole and is being answered
        bool evicted = false;  // closed by admission; its session is ending
        bool reserved = false; // in a reserved slot: one quick request, then closed
        live_stream* live = nullptr; // while its body is streamed
    };

    // io thread only.
    bool closing = false;
    std::list<connection> connections;
    std::size_t admitted = 0; // connections not evicted, reserved slots aside
    std::size_t reserved_in_use = 0;
    std::unordered_map<asio::ip::address, std::size_t> reserved_by_address;
    std::unordered_map<asio::ip::address, std::size_t> per_address; // admitted, by peer
    std::map<std::pair<const route_entry*, unsigned>, metric_counter*> request_counters;
    metric_counter* rejected = nullptr;       // every connection it could displace was busy
    metric_counter* rejected_share = nullptr; // its address held as many as any other
    metric_counter* reserved = nullptr;
    metric_counter* evicted_capacity = nullptr;
    metric_counter* evicted_address = nullptr;
    metric_counter* timeout_request = nullptr;
    metric_counter* timeout_idle = nullptr;
    metric_counter* timeout_write = nullptr;
    metric_gauge* open_connections = nullptr;

    // The end of the io thread, told to a stop() waiting for it.
    std::mutex end_mutex;
    bool thread_done = false;               // under end_mutex
    std::function<void()> on_thread_done;   // under end_mutex
    std::optional<std::stop_callback<std::function<void()>>> on_deadline;

    impl(server_options o, std::vector<route_entry> r, std::shared_ptr<metrics_registry> m,
         std::shared_ptr<spdlog::logger> l)
        : options(std::move(o)), routes(std::move(r)), metrics(std::move(m)), log(std::move(l))
    {
        const char* rejected_help = "Connections to the HTTP server closed at once";
        rejected = &metrics->counter("hosting_http_connections_rejected_total", rejected_help, {{"reason", "busy"}});
        rejected_share = &metrics->counter("hosting_http_connections_rejected_total", rejected_help,
                                           {{"reason", "share"}});
        reserved = &metrics->counter("hosting_http_connections_reserved_total",
                                     "Connections to the HTTP server admitted to a slot kept for quick requests");
        const char* evicted_help = "Connections to the HTTP server closed to admit a new one";
        evicted_capacity = &metrics->counter("hosting_http_connections_evicted_total", evicted_help,
                                             {{"reason", "capacity"}});
        evicted_address = &metrics->counter("hosting_http_connections_evicted_total", evicted_help,
                                            {{"reason", "address"}});
        const char* timeout_help = "Connections to the HTTP server closed by a time limit";
        timeout_request = &metrics->counter("hosting_http_timeouts_total", timeout_help, {{"kind", "request"}});
        timeout_idle = &metrics->counter("hosting_http_timeouts_total", timeout_help, {{"kind", "idle"}});
        timeout_write = &metrics->counter("hosting_http_timeouts_total", timeout_help, {{"kind", "write"}});
        open_connections = &metrics->gauge("hosting_http_open_connections", "Open connections to the HTTP server");
    }

    std::size_t address_cap() const
    {
        return options.max_connections_per_address != 0 ? options.max_connections_per_address
                                                         : std::max<std::size_t>(1, options.max_connections / 4);
    }

    // The connection to displace: among those without a request in
    // progress, of `peer` (or of anyone when null), one of the address that
    // holds the most slots, and of those the one that has waited longest;
    // null when all are busy. By address first: a client that reconnects as
    // fast as it is evicted would otherwise cycle through every slot, and
    // evict a probe that waits for its turn to be read.
    connection* oldest_waiting(const asio::ip::address* peer)
    {
        connection* oldest = nullptr;
        std::size_t oldest_holds = 0;
        for (auto& c : connections) {
            if (c.busy || c.evicted || c.reserved || (peer && c.peer != *peer))
                continue;
            const auto it = per_address.find(c.peer);
            const std::size_t holds = it == per_address.end() ? 0 : it->second;
            if (!oldest || holds > oldest_holds ||
                (holds == oldest_holds && c.waiting_since < oldest->waiting_since)) {
                oldest = &c;
                oldest_holds = holds;
            }
        }
        return oldest;
    }

    // Takes a regular connection out of the counts (evicted, or ended).
    void forget_admitted(const asio::ip::address& peer)
    {
        --admitted;
        if (--per_address[peer] == 0)
            per_address.erase(peer);
    }

    void evict(connection& c)
    {
        c.evicted = true;
        forget_admitted(c.peer);
        if (c.live)
            c.live->end();
        // Its pending read ends with an error, and its session with it.
        c.stream->close();
    }

    enum class admission { refused, refused_share, regular, reserved };

    std::size_t heaviest_holding() const
    {
        std::size_t most = 0;
        for (const auto& [address, holds] : per_address)
            most = std::max(most, holds);
        return most;
    }

    // Makes room for a connection from `peer`, displacing a waiting one if
    // it must; refused when every connection it could displace is busy.
    admission admit(const asio::ip::address& peer)
    {
        // Every connection it could displace busy with a request (a slow
        // route, say): a probe still gets in, on a short fuse. One address
        // gets at most half of the reserved slots (at least one), so that
        // one client cannot hold them all.
        auto reserve = [&] {
            auto& mine = reserved_by_address[peer];
            if (reserved_in_use >= options.reserved_connections ||
                mine >= std::max<std::size_t>(1, options.reserved_connections / 2)) {
                if (mine == 0)
                    reserved_by_address.erase(peer);
                return admission::refused;
            }
            ++mine;
            ++reserved_in_use;
            reserved->inc();
            publish_open();
            return admission::reserved;
        };
        auto it = per_address.find(peer);
        if (it != per_address.end() && it->second >= address_cap()) {
            auto* victim = oldest_waiting(&peer);
            if (!victim)
                return reserve();
            evict(*victim);
            evicted_address->inc();
        } else if (admitted >= options.max_connections) {
            auto* victim = oldest_waiting(nullptr);
            if (!victim)
                return reserve();
            // An address that holds as many slots as any other takes none
            // from another: it is refused at once, which costs an accept and
            // a close, where an eviction costs the whole exchange of the
            // client that comes back for its slot. Clients that reconnect as
            // fast as they are closed then cost the server little, and a
            // probe (whose address holds fewer) still gets in. (With nothing
            // to evict, the reserved slots above are for every address.)
            if (it != per_address.end() && it->second >= heaviest_holding())
                return admission::refused_share;
            evict(*victim);
            evicted_capacity->inc();
        }
        // Counted here, not when its session starts: the accepts queued
        // before that must see it.
        ++admitted;
        ++per_address[peer];
        publish_open();
        return admission::regular;
    }

    void publish_open() { open_connections->set(static_cast<double>(admitted + reserved_in_use)); }

    void release_reserved(const asio::ip::address& peer)
    {
        --reserved_in_use;
        if (--reserved_by_address[peer] == 0)
            reserved_by_address.erase(peer);
    }

    void count(const route_entry* r, unsigned code)
    {
        auto& c = request_counters[{r, code}];
        if (!c)
            c = &metrics->counter("hosting_http_requests_total", "Requests to the HTTP server",
                                  {{"path", r ? (r->prefix ? r->path + "/*" : r->path) : std::string("other")},
                                   {"code", std::to_string(code)}});
        c->inc();
    }

    const route_entry* match(std::string_view path) const
    {
        const route_entry* best = nullptr;
        for (const auto& r : routes) {
            const bool hit = r.prefix ? (path == r.path || (path.size() > r.path.size() &&
                                                             path.compare(0, r.path.size(), r.path) == 0 &&
                                                             (r.path.back() == '/' || path[r.path.size()] == '/')))
                                      : path == r.path;
            if (hit && (!best || (!r.prefix && best->prefix) ||
                        (r.prefix == best->prefix && r.path.size() > best->path.size())))
                best = &r;
        }
        return best;
    }

    static asio::awaitable<void> accept_loop(std::shared_ptr<impl> self)
    {
        for (;;) {
            boost::system::error_code ec;
            tcp::socket socket = co_await self->acceptor->async_accept(asio::redirect_error(asio::use_awaitable, ec));
            if (self->closing)
                co_return;
            if (ec == asio::error::connection_aborted)
                continue; // the client gave up while queued
            if (ec) {
                // Out of descriptors, typically: back off instead of spinning.
                self->log->warn("HTTP server: accept failed: {}", ec.message());
                asio::steady_timer pause(*self->io, std::chrono::milliseconds(50));
                co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                continue;
            }
            take(self, std::move(socket));
            // Drain a burst here, without a trip through the loop for each
            // connection: under a connection flood the listen queue must
            // not grow ahead of a probe's connection. Bounded, so that the
            // open connections get their turn. (The acceptor is
            // non-blocking: an empty queue ends the burst.)
            for (int burst = 0; burst < 64 && !self->closing; ++burst) {
                tcp::socket more(*self->io);
                self->acceptor->accept(more, ec);
                if (ec)
                    break;
                take(self, std::move(more));
            }
        }
    }

    static void take(const std::shared_ptr<impl>& self, tcp::socket socket)
    {
        boost::system::error_code ec;
        auto peer = socket.remote_endpoint(ec);
        if (ec)
            return; // gone already
        const auto admitted = self->admit(peer.address());
        if (admitted == admission::refused || admitted == admission::refused_share) {
            (admitted == admission::refused ? self->rejected : self->rejected_share)->inc();
            // A reset, not a close: a refused connection leaves no
            // TIME_WAIT behind on the server.
            socket.set_option(asio::socket_base::linger(true, 0), ec);
            socket.close(ec);
            return;
        }
        asio::co_spawn(*self->io, session(self, std::move(socket), peer.address(), admitted == admission::reserved),
                       asio::detached);
    }

    struct reply {
        response res;
        const route_entry* r = nullptr;
        bool unread_input = false; // the request was refused before it was read whole
    };

    static asio::awaitable<void> linger(const std::shared_ptr<impl>& self, beast::tcp_stream& stream)
    {
        boost::system::error_code ec;
        stream.socket().shutdown(tcp::socket::shutdown_send, ec);
        stream.expires_after(std::min<std::chrono::milliseconds>(self->options.request_timeout, std::chrono::seconds(1)));
        // Enough for the client to finish a request it sent before reading
        // our answer, and little enough that a flood of oversized bodies
        // costs the server's thread little: past it, the close may reset
        // the connection.
        char sink[16 * 1024];
        for (std::size_t total = 0; !ec && total < 64 * 1024 && !self->closing;)
            total += co_await stream.async_read_some(asio::buffer(sink), asio::redirect_error(asio::use_awaitable, ec));
    }

    static asio::awaitable<reply> answer(std::shared_ptr<impl> self, const bhttp::request<bhttp::string_body>& req,
                                         beast::tcp_stream& stream)
    {
        const std::string_view target = req.target();
        const auto question = target.find('?');
        const std::string_view path = target.substr(0, question);
        const auto* r = self->match(path);
        if (!r) {
            std::string known;
            for (const auto& e : self->routes)
                known += (known.empty() ? "" : ", ") + (e.prefix ? e.path + "/*" : e.path);
            co_return reply{response::error(404, "no such path; try " + known)};
        }
        const std::string_view method = req.method_string();
        const bool allowed = std::any_of(r->methods.begin(), r->methods.end(), [&](const std::string& m) {
            return m == method || (method == "HEAD" && m == "GET");
        });
        if (!allowed) {
            reply out{response::error(405, "only " + r->allow + " allowed here"), r};
            out.res.headers.emplace_back("Allow", r->allow);
            co_return out;
        }
        request in;
        in.method = method;
        in.target = target;
        in.path = path;
        in.query = question == std::string_view::npos ? std::string_view{} : target.substr(question + 1);
        in.body = req.body();
        boost::system::error_code ec;
        auto peer = stream.socket().remote_endpoint(ec);
        if (!ec)
            in.remote_address = peer.address().to_string();
        for (const auto& field : req)
            in.headers.emplace_back(field.name_string(), field.value());
        in.keep_alive = self->io;
        auto op = r->fn(in);
        // Named before it is used: GCC 12 destroys a temporary that a
        // co_await yields inside a braced initializer twice.
        response res = co_await std::move(op);
        co_return reply{std::move(res), r};
    }

    // Sends the head of a streamed response, then lets its route write the
    // body until it returns or the stream must end.
    static asio::awaitable<void> stream_body(std::shared_ptr<impl> self, beast::tcp_stream& stream,
                                             connection& conn, response res, bool head)
    {
        bhttp::response<bhttp::empty_body> h{static_cast<bhttp::status>(res.status), 11};
        h.set(bhttp::field::content_type, res.content_type);
        h.set(bhttp::field::cache_control, "no-store");
        for (const auto& [name, value] : res.headers)
            h.set(name, value);
        h.keep_alive(false);
        // From here it waits on its client, or on news: displaceable.
        conn.busy = false;
        conn.waiting_since = std::chrono::steady_clock::now();
        stream.expires_after(self->options.write_timeout);
        bhttp::response_serializer<bhttp::empty_body> serializer{h};
        boost::system::error_code ec;
        co_await bhttp::async_write_header(stream, serializer, asio::redirect_error(asio::use_awaitable, ec));
        if (ec == beast::error::timeout && !conn.evicted)
            self->timeout_write->inc();
        if (ec || head || self->closing || conn.evicted)
            co_return;
        stream.expires_never();
        auto live = std::make_shared<live_stream>(*self, stream);
        conn.live = live.get();
        // The client says nothing more on a stream: whatever it sends, its
        // close included, ends it at once rather than at the next write.
        auto sink = std::make_shared<std::array<char, 256>>();
        stream.async_read_some(asio::buffer(*sink),
                               [weak = std::weak_ptr<live_stream>(live), sink](boost::system::error_code, std::size_t) {
                                   if (auto l = weak.lock())
                                       l->end();
                               });
        std::exception_ptr failure;
        try {
            auto op = res.stream(live);
            co_await std::move(op);
        } catch (...) {
            failure = std::current_exception();
        }
        conn.live = nullptr;
        live->end(); // a copy its route kept writes nothing more
        live->stream = nullptr;
        boost::system::error_code ignored;
        stream.socket().cancel(ignored); // the read above
        if (failure)
            self->log->error("HTTP server: a streamed response failed: {}", detail::describe(failure));
    }

    static asio::awaitable<void> session(std::shared_ptr<impl> self, tcp::socket socket, asio::ip::address peer,
                                         bool in_reserve)
    {
        beast::tcp_stream stream(std::move(socket));
        // Counted by admit(). However the session ends (an exception
        // included), it leaves the list, and the counts unless an eviction
        // took it out of them.
        struct registration {
            impl& owner;
            std::list<connection>::iterator it;
            registration(impl& o, beast::tcp_stream* s, const asio::ip::address& peer, bool in_reserve) : owner(o)
            {
                it = owner.connections.insert(owner.connections.end(),
                                              connection{s, peer, std::chrono::steady_clock::now()});
                it->reserved = in_reserve;
            }
            ~registration()
            {
                if (it->reserved) {
                    owner.release_reserved(it->peer);
                } else if (!it->evicted) {
                    owner.forget_admitted(it->peer);
                }
                owner.connections.erase(it);
                owner.publish_open();
                // The last one gone (a stream ended by the stop, say): the
                // stop need not wait out its grace.
                if (owner.closing && owner.connections.empty())
                    owner.io->stop();
            }
        } registered(*self, &stream, peer, in_reserve);
        auto& conn = *registered.it;
        // The buffer's cap is what keeps a flood of bytes from growing memory.
        beast::flat_buffer buffer(self->options.max_header_bytes + self->options.max_body_bytes + 1024);
        bool answered_one = false;
        for (;;) {
            conn.busy = false;
            boost::system::error_code ec;
            if (answered_one && buffer.size() == 0) {
                // Kept alive: idle until the next request's first byte, whose
                // whole request then has request_timeout.
                stream.expires_after(self->options.idle_timeout);
                auto space = buffer.prepare(std::min<std::size_t>(4096, buffer.max_size() - buffer.size()));
                auto got = co_await stream.async_read_some(space, asio::redirect_error(asio::use_awaitable, ec));
                buffer.commit(got);
                if (self->closing || conn.evicted)
                    break;
                if (ec == beast::error::timeout)
                    self->timeout_idle->inc();
                if (ec)
                    break;
            }
            bhttp::request_parser<bhttp::string_body> parser;
            parser.header_limit(static_cast<std::uint32_t>(self->options.max_header_bytes));
            parser.body_limit(self->options.max_body_bytes);
            stream.expires_after(conn.reserved ? self->options.reserved_request_timeout
                                               : self->options.request_timeout);
            co_await bhttp::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
            if (self->closing || conn.evicted)
                break;
            if (ec == beast::error::timeout)
                self->timeout_request->inc();
            conn.busy = !ec;
            reply out;
            bool keep_alive = false;
            bool head = false;
            if (!ec) {
                keep_alive = parser.get().keep_alive() && !conn.reserved;
                std::exception_ptr failure;
                try {
                    auto op = answer(self, parser.get(), stream);
                    out = co_await std::move(op);
                } catch (...) {
                    failure = std::current_exception();
                }
                if (failure) {
                    // A throwing metrics collector, say: the client gets a
                    // 500, the log the reason, and the endpoint stays up.
                    self->log->error("HTTP server: {} {} failed: {}", std::string(parser.get().method_string()),
                                     std::string(parser.get().target()), detail::describe(failure));
                    out = reply{response::error(500, "internal error; see the log"), out.r};
                    keep_alive = false;
                }
                head = parser.get().method() == bhttp::verb::head;
            } else if (ec == bhttp::error::header_limit || ec == bhttp::error::buffer_overflow) {
                out = reply{response::error(431, "request header too large")};
                out.unread_input = true;
            } else if (ec == bhttp::error::body_limit) {
                out = reply{response::error(413, "request body too large")};
                out.unread_input = true;
            } else if (ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message) {
                break; // the client closed
            } else if (ec.category() == bhttp::make_error_code(bhttp::error::bad_method).category()) {
                out = reply{response::error(400, "malformed request: " + ec.message())};
                out.unread_input = true;
            } else {
                break; // timeout, reset, or the stop closing the socket
            }
            if (self->closing)
                break;
            self->count(out.r, out.res.status);

            bhttp::response<bhttp::string_body> res{static_cast<bhttp::status>(out.res.status), 11};
            res.set(bhttp::field::content_type, out.res.content_type);
            res.set(bhttp::field::cache_control, "no-store");
            for (const auto& [name, value] : out.res.headers)
                res.set(name, value);
            res.keep_alive(keep_alive);
            res.body() = std::move(out.res.body);
            res.prepare_payload();
            if (out.res.stream && !conn.reserved) {
                auto op = stream_body(self, stream, conn, std::move(out.res), head);
                co_await std::move(op);
                break;
            }
            if (head)
                res.body().clear(); // Content-Length stays the GET's
            // The answer is made: what is left waits on the client reading
            // it, so the connection may be displaced like an idle one (a
            // client that does not read cannot hold a slot for the whole
            // write_timeout).
            conn.busy = false;
            conn.waiting_since = std::chrono::steady_clock::now();
            stream.expires_after(conn.reserved ? std::min(self->options.write_timeout,
                                                          self->options.reserved_request_timeout)
                                               : self->options.write_timeout);
            co_await bhttp::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
            if (ec == beast::error::timeout && !conn.evicted)
                self->timeout_write->inc();
            conn.waiting_since = std::chrono::steady_clock::now();
            answered_one = true;
            // Under pressure (a flood of oversized requests, say), and on a
            // reserved slot, the courtesy of letting the client read its
            // answer is dropped.
            if (!ec && out.unread_input && !conn.reserved && !conn.evicted &&
                self->admitted <= self->options.max_connections / 2)
                co_await linger(self, stream);
            if (ec || !keep_alive || conn.evicted)
                break;
        }
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }
};

server::server(service_provider& provider, std::shared_ptr<server_builder::state> state)
{
    // Not owned: the provider made the registry before this server and
    // destroys it after.
    impl_ = std::make_shared<impl>(state->options, state->routes,
                                   std::shared_ptr<metrics_registry>(std::shared_ptr<void>{}, &provider.get<metrics_registry>()),
                                   provider.get<logger_factory>().get("hosting.http"));
}

server::~server()
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

std::uint16_t server::port() const noexcept { return impl_->bound_port.load(); }

asio::awaitable<void> server::start(std::stop_token)
{
    auto& s = *impl_;
    const tcp::endpoint where(asio::ip::make_address(s.options.address), s.options.port);
    tcp::acceptor acceptor(*s.io);
    try {
        acceptor.open(where.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        acceptor.bind(where);
        // What accepted connections inherit: room for the largest request
        // the limits allow, not the megabytes Linux grows a loopback buffer
        // to. A client that sends an oversized body as fast as it can then
        // blocks on its own side instead of making the kernel copy data the
        // server will throw away.
        acceptor.set_option(asio::socket_base::receive_buffer_size(static_cast<int>(std::min<std::size_t>(
            std::max<std::size_t>(64 * 1024, s.options.max_header_bytes + s.options.max_body_bytes + 4096),
            std::numeric_limits<int>::max()))));
        acceptor.listen(asio::socket_base::max_listen_connections);
        acceptor.non_blocking(true); // for the accept loop's bursts
        // A connection aborted while queued is an error to see, not one
        // for a synchronous accept to wait past (which would block).
        acceptor.set_option(asio::socket_base::enable_connection_aborted(true));
    } catch (const boost::system::system_error& e) {
        throw std::system_error(e.code(), "HTTP server: cannot listen on " + s.options.address + ":" +
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
                self->log->error("HTTP server: unexpected error: {}", detail::describe(std::current_exception()));
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
    std::string routes;
    for (const auto& r : s.routes)
        routes += (routes.empty() ? "" : ", ") + (r.prefix ? r.path + "/*" : r.path);
    s.log->info("HTTP server listening on http://{}:{} ({})", s.options.address, s.bound_port.load(), routes);
    co_return;
}

asio::awaitable<void> server::stop(std::stop_token cancel)
{
    auto self = impl_;
    if (!self->thread.joinable())
        co_return;
    // Close everything; connections waiting on a check cannot be woken, so
    // the loop is stopped after a short grace, and ~server (or the
    // shutdown below) destroys what is left of them.
    asio::post(*self->io, [self] {
        self->closing = true;
        boost::system::error_code ec;
        self->acceptor->close(ec);
        for (auto& c : self->connections) {
            if (c.live)
                c.live->end();
            c.stream->socket().close(ec);
        }
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
    self->log->debug("HTTP server stopped");
}

} // namespace hosting::http
