// Runs attacks against the host's HTTP server on loopback while a prober
// asks /health/live every 50 ms on a fresh connection with a 1 s timeout
// (what a kubelet does), and prints, per attack, how many probes were
// answered 200 and their latency, and the same for a /metrics scrape every
// 250 ms, beside the same probes with no attack in the same run.
//
//   http_attack_bench [seconds_per_attack=10] [attacker_nice=10] [both|hosting|raw] [name part|name part...]
//
// Each attack runs against the host's server and then against a baseline:
// the server one writes by hand with Beast, on one thread, with no limits
// and no admission policy ("raw Beast"), which shows what the attack costs
// this machine whatever the server does.
//
// The server runs with its default options. Attackers connect from other
// loopback addresses (all of 127/8 is loopback): "one address" attacks come
// from 127.0.0.2, "many addresses" ones from 127.0.1.1 to 127.0.1.64.
// A remote attacker does not share the server's CPU; one on this machine
// does, so its thread runs at nice 10 by default to stand for one that is
// elsewhere. With attacker_nice=0 it competes on equal terms, which on two
// cores measures the machine as much as the server.
#include <hosting/hosting.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/http/server.hpp>
#include <hosting/logging/logging.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <spdlog/sinks/null_sink.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

const std::string live_request = "GET /health/live HTTP/1.1\r\nHost: bench\r\n\r\n";
int attacker_nice = 10;

struct probe_figures {
    int sent = 0;
    int ok = 0;
    std::vector<double> latencies_ms; // of the answered ones
    int scrapes_sent = 0;
    int scrapes_ok = 0;
    std::vector<double> scrape_ms;
};

// One probe: connect, ask, read to the close; 200 within a second or not.
bool probe(unsigned short port, double& ms, const char* target = "/health/live")
{
    asio::io_context io;
    tcp::socket socket(io);
    std::string request = std::string("GET ") + target + " HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n";
    std::string received;
    bool done = false;
    const auto began = clock_type::now();
    socket.async_connect({asio::ip::make_address("127.0.0.1"), port}, [&](boost::system::error_code ec) {
        if (ec)
            return;
        asio::async_write(socket, asio::buffer(request), [&](boost::system::error_code ec, std::size_t) {
            if (ec)
                return;
            asio::async_read(socket, asio::dynamic_buffer(received),
                             [&](boost::system::error_code, std::size_t) { done = true; });
        });
    });
    io.run_for(1s);
    ms = std::chrono::duration<double, std::milli>(clock_type::now() - began).count();
    return done && received.rfind("HTTP/1.1 200", 0) == 0;
}

probe_figures probe_for(unsigned short port, std::chrono::seconds how_long)
{
    probe_figures f;
    const auto end = clock_type::now() + how_long;
    // A Prometheus scrape of /metrics every 250 ms beside the probes.
    std::thread scraper([&] {
        auto next = clock_type::now();
        while (clock_type::now() < end) {
            double ms = 0;
            ++f.scrapes_sent;
            if (probe(port, ms, "/metrics")) {
                ++f.scrapes_ok;
                f.scrape_ms.push_back(ms);
            }
            next += 250ms;
            std::this_thread::sleep_until(next);
        }
    });
    auto next = clock_type::now();
    while (clock_type::now() < end) {
        double ms = 0;
        ++f.sent;
        if (probe(port, ms)) {
            ++f.ok;
            f.latencies_ms.push_back(ms);
        }
        next += 50ms;
        std::this_thread::sleep_until(next); // the probe's period, not a wait for state
    }
    scraper.join();
    return f;
}

double percentile(std::vector<double> v, double p)
{
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())))];
}

// --- attackers --------------------------------------------------------------

std::vector<std::string> addresses(bool many)
{
    if (!many)
        return {"127.0.0.2"};
    std::vector<std::string> out;
    for (int i = 1; i <= 64; ++i)
        out.push_back("127.0.1." + std::to_string(i));
    return out;
}

// An attack: connections that each run `behave` and are opened again
// whenever they end, on one thread, until stopped.
class attacker {
public:
    using behaviour = std::function<void(std::shared_ptr<tcp::socket>, std::function<void()> again)>;

    attacker(unsigned short port, std::vector<std::string> from, int connections, behaviour behave)
        : port_(port), from_(std::move(from)), behave_(std::move(behave))
    {
        for (int i = 0; i < connections; ++i)
            open(static_cast<std::size_t>(i));
        thread_ = std::thread([this] {
            // This thread only (a Linux thread's own nice value).
            setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), attacker_nice);
            io_.run();
        });
    }
    ~attacker()
    {
        io_.stop();
        thread_.join();
    }
    long opened() const { return opened_.load(); }

private:
    void open(std::size_t slot)
    {
        auto socket = std::make_shared<tcp::socket>(io_);
        boost::system::error_code ec;
        socket->open(tcp::v4(), ec);
        // The port is then chosen by connect(), by the whole address pair.
        // A bind() that picks one marks the port unusable for every other
        // connect() on this machine, and tens of thousands of them (in
        // TIME_WAIT after a flood) make the prober's connect() search the
        // port range for a long time: a cost of sharing one kernel with
        // the attacker that a remote attacker does not impose.
        const int no_port = 1;
        ::setsockopt(socket->native_handle(), IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &no_port, sizeof no_port);
        socket->bind({asio::ip::make_address(from_[slot % from_.size()]), 0}, ec);
        socket->async_connect({asio::ip::make_address("127.0.0.1"), port_},
                              [this, socket, slot](boost::system::error_code ec) {
                                  auto again = [this, socket, slot] {
                                      boost::system::error_code ignored;
                                      // A reset: a remote attacker's TIME_WAIT
                                      // would be on its own machine, not in
                                      // the kernel the prober shares.
                                      socket->set_option(asio::socket_base::linger(true, 0), ignored);
                                      socket->close(ignored);
                                      open(slot);
                                  };
                                  if (ec) {
                                      // Refused or reset: try again shortly.
                                      auto t = std::make_shared<asio::steady_timer>(io_, 10ms);
                                      t->async_wait([t, again](boost::system::error_code) { again(); });
                                      return;
                                  }
                                  ++opened_;
                                  behave_(socket, again);
                              });
    }

    unsigned short port_;
    std::vector<std::string> from_;
    behaviour behave_;
    asio::io_context io_;
    std::atomic<long> opened_{0};
    std::thread thread_;
};

// Waits for the server to close the connection, then calls `again`.
void until_closed(const std::shared_ptr<tcp::socket>& s, std::function<void()> again)
{
    auto sink = std::make_shared<std::array<char, 4096>>();
    s->async_read_some(asio::buffer(*sink), [s, sink, again](boost::system::error_code ec, std::size_t) {
        if (ec)
            again();
        else
            until_closed(s, again);
    });
}

// Half a request, then nothing; opened again after 4 s (before a 5 s
// request timeout would free the slot) or when the server closes it.
attacker::behaviour slow_head()
{
    return [](std::shared_ptr<tcp::socket> s, std::function<void()> again) {
        static const std::string half = "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        asio::async_write(*s, asio::buffer(half), [](boost::system::error_code, std::size_t) {});
        auto fired = std::make_shared<bool>(false);
        auto once = [fired, again] {
            if (!*fired) {
                *fired = true;
                again();
            }
        };
        auto t = std::make_shared<asio::steady_timer>(s->get_executor(), 4s);
        t->async_wait([t, once](boost::system::error_code) { once(); });
        until_closed(s, [t, once] {
            t->cancel();
            once();
        });
    };
}

// One whole request, then idle on the kept-alive connection.
attacker::behaviour idle_keep_alive()
{
    return [](std::shared_ptr<tcp::socket> s, std::function<void()> again) {
        asio::async_write(*s, asio::buffer(live_request), [](boost::system::error_code, std::size_t) {});
        until_closed(s, again);
    };
}

// Connect and close, as fast as it goes.
attacker::behaviour connection_flood()
{
    return [](std::shared_ptr<tcp::socket>, std::function<void()> again) { again(); };
}

// Requests back to back on a kept-alive connection, each after the answer
// to the one before.
void ask_forever(std::shared_ptr<tcp::socket> s, std::shared_ptr<std::string> seen, std::atomic<long>* completed,
                 std::function<void()> again)
{
    asio::async_write(*s, asio::buffer(live_request), [s, seen, completed, again](boost::system::error_code ec,
                                                                                   std::size_t) {
        if (ec)
            return again();
        auto buf = std::make_shared<std::array<char, 8192>>();
        // Reads until this answer's end: the body is the last thing sent,
        // and the next request goes out after it.
        auto reader = std::make_shared<std::function<void()>>();
        *reader = [s, seen, completed, again, buf, reader] {
            s->async_read_some(asio::buffer(*buf), [s, seen, completed, again, buf, reader](
                                                       boost::system::error_code ec, std::size_t n) {
                if (ec)
                    return again();
                seen->append(buf->data(), n);
                auto head_end = seen->find("\r\n\r\n");
                auto length_at = seen->find("Content-Length: ");
                if (head_end == std::string::npos || length_at == std::string::npos)
                    return (*reader)();
                auto length = std::stoul(seen->substr(length_at + 16));
                if (seen->size() < head_end + 4 + length)
                    return (*reader)();
                seen->erase(0, head_end + 4 + length);
                ++*completed;
                ask_forever(s, seen, completed, again);
            });
        };
        (*reader)();
    });
}

// A body far over the limit, sent as fast as it goes.
attacker::behaviour oversized_body()
{
    return [](std::shared_ptr<tcp::socket> s, std::function<void()> again) {
        static const std::string head = "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n";
        static const std::string chunk(64 * 1024, 'x');
        asio::async_write(*s, asio::buffer(head), [](boost::system::error_code, std::size_t) {});
        auto pump = std::make_shared<std::function<void()>>();
        *pump = [s, pump] {
            asio::async_write(*s, asio::buffer(chunk), [s, pump](boost::system::error_code ec, std::size_t) {
                if (!ec)
                    (*pump)();
            });
        };
        (*pump)();
        until_closed(s, again);
    };
}

// --- the baseline: the server one writes by hand with Beast ----------------

// One thread, like the host's loop; no connection limit, a 5 s limit on each
// read, a 1 KiB body limit, keep-alive: what the attacks cost the machine
// and Beast without any admission policy.
class raw_server {
public:
    raw_server() : acceptor_(io_, {asio::ip::make_address("127.0.0.1"), 0})
    {
        asio::co_spawn(io_, accept_loop(), asio::detached);
        thread_ = std::thread([this] { io_.run(); });
    }
    ~raw_server()
    {
        io_.stop();
        thread_.join();
    }
    unsigned short port() const { return acceptor_.local_endpoint().port(); }

private:
    asio::awaitable<void> accept_loop()
    {
        for (;;) {
            boost::system::error_code ec;
            tcp::socket socket = co_await acceptor_.async_accept(asio::redirect_error(asio::use_awaitable, ec));
            if (!ec)
                asio::co_spawn(io_, session(beast::tcp_stream(std::move(socket))), asio::detached);
        }
    }

    static asio::awaitable<void> session(beast::tcp_stream stream)
    {
        beast::flat_buffer buffer;
        for (;;) {
            http::request_parser<http::string_body> parser;
            parser.body_limit(1024);
            boost::system::error_code ec;
            stream.expires_after(5s);
            co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                break;
            auto& req = parser.get();
            http::response<http::string_body> res{req.target() == "/health/live" || req.target() == "/metrics"
                                                      ? http::status::ok
                                                      : http::status::not_found,
                                                  req.version()};
            res.set(http::field::content_type, "text/plain");
            res.body() = "Healthy";
            res.keep_alive(req.keep_alive());
            res.prepare_payload();
            co_await http::async_write(stream, res, asio::redirect_error(asio::use_awaitable, ec));
            if (ec || !res.keep_alive())
                break;
        }
        boost::system::error_code ignored;
        stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    }

    asio::io_context io_{1};
    tcp::acceptor acceptor_;
    std::thread thread_;
};

void print_row(const char* what, const probe_figures& f, const std::string& attack_side)
{
    std::printf("%-52s %5d/%-5d %7.2f%% %8.2f %8.2f %8.2f %5d/%-4d %8.2f   %s\n", what, f.ok, f.sent,
                f.sent ? 100.0 * f.ok / f.sent : 0.0, percentile(f.latencies_ms, 0.5),
                percentile(f.latencies_ms, 0.99), percentile(f.latencies_ms, 1.0), f.scrapes_ok, f.scrapes_sent,
                percentile(f.scrape_ms, 0.99), attack_side.c_str());
    std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv)
{
    const auto seconds = std::chrono::seconds(argc > 1 ? std::atoi(argv[1]) : 10);
    attacker_nice = argc > 2 ? std::atoi(argv[2]) : 10;
    const std::string which = argc > 3 ? argv[3] : "both";
    const std::string only = argc > 4 ? argv[4] : ""; // run the attacks whose name contains this

    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    builder.logging().sinks.push_back(std::make_shared<spdlog::sinks::null_sink_mt>());
    hosting::health_endpoint_options options;
    options.port = 0; // every other option at its default
    hosting::add_health_endpoint(builder, options);
    auto host = builder.build();
    host.start_blocking();
    raw_server raw;

    std::printf("http_attack_bench: /health/live probed every 50 ms for %lld s per row, 1 s probe timeout; "
                "server at its defaults (max_connections %zu); attacker at nice %d\n",
                static_cast<long long>(seconds.count()), options.max_connections, attacker_nice);
    std::printf("%-52s %11s %8s %8s %8s %8s %10s %8s   %s\n", "attack [server]", "probes", "", "p50 ms", "p99 ms",
                "max ms", "scrapes", "p99 ms", "attacker");

    // Each attack against one server, then the other: side by side, and
    // neither row always runs in the wake of the same one.
    struct target {
        const char* name;
        unsigned short port;
    };
    std::vector<target> targets;
    if (which != "raw")
        targets.push_back({"hosting", host.services().get<hosting::http::server>().port()});
    if (which != "hosting")
        targets.push_back({"raw Beast", raw.port()});
    auto label = [](const char* attack, const target& t) { return std::string(attack) + " [" + t.name + "]"; };
    for (const auto& t : targets)
        print_row(label("none (baseline)", t).c_str(), probe_for(t.port, seconds), "");
    // Several parts may be given, separated by '|': a row runs if its name contains any.
    auto wanted = [&](const char* name) {
        std::string_view parts = only;
        for (;;) {
            const auto bar = parts.find('|');
            if (std::string_view(name).find(parts.substr(0, bar)) != std::string_view::npos)
                return true;
            if (bar == std::string_view::npos)
                return false;
            parts.remove_prefix(bar + 1);
        }
    };
    auto run = [&](const char* name, bool many, int connections, attacker::behaviour behave) {
        if (!wanted(name))
            return;
        for (const auto& t : targets) {
            attacker a(t.port, addresses(many), connections, behave);
            auto f = probe_for(t.port, seconds);
            char side[96];
            std::snprintf(side, sizeof side, "%ld connections opened", a.opened());
            print_row(label(name, t).c_str(), f, side);
        }
    };
    run("slow request heads, one address (300)", false, 300, slow_head());
    run("slow request heads, 64 addresses (300)", true, 300, slow_head());
    run("idle keep-alive, 64 addresses (300)", true, 300, idle_keep_alive());
    run("connection flood, 64 addresses (8)", true, 8, connection_flood());
    for (const auto& t : targets) {
        if (!wanted("request flood, one address (16 conns)"))
            break;
        std::atomic<long> answered{0};
        auto behave = [&answered](std::shared_ptr<tcp::socket> s, std::function<void()> again) {
            ask_forever(std::move(s), std::make_shared<std::string>(), &answered, std::move(again));
        };
        auto flood = std::make_unique<attacker>(t.port, addresses(false), 16, behave);
        auto figures = probe_for(t.port, seconds);
        flood.reset();
        char side[96];
        std::snprintf(side, sizeof side, "%ld requests answered", answered.load());
        print_row(label("request flood, one address (16 conns)", t).c_str(), figures, side);
    }
    run("oversized bodies, 64 addresses (64)", true, 64, oversized_body());

    host.stop_blocking();
    return 0;
}
