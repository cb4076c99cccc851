// The Windows service lifetime through a real service control manager (Wine's
// here): services are registered, started and stopped with sc.exe, as an
// administrator would, and watched with QueryServiceStatusEx.
#include <catch2/catch.hpp>

#include <windows.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

// The build passes the programs' paths as the build machine sees them; Wine
// maps its root folder to Z:.
std::string windows_path(std::string path)
{
    for (auto& c : path)
        if (c == '/')
            c = '\\';
    return path.size() > 1 && path[0] == '\\' ? "Z:" + path : path;
}

std::string folder_of(const std::string& path) { return path.substr(0, path.find_last_of('\\')); }

int sc(const std::string& arguments) { return std::system(("sc " + arguments + " > NUL").c_str()); }

struct service_state {
    DWORD state = 0;
    DWORD checkpoint = 0;
    DWORD wait_hint = 0;
    DWORD win32_exit_code = 0;
    DWORD service_exit_code = 0;
    DWORD process_id = 0;
};

service_state query(const std::string& name)
{
    service_state out;
    // No REQUIRE here: it runs from a destructor too.
    const SC_HANDLE manager = OpenSCManagerW(nullptr, nullptr, SC_MANAGER_CONNECT);
    if (!manager)
        return out;
    const SC_HANDLE service = OpenServiceA(manager, name.c_str(), SERVICE_QUERY_STATUS);
    if (service) {
        SERVICE_STATUS_PROCESS s{};
        DWORD needed = 0;
        if (QueryServiceStatusEx(service, SC_STATUS_PROCESS_INFO, reinterpret_cast<BYTE*>(&s), sizeof s, &needed))
            out = {s.dwCurrentState, s.dwCheckPoint, s.dwWaitHint, s.dwWin32ExitCode, s.dwServiceSpecificExitCode,
                   s.dwProcessId};
        CloseServiceHandle(service);
    }
    CloseServiceHandle(manager);
    return out;
}

// Polls (the service control manager has no event Wine implements for it)
// until the service is in `state`, at most `timeout`.
bool wait_state(const std::string& name, DWORD state, std::chrono::milliseconds timeout = 20s)
{
    const auto until = clock_type::now() + timeout;
    while (query(name).state != state) {
        if (clock_type::now() >= until)
            return false;
        std::this_thread::sleep_for(10ms);
    }
    return true;
}

std::string read_file(const std::string& path)
{
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
}

bool wait_file_contains(const std::string& path, const std::string& text, std::chrono::milliseconds timeout = 20s)
{
    const auto until = clock_type::now() + timeout;
    while (read_file(path).find(text) == std::string::npos) {
        if (clock_type::now() >= until)
            return false;
        std::this_thread::sleep_for(20ms);
    }
    return true;
}

// Registered for the test's length, removed after (and before, should a
// failed run have left it behind).
class installed_service {
public:
    installed_service(std::string name, const std::string& command_line) : name_(std::move(name))
    {
        remove();
        REQUIRE(sc("create " + name_ + " binPath= \"" + command_line + "\"") == 0);
    }
    ~installed_service() { remove(); }
    installed_service(const installed_service&) = delete;
    installed_service& operator=(const installed_service&) = delete;

    const std::string& name() const { return name_; }

    // sc stop, then the time it took to reach STOPPED; the longest wait
    // hint seen in STOP_PENDING on the way is kept.
    std::chrono::milliseconds stop_and_time(std::chrono::milliseconds timeout)
    {
        const auto asked = clock_type::now();
        REQUIRE(sc("stop " + name_) == 0);
        const auto until = asked + timeout;
        service_state s;
        for (s = query(name_); s.state != SERVICE_STOPPED && clock_type::now() < until; s = query(name_)) {
            if (s.state == SERVICE_STOP_PENDING)
                stop_pending_hint = std::max(stop_pending_hint, s.wait_hint);
            std::this_thread::sleep_for(10ms);
        }
        REQUIRE(s.state == SERVICE_STOPPED);
        return std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - asked);
    }

    DWORD stop_pending_hint = 0;

private:
    void remove()
    {
        const DWORD state = query(name_).state;
        if (state == 0)
            return; // not installed
        if (state != SERVICE_STOPPED) {
            sc("stop " + name_);
            wait_state(name_, SERVICE_STOPPED, 10s);
        }
        sc("delete " + name_);
    }

    std::string name_;
};

// The process behind a service, to see it end.
bool process_ends(DWORD id, std::chrono::milliseconds timeout)
{
    const HANDLE process = OpenProcess(SYNCHRONIZE, FALSE, id);
    if (!process)
        return true; // already gone
    const bool ended = WaitForSingleObject(process, static_cast<DWORD>(timeout.count())) == WAIT_OBJECT_0;
    CloseHandle(process);
    return ended;
}

const std::string worker = windows_path(HOSTING_EXAMPLE_WORKER_SERVICE);
const std::string child = windows_path(HOSTING_TEST_CHILD);

} // namespace

TEST_CASE("the worker service runs under the service control manager and stops on sc stop with exit code 0",
          "[service]")
{
    const std::string log = folder_of(worker) + "\\worker_service.log";
    DeleteFileA(log.c_str());
    installed_service service("hosting_worker_test", worker + " --Worker:IntervalMilliseconds=100");

    REQUIRE(sc("start " + service.name()) == 0);
    REQUIRE(wait_state(service.name(), SERVICE_RUNNING));
    const DWORD process = query(service.name()).process_id;
    CHECK(process != 0);

    // Its log goes to a file beside it, written as it goes, and its settings
    // came from its own folder (appsettings.json there says "report"), not
    // the service's working folder.
    REQUIRE(wait_file_contains(log, "report #2"));

    const auto took = service.stop_and_time(20s);
    CHECK(took < 5s); // the default deadline; a cooperative stop takes far less
    const auto s = query(service.name());
    CHECK(s.win32_exit_code == NO_ERROR);
    CHECK(s.service_exit_code == 0);
    CHECK(process_ends(process, 10s));
    const auto text = read_file(log);
    CHECK(text.find("The service control manager sent stop; shutting down") != std::string::npos);
    CHECK(text.find("Application is shutting down") != std::string::npos);
}

TEST_CASE("a service that ignores cancellation is stopped at the deadline with a non-zero exit code", "[service]")
{
    installed_service service("hosting_stubborn_test", child + " stubborn --Hosting:ShutdownTimeoutSeconds=2");
    REQUIRE(sc("start " + service.name()) == 0);
    REQUIRE(wait_state(service.name(), SERVICE_RUNNING));
    const DWORD process = query(service.name()).process_id;

    const auto took = service.stop_and_time(20s);
    CHECK(took >= 1900ms); // it did wait for the stop, up to the deadline
    CHECK(took < 4s);      // and not much longer
    CHECK(service.stop_pending_hint >= 3000); // STOP_PENDING asked for the deadline and a second
    const auto s = query(service.name());
    CHECK(s.win32_exit_code == ERROR_SERVICE_SPECIFIC_ERROR);
    CHECK(s.service_exit_code != 0);
    CHECK(process_ends(process, 10s));
}

TEST_CASE("a slow start reports progress to the service control manager until it runs", "[service]")
{
    // The child's start takes 3 s and its lifetime reports every 200 ms.
    installed_service service("hosting_slow_start_test", child + " slow_start");
    REQUIRE(sc("start " + service.name()) == 0);
    DWORD first = 0;
    DWORD last = 0;
    DWORD hint = 0;
    const auto until = clock_type::now() + 20s;
    service_state s;
    for (s = query(service.name()); s.state != SERVICE_RUNNING && s.state != SERVICE_STOPPED &&
                                     clock_type::now() < until;
         s = query(service.name())) {
        if (s.state == SERVICE_START_PENDING) {
            first = first ? first : s.checkpoint;
            last = s.checkpoint;
            hint = s.wait_hint;
        }
        std::this_thread::sleep_for(10ms);
    }
    REQUIRE(s.state == SERVICE_RUNNING);
    CAPTURE(first, last);
    CHECK(last >= first + 5); // about 15 checkpoints in 3 s
    CHECK(hint == 400);       // twice the interval
    service.stop_and_time(20s);
    CHECK(query(service.name()).win32_exit_code == NO_ERROR);
}
