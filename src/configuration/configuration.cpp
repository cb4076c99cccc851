#include <hosting/configuration/configuration.hpp>
#include <hosting/core/services.hpp>

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/stream_parser.hpp>

#include <algorithm>
#include <charconv>
#include <cctype>
#include <fstream>
#include <mutex>
#include <sstream>

extern char** environ;

namespace hosting {

bool configuration_key_less::operator()(std::string_view a, std::string_view b) const noexcept
{
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
        return std::tolower(static_cast<unsigned char>(x)) < std::tolower(static_cast<unsigned char>(y));
    });
}

namespace {

bool iequals(std::string_view a, std::string_view b)
{
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

bool istarts_with(std::string_view s, std::string_view prefix)
{
    return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

void flatten(const boost::json::value& v, const std::string& key, configuration_values& into)
{
    switch (v.kind()) {
    case boost::json::kind::object:
        for (const auto& [k, child] : v.get_object())
            flatten(child, key.empty() ? std::string(k) : key + ":" + std::string(k), into);
        break;
    case boost::json::kind::array: {
        const auto& a = v.get_array();
        for (std::size_t i = 0; i < a.size(); ++i)
            flatten(a[i], key + ":" + std::to_string(i), into);
        break;
    }
    case boost::json::kind::string: into[key] = std::string(v.get_string()); break;
    case boost::json::kind::bool_: into[key] = v.get_bool() ? "true" : "false"; break;
    case boost::json::kind::null: into[key] = ""; break;
    case boost::json::kind::double_: {
        // The shortest text that reads back the same (5.0 -> "5", 0.25 ->
        // "0.25"); Boost.JSON's serializer would write "2.5E-1".
        char buf[64];
        auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v.get_double());
        into[key] = ec == std::errc() ? std::string(buf, end) : boost::json::serialize(v);
        break;
    }
    default: into[key] = boost::json::serialize(v); break;
    }
}

// Parses `text` (named `name` in errors) as .NET's appsettings.json readers
// do, comments and trailing commas included, into flattened pairs.
void load_json(const std::string& text, const std::string& name, configuration_values& into)
{
    boost::json::parse_options options;
    options.allow_comments = true;
    options.allow_trailing_commas = true;
    boost::json::stream_parser parser({}, options);
    boost::system::error_code ec;
    std::size_t consumed = parser.write(text.data(), text.size(), ec);
    if (!ec)
        parser.finish(ec);
    if (ec) {
        // Where it went wrong, as an editor counts: 1-based lines and columns.
        std::size_t line = 1, column = 1;
        for (std::size_t i = 0; i < std::min(consumed, text.size()); ++i) {
            if (text[i] == '\n') {
                ++line;
                column = 1;
            } else {
                ++column;
            }
        }
        throw configuration_error("configuration: " + name + ":" + std::to_string(line) + ":" +
                                  std::to_string(column) + ": malformed JSON (" + ec.message() + ")");
    }
    auto root = parser.release();
    if (!root.is_object())
        throw configuration_error("configuration: " + name + ": the top level must be a JSON object");
    flatten(root, "", into);
}

class json_file final : public configuration_source {
public:
    json_file(std::string path, bool optional) : path_(std::move(path)), optional_(optional) {}

    std::string describe() const override { return path_; }

    void load(configuration_values& into) const override
    {
        std::ifstream in(path_, std::ios::binary);
        if (!in) {
            if (optional_)
                return;
            throw configuration_error("configuration: required file '" + path_ + "' not found");
        }
        std::stringstream buffer;
        buffer << in.rdbuf();
        load_json(buffer.str(), path_, into);
    }

private:
    std::string path_;
    bool optional_;
};

class json_text final : public configuration_source {
public:
    json_text(std::string text, std::string name) : text_(std::move(text)), name_(std::move(name)) {}
    std::string describe() const override { return name_; }
    void load(configuration_values& into) const override { load_json(text_, name_, into); }

private:
    std::string text_;
    std::string name_;
};

class environment final : public configuration_source {
public:
    explicit environment(std::string prefix) : prefix_(std::move(prefix)) {}

    std::string describe() const override
    {
        return prefix_.empty() ? "environment variables" : "environment variables starting with " + prefix_;
    }

    void load(configuration_values& into) const override
    {
        for (char** e = environ; e && *e; ++e) {
            std::string_view entry = *e;
            auto eq = entry.find('=');
            if (eq == std::string_view::npos)
                continue;
            std::string_view name = entry.substr(0, eq);
            if (!prefix_.empty()) {
                if (!name.starts_with(prefix_))
                    continue;
                name.remove_prefix(prefix_.size());
            }
            if (name.empty())
                continue;
            std::string key;
            for (std::size_t i = 0; i < name.size(); ++i) {
                if (name[i] == '_' && i + 1 < name.size() && name[i + 1] == '_') {
                    key += ':';
                    ++i;
                } else {
                    key += name[i];
                }
            }
            into[key] = std::string(entry.substr(eq + 1));
        }
    }

private:
    std::string prefix_;
};

class command_line final : public configuration_source {
public:
    explicit command_line(std::vector<std::string> args) : args_(std::move(args)) {}

    std::string describe() const override { return "the command line"; }

    void load(configuration_values& into) const override
    {
        for (std::size_t i = 0; i < args_.size(); ++i) {
            std::string_view a = args_[i];
            if (a.starts_with("--"))
                a.remove_prefix(2);
            else if (a.starts_with("/") && a.find('=') != std::string_view::npos)
                a.remove_prefix(1); // only /Key=Value: a bare /path is a positional argument
            else
                continue;
            if (a.empty())
                continue;
            if (auto eq = a.find('='); eq != std::string_view::npos) {
                into[std::string(a.substr(0, eq))] = std::string(a.substr(eq + 1));
            } else if (i + 1 < args_.size() && !args_[i + 1].starts_with("--")) {
                into[std::string(a)] = args_[++i];
            }
        }
    }

private:
    std::vector<std::string> args_;
};

class memory final : public configuration_source {
public:
    explicit memory(configuration_values values) : values_(std::move(values)) {}
    std::string describe() const override { return "values set in code"; }
    void load(configuration_values& into) const override
    {
        for (const auto& [k, v] : values_)
            into[k] = v;
    }

private:
    configuration_values values_;
};

// A leaf's JSON: numbers and booleans where the text is one.
boost::json::value leaf(const std::string& text)
{
    if (iequals(text, "true"))
        return true;
    if (iequals(text, "false"))
        return false;
    std::int64_t i = 0;
    if (detail::parse_value(text, i))
        return i;
    double d = 0;
    if (!text.empty() && detail::parse_value(text, d))
        return d;
    return boost::json::string(text);
}

// Objects whose keys are exactly 0..n-1 were arrays in JSON: make them
// arrays again so that value_to<std::vector<T>> works.
boost::json::value arrays_back(boost::json::value v)
{
    if (!v.is_object())
        return v;
    auto& o = v.get_object();
    for (auto& [k, child] : o)
        child = arrays_back(std::move(child));
    bool indexed = !o.empty();
    for (std::size_t i = 0; indexed && i < o.size(); ++i)
        indexed = o.contains(std::to_string(i));
    if (!indexed)
        return v;
    boost::json::array a;
    for (std::size_t i = 0; i < o.size(); ++i)
        a.push_back(o.at(std::to_string(i)));
    return a;
}

} // namespace

std::shared_ptr<configuration_source> json_text_source(std::string text, std::string name)
{
    return std::make_shared<json_text>(std::move(text), std::move(name));
}

std::shared_ptr<configuration_source> json_file_source(std::string path, bool optional)
{
    return std::make_shared<json_file>(std::move(path), optional);
}
std::shared_ptr<configuration_source> environment_source(std::string prefix)
{
    return std::make_shared<environment>(std::move(prefix));
}
std::shared_ptr<configuration_source> command_line_source(std::vector<std::string> args)
{
    return std::make_shared<command_line>(std::move(args));
}
std::shared_ptr<configuration_source> memory_source(configuration_values values)
{
    return std::make_shared<memory>(std::move(values));
}

namespace detail {

struct configuration_root {
    mutable std::mutex mutex;
    std::vector<std::shared_ptr<configuration_source>> sources;
    std::shared_ptr<const configuration_values> values = std::make_shared<configuration_values>();
    std::map<std::size_t, std::function<void()>> subscribers;
    std::size_t next_id = 1;

    std::shared_ptr<const configuration_values> snapshot() const
    {
        std::lock_guard lock(mutex);
        return values;
    }

    // Loads are serialised, so a reload racing an add_source cannot swap in
    // a result that misses the new source.
    std::mutex load_mutex;

    // Loads everything; throws before anything is swapped in.
    void load()
    {
        std::lock_guard serial(load_mutex);
        std::vector<std::shared_ptr<configuration_source>> list;
        {
            std::lock_guard lock(mutex);
            list = sources;
        }
        auto fresh = std::make_shared<configuration_values>();
        for (const auto& s : list)
            s->load(*fresh);
        std::lock_guard lock(mutex);
        values = std::move(fresh);
    }
};

bool parse_value(std::string_view text, bool& out)
{
    if (iequals(text, "true"))
        out = true;
    else if (iequals(text, "false"))
        out = false;
    else
        return false;
    return true;
}

bool parse_value(std::string_view text, double& out)
{
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc() && end == text.data() + text.size();
}

bool parse_value(std::string_view text, std::string& out)
{
    out = std::string(text);
    return true;
}

bool key_equals(std::string_view a, std::string_view b) noexcept { return iequals(a, b); }

void throw_wrong_type(const std::string& key, const boost::json::value& v, const std::type_info& type)
{
    // Appended piece by piece: GCC 12 at -O3 warns (wrongly, -Wrestrict)
    // about "literal" + std::string here.
    std::string shown;
    if (v.is_string()) {
        shown = "\"";
        shown.append(v.get_string().data(), v.get_string().size());
        shown += "\"";
    } else {
        shown = boost::json::serialize(v);
    }
    throw configuration_error("configuration: key '" + key + "' has value " + shown + ", which is not " +
                              type_label(type));
}

boost::json::value typed_leaves(const boost::json::value& v)
{
    if (v.is_string())
        return leaf(std::string(v.get_string()));
    if (v.is_array()) {
        boost::json::array a;
        for (const auto& item : v.get_array())
            a.push_back(typed_leaves(item));
        return a;
    }
    if (v.is_object()) {
        boost::json::object o;
        for (const auto& [k, item] : v.get_object())
            o[k] = typed_leaves(item);
        return o;
    }
    return v;
}

std::string type_label(const std::type_info& type)
{
    if (type == typeid(bool))
        return "a boolean (true or false)";
    if (type == typeid(double) || type == typeid(float))
        return "a number";
    if (type == typeid(std::string))
        return "a string";
    if (type == typeid(int) || type == typeid(long) || type == typeid(long long) || type == typeid(short))
        return "an integer";
    if (type == typeid(unsigned) || type == typeid(unsigned long) || type == typeid(unsigned long long) ||
        type == typeid(unsigned short))
        return "a non-negative integer";
    return demangle(type);
}

} // namespace detail

configuration configuration::from(std::vector<std::shared_ptr<configuration_source>> sources)
{
    auto root = std::make_shared<detail::configuration_root>();
    root->sources = std::move(sources);
    root->load();
    return configuration(std::move(root), "");
}

std::string configuration::full_key(std::string_view key) const
{
    return prefix_.empty() ? std::string(key) : prefix_ + ":" + std::string(key);
}

std::optional<std::string> configuration::value(std::string_view key) const
{
    auto values = root_->snapshot();
    auto it = values->find(full_key(key));
    if (it == values->end())
        return std::nullopt;
    return it->second;
}

configuration configuration::section(std::string_view name) const { return configuration(root_, full_key(name)); }

bool configuration::exists() const
{
    auto values = root_->snapshot();
    if (prefix_.empty())
        return !values->empty();
    if (values->contains(prefix_))
        return true;
    auto it = values->lower_bound(prefix_ + ":");
    return it != values->end() && istarts_with(it->first, prefix_ + ":");
}

std::vector<std::string> configuration::children() const
{
    auto values = root_->snapshot();
    const std::string start = prefix_.empty() ? "" : prefix_ + ":";
    std::vector<std::string> out;
    for (auto it = values->lower_bound(start); it != values->end() && istarts_with(it->first, start); ++it) {
        std::string_view rest = std::string_view(it->first).substr(start.size());
        auto child = std::string(rest.substr(0, rest.find(':')));
        if (!child.empty() && (out.empty() || !iequals(out.back(), child)))
            out.push_back(std::move(child));
    }
    return out;
}

boost::json::value configuration::to_json(bool typed) const
{
    auto values = root_->snapshot();
    const std::string start = prefix_.empty() ? "" : prefix_ + ":";
    boost::json::value result = boost::json::object();
    for (auto it = values->lower_bound(start); it != values->end() && istarts_with(it->first, start); ++it) {
        std::string_view rest = std::string_view(it->first).substr(start.size());
        boost::json::value* node = &result;
        while (true) {
            auto colon = rest.find(':');
            auto part = std::string(rest.substr(0, colon));
            auto& object = node->is_object() ? node->get_object() : node->emplace_object();
            if (colon == std::string_view::npos) {
                // A section with children wins over a plain value of the same name.
                if (!object.contains(part) || !object.at(part).is_object())
                    object[part] = typed ? leaf(it->second) : boost::json::value(boost::json::string(it->second));
                break;
            }
            auto& child = object[part];
            if (!child.is_object())
                child = boost::json::object();
            node = &child;
            rest.remove_prefix(colon + 1);
        }
    }
    return arrays_back(std::move(result));
}

void configuration::add_source(std::shared_ptr<configuration_source> source)
{
    if (!source)
        throw std::invalid_argument("configuration: add_source got a null source");
    {
        std::lock_guard lock(root_->mutex);
        root_->sources.push_back(source);
    }
    try {
        root_->load();
    } catch (...) {
        std::lock_guard lock(root_->mutex);
        root_->sources.erase(std::find(root_->sources.begin(), root_->sources.end(), source));
        throw;
    }
}


void configuration::reload()
{
    root_->load();
    std::vector<std::function<void()>> callbacks;
    {
        std::lock_guard lock(root_->mutex);
        for (const auto& [id, cb] : root_->subscribers)
            callbacks.push_back(cb);
    }
    // Every subscriber runs: one that throws must not leave the others on
    // the old values while the new ones are already in place.
    std::size_t failed = 0;
    std::string failures;
    for (auto& cb : callbacks) {
        try {
            cb();
        } catch (const std::exception& e) {
            ++failed;
            failures += failures.empty() ? "" : "; ";
            failures += e.what();
        } catch (...) {
            ++failed;
            failures += failures.empty() ? "" : "; ";
            failures += "an exception not derived from std::exception";
        }
    }
    if (failed > 0)
        throw configuration_change_error("configuration: reloaded, but " + std::to_string(failed) + " of " +
                                         std::to_string(callbacks.size()) + " on_change subscribers threw: " +
                                         failures);
}

std::size_t configuration::on_change(std::function<void()> callback)
{
    std::lock_guard lock(root_->mutex);
    auto id = root_->next_id++;
    root_->subscribers.emplace(id, std::move(callback));
    return id;
}

void configuration::remove_on_change(std::size_t id)
{
    std::lock_guard lock(root_->mutex);
    root_->subscribers.erase(id);
}

} // namespace hosting
