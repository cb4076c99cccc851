// Where a build uses Boost.JSON header-only (cmake/hosting_header_only_deps.cmake),
// its compiled part lives in hosting::core, once per program.
#include <boost/json/src.hpp>
