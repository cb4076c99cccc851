// The job engine shared by the client and the server: the storage, the one
// thread that talks to it, and the registered kinds.
#pragma once

#include <hosting/jobs/client.hpp>
#include <hosting/jobs/server.hpp>

#include "detail/remote_completion.hpp"

#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <condition_variable>
#include <exception>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

namespace hosting::jobs::detail {

class engine : public std::enable_shared_from_this<engine> {
public:
    engine(std::shared_ptr<storage> store, server_options options);
    ~engine();

    const server_options& options() const noexcept { return options_; }
    time_point now() const { return options_.clock->now(); }
    const std::string& node() const noexcept { return options_.node_id; }

    void add_kind(kind_entry entry);
    const kind_entry* kind(const std::string& name) const;
    std::vector<std::string> kind_names() const;
    // All kinds, for hot paths that must not copy them; fixed once the host runs.
    const std::map<std::string, kind_entry, std::less<>>& kinds() const noexcept { return kinds_; }

    // Applies the kind's defaults (when this process knows the kind) and
    // validates the call.
    enqueue_request make_request(std::string kind, std::string args, const job_options& options,
                                 std::optional<time_point> run_at) const;

    // One occurrence of a recurring job, and a run triggered by hand.
    enqueue_request occurrence_request(const recurring_job& r, time_point fire) const;
    enqueue_request trigger_request(const recurring_job& r) const;

    // Every enqueue waiting when the storage thread wakes is committed in one
    // transaction: SQLite has no group commit of its own.
    using enqueue_done = std::function<void(std::exception_ptr, enqueue_result)>;
    void submit_enqueue(enqueue_request request, enqueue_done done);
    // Where a storage call runs. Writes go in order on the storage thread,
    // which also renews leases. Reads that change nothing (a job, a list,
    // counts, nodes: what an operator's page or a readiness check asks)
    // go on a reader thread of their own, in order among themselves, so
    // that they never wait behind a drain's claims and commits, and a
    // drain never waits behind them. A caller that awaited a write reads
    // what it wrote: the write committed before the read is sent.
    enum class lane { writes, reads };
    void submit(std::function<void(storage&)> op, lane on = lane::writes);

    // Runs `fn` on the storage thread and resumes the caller on its own
    // executor with the result. Not a coroutine, and taking a reference: a
    // by-value argument would be a temporary inside the caller's co_await,
    // which GCC 12 can destroy twice.
    template <class R>
    asio::awaitable<R> call(std::function<R(storage&)>&& fn, lane on = lane::writes)
    {
        return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, R)>(
            [this, on, fn = std::move(fn)](auto handler) mutable {
                using completion = hosting::detail::remote_completion<decltype(handler), std::exception_ptr, R>;
                auto done = std::make_shared<completion>(std::move(handler));
                submit([fn = std::move(fn), done](storage& s) mutable {
                    std::exception_ptr error;
                    R result{};
                    try {
                        result = fn(s);
                    } catch (...) {
                        error = std::current_exception();
                    }
                    done->complete(std::move(error), std::move(result));
                }, on);
            },
            asio::use_awaitable);
    }

    template <class R>
    R call_blocking(std::function<R(storage&)> fn, lane on = lane::writes)
    {
        auto promise = std::make_shared<std::promise<R>>();
        auto future = promise->get_future();
        submit([fn = std::move(fn), promise](storage& s) {
            try {
                promise->set_value(fn(s));
            } catch (...) {
                promise->set_exception(std::current_exception());
            }
        }, on);
        return future.get();
    }

    // The server of this process, told when a local enqueue committed.
    void set_waker(std::function<void()> fn);
    void wake_server();
    // The server of this process, told at once about a cancel or delete of a
    // job it may be running (other processes learn it at their heartbeat).
    void set_local_cancel(std::function<void(job_id)> fn);
    void cancel_local(job_id id);

    // The storage thread's own record of the jobs this node holds, kept by
    // every claim and completion that goes through here, is what the
    // renewals name: they run on the storage thread every heartbeat_interval,
    // where no handler can block them, whatever the host's threads do.
    // Storage thread only.
    std::vector<job> complete_and_claim(storage& s, std::span<const completion> done, const claim_request& claim,
                                        time_point now);
    // complete_and_claim for a server's batch of completions. A completion
    // that waits on a row another transaction holds (an application's open
    // transaction that enqueued a continuation of its job) fails the whole
    // call after the lock bound: then the others and the claim go without
    // it, and it stays in `done` for a later call, which tries it on its
    // own once per lease_duration rather than holding up every batch. What
    // is left in `done` was not recorded; the ids it adds to `waiting` met
    // such a row this time. Storage thread only.
    std::vector<job> settle_and_claim(storage& s, std::vector<completion>& done, claim_request claim,
                                      std::vector<job_id>& waiting);
    // A claim the server leaves here while it is idle: the next batch of
    // this process's enqueues takes it into its own transaction
    // (storage::enqueue_and_claim), so that a job enqueued beside an idle
    // server starts after one commit rather than two. Its lease is set when
    // it is made. `deliver` runs on the storage thread with what it claimed
    // (nothing if it failed).
    struct standing_claim {
        claim_request claim;
        std::function<void(std::vector<job>)> deliver;
    };
    void stand(standing_claim c);
    // Takes the standing claim back: false when enqueues took it (its
    // delivery is on its way) or there was none.
    bool withdraw();

    // What a renewal found: the leases lost and the cancels asked for, and
    // until when it extended the others (none when it failed, with why).
    // The announce of the node is reported apart: its failure loses nothing.
    struct renewal_report {
        lease_renewal found;
        std::optional<time_point> renewed_until;
        std::exception_ptr error;
        std::exception_ptr announce_error;
    };
    // Told, on the storage thread, what each renewal found; false when
    // nobody is there to act on it (the server and its handlers are gone):
    // the engine then stops renewing and announcing.
    using renewal_listener = std::function<bool(renewal_report)>;
    void set_renewal_listener(renewal_listener fn);
    // These held jobs' handlers started: the next renewal tells the
    // storage, so that a crash charges an attempt only to jobs that had
    // started. Storage thread only.
    void note_started(std::span<const held_lease> started);
    // Stops renewing a job this node can no longer finish (its completion
    // failed): its lease runs out and it is recovered. Storage thread only.
    void forget(job_id id, int attempt);
    // The server this process runs, announced with every renewal while set
    // (list_nodes); clear_node() removes it from the storage.
    void set_node(node_info node);
    void clear_node();

    // Why the latest of the engine's own writes (enqueue batches,
    // completions and claims, lease renewals and announces) failed; empty
    // once one that wrote something succeeds. Reads can pass while writes
    // fail (a full disk, a read-only file), so readiness asks this before
    // it reads. A running server announces itself every heartbeat_interval,
    // so recovery shows within one.
    std::string write_failure() const;

    // Storage thread only, from inside an op of many steps (a recurring
    // pass firing many jobs): the renewals that are due go between its
    // steps, as they go between ops.
    void renew_if_due()
    {
        if (!held_.empty() && std::chrono::steady_clock::now() >= next_renewal_)
            renew();
    }

private:
    void loop();
    void read_loop();
    void renew();
    void note_write(std::exception_ptr error);

    std::shared_ptr<storage> store_;
    server_options options_;
    std::map<std::string, kind_entry, std::less<>> kinds_;

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    bool stopping_ = false;
    std::deque<std::pair<enqueue_request, enqueue_done>> enqueues_;
    std::deque<std::function<void(storage&)>> ops_;
    std::optional<standing_claim> standing_;   // mutex_
    std::deque<std::function<void(storage&)>> reads_;
    std::condition_variable reads_changed_;
    std::function<void()> waker_;              // mutex_
    std::function<void(job_id)> local_cancel_; // mutex_
    renewal_listener renewal_listener_;        // mutex_
    std::optional<node_info> node_;            // mutex_
    std::string write_failure_;                // mutex_
    struct held {
        int attempt;       // the attempt its claim started
        bool started;      // its handler started (as far as the storage thread knows)
    };
    std::unordered_map<job_id, held> held_;    // storage thread
    // Completions that met a row another transaction holds, by job and
    // attempt: when each is tried again. Storage thread only.
    std::map<std::pair<job_id, int>, std::chrono::steady_clock::time_point> lock_waits_;
    std::chrono::steady_clock::time_point next_renewal_; // storage thread
    std::thread thread_;
    std::thread reader_;
};

} // namespace hosting::jobs::detail
