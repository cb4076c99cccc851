#include "core/detail/windows_process.hpp"

#include <windows.h>
#include <tlhelp32.h>

#include <cwctype>
#include <filesystem>
#include <string>
#include <vector>

namespace hosting::detail {

namespace {

std::filesystem::path program_path()
{
    std::vector<wchar_t> buffer(MAX_PATH);
    for (;;) {
        const DWORD n = GetModuleFileNameW(nullptr, buffer.data(), static_cast<DWORD>(buffer.size()));
        if (n == 0)
            return {};
        if (n < buffer.size())
            return std::filesystem::path(std::wstring(buffer.data(), n));
        buffer.resize(buffer.size() * 2);
    }
}

bool parent_is_services()
{
    const HANDLE snapshot = CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0);
    if (snapshot == INVALID_HANDLE_VALUE)
        return false;
    const DWORD self = GetCurrentProcessId();
    DWORD parent = 0;
    std::wstring parent_name;
    PROCESSENTRY32W entry{};
    entry.dwSize = sizeof entry;
    for (BOOL more = Process32FirstW(snapshot, &entry); more; more = Process32NextW(snapshot, &entry))
        if (entry.th32ProcessID == self)
            parent = entry.th32ParentProcessID;
    entry.dwSize = sizeof entry;
    for (BOOL more = Process32FirstW(snapshot, &entry); more && parent != 0; more = Process32NextW(snapshot, &entry))
        if (entry.th32ProcessID == parent)
            parent_name = entry.szExeFile;
    CloseHandle(snapshot);
    for (auto& c : parent_name)
        c = static_cast<wchar_t>(std::towlower(c));
    // .NET also wants the parent in session 0; Wine runs its services.exe
    // in session 1, and a program of that name elsewhere is far-fetched.
    return parent_name == L"services.exe";
}

} // namespace

bool started_by_service_control_manager()
{
    static const bool answer = parent_is_services();
    return answer;
}

std::string program_folder() { return program_path().parent_path().string(); }

std::string program_stem() { return program_path().stem().string(); }

} // namespace hosting::detail
