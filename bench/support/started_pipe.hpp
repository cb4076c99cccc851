// A worker process tells the program that forked it when its host has
// started. Until then the host has not taken SIGTERM from its default
// action, so a SIGTERM sent to a worker forked a moment before ends it at
// once: no graceful stop to judge. A harness that judges a graceful stop
// waits for this first.
#pragma once

#include <hosting/core/host.hpp>

#include <chrono>
#include <fcntl.h>
#include <optional>
#include <poll.h>
#include <stop_token>
#include <string>
#include <unistd.h>

namespace bench {

class started_pipe {
public:
    // In the parent, before fork().
    started_pipe()
    {
        int fds[2] = {-1, -1};
        if (::pipe2(fds, O_CLOEXEC) == 0) {
            read_ = fds[0];
            write_ = fds[1];
        }
    }
    ~started_pipe()
    {
        for (int fd : {read_, write_})
            if (fd >= 0)
                ::close(fd);
    }
    started_pipe(started_pipe&& other) noexcept : read_(other.read_), write_(other.write_)
    {
        other.read_ = other.write_ = -1;
    }
    started_pipe& operator=(started_pipe&& other) noexcept
    {
        std::swap(read_, other.read_);
        std::swap(write_, other.write_);
        return *this;
    }

    // In the child, between fork() and exec(): the descriptor to name on
    // the worker's command line, kept open across exec.
    std::string keep_for_child()
    {
        ::fcntl(write_, F_SETFD, 0);
        return std::to_string(write_);
    }

    // In the parent, after fork(): only the child holds the write end now,
    // so its death reads as the end of the pipe.
    void forked()
    {
        ::close(write_);
        write_ = -1;
    }

    // True once the child said it started (at once when it said so
    // before); false when it ended first or `bound` passed.
    bool wait(std::chrono::milliseconds bound)
    {
        if (started_)
            return true;
        if (read_ < 0)
            return false;
        pollfd p{read_, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(bound.count())) != 1)
            return false;
        char byte = 0;
        started_ = ::read(read_, &byte, 1) == 1;
        return started_;
    }

private:
    int read_ = -1;
    int write_ = -1;
    bool started_ = false;
};

// In the worker: writes to the descriptor its parent named once `host` has
// started. Keep the returned callback alive while the host runs.
inline auto tell_parent_when_started(hosting::host& host, int fd)
{
    return std::stop_callback(host.lifetime().application_started(), [fd] {
        [[maybe_unused]] const auto written = ::write(fd, "s", 1);
        ::close(fd);
    });
}

} // namespace bench
