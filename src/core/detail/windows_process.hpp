// What a Windows process knows about how it was started (Windows builds only).
#pragma once

#include <string>

namespace hosting::detail {

// True when the parent process is services.exe: the service control manager
// started this one. Computed once.
bool started_by_service_control_manager();

// The folder that holds the running program.
std::string program_folder();

// The running program's file name without its extension.
std::string program_stem();

} // namespace hosting::detail
