// A service that runs on one node at a time, whatever the number of
// processes started: the export below must never run twice at once. Its
// node holds a lease in the coordination storage; when that node dies or
// stops, another takes the lease over, with a larger term (a fencing token)
// that the export stamps on what it writes.
//
//   single_instance                                          # SQLite file coordination.db, processes on one machine
//   single_instance --Coordination:Storage=postgresql://db1/app   # nodes on many machines
//   single_instance --Coordination:LeaseMs=5000 --Coordination:NodeId=node-a
//
// Start two or three: one says "exporting", the others wait. Stop it (Ctrl+C)
// and another takes over at once; kill -9 it and another takes over once
// its lease has expired (5 s by default).
#include <hosting/hosting.hpp>
#include <hosting/async/cancellation.hpp>
#include <hosting/configuration/configuration.hpp>
#include <hosting/coordination/coordination.hpp>
#include <hosting/coordination/open_lease_store.hpp>

#include <spdlog/logger.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace asio = boost::asio;
using namespace std::chrono_literals;

// Prints when it starts and stops, with the machine's monotonic clock, so
// that a test can check that no two holds overlap.
static long long monotonic_ms()
{
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

class exporter : public hosting::background_service {
public:
    explicit exporter(hosting::service_provider& provider)
        : tick_(std::chrono::milliseconds(provider.get<hosting::configuration>().get<int>("Export:TickMs", 1000)))
    {
    }

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        // The term this node holds the lease in: whatever the export writes
        // carries it, and a store that has seen a larger one refuses it.
        const auto term = co_await hosting::fencing_token();
        std::printf("exporting with term %llu at %lld\n", static_cast<unsigned long long>(term), monotonic_ms());
        std::fflush(stdout);
        struct at_end {
            unsigned long long term;
            ~at_end()
            {
                std::printf("stopped term %llu at %lld\n", term, monotonic_ms());
                std::fflush(stdout);
            }
        } report{term};
        for (int batch = 1;; ++batch) {
            co_await hosting::delay(tick_, stopping);
            service_logger()->info("Exported batch {} under term {}", batch, term);
        }
    }

private:
    std::chrono::milliseconds tick_;
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    auto& config = builder.configuration();
    hosting::coordination::coordination_options options;
    options.lease_duration = std::chrono::milliseconds(config.get<int>("Coordination:LeaseMs", 5000));
    options.node_id = config.get<std::string>("Coordination:NodeId", "");
    // Coordination:Storage: a SQLite file (coordination.db) or PostgreSQL.
    hosting::coordination::add_coordination(builder, hosting::coordination::open_lease_store(config), options);
    builder.services().add_hosted_service<exporter>().name("exporter").single_instance("export");
    return builder.build().run();
}
