#include "remote_completion.hpp"

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
    return asio::use_service<liveness_service>(context).liveness;
}

} // namespace hosting::detail
