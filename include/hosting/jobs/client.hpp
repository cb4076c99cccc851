// jobs/client.hpp: enqueue, schedule, cancel and query persistent jobs.
#pragma once

#include <hosting/jobs/storage.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value_from.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hosting::jobs {

namespace asio = boost::asio;

namespace detail {
class engine;
}

// Thread-safe; every call is awaitable (resuming on the caller's executor)
// and has a blocking form for callers that are not coroutines. Storage work
// runs on the engine's own thread, never on the caller's loop; enqueues from
// many callers at once are committed together.
//
// Arguments are any type Boost.JSON can convert (value_from): a described
// struct, a map, a string. They are stored as readable JSON.
class client {
public:
    explicit client(std::shared_ptr<detail::engine> engine);

    // Fire and forget: available now. Returns the job's id, or with a
    // unique_key whose job exists in one of its unique_states, that job's id.
    template <class Args>
    asio::awaitable<job_id> enqueue(std::string_view kind, const Args& args, job_options options = {})
    {
        return submit(std::string(kind), to_json(args), std::move(options), std::nullopt);
    }
    template <class Args>
    job_id enqueue_blocking(std::string_view kind, const Args& args, job_options options = {})
    {
        return submit_blocking(std::string(kind), to_json(args), std::move(options), std::nullopt);
    }

    // Runs no earlier than `at` (or `delay` from now).
    template <class Args>
    asio::awaitable<job_id> schedule(std::string_view kind, const Args& args, time_point at, job_options options = {})
    {
        return submit(std::string(kind), to_json(args), std::move(options), at);
    }
    template <class Args>
    asio::awaitable<job_id> schedule(std::string_view kind, const Args& args, std::chrono::milliseconds delay,
                                     job_options options = {})
    {
        return submit(std::string(kind), to_json(args), std::move(options), now() + delay);
    }
    template <class Args>
    job_id schedule_blocking(std::string_view kind, const Args& args, std::chrono::milliseconds delay,
                             job_options options = {})
    {
        return submit_blocking(std::string(kind), to_json(args), std::move(options), now() + delay);
    }

    // A job that is not running is cancelled at once; a running one is asked
    // to stop (its handler's stop token fires, on whichever node runs it)
    // and ends cancelled. Throws job_not_found, or invalid_transition for a
    // job that already ended.
    asio::awaitable<void> cancel(job_id id);
    void cancel_blocking(job_id id);
    // Deletes a job in any state but deleted (a running one is stopped).
    asio::awaitable<void> delete_job(job_id id);
    void delete_job_blocking(job_id id);
    // Makes a finished job available again, with its attempts reset.
    asio::awaitable<void> requeue(job_id id);
    void requeue_blocking(job_id id);

    // Queries, with the history when asked.
    asio::awaitable<std::optional<job>> find(job_id id);
    std::optional<job> find_blocking(job_id id);
    asio::awaitable<std::vector<job>> list(job_filter filter);
    std::vector<job> list_blocking(job_filter filter);
    asio::awaitable<job_counts> counts();
    job_counts counts_blocking();

private:
    template <class Args>
    static std::string to_json(const Args& args)
    {
        return boost::json::serialize(boost::json::value_from(args));
    }
    time_point now() const;
    asio::awaitable<job_id> submit(std::string kind, std::string args, job_options options,
                                   std::optional<time_point> run_at);
    job_id submit_blocking(std::string kind, std::string args, job_options options, std::optional<time_point> run_at);
    asio::awaitable<void> transition(job_id id, job_state to, std::string reason);

    std::shared_ptr<detail::engine> engine_;
};

} // namespace hosting::jobs
