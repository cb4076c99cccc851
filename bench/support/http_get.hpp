// One blocking HTTP GET on loopback, on a connection of its own, for the
// bench programs that read what a host serves.
#pragma once

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <string>
#include <utility>

namespace bench {

// Its status and body; throws boost::system::system_error when the
// connection fails.
inline std::pair<unsigned, std::string> http_get(unsigned short port, const std::string& target)
{
    namespace asio = boost::asio;
    namespace beast = boost::beast;
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    socket.connect({asio::ip::make_address("127.0.0.1"), port});
    beast::http::request<beast::http::empty_body> request{beast::http::verb::get, target, 11};
    request.set(beast::http::field::host, "127.0.0.1");
    beast::http::write(socket, request);
    beast::flat_buffer buffer;
    beast::http::response<beast::http::string_body> response;
    beast::http::read(socket, buffer, response);
    return {response.result_int(), response.body()};
}

} // namespace bench
