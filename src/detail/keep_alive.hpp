// Objects that must outlive everything, on purpose.
#pragma once

#include <memory>

namespace hosting::detail {

// Keeps `object` reachable until the process ends and never destroys it.
// For state still used by a thread the host had to abandon at its shutdown
// deadline: destroying it would race with that thread, and keeping it
// reachable keeps leak checkers quiet about a deliberate choice.
void keep_alive_forever(std::shared_ptr<void> object);

} // namespace hosting::detail
