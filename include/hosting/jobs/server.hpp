// jobs/server.hpp: kinds, handlers, and the server that runs them.
#pragma once

#include <hosting/core/background_service.hpp>
#include <hosting/core/host_builder.hpp>
#include <hosting/health/health.hpp>
#include <hosting/metrics/metrics.hpp>
#include <hosting/jobs/client.hpp>
#include <hosting/jobs/storage.hpp>

#include <boost/asio/awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value_to.hpp>

#include <atomic>
#include <chrono>
#include <concepts>
#include <functional>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

namespace spdlog {
class logger;
}

namespace hosting::jobs {

// Where the engine reads the time: the system clock, or a manual one in
// tests (so that retries and schedules are tested without sleeping).
class time_source {
public:
    virtual ~time_source() = default;
    virtual time_point now() const = 0;
    // Called when the time jumps (a manual clock advanced): the server
    // re-reads what is due.
    virtual void on_change(std::function<void()>) {}
};

class system_time_source final : public time_source {
public:
    time_point now() const override { return clock::now(); }
};

// Starts where it is told and moves only by advance(). Thread-safe.
class manual_time_source final : public time_source {
public:
    explicit manual_time_source(time_point start);
    time_point now() const override;
    void advance(clock::duration by);
    void on_change(std::function<void()> fn) override;

private:
    mutable std::mutex mutex_;
    time_point now_;
    std::vector<std::function<void()>> listeners_;
};

// What a handler knows about the attempt it runs.
class job_context {
public:
    // `services` may be null (a handler run by a test, say); services()
    // then throws.
    job_context(const job& j, std::stop_token stop, std::shared_ptr<spdlog::logger> log,
                service_provider* services = nullptr);

    job_id id() const noexcept { return id_; }
    int attempt() const noexcept { return attempt_; }
    int max_attempts() const noexcept { return max_attempts_; }
    const std::string& kind() const noexcept { return kind_; }
    const std::string& queue() const noexcept { return queue_; }
    // The job's id, in decimal: delivery is at least once, so a handler with
    // side effects elsewhere passes this along to make a repeat harmless. It
    // is the same for every run of the job (a retry, a redelivery after its
    // node died, a requeue) and never another job's in the same storage.
    std::string idempotency_key() const;
    // Fires on the job's timeout, on cancel(), and at shutdown; every Asio
    // operation the handler awaits is cancelled then too.
    std::stop_token stop_token() const noexcept { return stop_; }
    const std::shared_ptr<spdlog::logger>& logger() const noexcept { return log_; }
    // The host's services: what a handler needs (a database pool, a client
    // of another system) without globals. Throws std::logic_error for a
    // context made without them.
    service_provider& services() const;

private:
    job_id id_;
    int attempt_;
    int max_attempts_;
    std::string kind_;
    std::string queue_;
    std::stop_token stop_;
    std::shared_ptr<spdlog::logger> log_;
    service_provider* services_;
};

// Thrown from a handler to run the job again later without counting the
// attempt: co_await something; throw jobs::snooze(30s);
class snooze : public std::exception {
public:
    explicit snooze(std::chrono::milliseconds delay) : delay_(delay) {}
    std::chrono::milliseconds delay() const noexcept { return delay_; }
    const char* what() const noexcept override { return "jobs: snooze"; }

private:
    std::chrono::milliseconds delay_;
};

// Thrown from a handler to end the job failed at once, whatever attempts
// are left, with the message as its error: throw jobs::discard("account
// closed"). Requeue it to run it again.
class discard : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Thrown from a handler to end the job cancelled, as a client's cancel()
// would, with the message in its history: the work is no longer wanted.
class cancel_job : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A job whose stored arguments do not convert to the kind's type fails at
// once with this, without retries.
class bad_arguments : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A job's stored arguments as the handler of a kind registered with Args
// receives them (boost::json::value_to); throws bad_arguments, naming what
// did not convert, for text that is not JSON or does not convert to Args.
template <class Args>
Args decode_arguments(const std::string& text)
{
    try {
        return boost::json::value_to<Args>(boost::json::parse(text));
    } catch (const std::exception& e) {
        throw bad_arguments(std::string("jobs: the arguments do not convert: ") + e.what() + " (" + text + ")");
    }
}

struct retry_policy {
    int max_attempts = 10;
    // The wait before attempt n + 1 after attempt n failed; the default is
    // Sidekiq's, whose count starts at 0: (n - 1)^4 s + 15 s + a random
    // 0..10 * n s (15-25 s after the first attempt, 16-36 s after the second).
    // Whatever it says, a wait is at most a year; one that throws is logged
    // with the job and the default is used.
    std::function<std::chrono::milliseconds(int attempt)> backoff;

    // Exceptions that end the job failed at once, whatever attempts are
    // left, for errors another attempt cannot mend (a validation error,
    // say): retry.never_for<std::invalid_argument>(). Derived types count.
    template <class E>
    retry_policy& never_for()
    {
        not_retried.push_back([](const std::exception_ptr& e) {
            try {
                std::rethrow_exception(e);
            } catch (const E&) {
                return true;
            } catch (...) {
                return false;
            }
        });
        return *this;
    }
    std::vector<std::function<bool(const std::exception_ptr&)>> not_retried;

    std::chrono::milliseconds delay_after(int attempt) const;
    // False when one of never_for's types matches `e`.
    bool retries(const std::exception_ptr& e) const;
    static std::chrono::milliseconds default_backoff(int attempt);
};

// A kind's defaults; per-call job_options override queue, priority,
// max_attempts and timeout.
struct kind_options {
    std::string queue = "default";
    int priority = 0;
    retry_policy retry;
    std::chrono::milliseconds timeout{0}; // zero: none
    // At most this many jobs of the kind run at once on one server; zero:
    // no limit of its own. A server claims no more of the kind than that
    // (less what it holds), so a backlog of it never takes the room of
    // other work, nor keeps the jobs of it from other servers.
    std::size_t concurrency = 0;
    // The kind's uniqueness rule, for calls that give no unique_key: the key
    // is the kind's name and what this returns for the stored arguments
    // (unique_by_arguments() makes equal arguments one job). Empty: none.
    std::function<std::string(std::string_view args_json)> unique_key;
    state_set unique_states = default_unique_states;

    static std::function<std::string(std::string_view)> unique_by_arguments()
    {
        return [](std::string_view args) { return std::string(args); };
    }
};

// How long finished jobs are kept before pruning deletes them; none keeps
// them forever. Failed jobs are kept by default: someone should look.
struct retention_options {
    std::optional<std::chrono::milliseconds> succeeded = std::chrono::hours(24 * 7);
    std::optional<std::chrono::milliseconds> cancelled = std::chrono::hours(24 * 7);
    std::optional<std::chrono::milliseconds> deleted = std::chrono::hours(24 * 7);
    std::optional<std::chrono::milliseconds> failed;
    std::chrono::milliseconds interval{std::chrono::minutes(1)}; // how often a server prunes
    std::size_t batch = 1000;                                     // rows per transaction
    // Asked at each interval; this node prunes only when it returns true
    // (null: always). Every node may prune (pruning is correct on many at
    // once, only repeated); with coordination, one node does it:
    // `[c] { return c->is_leader(); }` (coordination/coordination.hpp).
    std::function<bool()> prune_if;
};

struct queue_options {
    std::string name;
    std::size_t concurrency = 0; // at most this many of its jobs at once; zero: up to the worker count
};

struct server_options {
    std::size_t workers = 10;
    // Claimed in this order: an earlier queue wins when workers are short.
    std::vector<queue_options> queues{{"default", 0}};
    // How often the server looks for work other processes enqueued; work
    // this process enqueues wakes it at once.
    std::chrono::milliseconds poll_interval{std::chrono::seconds(1)};
    // Leases: the node renews its jobs' leases every heartbeat_interval for
    // lease_duration, from the thread that talks to the storage, so a
    // handler that blocks the host's threads does not stop it; a node
    // silent for that long (its process killed or stopped) has its jobs
    // recovered by any other. A renewal that finds a job gone stops its
    // handler, and the node neither starts nor completes it.
    std::chrono::milliseconds heartbeat_interval{std::chrono::seconds(2)};
    std::chrono::milliseconds lease_duration{std::chrono::seconds(10)};
    // At stop, running jobs are asked to stop and get this long; those not
    // started go back to available at once. A handler still running after
    // the grace keeps its lease (and its job) until it ends or the process
    // exits: never does a job become available while it may still run. It
    // runs inside the host's deadline, with 500 ms to spare for the
    // release: a grace that does not fit is cut to fit, with a warning in
    // the log.
    std::chrono::milliseconds shutdown_grace{std::chrono::seconds(3)};
    // At most how many jobs a node holds per worker (per unit of a queue's
    // concurrency), counting those running. A node claims ahead only jobs
    // that finish quickly (as many as its workers start within about 20 ms,
    // going by the runs it has seen), because claims of many jobs per commit
    // are what make a fast drain; slower jobs are claimed one per free
    // worker, so that two nodes share them. Jobs quicker than a claim's
    // transaction count as run before it returns, so a node may hold up to
    // twice this, never more (its workers may be slower than its past runs
    // said). A node that dies charges an
    // attempt only to the jobs whose start it had reported (with the lease
    // renewals, every heartbeat_interval): a job claimed ahead and never
    // started, or started too recently to be reported, gets its attempt
    // back, once in its life, so that a job that kills its node as it
    // starts still runs out of attempts. 1 never claims ahead. The 20 ms
    // of work bound what a node holds; this bound applies only to jobs
    // quicker than about 40 us, for which a commit (an fsync with
    // synchronous FULL, about 1 ms) is shared by up to 512 jobs per worker:
    // 2 workers drain no-op jobs about half again as fast as with 64. What
    // it costs is the quick jobs a node that dies held unstarted, which
    // wait for its lease to pass. Whatever it says, a claim takes at most
    // half of max_rows_per_write jobs.
    std::size_t prefetch = 512;
    // Default: host name, pid and a random suffix. A fixed id (a StatefulSet
    // pod's name, a systemd instance) must belong to one live process at a
    // time: a server that starts first recovers whatever its id held (its
    // previous process's jobs, the attempt counted as a crash counts it).
    std::string node_id;
    std::shared_ptr<time_source> clock;
    retention_options retention;

    void validate() const;
};

namespace detail {

struct kind_entry {
    std::string name;
    kind_options options;
    std::function<asio::awaitable<void>(const std::string& args, job_context& context)> invoke;
};

void register_kind(engine& e, kind_entry entry);

} // namespace detail

// What add_jobs returns: registers kinds before the host is built.
class jobs_registration {
public:
    explicit jobs_registration(std::shared_ptr<detail::engine> engine) : engine_(std::move(engine)) {}

    // The kind's name is what is stored: never a C++ type name, so renaming
    // a type breaks nothing. `handler(Args, job_context&)` returns
    // asio::awaitable<void>; Args converts from JSON with value_to.
    // Registering a name twice throws std::invalid_argument.
    //
    // The handler's awaitable is one attempt of a job, which ends when it
    // completes.
    // Lifetimes: the Args object and the job_context stay valid until the
    // awaitable completes.
    // Executor: the jobs server's executor (the host's io_context, on the
    // server's strand): the handlers of this server take turns on it, so one
    // that blocks holds up the others and the server; hand blocking work to
    // offload().
    // Cancellation: on the job's timeout, a cancel() or delete_job() of the
    // job, and the server's stop, context.stop_token() fires and terminal
    // cancellation is emitted on the handler's coroutine; so they are when
    // this node finds the job's lease lost (the process stalled for longer
    // than the lease and another node took the job), and the handler's end
    // is then not recorded. At stop, a handler that has not ended within
    // shutdown_grace keeps its job, its lease renewed, until it ends or the
    // process exits.
    // Errors: returning is success, even after a timeout. A snooze runs the
    // job again after its delay; bad_arguments (also what a failed
    // conversion to Args throws) fails the job without retries. Any other
    // exception fails the attempt, retried per the kind's retry_policy while
    // attempts remain; after the server's stop it is released back to
    // available. But a job cancelled or deleted while it runs, from any
    // process, ends cancelled or deleted however its handler ends
    // (returning, throwing, snoozing, or released at stop): a cancel, once
    // acknowledged, is final.
    // Thread safety: it runs on the server's executor only, as above.
    template <class Args, class F>
        requires std::invocable<F&, Args, job_context&>
    jobs_registration& register_kind(std::string name, F handler, kind_options options = {})
    {
        detail::kind_entry e;
        e.name = std::move(name);
        e.options = std::move(options);
        e.invoke = [handler = std::move(handler)](const std::string& text,
                                                   job_context& context) -> asio::awaitable<void> {
            Args args = decode_arguments<Args>(text);
            // Made before the co_await: GCC 12 can destroy the by-value
            // arguments of a suspending expression twice.
            auto op = handler(std::move(args), context);
            co_await std::move(op);
        };
        detail::register_kind(*engine_, std::move(e));
        return *this;
    }

    // A kind bound to its arguments type (kind_name): the type says the name.
    template <named_kind Args, class F>
        requires std::invocable<F&, Args, job_context&>
    jobs_registration& register_kind(F handler, kind_options options = {})
    {
        return register_kind<Args>(std::string(kind_name<Args>::value), std::move(handler), std::move(options));
    }

private:
    std::shared_ptr<detail::engine> engine_;
};

// The server: a background_service (registered as "hosting.jobs") that
// claims jobs in batches, runs their handlers on the host's loop, and
// records how they ended. A job enqueued in this process wakes it at once;
// work from other processes is found by polling. At stop it stops claiming,
// releases the jobs it claimed but did not start, and asks running jobs to
// stop; a handler that ends by the cancellation within shutdown_grace is
// released too, its attempt not counted, and one still running after it
// keeps its job until it ends or the process exits.
class server final : public background_service {
public:
    server(service_provider& provider, std::shared_ptr<detail::engine> engine);
    ~server() override;
    const std::string& node_id() const noexcept;
    // Looks for work now, from any thread.
    void wake();

protected:
    asio::awaitable<void> execute(std::stop_token stopping) override;

private:
    struct run;
    std::shared_ptr<detail::engine> engine_;
    service_provider* provider_ = nullptr;
    metrics_registry* metrics_ = nullptr;
    std::chrono::milliseconds grace_;  // shutdown_grace, cut to fit the host's deadline
    std::string grace_note_;           // why it was cut, logged when execute begins
    std::atomic<std::shared_ptr<run>> run_; // wake() reads it from any thread
};

// Adds the job system to a host: registers a jobs::client (a singleton
// services can ask for) and the server (a hosted service, "hosting.jobs"),
// both on `store`.
jobs_registration add_jobs(host_builder& builder, std::shared_ptr<storage> store, server_options options = {});

} // namespace hosting::jobs
