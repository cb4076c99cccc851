#include "core/detail/service_entry.hpp"

#include <mutex>

namespace hosting::detail {

namespace {
// Errors and restarts are rare; one lock for all entries keeps each entry
// small.
std::mutex entry_mutex;
} // namespace

service_entry::service_entry(std::shared_ptr<const std::string> n, std::shared_ptr<hosted_service> s,
                             const asio::any_io_executor& ex)
    : name_storage(std::move(n)), service(std::move(s)), strand(&ex)
{
    lifecycle = dynamic_cast<hosted_lifecycle_service*>(service.get());
    background = dynamic_cast<background_service*>(service.get());
}

void service_entry::set_error(std::exception_ptr e)
{
    std::lock_guard lock(entry_mutex);
    error_ = std::move(e);
}

void service_entry::replace(std::shared_ptr<hosted_service> s)
{
    {
        std::lock_guard lock(entry_mutex);
        std::swap(service, s);
        lifecycle = dynamic_cast<hosted_lifecycle_service*>(service.get());
        background = dynamic_cast<background_service*>(service.get());
    }
    // The old instance dies here, outside the lock: its destructor is the
    // user's code.
}

service_status service_entry::status() const
{
    service_status s;
    s.name = name();
    s.state = state.load();
    s.restarts = restarts.load();
    s.faults = faults.load();
    std::lock_guard lock(entry_mutex);
    s.service = service;
    if (s.state == service_state::faulted || s.faults > 0)
        s.error = error_;
    if (supervised) {
        s.restart_pending = supervised->pending.load();
        s.restarts_exhausted = supervised->exhausted.load();
    }
    if (background) {
        s.heartbeat_interval = background->heartbeat_interval();
        s.last_heartbeat = background->last_heartbeat();
    }
    return s;
}

} // namespace hosting::detail
