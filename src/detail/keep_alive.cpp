#include "detail/keep_alive.hpp"

#include <mutex>
#include <vector>

namespace hosting::detail {

void keep_alive_forever(std::shared_ptr<void> object)
{
    // Heap-allocated and never freed, so no destructor runs at exit while an
    // abandoned thread may still be using what it holds.
    static auto* mutex = new std::mutex;
    static auto* kept = new std::vector<std::shared_ptr<void>>;
    std::lock_guard lock(*mutex);
    kept->push_back(std::move(object));
}

} // namespace hosting::detail
