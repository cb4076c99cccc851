#include <hosting/jobs/job.hpp>
#include <hosting/jobs/storage.hpp>

#include <array>
#include <stdexcept>

namespace hosting::jobs {

namespace {
constexpr std::array<std::string_view, job_state_count> names = {
    "scheduled", "available", "awaiting", "running", "retryable", "succeeded", "failed", "cancelled", "deleted",
};
} // namespace

std::string_view to_string(job_state state) noexcept
{
    const auto i = static_cast<std::size_t>(state);
    return i < names.size() ? names[i] : "unknown";
}

job_state parse_job_state(std::string_view text)
{
    for (std::size_t i = 0; i < names.size(); ++i)
        if (names[i] == text)
            return static_cast<job_state>(i);
    throw std::invalid_argument("jobs: '" + std::string(text) + "' is not a job state");
}

bool can_transition(job_state from, job_state to) noexcept
{
    using s = job_state;
    if (from == to)
        return false;
    if (to == s::cancelled)
        return !is_final(from);
    if (to == s::deleted)
        return from != s::deleted;
    switch (from) {
    case s::scheduled:
    case s::retryable: return to == s::available || to == s::running;
    case s::available: return to == s::running;
    case s::awaiting: return to == s::available;
    case s::running:
        return to == s::succeeded || to == s::retryable || to == s::failed || to == s::scheduled ||
               to == s::available;
    case s::succeeded:
    case s::failed:
    case s::cancelled:
    case s::deleted: return to == s::available;
    }
    return false;
}

namespace {
std::string transition_text(job_id id, job_state from, job_state to)
{
    return "jobs: job " + std::to_string(id) + " cannot go from " + std::string(to_string(from)) + " to " +
           std::string(to_string(to));
}
} // namespace

invalid_transition::invalid_transition(job_id id, job_state from, job_state to)
    : std::logic_error(transition_text(id, from, to)), from_(from), to_(to)
{
}

invalid_transition::invalid_transition(job_id id, job_state from, job_state to, const std::string& why)
    : std::logic_error(transition_text(id, from, to) + ": " + why), from_(from), to_(to)
{
}

job_not_found::job_not_found(job_id id) : std::runtime_error("jobs: no job " + std::to_string(id)) {}

void validate_request(const enqueue_request& r)
{
    if (r.kind.empty())
        throw std::invalid_argument("jobs: enqueue needs a kind");
    // A key that lets go in one pending state and is taken again in another
    // could find another job holding it at a moment the engine cannot fail
    // (a scheduled job falling due, a retry), and every claim would stop
    // there.
    constexpr state_set pending = default_unique_states;
    if (!r.unique_key.empty())
        for (std::size_t i = 0; i < job_state_count; ++i)
            if (pending.contains(static_cast<job_state>(i)) && !r.unique_states.contains(static_cast<job_state>(i)))
                throw std::invalid_argument("jobs: job of kind '" + r.kind +
                                            "': unique_states must include every state that is not final "
                                            "(scheduled, available, awaiting, running, retryable); it may add "
                                            "final ones");
    if (r.queue.empty())
        throw std::invalid_argument("jobs: job of kind '" + r.kind + "' has an empty queue name");
    if (r.max_attempts < 1)
        throw std::invalid_argument("jobs: job of kind '" + r.kind + "' needs max_attempts of at least 1");
    if (r.timeout < std::chrono::milliseconds::zero())
        throw std::invalid_argument("jobs: job of kind '" + r.kind + "' has a negative timeout");
}

} // namespace hosting::jobs
