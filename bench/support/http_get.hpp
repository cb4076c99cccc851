// One HTTP GET on loopback, on a connection of its own, for the bench
// programs that read what a host serves.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <stdexcept>
#include <string>
#include <utility>

namespace bench {

// Its status and body, within `within` (connecting, sending and reading
// the whole answer); throws std::runtime_error when it fails or takes
// longer.
inline std::pair<unsigned, std::string> http_get(unsigned short port, const std::string& target,
                                                 std::chrono::milliseconds within = std::chrono::seconds(5))
{
    namespace asio = boost::asio;
    namespace beast = boost::beast;
    namespace http = beast::http;
    asio::io_context io;
    beast::tcp_stream stream(io);
    http::request<http::empty_body> request{http::verb::get, target, 11};
    request.set(http::field::host, "127.0.0.1");
    beast::flat_buffer buffer;
    http::response<http::string_body> response;
    boost::system::error_code failed;
    bool done = false;
    stream.expires_after(within);
    stream.async_connect({asio::ip::make_address("127.0.0.1"), port}, [&](boost::system::error_code ec) {
        if (ec) {
            failed = ec;
            return;
        }
        http::async_write(stream, request, [&](boost::system::error_code ec, std::size_t) {
            if (ec) {
                failed = ec;
                return;
            }
            http::async_read(stream, buffer, response, [&](boost::system::error_code ec, std::size_t) {
                failed = ec;
                done = !ec;
            });
        });
    });
    io.run(); // the stream's expiry bounds every step
    if (!done)
        throw std::runtime_error("GET " + target + ": " + (failed ? failed.message() : std::string("no answer")));
    return {response.result_int(), response.body()};
}

} // namespace bench
