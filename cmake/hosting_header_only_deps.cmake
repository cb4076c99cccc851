# Boost (Asio, JSON), spdlog, fmt and Catch2 in their header-only forms, for a
# cross build (Windows with MinGW-w64) on a machine that has them only as
# native packages. The cross compiler must not see the build machine's whole
# include folder (its C library headers would shadow MinGW's), so it gets a
# folder that holds only links to these libraries.
set(HOSTING_HEADER_ONLY_DEPS_FROM /usr/include CACHE PATH
  "Folder that holds boost/, spdlog/, fmt/ and catch2/ for the cross build")

set(deps_dir ${CMAKE_BINARY_DIR}/header-only-deps)
file(MAKE_DIRECTORY ${deps_dir})
foreach(library boost spdlog fmt catch2)
  if(NOT EXISTS ${HOSTING_HEADER_ONLY_DEPS_FROM}/${library})
    message(FATAL_ERROR "hosting: ${HOSTING_HEADER_ONLY_DEPS_FROM}/${library} is missing "
      "(set HOSTING_HEADER_ONLY_DEPS_FROM to a folder that holds boost, spdlog, fmt and catch2)")
  endif()
  if(NOT EXISTS ${deps_dir}/${library})
    file(CREATE_LINK ${HOSTING_HEADER_ONLY_DEPS_FROM}/${library} ${deps_dir}/${library} SYMBOLIC)
  endif()
endforeach()

add_library(Boost::headers INTERFACE IMPORTED)
# -isystem: their warnings are not ours. Windows 10 is what Asio targets by
# default, said here so that it does not warn about guessing.
set_target_properties(Boost::headers PROPERTIES
  INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${deps_dir}
  INTERFACE_INCLUDE_DIRECTORIES ${deps_dir}
  INTERFACE_COMPILE_DEFINITIONS "_WIN32_WINNT=0x0A00;WIN32_LEAN_AND_MEAN;NOMINMAX"
  INTERFACE_LINK_LIBRARIES "ws2_32;mswsock")
# Boost.JSON's compiled part comes from <boost/json/src.hpp>, included once in
# hosting::core (src/detail/header_only_deps.cpp).
add_library(Boost::json INTERFACE IMPORTED)
set_target_properties(Boost::json PROPERTIES INTERFACE_LINK_LIBRARIES Boost::headers)
add_library(spdlog::spdlog INTERFACE IMPORTED)
set_target_properties(spdlog::spdlog PROPERTIES
  INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${deps_dir}
  INTERFACE_INCLUDE_DIRECTORIES ${deps_dir}
  INTERFACE_COMPILE_DEFINITIONS FMT_HEADER_ONLY)
add_library(Catch2::Catch2 INTERFACE IMPORTED)
set_target_properties(Catch2::Catch2 PROPERTIES
  INTERFACE_SYSTEM_INCLUDE_DIRECTORIES ${deps_dir}
  INTERFACE_INCLUDE_DIRECTORIES ${deps_dir})
set(HOSTING_HEADER_ONLY_DEPS ON)
