// The smallest program a user would write; built by the packaging tests.
#include <hosting/hosting.hpp>

namespace asio = boost::asio;

class once : public hosting::background_service {
protected:
    asio::awaitable<void> execute(std::stop_token stopping) override
    {
        co_await hosting::delay(std::chrono::milliseconds(10), stopping);
    }
};

int main(int argc, char** argv)
{
    auto builder = hosting::host::create_builder(argc, argv);
    builder.use_console_lifetime(false);
    builder.options().stop_when_all_background_services_complete = true;
    builder.services().add_hosted_service<once>();
    auto host = builder.build();
    return host.run();
}
