// The README's quickstart: what a user's translation unit costs with hosting.
#include <hosting/hosting.hpp>
#include <cstdio>
namespace asio = boost::asio;
using namespace std::chrono_literals;

class ticker : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        for (int i = 1;; ++i) {
            co_await hosting::delay(1s, stopping);
            std::printf("tick %d\n", i);
        }
    }
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    builder.services().add_hosted_service<ticker>();
    auto host = builder.build();
    return host.run();
}
