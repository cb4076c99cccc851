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

// Jobs for client::enqueue_many: of any kinds, each with its options and,
// for a scheduled one, its time. Arguments are serialised when added.
class job_batch {
public:
    template <class Args>
    job_batch& add(std::string_view kind, const Args& args, job_options options = {},
                   std::optional<time_point> run_at = std::nullopt)
    {
        items_.push_back({std::string(kind), boost::json::serialize(boost::json::value_from(args)),
                          std::move(options), run_at});
        return *this;
    }
    // A kind bound to its arguments type (kind_name).
    template <named_kind Args>
    job_batch& add(const Args& args, job_options options = {}, std::optional<time_point> run_at = std::nullopt)
    {
        return add(kind_name<Args>::value, args, std::move(options), run_at);
    }
    std::size_t size() const noexcept { return items_.size(); }
    bool empty() const noexcept { return items_.empty(); }
    void clear() noexcept { items_.clear(); }

private:
    friend class client;
    struct item {
        std::string kind;
        std::string args;
        job_options options;
        std::optional<time_point> run_at;
    };
    std::vector<item> items_;
};

// Thread-safe; every call is awaitable and has a blocking form (..._blocking)
// for callers that are not coroutines, which blocks its thread until the
// storage has answered.
//
// Arguments are any type Boost.JSON can convert (value_from): a described
// struct, a map, a string. They are stored as readable JSON.
//
// All the awaitable operations below:
// Lifetimes: their arguments are copied (Args serialised to JSON) when the
// call is made, before anything is awaited; the client must outlive the
// operation. They take their arguments by reference and have overloads
// instead of default arguments: under GCC 12, a temporary with a destructor
// inside a co_await expression (a default `job_options{}`, say) can be
// destroyed twice. Pass named objects to them.
// Executor: storage work runs on the engine's own thread, never on the
// caller's loop; the caller resumes on its own executor, whose io_context
// counts the wait as outstanding work. Enqueues from many callers at once
// are committed together, in one transaction.
// Cancellation: none takes a token, and a storage call, once sent, is not
// abandoned: cancelling the awaiting coroutine does not cut the wait short,
// and the caller resumes when the storage has answered. A coroutine already
// cancelled when it reaches the co_await gets Asio's operation_aborted from
// it, and nothing is sent to the storage.
// Errors: what the storage throws (storage_error) is rethrown to the
// caller; a failed commit fails every enqueue committed with it. The errors
// listed below as thrown "at the call" come from the call expression
// itself, before anything is awaited or sent.
// Thread safety: any thread; one client serves any number of callers at
// once.
class client {
public:
    explicit client(std::shared_ptr<detail::engine> engine);

    // Fire and forget: available now. Completes once the job is stored with
    // its id and `created`, or, with a unique_key whose job exists in one of
    // its unique_states, with that job's id and `created` false. (An
    // `enqueued` converts to its job_id.) Throws std::invalid_argument at the
    // call for an empty kind or invalid job_options.
    template <class Args>
    asio::awaitable<enqueued> enqueue(std::string_view kind, const Args& args, const job_options& options)
    {
        return submit(std::string(kind), to_json(args), options, std::nullopt);
    }
    template <class Args>
    asio::awaitable<enqueued> enqueue(std::string_view kind, const Args& args)
    {
        return submit(std::string(kind), to_json(args), job_options{}, std::nullopt);
    }
    template <class Args>
    enqueued enqueue_blocking(std::string_view kind, const Args& args, job_options options = {})
    {
        return submit_blocking(std::string(kind), to_json(args), std::move(options), std::nullopt);
    }

    // The same, for a kind bound to its arguments type (kind_name): the
    // type says the kind.
    template <named_kind Args>
    asio::awaitable<enqueued> enqueue(const Args& args, const job_options& options)
    {
        return submit(std::string(kind_name<Args>::value), to_json(args), options, std::nullopt);
    }
    template <named_kind Args>
    asio::awaitable<enqueued> enqueue(const Args& args)
    {
        return submit(std::string(kind_name<Args>::value), to_json(args), job_options{}, std::nullopt);
    }
    template <named_kind Args>
    enqueued enqueue_blocking(const Args& args, job_options options = {})
    {
        return submit_blocking(std::string(kind_name<Args>::value), to_json(args), std::move(options), std::nullopt);
    }

    // Every job of the batch in one transaction: all are stored, or none
    // (the call throws). Completes with one result per job, in the batch's
    // order (a job whose unique key another job holds gives that job's id,
    // created false, as enqueue() does). The transaction's size is the
    // batch's: a batch of tens of thousands holds the storage's write lock
    // for tens of milliseconds. Throws std::invalid_argument at the call, as
    // enqueue() does, naming the job's place in the batch.
    asio::awaitable<std::vector<enqueued>> enqueue_many(const job_batch& batch);
    std::vector<enqueued> enqueue_many_blocking(const job_batch& batch);
    // What enqueue_many() would store, each job with its kind's defaults
    // and validated (std::invalid_argument as enqueue_many() throws it), for
    // a storage call of the caller's own: a transactional enqueue, say
    // (postgres_storage::enqueue_in_transaction).
    std::vector<enqueue_request> requests_for(const job_batch& batch) const;

    // Runs no earlier than `at` (or `delay` from now, by
    // server_options::clock). Completes and throws as enqueue().
    template <class Args>
    asio::awaitable<enqueued> schedule(std::string_view kind, const Args& args, time_point at,
                                     const job_options& options)
    {
        return submit(std::string(kind), to_json(args), options, at);
    }
    template <class Args>
    asio::awaitable<enqueued> schedule(std::string_view kind, const Args& args, time_point at)
    {
        return submit(std::string(kind), to_json(args), job_options{}, at);
    }
    template <class Args>
    asio::awaitable<enqueued> schedule(std::string_view kind, const Args& args, std::chrono::milliseconds delay,
                                     const job_options& options)
    {
        return submit(std::string(kind), to_json(args), options, now() + delay);
    }
    template <class Args>
    asio::awaitable<enqueued> schedule(std::string_view kind, const Args& args, std::chrono::milliseconds delay)
    {
        return submit(std::string(kind), to_json(args), job_options{}, now() + delay);
    }
    template <class Args>
    enqueued schedule_blocking(std::string_view kind, const Args& args, std::chrono::milliseconds delay,
                             job_options options = {})
    {
        return submit_blocking(std::string(kind), to_json(args), std::move(options), now() + delay);
    }

    template <named_kind Args>
    asio::awaitable<enqueued> schedule(const Args& args, std::chrono::milliseconds delay, const job_options& options)
    {
        return submit(std::string(kind_name<Args>::value), to_json(args), options, now() + delay);
    }
    template <named_kind Args>
    asio::awaitable<enqueued> schedule(const Args& args, std::chrono::milliseconds delay)
    {
        return submit(std::string(kind_name<Args>::value), to_json(args), job_options{}, now() + delay);
    }
    template <named_kind Args>
    enqueued schedule_blocking(const Args& args, std::chrono::milliseconds delay, job_options options = {})
    {
        return submit_blocking(std::string(kind_name<Args>::value), to_json(args), std::move(options), now() + delay);
    }

    // A continuation: awaiting while `parent` can still meet `condition`,
    // then available once it has, or deleted with the reason once it no
    // longer can (see continuation_condition: a parent that failed or was
    // cancelled can be requeued, so its on_success continuations wait; a
    // delete, or the parent's pruning, settles them). A parent that already
    // ended is judged at once. Completes with the job's id once it is
    // stored. Throws job_not_found for an unknown parent (when the storage
    // sees it), and std::invalid_argument at the call as enqueue().
    template <class Args>
    asio::awaitable<enqueued> continue_with(job_id parent, std::string_view kind, const Args& args,
                                          continuation_condition condition, const job_options& options)
    {
        return submit_continuation(parent, std::string(kind), to_json(args), condition, options);
    }
    template <class Args>
    asio::awaitable<enqueued> continue_with(job_id parent, std::string_view kind, const Args& args,
                                          continuation_condition condition = continuation_condition::on_success)
    {
        return submit_continuation(parent, std::string(kind), to_json(args), condition, job_options{});
    }
    template <class Args>
    enqueued continue_with_blocking(job_id parent, std::string_view kind, const Args& args,
                                  continuation_condition condition = continuation_condition::on_success,
                                  job_options options = {})
    {
        return submit_continuation_blocking(parent, std::string(kind), to_json(args), condition, std::move(options));
    }

    template <named_kind Args>
    asio::awaitable<enqueued> continue_with(job_id parent, const Args& args,
                                          continuation_condition condition = continuation_condition::on_success)
    {
        return submit_continuation(parent, std::string(kind_name<Args>::value), to_json(args), condition,
                                   job_options{});
    }
    template <named_kind Args>
    enqueued continue_with_blocking(job_id parent, const Args& args,
                                  continuation_condition condition = continuation_condition::on_success,
                                  job_options options = {})
    {
        return submit_continuation_blocking(parent, std::string(kind_name<Args>::value), to_json(args), condition,
                                            std::move(options));
    }

    // Recurring jobs: each occurrence of `cron` in `zone` (an IANA name)
    // enqueues one job, exactly once however many servers share the storage
    // (the schedule moves on by compare-and-set, in the enqueue's
    // transaction). Every job_options field (and the kind's defaults, its
    // uniqueness rule included) holds for each occurrence as for any
    // enqueue: a concurrency_key keeps occurrences from running beside each
    // other, or beside other jobs with the key; a unique_key makes an
    // occurrence return the pending one instead (without one, each
    // occurrence has its own key, "recurring:<id>:<time>", in every state).
    // `overlap` says what an occurrence does while an earlier one has not
    // ended, on any node: allow (run anyway), skip (not enqueued) or wait
    // (run after it); skip takes the unique key and wait the concurrency key
    // (both "recurring:<id>"), so neither goes with an own key of that sort.
    // Updating a recurring job whose schedule is unchanged keeps its next
    // occurrence. Completes once it is stored. Throws cron_parse_error,
    // unknown_time_zone or std::invalid_argument (an empty id, invalid
    // job_options, a schedule that never fires, an overlap policy with a key
    // of its own) at the call.
    template <class Args>
    asio::awaitable<void> add_or_update_recurring(std::string_view id, std::string_view cron, std::string_view zone,
                                                  std::string_view kind, const Args& args, const job_options& options,
                                                  missed_policy missed = missed_policy::run_once,
                                                  overlap_policy overlap = overlap_policy::allow)
    {
        return upsert_recurring(make_recurring(std::string(id), std::string(cron), std::string(zone),
                                               std::string(kind), to_json(args), options, missed, overlap));
    }
    template <class Args>
    asio::awaitable<void> add_or_update_recurring(std::string_view id, std::string_view cron, std::string_view zone,
                                                  std::string_view kind, const Args& args)
    {
        return upsert_recurring(make_recurring(std::string(id), std::string(cron), std::string(zone),
                                               std::string(kind), to_json(args), job_options{},
                                               missed_policy::run_once, overlap_policy::allow));
    }
    template <class Args>
    void add_or_update_recurring_blocking(std::string id, std::string cron, std::string zone, std::string_view kind,
                                          const Args& args, job_options options = {},
                                          missed_policy missed = missed_policy::run_once,
                                          overlap_policy overlap = overlap_policy::allow)
    {
        upsert_recurring_blocking(make_recurring(std::move(id), std::move(cron), std::move(zone), std::string(kind),
                                                 to_json(args), options, missed, overlap));
    }
    // Completes with false when there was no such recurring job.
    asio::awaitable<bool> remove_recurring(std::string_view id);
    bool remove_recurring_blocking(std::string id);
    // Enqueues one run now, outside the schedule, and completes with its id:
    // the recurring job's keys and overlap policy hold for it as for an
    // occurrence (with skip, or a unique key, while one is pending it
    // completes with that one's id). Throws std::invalid_argument for an
    // unknown id, once the storage has been asked (not at the call).
    asio::awaitable<job_id> trigger_recurring(std::string_view id);
    job_id trigger_recurring_blocking(std::string id);
    // Pauses a recurring job on every node: no occurrence fires while it is
    // paused (those due meanwhile are skipped), and updating it with
    // add_or_update_recurring keeps it paused. Resuming starts again from
    // the next occurrence after now. Throws std::invalid_argument for an
    // unknown id, once the storage has been asked.
    asio::awaitable<void> pause_recurring(std::string_view id);
    asio::awaitable<void> resume_recurring(std::string_view id);
    void pause_recurring_blocking(std::string id);
    void resume_recurring_blocking(std::string id);
    // Completes with every recurring job in the storage.
    asio::awaitable<std::vector<recurring_job>> list_recurring();
    std::vector<recurring_job> list_recurring_blocking();

    // A job that is not running is cancelled at once; a running one is asked
    // to stop (its handler's stop token fires, on whichever node runs it)
    // and ends cancelled however its handler ends: it is never retried,
    // snoozed or released again. Completes once the storage has recorded the cancel
    // (for a running job, the request), without waiting for a handler to
    // stop. Throws job_not_found, or invalid_transition for a job that
    // already ended.
    asio::awaitable<void> cancel(job_id id);
    void cancel_blocking(job_id id);
    // Deletes a job in any state but deleted. A running one is stopped like
    // cancel() does, and becomes deleted once its handler has stopped; it
    // holds its concurrency key until then. A deleted job holds its unique
    // key (when its unique_states include deleted) only if no other job does.
    // Completes as cancel(). Throws job_not_found, or invalid_transition for
    // a job already deleted.
    asio::awaitable<void> delete_job(job_id id);
    void delete_job_blocking(job_id id);
    // Makes a finished job available again, with its attempts reset. Its
    // continuations still awaiting it wait on; once it succeeds, those of
    // on_success run.
    // Completes once it is stored. Throws job_not_found, or
    // invalid_transition for a job that has not ended, or whose unique key
    // another job has taken since (the message names that job).
    asio::awaitable<void> requeue(job_id id);
    void requeue_blocking(job_id id);
    // Cancels (to = cancelled), deletes (deleted) or requeues (available)
    // many jobs, each as the calls above do, a transaction per
    // max_rows_per_write of them rather than one per job. Completes with
    // each job's result: the state it is in, or why it was refused (the
    // others go ahead). Throws std::invalid_argument for another state, and
    // storage_error when the storage fails (the batches before it stay
    // done).
    asio::awaitable<std::vector<storage::state_change_result>> change_many(std::vector<job_id> ids, job_state to);

    // Queries, with the history when asked (find() always includes it):
    // find() completes with an empty optional when there is no such job.
    asio::awaitable<std::optional<job>> find(job_id id);
    std::optional<job> find_blocking(job_id id);
    asio::awaitable<std::vector<job>> list(const job_filter& filter);
    std::vector<job> list_blocking(const job_filter& filter);
    asio::awaitable<job_counts> counts();
    job_counts counts_blocking();
    // The non-zero counts by queue, kind and state, kept by the storage as
    // jobs change (reading them scans no jobs).
    asio::awaitable<std::vector<queue_kind_count>> counts_by_queue_and_kind();
    std::vector<queue_kind_count> counts_by_queue_and_kind_blocking();
    // The server processes that announced themselves (every
    // heartbeat_interval, while they run), with how many jobs each holds: a
    // node whose heartbeat_at is older than its lease_duration is gone.
    asio::awaitable<std::vector<node_info>> list_nodes();
    std::vector<node_info> list_nodes_blocking();

    // Pauses a queue on every node: no node claims its jobs until it is
    // resumed (those running go on; enqueues into it go on too). Throws
    // std::invalid_argument at the call for an empty name.
    asio::awaitable<void> pause_queue(std::string_view queue);
    asio::awaitable<void> resume_queue(std::string_view queue);
    void pause_queue_blocking(std::string queue);
    void resume_queue_blocking(std::string queue);
    asio::awaitable<std::vector<std::string>> paused_queues();
    std::vector<std::string> paused_queues_blocking();

private:
    template <class Args>
    static std::string to_json(const Args& args)
    {
        return boost::json::serialize(boost::json::value_from(args));
    }
    time_point now() const;
    asio::awaitable<enqueued> submit(std::string kind, std::string args, const job_options& options,
                                     std::optional<time_point> run_at);
    enqueued submit_blocking(std::string kind, std::string args, job_options options,
                             std::optional<time_point> run_at);
    asio::awaitable<void> transition(job_id id, job_state to, std::string reason);
    asio::awaitable<job_id> trigger(std::string id);
    asio::awaitable<enqueued> submit_continuation(job_id parent, std::string kind, std::string args,
                                                  continuation_condition condition, const job_options& options);
    enqueued submit_continuation_blocking(job_id parent, std::string kind, std::string args,
                                          continuation_condition condition, job_options options);
    recurring_job make_recurring(std::string id, std::string cron, std::string zone, std::string kind,
                                 std::string args, const job_options& options, missed_policy missed,
                                 overlap_policy overlap) const;
    // Not coroutines: they take their work before anything is awaited.
    asio::awaitable<void> upsert_recurring(recurring_job r);
    void upsert_recurring_blocking(recurring_job r);
    // Not coroutines: the names are copied at the call.
    asio::awaitable<void> set_recurring_paused(std::string id, bool paused);
    asio::awaitable<void> set_queue_paused(std::string queue, bool paused);
    // Not a coroutine: the request moves into the operation at once.
    asio::awaitable<enqueued> enqueue_request_async(enqueue_request&& request);
    enqueued enqueue_request_blocking(enqueue_request request);

    std::shared_ptr<detail::engine> engine_;
};

} // namespace hosting::jobs
