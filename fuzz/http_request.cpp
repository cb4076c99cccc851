// HTTP requests: any bytes a client sends to the host's HTTP server (with
// the health endpoint, the jobs dashboard over a few jobs, and a route that
// reads headers, query parameters and a body) get a well-formed HTTP/1.1
// response or a closed connection, and the server goes on answering: no
// crash, no hang, no lost probe.
//
// The server is the real one, on a loopback port: each input is written on
// a new connection, which is then half-closed, and the answer read to its
// end (or, for an event stream, to the end of its head). Every 64th input
// (every one when replaying) a plain probe must get 200 after it.
//
// Input: the bytes sent; "{{csrf}}" in them becomes the dashboard's CSRF
// token, so that its actions are reached too.
#include <hosting/hosting.hpp>
#include <hosting/health/health.hpp>
#include <hosting/health/health_endpoint.hpp>
#include <hosting/http/server.hpp>
#include <hosting/jobs/client.hpp>
#include <hosting/jobs/dashboard.hpp>
#include <hosting/jobs/server.hpp>

#include <boost/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

namespace asio = boost::asio;

struct fixture {
    hosting::host host;
    std::uint16_t port = 0;

    static hosting::host make()
    {
        char name[] = "fuzz_http_request";
        char level[] = "--Logging:LogLevel:Default=None";
        char* args[] = {name, level, nullptr};
        auto builder = hosting::host::create_builder(2, args);
        builder.use_console_lifetime(false);
        // Every wait of the server is bounded by one of these: the harness's
        // 5 s then tell a hang from a timeout.
        hosting::health_endpoint_options options;
        options.port = 0;
        options.request_timeout = std::chrono::seconds(1);
        options.idle_timeout = std::chrono::seconds(1);
        options.write_timeout = std::chrono::seconds(1);
        hosting::add_health_endpoint(builder, options);
        auto& http = hosting::http::add_http_server(builder);
        http.route("/echo", [](const hosting::http::request& r) -> asio::awaitable<hosting::http::response> {
            hosting::http::response out;
            out.content_type = "text/plain";
            out.body = std::string(r.method) + " " + std::string(r.path) + " " + std::string(r.body);
            if (auto h = r.header("x-echo"))
                out.body += std::string(*h);
            try {
                if (auto q = r.query_parameter("q"))
                    out.body += *q;
            } catch (const std::invalid_argument&) {
                co_return hosting::http::response::error(400, "bad query");
            }
            co_return out;
        }, {"GET", "POST", "PUT"});
        // No kind is registered: the jobs stay as they are, to be looked at
        // and acted on.
        hosting::jobs::add_jobs(builder, std::make_shared<hosting::jobs::memory_storage>());
        // "x": the host name the corpus's requests give, answered as this
        // machine's own, so that they reach the dashboard's routes.
        hosting::jobs::add_jobs_dashboard(builder, {.allowed_hosts = {"x"},
                                                    .poll_interval = std::chrono::milliseconds(100)});
        return builder.build();
    }

    fixture() : host(make())
    {
        host.start_blocking();
        port = host.services().get<hosting::http::server>().port();
        auto& jobs = host.services().get<hosting::jobs::client>();
        const auto first = jobs.enqueue_blocking("mail", std::string("<script>alert(1)</script>")).id;
        jobs.continue_with_blocking(first, "report", 7);
        jobs.schedule_blocking("report", 8, std::chrono::hours(24));
        jobs.add_or_update_recurring_blocking("nightly", "0 3 * * *", "Europe/Berlin", "report", 9);
    }

    // The dashboard's CSRF token, read as its page reads it.
    std::string csrf;
};

fixture& server()
{
    // Never destroyed: libFuzzer ends the process from anywhere.
    static fixture* f = new fixture();
    return *f;
}

// Sends `bytes`, half-closes, and returns everything read until the server
// closes (or 5 s pass: a hang). libFuzzer's timeout is a SIGALRM every few
// seconds, so every call here may be interrupted and is tried again.
std::string exchange(std::uint16_t port, const std::string& bytes, bool& hung)
{
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    // From a new loopback address each time (127.1.0.0/16), so that a
    // thousand connections a second never run out of ports that are not
    // in TIME_WAIT.
    static std::uint32_t next = 0;
    sockaddr_in from{};
    from.sin_family = AF_INET;
    from.sin_addr.s_addr = htonl(0x7F010000u | (1 + next++ % 65000));
    ::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0 && errno != EINTR) {
        std::fprintf(stderr, "cannot connect to the server: %s\n", std::strerror(errno));
        std::abort();
    }
    // An interrupted connect goes on in the background: wait until the
    // socket is writable before sending.
    for (pollfd p{fd, POLLOUT, 0}; ::poll(&p, 1, 5000) < 0 && errno == EINTR;)
        ;
    // The server may answer and close before it has read everything:
    // a failed send is no failure.
    std::size_t sent = 0;
    while (sent < bytes.size()) {
        const auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        sent += static_cast<std::size_t>(n);
    }
    ::shutdown(fd, SHUT_WR);
    std::string answer;
    hung = false;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) {
            hung = true;
            break;
        }
        pollfd p{fd, POLLIN, 0};
        const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0) {
            hung = ready == 0;
            break;
        }
        char buffer[4096];
        const auto n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        answer.append(buffer, static_cast<std::size_t>(n));
        // An event stream lasts until the client leaves: its head, whole,
        // is the answer.
        if (const auto head = answer.find("\r\n\r\n");
            head != std::string::npos && answer.substr(0, head).find("text/event-stream") != std::string::npos)
            break;
    }
    ::close(fd);
    return answer;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    auto& s = server();
    bool hung = false;
    if (s.csrf.empty()) {
        const auto overview =
            exchange(s.port, "GET /jobs/api/overview HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", hung);
        const auto body = overview.find("\r\n\r\n");
        boost::system::error_code ec;
        const auto parsed = body == std::string::npos ? boost::json::value() : boost::json::parse(overview.substr(body + 4), ec);
        if (ec || !parsed.is_object() || !parsed.as_object().contains("csrf")) {
            std::fprintf(stderr, "the dashboard's overview holds no CSRF token: %.200s\n", overview.c_str());
            std::abort();
        }
        s.csrf = std::string(parsed.at("csrf").as_string());
    }
    std::string input(reinterpret_cast<const char*>(data), size);
    for (auto at = input.find("{{csrf}}"); at != std::string::npos; at = input.find("{{csrf}}", at))
        input.replace(at, 8, s.csrf);
    const auto answer = exchange(s.port, input, hung);
    if (hung) {
        // What the server says of itself then tells a stuck server from a
        // connection it never saw.
        std::fprintf(stderr, "the server neither answered nor closed within 5 s; it had answered: %.200s\n",
                     answer.c_str());
        bool again = false;
        const auto metrics = exchange(s.port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", again);
        for (std::size_t at = 0; at < metrics.size();) {
            const auto end = metrics.find('\n', at);
            const auto line = metrics.substr(at, end - at);
            if (line.rfind("hosting_http", 0) == 0)
                std::fprintf(stderr, "  %s\n", line.c_str());
            at = end == std::string::npos ? metrics.size() : end + 1;
        }
        std::abort();
    }
    // Every response the server wrote starts as HTTP/1.1 does.
    if (!answer.empty() && (answer.rfind("HTTP/1.1 ", 0) != 0 || answer.size() < 12)) {
        std::fprintf(stderr, "not an HTTP response: %.80s\n", answer.c_str());
        std::abort();
    }
    static unsigned count = 0;
#ifdef HOSTING_FUZZ_REPLAY
    const bool probe = true;
#else
    const bool probe = ++count % 64 == 0;
#endif
    if (probe) {
        const auto ok = exchange(s.port, "GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", hung);
        if (ok.rfind("HTTP/1.1 200", 0) != 0) {
            std::fprintf(stderr, "the probe after this input got: %.80s\n", ok.c_str());
            std::abort();
        }
    }
    (void)count;
    return 0;
}
