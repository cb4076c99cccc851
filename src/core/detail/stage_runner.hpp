// Runs one stage of a start or a stop (a lifecycle hook, start() or
// stop() of each service), sequentially or concurrently, under a deadline.
#pragma once

#include "core/detail/service_entry.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <memory>
#include <vector>

namespace hosting::detail {

// Where the host's orchestration runs: a strand of the loop, or the loop
// itself when the host owns it and runs it on one thread, where a strand
// would only add a trip through the queue to every step of a start or stop.
using orchestrator_executor = asio::any_io_executor;

// Everything here runs on the orchestrator's executor.
class stage_runner {
public:
    explicit stage_runner(orchestrator_executor orch);
    // What owns this runner; its timer's handler does nothing once it is gone.
    void set_owner(std::weak_ptr<void> owner) { owner_ = std::move(owner); }

    struct plan {
        bool concurrent = false;
        // The deadline may move (a stop request during a start brings it
        // closer), so it is asked again at every wait.
        std::function<clock::time_point()> deadline;
        // Begins one service's call; a call that finished at once (a
        // background_service's launch) comes back done.
        std::function<std::shared_ptr<pending_call>(service_entry&)> begin;
        // Acts on a call that is done, once, as soon as it is seen done.
        std::function<void(pending_call&)> settle;
        // True: begin no further call (a start that failed or was stopped).
        std::function<bool()> halt;
        // A start gives up at the deadline; a stop still begins every
        // remaining call (so each sees its cancelled token) without waiting.
        bool halt_at_deadline = false;
    };

    // Begins the call of each target in order. Sequentially, each call is
    // awaited before the next begins; concurrently, all begin and are then
    // awaited together, except an entry that brackets the others, which
    // never overlaps them. Returns false when the deadline passed with a
    // call still running; `calls` then holds the calls not settled, which
    // are the ones still running.
    asio::awaitable<bool> run(const std::vector<service_entry*>& targets, const plan& p,
                              std::vector<std::shared_ptr<pending_call>>& calls);

    // Waits until every call is done (true) or `deadline()` passes (false).
    asio::awaitable<bool> wait_calls(const std::vector<std::shared_ptr<pending_call>>& calls,
                                     const std::function<clock::time_point()>& deadline);

    // Waits for the next notify(), or until `until`. Each waiter keeps its
    // own deadline: one timer is armed for the earliest of them.
    asio::awaitable<void> wait_for_change(clock::time_point until);
    // Resumes the waiters from the queue (posted).
    void notify();
    // Resumes the waiters inside this call when it runs on the
    // orchestrator's executor. Only as the last thing a handler does: a
    // resumed waiter may go on to the next step of a stop at once, which
    // in an ordered stop of many services saves a trip through the queue
    // per service.
    void notify_inline();
    // Cancels the wake timer: a pending timer is work, and would keep the
    // loop from running out of it.
    void disarm();

private:
    struct waiter {
        virtual ~waiter() = default;
        virtual void resume() = 0;
    };

    orchestrator_executor orch_;
    std::weak_ptr<void> owner_;
    std::vector<std::unique_ptr<waiter>> waiters_;
    asio::steady_timer wake_timer_;
    clock::time_point armed_for_ = clock::time_point::max();
};

} // namespace hosting::detail
