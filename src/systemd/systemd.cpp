#include <hosting/systemd/systemd.hpp>

#include <hosting/core/host_builder.hpp>
#include <hosting/logging/logging.hpp>
#include <hosting/systemd/journal_sink.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <spdlog/details/log_msg.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <cstdio>
#include <stdexcept>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <thread>
#include <time.h>
#include <unistd.h>

namespace hosting {

namespace {

std::string env(const char* name)
{
    const char* value = std::getenv(name);
    return value ? value : "";
}

} // namespace

// ---------------------------------------------------------------------------
// systemd_notifier

systemd_notifier::systemd_notifier() : systemd_notifier(env("NOTIFY_SOCKET")) {}

systemd_notifier::systemd_notifier(std::string socket) : socket_(std::move(socket))
{
    if (socket_.empty() || (socket_[0] != '/' && socket_[0] != '@'))
        return; // not under systemd (or an address family we do not speak)
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (socket_.size() >= sizeof addr.sun_path)
        return;
    std::memcpy(addr.sun_path, socket_.data(), socket_.size());
    if (socket_[0] == '@')
        addr.sun_path[0] = '\0'; // abstract namespace
    const auto length = offsetof(sockaddr_un, sun_path) + socket_.size() + (socket_[0] == '@' ? 0 : 1);
    address_.assign(reinterpret_cast<const char*>(&addr), length);
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
}

systemd_notifier::~systemd_notifier()
{
    if (fd_ >= 0)
        ::close(fd_);
}

bool systemd_notifier::notify(std::string_view message) const
{
    if (fd_ < 0)
        return false;
    // A datagram per message: sendto is atomic, so no lock is needed.
    auto sent = ::sendto(fd_, message.data(), message.size(), MSG_NOSIGNAL,
                         reinterpret_cast<const sockaddr*>(address_.data()),
                         static_cast<socklen_t>(address_.size()));
    return sent == static_cast<ssize_t>(message.size());
}

bool systemd_notifier::status(std::string_view text) const
{
    std::string message = "STATUS=";
    message += text;
    return notify(message);
}

// ---------------------------------------------------------------------------
// systemd_lifetime

// Shared with the watchdog thread and the heartbeat coroutine on the loop.
struct systemd_lifetime::state {
    std::shared_ptr<systemd_notifier> notifier;
    std::chrono::microseconds watchdog{0};
    std::chrono::milliseconds extend_every{0};

    std::mutex mutex;
    std::condition_variable changed;
    enum class phase { idle, starting, running, stopping, stopped } current = phase::idle;
    bool quit = false;

    // steady_clock ticks of the loop's last heartbeat.
    std::atomic<std::chrono::steady_clock::rep> heartbeat{0};
    // Owned by the heartbeat coroutine, so it dies with the loop (or when
    // the coroutine ends), never after the io_context. Set under `mutex`.
    std::weak_ptr<asio::steady_timer> heartbeat_timer;
    std::atomic<bool> beating{false}; // cleared to end the heartbeat, checked at every beat
    asio::any_io_executor loop;
    std::thread thread;

    void set(phase p)
    {
        {
            std::lock_guard lock(mutex);
            current = p;
        }
        changed.notify_all();
    }

    // Runs beside the loop: it must keep its rhythm when the loop cannot.
    void run()
    {
        using namespace std::chrono;
        const auto ping_every = watchdog.count() > 0 ? duration_cast<steady_clock::duration>(watchdog / 2)
                                                     : steady_clock::duration::max();
        auto next_ping = watchdog.count() > 0 ? steady_clock::now() + ping_every : steady_clock::time_point::max();
        auto next_extend = steady_clock::time_point::max();
        auto seen = phase::idle;
        std::unique_lock lock(mutex);
        while (!quit) {
            const auto now = steady_clock::now();
            const bool extending = current == phase::starting || current == phase::stopping;
            if (current != seen) {
                // A start or stop that is quick needs no extension: the first
                // one goes out once it has taken extend_every.
                seen = current;
                next_extend = now + extend_every;
            }
            const auto beat = steady_clock::time_point(steady_clock::duration(heartbeat.load()));
            if (extending && extend_every.count() > 0 && now >= next_extend && now - beat < extend_every) {
                // Only a start or stop that still makes progress (its loop
                // still beats) deserves more time.
                const auto usec = duration_cast<microseconds>(extend_every * 2).count();
                lock.unlock();
                notifier->notify("EXTEND_TIMEOUT_USEC=" + std::to_string(usec));
                lock.lock();
                next_extend = now + extend_every;
            }
            const bool watching = watchdog.count() > 0 && (current == phase::running || current == phase::stopping);
            if (watching && now >= next_ping) {
                // Only a loop that ran its heartbeat recently is alive.
                if (now - beat < ping_every) {
                    lock.unlock();
                    notifier->notify("WATCHDOG=1");
                    lock.lock();
                    next_ping = now + ping_every;
                } else {
                    // Look again soon: a short stall must not cost a whole
                    // period, or systemd's deadline passes before the next look.
                    next_ping = now + ping_every / 8;
                }
            }
            auto wake = extending ? std::min(next_extend, now + extend_every / 4) : steady_clock::time_point::max();
            if (watching)
                wake = std::min(wake, next_ping);
            if (wake == steady_clock::time_point::max())
                changed.wait(lock);
            else
                changed.wait_until(lock, wake);
        }
    }

    // On the loop: beats every quarter of the watchdog interval.
    std::chrono::steady_clock::duration beat_every() const
    {
        using namespace std::chrono;
        auto every = duration_cast<steady_clock::duration>(extend_every) / 4;
        if (watchdog.count() > 0)
            every = std::min(every, duration_cast<steady_clock::duration>(watchdog / 8));
        return std::max<steady_clock::duration>(every, milliseconds(1));
    }

    static asio::awaitable<void> beat(std::shared_ptr<state> self, std::shared_ptr<asio::steady_timer> timer)
    {
        const auto every = self->beat_every();
        while (self->beating.load()) {
            self->heartbeat = std::chrono::steady_clock::now().time_since_epoch().count();
            timer->expires_after(every);
            boost::system::error_code ec;
            co_await timer->async_wait(asio::redirect_error(asio::use_awaitable, ec));
            if (ec)
                co_return;
        }
    }
};

systemd_lifetime::systemd_lifetime(std::shared_ptr<systemd_notifier> notifier, systemd_options options)
    : notifier_(std::move(notifier)), options_(options), state_(std::make_shared<state>())
{
    state_->notifier = notifier_;
    state_->extend_every = options_.extend_timeout_every;
    // WATCHDOG_PID names the process systemd watches; another one (a child
    // that inherited the environment) must not ping for it.
    const auto usec = env("WATCHDOG_USEC");
    const auto pid = env("WATCHDOG_PID");
    if (!usec.empty() && (pid.empty() || pid == std::to_string(::getpid()))) {
        char* end = nullptr;
        auto value = std::strtoll(usec.c_str(), &end, 10);
        if (end && *end == '\0' && value > 0)
            watchdog_ = std::chrono::microseconds(value);
    }
    state_->watchdog = watchdog_;
}

systemd_lifetime::~systemd_lifetime()
{
    if (state_->thread.joinable()) {
        {
            std::lock_guard lock(state_->mutex);
            state_->quit = true;
        }
        state_->changed.notify_all();
        state_->thread.join();
    }
}

void systemd_lifetime::attach(const host_lifetime_context& context)
{
    state_->loop = context.loop;
}

void systemd_lifetime::starting()
{
    if (!notifier_->active())
        return;
    state_->set(state::phase::starting);
    // The heartbeat lives on the loop: a loop that cannot run it is stuck,
    // and then neither watchdog pings nor timeout extensions go out. It
    // beats from the start, so that a start that hangs is not extended.
    state_->heartbeat = std::chrono::steady_clock::now().time_since_epoch().count();
    state_->beating = true;
    auto strand = asio::make_strand(state_->loop); // the loop may have several threads
    auto timer = std::make_shared<asio::steady_timer>(strand);
    {
        std::lock_guard lock(state_->mutex);
        state_->heartbeat_timer = timer;
    }
    asio::co_spawn(strand, state::beat(state_, std::move(timer)), asio::detached);
    if (!state_->thread.joinable())
        state_->thread = std::thread([s = state_] { s->run(); });
}

void systemd_lifetime::started()
{
    if (!notifier_->active())
        return;
    {
        // A stop may have begun meanwhile (stopping() runs on the thread that
        // asked): then it is too late to say READY.
        std::lock_guard lock(state_->mutex);
        if (state_->current != state::phase::starting)
            return;
        state_->current = state::phase::running;
    }
    notifier_->notify("READY=1");
    state_->changed.notify_all();
}

void systemd_lifetime::stopping()
{
    if (!notifier_->active())
        return;
    notifier_->notify("STOPPING=1");
    state_->set(state::phase::stopping);
}

void systemd_lifetime::stopped(int)
{
    if (!notifier_->active())
        return;
    state_->set(state::phase::stopped);
    // The heartbeat must not keep the loop busy once the host is done. The
    // flag ends it even if its timer already fired and its handler waits.
    state_->beating = false;
    std::shared_ptr<asio::steady_timer> timer;
    {
        std::lock_guard lock(state_->mutex);
        timer = state_->heartbeat_timer.lock();
    }
    if (timer)
        asio::post(timer->get_executor(), [timer] { timer->cancel(); });
}

bool systemd_lifetime::running() const
{
    std::lock_guard lock(state_->mutex);
    return state_->current == state::phase::running;
}

void systemd_lifetime::reloading()
{
    // Only a started service reloads, as far as systemd is concerned: READY=1
    // during a start would tell it the start is over.
    if (!notifier_->active() || !running())
        return;
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    const auto usec = static_cast<long long>(now.tv_sec) * 1000000 + now.tv_nsec / 1000;
    notifier_->notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void systemd_lifetime::reloaded()
{
    if (notifier_->active() && running())
        notifier_->notify("READY=1");
}

// ---------------------------------------------------------------------------
// journal_sink

namespace {

// $JOURNAL_STREAM is "device:inode" of the journal's stream; a child that
// inherited the variable but writes elsewhere must not use the format.
bool stderr_is_journal()
{
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (!stream || !*stream)
        return false;
    unsigned long long device = 0, inode = 0;
    if (std::sscanf(stream, "%llu:%llu", &device, &inode) != 2)
        return false;
    struct stat st {};
    if (::fstat(STDERR_FILENO, &st) != 0)
        return false;
    return static_cast<unsigned long long>(st.st_dev) == device && static_cast<unsigned long long>(st.st_ino) == inode;
}

// Marks a builder that use_systemd() was called on.
struct systemd_feature {};

} // namespace

void use_systemd(host_builder& builder, systemd_options options)
{
    if (builder.has_feature<systemd_feature>())
        throw std::logic_error("use_systemd: called twice on one host_builder");
    builder.feature<systemd_feature>();
    auto notifier = std::make_shared<systemd_notifier>();
    builder.services().add_singleton<systemd_notifier>(notifier);
    builder.add_lifetime(std::make_shared<systemd_lifetime>(notifier, options));
    builder.on_build([notifier](host_builder& b) {
        auto& sinks = b.logging().sinks;
        if ((stderr_is_journal() || notifier->active()) && sinks.empty())
            sinks.push_back(std::make_shared<journal_sink>());
    });
}

} // namespace hosting
