#include <hosting/core/host_options.hpp>

#include <stdexcept>
#include <string>

namespace hosting {

namespace {
std::string ms(std::chrono::milliseconds value) { return std::to_string(value.count()) + "ms"; }
} // namespace

void host_options::validate() const
{
    if (shutdown_timeout < std::chrono::milliseconds::zero())
        throw std::invalid_argument("host_options: shutdown_timeout must not be negative (got " +
                                    ms(shutdown_timeout) + ")");
    if (shutdown_delay < std::chrono::milliseconds::zero())
        throw std::invalid_argument("host_options: shutdown_delay must not be negative (got " + ms(shutdown_delay) +
                                    ")");
    if (shutdown_delay > std::chrono::milliseconds::zero() && shutdown_delay >= shutdown_timeout)
        throw std::invalid_argument("host_options: shutdown_delay (" + ms(shutdown_delay) +
                                    ") must be shorter than shutdown_timeout (" + ms(shutdown_timeout) +
                                    "): the delay counts inside the shutdown deadline");
    if (startup_timeout && *startup_timeout <= std::chrono::milliseconds::zero())
        throw std::invalid_argument("host_options: startup_timeout must be positive when set (got " +
                                    ms(*startup_timeout) + ")");
    if (worker_threads == 0)
        throw std::invalid_argument("host_options: worker_threads must be at least 1 (got 0)");
    if (background_service_exception_behavior != hosting::background_service_exception_behavior::stop_host &&
        background_service_exception_behavior != hosting::background_service_exception_behavior::ignore)
        throw std::invalid_argument("host_options: background_service_exception_behavior has an invalid value (" +
                                    std::to_string(static_cast<int>(background_service_exception_behavior)) +
                                    ")");
}

} // namespace hosting
