// application_lifetime: the host's lifetime events, and the way to stop it.
#pragma once

#include <stop_token>

namespace hosting {

namespace detail {
struct lifetime_access;
}

// Each event is a std::stop_token that is requested once, when the event
// happens, in this order: started (after the last service started), stopping
// (before the first service is stopped), stopped (after the last one
// stopped). A start aborted by a stop request never fires started. Register a
// std::stop_callback to be told; it runs on the thread that fires the event
// (the host's), so keep it short and post real work elsewhere.
class application_lifetime {
public:
    application_lifetime() = default;
    application_lifetime(const application_lifetime&) = delete;
    application_lifetime& operator=(const application_lifetime&) = delete;

    std::stop_token application_started() const noexcept { return started_.get_token(); }
    std::stop_token application_stopping() const noexcept { return stopping_.get_token(); }
    std::stop_token application_stopped() const noexcept { return stopped_.get_token(); }

    // Asks the host to stop gracefully. Safe from any thread, any number of
    // times; only the first call does anything. Returns at once.
    void stop_application() noexcept { stop_requested_.request_stop(); }

    // Requested by the first stop_application() (or signal), before stopping.
    std::stop_token stop_requested() const noexcept { return stop_requested_.get_token(); }

private:
    friend struct detail::lifetime_access;
    std::stop_source started_;
    std::stop_source stopping_;
    std::stop_source stopped_;
    std::stop_source stop_requested_;
};

} // namespace hosting
