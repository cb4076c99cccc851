// An io_context that its owner can shut down early.
#pragma once

#include <boost/asio/io_context.hpp>

namespace hosting::detail {

// An io_context whose services (and so pending handlers and coroutine frames)
// can be shut down before the objects those frames point at are destroyed.
class owned_io_context : public boost::asio::io_context {
public:
    using boost::asio::io_context::io_context;
    using boost::asio::io_context::shutdown;
};

} // namespace hosting::detail
