// Test support that needs POSIX: the child process and the HTTP client.
#include "support.hpp"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <stdexcept>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace test {

child_process::child_process(const std::string& path, const std::vector<std::string>& args,
                             const std::map<std::string, std::string>& env, const std::string& cwd)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        throw std::runtime_error("pipe2 failed");
    std::vector<std::string> environment;
    for (char** e = environ; *e; ++e) {
        std::string entry = *e;
        auto name = entry.substr(0, entry.find('='));
        if (!env.contains(name))
            environment.push_back(entry);
    }
    for (const auto& [k, v] : env)
        environment.push_back(k + "=" + v);
    std::vector<char*> argv{const_cast<char*>(path.c_str())};
    for (const auto& a : args)
        argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& e : environment)
        envp.push_back(e.data());
    envp.push_back(nullptr);

    pid_ = fork();
    if (pid_ < 0)
        throw std::runtime_error("fork failed");
    if (pid_ == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        if (!cwd.empty() && chdir(cwd.c_str()) != 0)
            _exit(126);
        execve(path.c_str(), argv.data(), envp.data());
        _exit(127);
    }
    close(fds[1]);
    out_fd_ = fds[0];
    fcntl(out_fd_, F_SETFL, O_NONBLOCK);
    pid_fd_ = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
    if (pid_fd_ < 0)
        throw std::runtime_error("pidfd_open failed");
}

child_process::~child_process()
{
    if (!exit_code_) {
        ::kill(pid_, SIGKILL);
        int status = 0;
        waitpid(pid_, &status, 0);
    }
    close(out_fd_);
    close(pid_fd_);
}

bool child_process::pump(std::chrono::steady_clock::time_point until, const std::function<bool()>& done)
{
    while (!done()) {
        if (exit_code_ && eof_)
            return done();
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
        if (left.count() <= 0)
            return false;
        pollfd fds[2];
        nfds_t count = 0;
        if (!eof_)
            fds[count++] = {out_fd_, POLLIN, 0};
        if (!exit_code_)
            fds[count++] = {pid_fd_, POLLIN, 0};
        int n = poll(fds, count, static_cast<int>(left.count()));
        if (n < 0 && errno != EINTR)
            throw std::runtime_error("poll failed");
        if (!eof_) {
            char buf[4096];
            for (;;) {
                auto r = read(out_fd_, buf, sizeof buf);
                if (r > 0)
                    output_.append(buf, static_cast<std::size_t>(r));
                else {
                    if (r == 0)
                        eof_ = true;
                    break;
                }
            }
        }
        if (!exit_code_) {
            int status = 0;
            if (waitpid(pid_, &status, WNOHANG) == pid_)
                exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
    }
    return true;
}

bool child_process::wait_for_output(const std::string& text, std::chrono::milliseconds timeout)
{
    return pump(std::chrono::steady_clock::now() + timeout,
                [&] { return output_.find(text) != std::string::npos; });
}

void child_process::send_signal(int number) { ::kill(pid_, number); }

std::optional<int> child_process::wait_exit(std::chrono::milliseconds timeout)
{
    pump(std::chrono::steady_clock::now() + timeout, [&] { return exit_code_.has_value() && eof_; });
    return exit_code_;
}

} // namespace test

// ---------------------------------------------------------------------------
// HTTP

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <thread>

namespace test {

namespace {
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = boost::asio::ip::tcp;
} // namespace

http_response http_get(unsigned short port, const std::string& target, const std::string& method)
{
    boost::asio::io_context io;
    beast::tcp_stream stream(io);
    stream.expires_after(patience);
    stream.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port));
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    if (req.method() == http::verb::unknown)
        req.method_string(method);
    req.set(http::field::host, "127.0.0.1");
    req.keep_alive(false);
    http::write(stream, req);
    beast::flat_buffer buffer;
    http::response_parser<http::string_body> parser;
    parser.skip(req.method() == http::verb::head); // a HEAD answer has a length but no body
    http::read(stream, buffer, parser);
    auto res = parser.release();
    http_response out;
    out.status = static_cast<int>(res.result_int());
    out.body = res.body();
    for (const auto& field : res) {
        std::string name(field.name_string());
        for (auto& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        out.headers[name] = std::string(field.value());
    }
    boost::system::error_code ec;
    stream.socket().shutdown(tcp::socket::shutdown_both, ec);
    return out;
}

raw_result raw_exchange(unsigned short port, const std::string& bytes, std::chrono::milliseconds timeout,
                        const std::string& address)
{
    boost::asio::io_context io;
    tcp::socket socket(io);
    socket.connect(tcp::endpoint(boost::asio::ip::make_address(address), port));
    raw_result out;
    boost::asio::async_write(socket, boost::asio::buffer(bytes), [](boost::system::error_code, std::size_t) {});
    char chunk[4096];
    std::function<void(boost::system::error_code, std::size_t)> on_read = [&](boost::system::error_code ec,
                                                                             std::size_t n) {
        out.received.append(chunk, n);
        if (ec) {
            out.closed = true;
            return;
        }
        socket.async_read_some(boost::asio::buffer(chunk), on_read);
    };
    socket.async_read_some(boost::asio::buffer(chunk), on_read);
    io.run_for(timeout);
    return out;
}

} // namespace test
