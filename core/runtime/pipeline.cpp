#include "core/runtime/pipeline.hpp"
#include "core/io/text_file.hpp"

#include "core/base/error.hpp"
#include "core/base/memory.hpp"

#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <optional>
#include <regex>
#include <set>

namespace fs = std::filesystem;

namespace squish {

std::string SourceLoc::str() const {
  if (line <= 0) return file;
  return fmt::format("{}:{}:{}", file, line, column);
}

namespace {

// [A-Za-z_][A-Za-z0-9_]* (with '-' after the first character when allow_dash): ASCII only. Checked
// by hand: a std::regex built per name was most of a pipeline load's time.
bool is_identifier(std::string_view s, bool allow_dash) {
  auto alpha = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  if (s.empty() || !alpha(s[0])) return false;
  for (char c : s.substr(1))
    if (!alpha(c) && !(c >= '0' && c <= '9') && !(allow_dash && c == '-')) return false;
  return true;
}

constexpr uint64_t kMaxPipelineBytes = 1 << 20;  // pipelines are hand-written: a few KB
constexpr int kMaxYamlDepth = 64;                // they nest 4 deep

// yaml-cpp parses recursively: hostile nesting would overflow the stack, so it is bounded first.
// Flow collections nest by brackets; block collections by indentation, each level at least one
// column (or a "- "/"? " indicator) further in, so the indentation bounds their depth.
std::optional<std::string> yaml_too_deep(std::string_view t) {
  int flow = 0;
  size_t line_start = 0;
  bool in_single = false, in_double = false, escaped = false, comment = false, at_line_start = true;
  for (size_t i = 0; i < t.size(); ++i) {
    const char c = t[i];
    if (c == '\n') {
      line_start = i + 1, at_line_start = true, comment = false;
      continue;
    }
    if (at_line_start) {
      if (c == ' ' || c == '\t' || c == '-' || c == '?' || c == ':') {
        if (i - line_start > size_t(4 * kMaxYamlDepth)) return fmt::format("indented deeper than {} columns", 4 * kMaxYamlDepth);
        continue;
      }
      at_line_start = false;
    }
    if (comment) continue;
    if (in_double) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_double = false;
    } else if (in_single) {
      if (c == '\'') in_single = false;
    } else if (c == '"') {
      in_double = true;
    } else if (c == '\'') {
      in_single = true;
    } else if (c == '#') {
      comment = true;
    } else if (c == '[' || c == '{') {
      if (++flow > kMaxYamlDepth) return fmt::format("nested deeper than {} levels", kMaxYamlDepth);
    } else if (c == ']' || c == '}') {
      flow = std::max(0, flow - 1);
    }
  }
  return std::nullopt;
}

class Loader {
 public:
  Loader(std::string file, const std::vector<std::pair<std::string, std::string>>& overrides, PluginHost& host)
      : file_(std::move(file)), overrides_(overrides), host_(host) {}

  Pipeline run() {
    YAML::Node root;
    std::string text;
    try {
      text = read_text_file(file_, "pipeline file", kMaxPipelineBytes);
    } catch (const Error& e) {
      throw Error(ExitCode::Usage, e.what());
    }
    if (const auto why = yaml_too_deep(text)) fail(ExitCode::Usage, "{}: {}", file_, *why);
    try {
      root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
      fail(ExitCode::Usage, "{}: YAML syntax error: {}", loc(e.mark).str(), e.msg);
    } catch (const YAML::Exception& e) {
      fail(ExitCode::Usage, "{}: invalid YAML: {}", file_, e.msg);
    }
    p_.file = file_;
    if (!root.IsMap()) err(root, "pipeline file must be a YAML mapping");
    check_keys(root, {"name", "description", "plugins", "plugin_paths", "variables", "settings", "nodes", "edges"});
    p_.name = scalar(root, "name", true);
    if (root["description"]) p_.description = scalar(root, "description", false);
    read_variables(root["variables"]);
    apply_variable_overrides();
    read_plugins(root);
    read_settings(root["settings"]);
    read_nodes(root["nodes"]);
    read_edges(root["edges"]);
    check_graph();
    check_outputs();
    return std::move(p_);
  }

 private:
  std::string file_;
  const std::vector<std::pair<std::string, std::string>>& overrides_;
  PluginHost& host_;
  Pipeline p_;
  mutable size_t converted_ = 0;  // YAML values converted so far (any())

  SourceLoc loc(const YAML::Mark& m) const {
    if (m.is_null()) return {file_, 0, 0};
    return {file_, m.line + 1, m.column + 1};
  }
  SourceLoc loc(const YAML::Node& n) const { return loc(n.Mark()); }

  template <typename... Args>
  [[noreturn]] void err(const YAML::Node& at, fmt::format_string<Args...> f, Args&&... args) const {
    throw Error(ExitCode::Usage, loc(at).str() + ": " + fmt::format(f, std::forward<Args>(args)...));
  }

  static std::string suggestion(const std::string& key, const std::vector<std::string>& allowed) {
    std::string best;
    size_t bd = SIZE_MAX;
    for (const auto& a : allowed) {
      size_t d = edit_distance(key, a);
      if (d < bd) bd = d, best = a;
    }
    if (bd <= std::max<size_t>(2, key.size() / 3)) return fmt::format(" (did you mean '{}'?)", best);
    return fmt::format(" (allowed: {})", fmt::join(allowed, ", "));
  }

  void check_keys(const YAML::Node& map, const std::vector<std::string>& allowed) const {
    for (auto it = map.begin(); it != map.end(); ++it) {
      const auto key = it->first.Scalar();
      if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
        err(it->first, "unknown key '{}'{}", key, suggestion(key, allowed));
    }
  }

  std::string scalar(const YAML::Node& map, const char* key, bool required) const {
    const auto n = map[key];
    if (!n) {
      if (required) err(map, "missing required key '{}'", key);
      return "";
    }
    if (!n.IsScalar()) err(n, "'{}' must be a string", key);
    return n.Scalar();
  }

  void read_variables(const YAML::Node& vars) {
    p_.variables["pipeline_dir"] = {fs::absolute(fs::path(file_)).parent_path().string(), true, "directory of the pipeline file"};
    if (!vars) return;
    if (!vars.IsMap()) err(vars, "'variables' must be a mapping of name: default");
    for (auto it = vars.begin(); it != vars.end(); ++it) {
      const auto name = it->first.Scalar();
      if (!is_identifier(name, false)) err(it->first, "bad variable name '{}'", name);
      PipelineVariable v;
      const YAML::Node val = it->second;  // by value: it->second belongs to a temporary proxy
      if (val.IsNull()) {
        v.set = false;  // required
      } else if (val.IsScalar()) {
        v.value = val.Scalar();
        v.set = true;
      } else if (val.IsMap()) {
        check_keys(val, {"default", "help"});
        if (val["help"]) v.help = val["help"].Scalar();
        if (val["default"] && !val["default"].IsNull()) {
          if (!val["default"].IsScalar()) err(val["default"], "variable default must be a scalar");
          v.value = val["default"].Scalar();
          v.set = true;
        }
      } else {
        err(val, "variable '{}' must be a scalar default, ~ (required) or {{default, help}}", name);
      }
      p_.variables[name] = v;
    }
  }

  void apply_variable_overrides() {
    for (const auto& [key, value] : overrides_) {
      if (key.find('.') != std::string::npos) continue;  // node parameter, applied later
      auto it = p_.variables.find(key);
      if (it == p_.variables.end()) {
        std::vector<std::string> names;
        for (auto& [n, v] : p_.variables) names.push_back(n);
        fail(ExitCode::Usage, "{}: --set {}: the pipeline has no variable '{}'{}", file_, key, key, suggestion(key, names));
      }
      it->second.value = value;
      it->second.set = true;
    }
  }

  // Replaces ${name} references; `at` locates errors. A variable's value (its default or a
  // --set value) may itself refer to other variables ("${output}.squish"); those are expanded
  // when used, and a cycle is an error.
  std::string substitute(const std::string& s, const YAML::Node& at, std::vector<std::string>* expanding = nullptr) const {
    std::vector<std::string> stack;
    if (!expanding) expanding = &stack;
    std::string out;
    size_t i = 0;
    while (i < s.size()) {
      if (s.compare(i, 2, "${") == 0) {
        auto end = s.find('}', i);
        if (end == std::string::npos) err(at, "unterminated '${{' in '{}'", s);
        const auto name = s.substr(i + 2, end - i - 2);
        auto it = p_.variables.find(name);
        if (it == p_.variables.end()) err(at, "reference to undefined variable '{}'", name);
        if (!it->second.set) err(at, "variable '{}' is required: set it with --set {}=...", name, name);
        if (std::find(expanding->begin(), expanding->end(), name) != expanding->end())
          err(at, "variables refer to each other in a cycle: {} -> {}", fmt::join(*expanding, " -> "), name);
        expanding->push_back(name);
        out += substitute(it->second.value, at, expanding);
        if (out.size() > kMaxPipelineBytes) err(at, "'{}' expands to more than {} bytes", s, kMaxPipelineBytes);
        expanding->pop_back();
        i = end + 1;
      } else {
        out += s[i++];
      }
    }
    return out;
  }

  void read_plugins(const YAML::Node& root) {
    if (auto pp = root["plugin_paths"]) {
      if (!pp.IsSequence()) err(pp, "'plugin_paths' must be a list of directories");
      for (const auto& d : pp) p_.plugin_paths.push_back(substitute(d.Scalar(), d));
    }
    // Search path: build dir, $SQUISH_PLUGIN_PATH, then the pipeline's own paths.
    for (const auto& d : p_.plugin_paths) host_.add_search_path(d);
    auto pl = root["plugins"];
    if (!pl) err(root, "missing required key 'plugins'");
    if (!pl.IsSequence()) err(pl, "'plugins' must be a list of plugin names");
    for (const auto& n : pl) {
      if (!n.IsScalar()) err(n, "plugin entries must be names");
      const auto name = substitute(n.Scalar(), n);
      p_.plugins.push_back(name);
      try {
        host_.load(name);
      } catch (const Error& e) {
        throw Error(e.code(), loc(n).str() + ": " + e.what());
      }
    }
  }

  int positive_int(const YAML::Node& n, const char* what, int min) const {
    const auto s = substitute(n.Scalar(), n);
    int v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || ptr != s.data() + s.size() || v < min) err(n, "'{}' must be an integer >= {}, got '{}'", what, min, s);
    return v;
  }

  void read_settings(const YAML::Node& s) {
    if (!s) return;
    if (!s.IsMap()) err(s, "'settings' must be a mapping");
    check_keys(s, {"max_in_flight", "max_in_flight_bytes", "threads"});
    if (s["max_in_flight"]) p_.max_in_flight = positive_int(s["max_in_flight"], "max_in_flight", 1);
    if (const auto b = s["max_in_flight_bytes"]) {
      if (!b.IsScalar()) err(b, "'max_in_flight_bytes' must be auto, 0 or a size such as 4G");
      const std::string text = substitute(b.Scalar(), b);
      if (text != "auto") {
        const auto bytes = parse_byte_size(text);
        if (!bytes) err(b, "'max_in_flight_bytes' must be auto, 0 or a size such as 4G, got '{}'", text);
        p_.max_in_flight_bytes = *bytes;
      }
    }
    if (s["threads"]) p_.threads = positive_int(s["threads"], "threads", 0);
  }

  // Converts a YAML value (after substitution) to JSON of the declared type.
  nlohmann::json typed(const YAML::Node& n, ParamType type, const std::string& what) const {
    auto text = [&]() {
      if (!n.IsScalar()) err(n, "{} must be a {}", what, param_type_name(type));
      return substitute(n.Scalar(), n);
    };
    switch (type) {
      case ParamType::String: return text();
      case ParamType::Path:
      case ParamType::Output: return text();
      case ParamType::Int: {
        auto s = text();
        long long v = 0;
        auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc::result_out_of_range) err(n, "{} is out of range: '{}'", what, s);
        if (ec != std::errc() || ptr != s.data() + s.size()) err(n, "{} must be an integer, got '{}'", what, s);
        return v;
      }
      case ParamType::Float: {
        auto s = text();
        try {
          size_t used = 0;
          double v = std::stod(s, &used);
          if (used != s.size()) throw std::invalid_argument(s);
          if (!std::isfinite(v)) throw std::invalid_argument(s);  // nan, inf: never a meaningful setting
          return v;
        } catch (const std::exception&) {
          err(n, "{} must be a number, got '{}'", what, s);
        }
      }
      case ParamType::Bool: {
        auto s = text();
        if (s == "true" || s == "yes" || s == "on" || s == "1") return true;
        if (s == "false" || s == "no" || s == "off" || s == "0") return false;
        err(n, "{} must be true or false, got '{}'", what, s);
      }
      case ParamType::List: {
        if (n.IsScalar()) {  // from --set: a YAML flow sequence such as [a, b]
          auto s = text();
          YAML::Node parsed;
          if (yaml_too_deep(s)) err(n, "{} is nested too deeply", what);
          try { parsed = YAML::Load(s); } catch (const YAML::Exception&) { err(n, "{} must be a list, got '{}'", what, s); }
          if (!parsed.IsSequence()) err(n, "{} must be a list, got '{}'", what, s);
          return any(parsed);
        }
        if (!n.IsSequence()) err(n, "{} must be a list", what);
        return any(n);
      }
      case ParamType::Map:
        if (!n.IsMap()) err(n, "{} must be a mapping", what);
        return any(n);
      case ParamType::Any: return any(n);
    }
    return nullptr;
  }

  // A node parameter: its type, then what its spec requires of the value.
  nlohmann::json typed_param(const YAML::Node& n, const ParamSpec& ps, const std::string& what) const {
    nlohmann::json v = typed(n, ps.type, what);
    if ((ps.type == ParamType::Path || ps.type == ParamType::Output) && ps.required && v.get<std::string>().empty())
      err(n, "{} must be a non-empty path", what);
    if ((ps.type == ParamType::Int || ps.type == ParamType::Float) && !(v.get<double>() >= ps.min && v.get<double>() <= ps.max)) {
      const auto bound = [&](double b) { return ps.type == ParamType::Int ? fmt::format("{}", static_cast<long long>(b)) : fmt::format("{:g}", b); };
      if (ps.max >= 1e300) err(n, "{} must be >= {}, got {}", what, bound(ps.min), json_text(v));
      if (ps.min <= -1e300) err(n, "{} must be <= {}, got {}", what, bound(ps.max), json_text(v));
      err(n, "{} must be in [{}, {}], got {}", what, bound(ps.min), bound(ps.max), json_text(v));
    }
    return v;
  }

  // Untyped conversion: scalars become int, float, bool or string, in that order.
  // Aliases share nodes, so a small file can expand exponentially ("billion laughs"): the
  // converted size and depth are bounded.
  nlohmann::json any(const YAML::Node& n, int depth = 0) const {
    if (++converted_ > 100000 || depth > kMaxYamlDepth) err(n, "value is too large or deep (aliases expand to over 100000 values?)");
    if (n.IsNull()) return nullptr;
    if (n.IsSequence()) {
      auto a = nlohmann::json::array();
      for (const auto& e : n) a.push_back(any(e, depth + 1));
      return a;
    }
    if (n.IsMap()) {
      auto o = nlohmann::json::object();
      for (auto it = n.begin(); it != n.end(); ++it) o[it->first.Scalar()] = any(it->second, depth + 1);
      return o;
    }
    const auto s = substitute(n.Scalar(), n);
    if (n.Tag() == "!") return s;  // quoted: keep as string
    long long iv;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), iv);
    if (ec == std::errc() && p == s.data() + s.size() && !s.empty()) return iv;
    try {
      size_t used = 0;
      double d = std::stod(s, &used);
      if (used == s.size()) return d;
    } catch (const std::exception&) {}
    if (s == "true") return true;
    if (s == "false") return false;
    return s;
  }

  void read_nodes(const YAML::Node& nodes) {
    if (!nodes) fail(ExitCode::Usage, "{}: missing required key 'nodes'", file_);
    if (!nodes.IsMap() || nodes.size() == 0) err(nodes, "'nodes' must be a non-empty mapping of name: {{kind, params}}");
    std::set<std::string> names;
    for (auto it = nodes.begin(); it != nodes.end(); ++it) {
      PipelineNode pn;
      pn.name = it->first.Scalar();
      pn.loc = loc(it->first);
      if (!is_identifier(pn.name, true)) err(it->first, "bad node name '{}'", pn.name);
      if (!names.insert(pn.name).second) err(it->first, "duplicate node '{}'", pn.name);
      const YAML::Node body = it->second;  // by value: it->second belongs to a temporary proxy
      if (!body.IsMap()) err(body, "node '{}' must be a mapping with 'kind'", pn.name);
      check_keys(body, {"kind", "params", "parallel", "description"});
      pn.kind = scalar(body, "kind", true);
      try {
        pn.kind_info = &host_.at(pn.kind);
      } catch (const Error& e) {
        throw Error(ExitCode::Plugin, loc(body["kind"]).str() + ": " + e.what());
      }
      const NodeKind& k = *pn.kind_info;
      pn.concurrency = k.parallel ? 0 : 1;
      if (auto par = body["parallel"]) {
        const auto v = typed(par, ParamType::Any, "'parallel'");
        if (v.is_boolean()) pn.concurrency = v.get<bool>() ? 0 : 1;
        else if (v.is_number_unsigned() && v.get<uint64_t>() >= 1 && v.get<uint64_t>() <= 4096) pn.concurrency = v.get<int>();
        else err(par, "'parallel' must be true, false or an integer in 1..4096");
        if (pn.concurrency != 1 && !k.parallel) err(par, "node kind '{}' cannot run in parallel", k.name);
      }
      // Parameters: file values, then --set node.param overrides, then defaults.
      auto params = body["params"];
      if (params && !params.IsMap() && !params.IsNull()) err(params, "'params' must be a mapping");
      std::vector<std::string> allowed;
      for (const auto& ps : k.params) allowed.push_back(ps.name);
      std::map<std::string, YAML::Node> given;
      if (params && params.IsMap())
        for (auto pit = params.begin(); pit != params.end(); ++pit) {
          const auto key = pit->first.Scalar();
          if (std::find(allowed.begin(), allowed.end(), key) == allowed.end())
            err(pit->first, "node '{}' ({}) has no parameter '{}'{}", pn.name, k.name, key,
                allowed.empty() ? std::string(" (it takes none)") : suggestion(key, allowed));
          given[key] = pit->second;
        }
      for (const auto& [key, value] : overrides_) {
        auto dot = key.find('.');
        if (dot == std::string::npos || key.substr(0, dot) != pn.name) continue;
        const auto param = key.substr(dot + 1);
        if (std::find(allowed.begin(), allowed.end(), param) == allowed.end())
          fail(ExitCode::Usage, "--set {}: node '{}' ({}) has no parameter '{}'{}", key, pn.name, k.name, param,
               allowed.empty() ? std::string(" (it takes none)") : suggestion(param, allowed));
        YAML::Node v(value);  // a plain scalar: no location (command line)
        given[param] = v;
      }
      pn.params = nlohmann::json::object();
      for (const auto& ps : k.params) {
        auto g = given.find(ps.name);
        const std::string what = fmt::format("parameter '{}' of node '{}'", ps.name, pn.name);
        if (g != given.end() && !g->second.IsNull()) {
          const YAML::Node& v = g->second;
          if (v.Mark().is_null()) {  // from --set: errors name the option
            try {
              pn.params[ps.name] = typed_param(v, ps, what);
            } catch (const Error& e) {
              std::string m = e.what();
              fail(ExitCode::Usage, "--set {}.{}: {}", pn.name, ps.name, m.substr(m.find(": ") + 2));
            }
          } else {
            pn.params[ps.name] = typed_param(v, ps, what);
          }
        } else if (ps.required) {
          err(body, "node '{}' ({}) is missing required parameter '{}'{}", pn.name, k.name, ps.name,
              ps.help.empty() ? "" : " (" + ps.help + ")");
        } else {
          pn.params[ps.name] = ps.default_value;
        }
      }
      p_.nodes.push_back(std::move(pn));
    }
    for (const auto& [key, value] : overrides_) {
      auto dot = key.find('.');
      if (dot == std::string::npos) continue;
      if (!names.count(key.substr(0, dot)))
        fail(ExitCode::Usage, "--set {}: the pipeline has no node '{}'", key, key.substr(0, dot));
    }
  }

  void read_edges(const YAML::Node& edges) {
    if (!edges) return;
    if (!edges.IsSequence()) err(edges, "'edges' must be a list of \"from -> to\"");
    std::set<std::pair<std::string, std::string>> seen;
    for (const auto& e : edges) {
      PipelineEdge pe;
      pe.loc = loc(e);
      if (e.IsScalar()) {
        static const std::regex re(R"(\s*([A-Za-z0-9_-]+)\s*->\s*([A-Za-z0-9_-]+)\s*)");
        std::smatch m;
        const auto s = e.Scalar();
        if (!std::regex_match(s, m, re)) err(e, "edge must be written \"from -> to\", got '{}'", s);
        pe.from = m[1];
        pe.to = m[2];
      } else if (e.IsSequence() && e.size() == 2) {
        pe.from = e[0].Scalar();
        pe.to = e[1].Scalar();
      } else if (e.IsMap()) {
        check_keys(e, {"from", "to"});
        pe.from = scalar(e, "from", true);
        pe.to = scalar(e, "to", true);
      } else {
        err(e, "edge must be \"from -> to\", [from, to] or {{from, to}}");
      }
      for (const auto* end : {&pe.from, &pe.to})
        if (std::none_of(p_.nodes.begin(), p_.nodes.end(), [&](auto& n) { return n.name == *end; }))
          err(e, "edge refers to undefined node '{}'", *end);
      if (pe.from == pe.to) err(e, "edge from '{}' to itself", pe.from);
      if (!seen.insert({pe.from, pe.to}).second) err(e, "duplicate edge {} -> {}", pe.from, pe.to);
      p_.edges.push_back(std::move(pe));
    }
  }

  // Nothing a run writes may be one of its inputs: the same file (device and inode, so links and
  // other spellings count), or an existing file inside an input folder. Inputs that an earlier
  // node of the same pipeline writes (squish.yaml's artifacts folder) are the pipeline's own.
  void check_outputs() const {
    struct Use {
      fs::path path;
      const PipelineNode* node;
      std::string param;
    };
    std::vector<Use> inputs, outputs;
    for (const auto& n : p_.nodes)
      for (const auto& ps : n.kind_info->params) {
        if (ps.type != ParamType::Path && ps.type != ParamType::Output) continue;
        const auto& v = n.params[ps.name];
        if (!v.is_string() || v.get<std::string>().empty()) continue;
        (ps.type == ParamType::Path ? inputs : outputs).push_back({fs::absolute(v.get<std::string>()).lexically_normal(), &n, ps.name});
      }
    const auto within = [](const fs::path& p, const fs::path& dir) {
      auto d = dir.begin(), q = p.begin();
      for (; d != dir.end() && q != p.end(); ++d, ++q)
        if (*d != *q && !d->empty()) return false;
      return d == dir.end() || (std::next(d) == dir.end() && d->empty());
    };
    std::error_code ec;
    for (const auto& o : outputs) {
      if (!fs::exists(o.path, ec)) continue;
      for (const auto& i : inputs) {
        const bool own = std::any_of(outputs.begin(), outputs.end(),
                                     [&](const Use& w) { return upstream(w.node->name, i.node->name) && within(i.path, w.path); });
        if (own || !fs::exists(i.path, ec)) continue;
        const auto refuse = [&](const std::string& how) {
          fail(ExitCode::Usage, "{}: refusing to write {} (parameter '{}' of node '{}'): {} '{}' (parameter '{}' of node '{}')",
               p_.file, o.path.string(), o.param, o.node->name, how, i.path.string(), i.param, i.node->name);
        };
        if (fs::equivalent(o.path, i.path, ec)) refuse("it is the input");
        if (fs::is_regular_file(o.path, ec) && fs::is_directory(i.path, ec) && within(fs::canonical(o.path, ec), fs::canonical(i.path, ec)))
          refuse("it is a file inside the input folder");
      }
    }
  }

  // Whether node `a` runs before node `b` with a path of edges between them.
  bool upstream(const std::string& a, const std::string& b) const {
    std::vector<std::string> todo = p_.predecessors(b);
    std::set<std::string> seen;
    while (!todo.empty()) {
      const std::string n = todo.back();
      todo.pop_back();
      if (n == a) return true;
      if (seen.insert(n).second)
        for (auto& q : p_.predecessors(n)) todo.push_back(q);
    }
    return false;
  }

  void check_graph() {
    for (const auto& n : p_.nodes) {
      const auto preds = p_.predecessors(n.name);
      const auto role = n.kind_info->role;
      if (role != NodeRole::Source && preds.empty())
        fail(ExitCode::Usage, "{}: node '{}' ({}) has no input edge", n.loc.str(), n.name, n.kind);
    }
    // Topological order (Kahn); what remains is on a cycle.
    std::map<std::string, int> indeg;
    for (const auto& n : p_.nodes) indeg[n.name] = 0;
    for (const auto& e : p_.edges) indeg[e.to]++;
    std::vector<PipelineNode> order;
    std::vector<std::string> ready;
    for (const auto& n : p_.nodes)
      if (indeg[n.name] == 0) ready.push_back(n.name);
    while (!ready.empty()) {
      auto name = ready.front();
      ready.erase(ready.begin());
      order.push_back(p_.node(name));
      for (const auto& s : p_.successors(name))
        if (--indeg[s] == 0) ready.push_back(s);
    }
    if (order.size() != p_.nodes.size()) {
      std::vector<std::string> cyc;
      for (const auto& [n, d] : indeg)
        if (d > 0) cyc.push_back(n);
      const auto& at = std::find_if(p_.edges.begin(), p_.edges.end(), [&](auto& e) { return indeg[e.to] > 0; })->loc;
      fail(ExitCode::Usage, "{}: the graph has a cycle through nodes {}", at.str(), fmt::join(cyc, ", "));
    }
    p_.nodes = std::move(order);
  }
};

}  // namespace

Pipeline Pipeline::load(const std::string& path, const std::vector<std::pair<std::string, std::string>>& overrides,
                        PluginHost& host) {
  return Loader(path, overrides, host).run();
}

std::vector<std::string> Pipeline::predecessors(const std::string& node) const {
  std::vector<std::string> v;
  for (const auto& e : edges)
    if (e.to == node) v.push_back(e.from);
  return v;
}

std::vector<std::string> Pipeline::successors(const std::string& node) const {
  std::vector<std::string> v;
  for (const auto& e : edges)
    if (e.from == node) v.push_back(e.to);
  return v;
}

const PipelineNode& Pipeline::node(const std::string& name) const {
  for (const auto& n : nodes)
    if (n.name == name) return n;
  fail(ExitCode::Usage, "{}: no node '{}'", file, name);
}

std::string Pipeline::describe() const {
  std::string s = fmt::format("pipeline '{}' ({})\n", name, file);
  if (!description.empty()) s += "  " + description + "\n";
  s += fmt::format("  plugins: {}\n  settings: max_in_flight={} max_in_flight_bytes={} threads={}\n", fmt::join(plugins, ", "),
                   max_in_flight, max_in_flight_bytes ? std::to_string(*max_in_flight_bytes) : std::string("auto"),
                   threads == 0 ? std::string("all") : std::to_string(threads));
  s += "  variables:\n";
  for (const auto& [n, v] : variables)
    s += fmt::format("    {} = {}\n", n, v.set ? "'" + v.value + "'" : std::string("(unset)"));
  s += "  nodes (in execution order):\n";
  for (const auto& n : nodes) {
    s += fmt::format("    {} [{}{}]  {}\n", n.name, n.kind,
                     n.concurrency == 1 ? "" : n.concurrency == 0 ? ", parallel" : fmt::format(", parallel {}", n.concurrency),
                     json_text(n.params));
    for (const auto& to : successors(n.name)) s += fmt::format("      -> {}\n", to);
  }
  return s;
}

}  // namespace squish
