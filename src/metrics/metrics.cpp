#include <hosting/metrics/metrics.hpp>

#include <hosting/core/host_builder.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <variant>

namespace hosting {

namespace {

bool valid_metric_name(std::string_view name)
{
    if (name.empty())
        return false;
    for (std::size_t i = 0; i < name.size(); ++i) {
        const char c = name[i];
        const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9'))
            return false;
    }
    return true;
}

void check_labels(std::string_view metric, const metric_labels& labels, bool histogram)
{
    for (std::size_t i = 0; i < labels.size(); ++i) {
        const auto& name = labels[i].first;
        bool ok = !name.empty() && name.find(':') == std::string::npos && valid_metric_name(name) &&
                  name.rfind("__", 0) != 0 && !(histogram && name == "le");
        if (!ok)
            throw std::invalid_argument("metrics: metric '" + std::string(metric) + "' has an invalid label name '" +
                                        name + "'");
        for (std::size_t j = 0; j < i; ++j)
            if (labels[j].first == name)
                throw std::invalid_argument("metrics: metric '" + std::string(metric) + "' repeats the label '" +
                                            name + "'");
    }
}

void append_number(std::string& out, double value)
{
    if (std::isnan(value)) {
        out += "NaN";
        return;
    }
    if (std::isinf(value)) {
        out += value > 0 ? "+Inf" : "-Inf";
        return;
    }
    char buffer[64];
    auto result = std::to_chars(buffer, buffer + sizeof buffer, value);
    out.append(buffer, result.ptr);
}

void append_escaped(std::string& out, std::string_view text, bool quote)
{
    for (char c : text) {
        if (c == '\\')
            out += "\\\\";
        else if (c == '\n')
            out += "\\n";
        else if (quote && c == '"')
            out += "\\\"";
        else
            out += c;
    }
}

// `{a="1",b="2"` without the closing brace, so that `le` can follow.
std::string open_labels(const metric_labels& labels)
{
    std::string out;
    for (const auto& [name, value] : labels) {
        out += out.empty() ? "{" : ",";
        out += name;
        out += "=\"";
        append_escaped(out, value, true);
        out += '"';
    }
    return out;
}

const char* type_name(metric_type type)
{
    switch (type) {
    case metric_type::counter: return "counter";
    case metric_type::gauge: return "gauge";
    case metric_type::histogram: return "histogram";
    }
    return "untyped";
}

void append_header(std::string& out, std::string_view name, std::string_view help, metric_type type)
{
    out += "# HELP ";
    out += name;
    out += ' ';
    append_escaped(out, help, false);
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type_name(type);
    out += '\n';
}

void append_sample(std::string& out, std::string_view name, const std::string& labels, double value)
{
    out += name;
    if (!labels.empty()) {
        out += labels;
        out += '}';
    }
    out += ' ';
    append_number(out, value);
    out += '\n';
}

} // namespace

void metric_counter::inc(double by)
{
    if (!(by >= 0))
        throw std::invalid_argument("metrics: a counter cannot be increased by a negative amount or NaN");
    value_.fetch_add(by, std::memory_order_relaxed);
}

metric_histogram::metric_histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(new std::atomic<std::uint64_t>[bounds_.size() + 1])
{
    for (std::size_t i = 0; i < bounds_.size(); ++i) {
        if (!std::isfinite(bounds_[i]))
            throw std::invalid_argument("metrics: histogram bounds must be finite");
        if (i > 0 && !(bounds_[i] > bounds_[i - 1]))
            throw std::invalid_argument("metrics: histogram bounds must be strictly increasing");
    }
    for (std::size_t i = 0; i <= bounds_.size(); ++i)
        buckets_[i].store(0, std::memory_order_relaxed);
}

void metric_histogram::observe(double value) noexcept
{
    if (std::isnan(value))
        return; // one NaN would poison the sum forever
    auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
    buckets_[static_cast<std::size_t>(it - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(value, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
}

metric_histogram::snapshot metric_histogram::collect() const
{
    snapshot s;
    s.bounds = bounds_;
    s.cumulative.resize(bounds_.size() + 1);
    std::uint64_t running = 0;
    for (std::size_t i = 0; i <= bounds_.size(); ++i) {
        running += buckets_[i].load(std::memory_order_relaxed);
        s.cumulative[i] = running;
    }
    // The count is the +Inf bucket, so the two always agree in the output
    // even while observations race with the scrape.
    s.count = running;
    s.sum = sum_.load(std::memory_order_relaxed);
    return s;
}

std::vector<double> default_duration_buckets()
{
    return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

// ---------------------------------------------------------------------------

struct metrics_writer::family {
    std::string name;
    std::string help;
    metric_type type;
    std::vector<std::pair<std::string, double>> samples; // opened labels, value
};

void metrics_writer::counter(std::string_view name, std::string_view help, const metric_labels& labels, double value)
{
    sample(name, help, metric_type::counter, labels, value);
}

void metrics_writer::gauge(std::string_view name, std::string_view help, const metric_labels& labels, double value)
{
    sample(name, help, metric_type::gauge, labels, value);
}

void metrics_writer::sample(std::string_view name, std::string_view help, metric_type type,
                            const metric_labels& labels, double value)
{
    if (!valid_metric_name(name))
        throw std::invalid_argument("metrics: invalid metric name '" + std::string(name) + "'");
    check_labels(name, labels, false);
    auto& families = *families_;
    auto it = std::find_if(families.begin(), families.end(), [&](const auto& f) { return f->name == name; });
    if (it == families.end()) {
        families.push_back(std::make_unique<family>(family{std::string(name), std::string(help), type, {}}));
        it = std::prev(families.end());
    } else if ((*it)->type != type) {
        throw std::invalid_argument("metrics: metric '" + std::string(name) + "' is written with two types");
    }
    (*it)->samples.emplace_back(open_labels(labels), value);
}

struct metrics_registry::family {
    struct series {
        metric_labels labels;
        std::string opened; // rendered labels, computed once
        std::variant<std::unique_ptr<metric_counter>, std::unique_ptr<metric_gauge>, std::unique_ptr<metric_histogram>>
            metric;
    };
    std::string name;
    std::string help;
    metric_type type;
    std::vector<std::unique_ptr<series>> all;

    series* find(const metric_labels& labels)
    {
        for (auto& s : all)
            if (s->labels == labels)
                return s.get();
        return nullptr;
    }
};

metrics_registry::metrics_registry() = default;
metrics_registry::~metrics_registry() = default;

metrics_registry::family& metrics_registry::find_or_add(std::string_view name, std::string_view help,
                                                        metric_type type)
{
    if (!valid_metric_name(name))
        throw std::invalid_argument("metrics: invalid metric name '" + std::string(name) + "'");
    for (auto& f : families_) {
        if (f->name != name)
            continue;
        if (f->type != type)
            throw std::invalid_argument("metrics: metric '" + std::string(name) + "' is already registered as a " +
                                        type_name(f->type));
        return *f;
    }
    families_.push_back(std::make_unique<family>(family{std::string(name), std::string(help), type, {}}));
    return *families_.back();
}

template <class Metric>
Metric& metrics_registry::series_of(std::string_view name, std::string_view help, metric_type type,
                                    const metric_labels& labels, std::unique_ptr<Metric> made)
{
    std::lock_guard lock(mutex_);
    auto& f = find_or_add(name, help, type);
    auto* s = f.find(labels);
    if (!s)
        s = f.all.emplace_back(std::make_unique<family::series>(family::series{labels, open_labels(labels), std::move(made)}))
                .get();
    return *std::get<std::unique_ptr<Metric>>(s->metric);
}

metric_counter& metrics_registry::counter(std::string_view name, std::string_view help, const metric_labels& labels)
{
    check_labels(name, labels, false);
    return series_of(name, help, metric_type::counter, labels, std::make_unique<metric_counter>());
}

metric_gauge& metrics_registry::gauge(std::string_view name, std::string_view help, const metric_labels& labels)
{
    check_labels(name, labels, false);
    return series_of(name, help, metric_type::gauge, labels, std::make_unique<metric_gauge>());
}

metric_histogram& metrics_registry::histogram(std::string_view name, std::string_view help,
                                              std::vector<double> bounds, const metric_labels& labels)
{
    check_labels(name, labels, true);
    return series_of(name, help, metric_type::histogram, labels, std::make_unique<metric_histogram>(std::move(bounds)));
}

void metrics_registry::add_collector(std::function<void(metrics_writer&)> collector)
{
    if (!collector)
        throw std::invalid_argument("metrics: add_collector got an empty function");
    std::lock_guard lock(mutex_);
    collectors_.push_back(std::move(collector));
}

std::string metrics_registry::render() const
{
    std::string out;
    std::vector<std::function<void(metrics_writer&)>> collectors;
    {
        std::lock_guard lock(mutex_);
        for (const auto& f : families_) {
            if (f->all.empty())
                continue;
            append_header(out, f->name, f->help, f->type);
            for (const auto& s : f->all) {
                if (f->type == metric_type::histogram) {
                    auto snap = std::get<2>(s->metric)->collect();
                    const std::string bucket = f->name + "_bucket";
                    for (std::size_t i = 0; i <= snap.bounds.size(); ++i) {
                        std::string labels = s->opened.empty() ? "{" : s->opened + ",";
                        labels += "le=\"";
                        append_number(labels, i < snap.bounds.size() ? snap.bounds[i] : INFINITY);
                        labels += '"';
                        append_sample(out, bucket, labels, static_cast<double>(snap.cumulative[i]));
                    }
                    append_sample(out, f->name + "_sum", s->opened, snap.sum);
                    append_sample(out, f->name + "_count", s->opened, static_cast<double>(snap.count));
                } else if (f->type == metric_type::counter) {
                    append_sample(out, f->name, s->opened, std::get<0>(s->metric)->value());
                } else {
                    append_sample(out, f->name, s->opened, std::get<1>(s->metric)->value());
                }
            }
        }
        collectors = collectors_;
    }
    // Outside the lock: a collector may itself create a series.
    std::vector<std::unique_ptr<metrics_writer::family>> written;
    metrics_writer writer;
    writer.families_ = &written;
    for (const auto& collect : collectors)
        collect(writer);
    for (const auto& f : written) {
        append_header(out, f->name, f->help, f->type);
        for (const auto& [labels, value] : f->samples)
            append_sample(out, f->name, labels, value);
    }
    return out;
}

namespace {
// What add_metrics keeps on the builder.
struct metrics_feature {
    explicit metrics_feature(host_builder& builder) : registry(std::make_shared<metrics_registry>())
    {
        builder.on_build([r = registry](host_builder& b) { b.services().add_singleton<metrics_registry>(r); });
    }
    std::shared_ptr<metrics_registry> registry;
};
} // namespace

std::shared_ptr<metrics_registry> add_metrics(host_builder& builder)
{
    return builder.feature<metrics_feature>().registry;
}

} // namespace hosting
