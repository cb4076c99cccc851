# Warnings and sanitizers apply to hosting's own targets only, never to a
# consumer's: a newer compiler's new warning must not break someone's build.
function(hosting_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(HOSTING_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(CMAKE_UNITY_BUILD AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # In a unity build GCC 12 takes a coroutine frame that holds a lambda
    # for a type with internal linkage, and warns about it.
    target_compile_options(${target} PRIVATE -Wno-subobject-linkage)
  endif()
  if(HOSTING_SANITIZE)
    target_compile_options(${target} PUBLIC -fsanitize=${HOSTING_SANITIZE} -fno-omit-frame-pointer)
    target_link_options(${target} PUBLIC -fsanitize=${HOSTING_SANITIZE})
    if(HOSTING_SANITIZE MATCHES "undefined" AND CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
      # clang 14 cannot emit -fsanitize=function's prologue for coroutines
      # ("Cannot represent a difference across sections").
      target_compile_options(${target} PUBLIC -fno-sanitize=function)
    endif()
    if(HOSTING_SANITIZE MATCHES "thread" AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      # libstdc++'s std::stop_token uses atomic_thread_fence, which GCC
      # warns TSan cannot model; the warning is about the library, not us.
      target_compile_options(${target} PRIVATE -Wno-tsan)
    endif()
  endif()
endfunction()
