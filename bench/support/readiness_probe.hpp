// What a load balancer sees of a node while its job storage fails: a host
// with the jobs server on that storage, and its readiness over HTTP.
#pragma once

#include "bench_common.hpp"
#include "http_get.hpp"

#include <hosting/health/health_endpoint.hpp>
#include <hosting/http/server.hpp>
#include <hosting/jobs/server.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <thread>

namespace bench {

class readiness_probe {
public:
    // Built on `store` (opened by the caller while it still works), not
    // started: a host that starts while its storage fails is what is tried.
    explicit readiness_probe(std::shared_ptr<hosting::jobs::storage> store)
    {
        auto builder = quiet_builder();
        hosting::health_endpoint_options http;
        http.port = 0;
        hosting::add_health_endpoint(builder, http);
        hosting::jobs::server_options options;
        options.workers = 1;
        options.node_id = "readiness-probe";
        // Writes (claims, renewals) often, so that readiness follows the
        // storage within a fraction of a second.
        options.poll_interval = std::chrono::milliseconds(50);
        options.heartbeat_interval = std::chrono::milliseconds(50);
        options.lease_duration = std::chrono::seconds(5);
        // It must change nothing the program checks: a queue of its own,
        // and a day in the past, when no recurring job is due, no lease has
        // expired and no job is old enough to prune.
        options.queues = {{"readiness-probe", 0}};
        options.clock = std::make_shared<hosting::jobs::manual_time_source>(hosting::jobs::clock::now() -
                                                                            std::chrono::hours(24));
        hosting::jobs::add_jobs(builder, std::move(store), options);
        host_.emplace(builder.build());
    }
    ~readiness_probe()
    {
        if (started_)
            host_->stop_blocking();
    }
    readiness_probe(const readiness_probe&) = delete;
    readiness_probe& operator=(const readiness_probe&) = delete;

    // Starts the host: empty, or why it did not start.
    std::string start()
    {
        try {
            host_->start_blocking();
            started_ = true;
            port_ = host_->services().get<hosting::http::server>().port();
            return {};
        } catch (const std::exception& e) {
            return e.what();
        }
    }

    // Whether GET /health/ready answers `status` within `within` (polled:
    // readiness is what a fresh request observes).
    bool answers(unsigned status, std::chrono::milliseconds within = std::chrono::seconds(10))
    {
        const auto deadline = std::chrono::steady_clock::now() + within;
        for (;;) {
            try {
                if (http_get(port_, "/health/ready").first == status)
                    return true;
            } catch (const std::exception&) {
            }
            if (std::chrono::steady_clock::now() > deadline)
                return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }

private:
    std::optional<hosting::host> host_;
    bool started_ = false;
    unsigned short port_ = 0;
};

// What the fault programs check of readiness around one fault, on a probe
// built before it (`store` null: none this run).
class readiness_around_fault {
public:
    explicit readiness_around_fault(std::shared_ptr<hosting::jobs::storage> store)
    {
        if (store)
            probe_.emplace(std::move(store));
    }

    // Once the fault fired and while it lasts: the host starts and is not
    // ready. What is wrong, or empty; `probes` counts the hosts tried.
    std::string while_failing(bool fired, long& probes)
    {
        if (!probe_ || !fired)
            return {}; // past the operation's last I/O: nothing fails
        probed_ = true;
        ++probes;
        if (auto why = probe_->start(); !why.empty())
            return "a host does not start while its storage fails: " + why;
        if (!probe_->answers(503))
            return "a host whose storage fails is still ready";
        return {};
    }

    // Once the fault is lifted: ready again. Then the host stops, so that
    // its server writes nothing during the program's own checks.
    std::string once_lifted()
    {
        std::string wrong;
        if (probed_ && !probe_->answers(200))
            wrong = "a host is not ready again once its storage works";
        probe_.reset();
        return wrong;
    }

private:
    std::optional<readiness_probe> probe_;
    bool probed_ = false;
};

} // namespace bench
