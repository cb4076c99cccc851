#include <hosting/configuration/configuration.hpp>
#include <hosting/hosting.hpp>
#include <hosting/systemd/systemd.hpp>

#include "support.hpp"

#include <boost/describe/class.hpp>

#include <catch2/catch.hpp>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace fs = std::filesystem;

namespace {

// A fresh directory that is the current one while the test runs (each test
// case runs in its own process).
class scratch_dir {
public:
    scratch_dir()
    {
        path_ = fs::temp_directory_path() / ("hosting-config-" + std::to_string(::getpid()));
        fs::remove_all(path_);
        fs::create_directories(path_);
        previous_ = fs::current_path();
        fs::current_path(path_);
    }
    ~scratch_dir()
    {
        fs::current_path(previous_);
        fs::remove_all(path_);
    }
    void write(const std::string& name, const std::string& text) const
    {
        std::ofstream(path_ / name) << text;
    }
    std::string file(const std::string& name) const { return (path_ / name).string(); }

private:
    fs::path path_;
    fs::path previous_;
};

struct worker_settings {
    int interval = 0;
    int interval_seconds = 0;
    std::string name;
    bool enabled = false;
    std::vector<std::string> tags;
};
BOOST_DESCRIBE_STRUCT(worker_settings, (), (interval, interval_seconds, name, enabled, tags))

} // namespace

TEST_CASE("configuration: later sources win, across the whole precedence matrix", "[configuration]")
{
    scratch_dir dir;
    dir.write("appsettings.json", R"({"K": {"File": "file", "Env": "file", "Staging": "file", "Cli": "file", "Code": "file"},
                                     "OnlyFile": "file"})");
    dir.write("appsettings.Staging.json", R"({"K": {"Staging": "staging", "Env": "staging", "Cli": "staging", "Code": "staging"}})");
    ::setenv("HOSTING_ENVIRONMENT", "Staging", 1);
    ::setenv("K__Env", "env", 1);
    ::setenv("K__Cli", "env", 1);
    ::setenv("K__Code", "env", 1);
    std::vector<std::string> args_storage{"prog", "--K:Cli=cli", "--K:Code", "cli", "/OnlyCli=cli"};
    std::vector<char*> argv;
    for (auto& a : args_storage)
        argv.push_back(a.data());
    auto builder = hosting::host::create_builder(static_cast<int>(argv.size()), argv.data());
    builder.configuration().add_source(hosting::memory_source({{"K:Code", "code"}}));
    auto& c = builder.configuration();
    CHECK(c.value("K:File") == "file");
    CHECK(c.value("K:Staging") == "staging");
    CHECK(c.value("K:Env") == "env");
    CHECK(c.value("K:Cli") == "cli");
    CHECK(c.value("K:Code") == "code");
    CHECK(c.value("OnlyFile") == "file");
    CHECK(c.value("OnlyCli") == "cli");
    CHECK(c.value("k:code") == "code"); // keys ignore case
    CHECK(builder.environment().is_staging());
    ::unsetenv("HOSTING_ENVIRONMENT");
    ::unsetenv("K__Env");
    ::unsetenv("K__Cli");
    ::unsetenv("K__Code");
}

TEST_CASE("configuration: environment variables with a prefix", "[configuration]")
{
    ::setenv("MYAPP_Worker__Name", "from env", 1);
    ::setenv("OTHER_Worker__Name", "ignored", 1);
    auto c = hosting::configuration::from({hosting::environment_source("MYAPP_")});
    CHECK(c.value("Worker:Name") == "from env");
    CHECK(c.children() == std::vector<std::string>{"Worker"});
    ::unsetenv("MYAPP_Worker__Name");
    ::unsetenv("OTHER_Worker__Name");
}

TEST_CASE("configuration: typed reads, sections and binding", "[configuration]")
{
    scratch_dir dir;
    dir.write("s.json", R"({"Worker": {"interval_seconds": 30, "name": "nightly", "enabled": true, // comments are fine

                                       "tags": ["a", "b"], "ratio": 0.25},
                           "Servers": [{"Host": "x"}, {"Host": "y"},]})"); // and trailing commas
    auto c = hosting::configuration::from({hosting::json_file_source(dir.file("s.json"), false)});
    CHECK(c.get<int>("Worker:interval_seconds") == 30);
    CHECK(c.get<double>("Worker:ratio") == 0.25);
    CHECK(c.get<bool>("Worker:enabled"));
    CHECK(c.get<std::string>("Worker:name") == "nightly");
    CHECK(c.get<int>("Worker:missing", 7) == 7);
    auto worker = c.section("Worker");
    CHECK(worker.exists());
    CHECK_FALSE(c.section("Nope").exists());
    CHECK(worker.get<int>("interval_seconds") == 30);
    CHECK(c.value("Servers:1:Host") == "y");
    CHECK(c.section("Servers").children() == std::vector<std::string>{"0", "1"});
    auto bound = worker.bind<worker_settings>();
    CHECK(bound.interval_seconds == 30);
    CHECK(bound.name == "nightly");
    CHECK(bound.enabled);
    CHECK(bound.tags == std::vector<std::string>{"a", "b"});
    CHECK(c.value("Worker:ratio") == "0.25"); // as written, not 2.5E-1
    CHECK(bound.interval == 0); // missing: the default
    // Case does not matter, and a string member keeps its text as it is.
    auto odd = hosting::configuration::from({hosting::memory_source({{"W:NAME", "007"}, {"W:Enabled", "TRUE"}})});
    auto w = odd.section("W").bind<worker_settings>();
    CHECK(w.name == "007");
    CHECK(w.enabled);
}

TEST_CASE("configuration: every error names what is wrong", "[configuration]")
{
    scratch_dir dir;
    dir.write("bad.json", "{\n  \"a\": 1,\n  \"b\": tru\n}\n");
    CHECK_THROWS_MATCHES(hosting::configuration::from({hosting::json_file_source(dir.file("bad.json"))}),
                         hosting::configuration_error,
                         Catch::Message("configuration: " + dir.file("bad.json") +
                                        ":3:8: malformed JSON (syntax error)"));
    dir.write("array.json", "[1, 2]");
    CHECK_THROWS_MATCHES(hosting::configuration::from({hosting::json_file_source(dir.file("array.json"))}),
                         hosting::configuration_error,
                         Catch::Message("configuration: " + dir.file("array.json") +
                                        ": the top level must be a JSON object"));
    CHECK_THROWS_MATCHES(hosting::configuration::from({hosting::json_file_source(dir.file("none.json"), false)}),
                         hosting::configuration_error,
                         Catch::Message("configuration: required file '" + dir.file("none.json") + "' not found"));
    CHECK_NOTHROW(hosting::configuration::from({hosting::json_file_source(dir.file("none.json"), true)}));

    auto c = hosting::configuration::from({hosting::memory_source({{"Worker:Interval", "soon"}, {"Worker:On", "yes"}})});
    CHECK_THROWS_MATCHES(c.get<int>("Worker:Missing"), hosting::configuration_error,
                         Catch::Message("configuration: missing required key 'Worker:Missing'"));
    CHECK_THROWS_MATCHES(c.section("Worker").get<int>("Missing"), hosting::configuration_error,
                         Catch::Message("configuration: missing required key 'Worker:Missing'"));
    CHECK_THROWS_MATCHES(c.get<int>("Worker:Interval"), hosting::configuration_error,
                         Catch::Message("configuration: key 'Worker:Interval' has value \"soon\", which is not an integer"));
    CHECK_THROWS_MATCHES(c.get<int>("Worker:Interval", 5), hosting::configuration_error,
                         Catch::Message("configuration: key 'Worker:Interval' has value \"soon\", which is not an integer"));
    CHECK_THROWS_MATCHES(c.get<bool>("Worker:On"), hosting::configuration_error,
                         Catch::Message("configuration: key 'Worker:On' has value \"yes\", which is not a boolean (true or false)"));
    CHECK_THROWS_MATCHES(c.section("Worker").bind<worker_settings>(), hosting::configuration_error,
                         Catch::Message("configuration: key 'Worker:Interval' has value \"soon\", which is not an integer"));
}

TEST_CASE("configuration: a malformed appsettings.json stops create_builder with file, line and column", "[configuration]")
{
    scratch_dir dir;
    dir.write("appsettings.json", "{ \"Hosting\": { \"ShutdownTimeoutSeconds\": } }");
    CHECK_THROWS_WITH(hosting::host::create_builder(),
                      Catch::Contains("appsettings.json:1:42: malformed JSON (syntax error)"));
}

TEST_CASE("configuration: Hosting options and log levels come from configuration", "[configuration]")
{
    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    builder.options().shutdown_timeout = std::chrono::seconds(1);
    builder.configuration().add_source(hosting::memory_source({
        {"Hosting:ShutdownTimeoutSeconds", "2.5"},
        {"Hosting:WorkerThreads", "3"},
        {"Hosting:BackgroundServiceExceptionBehavior", "Ignore"},
        {"Hosting:ServicesStopConcurrently", "true"},
        {"Logging:LogLevel:Default", "Warning"},
        {"Logging:LogLevel:app.noisy", "Error"},
    }));
    auto host = builder.build();
    const auto& options = host.services().get<hosting::host_options>();
    CHECK(options.shutdown_timeout == std::chrono::milliseconds(2500)); // configuration wins over code
    CHECK(options.worker_threads == 3);
    CHECK(options.background_service_exception_behavior == hosting::background_service_exception_behavior::ignore);
    CHECK(options.services_stop_concurrently);
    auto& loggers = host.services().get<hosting::logger_factory>();
    CHECK(loggers.level_for("anything") == spdlog::level::warn);
    CHECK(loggers.level_for("app.noisy.part") == spdlog::level::err);
    CHECK(host.services().get<hosting::configuration>().value("Hosting:WorkerThreads") == "3");

    auto bad = hosting::host::create_builder();
    bad.configuration().add_source(hosting::memory_source({{"Hosting:BackgroundServiceExceptionBehavior", "Explode"}}));
    CHECK_THROWS_WITH(bad.build(), "configuration: key 'Hosting:BackgroundServiceExceptionBehavior' has value "
                                   "\"Explode\", which is not StopHost or Ignore");
    auto bad_level = hosting::host::create_builder();
    bad_level.configuration().add_source(hosting::memory_source({{"Logging:LogLevel:Default", "Loud"}}));
    CHECK_THROWS_WITH(bad_level.build(), Catch::StartsWith("configuration: key 'Logging:LogLevel:Default' has value \"Loud\""));
}

TEST_CASE("configuration: the JSON console format and upper-case keys through configuration", "[configuration]")
{
    ::setenv("LOGGING__LOGLEVEL__DEFAULT", "Error", 1);
    ::setenv("Logging__LogLevel__Some__Section", "x", 1); // a section, not a level: ignored
    auto builder = hosting::host::create_builder();
    builder.use_console_lifetime(false);
    builder.configuration().add_source(hosting::memory_source({{"Logging:Console:FormatterName", "json"}}));
    auto host = builder.build();
    ::unsetenv("LOGGING__LOGLEVEL__DEFAULT");
    ::unsetenv("Logging__LogLevel__Some__Section");
    auto& loggers = host.services().get<hosting::logger_factory>();
    CHECK(loggers.level_for("x") == spdlog::level::err);
    REQUIRE(loggers.options().sinks.size() == 1);
    CHECK(dynamic_cast<hosting::json_console_sink*>(loggers.options().sinks.front().get()) != nullptr);
}

TEST_CASE("configuration: Development logs at debug unless configured, and names its environment", "[configuration]")
{
    {
        std::vector<std::string> args{"/usr/local/bin/reporter"};
        std::vector<char*> argv{args[0].data()};
        auto builder = hosting::host::create_builder(1, argv.data());
        CHECK(builder.environment().application_name == "reporter");
        CHECK(builder.environment().content_root == fs::current_path().string());
    }
    ::setenv("HOSTING_ENVIRONMENT", "Development", 1);
    {
        auto builder = hosting::host::create_builder();
        builder.use_console_lifetime(false);
        auto host = builder.build();
        CHECK(host.services().get<hosting::host_environment>().is_development());
        CHECK(host.services().get<hosting::logger_factory>().level_for("x") == spdlog::level::debug);
    }
    {
        auto builder = hosting::host::create_builder();
        builder.use_console_lifetime(false);
        builder.configuration().add_source(hosting::memory_source({{"Logging:LogLevel:Default", "Information"}}));
        auto host = builder.build();
        CHECK(host.services().get<hosting::logger_factory>().level_for("x") == spdlog::level::info);
    }
    ::unsetenv("HOSTING_ENVIRONMENT");
}

TEST_CASE("configuration: SIGHUP reloads the files and a broken file keeps the old values", "[configuration][signals]")
{
    scratch_dir dir;
    dir.write("appsettings.json", R"({"Worker": {"Message": "first"}})");
    auto sink = std::make_shared<test::capture_sink>();
    auto builder = hosting::host::create_builder();
    builder.logging().sinks.push_back(sink);
    auto host = builder.build(); // console lifetime on: it owns SIGHUP
    auto& config = host.services().get<hosting::configuration>();
    test::recorder changes;
    config.on_change([&] { changes.add("changed to " + config.value("Worker:Message").value_or("?")); });
    host.start_blocking();

    dir.write("appsettings.json", R"({"Worker": {"Message": "second"}})");
    ::kill(::getpid(), SIGHUP);
    REQUIRE(changes.wait_for("changed to second"));

    dir.write("appsettings.json", "{\"Worker\": {\"Message\": ");
    ::kill(::getpid(), SIGHUP);
    REQUIRE(sink->wait_for("Configuration reload failed; keeping the previous configuration"));
    CHECK(sink->has("appsettings.json:1:24: malformed JSON", spdlog::level::err));
    CHECK(config.value("Worker:Message") == "second");
    CHECK(changes.count("changed to second") == 1);
    host.stop_blocking();
    CHECK(host.exit_code() == 0);
}

TEST_CASE("configuration: the JSON console format writes one object per line", "[configuration]")
{
    std::FILE* out = std::tmpfile();
    {
        auto sink = std::make_shared<hosting::json_console_sink>(out);
        spdlog::logger log("app", sink);
        log.warn("disk \"almost\" full");
    }
    std::rewind(out);
    char buf[512] = {};
    auto n = std::fread(buf, 1, sizeof buf - 1, out);
    std::fclose(out);
    std::string line(buf, n);
    CHECK(line.find(R"("level":"warning","category":"app","message":"disk \"almost\" full"})") != std::string::npos);
    CHECK(line.back() == '\n');
    CHECK(std::count(line.begin(), line.end(), '\n') == 1);
}

TEST_CASE("configuration: JSON held in memory reads as a file does, and names itself in errors", "[configuration]")
{
    auto config = hosting::configuration::from(
        {hosting::json_text_source("// settings\n{\"Worker\": {\"Runs\": 3, \"Hosts\": [\"a\", \"b\",],},}")});
    CHECK(config.get<int>("Worker:Runs") == 3);
    CHECK(config.get<std::string>("Worker:Hosts:1") == "b");

    try {
        hosting::configuration::from({hosting::json_text_source("{\n  \"a\": 1,\n  \"b\": }", "the vault's answer")});
        FAIL("malformed JSON was accepted");
    } catch (const hosting::configuration_error& e) {
        CHECK(std::string(e.what()).find("the vault's answer:3:") != std::string::npos);
    }
}
