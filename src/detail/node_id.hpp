// The name a node goes by among the processes that share a storage.
#pragma once

#include <random>
#include <string>

#include <unistd.h>

namespace hosting::detail {

// The host name, the process id, and a random suffix: a process that reuses
// a dead one's pid (in a container, pid 1 every time) is still another node.
inline std::string default_node_id()
{
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    std::random_device rd;
    static constexpr char digits[] = "0123456789abcdef";
    std::string suffix;
    for (int i = 0; i < 6; ++i)
        suffix += digits[rd() % 16];
    return std::string(host) + ":" + std::to_string(::getpid()) + ":" + suffix;
}

} // namespace hosting::detail
