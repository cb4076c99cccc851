#include "core/detail/worker_threads.hpp"

namespace hosting::detail {

worker_threads::worker_threads(asio::io_context& io, std::size_t count,
                               std::function<void(std::exception_ptr)> on_error)
    : io_(io), count_(count), on_error_(std::move(on_error))
{
}

worker_threads::~worker_threads() { abandon(); }

void worker_threads::start()
{
    work_.emplace(io_.get_executor());
    {
        std::lock_guard lock(mutex_);
        running_ = count_;
    }
    for (std::size_t i = 0; i < count_; ++i) {
        threads_.emplace_back([this] {
            for (;;) {
                try {
                    io_.run();
                    break;
                } catch (...) {
                    on_error_(std::current_exception());
                }
            }
            {
                std::lock_guard lock(mutex_);
                --running_;
            }
            ended_.notify_all();
        });
    }
}

bool worker_threads::join(clock::time_point until, clock::duration grace)
{
    if (threads_.empty())
        return true;
    // Run out of work rather than stop(): a pool thread may still be posting
    // a result back (see ASIO-NOTES), and stop() would abandon it.
    work_.reset();
    std::unique_lock lock(mutex_);
    auto none_running = [this] { return running_ == 0; };
    if (!ended_.wait_until(lock, until, none_running)) {
        lock.unlock();
        io_.stop();
        lock.lock();
        ended_.wait_for(lock, grace, none_running);
    }
    const bool stuck = running_ > 0;
    lock.unlock();
    if (stuck) {
        abandon();
        return false;
    }
    for (auto& t : threads_)
        t.join();
    threads_.clear();
    return true;
}

void worker_threads::abandon()
{
    for (auto& t : threads_)
        if (t.joinable())
            t.detach();
    threads_.clear();
}

} // namespace hosting::detail
