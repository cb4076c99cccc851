#include "core/detail/stage_runner.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>


namespace hosting::detail {

stage_runner::stage_runner(orchestrator_executor orch) : orch_(orch), wake_timer_(orch) {}

asio::awaitable<bool> stage_runner::run(const std::vector<service_entry*>& targets, const plan& p,
                                        std::vector<std::shared_ptr<pending_call>>& calls)
{
    bool in_time = true;
    // Settling looks at one call, or at all of them only after a group was
    // awaited: a scan after every begin would cost n^2 on a large host.
    auto settle = [&](pending_call& c) {
        if (c.done && !c.settled) {
            c.settled = true;
            if (p.settle)
                p.settle(c);
        }
        return c.settled;
    };
    // A settled call is let go at once: kept to the end of the stage, ten
    // thousand of them would leave as many holes in the heap between the
    // records that live on.
    auto settle_all = [&] {
        std::erase_if(calls, [&](const std::shared_ptr<pending_call>& c) { return settle(*c); });
    };
    for (auto* e : targets) {
        if (p.halt && p.halt())
            break;
        const bool alone = !p.concurrent || e->brackets;
        if (alone && p.concurrent && in_time) {
            in_time = co_await wait_calls(calls, p.deadline);
            settle_all();
            if ((p.halt && p.halt()) || (!in_time && p.halt_at_deadline))
                break;
        }
        calls.push_back(p.begin(*e));
        auto& call = *calls.back();
        // wait_calls for one call, without its list and its frame: this
        // runs once per service of an ordered start or stop.
        while (alone && in_time && !call.done) {
            const auto until = p.deadline();
            if (clock::now() >= until) {
                in_time = false;
            } else {
                auto change = wait_for_change(until);
                co_await std::move(change);
            }
        }
        if (settle(call))
            calls.pop_back();
        if (!in_time && p.halt_at_deadline)
            break;
    }
    if (in_time)
        in_time = co_await wait_calls(calls, p.deadline);
    settle_all();
    co_return in_time;
}

asio::awaitable<bool> stage_runner::wait_calls(const std::vector<std::shared_ptr<pending_call>>& calls,
                                               const std::function<clock::time_point()>& deadline)
{
    // A call never turns back from done: the done prefix is skipped once,
    // not rescanned at every wake (n^2 for a large concurrent start).
    std::size_t first_pending = 0;
    for (;;) {
        while (first_pending < calls.size() && calls[first_pending]->done)
            ++first_pending;
        if (first_pending == calls.size())
            co_return true;
        auto until = deadline();
        if (clock::now() >= until)
            co_return false;
        auto change = wait_for_change(until);
        co_await std::move(change);
    }
}

// Not a coroutine itself (one frame less per wait): the timer is armed
// when the wait is made, which is when it is awaited.
asio::awaitable<void> stage_runner::wait_for_change(clock::time_point until)
{
    // Armed only when this waiter's deadline is the earliest: arming a
    // timer per wait costs two system calls when it is the earliest one,
    // and that showed with thousands of services. A later deadline never
    // replaces an earlier one (a waiter without one must not switch another
    // waiter's off): when the timer fires every waiter re-checks, and the
    // next earliest is armed by its own wait.
    if (until < armed_for_) {
        armed_for_ = until;
        wake_timer_.expires_at(until);
        // The owner is held while the handler runs: a completion already
        // queued when the host is destroyed must not touch this runner.
        wake_timer_.async_wait([this, owner = owner_, until](boost::system::error_code ec) {
            auto alive = owner.lock();
            if (ec || !alive || armed_for_ != until)
                return;
            armed_for_ = clock::time_point::max();
            notify();
        });
    }
    return asio::async_initiate<decltype(asio::use_awaitable), void()>(
        [this](auto handler) {
            using handler_type = decltype(handler);
            struct parked final : waiter {
                explicit parked(handler_type h) : pending(std::move(h)) {}
                void resume() override { std::move(pending)(); }
                handler_type pending;
            };
            waiters_.push_back(std::make_unique<parked>(std::move(handler)));
        },
        asio::use_awaitable);
}

void stage_runner::notify()
{
    for (auto& w : waiters_)
        asio::post(orch_, [w = std::move(w)] { w->resume(); });
    waiters_.clear();
}

void stage_runner::notify_inline()
{
    // Taken out first: a waiter resumed here may wait again before the
    // next one is resumed.
    auto woken = std::move(waiters_);
    waiters_.clear();
    for (auto& w : woken)
        asio::dispatch(orch_, [w = std::move(w)] { w->resume(); });
}

void stage_runner::disarm()
{
    if (armed_for_ != clock::time_point::max()) {
        armed_for_ = clock::time_point::max();
        wake_timer_.cancel();
    }
}

} // namespace hosting::detail
