# Fails when a feature's library was built for a consumer that links only
# the core.
file(GLOB built "${DIR}/libhosting_*")
if(NOT built MATCHES "libhosting_core")
  message(FATAL_ERROR "the core library was not built in ${DIR}")
endif()
foreach(lib ${built})
  if(NOT lib MATCHES "libhosting_core")
    message(FATAL_ERROR "built for a core-only consumer: ${lib}")
  endif()
endforeach()
