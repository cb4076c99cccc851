// Configuration: a tree of sections with string values, from layered sources.
#pragma once

#include <boost/describe/members.hpp>
#include <boost/describe/modifiers.hpp>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <boost/json/value_from.hpp>
#include <boost/mp11/algorithm.hpp>
#include <boost/json/value_to.hpp>

#include <charconv>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace hosting {

// Thrown for malformed sources (naming the file, line and column), missing
// required keys (naming the full path) and values of the wrong type (naming
// the key, the value and the type expected).
class configuration_error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Thrown by configuration::reload() when the new configuration was loaded
// and swapped in, but on_change subscribers threw. The message names how
// many failed and what each threw.
class configuration_change_error : public configuration_error {
public:
    using configuration_error::configuration_error;
};

// Keys compare without regard to case, as .NET users expect; ':' separates
// sections ("Worker:IntervalSeconds").
struct configuration_key_less {
    using is_transparent = void;
    bool operator()(std::string_view a, std::string_view b) const noexcept;
};
using configuration_values = std::map<std::string, std::string, configuration_key_less>;

// A source of key/value pairs. Later sources win over earlier ones.
class configuration_source {
public:
    virtual ~configuration_source() = default;
    // For messages: "appsettings.json", "environment variables", ...
    virtual std::string describe() const = 0;
    // Adds its pairs to `into`, overwriting. Throws configuration_error.
    virtual void load(configuration_values& into) const = 0;
};

// A JSON file: nested objects become sections, arrays get indexes as keys
// ("Servers:0:Host"), scalars become strings. A missing optional file adds
// nothing; a missing required one, or malformed JSON, is an error naming the
// file (with the line and column).
std::shared_ptr<configuration_source> json_file_source(std::string path, bool optional = true);
// JSON held in memory (fetched from elsewhere, or embedded), read as a file
// is; `name` stands for the file's path in errors.
std::shared_ptr<configuration_source> json_text_source(std::string text, std::string name = "JSON text");
// Environment variables, "__" standing for ':'; with a prefix, only the
// variables that start with it, with the prefix removed.
std::shared_ptr<configuration_source> environment_source(std::string prefix = {});
// Command-line arguments: --Key=Value, --Key Value, --Section:Key=Value
// (and /Key=Value). Anything else is ignored.
std::shared_ptr<configuration_source> command_line_source(std::vector<std::string> args);
// Pairs given in code.
std::shared_ptr<configuration_source> memory_source(configuration_values values);

namespace detail {
struct configuration_root;

// Parsing of one value into T; false when it does not parse.
bool parse_value(std::string_view text, bool& out);
bool parse_value(std::string_view text, double& out);
bool parse_value(std::string_view text, std::string& out);
template <class T>
    requires std::is_integral_v<T>
bool parse_value(std::string_view text, T& out)
{
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    return ec == std::errc() && end == text.data() + text.size();
}

std::string type_label(const std::type_info& type);
bool key_equals(std::string_view a, std::string_view b) noexcept;
[[noreturn]] void throw_wrong_type(const std::string& key, const boost::json::value& v, const std::type_info& type);
boost::json::value typed_leaves(const boost::json::value& v);

template <class T>
struct is_vector : std::false_type {};
template <class E, class A>
struct is_vector<std::vector<E, A>> : std::true_type {};

// Turns a section read with string leaves into the JSON that value_to<T>
// expects, guided by T where it can see T's shape.
template <class T>
boost::json::value shape(const boost::json::value& raw, const std::string& key)
{
    if constexpr (std::is_same_v<T, std::string>) {
        if (!raw.is_string())
            throw_wrong_type(key, raw, typeid(T));
        return raw;
    } else if constexpr (std::is_same_v<T, bool> || std::is_arithmetic_v<T>) {
        T out{};
        if (!raw.is_string() || !parse_value(std::string_view(raw.get_string()), out))
            throw_wrong_type(key, raw, typeid(T));
        return boost::json::value_from(out);
    } else if constexpr (is_vector<T>::value) {
        boost::json::array out;
        if (raw.is_array()) {
            std::size_t i = 0;
            for (const auto& item : raw.get_array())
                out.push_back(shape<typename T::value_type>(item, key + ":" + std::to_string(i++)));
        } else if (!raw.is_null()) {
            throw_wrong_type(key, raw, typeid(T));
        }
        return out;
    } else if constexpr (boost::describe::has_describe_members<T>::value) {
        static_assert(std::is_default_constructible_v<T>, "bind<T>: a described T needs a default constructor");
        boost::json::object out = boost::json::value_from(T{}).as_object();
        if (raw.is_object()) {
            boost::mp11::mp_for_each<boost::describe::describe_members<T, boost::describe::mod_public>>([&](auto m) {
                using member_type = std::remove_cvref_t<decltype(std::declval<T&>().*m.pointer)>;
                for (const auto& [k, v] : raw.get_object())
                    if (key_equals(k, m.name))
                        out[m.name] = shape<member_type>(v, key.empty() ? std::string(k) : key + ":" + std::string(k));
            });
        }
        return out;
    } else {
        return typed_leaves(raw);
    }
}
} // namespace detail

// A view of the configuration: the root, or one section of it. Reads always
// see the latest load (a reload swaps the whole tree at once), and are
// thread-safe. Cheap to copy.
class configuration {
public:
    // The value at `key` (relative to this section), if any.
    std::optional<std::string> value(std::string_view key) const;

    // The value at `key` as T (integers, floating point, bool, std::string).
    // Throws configuration_error naming the full key when it is missing, or
    // the key, the value and the type when it does not parse.
    template <class T>
    T get(std::string_view key) const
    {
        auto text = value(key);
        if (!text)
            throw configuration_error("configuration: missing required key '" + full_key(key) + "'");
        return convert<T>(key, *text);
    }

    // As get<T>(key), but `fallback` when the key is missing. A present
    // value of the wrong type is still an error: a typo must not silently
    // fall back.
    template <class T>
    T get(std::string_view key, T fallback) const
    {
        auto text = value(key);
        return text ? convert<T>(key, *text) : fallback;
    }

    configuration section(std::string_view name) const;
    // True when this section has any value (itself or below it).
    bool exists() const;
    // The names of the immediate children, in key order.
    std::vector<std::string> children() const;
    // The full path of this section ("" for the root).
    const std::string& path() const noexcept { return prefix_; }

    // This section as JSON: objects for sections, and for leaves a number
    // or a boolean when the text is one, a string otherwise.
    boost::json::value to_json(bool typed = true) const;

    // This section bound to T with Boost.JSON's value_to conventions.
    // For a struct described with BOOST_DESCRIBE_STRUCT, keys match members
    // without regard to case, missing members keep the values of T{}, extra
    // keys are ignored, and each value is read as its member's type (so a
    // std::string member keeps "007" as it is). Other types (tag_invoke)
    // get to_json(). Throws configuration_error naming the key and the type
    // when a value does not fit.
    template <class T>
    T bind() const
    {
        try {
            return boost::json::value_to<T>(detail::shape<T>(to_json(/*typed=*/false), prefix_));
        } catch (const configuration_error&) {
            throw;
        } catch (const std::exception& e) {
            throw configuration_error("configuration: section '" + prefix_ + "' does not bind to " +
                                      detail::type_label(typeid(T)) + ": " + e.what());
        }
    }

    // --- The root only ---------------------------------------------------

    // Loads every source again, in order, and swaps the result in; on an
    // error the previous configuration stays and configuration_error is
    // thrown. Then calls every on_change subscriber, in subscription order:
    // one that throws does not keep the others from running, and once all
    // have run, configuration_change_error says which failed (the new
    // configuration is in place by then).
    void reload();
    // Called (on the reloading thread) after each successful reload.
    // Returns an id for remove_on_change.
    std::size_t on_change(std::function<void()> callback);
    void remove_on_change(std::size_t id);

    // Appends a source (it wins over the earlier ones) and loads it now;
    // on an error the source is not added and the error is thrown.
    void add_source(std::shared_ptr<configuration_source> source);

    // A root built from sources, loaded now (throws configuration_error).
    static configuration from(std::vector<std::shared_ptr<configuration_source>> sources);

private:
    configuration(std::shared_ptr<detail::configuration_root> root, std::string prefix)
        : root_(std::move(root)), prefix_(std::move(prefix))
    {
    }

    std::string full_key(std::string_view key) const;

    template <class T>
    T convert(std::string_view key, const std::string& text) const
    {
        T out{};
        if (!detail::parse_value(text, out))
            throw configuration_error("configuration: key '" + full_key(key) + "' has value \"" + text +
                                      "\", which is not " + detail::type_label(typeid(T)));
        return out;
    }

    std::shared_ptr<detail::configuration_root> root_;
    std::string prefix_;
};

} // namespace hosting
