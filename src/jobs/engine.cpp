#include "jobs/detail/engine.hpp"

#include "detail/node_id.hpp"

#include <hosting/scheduling/cron.hpp>

#include <boost/asio/co_spawn.hpp>

#include <algorithm>
#include <map>
#include <utility>
#include <random>
#include <unistd.h>

namespace hosting::jobs {

// ---------------------------------------------------------------------------
// Time

manual_time_source::manual_time_source(time_point start) : now_(start) {}

time_point manual_time_source::now() const
{
    std::lock_guard lock(mutex_);
    return now_;
}

void manual_time_source::advance(clock::duration by)
{
    std::vector<std::function<void()>> listeners;
    {
        std::lock_guard lock(mutex_);
        now_ += by;
        listeners = listeners_;
    }
    for (auto& l : listeners)
        l();
}

void manual_time_source::on_change(std::function<void()> fn)
{
    std::lock_guard lock(mutex_);
    listeners_.push_back(std::move(fn));
}

// ---------------------------------------------------------------------------
// Policies and options

std::chrono::milliseconds retry_policy::default_backoff(int attempt)
{
    thread_local std::mt19937 rng{std::random_device{}()};
    // Sidekiq's count of retries so far: 0 when the first attempt failed.
    const auto n = static_cast<std::int64_t>(std::max(attempt, 1) - 1);
    std::uniform_int_distribution<std::int64_t> jitter_ms(0, 10'000 * (n + 1));
    return std::chrono::seconds(n * n * n * n + 15) + std::chrono::milliseconds(jitter_ms(rng));
}

bool retry_policy::retries(const std::exception_ptr& e) const
{
    return std::none_of(not_retried.begin(), not_retried.end(), [&](const auto& matches) { return matches(e); });
}

std::chrono::milliseconds retry_policy::delay_after(int attempt) const
{
    return backoff ? backoff(attempt) : default_backoff(attempt);
}

void server_options::validate() const
{
    auto fail = [](const std::string& what) { throw std::invalid_argument("jobs::server_options: " + what); };
    if (workers == 0)
        fail("workers must be at least 1");
    if (queues.empty())
        fail("queues must name at least one queue");
    for (std::size_t i = 0; i < queues.size(); ++i) {
        if (queues[i].name.empty())
            fail("a queue needs a name");
        for (std::size_t j = 0; j < i; ++j)
            if (queues[j].name == queues[i].name)
                fail("queue '" + queues[i].name + "' is listed twice");
    }
    if (prefetch == 0 || prefetch > 10'000)
        fail("prefetch must be between 1 (claims only for free workers) and 10000");
    if (poll_interval <= std::chrono::milliseconds::zero())
        fail("poll_interval must be positive");
    if (heartbeat_interval <= std::chrono::milliseconds::zero())
        fail("heartbeat_interval must be positive");
    if (lease_duration <= heartbeat_interval * 2)
        fail("lease_duration must be more than twice heartbeat_interval, or a slow heartbeat loses its leases");
    if (shutdown_grace < std::chrono::milliseconds::zero())
        fail("shutdown_grace must not be negative");
}

job_context::job_context(const job& j, std::stop_token stop, std::shared_ptr<spdlog::logger> log,
                         service_provider* services)
    : id_(j.id),
      attempt_(j.attempt),
      max_attempts_(j.max_attempts),
      kind_(j.kind),
      queue_(j.queue),
      stop_(std::move(stop)),
      log_(std::move(log)),
      services_(services)
{
}

service_provider& job_context::services() const
{
    if (!services_)
        throw std::logic_error("jobs: job " + std::to_string(id_) + " (" + kind_ +
                               "): this job_context was made without a service_provider");
    return *services_;
}

// The job's id: the same for every run of the job (retries and redeliveries
// after a crash alike), and never another job's, as storages never reuse ids.
std::string job_context::idempotency_key() const { return std::to_string(id_); }

namespace detail {

void register_kind(engine& e, kind_entry entry) { e.add_kind(std::move(entry)); }

namespace {

// An error of its own for each caller of a batch: the callers, on their
// own threads, read it and let it go, and the count libstdc++ keeps for an
// exception_ptr they would share is not seen by ThreadSanitizer, which
// then takes the last one's destruction for a race with another's read.
std::exception_ptr own_copy(const std::exception_ptr& error)
{
    try {
        std::rethrow_exception(error);
    } catch (const row_lock_timeout& e) {
        return std::make_exception_ptr(row_lock_timeout(e.what()));
    } catch (const storage_error& e) {
        return std::make_exception_ptr(storage_error(e.what()));
    } catch (...) {
        return error;
    }
}

bool is_row_lock_timeout(const std::exception_ptr& error)
{
    try {
        std::rethrow_exception(error);
    } catch (const row_lock_timeout&) {
        return true;
    } catch (...) {
        return false;
    }
}

// The servers of this process that hear of other processes' work through
// one storage object. A storage calls one function (storage::
// listen_for_work), and two hosts may share a storage: each server's waker
// joins the storage's list here, the storage calls them all, and the last
// engine on it to go stops it listening. Without the list, the second
// host's waker took the first's place, and the first host's stop left the
// second deaf: it found other processes' work only at its next poll.
//
// A server's stop only leaves the list: stopping the listening joins the
// storage's listening thread, which may be in a connection's name lookup
// for seconds, and a stop runs on the host's event loop, whose shutdown
// deadline must stay free to fire. The engine's end, with the host's,
// stops it.
class work_listeners {
public:
    // Never destroyed: an engine may go during the process's exit.
    static work_listeners& of_process()
    {
        static auto* all = new work_listeners;
        return *all;
    }

    // Replaces the function `who` had on this storage, if any.
    void add(storage& s, const void* who, std::function<void()> fn)
    {
        for (;;) {
            const auto e = entry_of(s, true);
            std::lock_guard turn(e->turn);
            if (!is_current(s, e))
                continue; // its last server left meanwhile: the storage has a new entry
            // In the list before the storage listens: its first look, once
            // connected, must reach the server.
            e->list->replace(who, std::move(fn));
            if (!e->listening) {
                try {
                    s.listen_for_work([list = e->list] { list->call(); });
                } catch (...) {
                    // Not listening: the next server to come tries again.
                    if (e->list->remove(who))
                        forget(s, e);
                    throw;
                }
                e->listening = true;
            }
            return;
        }
    }

    // Returns once no call of `who`'s function runs. With `last_use`, the
    // storage stops listening if no other server is on its list.
    void remove(storage& s, const void* who, bool last_use)
    {
        const auto e = entry_of(s, false);
        if (!e)
            return;
        std::lock_guard turn(e->turn);
        if (!e->list->remove(who) || !last_use)
            return;
        // Joins the storage's listening thread, which takes its list's lock
        // and neither of these. Only this storage's servers wait meanwhile
        // (a server that starts listening on it comes after the stop): a
        // listener slow to end, on a server that stopped answering, holds
        // up no other storage's hosts.
        if (std::exchange(e->listening, false))
            s.listen_for_work({});
        forget(s, e);
    }

private:
    struct wakers {
        std::mutex mutex;
        std::vector<std::pair<const void*, std::function<void()>>> fns;
        void call()
        {
            std::lock_guard lock(mutex);
            for (const auto& f : fns)
                f.second();
        }
        void replace(const void* who, std::function<void()> fn)
        {
            std::lock_guard lock(mutex);
            std::erase_if(fns, [&](const auto& f) { return f.first == who; });
            fns.emplace_back(who, std::move(fn));
        }
        // Whether the list is empty now.
        bool remove(const void* who)
        {
            // Held while the function runs (call()): once this returns,
            // none of `who`'s runs.
            std::lock_guard lock(mutex);
            std::erase_if(fns, [&](const auto& f) { return f.first == who; });
            return fns.empty();
        }
    };
    // One storage's list, and its turn: its servers come and go one at a
    // time, so that listening starts and stops in the order they do.
    struct entry {
        std::mutex turn;
        bool listening = false; // by the turn
        std::shared_ptr<wakers> list = std::make_shared<wakers>();
    };

    std::shared_ptr<entry> entry_of(storage& s, bool create)
    {
        std::lock_guard lock(mutex_);
        const auto it = entries_.find(&s);
        if (it != entries_.end())
            return it->second;
        if (!create)
            return nullptr;
        return entries_.emplace(&s, std::make_shared<entry>()).first->second;
    }
    bool is_current(storage& s, const std::shared_ptr<entry>& e)
    {
        std::lock_guard lock(mutex_);
        const auto it = entries_.find(&s);
        return it != entries_.end() && it->second == e;
    }
    // With e's turn held: the storage's next server makes a new entry.
    void forget(storage& s, const std::shared_ptr<entry>& e)
    {
        std::lock_guard lock(mutex_);
        const auto it = entries_.find(&s);
        if (it != entries_.end() && it->second == e)
            entries_.erase(it);
    }

    std::mutex mutex_; // the map alone; never held while a storage is called
    std::map<const storage*, std::shared_ptr<entry>> entries_;
};

} // namespace

engine::engine(std::shared_ptr<storage> store, server_options options)
    : store_(std::move(store)), options_(std::move(options))
{
    if (!store_)
        throw std::invalid_argument("jobs: add_jobs needs a storage");
    options_.validate();
    if (!options_.clock)
        options_.clock = std::make_shared<system_time_source>();
    if (options_.node_id.empty())
        options_.node_id = hosting::detail::default_node_id();
    next_renewal_ = std::chrono::steady_clock::now() + options_.heartbeat_interval;
    thread_ = std::thread([this] { loop(); });
    reader_ = std::thread([this] { read_loop(); });
}

engine::~engine()
{
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    changed_.notify_all();
    reads_changed_.notify_all();
    thread_.join();
    reader_.join();
    // A server clears its waker as it stops; one that never got there must
    // not leave its waker with the storage. The last engine on the storage
    // stops its listening.
    work_listeners::of_process().remove(*store_, this, true);
}

void engine::add_kind(kind_entry entry)
{
    if (entry.name.empty())
        throw std::invalid_argument("jobs: a kind needs a name");
    if (entry.options.retry.max_attempts < 1)
        throw std::invalid_argument("jobs: kind '" + entry.name + "' needs max_attempts of at least 1");
    auto name = entry.name;
    if (!kinds_.emplace(name, std::move(entry)).second)
        throw std::invalid_argument("jobs: kind '" + name + "' is registered twice");
}

const kind_entry* engine::kind(const std::string& name) const
{
    auto it = kinds_.find(name);
    return it == kinds_.end() ? nullptr : &it->second;
}

std::vector<std::string> engine::kind_names() const
{
    std::vector<std::string> out;
    for (const auto& [name, k] : kinds_)
        out.push_back(name);
    return out;
}

enqueue_request engine::make_request(std::string kind_name, std::string args, const job_options& options,
                                     std::optional<time_point> run_at) const
{
    if (kind_name.empty())
        throw std::invalid_argument("jobs: enqueue needs a kind");
    enqueue_request r;
    const kind_options defaults;
    const auto* k = kind(kind_name);
    const auto& base = k ? k->options : defaults;
    r.kind = std::move(kind_name);
    r.args = std::move(args);
    r.queue = options.queue.value_or(base.queue);
    r.priority = options.priority.value_or(base.priority);
    r.max_attempts = options.max_attempts.value_or(base.retry.max_attempts);
    r.timeout = options.timeout.value_or(base.timeout);
    r.run_at = run_at;
    r.unique_key = options.unique_key;
    r.unique_states = options.unique_states;
    r.unique_across_kinds = options.unique_across_kinds;
    if (r.unique_key.empty() && k && base.unique_key) {
        // The kind's name stays in the key, as it always did: stored jobs
        // that hold such keys keep matching.
        r.unique_across_kinds = false;
        r.unique_key = r.kind + ":" + base.unique_key(r.args);
        r.unique_states = base.unique_states;
    }
    r.concurrency_key = options.concurrency_key;
    validate_request(r);
    if (run_at)
        r.reason = "scheduled";
    return r;
}

void engine::submit_enqueue(enqueue_request request, enqueue_done done)
{
    {
        std::lock_guard lock(mutex_);
        enqueues_.emplace_back(std::move(request), std::move(done));
    }
    changed_.notify_one();
}

void engine::submit(std::function<void(storage&)> op, lane on)
{
    {
        std::lock_guard lock(mutex_);
        (on == lane::reads ? reads_ : ops_).push_back(std::move(op));
    }
    (on == lane::reads ? reads_changed_ : changed_).notify_one();
}

void engine::read_loop()
{
    for (;;) {
        std::deque<std::function<void(storage&)>> reads;
        {
            std::unique_lock lock(mutex_);
            reads_changed_.wait(lock, [&] { return stopping_ || !reads_.empty(); });
            if (reads_.empty())
                return; // stopping, and nothing left to read
            reads.swap(reads_);
        }
        for (auto& op : reads)
            op(*store_);
    }
}

void engine::set_waker(std::function<void()> fn)
{
    // Work other nodes enqueue wakes the server as this process's own does.
    auto& listeners = work_listeners::of_process();
    if (fn)
        listeners.add(*store_, this, fn);
    else
        listeners.remove(*store_, this, false);
    std::lock_guard lock(mutex_);
    waker_ = std::move(fn);
}

void engine::wake_server()
{
    std::function<void()> fn;
    {
        std::lock_guard lock(mutex_);
        fn = waker_;
    }
    if (fn)
        fn();
}

void engine::set_local_cancel(std::function<void(job_id)> fn)
{
    std::lock_guard lock(mutex_);
    local_cancel_ = std::move(fn);
}

void engine::cancel_local(job_id id)
{
    std::function<void(job_id)> fn;
    {
        std::lock_guard lock(mutex_);
        fn = local_cancel_;
    }
    if (fn)
        fn(id);
}

void engine::loop()
{
    for (;;) {
        std::deque<std::pair<enqueue_request, enqueue_done>> batch;
        std::deque<std::function<void(storage&)>> ops;
        std::optional<standing_claim> standing;
        if (std::chrono::steady_clock::now() >= next_renewal_) {
            bool announced = false;
            {
                std::lock_guard lock(mutex_);
                announced = node_.has_value();
            }
            if (held_.empty() && !announced)
                next_renewal_ = std::chrono::steady_clock::now() + options_.heartbeat_interval;
            else
                renew();
        }
        {
            std::unique_lock lock(mutex_);
            const bool work = changed_.wait_until(lock, next_renewal_, [&] {
                return stopping_ || !enqueues_.empty() || !ops_.empty();
            });
            if (!work)
                continue; // a renewal is due
            if (enqueues_.empty() && ops_.empty())
                return; // stopping, and nothing left to do
            // Bounded, so that the transaction is short (see
            // max_rows_per_write); the rest go in the next one at once.
            if (enqueues_.size() <= max_rows_per_write) {
                batch.swap(enqueues_);
            } else {
                const auto cut = enqueues_.begin() + static_cast<std::ptrdiff_t>(max_rows_per_write);
                batch.assign(std::make_move_iterator(enqueues_.begin()), std::make_move_iterator(cut));
                enqueues_.erase(enqueues_.begin(), cut);
            }
            ops.swap(ops_);
            // Within the bound of a write, as the batch is.
            if (!batch.empty() && standing_ && batch.size() + standing_->claim.total <= max_rows_per_write)
                standing = std::exchange(standing_, std::nullopt);
        }
        if (!batch.empty()) {
            std::vector<enqueue_request> requests;
            requests.reserve(batch.size());
            for (auto& [r, done] : batch)
                requests.push_back(std::move(r));
            std::vector<enqueue_result> results;
            std::vector<job> claimed;
            std::exception_ptr error;
            try {
                if (standing) {
                    const auto at = now();
                    standing->claim.lease_until = at + options_.lease_duration;
                    auto both = store_->enqueue_and_claim(requests, standing->claim, at);
                    results = std::move(both.enqueued);
                    claimed = std::move(both.claimed);
                } else {
                    results = store_->enqueue(requests, now());
                }
            } catch (...) {
                error = std::current_exception();
            }
            for (const auto& j : claimed)
                held_[j.id] = {j.attempt, false};
            const auto settle = [&](std::size_t i, std::exception_ptr failed, const enqueue_result& r) {
                if (failed)
                    batch[i].second(own_copy(failed), {});
                else if (!r.error.empty())
                    batch[i].second(std::make_exception_ptr(job_not_found(requests[i].parent_id)), r);
                else
                    batch[i].second(nullptr, r);
            };
            bool stored = !error;
            if (error && batch.size() > 1 && is_row_lock_timeout(error)) {
                // The batch joined callers that know nothing of each other,
                // and one's job waited on a row an application holds (its
                // unique key, uncommitted): the rest were rolled back with
                // it, and each goes again on its own, so that only those
                // that wait on that row fail. Renewals go between them. A
                // key found held fails the requests after it that carry it
                // at once: they would wait on the same row, one bound each.
                std::map<std::string, std::exception_ptr> held_slots; // by unique_slot()
                for (std::size_t i = 0; i < batch.size(); ++i) {
                    const auto& q = requests[i];
                    const auto slot = unique_slot(q.kind, q.unique_key, q.unique_across_kinds);
                    if (const auto known = held_slots.find(slot); !slot.empty() && known != held_slots.end()) {
                        settle(i, known->second, {});
                        continue;
                    }
                    renew_if_due();
                    std::exception_ptr alone;
                    std::vector<enqueue_result> one;
                    try {
                        one = store_->enqueue(std::span(&requests[i], 1), now());
                    } catch (...) {
                        alone = std::current_exception();
                    }
                    if (alone && !slot.empty() && is_row_lock_timeout(alone))
                        held_slots.emplace(slot, alone);
                    note_write(alone);
                    if (!alone)
                        stored = true;
                    settle(i, alone, alone ? enqueue_result{} : one.front());
                }
            } else {
                note_write(error);
                for (std::size_t i = 0; i < batch.size(); ++i)
                    settle(i, error, error ? enqueue_result{} : results[i]);
            }
            if (standing)
                standing->deliver(std::move(claimed));
            if (stored && (!standing || error))
                wake_server();
        }
        for (auto& op : ops) {
            // Ops may be many and slow (another process holding the write
            // lock): renewals go between them, never after all of them.
            renew_if_due();
            op(*store_);
        }
    }
}

void engine::stand(standing_claim c)
{
    std::lock_guard lock(mutex_);
    standing_ = std::move(c);
}

bool engine::withdraw()
{
    std::lock_guard lock(mutex_);
    return std::exchange(standing_, std::nullopt).has_value();
}

std::vector<job> engine::complete_and_claim(storage& s, std::span<const completion> done, const claim_request& claim,
                                            time_point now)
{
    std::vector<job> claimed;
    try {
        claimed = s.complete_and_claim(done, claim, now);
    } catch (...) {
        note_write(std::current_exception());
        throw;
    }
    // An idle poll commits an empty transaction, which even a full disk
    // lets pass: only a completion or a claim says that writes work again.
    if (!done.empty() || !claimed.empty())
        note_write(nullptr);
    // Committed: the completed attempts are no longer held (a completion
    // the storage fenced off was of a lease already lost).
    for (const auto& c : done)
        if (auto it = held_.find(c.id); it != held_.end() && it->second.attempt == c.attempt)
            held_.erase(it);
    for (const auto& j : claimed)
        held_[j.id] = {j.attempt, false};
    return claimed;
}

std::vector<job> engine::settle_and_claim(storage& s, std::vector<completion>& done, claim_request claim,
                                          std::vector<job_id>& waiting)
{
    // A job this node no longer holds (its lease lost) is no longer waited for.
    std::erase_if(lock_waits_, [&](const auto& w) { return !held_.contains(w.first.first); });
    std::vector<completion> fresh, parked;
    // One on its own, claiming nothing (it may wait the lock bound); what is
    // not recorded stays for a later call, and one already recorded is
    // fenced off when sent again.
    const claim_request none{claim.node, {}, {}, {}};
    const auto alone = [&](completion& c) {
        renew_if_due();
        const std::pair key{c.id, c.attempt};
        try {
            complete_and_claim(s, std::span(&c, 1), none, now());
            lock_waits_.erase(key);
        } catch (const row_lock_timeout&) {
            if (!lock_waits_.contains(key))
                waiting.push_back(c.id);
            lock_waits_[key] = std::chrono::steady_clock::now() + options_.lease_duration;
            parked.push_back(std::move(c));
        } catch (...) {
            parked.push_back(std::move(c));
        }
    };
    if (lock_waits_.empty()) {
        fresh = std::move(done); // nearly always: no completion sorted, none moved
    } else {
        const auto steady_now = std::chrono::steady_clock::now();
        for (auto& c : done) {
            const auto it = lock_waits_.find({c.id, c.attempt});
            if (it == lock_waits_.end())
                fresh.push_back(std::move(c));
            else if (steady_now < it->second)
                parked.push_back(std::move(c));
            else
                alone(c); // its turn to be tried again
        }
    }
    done.clear();
    const auto keep_parked = [&] { done = std::move(parked); };
    try {
        claim.lease_until = now() + options_.lease_duration;
        auto claimed = complete_and_claim(s, fresh, claim, now());
        keep_parked();
        return claimed;
    } catch (const row_lock_timeout&) {
        if (fresh.empty()) {
            keep_parked();
            throw; // the claim itself waited: nothing here to leave out
        }
    } catch (...) {
        // Not recorded: all of them go again with the next call.
        parked.insert(parked.end(), std::make_move_iterator(fresh.begin()), std::make_move_iterator(fresh.end()));
        keep_parked();
        throw;
    }
    // One of them waits on a row: each goes on its own, then the claim.
    for (auto& c : fresh)
        alone(c);
    keep_parked();
    renew_if_due();
    claim.lease_until = now() + options_.lease_duration;
    return complete_and_claim(s, {}, claim, now());
}

void engine::set_renewal_listener(renewal_listener fn)
{
    std::lock_guard lock(mutex_);
    renewal_listener_ = std::move(fn);
}

void engine::note_started(std::span<const held_lease> started)
{
    for (const auto& h : started)
        if (auto it = held_.find(h.id); it != held_.end() && it->second.attempt == h.attempt)
            it->second.started = true;
}

void engine::set_node(node_info node)
{
    std::lock_guard lock(mutex_);
    node_ = std::move(node);
}

void engine::clear_node()
{
    std::string id;
    {
        std::lock_guard lock(mutex_);
        if (!node_)
            return;
        id = node_->id;
        node_.reset();
    }
    submit([id](storage& s) {
        try {
            s.remove_node(id);
        } catch (const storage_error&) {
            // It ages out of list_nodes() by its heartbeat.
        }
    });
}

void engine::renew()
{
    std::vector<held_lease> held;
    held.reserve(held_.size());
    for (const auto& [id, h] : held_)
        held.push_back({id, h.attempt, h.started});
    const auto at = now();
    const auto until = at + options_.lease_duration;
    renewal_report report;
    std::optional<node_info> node;
    {
        std::lock_guard lock(mutex_);
        node = node_;
    }
    try {
        if (!held.empty()) {
            report.found = store_->renew_leases(options_.node_id, held, until, at);
            for (auto id : report.found.lost)
                held_.erase(id);
        }
        report.renewed_until = until;
    } catch (...) {
        report.error = std::current_exception();
    }
    if (node) {
        try {
            store_->announce_node(*node, at);
        } catch (...) {
            report.announce_error = std::current_exception();
        }
    }
    note_write(report.error ? report.error : report.announce_error);
    // From the end of this renewal: one that took long (a storage busy with
    // another process's write) is not followed by another at once.
    next_renewal_ = std::chrono::steady_clock::now() + options_.heartbeat_interval;
    renewal_listener fn;
    {
        std::lock_guard lock(mutex_);
        fn = renewal_listener_;
    }
    if (fn && !fn(std::move(report))) {
        // The handlers whose jobs these are went with their server.
        held_.clear();
        std::lock_guard lock(mutex_);
        node_.reset();
        renewal_listener_ = nullptr;
    }
}

void engine::note_write(std::exception_ptr error)
{
    // An application's transaction holding a row says nothing of whether
    // the storage takes writes.
    if (error && is_row_lock_timeout(error))
        return;
    std::string why;
    if (error) {
        try {
            std::rethrow_exception(error);
        } catch (const std::exception& e) {
            why = e.what();
        } catch (...) {
            why = "unknown error";
        }
    }
    std::lock_guard lock(mutex_);
    write_failure_ = std::move(why);
}

std::string engine::write_failure() const
{
    std::lock_guard lock(mutex_);
    return write_failure_;
}

void engine::forget(job_id id, int attempt)
{
    if (auto it = held_.find(id); it != held_.end() && it->second.attempt == attempt)
        held_.erase(it);
}

} // namespace detail

namespace detail {

namespace {
// The key of a recurring job's own overlap policy (a unique key for skip, a
// concurrency key for wait).
std::string overlap_key(const recurring_job& r) { return "recurring:" + r.id; }
} // namespace

enqueue_request engine::occurrence_request(const recurring_job& r, time_point fire) const
{
    enqueue_request q;
    q.kind = r.kind;
    q.queue = r.queue;
    q.args = r.args;
    q.priority = r.priority;
    q.max_attempts = r.max_attempts;
    q.timeout = r.timeout;
    q.run_at = fire;
    q.recurring_id = r.id;
    q.concurrency_key = r.overlap == overlap_policy::wait ? overlap_key(r) : r.concurrency_key;
    if (r.overlap == overlap_policy::skip) {
        // While one is pending or running, the next returns it instead.
        q.unique_key = overlap_key(r);
        q.unique_states = default_unique_states;
        // Across kinds: a recurring job whose kind changed must still not
        // overlap the occurrence of its old kind.
        q.unique_across_kinds = true;
    } else if (!r.unique_key.empty()) {
        q.unique_key = r.unique_key;
        q.unique_states = r.unique_states;
        q.unique_across_kinds = r.unique_across_kinds;
    } else {
        // Every state: an occurrence is enqueued once, ever. (With a key of
        // its own, fire_recurring's compare-and-set alone sees to that.)
        q.unique_key = "recurring:" + r.id + ":" +
                       std::to_string(
                           std::chrono::duration_cast<std::chrono::microseconds>(fire.time_since_epoch()).count());
        q.unique_states = state_set::all();
        q.unique_across_kinds = true;
    }
    q.reason = "occurrence of recurring job '" + r.id + "'";
    return q;
}

enqueue_request engine::trigger_request(const recurring_job& r) const
{
    auto q = occurrence_request(r, now());
    q.run_at.reset();
    // Outside the schedule: no occurrence's key, but the job's own keys and
    // overlap policy hold as for any occurrence.
    if (r.overlap != overlap_policy::skip && r.unique_key.empty()) {
        q.unique_key.clear();
        q.unique_states = default_unique_states;
        q.unique_across_kinds = false;
    }
    q.reason = "recurring job '" + r.id + "' triggered by a client";
    return q;
}

} // namespace detail
} // namespace hosting::jobs
