#include <hosting/jobs/client.hpp>

#include "jobs/detail/engine.hpp"

#include <hosting/scheduling/cron.hpp>

namespace hosting::jobs {

// ---------------------------------------------------------------------------
// Client

client::client(std::shared_ptr<detail::engine> engine) : engine_(std::move(engine)) {}

time_point client::now() const { return engine_->now(); }

asio::awaitable<enqueued> client::submit(std::string kind, std::string args, const job_options& options,
                                         std::optional<time_point> run_at)
{
    // Validation throws here, at the call, before anything is awaited.
    auto request = engine_->make_request(std::move(kind), std::move(args), options, run_at);
    return enqueue_request_async(std::move(request));
}

std::vector<enqueue_request> client::requests_for(const job_batch& batch) const
{
    std::vector<enqueue_request> requests;
    requests.reserve(batch.items_.size());
    for (std::size_t i = 0; i < batch.items_.size(); ++i) {
        const auto& item = batch.items_[i];
        try {
            requests.push_back(engine_->make_request(item.kind, item.args, item.options, item.run_at));
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument("jobs: enqueue_many, job " + std::to_string(i) + " of the batch: " + e.what());
        }
    }
    return requests;
}

namespace {
// One transaction for the whole batch, on the storage thread; the server of
// this process is told at once.
std::function<std::vector<enqueued>(storage&)> enqueue_all(detail::engine* e, std::vector<enqueue_request> requests)
{
    return [e, requests = std::move(requests)](storage& s) {
        std::vector<enqueued> out;
        if (requests.empty())
            return out;
        const auto results = s.enqueue(requests, e->now());
        out.reserve(results.size());
        for (const auto& r : results)
            out.push_back({r.id, r.created});
        e->wake_server();
        return out;
    };
}
} // namespace

asio::awaitable<std::vector<enqueued>> client::enqueue_many(const job_batch& batch)
{
    return engine_->call<std::vector<enqueued>>(enqueue_all(engine_.get(), requests_for(batch)));
}

std::vector<enqueued> client::enqueue_many_blocking(const job_batch& batch)
{
    return engine_->call_blocking<std::vector<enqueued>>(enqueue_all(engine_.get(), requests_for(batch)));
}

asio::awaitable<enqueued> client::enqueue_request_async(enqueue_request&& request)
{
    auto* e = engine_.get();
    auto initiation = [e, request = std::move(request)](auto handler) mutable {
        using completion = hosting::detail::remote_completion<decltype(handler), std::exception_ptr, enqueued>;
        auto done = std::make_shared<completion>(std::move(handler));
        e->submit_enqueue(std::move(request), [done](std::exception_ptr error, enqueue_result r) {
            done->complete(std::move(error), enqueued{r.id, r.created});
        });
    };
    return asio::async_initiate<decltype(asio::use_awaitable), void(std::exception_ptr, enqueued)>(
        std::move(initiation), asio::use_awaitable);
}

enqueued client::submit_blocking(std::string kind, std::string args, job_options options,
                                 std::optional<time_point> run_at)
{
    return enqueue_request_blocking(engine_->make_request(std::move(kind), std::move(args), options, run_at));
}

enqueued client::enqueue_request_blocking(enqueue_request request)
{
    auto promise = std::make_shared<std::promise<enqueued>>();
    auto future = promise->get_future();
    engine_->submit_enqueue(std::move(request), [promise](std::exception_ptr error, enqueue_result r) {
        if (error)
            promise->set_exception(error);
        else
            promise->set_value(enqueued{r.id, r.created});
    });
    return future.get();
}

namespace {
std::function<job_state(storage&)> change(job_id id, job_state to, std::string reason, time_point now)
{
    return [id, to, reason = std::move(reason), now](storage& s) { return s.change_state(id, to, reason, now); };
}
} // namespace

asio::awaitable<void> client::transition(job_id id, job_state to, std::string reason)
{
    auto fn = change(id, to, std::move(reason), now());
    co_await engine_->call<job_state>(std::move(fn));
    if (to == job_state::available)
        engine_->wake_server();
    else
        engine_->cancel_local(id);
}

asio::awaitable<std::vector<storage::state_change_result>> client::change_many(std::vector<job_id> ids, job_state to)
{
    const char* reason = to == job_state::cancelled ? "cancelled by a client"
                         : to == job_state::deleted ? "deleted by a client"
                         : to == job_state::available ? "requeued by a client"
                                                      : nullptr;
    if (!reason)
        throw std::invalid_argument("jobs: change_many makes jobs cancelled, deleted or available, not " +
                                    std::string(to_string(to)));
    std::vector<storage::state_change_result> out;
    for (std::size_t at = 0; at < ids.size(); at += max_rows_per_write) {
        const auto end = std::min(ids.size(), at + max_rows_per_write);
        std::function<std::vector<storage::state_change_result>(storage&)> batch =
            [batch_ids = std::vector<job_id>(ids.begin() + static_cast<std::ptrdiff_t>(at),
                                             ids.begin() + static_cast<std::ptrdiff_t>(end)),
             to, reason = std::string(reason), at_time = now()](storage& s) {
                return s.change_states(batch_ids, to, reason, at_time);
            };
        auto done = co_await engine_->call<std::vector<storage::state_change_result>>(std::move(batch));
        for (auto& r : done) {
            if (r.state && to != job_state::available)
                engine_->cancel_local(r.id);
            out.push_back(std::move(r));
        }
    }
    if (to == job_state::available)
        engine_->wake_server();
    co_return out;
}

asio::awaitable<void> client::cancel(job_id id) { return transition(id, job_state::cancelled, "cancelled by a client"); }
asio::awaitable<void> client::delete_job(job_id id) { return transition(id, job_state::deleted, "deleted by a client"); }
asio::awaitable<void> client::requeue(job_id id) { return transition(id, job_state::available, "requeued by a client"); }

void client::cancel_blocking(job_id id)
{
    engine_->call_blocking<job_state>(change(id, job_state::cancelled, "cancelled by a client", now()));
    engine_->cancel_local(id);
}

void client::delete_job_blocking(job_id id)
{
    engine_->call_blocking<job_state>(change(id, job_state::deleted, "deleted by a client", now()));
    engine_->cancel_local(id);
}

void client::requeue_blocking(job_id id)
{
    engine_->call_blocking<job_state>(change(id, job_state::available, "requeued by a client", now()));
    engine_->wake_server();
}

asio::awaitable<std::optional<job>> client::find(job_id id)
{
    std::function<std::optional<job>(storage&)> fn = [id](storage& s) { return s.find(id, true); };
    co_return co_await engine_->call<std::optional<job>>(std::move(fn), detail::engine::lane::reads);
}

std::optional<job> client::find_blocking(job_id id)
{
    return engine_->call_blocking<std::optional<job>>([id](storage& s) { return s.find(id, true); }, detail::engine::lane::reads);
}

asio::awaitable<std::vector<job>> client::list(const job_filter& filter)
{
    std::function<std::vector<job>(storage&)> fn = [filter](storage& s) { return s.list(filter); };
    return engine_->call<std::vector<job>>(std::move(fn), detail::engine::lane::reads);
}

std::vector<job> client::list_blocking(const job_filter& filter)
{
    return engine_->call_blocking<std::vector<job>>([filter](storage& s) { return s.list(filter); }, detail::engine::lane::reads);
}

asio::awaitable<job_counts> client::counts()
{
    std::function<job_counts(storage&)> fn = [](storage& s) { return s.counts(); };
    co_return co_await engine_->call<job_counts>(std::move(fn), detail::engine::lane::reads);
}

job_counts client::counts_blocking()
{
    return engine_->call_blocking<job_counts>([](storage& s) { return s.counts(); }, detail::engine::lane::reads);
}

asio::awaitable<enqueued> client::submit_continuation(job_id parent, std::string kind, std::string args,
                                                      continuation_condition condition, const job_options& options)
{
    auto request = engine_->make_request(std::move(kind), std::move(args), options, std::nullopt);
    request.parent_id = parent;
    request.condition = condition;
    request.reason = "continues job " + std::to_string(parent);
    return enqueue_request_async(std::move(request));
}

enqueued client::submit_continuation_blocking(job_id parent, std::string kind, std::string args,
                                              continuation_condition condition, job_options options)
{
    auto request = engine_->make_request(std::move(kind), std::move(args), options, std::nullopt);
    request.parent_id = parent;
    request.condition = condition;
    request.reason = "continues job " + std::to_string(parent);
    return enqueue_request_blocking(std::move(request));
}

recurring_job client::make_recurring(std::string id, std::string cron, std::string zone, std::string kind,
                                     std::string args, const job_options& options, missed_policy missed,
                                     overlap_policy overlap) const
{
    if (id.empty())
        throw std::invalid_argument("jobs: a recurring job needs an id");
    auto expression = cron_expression::parse(cron);
    auto tz = time_zone::locate(zone);
    if (overlap == overlap_policy::skip && !options.unique_key.empty())
        throw std::invalid_argument("jobs: recurring job '" + id +
                                    "': overlap_policy::skip takes the unique key 'recurring:" + id +
                                    "'; it cannot have a unique_key of its own");
    if (overlap == overlap_policy::wait && !options.concurrency_key.empty())
        throw std::invalid_argument("jobs: recurring job '" + id +
                                    "': overlap_policy::wait takes the concurrency key 'recurring:" + id +
                                    "'; it cannot have a concurrency_key of its own");
    // Every field of the options, and the kind's defaults, as for an enqueue.
    auto request = engine_->make_request(kind, args, options, std::nullopt);
    recurring_job r;
    r.id = std::move(id);
    r.cron = std::move(cron);
    r.zone = std::move(zone);
    r.kind = std::move(kind);
    r.args = std::move(args);
    r.queue = request.queue;
    r.priority = request.priority;
    r.max_attempts = request.max_attempts;
    r.timeout = request.timeout;
    r.unique_key = request.unique_key;
    if (!r.unique_key.empty()) { // without a key, these mean nothing: the defaults, as storages read them back
        r.unique_states = request.unique_states;
        r.unique_across_kinds = request.unique_across_kinds;
    }
    r.concurrency_key = request.concurrency_key;
    r.overlap = overlap;
    r.missed = missed;
    auto next = expression.next(now(), tz);
    if (!next)
        throw std::invalid_argument("jobs: recurring job '" + r.id + "' never fires");
    r.next_fire = *next;
    return r;
}

namespace {
asio::awaitable<void> finish_bool(asio::awaitable<bool> op) { co_await std::move(op); }
} // namespace

asio::awaitable<void> client::upsert_recurring(recurring_job r)
{
    // A raw pointer: the op runs on the engine's own thread, which the engine
    // outlives; a shared_ptr here could make that thread destroy the engine.
    std::function<bool(storage&)> fn = [r = std::move(r), e = engine_.get()](storage& s) {
        s.upsert_recurring(r);
        e->wake_server(); // from the storage thread, once it is stored
        return true;
    };
    return finish_bool(engine_->call<bool>(std::move(fn)));
}

void client::upsert_recurring_blocking(recurring_job r)
{
    engine_->call_blocking<bool>([r = std::move(r)](storage& s) {
        s.upsert_recurring(r);
        return true;
    });
    engine_->wake_server();
}

asio::awaitable<bool> client::remove_recurring(std::string_view id)
{
    std::function<bool(storage&)> fn = [id = std::string(id)](storage& s) { return s.remove_recurring(id); };
    return engine_->call<bool>(std::move(fn));
}

bool client::remove_recurring_blocking(std::string id)
{
    return engine_->call_blocking<bool>([id = std::move(id)](storage& s) { return s.remove_recurring(id); });
}

namespace {
std::optional<recurring_job> find_recurring(storage& s, const std::string& id)
{
    for (auto& r : s.list_recurring())
        if (r.id == id)
            return r;
    return std::nullopt;
}
} // namespace

asio::awaitable<job_id> client::trigger_recurring(std::string_view name)
{
    // Not a coroutine: the view is copied before the caller's line ends.
    return trigger(std::string(name));
}

asio::awaitable<job_id> client::trigger(std::string id)
{
    std::function<std::optional<recurring_job>(storage&)> fn = [id](storage& s) { return find_recurring(s, id); };
    auto r = co_await engine_->call<std::optional<recurring_job>>(std::move(fn));
    if (!r)
        throw std::invalid_argument("jobs: no recurring job '" + id + "'");
    auto op = enqueue_request_async(engine_->trigger_request(*r));
    const enqueued stored = co_await std::move(op);
    co_return stored.id;
}

job_id client::trigger_recurring_blocking(std::string id)
{
    auto r = engine_->call_blocking<std::optional<recurring_job>>([id](storage& s) { return find_recurring(s, id); });
    if (!r)
        throw std::invalid_argument("jobs: no recurring job '" + id + "'");
    return enqueue_request_blocking(engine_->trigger_request(*r)).id;
}

asio::awaitable<std::vector<recurring_job>> client::list_recurring()
{
    std::function<std::vector<recurring_job>(storage&)> fn = [](storage& s) { return s.list_recurring(); };
    co_return co_await engine_->call<std::vector<recurring_job>>(std::move(fn), detail::engine::lane::reads);
}

std::vector<recurring_job> client::list_recurring_blocking()
{
    return engine_->call_blocking<std::vector<recurring_job>>([](storage& s) { return s.list_recurring(); }, detail::engine::lane::reads);
}

namespace {
// Pauses or resumes a recurring job; a resume starts again from the next
// occurrence after now. Storage thread.
bool pause_or_resume(storage& s, const detail::engine& e, const std::string& id, bool paused)
{
    const auto r = find_recurring(s, id);
    if (!r)
        throw std::invalid_argument("jobs: no recurring job '" + id + "'");
    auto next = r->next_fire;
    if (!paused) {
        const auto at = cron_expression::parse(r->cron).next(e.now(), time_zone::locate(r->zone));
        next = at.value_or(time_point::max() - std::chrono::hours(24 * 365));
    }
    return s.set_recurring_paused(id, paused, next);
}
} // namespace

namespace {
// The storage-thread work of a pause or resume, for the awaitable and the
// blocking forms alike; the server of this process looks for work again.
std::function<bool(storage&)> recurring_pause_op(detail::engine* e, std::string id, bool paused)
{
    return [e, id = std::move(id), paused](storage& s) {
        const bool done = pause_or_resume(s, *e, id, paused);
        e->wake_server();
        return done;
    };
}

std::function<bool(storage&)> queue_pause_op(detail::engine* e, std::string queue, bool paused)
{
    if (queue.empty())
        throw std::invalid_argument("jobs: pause_queue and resume_queue need a queue name");
    return [e, queue = std::move(queue), paused](storage& s) {
        s.set_queue_paused(queue, paused, e->now());
        e->wake_server();
        return true;
    };
}
} // namespace

asio::awaitable<void> client::set_recurring_paused(std::string id, bool paused)
{
    return finish_bool(engine_->call<bool>(recurring_pause_op(engine_.get(), std::move(id), paused)));
}

asio::awaitable<void> client::pause_recurring(std::string_view id) { return set_recurring_paused(std::string(id), true); }
asio::awaitable<void> client::resume_recurring(std::string_view id)
{
    return set_recurring_paused(std::string(id), false);
}

void client::pause_recurring_blocking(std::string id)
{
    engine_->call_blocking<bool>(recurring_pause_op(engine_.get(), std::move(id), true));
}

void client::resume_recurring_blocking(std::string id)
{
    engine_->call_blocking<bool>(recurring_pause_op(engine_.get(), std::move(id), false));
}

asio::awaitable<void> client::set_queue_paused(std::string queue, bool paused)
{
    return finish_bool(engine_->call<bool>(queue_pause_op(engine_.get(), std::move(queue), paused)));
}

asio::awaitable<void> client::pause_queue(std::string_view queue) { return set_queue_paused(std::string(queue), true); }
asio::awaitable<void> client::resume_queue(std::string_view queue)
{
    return set_queue_paused(std::string(queue), false);
}

void client::pause_queue_blocking(std::string queue)
{
    engine_->call_blocking<bool>(queue_pause_op(engine_.get(), std::move(queue), true));
}

void client::resume_queue_blocking(std::string queue)
{
    engine_->call_blocking<bool>(queue_pause_op(engine_.get(), std::move(queue), false));
}

asio::awaitable<std::vector<std::string>> client::paused_queues()
{
    std::function<std::vector<std::string>(storage&)> fn = [](storage& s) { return s.paused_queues(); };
    return engine_->call<std::vector<std::string>>(std::move(fn), detail::engine::lane::reads);
}

std::vector<std::string> client::paused_queues_blocking()
{
    return engine_->call_blocking<std::vector<std::string>>([](storage& s) { return s.paused_queues(); }, detail::engine::lane::reads);
}

asio::awaitable<std::vector<queue_kind_count>> client::counts_by_queue_and_kind()
{
    std::function<std::vector<queue_kind_count>(storage&)> fn = [](storage& s) {
        return s.counts_by_queue_and_kind();
    };
    return engine_->call<std::vector<queue_kind_count>>(std::move(fn), detail::engine::lane::reads);
}

std::vector<queue_kind_count> client::counts_by_queue_and_kind_blocking()
{
    return engine_->call_blocking<std::vector<queue_kind_count>>(
        [](storage& s) { return s.counts_by_queue_and_kind(); }, detail::engine::lane::reads);
}

asio::awaitable<std::vector<node_info>> client::list_nodes()
{
    std::function<std::vector<node_info>(storage&)> fn = [](storage& s) { return s.list_nodes(); };
    return engine_->call<std::vector<node_info>>(std::move(fn), detail::engine::lane::reads);
}

std::vector<node_info> client::list_nodes_blocking()
{
    return engine_->call_blocking<std::vector<node_info>>([](storage& s) { return s.list_nodes(); }, detail::engine::lane::reads);
}

} // namespace hosting::jobs
