#include "detail/remote_completion.hpp"

#include <boost/asio/detail/strand_executor_service.hpp>

namespace hosting::detail {
namespace {

class liveness_service : public asio::execution_context::service {
public:
    static asio::execution_context::id id;

    explicit liveness_service(asio::execution_context& owner)
        : asio::execution_context::service(owner), liveness(std::make_shared<context_liveness>())
    {
    }

    // Before any service of the context is destroyed: a thread inside
    // remote_completion::complete() finishes its post first.
    void shutdown() override
    {
        std::lock_guard lock(liveness->mutex);
        liveness->alive = false;
    }

    std::shared_ptr<context_liveness> liveness;
};

asio::execution_context::id liveness_service::id;

} // namespace

std::shared_ptr<context_liveness> liveness_of(asio::execution_context& context)
{
    // A context shuts its services down newest first. The strand service,
    // made first here if it does not exist yet, is then shut down after the
    // liveness service: a post to a strand whose service has shut down would
    // destroy the posted function on the posting thread.
    asio::use_service<asio::detail::strand_executor_service>(context);
    return asio::use_service<liveness_service>(context).liveness;
}

} // namespace hosting::detail
