// The threads that run a host's own io_context.
#pragma once

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace hosting::detail {

namespace asio = boost::asio;

class worker_threads {
public:
    using clock = std::chrono::steady_clock;

    // `on_error` is told, on the failing thread, of an exception that
    // escaped a handler; that thread then goes on running the loop.
    worker_threads(asio::io_context& io, std::size_t count, std::function<void(std::exception_ptr)> on_error);
    ~worker_threads();
    worker_threads(const worker_threads&) = delete;
    worker_threads& operator=(const worker_threads&) = delete;

    void start();

    // Lets the loop end by running out of work, waiting until `until`; past
    // that it stops the loop and waits `grace` more. True when every thread
    // ended and was joined; false when one is still blocked inside a
    // service: the threads are then detached, and the caller must keep
    // whatever they use alive for good.
    bool join(clock::time_point until, clock::duration grace);

    // Detaches the threads without waiting (the host is destroyed from one
    // of them, which cannot join itself).
    void abandon();

    bool started() const noexcept { return !threads_.empty(); }

private:
    asio::io_context& io_;
    std::size_t count_;
    std::function<void(std::exception_ptr)> on_error_;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable ended_;
    std::size_t running_ = 0; // mutex_
};

} // namespace hosting::detail
