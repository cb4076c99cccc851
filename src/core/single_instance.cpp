#include "core/detail/single_instance_service.hpp"

#include "core/detail/background_service_access.hpp"
#include "detail/describe.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/logger.h>

#include <utility>

namespace hosting {
namespace detail {

namespace {

// The executor a single-instance service's execute runs on: the service's
// own strand, carrying the lease, so that fencing_token() finds it from
// any coroutine execute awaits. Everything else is the strand's.
class lease_executor {
public:
    lease_executor(asio::any_io_executor inner, std::shared_ptr<const instance_lease> lease) noexcept
        : inner_(std::move(inner)), lease_(std::move(lease))
    {
    }

    template <class F>
    void execute(F&& f) const
    {
        inner_.execute(std::forward<F>(f));
    }

    template <class P>
    auto query(const P& p) const -> decltype(asio::query(std::declval<const asio::any_io_executor&>(), p))
    {
        return asio::query(inner_, p);
    }

    template <class P>
        requires requires(const asio::any_io_executor& e, const P& p) { asio::require(e, p); }
    lease_executor require(const P& p) const
    {
        return lease_executor(asio::require(inner_, p), lease_);
    }

    template <class P>
        requires requires(const asio::any_io_executor& e, const P& p) { asio::prefer(e, p); }
    lease_executor prefer(const P& p) const
    {
        return lease_executor(asio::prefer(inner_, p), lease_);
    }

    friend bool operator==(const lease_executor& a, const lease_executor& b) noexcept
    {
        return a.inner_ == b.inner_ && a.lease_ == b.lease_;
    }

    const std::shared_ptr<const instance_lease>& lease() const noexcept { return lease_; }

private:
    asio::any_io_executor inner_;
    std::shared_ptr<const instance_lease> lease_;
};

// One hold's run of the inner service, shared with what tells of its end
// and of the lease's loss (the coordinator's thread).
struct run_state {
    explicit run_state(const asio::any_io_executor& executor) : event(executor, asio::steady_timer::time_point::max())
    {
    }
    asio::steady_timer event; // the service's executor only
    bool ended = false;
    service_state state = service_state::running;
    std::exception_ptr error;
};

struct run_observer final : background_service_access::observer {
    std::weak_ptr<run_state> run;
    explicit run_observer(std::weak_ptr<run_state> r) : run(std::move(r)) {}
    void execute_ended(void*, service_state state, std::exception_ptr error) override
    {
        if (auto r = run.lock()) {
            r->ended = true;
            r->state = state;
            r->error = std::move(error);
            r->event.cancel();
        }
    }
};

} // namespace

single_instance_service::single_instance_service(std::shared_ptr<instance_coordinator> coordinator,
                                                 std::string lease_name, hosted_factory factory,
                                                 service_provider& provider)
    : coordinator_(std::move(coordinator)), lease_name_(std::move(lease_name)), factory_(std::move(factory)),
      provider_(provider)
{
}

asio::awaitable<void> single_instance_service::execute(std::stop_token stopping)
{
    const asio::any_io_executor executor = co_await asio::this_coro::executor;
    const auto& log = service_logger();
    const std::string& name = service_name();
    for (;;) {
        auto acquiring = coordinator_->acquire(lease_name_, stopping);
        std::shared_ptr<instance_lease> lease = co_await std::move(acquiring);
        if (stopping.stop_requested()) {
            co_await asio::this_coro::reset_cancellation_state();
            co_await release(*lease);
            co_return;
        }
        if (log)
            log->info("Service '{}' holds lease '{}' (term {}) and starts", name, lease_name_, lease->term());

        std::shared_ptr<hosted_service> made;
        background_service* inner = nullptr;
        std::exception_ptr not_made;
        try {
            made = factory_(provider_);
            inner = dynamic_cast<background_service*>(made.get());
            if (!inner)
                throw std::logic_error("service '" + name + "': its factory made no background_service");
        } catch (...) {
            not_made = std::current_exception();
        }
        if (not_made) {
            co_await asio::this_coro::reset_cancellation_state();
            co_await release(*lease);
            std::rethrow_exception(not_made);
        }
        auto run = std::make_shared<run_state>(executor);
        background_service_access::bind(
            *inner,
            std::make_shared<const background_service_access::binding>(background_service_access::binding{
                std::make_shared<run_observer>(run), std::make_shared<const std::string>(name), log}),
            nullptr);
        const asio::any_io_executor inner_executor = lease_executor(executor, lease);

        {
            // The stop token fires from the coordinator's thread at once, so
            // that a handler that checks it stops even while the loop is
            // blocked; the cancellation of awaited operations has to go
            // through the service's executor. Registered before the launch:
            // co_spawn dispatches, so execute runs inline until it first
            // suspends, and one that never does would otherwise never hear.
            auto on_lost = [made, inner, run, executor] {
                background_service_access::request_stop_token(*inner);
                asio::post(executor, [run] { run->event.cancel(); });
            };
            std::stop_callback<decltype(on_lost)> lost_callback(lease->lost(), std::move(on_lost));
            background_service_access::launch(*inner, inner_executor);
            while (!run->ended && !lease->lost().stop_requested() && !stopping.stop_requested()) {
                boost::system::error_code ec;
                co_await run->event.async_wait(asio::redirect_error(asio::use_awaitable, ec));
            }
            if (!run->ended) {
                // The lease was lost, or the host stops (and has cancelled
                // this coroutine, hence the reset): stop the service and
                // await its end, which the host's own deadline bounds. A
                // lease not lost is renewed meanwhile: the service may
                // still be running.
                // The host's stop may come during this wait (after a lost
                // lease) and cancel it again: that wakes the wait, which
                // goes on, rather than throwing at the next co_await and
                // leaving the service running, unreleased.
                co_await asio::this_coro::reset_cancellation_state();
                co_await asio::this_coro::throw_if_cancelled(false);
                background_service_access::request_stop(*inner, inner_executor);
                while (!run->ended) {
                    boost::system::error_code ec;
                    co_await run->event.async_wait(asio::redirect_error(asio::use_awaitable, ec));
                }
                co_await asio::this_coro::throw_if_cancelled(true);
            }
        }

        // A service that returned by itself stays completed, even if the
        // lease was lost after it returned.
        const bool lost = lease->lost().stop_requested() && run->state != service_state::completed;
        co_await asio::this_coro::reset_cancellation_state();
        co_await release(*lease);
        if (run->state == service_state::faulted && !lost)
            std::rethrow_exception(run->error);
        if (stopping.stop_requested())
            co_return;
        if (lost) {
            if (log) {
                if (run->state == service_state::faulted)
                    log->warn("Service '{}' lost lease '{}' (term {}) and ended with: {}; it runs again once this "
                              "node holds the lease",
                              name, lease_name_, lease->term(), describe(run->error));
                else
                    log->warn("Service '{}' lost lease '{}' (term {}) and was stopped; it runs again once this "
                              "node holds the lease",
                              name, lease_name_, lease->term());
            }
            continue;
        }
        if (log)
            log->info("Service '{}' completed; lease '{}' (term {}) released", name, lease_name_, lease->term());
        co_return;
    }
}

// Also after the host's stop cancelled execute: a lease given up now passes
// to another node at once instead of when it expires. The caller resets its
// cancellation state first: a cancelled coroutine's co_await of this one
// would throw before it began.
asio::awaitable<void> single_instance_service::release(instance_lease& lease)
{
    try {
        co_await lease.release();
    } catch (...) {
        // It expires instead.
    }
}

} // namespace detail

asio::awaitable<std::shared_ptr<const instance_lease>> current_instance_lease()
{
    const asio::any_io_executor executor = co_await asio::this_coro::executor;
    if (const auto* found = executor.target<detail::lease_executor>())
        co_return found->lease();
    co_return nullptr;
}

asio::awaitable<std::uint64_t> fencing_token()
{
    const asio::any_io_executor executor = co_await asio::this_coro::executor;
    if (const auto* found = executor.target<detail::lease_executor>())
        co_return found->lease()->term();
    throw not_single_instance("fencing_token(): not inside the execute of a service registered with "
                              "single_instance() (or of a coroutine it awaits on its executor)");
}

} // namespace hosting
