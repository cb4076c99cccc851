#include <hosting/jobs/dashboard.hpp>

#include <hosting/coordination/coordination.hpp>
#include <hosting/core/background_service.hpp>
#include <hosting/core/host_builder.hpp>
#include <hosting/jobs/client.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/scheduling/cron.hpp>

#include "jobs/dashboard_assets.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <charconv>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>

namespace hosting::jobs {

namespace json = boost::json;

void dashboard_options::validate() const
{
    if (path.size() < 2 || path.front() != '/' || path.back() == '/' ||
        path.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_-.") !=
            std::string::npos)
        throw std::invalid_argument("jobs dashboard: path must start with '/', not end with one, and hold only "
                                    "letters, digits and / _ - . (got '" + path + "')");
    if (scan_limit < 100)
        throw std::invalid_argument("jobs dashboard: scan_limit must be at least 100");
    if (poll_interval < std::chrono::milliseconds(100))
        throw std::invalid_argument("jobs dashboard: poll_interval must be at least 100 ms");
    if (allow_remote && !authorize)
        throw std::invalid_argument("jobs dashboard: allow_remote needs authorize: without it, whoever reaches the "
                                    "server from the network could change jobs (an authorize that returns "
                                    "dashboard_access::full for every request says so on purpose)");
    for (const auto& name : allowed_hosts)
        if (name.empty() || name.find_first_of(":/ \t") != std::string::npos)
            throw std::invalid_argument("jobs dashboard: allowed_hosts holds host names without a port or a "
                                        "scheme (got '" + name + "')");
}

namespace {

std::int64_t ms(time_point t)
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

// A request kept past its handling, with everything its views point
// into: an event stream asks `authorize` again with it at each event.
class kept_request {
public:
    explicit kept_request(const http::request& r)
        : method_(r.method), target_(r.target), path_(r.path), query_(r.query)
    {
        for (const auto& [name, value] : r.headers)
            headers_.emplace_back(name, value);
        view_.method = method_;
        view_.target = target_;
        view_.path = path_;
        view_.query = query_;
        view_.remote_address = r.remote_address;
        for (const auto& [name, value] : headers_)
            view_.headers.emplace_back(name, value);
    }
    kept_request(const kept_request&) = delete;
    kept_request& operator=(const kept_request&) = delete;
    const http::request& get() const noexcept { return view_; }

private:
    std::string method_, target_, path_, query_;
    std::vector<std::pair<std::string, std::string>> headers_;
    http::request view_;
};

// One reading of the poller: the counts by state, when it was taken.
struct sample {
    std::int64_t at_ms = 0;
    std::int64_t succeeded = 0;
    std::int64_t failed = 0;
};

// What every page shows, read once per poll_interval for all of them.
struct snapshot {
    job_counts counts;
    std::vector<queue_kind_count> by_queue_kind;
    std::vector<node_info> nodes;
    std::vector<std::string> paused;
    // Who holds what, when the host coordinates (add_coordination).
    std::vector<coordination::lease_record> leases;
    std::string error; // why the last poll failed, if it did
    std::int64_t at_ms = 0; // when the queues, nodes and leases were read
    bool ready = false;
};

// How long a request keeps the poller reading everything, not only the
// counts the history charts need.
constexpr std::chrono::seconds watched_for{30};

struct dashboard_state {
    dashboard_options options;
    std::string csrf;
    client* jobs = nullptr;                    // set when the host is built, before the server starts
    coordination::coordinator* leases = nullptr; // the same, when there is one
    metric_counter* polls = nullptr;
    metric_gauge* open_streams = nullptr;
    std::mutex mutex;
    snapshot last;               // mutex
    std::uint64_t version = 0;   // mutex: snapshots recorded
    std::deque<sample> seconds;  // mutex: the last hour, one per poll
    std::deque<sample> minutes;  // mutex: the last day, one per minute
    // mutex: the open event streams, told of each snapshot.
    std::vector<std::weak_ptr<http::body_stream>> streams;
    // Until when a page was last asked for (ms since the epoch): until
    // then, and while a stream is open, the poller reads everything.
    std::atomic<std::int64_t> watched_until{0};

    void watched() { watched_until = ms(clock::now() + watched_for); }
    // mutex held
    std::size_t live_streams()
    {
        std::erase_if(streams, [](const auto& w) { return w.expired(); });
        return streams.size();
    }
};

std::string random_token()
{
    std::random_device device;
    std::array<std::uint32_t, 8> words{};
    for (auto& w : words)
        w = device();
    std::string out;
    char hex[9];
    for (auto w : words) {
        std::snprintf(hex, sizeof hex, "%08x", w);
        out += hex;
    }
    return out;
}

// The one poller of the process: a background service, so that it stops
// with the host, whatever the number of open pages.
class dashboard_poller final : public background_service {
public:
    dashboard_poller(service_provider& provider, std::shared_ptr<dashboard_state> state) : state_(std::move(state))
    {
        auto* jobs = provider.try_get<client>();
        if (!jobs)
            throw std::logic_error("add_jobs_dashboard: no jobs client; call add_jobs on the same builder");
        state_->jobs = jobs;
        state_->leases = provider.try_get<coordination::coordinator>();
        auto& metrics = provider.get<metrics_registry>();
        state_->polls = &metrics.counter("hosting_jobs_dashboard_polls_total",
                                         "Readings of the jobs storage by the dashboard's poller");
        state_->open_streams = &metrics.gauge("hosting_jobs_dashboard_streams",
                                              "Event streams open to jobs dashboard pages");
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        asio::steady_timer timer(co_await asio::this_coro::executor);
        std::optional<std::chrono::steady_clock::time_point> last_read;
        bool read_all_once = false;
        while (!stopping.stop_requested()) {
            // Nobody looking: only the counts the day's chart needs, once a
            // minute, rather than four reads a second for no one. (The first
            // reading is whole, for whoever asks first.)
            bool watched = ms(clock::now()) < state_->watched_until.load() || !read_all_once;
            {
                std::lock_guard lock(state_->mutex);
                watched = watched || state_->live_streams() > 0;
            }
            const auto now = std::chrono::steady_clock::now();
            if (watched || !last_read || now - *last_read >= std::chrono::minutes(1)) {
                last_read = now;
                auto op = read(watched);
                snapshot next = co_await std::move(op);
                read_all_once = read_all_once || (watched && next.ready);
                record(std::move(next));
            }
            timer.expires_after(state_->options.poll_interval);
            boost::system::error_code ec;
            co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        }
    }

private:
    asio::awaitable<snapshot> read(bool everything)
    {
        snapshot next;
        next.at_ms = ms(clock::now());
        state_->polls->inc();
        try {
            auto& c = *state_->jobs;
            auto counts = c.counts();
            next.counts = co_await std::move(counts);
            if (everything) {
                auto by_queue_kind = c.counts_by_queue_and_kind();
                next.by_queue_kind = co_await std::move(by_queue_kind);
                auto nodes = c.list_nodes();
                next.nodes = co_await std::move(nodes);
                auto paused = c.paused_queues();
                next.paused = co_await std::move(paused);
            } else {
                std::lock_guard lock(state_->mutex);
                next.by_queue_kind = state_->last.by_queue_kind;
                next.nodes = state_->last.nodes;
                next.paused = state_->last.paused;
                next.leases = state_->last.leases;
                // What the page shows of queues and nodes is as old as
                // that reading: polled_at says so.
                next.at_ms = state_->last.at_ms;
            }
            next.ready = true;
        } catch (const std::exception& e) {
            next.error = e.what();
        }
        if (everything && next.ready && state_->leases) {
            // The coordinator's own storage: its failure is its health
            // check's to report; the page shows the jobs all the same.
            try {
                auto leases = state_->leases->leases();
                next.leases = co_await std::move(leases);
            } catch (const std::exception&) {
                std::lock_guard lock(state_->mutex);
                next.leases = state_->last.leases;
            }
        }
        co_return next;
    }

    void record(snapshot next)
    {
        std::lock_guard lock(state_->mutex);
        ++state_->version;
        for (const auto& w : state_->streams)
            if (auto stream = w.lock())
                stream->wake();
        if (next.ready) {
            const sample s{ms(clock::now()), next.counts[job_state::succeeded], next.counts[job_state::failed]};
            state_->seconds.push_back(s);
            const auto keep = std::max<std::int64_t>(
                2, std::chrono::hours(1) / std::max(state_->options.poll_interval, std::chrono::milliseconds(1)));
            while (static_cast<std::int64_t>(state_->seconds.size()) > keep)
                state_->seconds.pop_front();
            // A minute apart, give or take one poll: readings every
            // minute, each a little early or late, fill every minute.
            const auto slack = std::chrono::duration_cast<std::chrono::milliseconds>(state_->options.poll_interval);
            if (state_->minutes.empty() || s.at_ms - state_->minutes.back().at_ms >= 60'000 - slack.count())
                state_->minutes.push_back(s);
            while (state_->minutes.size() > 24 * 60 + 1)
                state_->minutes.pop_front();
            state_->last = std::move(next);
        } else {
            state_->last.error = next.error; // what was read before stays, and its time
        }
    }
    std::shared_ptr<dashboard_state> state_;
};

// Rates per second between consecutive samples (a prune makes a count
// fall: that interval counts as none).
json::array rates(const std::deque<sample>& samples)
{
    json::array out;
    for (std::size_t i = 1; i < samples.size(); ++i) {
        const auto& a = samples[i - 1];
        const auto& b = samples[i];
        const double seconds = static_cast<double>(std::max<std::int64_t>(1, b.at_ms - a.at_ms)) / 1000.0;
        out.push_back(json::array{b.at_ms, std::max<double>(0, static_cast<double>(b.succeeded - a.succeeded) / seconds),
                                  std::max<double>(0, static_cast<double>(b.failed - a.failed) / seconds)});
    }
    return out;
}

json::object counts_json(const job_counts& counts)
{
    json::object out;
    for (std::size_t i = 0; i < job_state_count; ++i)
        out[to_string(static_cast<job_state>(i))] = counts.by_state[i];
    return out;
}

std::optional<job_state> state_named(std::string_view name)
{
    for (std::size_t i = 0; i < job_state_count; ++i)
        if (to_string(static_cast<job_state>(i)) == name)
            return static_cast<job_state>(i);
    return std::nullopt;
}

json::object job_json(const job& j)
{
    json::object o;
    o["id"] = j.id;
    o["kind"] = j.kind;
    o["queue"] = j.queue;
    o["state"] = to_string(j.state);
    o["attempt"] = j.attempt;
    o["max_attempts"] = j.max_attempts;
    o["priority"] = j.priority;
    o["created_at"] = ms(j.created_at);
    o["run_at"] = ms(j.run_at);
    o["args"] = j.args;
    o["last_error"] = j.last_error;
    o["node"] = j.lease_owner;
    o["unique_key"] = j.unique_key;
    o["concurrency_key"] = j.concurrency_key;
    o["parent_id"] = j.parent_id;
    o["recurring_id"] = j.recurring_id;
    o["cancel_requested"] = j.cancel_requested;
    if (!j.history.empty()) {
        json::array h;
        for (const auto& c : j.history)
            h.push_back(json::object{{"from", to_string(c.from)},
                                     {"to", to_string(c.to)},
                                     {"at", ms(c.at)},
                                     {"reason", c.reason},
                                     {"error", c.error}});
        o["history"] = std::move(h);
    }
    return o;
}

http::response json_response(const json::value& v, unsigned status = 200)
{
    http::response r;
    r.status = status;
    r.body = json::serialize(v);
    return r;
}

bool is_loopback(std::string_view address)
{
    return address.starts_with("127.") || address == "::1" || address.starts_with("::ffff:127.");
}

// The name a Host header gives, lower-cased, without its port or an IPv6
// literal's brackets.
std::string host_name(std::string_view host)
{
    std::string name;
    if (host.starts_with('[')) {
        const auto end = host.find(']');
        name = host.substr(1, end == std::string_view::npos ? std::string_view::npos : end - 1);
    } else {
        const auto colon = host.find(':');
        name = host.substr(0, colon);
    }
    for (auto& c : name)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return name;
}

// A browser sends the name it reached the server by: a name that only a
// rebinding could have sent to a loopback address is another site's page.
// A request with no Host comes from no browser, and is judged by the rest.
bool host_allowed(const http::request& r, const dashboard_options& o)
{
    const auto host = r.header("Host");
    if (!host)
        return true;
    const auto name = host_name(*host);
    const bool loopback_name = name == "localhost" || name.ends_with(".localhost") ||
                               (name.starts_with("127.") &&
                                name.find_first_not_of("0123456789.") == std::string::npos) ||
                               name == "::1";
    if (loopback_name)
        return true;
    if (!o.allowed_hosts.empty())
        return std::any_of(o.allowed_hosts.begin(), o.allowed_hosts.end(),
                           [&](const std::string& allowed) { return host_name(allowed) == name; });
    return o.allow_remote;
}

// Marks a reverse proxy leaves on what it forwards. Through a proxy on
// this machine every request comes from a loopback address, whoever sent
// it: without `authorize`, the dashboard would give a remote browser the
// access it keeps for this machine's own clients.
constexpr std::array<std::string_view, 4> proxy_headers{"Forwarded", "X-Forwarded-For", "X-Real-IP",
                                                          "X-Forwarded-Host"};
bool came_through_proxy(const http::request& r)
{
    return std::any_of(proxy_headers.begin(), proxy_headers.end(), [&](std::string_view h) {
        return r.header(h).has_value();
    });
}

// Same-origin for a state-changing request: a browser's Sec-Fetch-Site,
// or failing that its Origin against the Host it was sent to; a request
// with neither (not from a browser page) is refused too.
bool same_origin(const http::request& r)
{
    if (auto site = r.header("Sec-Fetch-Site"))
        return *site == "same-origin";
    auto origin = r.header("Origin");
    auto host = r.header("Host");
    if (!origin || !host)
        return false;
    return *origin == "http://" + std::string(*host) || *origin == "https://" + std::string(*host);
}

bool tokens_equal(std::string_view a, std::string_view b)
{
    if (a.size() != b.size())
        return false;
    unsigned char diff = 0;
    for (std::size_t i = 0; i < a.size(); ++i)
        diff |= static_cast<unsigned char>(a[i] ^ b[i]);
    return diff == 0;
}

std::optional<std::int64_t> integer_parameter(const http::request& r, std::string_view name)
{
    auto text = r.query_parameter(name);
    if (!text || text->empty())
        return std::nullopt;
    std::int64_t v = 0;
    const auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    if (ec != std::errc() || end != text->data() + text->size() || v < 0)
        throw std::invalid_argument("'" + std::string(name) + "' must be a non-negative integer");
    return v;
}

std::string required(const http::request& r, std::string_view name)
{
    auto v = r.query_parameter(name);
    if (!v || v->empty())
        throw std::invalid_argument("'" + std::string(name) + "' is missing");
    return *v;
}

class dashboard {
public:
    explicit dashboard(std::shared_ptr<dashboard_state> state) : state_(std::move(state)) {}

    asio::awaitable<http::response> handle(const http::request& r)
    {
        http::response out;
        auto access = dashboard_access::none;
        try {
            out = co_await route(r, access);
        } catch (const std::invalid_argument& e) {
            out = http::response::error(400, e.what());
        } catch (const std::exception& e) {
            // A storage's errors name where it is (a file's path, a
            // server's address): for those who may act on it only.
            out = http::response::error(503, access == dashboard_access::full
                                                 ? std::string("the jobs storage failed: ") + e.what()
                                                 : std::string("the jobs storage failed"));
        }
        // No inline script or style anywhere: a job's text that slipped
        // into markup could run nothing.
        out.headers.emplace_back("Content-Security-Policy",
                                 "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                 "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
        out.headers.emplace_back("X-Content-Type-Options", "nosniff");
        out.headers.emplace_back("X-Frame-Options", "DENY");
        out.headers.emplace_back("Referrer-Policy", "no-referrer");
        co_return out;
    }

private:
    asio::awaitable<http::response> route(const http::request& r, dashboard_access& seen)
    {
        const auto& o = state_->options;
        if (!o.allow_remote && !is_loopback(r.remote_address))
            co_return http::response::error(403, "the jobs dashboard answers this machine only (allow_remote)");
        if (!host_allowed(r, o))
            co_return http::response::error(403, "the jobs dashboard does not answer to this host name "
                                                 "(allowed_hosts)");
        if (!o.authorize && came_through_proxy(r))
            co_return http::response::error(403, "the jobs dashboard without authorize answers this machine's own "
                                                 "clients only, and this request came through a proxy (it carries "
                                                 "one of Forwarded, X-Forwarded-For, X-Real-IP, X-Forwarded-Host): "
                                                 "set dashboard_options::authorize");
        const auto access = o.authorize ? o.authorize(r) : dashboard_access::full;
        seen = access;
        if (access == dashboard_access::none)
            co_return http::response::error(403, "not allowed to see the jobs dashboard");
        std::string_view sub = r.path.substr(std::min(r.path.size(), o.path.size()));
        if (r.method == "POST") {
            if (access != dashboard_access::full)
                co_return http::response::error(403, "read-only: this user may not change jobs");
            const auto token = r.header("X-CSRF-Token");
            if (!token || !tokens_equal(*token, state_->csrf) || !same_origin(r))
                co_return http::response::error(403, "a change must come from the dashboard's own page "
                                                     "(same origin, with its CSRF token)");
            auto op = act(sub, r);
            http::response res = co_await std::move(op);
            co_return res;
        }
        if (sub.empty() || sub == "/")
            co_return page();
        if (sub == "/app.js")
            co_return asset("app.js");
        if (sub == "/app.css")
            co_return asset("app.css");
        if (sub == "/favicon.svg")
            co_return asset("favicon.svg");
        state_->watched();
        if (sub == "/api/overview")
            co_return overview(access);
        if (sub == "/api/events")
            co_return events(r, access);
        if (sub == "/api/jobs") {
            auto op = list(r);
            http::response res = co_await std::move(op);
            co_return res;
        }
        if (sub == "/api/job") {
            auto op = detail(r);
            http::response res = co_await std::move(op);
            co_return res;
        }
        if (sub == "/api/recurring") {
            auto op = recurring();
            http::response res = co_await std::move(op);
            co_return res;
        }
        co_return http::response::error(404, "no such page in the jobs dashboard");
    }

    // The page names its assets by the mount path (checked to hold no
    // character that means anything in HTML).
    http::response page() const
    {
        auto r = asset("index.html");
        const std::string_view key = "{{path}}";
        for (auto at = r.body.find(key); at != std::string::npos; at = r.body.find(key, at))
            r.body.replace(at, key.size(), state_->options.path);
        return r;
    }

    static http::response asset(std::string_view name)
    {
        for (const auto& a : detail::dashboard_assets())
            if (a.name == name) {
                http::response r;
                r.content_type = std::string(a.content_type) + "; charset=utf-8";
                r.body = std::string(a.body);
                return r;
            }
        return http::response::error(404, "no such asset");
    }

    // What the overview, queues and nodes pages show; `history`: with the
    // day's chart, which changes once a minute. The mutex is held.
    json::object overview_json(dashboard_access access, bool history)
    {
        json::object o;
        const auto& s = state_->last;
        o["title"] = state_->options.title;
        o["access"] = access == dashboard_access::full ? "full" : "read_only";
        if (access == dashboard_access::full)
            o["csrf"] = state_->csrf;
        o["ready"] = s.ready;
        // Its text names where the storage is: for those who may act on it.
        o["error"] = access == dashboard_access::full || s.error.empty() ? s.error : "the storage did not answer";
        o["now"] = ms(clock::now());
        o["polled_at"] = s.at_ms;
        o["counts"] = counts_json(s.counts);
        json::array queues;
        std::map<std::string, job_counts> by_queue;
        for (const auto& c : s.by_queue_kind)
            by_queue[c.queue].by_state[static_cast<std::size_t>(c.state)] += c.count;
        for (const auto& q : s.paused)
            by_queue.try_emplace(q);
        // Who serves each queue, and how many of its jobs at most at once:
        // the nodes heard from in the last minute (a node that crashed is
        // listed, with its last heartbeat, until it is recovered from).
        std::map<std::string, json::array> served;
        const auto alive_since = clock::now() - std::chrono::minutes(1);
        for (const auto& n : s.nodes)
            for (std::size_t i = 0; i < n.queues.size() && n.heartbeat_at >= alive_since; ++i) {
                const std::size_t limit = i < n.queue_limits.size() && n.queue_limits[i] != 0
                                              ? std::min(n.queue_limits[i], n.workers)
                                              : n.workers;
                served[n.queues[i]].push_back(json::object{{"node", n.id}, {"limit", limit}});
                by_queue.try_emplace(n.queues[i]);
            }
        for (const auto& [name, counts] : by_queue)
            queues.push_back(json::object{{"name", name},
                                          {"paused", std::find(s.paused.begin(), s.paused.end(), name) != s.paused.end()},
                                          {"counts", counts_json(counts)},
                                          {"served_by", served[name]}});
        o["queues"] = std::move(queues);
        json::array kinds;
        for (const auto& c : s.by_queue_kind)
            kinds.push_back(json::object{{"queue", c.queue}, {"kind", c.kind}, {"state", to_string(c.state)},
                                         {"count", c.count}});
        o["kinds"] = std::move(kinds);
        json::array nodes;
        for (const auto& n : s.nodes) {
            json::array q;
            for (const auto& name : n.queues)
                q.push_back(json::string(name));
            nodes.push_back(json::object{{"id", n.id},
                                         {"host", n.host},
                                         {"pid", n.pid},
                                         {"workers", n.workers},
                                         {"queues", std::move(q)},
                                         {"started_at", ms(n.started_at)},
                                         {"heartbeat_at", ms(n.heartbeat_at)},
                                         {"running", n.running}});
        }
        o["nodes"] = std::move(nodes);
        json::array leases;
        std::string leader;
        for (const auto& l : s.leases) {
            const bool held = !l.holder.empty() && l.expires_in.count() > 0;
            if (held && l.name == coordination::leader_lease)
                leader = l.holder;
            leases.push_back(json::object{{"name", l.name},
                                          {"holder", held ? l.holder : std::string()},
                                          {"term", l.term},
                                          {"expires_in_ms", held ? l.expires_in.count() : 0}});
        }
        o["leases"] = std::move(leases);
        o["leader"] = leader;
        o["coordinated"] = state_->leases != nullptr;
        o["streams"] = state_->live_streams();
        // The last five minutes: what the realtime chart draws.
        json::array per_second;
        const auto since = ms(clock::now()) - 300'000;
        for (auto& point : rates(state_->seconds))
            if (point.as_array().at(0).as_int64() >= since)
                per_second.push_back(std::move(point));
        o["per_second"] = std::move(per_second);
        o["version"] = state_->version;
        if (history)
            o["per_minute"] = rates(state_->minutes);
        return o;
    }

    http::response overview(dashboard_access access)
    {
        std::lock_guard lock(state_->mutex);
        return json_response(overview_json(access, true));
    }

    // The overview pushed to the page (Server-Sent Events) after each of
    // the poller's readings, with the day's chart when it changed: every
    // page is served by the one poller, however many are open. Each event
    // is authorized as a request would be: a stream outlives the
    // authorization it began with (a token revoked, a user's rights
    // narrowed), and ends, or shows less, once `authorize` says so.
    http::response events(const http::request& request, dashboard_access access)
    {
        http::response r;
        r.content_type = "text/event-stream";
        r.stream = [state = state_, access, self = this, kept = std::make_shared<kept_request>(request)](
                       std::shared_ptr<http::body_stream> out) mutable -> asio::awaitable<void> {
            {
                std::lock_guard lock(state->mutex);
                state->streams.push_back(out);
                state->open_streams->set(static_cast<double>(state->live_streams()));
            }
            std::uint64_t sent = 0;
            std::size_t minutes_sent = 0;
            std::int64_t minute_sent = -1;
            // The browser reconnects by itself; after 2 s if it is cut off.
            bool open = co_await out->write("retry: 2000\n\n");
            while (open) {
                if (state->options.authorize) {
                    try {
                        access = state->options.authorize(kept->get());
                    } catch (...) {
                        access = dashboard_access::none; // closed, as for a request it fails
                    }
                    if (access == dashboard_access::none)
                        break;
                }
                std::string event;
                {
                    std::lock_guard lock(state->mutex);
                    if (state->version != sent) {
                        sent = state->version;
                        const auto last_minute = state->minutes.empty() ? 0 : state->minutes.back().at_ms;
                        const bool history = minutes_sent != state->minutes.size() || minute_sent != last_minute;
                        minutes_sent = state->minutes.size();
                        minute_sent = last_minute;
                        event = "data: " + json::serialize(self->overview_json(access, history)) + "\n\n";
                    } else {
                        // Quiet for a while: a comment, so that proxies keep
                        // the stream open and a client gone away is noticed.
                        event = ":\n\n";
                    }
                }
                if (!co_await out->write(std::move(event)))
                    break;
                open = co_await out->wait(std::chrono::seconds(15));
            }
            std::lock_guard lock(state->mutex);
            std::erase_if(state->streams, [&](const auto& w) { return w.expired() || w.lock() == out; });
            state->open_streams->set(static_cast<double>(state->streams.size()));
        };
        return r;
    }

    // What a filter found: the jobs, how many were read, where the reading
    // stopped, and whether more match or the window was reached first.
    struct found_jobs {
        std::vector<job> jobs;
        std::size_t scanned = 0;
        job_id cursor = 0;
        bool more = false;
        bool window_exceeded = false;
    };

    // Jobs newest first, up to `limit` matches: by state through the
    // storage's index, then by queue, kind and text in the arguments (or
    // the kind, or the last error) over at most scan_limit jobs, as the
    // storage would otherwise read a whole table for a kind that is rare.
    // `before` continues after a page's last id, or after the last id read
    // when the scan stopped at its window.
    asio::awaitable<found_jobs> search(const http::request& r, std::size_t limit)
    {
        job_filter f;
        f.newest_first = true;
        if (auto s = r.query_parameter("state"); s && !s->empty()) {
            f.state = state_named(*s);
            if (!f.state)
                throw std::invalid_argument("no job state '" + *s + "'");
        }
        const auto queue = r.query_parameter("queue").value_or("");
        const auto kind = r.query_parameter("kind").value_or("");
        const auto text = r.query_parameter("q").value_or("");
        // Created within [from, to), in ms since the epoch.
        const auto from = integer_parameter(r, "from");
        const auto to = integer_parameter(r, "to");
        const bool scanning = !text.empty() || !queue.empty() || !kind.empty() || from || to;
        found_jobs out;
        out.cursor = integer_parameter(r, "before").value_or(0);
        const std::size_t page = scanning ? 1000 : std::min<std::size_t>(limit + 1, max_rows_per_write);
        for (;;) {
            f.before = out.cursor;
            f.limit = page;
            auto op = state_->jobs->list(f);
            auto batch = co_await std::move(op);
            for (auto& j : batch) {
                const bool match = !scanning || ((queue.empty() || j.queue == queue) &&
                                                 (kind.empty() || j.kind == kind) &&
                                                 (!from || ms(j.created_at) >= *from) &&
                                                 (!to || ms(j.created_at) < *to) &&
                                                 (text.empty() || j.args.find(text) != std::string::npos ||
                                                  j.kind.find(text) != std::string::npos ||
                                                  j.last_error.find(text) != std::string::npos));
                if (match && out.jobs.size() == limit) {
                    out.more = true;
                    break;
                }
                ++out.scanned;
                out.cursor = j.id;
                if (match)
                    out.jobs.push_back(std::move(j));
            }
            if (out.more || batch.size() < page)
                break;
            if (scanning && out.scanned >= state_->options.scan_limit) {
                out.window_exceeded = true;
                break;
            }
        }
        co_return out;
    }

    asio::awaitable<http::response> list(const http::request& r)
    {
        const auto limit =
            static_cast<std::size_t>(std::clamp<std::int64_t>(integer_parameter(r, "limit").value_or(50), 1, 500));
        auto op = search(r, limit);
        const found_jobs found = co_await std::move(op);
        json::object out;
        json::array jobs;
        for (const auto& j : found.jobs)
            jobs.push_back(job_json(j));
        out["jobs"] = std::move(jobs);
        out["scanned"] = found.scanned;
        out["scan_limit"] = state_->options.scan_limit;
        out["window_exceeded"] = found.window_exceeded;
        // Where the next page starts: after the last job shown, or after
        // the last one read when the scan stopped at its window.
        if (found.window_exceeded)
            out["next_before"] = found.cursor;
        else if (found.more)
            out["next_before"] = found.jobs.back().id;
        co_return json_response(out);
    }

    asio::awaitable<http::response> detail(const http::request& r)
    {
        const auto id = integer_parameter(r, "id");
        if (!id)
            throw std::invalid_argument("'id' is missing");
        auto op = state_->jobs->find(*id);
        auto j = co_await std::move(op);
        if (!j)
            co_return http::response::error(404, "no job " + std::to_string(*id));
        auto o = job_json(*j);
        job_filter f;
        f.parent = *id;
        f.limit = 100;
        auto children = state_->jobs->list(f);
        json::array out;
        for (const auto& c : co_await std::move(children))
            out.push_back(json::object{{"id", c.id}, {"kind", c.kind}, {"state", to_string(c.state)}});
        o["children"] = std::move(out);
        co_return json_response(o);
    }

    asio::awaitable<http::response> recurring()
    {
        auto op = state_->jobs->list_recurring();
        auto all = co_await std::move(op);
        json::array out;
        const auto now = clock::now();
        for (const auto& rj : all) {
            json::array next;
            try {
                const auto expression = hosting::cron_expression::parse(rj.cron);
                const auto zone = hosting::time_zone::locate(rj.zone);
                auto at = std::max(now, rj.next_fire - std::chrono::seconds(1));
                for (int i = 0; i < 5; ++i) {
                    auto t = expression.next(at, zone);
                    if (!t)
                        break;
                    next.push_back(ms(*t));
                    at = *t;
                }
            } catch (const std::exception&) {
                // Shown without its next occurrences; the scheduler logs why.
            }
            json::object o;
            o["id"] = rj.id;
            o["cron"] = rj.cron;
            o["zone"] = rj.zone;
            o["kind"] = rj.kind;
            o["queue"] = rj.queue;
            o["args"] = rj.args;
            o["paused"] = rj.paused;
            o["next_fire"] = ms(rj.next_fire);
            if (rj.last_fire)
                o["last_fire"] = ms(*rj.last_fire);
            o["next"] = std::move(next);
            out.push_back(std::move(o));
        }
        co_return json_response(json::object{{"recurring", std::move(out)}});
    }

    // The jobs a bulk action on a filter takes in one request.
    static constexpr std::size_t bulk_limit = 100'000;
    static constexpr std::array<std::string_view, 6> bulk_filters{"state", "queue", "kind", "q", "from", "to"};

    // Changes the jobs in batches in the storage; each one's result.
    asio::awaitable<http::response> changed(std::vector<job_id> ids, job_state to)
    {
        auto op = state_->jobs->change_many(std::move(ids), to);
        const auto results = co_await std::move(op);
        json::array done, failed;
        for (const auto& x : results) {
            if (x.state)
                done.push_back(x.id);
            else
                failed.push_back(json::object{{"id", x.id}, {"error", x.error}});
        }
        co_return json_response(json::object{{"done", std::move(done)}, {"failed", std::move(failed)}});
    }

    // Every change: one job, a selection of them, a recurring job or a queue.
    asio::awaitable<http::response> act(std::string_view sub, const http::request& r)
    {
        auto& c = *state_->jobs;
        const auto to_of = [](std::string_view action) {
            return action == "retry" ? job_state::available : action == "delete" ? job_state::deleted
                                                                                  : job_state::cancelled;
        };
        if (sub == "/api/job/retry" || sub == "/api/job/delete" || sub == "/api/job/cancel") {
            // ids=1,2,3: a selection, in one request and one transaction per
            // max_rows_per_write jobs.
            const auto text = required(r, "ids");
            std::vector<job_id> ids;
            for (std::size_t at = 0; at <= text.size();) {
                const auto comma = std::min(text.find(',', at), text.size());
                job_id id = 0;
                const auto [end, ec] = std::from_chars(text.data() + at, text.data() + comma, id);
                if (ec != std::errc() || end != text.data() + comma || id <= 0)
                    throw std::invalid_argument("'ids' must be job ids separated by commas");
                ids.push_back(id);
                at = comma + 1;
            }
            if (ids.size() > 1000)
                throw std::invalid_argument("at most 1000 ids in one request; act on a filter for more");
            auto op = changed(std::move(ids), to_of(sub.substr(sub.rfind('/') + 1)));
            http::response res = co_await std::move(op);
            co_return res;
        }
        if (sub == "/api/jobs/retry" || sub == "/api/jobs/delete" || sub == "/api/jobs/cancel") {
            // Everything the filter matches (the same filter, and window, as
            // a list), up to bulk_limit jobs a request. An empty filter
            // would take the newest jobs of every state, running ones
            // included: a request that means that says so with a state.
            const bool filtered = std::any_of(bulk_filters.begin(), bulk_filters.end(), [&](std::string_view name) {
                const auto v = r.query_parameter(name);
                return v && !v->empty();
            });
            if (!filtered)
                throw std::invalid_argument("an action on a filter needs one (a state, queue, kind, text or time): "
                                            "an empty one would act on every job");
            auto op = search(r, bulk_limit);
            found_jobs found = co_await std::move(op);
            std::vector<job_id> ids;
            for (const auto& j : found.jobs)
                ids.push_back(j.id);
            auto change = changed(std::move(ids), to_of(sub.substr(sub.rfind('/') + 1)));
            http::response res = co_await std::move(change);
            auto body = json::parse(res.body).as_object();
            body["more"] = found.more || found.window_exceeded;
            if (found.window_exceeded || found.more)
                body["next_before"] = found.cursor;
            co_return json_response(body);
        }
        if (sub == "/api/recurring/trigger") {
            const auto name = required(r, "id");
            auto op = c.trigger_recurring(name);
            const auto id = co_await std::move(op);
            co_return json_response(json::object{{"job", id}});
        }
        if (sub == "/api/recurring/pause" || sub == "/api/recurring/resume") {
            const auto id = required(r, "id");
            auto op = sub == "/api/recurring/pause" ? c.pause_recurring(id) : c.resume_recurring(id);
            co_await std::move(op);
            co_return json_response(json::object{{"id", id}});
        }
        if (sub == "/api/recurring/remove") {
            const auto id = required(r, "id");
            auto op = c.remove_recurring(id);
            const bool removed = co_await std::move(op);
            co_return json_response(json::object{{"removed", removed}});
        }
        if (sub == "/api/queue/pause" || sub == "/api/queue/resume") {
            const auto name = required(r, "name");
            auto op = sub == "/api/queue/pause" ? c.pause_queue(name) : c.resume_queue(name);
            co_await std::move(op);
            co_return json_response(json::object{{"name", name}});
        }
        co_return http::response::error(404, "no such action in the jobs dashboard");
    }

    std::shared_ptr<dashboard_state> state_;
};

} // namespace

void add_jobs_dashboard(host_builder& builder, dashboard_options options)
{
    options.validate();
    auto state = std::make_shared<dashboard_state>();
    state->options = std::move(options);
    state->csrf = random_token();
    builder.services().add_hosted_service<dashboard_poller>(state).name("hosting.jobs.dashboard");
    auto& server = http::add_http_server(builder);
    auto d = std::make_shared<dashboard>(state);
    auto handler = [d](const http::request& r) { return d->handle(r); };
    server.route(state->options.path + "/*", handler, {"GET", "POST"});
}

} // namespace hosting::jobs
