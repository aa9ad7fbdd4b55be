#include "core/runtime/plugin_host.hpp"
#include "core/runtime/plugin_file.hpp"

#include "core/quant/type_registry.hpp"
#include "core/base/error.hpp"

#include <dlfcn.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

namespace fs = std::filesystem;

namespace squish {

namespace {
std::string build_plugin_dir() {
  std::error_code ec;
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    // A build tree keeps plugins in <build>/plugins, an installation in <prefix>/lib/squish/plugins.
    for (const char* rel : {"plugins", SQUISH_INSTALL_PLUGIN_RELDIR}) {
      auto candidate = exe.parent_path().parent_path() / rel;
      if (fs::is_directory(candidate, ec)) return candidate.string();
    }
  }
  return SQUISH_DEFAULT_PLUGIN_DIR;
}

// The host side of squish_host while one plugin registers its types.
struct TypeRegistration {
  std::string plugin, version, error;
  std::vector<std::string>* names;
};

int host_register_type(void* ctx, const squish_type* t) {
  auto* reg = static_cast<TypeRegistration*>(ctx);
  std::string problem = register_plugin_type(t, reg->plugin, reg->version);
  if (!problem.empty()) {
    if (reg->error.empty()) reg->error = std::move(problem);
    return 1;
  }
  reg->names->push_back(t->name);
  return 0;
}

const squish_type* host_find_type(void*, uint32_t id) {
  if (const PluginType* p = plugin_type(id)) return &p->ops;
  return builtin_type_ops(id);
}

const char* host_last_error(void* ctx) { return static_cast<TypeRegistration*>(ctx)->error.c_str(); }

// The major version first: before ABI 3 the rest of the info struct meant something else.
void check_abi(const std::string& path, uint32_t major, uint32_t minor) {
  if (major != SQUISH_ABI_MAJOR) {
    const std::string theirs = major < 3 ? fmt::format("{}", major) : fmt::format("{}.{}", major, minor);
    fail(ExitCode::Plugin, "{}: plugin ABI {} is incompatible with this squish-run (ABI {}.{}); rebuild the plugin", path, theirs,
         SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR);
  }
  if (minor > SQUISH_ABI_MINOR)
    fail(ExitCode::Plugin, "{}: plugin needs ABI {}.{}, newer than this squish-run's {}.{}; update squish-run", path, major, minor,
         SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR);
}

// Node kinds hand C++ objects across: the plugin must be built exactly as this squish-run.
void check_node_build(const std::string& path, const std::string& plugin, const char* cxx_build) {
  if (!cxx_build || std::strcmp(cxx_build, host_cxx_build()) != 0)
    fail(ExitCode::Plugin,
         "{}: plugin{} adds pipeline nodes, which need the build of this squish-run ({}) but it was built as ({}); rebuild it",
         path, plugin.empty() ? "" : " '" + plugin + "'", host_cxx_build(), cxx_build && *cxx_build ? cxx_build : "unknown");
}

}  // namespace

const char* host_cxx_build() { return SQUISH_CXX_BUILD; }

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

PluginHost::PluginHost(std::vector<std::string> extra_paths) {
  search_path_.push_back(build_plugin_dir());
  if (const char* env = std::getenv("SQUISH_PLUGIN_PATH")) {
    std::stringstream ss(env);
    std::string item;
    while (std::getline(ss, item, ':'))
      if (!item.empty()) search_path_.push_back(item);
  }
  for (auto& p : extra_paths) search_path_.push_back(std::move(p));
}

void PluginHost::load(const std::string& name_or_path) {
  std::string path;
  const bool is_path = name_or_path.find('/') != std::string::npos || name_or_path.ends_with(".so");
  std::vector<std::string> tried;
  // Names come from pipeline files and the command line: any string. The error_code overloads
  // keep a name the filesystem cannot even look up (too long, say) a "not found", not a throw.
  std::error_code ec;
  if (is_path) {
    path = name_or_path;
    tried.push_back(path);
    if (!fs::exists(path, ec))
      fail(ExitCode::Plugin, "plugin '{}' not found{}", name_or_path, ec ? fmt::format(" ({})", ec.message()) : "");
  } else {
    for (const auto& dir : search_path_) {
      auto candidate = (fs::path(dir) / ("squish_" + name_or_path + ".so")).string();
      tried.push_back(candidate);
      if (fs::exists(candidate, ec)) {
        path = candidate;
        break;
      }
    }
    if (path.empty())
      fail(ExitCode::Plugin, "plugin '{}' not found (looked for {}){}", name_or_path, fmt::join(tried, ", "),
           ec ? fmt::format(": {}", ec.message()) : "");
  }
  if (auto canonical = fs::weakly_canonical(path, ec); !ec) path = canonical.string();
  for (const auto& p : plugins_)
    if (p.path == path) return;

  // What the file says of itself, before loading it: dlopen would run its static constructors.
  const std::optional<squish_plugin_metadata> meta = read_plugin_metadata(path);
  if (meta) {
    check_abi(path, meta->abi_major, meta->abi_minor);
    if (meta->adds_nodes) check_node_build(path, "", meta->cxx_build);
  }

  void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) fail(ExitCode::Plugin, "{}: cannot load plugin: {}", path, ::dlerror());
  ::dlerror();
  void* sym = ::dlsym(handle, SQUISH_PLUGIN_ENTRY_SYMBOL);
  if (!sym) {
    ::dlclose(handle);
    fail(ExitCode::Plugin, "{}: not a Squish plugin: no '{}' entry point", path, SQUISH_PLUGIN_ENTRY_SYMBOL);
  }
  const squish_plugin_info* raw = reinterpret_cast<squish_plugin_entry_fn>(sym)();
  if (!raw) fail(ExitCode::Plugin, "{}: entry point returned no plugin info", path);
  check_abi(path, raw->abi_major, raw->abi_minor);
  if (meta && (raw->abi_major != meta->abi_major || raw->abi_minor != meta->abi_minor))
    fail(ExitCode::Plugin, "{}: plugin metadata says ABI {}.{} but its entry point {}.{}", path, meta->abi_major, meta->abi_minor,
         raw->abi_major, raw->abi_minor);
  constexpr size_t kMinInfo = offsetof(squish_plugin_info, register_types) + sizeof(raw->register_types);
  if (raw->struct_size < kMinInfo)
    fail(ExitCode::Plugin, "{}: plugin info of {} bytes is smaller than ABI {}.0's", path, raw->struct_size, SQUISH_ABI_MAJOR);
  // Only the fields the plugin compiled; what a later minor appended stays zero.
  squish_plugin_info info{};
  std::memcpy(&info, raw, std::min<size_t>(raw->struct_size, sizeof(info)));
  if (!info.name || !*info.name) fail(ExitCode::Plugin, "{}: plugin info lacks a name", path);
  if (!info.register_types && !info.register_nodes) fail(ExitCode::Plugin, "{}: plugin '{}' registers neither types nor nodes", path, info.name);
  if (info.register_nodes) check_node_build(path, info.name, info.cxx_build);
  if (meta && bool(info.register_nodes) != bool(meta->adds_nodes))
    fail(ExitCode::Plugin, "{}: plugin '{}': its metadata and its entry point disagree on whether it adds nodes", path, info.name);
  for (const auto& p : plugins_)
    if (p.name == info.name) fail(ExitCode::Plugin, "{}: a plugin named '{}' is already loaded from {}", path, p.name, p.path);

  // The handle stays open for the life of the process: node objects' and types' code lives there.
  LoadedPlugin lp{info.name, info.version ? info.version : "", info.summary ? info.summary : "", path,
                  info.abi_major, info.abi_minor, {}, {}};
  plugins_.push_back(std::move(lp));
  LoadedPlugin& loaded = plugins_.back();
  try {
    if (info.register_types) {
      TypeRegistration reg{loaded.name, loaded.version, "", &loaded.types};
      const squish_host host{SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, sizeof(squish_host), &reg, host_register_type, host_find_type, host_last_error};
      const int rc = info.register_types(&host);
      if (rc != 0 || !reg.error.empty())
        fail(ExitCode::Plugin, "{}: plugin '{}' failed to register its types: {}", path, loaded.name,
             reg.error.empty() ? fmt::format("register_types returned {}", rc) : reg.error);
    }
    if (info.register_nodes) {
      registering_ = &loaded;
      info.register_nodes(static_cast<NodeRegistry*>(this));
      registering_ = nullptr;
    }
  } catch (...) {
    // Not listed as loaded. Types it registered before failing stay in the process-wide registry
    // (their code stays mapped: plugins are never unloaded); the run stops here anyway.
    registering_ = nullptr;
    plugins_.pop_back();
    throw;
  }
}

void PluginHost::load_all() {
  for (const auto& dir : search_path_) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    std::vector<std::string> files;
    for (auto& de : fs::directory_iterator(dir, ec)) {
      auto name = de.path().filename().string();
      if (name.starts_with("squish_") && name.ends_with(".so")) files.push_back(de.path().string());
    }
    std::sort(files.begin(), files.end());
    for (auto& f : files) {
      auto name = fs::path(f).stem().string().substr(7);
      bool loaded = std::any_of(plugins_.begin(), plugins_.end(), [&](auto& p) { return p.name == name; });
      if (!loaded) load(f);
    }
  }
}

void PluginHost::add(NodeKind kind) {
  const std::string owner = registering_ ? registering_->path : "<host>";
  if (kind.name.empty() || !kind.create) fail(ExitCode::Plugin, "{}: node kind without a name or factory", owner);
  if (auto it = kind_owner_.find(kind.name); it != kind_owner_.end())
    fail(ExitCode::Plugin, "{}: node kind '{}' is already provided by {}", owner, kind.name, it->second);
  kind_owner_[kind.name] = owner;
  if (registering_) registering_->kinds.push_back(kind.name);
  kinds_.emplace(kind.name, std::move(kind));
}

const NodeKind* PluginHost::find(const std::string& kind) const {
  auto it = kinds_.find(kind);
  return it == kinds_.end() ? nullptr : &it->second;
}

std::string PluginHost::closest_kind(const std::string& kind) const {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& [name, k] : kinds_) {
    size_t d = edit_distance(kind, name);
    if (d < best_d) best_d = d, best = name;
  }
  return best_d <= std::max<size_t>(3, kind.size() / 3) ? best : "";
}

const NodeKind& PluginHost::at(const std::string& kind) const {
  if (const auto* k = find(kind)) return *k;
  auto near = closest_kind(kind);
  if (!near.empty()) fail(ExitCode::Plugin, "unknown node kind '{}' (did you mean '{}'?)", kind, near);
  fail(ExitCode::Plugin, "unknown node kind '{}' (no loaded plugin provides it)", kind);
}

std::vector<const NodeKind*> PluginHost::kinds() const {
  std::vector<const NodeKind*> v;
  for (const auto& [n, k] : kinds_) v.push_back(&k);
  return v;
}

}  // namespace squish
