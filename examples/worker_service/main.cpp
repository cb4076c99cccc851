// A worker service: a host with its configuration, logging and services,
// run by systemd (see worker_service.service), by the Windows service
// control manager (see the README), by a scheduler, or by hand.
//
//   worker_service                          # a service: reports every Worker:IntervalMilliseconds until stopped;
//                                           # SIGHUP reloads appsettings.json
//   worker_service --Worker:Runs=3          # a scheduler-run job: three reports, then exit code 0
//   worker_service --Worker:Runs=3 --Worker:Fail=true   # the job failing: exit code 1
#include <hosting/configuration/configuration.hpp>
#include <hosting/hosting.hpp>
#include <hosting/async/offload.hpp>
#include <hosting/logging/logging.hpp>
#include <hosting/scheduling/periodic_service.hpp>
#ifdef _WIN32
#include <hosting/windows/windows_service.hpp>
#else
#include <hosting/systemd/systemd.hpp>
#endif

#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <string>

namespace asio = boost::asio;

namespace {

// The status line systemd shows beside the service; the Windows service
// control manager has none.
class status_line {
public:
#ifdef _WIN32
    explicit status_line(hosting::service_provider&) {}
    void operator()(const std::string&) const {}
#else
    explicit status_line(hosting::service_provider& provider) : notifier_(provider.get<hosting::systemd_notifier>()) {}
    void operator()(const std::string& text) const { notifier_.status(text); }

private:
    const hosting::systemd_notifier& notifier_;
#endif
};

// What one report does; shared by the service and the job.
asio::awaitable<void> write_report(const hosting::configuration& config, spdlog::logger& log,
                                   const status_line& status, int number, std::stop_token stopping)
{
    if (config.get<bool>("Worker:Fail", false))
        throw std::runtime_error("the report source is unreachable");
    co_await hosting::delay(std::chrono::milliseconds(50), stopping);
    log.info("{} #{}", config.get<std::string>("Worker:Message", "report"), number);
    status(std::to_string(number) + " reports written");
}

hosting::periodic_options schedule(const hosting::configuration& config)
{
    hosting::periodic_options o;
    o.interval = std::chrono::milliseconds(config.get<int>("Worker:IntervalMilliseconds", 1000));
    return o;
}

} // namespace

// Run by systemd: reports on a schedule until stopped.
class report_service : public hosting::periodic_service {
public:
    explicit report_service(hosting::service_provider& provider)
        : periodic_service(schedule(provider.get<hosting::configuration>())),
          config_(provider.get<hosting::configuration>()),
          status_(provider)
    {
        config_.on_change([this] { changed_ = true; }); // SIGHUP
    }

protected:
    asio::awaitable<void> tick(std::stop_token stopping) override
    {
        if (changed_.exchange(false))
            service_logger()->info("configuration reloaded; message is now \"{}\"",
                                   config_.get<std::string>("Worker:Message", "report"));
        co_await write_report(config_, *service_logger(), status_, ++count_, stopping);
    }

private:
    hosting::configuration config_;
    status_line status_;
    std::atomic<bool> changed_{false};
    int count_ = 0;
};

// Run by a scheduler: does its reports and completes; a throw fails the run.
class report_job : public hosting::background_service {
public:
    explicit report_job(hosting::service_provider& provider)
        : config_(provider.get<hosting::configuration>()), status_(provider)
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        const int runs = config_.get<int>("Worker:Runs");
        for (int i = 1; i <= runs; ++i)
            co_await write_report(config_, *service_logger(), status_, i, stopping);
    }

private:
    hosting::configuration config_;
    status_line status_;
};

int main(int argc, char** argv)
{
    try {
        auto builder = hosting::host::create_builder(argc, argv);
#ifdef _WIN32
        hosting::use_windows_service(builder);
#else
        hosting::use_systemd(builder);
#endif
        if (builder.configuration().get<int>("Worker:Runs", 0) > 0) {
            // Exit when the job is done; the exit code says how it went.
            builder.options().stop_when_all_background_services_complete = true;
            builder.services().add_hosted_service<report_job>().name("reports");
        } else {
            builder.services().add_hosted_service<report_service>().name("reports");
        }
        auto host = builder.build();
        return host.run();
    } catch (const std::exception& e) {
        // Configuration errors name the file, key or value: say it plainly.
        std::fprintf(stderr, "worker_service: %s\n", e.what());
        return 2;
    }
}
