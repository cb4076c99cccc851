// The jobs dashboard over plain HTTP: its pages and JSON, search and
// paging, and what it refuses (a change without the page's CSRF token or
// from another origin, a read-only or unknown user, a remote address).
#include "jobs_support.hpp"

#include <hosting/coordination/coordination.hpp>
#include <hosting/http/server.hpp>
#include <hosting/jobs/dashboard.hpp>
#include <hosting/metrics/metrics.hpp>

#include <boost/json.hpp>

#include <ifaddrs.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace dashboard_test {

namespace json = boost::json;

struct site {
    std::shared_ptr<test::capture_sink> sink = std::make_shared<test::capture_sink>();
    std::optional<hosting::host> host;
    jobs::client* client = nullptr;
    std::shared_ptr<jobs::memory_storage> store = std::make_shared<jobs::memory_storage>();
    unsigned short port = 0;

    explicit site(jobs::dashboard_options options = {}, std::string address = "127.0.0.1", bool run_mail = false,
                  const std::function<void(hosting::host_builder&)>& configure = {})
    {
        auto builder = test::make_builder(sink);
        auto& http = hosting::http::add_http_server(builder);
        http.options().port = 0;
        http.options().address = std::move(address);
        // Unless asked, no kind is registered: the jobs wait, as they are,
        // to be looked at.
        auto jobs = jobs::add_jobs(builder, store);
        if (run_mail)
            jobs.register_kind<int>("mail", [](int, jobs::job_context&) -> asio::awaitable<void> { co_return; });
        jobs::add_jobs_dashboard(builder, std::move(options));
        if (configure)
            configure(builder);
        host.emplace(builder.build());
        host->start_blocking();
        client = &host->services().get<jobs::client>();
        port = host->services().get<hosting::http::server>().port();
    }
    ~site()
    {
        if (!stopped)
            host->stop_blocking();
    }
    void stop()
    {
        host->stop_blocking();
        stopped = true;
    }
    bool stopped = false;

    json::value get_json(const std::string& target, int expect = 200)
    {
        auto r = test::http_get(port, target);
        INFO(target << ": " << r.body);
        REQUIRE(r.status == expect);
        CHECK(r.headers["content-type"] == "application/json");
        return json::parse(r.body);
    }
    std::string csrf() { return std::string(get_json("/jobs/api/overview").at("csrf").as_string()); }
};

struct answer {
    int status = 0;
    std::string body;
};

// A POST with the headers given, as a browser page (or an attacker's) sends it.
answer post(unsigned short port, const std::string& target, const std::vector<std::string>& headers,
            const std::string& address = "127.0.0.1")
{
    std::string request = "POST " + target + " HTTP/1.1\r\nHost: " + address + ":" + std::to_string(port) +
                          "\r\nContent-Length: 0\r\nConnection: close\r\n";
    for (const auto& h : headers)
        request += h + "\r\n";
    request += "\r\n";
    const auto raw = test::raw_exchange(port, request, test::patience, address).received;
    answer out;
    if (raw.size() > 12 && raw.starts_with("HTTP/1.1 "))
        out.status = std::stoi(raw.substr(9, 3));
    if (auto at = raw.find("\r\n\r\n"); at != std::string::npos)
        out.body = raw.substr(at + 4);
    return out;
}

// A browser's EventSource, by hand: a GET of the event stream, then each
// event as it comes, every wait bounded.
class event_stream {
public:
    event_stream(unsigned short port, const std::string& target)
    {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in to{};
        to.sin_family = AF_INET;
        to.sin_port = htons(port);
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0);
        const std::string request = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n";
        REQUIRE(::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
        REQUIRE(read_until("\r\n\r\n"));
        const auto end = buffer_.find("\r\n\r\n");
        head = buffer_.substr(0, end);
        buffer_.erase(0, end + 4);
    }
    ~event_stream() { ::close(fd_); }
    event_stream(const event_stream&) = delete;
    event_stream& operator=(const event_stream&) = delete;

    // The next event's data (comments and retry lines skipped); empty when
    // the stream ended or nothing came within `patience`.
    std::optional<std::string> next_data()
    {
        for (;;) {
            if (!read_until("\n\n"))
                return std::nullopt;
            const auto end = buffer_.find("\n\n");
            std::string block = buffer_.substr(0, end);
            buffer_.erase(0, end + 2);
            if (block.starts_with("data: "))
                return block.substr(6);
        }
    }

    // Whether the server ended the stream within `patience`.
    bool ends()
    {
        const auto deadline = std::chrono::steady_clock::now() + test::patience;
        while (std::chrono::steady_clock::now() < deadline) {
            char chunk[4096];
            if (!wait_readable(deadline))
                return false;
            const auto n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n <= 0)
                return true;
        }
        return false;
    }

    std::string head;

private:
    bool wait_readable(std::chrono::steady_clock::time_point deadline)
    {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            return false;
        pollfd p{fd_, POLLIN, 0};
        return ::poll(&p, 1, static_cast<int>(left.count())) == 1;
    }

    bool read_until(std::string_view mark)
    {
        const auto deadline = std::chrono::steady_clock::now() + test::patience;
        while (buffer_.find(mark) == std::string::npos) {
            if (!wait_readable(deadline))
                return false;
            char chunk[4096];
            const auto n = ::recv(fd_, chunk, sizeof chunk, 0);
            if (n <= 0)
                return false;
            buffer_.append(chunk, static_cast<std::size_t>(n));
        }
        return true;
    }

    int fd_ = -1;
    std::string buffer_;
};

double metric_value(hosting::host& host, std::string_view name)
{
    const auto text = host.services().get<hosting::metrics_registry>().render();
    // Appended, not a chain of +: GCC 12 at -O3 warns of an overlap in
    // the chain (a false -Wrestrict).
    std::string line = "\n";
    line.append(name).append(" ");
    const auto at = text.find(line);
    REQUIRE(at != std::string::npos);
    return std::stod(text.substr(at + name.size() + 2));
}

// An IPv4 address of this machine other than loopback, if it has one.
std::optional<std::string> outside_address()
{
    ifaddrs* all = nullptr;
    if (::getifaddrs(&all) != 0)
        return std::nullopt;
    std::optional<std::string> found;
    for (auto* a = all; a && !found; a = a->ifa_next) {
        if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET)
            continue;
        char text[INET_ADDRSTRLEN] = {};
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr, text, sizeof text);
        if (!std::string_view(text).starts_with("127."))
            found = text;
    }
    ::freeifaddrs(all);
    return found;
}

} // namespace dashboard_test

using namespace dashboard_test;

TEST_CASE("jobs dashboard: the page and its assets hold no job data and allow no inline script, and the API "
          "lists, pages, searches and shows jobs",
          "[jobs][dashboard]")
{
    site s;
    const auto hostile = s.client->enqueue_blocking("mail", std::string("<script>alert(1)</script>")).id;
    for (int i = 0; i < 5; ++i)
        s.client->enqueue_blocking("report", i);
    const auto needle = s.client->enqueue_blocking("report", std::string("find the needle here")).id;

    auto page = test::http_get(s.port, "/jobs");
    REQUIRE(page.status == 200);
    CHECK(page.headers["content-type"] == "text/html; charset=utf-8");
    CHECK_THAT(page.headers["content-security-policy"], Catch::Contains("script-src 'self'"));
    CHECK_THAT(page.headers["content-security-policy"], Catch::Contains("default-src 'none'"));
    CHECK(page.headers["x-content-type-options"] == "nosniff");
    CHECK_THAT(page.body, Catch::Contains("src=\"/jobs/app.js\""));
    CHECK(page.body.find("<script>alert") == std::string::npos);
    CHECK(page.body.find("<script>") == std::string::npos); // only <script src=...>
    auto script = test::http_get(s.port, "/jobs/app.js");
    CHECK(script.status == 200);
    CHECK(script.headers["content-type"] == "text/javascript; charset=utf-8");
    CHECK_THAT(script.body, Catch::Contains("textContent"));
    CHECK(test::http_get(s.port, "/jobs/app.css").status == 200);

    // Newest first, a page after another by keyset.
    auto first = s.get_json("/jobs/api/jobs?limit=3");
    auto& jobs_json = first.at("jobs").as_array();
    REQUIRE(jobs_json.size() == 3);
    CHECK(jobs_json[0].at("id").as_int64() == needle);
    const auto next = first.at("next_before").as_int64();
    auto second = s.get_json("/jobs/api/jobs?limit=3&before=" + std::to_string(next));
    CHECK(second.at("jobs").as_array().size() == 3);
    CHECK(second.at("jobs").as_array()[0].at("id").as_int64() == next - 1);
    auto last = s.get_json("/jobs/api/jobs?limit=3&before=" + std::to_string(second.at("next_before").as_int64()));
    CHECK(last.at("jobs").as_array().size() == 1);
    CHECK(last.at("jobs").as_array()[0].at("id").as_int64() == hostile);
    CHECK_FALSE(last.as_object().contains("next_before"));

    // Text in the arguments, a kind, a state.
    auto found = s.get_json("/jobs/api/jobs?q=needle");
    REQUIRE(found.at("jobs").as_array().size() == 1);
    CHECK(found.at("jobs").as_array()[0].at("id").as_int64() == needle);
    CHECK(s.get_json("/jobs/api/jobs?kind=report&q=%22").at("jobs").as_array().size() == 1);
    CHECK(s.get_json("/jobs/api/jobs?kind=report").at("jobs").as_array().size() == 6);
    CHECK(s.get_json("/jobs/api/jobs?state=available").at("jobs").as_array().size() == 7);
    CHECK(s.get_json("/jobs/api/jobs?state=failed").at("jobs").as_array().empty());

    // A job's detail, with its history; its arguments as the text they are.
    auto detail = s.get_json("/jobs/api/job?id=" + std::to_string(hostile));
    CHECK(detail.at("args").as_string() == "\"<script>alert(1)</script>\"");
    CHECK(detail.at("history").as_array().size() >= 1);

    // Bad requests say what is wrong.
    CHECK_THAT(s.get_json("/jobs/api/jobs?state=bogus", 400).at("error").as_string().c_str(),
               Catch::Contains("no job state 'bogus'"));
    CHECK_THAT(s.get_json("/jobs/api/jobs?before=abc", 400).at("error").as_string().c_str(),
               Catch::Contains("'before' must be a non-negative integer"));
    s.get_json("/jobs/api/job?id=999999", 404);
    s.get_json("/jobs/api/nope", 404);
    CHECK(test::http_get(s.port, "/jobs/api/jobs", "PUT").status == 405);
}

TEST_CASE("jobs dashboard: a search stops at its window and says where the next page starts", "[jobs][dashboard]")
{
    jobs::dashboard_options options;
    options.scan_limit = 1000;
    site s(options);
    std::vector<std::pair<std::string, int>> many;
    jobs::job_batch batch;
    batch.add("needle", 0);
    for (int i = 0; i < 2500; ++i)
        batch.add("hay", i);
    s.client->enqueue_many_blocking(batch);
    auto page = s.get_json("/jobs/api/jobs?q=needle");
    CHECK(page.at("jobs").as_array().empty());
    CHECK(page.at("window_exceeded").as_bool());
    CHECK(page.at("scanned").as_int64() == 1000);
    const auto next = page.at("next_before").as_int64();
    auto more = s.get_json("/jobs/api/jobs?q=needle&before=" + std::to_string(next));
    auto rest = s.get_json("/jobs/api/jobs?q=needle&before=" + std::to_string(more.at("next_before").as_int64()));
    REQUIRE(rest.at("jobs").as_array().size() == 1);
    CHECK(rest.at("jobs").as_array()[0].at("kind").as_string() == "needle");
}

TEST_CASE("jobs dashboard: a change needs the page's CSRF token and the same origin, and is done", "[jobs][dashboard]")
{
    site s;
    const auto a = s.client->enqueue_blocking("mail", 1).id;
    const auto b = s.client->enqueue_blocking("mail", 2).id;
    const auto token = s.csrf();
    const auto target = "/jobs/api/job/delete?ids=" + std::to_string(a) + "," + std::to_string(b);
    const std::string same_origin = "Sec-Fetch-Site: same-origin";

    CHECK(post(s.port, target, {same_origin}).status == 403);
    CHECK(post(s.port, target, {"X-CSRF-Token: wrong", same_origin}).status == 403);
    CHECK(post(s.port, target, {"X-CSRF-Token: " + token, "Sec-Fetch-Site: cross-site"}).status == 403);
    CHECK(post(s.port, target, {"X-CSRF-Token: " + token, "Origin: http://evil.example"}).status == 403);
    CHECK(post(s.port, target, {"X-CSRF-Token: " + token}).status == 403); // no origin at all
    CHECK(s.client->find_blocking(a)->state == job_state::available);

    auto done = post(s.port, target, {"X-CSRF-Token: " + token, same_origin});
    INFO(done.body);
    REQUIRE(done.status == 200);
    CHECK(json::parse(done.body).at("done").as_array().size() == 2);
    CHECK(s.client->find_blocking(a)->state == job_state::deleted);
    CHECK(s.client->find_blocking(b)->state == job_state::deleted);

    // Origin matching the Host is a same-origin request too.
    auto retried = post(s.port, "/jobs/api/job/retry?ids=" + std::to_string(a),
                        {"X-CSRF-Token: " + token, "Origin: http://127.0.0.1:" + std::to_string(s.port)});
    INFO(retried.body);
    CHECK(retried.status == 200);
    CHECK(s.client->find_blocking(a)->state == job_state::available);

    CHECK(post(s.port, "/jobs/api/job/cancel?ids=1,x", {"X-CSRF-Token: " + token, same_origin}).status == 400);
    CHECK(post(s.port, "/jobs/api/queue/pause?name=mail", {"X-CSRF-Token: " + token, same_origin}).status == 200);
    CHECK(s.client->paused_queues_blocking() == std::vector<std::string>{"mail"});
}

TEST_CASE("jobs dashboard: a read-only user may look but not act, and an unknown one may do neither",
          "[jobs][dashboard]")
{
    jobs::dashboard_options options;
    options.authorize = [](const hosting::http::request& r) {
        const auto user = r.header("X-User");
        if (!user)
            return jobs::dashboard_access::full;
        return *user == "reader" ? jobs::dashboard_access::read_only : jobs::dashboard_access::none;
    };
    site s(options);
    const auto id = s.client->enqueue_blocking("mail", 1).id;
    const auto token = s.csrf();

    const auto as = [&](const std::string& user, const std::string& target) {
        return test::raw_exchange(s.port, "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User: " + user +
                                              "\r\nConnection: close\r\n\r\n")
            .received;
    };
    const auto reader_view = as("reader", "/jobs/api/overview");
    CHECK(reader_view.starts_with("HTTP/1.1 200"));
    CHECK_THAT(reader_view, Catch::Contains("\"access\":\"read_only\""));
    CHECK(reader_view.find("\"csrf\"") == std::string::npos);
    CHECK(as("nobody", "/jobs/api/overview").starts_with("HTTP/1.1 403"));
    CHECK(as("nobody", "/jobs").starts_with("HTTP/1.1 403"));

    auto refused = post(s.port, "/jobs/api/job/delete?ids=" + std::to_string(id),
                        {"X-CSRF-Token: " + token, "Sec-Fetch-Site: same-origin", "X-User: reader"});
    CHECK(refused.status == 403);
    CHECK_THAT(refused.body, Catch::Contains("read-only"));
    CHECK(s.client->find_blocking(id)->state == job_state::available);
}

TEST_CASE("jobs dashboard: a request from another machine is refused unless allowed", "[jobs][dashboard]")
{
    const auto outside = outside_address();
    if (!outside) {
        WARN("this machine has no address but loopback: not tested");
        return;
    }
    for (const bool allowed : {false, true}) {
        jobs::dashboard_options options;
        options.allow_remote = allowed;
        if (allowed)
            options.authorize = [](const hosting::http::request&) { return jobs::dashboard_access::full; };
        site s(options, "0.0.0.0");
        const auto raw = test::raw_exchange(s.port,
                                            "GET /jobs/api/overview HTTP/1.1\r\nHost: " + *outside +
                                                "\r\nConnection: close\r\n\r\n",
                                            test::patience, *outside)
                             .received;
        INFO(raw);
        CHECK(raw.starts_with(allowed ? "HTTP/1.1 200" : "HTTP/1.1 403"));
        CHECK(test::http_get(s.port, "/jobs/api/overview").status == 200); // loopback either way
    }
}

// The overview's raw answer to a GET that names `host`, with one more
// header line when given.
static std::string raw_overview(unsigned short port, const std::string& host, const std::string& header = {})
{
    return test::raw_exchange(port, "GET /jobs/api/overview HTTP/1.1\r\nHost: " + host + "\r\n" +
                                        (header.empty() ? std::string() : header + "\r\n") +
                                        "Connection: close\r\n\r\n")
        .received;
}

TEST_CASE("jobs dashboard: a page of another site that reaches it through its own name is refused (DNS "
          "rebinding)",
          "[jobs][dashboard]")
{
    // The attacker's page, once its name resolves to 127.0.0.1, sends its
    // requests from this machine with the browser's same-origin marks: only
    // the Host it names tells it apart.
    const auto get = [](unsigned short port, const std::string& host) { return raw_overview(port, host); };
    {
        site s;
        const auto port = std::to_string(s.port);
        CHECK(get(s.port, "attacker.example:" + port).starts_with("HTTP/1.1 403"));
        CHECK_THAT(get(s.port, "attacker.example:" + port), Catch::Contains("allowed_hosts"));
        CHECK(get(s.port, "localhost:" + port).starts_with("HTTP/1.1 200"));
        CHECK(get(s.port, "LOCALHOST").starts_with("HTTP/1.1 200"));
        CHECK(get(s.port, "127.0.0.1:" + port).starts_with("HTTP/1.1 200"));
        CHECK(get(s.port, "[::1]:" + port).starts_with("HTTP/1.1 200"));
        CHECK(get(s.port, "127.attacker.example").starts_with("HTTP/1.1 403"));
        // Its page, with the token it could otherwise have read, acts on nothing.
        const auto id = s.client->enqueue_blocking("mail", 1).id;
        const auto token = s.csrf();
        auto refused = post(s.port, std::string("/jobs/api/job/delete?ids=") + std::to_string(id),
                            {"X-CSRF-Token: " + token, "Sec-Fetch-Site: same-origin"}, "127.0.0.1");
        CHECK(refused.status == 200); // this machine's own page
        const auto id2 = s.client->enqueue_blocking("mail", 2).id;
        const auto raw = test::raw_exchange(s.port, std::string("POST /jobs/api/job/delete?ids=") + std::to_string(id2) +
                                                        " HTTP/1.1\r\nHost: attacker.example:" + port +
                                                        "\r\nX-CSRF-Token: " + token +
                                                        "\r\nSec-Fetch-Site: same-origin\r\nContent-Length: "
                                                        "0\r\nConnection: close\r\n\r\n")
                             .received;
        CHECK(raw.starts_with("HTTP/1.1 403"));
        CHECK(s.client->find_blocking(id2)->state == job_state::available);
    }
    {
        jobs::dashboard_options options;
        options.allowed_hosts = {"Jobs.Internal"};
        site s(options);
        CHECK(get(s.port, "jobs.internal:" + std::to_string(s.port)).starts_with("HTTP/1.1 200"));
        CHECK(get(s.port, "other.internal").starts_with("HTTP/1.1 403"));
        CHECK(get(s.port, "localhost").starts_with("HTTP/1.1 200"));
    }
}

TEST_CASE("jobs dashboard: without authorize, a request a proxy forwarded is refused though it comes from this "
          "machine",
          "[jobs][dashboard]")
{
    // A reverse proxy on this machine forwards a remote browser's request
    // from 127.0.0.1, with a Host the dashboard answers to: only the marks
    // the proxy leaves tell it apart.
    const auto get = [](unsigned short port, const std::string& header) {
        return raw_overview(port, "127.0.0.1", header);
    };
    {
        site s;
        for (const std::string header : {"X-Forwarded-For: 203.0.113.7", "Forwarded: for=203.0.113.7",
                                         "X-Real-IP: 203.0.113.7", "X-Forwarded-Host: jobs.example"}) {
            INFO(header);
            const auto raw = get(s.port, header);
            CHECK(raw.starts_with("HTTP/1.1 403"));
            CHECK_THAT(raw, Catch::Contains("set dashboard_options::authorize"));
        }
        CHECK(get(s.port, "Accept: */*").starts_with("HTTP/1.1 200"));
    }
    {
        // With authorize, the application decides (it may read the
        // proxy's headers, or its own login).
        jobs::dashboard_options options;
        options.authorize = [](const hosting::http::request&) { return jobs::dashboard_access::read_only; };
        site s(options);
        CHECK(get(s.port, "X-Forwarded-For: 203.0.113.7").starts_with("HTTP/1.1 200"));
    }
}

TEST_CASE("jobs dashboard: a storage's errors, which name where it is, are shown to users with full access only",
          "[jobs][dashboard]")
{
    auto store = std::make_shared<failing_storage>();
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    auto& http = hosting::http::add_http_server(builder);
    http.options().port = 0;
    jobs::add_jobs(builder, store);
    jobs::dashboard_options options;
    options.poll_interval = std::chrono::milliseconds(100);
    options.authorize = [](const hosting::http::request& r) {
        return r.header("X-User") == "reader" ? jobs::dashboard_access::read_only : jobs::dashboard_access::full;
    };
    jobs::add_jobs_dashboard(builder, options);
    auto host = builder.build();
    host.start_blocking();
    const auto port = host.services().get<hosting::http::server>().port();
    const auto as = [&](const std::string& user, const std::string& target) {
        return test::raw_exchange(port, "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User: " + user +
                                            "\r\nConnection: close\r\n\r\n")
            .received;
    };
    store->down = true;
    CHECK(test::eventually([&] { return as("admin", "/jobs/api/overview").find("unreachable (test)") !=
                                        std::string::npos; }));
    const auto reader_view = as("reader", "/jobs/api/overview");
    CHECK(reader_view.find("unreachable (test)") == std::string::npos);
    CHECK_THAT(reader_view, Catch::Contains("the storage did not answer"));
    const auto reader_list = as("reader", "/jobs/api/jobs?state=available");
    CHECK(reader_list.starts_with("HTTP/1.1 503"));
    CHECK(reader_list.find("unreachable (test)") == std::string::npos);
    CHECK_THAT(as("admin", "/jobs/api/jobs?state=available"), Catch::Contains("unreachable (test)"));
    store->down = false;
    host.stop_blocking();
}

TEST_CASE("jobs dashboard: the overview counts jobs by state and queue, and its chart follows what ran",
          "[jobs][dashboard]")
{
    jobs::dashboard_options options;
    options.poll_interval = std::chrono::milliseconds(100);
    site s(options, "127.0.0.1", true);
    s.client->pause_queue_blocking("slow");
    jobs::job_options slow;
    slow.queue = "slow";
    s.client->enqueue_blocking("mail", 1, slow);
    REQUIRE(test::eventually([&] {
        auto o = s.get_json("/jobs/api/overview");
        return o.at("counts").at("available").as_int64() == 1 && o.at("queues").as_array().size() == 1;
    }));
    auto o = s.get_json("/jobs/api/overview");
    CHECK(o.at("access").as_string() == "full");
    CHECK(o.at("csrf").as_string().size() == 64);
    const auto& queues = o.at("queues").as_array();
    CHECK(queues[0].at("name").as_string() == "slow");
    CHECK(queues[0].at("counts").at("available").as_int64() == 1);
    CHECK(queues[0].at("paused").as_bool());

    // Jobs that run show in the chart: some second has a rate of succeeded.
    jobs::job_batch batch;
    for (int i = 0; i < 50; ++i)
        batch.add("mail", i);
    s.client->enqueue_many_blocking(batch);
    CHECK(test::eventually([&] {
        auto now = s.get_json("/jobs/api/overview");
        for (const auto& point : now.at("per_second").as_array())
            if (point.as_array()[1].to_number<double>() > 0)
                return now.at("counts").at("succeeded").as_int64() == 50;
        return false;
    }));
}

TEST_CASE("jobs dashboard: bad options name what is wrong", "[jobs][dashboard]")
{
    jobs::dashboard_options o;
    o.path = "/jobs/";
    CHECK_THROWS_WITH(o.validate(), Catch::Contains("path must start with '/'"));
    o.path = "/jobs\"><script>";
    CHECK_THROWS_AS(o.validate(), std::invalid_argument);
    o.path = "/ops/jobs";
    o.scan_limit = 10;
    CHECK_THROWS_WITH(o.validate(), Catch::Contains("scan_limit"));
    o.scan_limit = 1000;
    o.allow_remote = true;
    CHECK_THROWS_WITH(o.validate(), Catch::Contains("allow_remote needs authorize"));
    o.authorize = [](const hosting::http::request&) { return jobs::dashboard_access::read_only; };
    CHECK_NOTHROW(o.validate());
    o.allowed_hosts = {"jobs.example:8081"};
    CHECK_THROWS_WITH(o.validate(), Catch::Contains("allowed_hosts"));
    auto builder = test::make_builder(std::make_shared<test::capture_sink>());
    jobs::add_jobs_dashboard(builder);
    CHECK_THROWS_WITH(builder.build(), Catch::Contains("call add_jobs on the same builder"));
}

TEST_CASE("jobs dashboard: oversized and malformed requests are answered 4xx, and the dashboard goes on",
          "[jobs][dashboard]")
{
    site s;
    CHECK(s.get_json("/jobs/api/jobs?q=%zz", 400).at("error").as_string().size() > 0);
    CHECK(s.get_json("/jobs/api/job?id=-3", 400).at("error").as_string().size() > 0);
    CHECK(s.get_json("/jobs/api/jobs?limit=9999999999999999999999", 400).at("error").as_string().size() > 0);
    const auto huge_header = test::raw_exchange(s.port, "GET /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " +
                                                            std::string(64 * 1024, 'a') + "\r\n\r\n");
    CHECK(huge_header.received.starts_with("HTTP/1.1 431"));
    const auto huge_body =
        test::raw_exchange(s.port, "POST /jobs/api/job/retry?ids=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " +
                                       std::to_string(1024 * 1024) + "\r\n\r\n" + std::string(4096, 'b'));
    CHECK(huge_body.received.starts_with("HTTP/1.1 413"));
    const auto garbage = test::raw_exchange(s.port, "NOT HTTP AT ALL\r\n\r\n");
    CHECK(garbage.received.starts_with("HTTP/1.1 400"));
    CHECK(test::http_get(s.port, "/jobs").status == 200);
}

TEST_CASE("jobs dashboard: an action on everything a filter matches is done in batches and leaves the rest",
          "[jobs][dashboard]")
{
    site s;
    jobs::job_batch batch;
    for (int i = 0; i < 1200; ++i)
        batch.add(i % 3 == 0 ? "report" : "mail", i);
    s.client->enqueue_many_blocking(batch);
    // Not with an empty filter, which would take every state's newest jobs.
    const auto unfiltered =
        post(s.port, "/jobs/api/jobs/delete", {"X-CSRF-Token: " + s.csrf(), "Sec-Fetch-Site: same-origin"});
    CHECK(unfiltered.status == 400);
    CHECK_THAT(unfiltered.body, Catch::Contains("needs one"));
    auto done = post(s.port, "/jobs/api/jobs/delete?kind=report", {"X-CSRF-Token: " + s.csrf(), "Sec-Fetch-Site: same-origin"});
    INFO(done.body);
    REQUIRE(done.status == 200);
    const auto body = json::parse(done.body);
    CHECK(body.at("done").as_array().size() == 400);
    CHECK(body.at("failed").as_array().empty());
    CHECK_FALSE(body.at("more").as_bool());
    const auto counts = s.client->counts_blocking();
    CHECK(counts[job_state::deleted] == 400);
    CHECK(counts[job_state::available] == 800);
}

TEST_CASE("jobs dashboard: the overview is pushed to every open page after each reading of the one poller",
          "[jobs][dashboard]")
{
    jobs::dashboard_options options;
    options.poll_interval = std::chrono::milliseconds(100);
    site s(options);
    std::vector<std::unique_ptr<event_stream>> pages;
    for (int i = 0; i < 5; ++i)
        pages.push_back(std::make_unique<event_stream>(s.port, "/jobs/api/events"));
    CHECK_THAT(pages[0]->head, Catch::Contains("200 OK"));
    CHECK_THAT(pages[0]->head, Catch::Contains("Content-Type: text/event-stream"));
    CHECK_THAT(pages[0]->head, Catch::Contains("Content-Security-Policy"));
    REQUIRE(test::eventually([&] { return s.get_json("/jobs/api/overview").at("streams").as_int64() == 5; }));

    // Each page sees the jobs enqueued after it opened, pushed.
    for (int i = 0; i < 3; ++i)
        s.client->enqueue_blocking("report", i);
    for (auto& page : pages) {
        bool seen = false;
        while (!seen) {
            const auto data = page->next_data();
            REQUIRE(data);
            const auto o = json::parse(*data);
            seen = o.at("counts").at("available").as_int64() == 3;
        }
    }

    // One reading serves every page: no more readings than the poll
    // interval allows in the time it took (a reading per page would make
    // five times as many), and every page is sent the same readings.
    const auto began = std::chrono::steady_clock::now();
    const double polls_before = metric_value(*s.host, "hosting_jobs_dashboard_polls_total");
    std::int64_t version = 0;
    for (int events = 0; events < 10; ++events) {
        const auto data = pages[0]->next_data();
        REQUIRE(data);
        version = json::parse(*data).at("version").as_int64();
    }
    const double polls = metric_value(*s.host, "hosting_jobs_dashboard_polls_total") - polls_before;
    const auto elapsed = std::chrono::steady_clock::now() - began;
    CHECK(polls <= static_cast<double>(elapsed / options.poll_interval) + 2);
    for (auto& page : pages) {
        for (bool reached = false; !reached;) {
            const auto data = page->next_data();
            REQUIRE(data);
            reached = json::parse(*data).at("version").as_int64() >= version;
        }
    }

    // A page that goes away stops being counted.
    pages.pop_back();
    CHECK(test::eventually([&] { return s.get_json("/jobs/api/overview").at("streams").as_int64() == 4; }));
    CHECK(test::eventually([&] { return metric_value(*s.host, "hosting_jobs_dashboard_streams") == 4; }));

    // The host's stop ends the streams that are still open.
    s.stop();
    for (auto& page : pages)
        CHECK(page->ends());
}

TEST_CASE("jobs dashboard: an event stream is authorized at each event, and ends once its access is withdrawn",
          "[jobs][dashboard]")
{
    std::atomic<int> allowed{static_cast<int>(jobs::dashboard_access::full)};
    std::atomic<int> stream_asks{0};
    jobs::dashboard_options options;
    options.poll_interval = std::chrono::milliseconds(100);
    options.authorize = [&](const hosting::http::request& r) {
        // The stream's later events are asked with the request it began with.
        if (r.header("Accept") == std::optional<std::string_view>("text/event-stream"))
            ++stream_asks;
        return static_cast<jobs::dashboard_access>(allowed.load());
    };
    site s(options);
    event_stream page(s.port, "/jobs/api/events");
    CHECK_THAT(page.head, Catch::Contains("200 OK"));
    REQUIRE(page.next_data());
    REQUIRE(page.next_data());
    CHECK(stream_asks.load() >= 2);
    // Narrowed to read-only, it goes on.
    allowed = static_cast<int>(jobs::dashboard_access::read_only);
    REQUIRE(page.next_data());
    // Withdrawn: the stream ends, as the next request would be refused.
    allowed = static_cast<int>(jobs::dashboard_access::none);
    CHECK(page.ends());
}

TEST_CASE("jobs dashboard: a job shows its continuations in every state", "[jobs][dashboard]")
{
    site s;
    const auto parent = s.client->enqueue_blocking("report", 1).id;
    const auto child = s.client->continue_with_blocking(parent, "report", 2).id;
    const auto other = s.client->continue_with_blocking(parent, "mail", 3).id;
    s.client->delete_job_blocking(other);
    const auto detail = s.get_json("/jobs/api/job?id=" + std::to_string(parent));
    const auto& children = detail.at("children").as_array();
    REQUIRE(children.size() == 2);
    CHECK(children[0].at("id").as_int64() == child);
    CHECK(children[0].at("state").as_string() == "awaiting");
    CHECK(children[1].at("id").as_int64() == other);
    CHECK(children[1].at("state").as_string() == "deleted");
    CHECK(s.get_json("/jobs/api/job?id=" + std::to_string(child)).at("parent_id").as_int64() == parent);
}

TEST_CASE("jobs dashboard: the nodes page says which node leads and who holds each lease", "[jobs][dashboard]")
{
    jobs_test::temp_db db;
    std::shared_ptr<hosting::coordination::coordinator> coordinator;
    site s({}, "127.0.0.1", false, [&](hosting::host_builder& b) {
        hosting::coordination::coordination_options o;
        o.node_id = "node-lead";
        coordinator = hosting::coordination::add_coordination(
            b, std::make_shared<hosting::coordination::sqlite_lease_store>(db.path.string()), o);
    });
    REQUIRE(test::eventually([&] {
        const auto o = s.get_json("/jobs/api/overview");
        return o.at("leader").as_string() == "node-lead";
    }));
    const auto o = s.get_json("/jobs/api/overview");
    CHECK(o.at("coordinated").as_bool());
    bool listed = false;
    for (const auto& l : o.at("leases").as_array())
        listed = listed || (l.at("name").as_string() == "leader" && l.at("holder").as_string() == "node-lead" &&
                            l.at("term").as_int64() >= 1);
    CHECK(listed);

    site plain;
    CHECK_FALSE(plain.get_json("/jobs/api/overview").at("coordinated").as_bool());
    CHECK(plain.get_json("/jobs/api/overview").at("leader").as_string() == "");
}

TEST_CASE("jobs dashboard: a search by creation time keeps the jobs created within the range", "[jobs][dashboard]")
{
    site s;
    const auto t0 = jobs::clock::now();
    std::vector<jobs::job_id> ids;
    for (int hours = 3; hours >= 1; --hours) {
        jobs::enqueue_request r;
        r.kind = "report";
        r.args = "{}";
        ids.push_back(s.store->enqueue(std::vector{r}, t0 - std::chrono::hours(hours)).at(0).id);
    }
    const auto at = [&](std::chrono::hours h) {
        return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>((t0 - h).time_since_epoch()).count());
    };
    const auto found = [&](const std::string& query) {
        std::vector<jobs::job_id> out;
        const auto page = s.get_json("/jobs/api/jobs?" + query);
        for (const auto& j : page.at("jobs").as_array())
            out.push_back(j.at("id").as_int64());
        return out;
    };
    // From inclusive, to exclusive; newest first.
    CHECK(found("from=" + at(2h) + "&to=" + at(1h)) == std::vector{ids[1]});
    CHECK(found("from=" + at(2h)) == std::vector{ids[2], ids[1]});
    CHECK(found("to=" + at(2h)) == std::vector{ids[0]});
    CHECK(found("from=" + at(2h) + "&kind=mail").empty());
    s.get_json("/jobs/api/jobs?from=yesterday", 400);
}

TEST_CASE("jobs dashboard: the queues page says which nodes serve each queue and how many of its jobs at once",
          "[jobs][dashboard]")
{
    site s({}, "127.0.0.1", true);
    REQUIRE(test::eventually([&] { return !s.get_json("/jobs/api/overview").at("nodes").as_array().empty(); }));
    const auto o = s.get_json("/jobs/api/overview");
    const auto node = std::string(o.at("nodes").as_array().at(0).at("id").as_string());
    bool seen = false;
    for (const auto& q : o.at("queues").as_array()) {
        if (q.at("name").as_string() != "default")
            continue;
        const auto& served = q.at("served_by").as_array();
        REQUIRE(served.size() == 1);
        CHECK(served[0].at("node").as_string() == node);
        CHECK(served[0].at("limit").as_int64() == static_cast<std::int64_t>(o.at("nodes").as_array().at(0).at("workers").as_int64()));
        seen = true;
    }
    CHECK(seen);
}
