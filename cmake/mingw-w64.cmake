# Cross-builds hosting for 64-bit Windows with Debian's MinGW-w64 compiler, in
# its POSIX-threads flavour (std::thread, std::mutex and std::jthread need
# it). One command:
#
#   cmake -S . -B build/windows -G Ninja --toolchain cmake/mingw-w64.cmake
#
# Only the core is built (hosting::core, and hosting::windows for the service
# control manager): the other components need libraries Debian does not build
# for Windows. Boost, spdlog, fmt and Catch2 are used in their header-only
# forms from the build machine's headers (see hosting_header_only_deps.cmake).
# Where wine64 is installed, CTest runs the Windows programs with it.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(HOSTING_MINGW_PREFIX x86_64-w64-mingw32 CACHE STRING "Target triplet of the MinGW-w64 compiler")
set(CMAKE_C_COMPILER ${HOSTING_MINGW_PREFIX}-gcc-posix)
set(CMAKE_CXX_COMPILER ${HOSTING_MINGW_PREFIX}-g++-posix)
set(CMAKE_RC_COMPILER ${HOSTING_MINGW_PREFIX}-windres)

set(CMAKE_FIND_ROOT_PATH /usr/${HOSTING_MINGW_PREFIX})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Static: the programs run without the compiler's DLLs (libstdc++,
# libwinpthread) beside them, on Windows as under Wine.
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")

# Debian keeps the 64-bit loader out of PATH (wine64 is a wrapper script that
# only the wine package installs).
find_program(HOSTING_WINE64 NAMES wine64 PATHS /usr/lib/wine)
if(HOSTING_WINE64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${HOSTING_WINE64})
endif()
