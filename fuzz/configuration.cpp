// Configuration: any JSON text and any command line either load, or fail
// with configuration_error; a loaded configuration reads back, typed and
// as JSON, without crashing.
//
// Input: the JSON text, then optionally a 0 byte and command-line arguments
// separated by 0 bytes.
#include <hosting/configuration/configuration.hpp>

#include <cstdint>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    const std::string input(reinterpret_cast<const char*>(data), size);
    const auto split = input.find('\0');
    std::string json = input.substr(0, split);
    std::vector<std::string> args;
    for (auto at = split; at != std::string::npos && at < input.size();) {
        const auto end = input.find('\0', at + 1);
        args.push_back(input.substr(at + 1, end == std::string::npos ? std::string::npos : end - at - 1));
        at = end;
    }
    try {
        auto config = hosting::configuration::from(
            {hosting::json_text_source(std::move(json)), hosting::command_line_source(std::move(args))});
        (void)config.to_json();
        for (const auto& key : config.children()) {
            auto section = config.section(key);
            (void)section.value("");
            (void)section.get<int>("", 0);
            (void)section.get<double>("", 0.0);
            (void)section.get<bool>("", false);
            for (const auto& child : section.children())
                (void)section.section(child).get<std::string>("", "");
        }
    } catch (const hosting::configuration_error&) {
    }
    return 0;
}
