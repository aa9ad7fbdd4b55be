#include "core/gguf/gguf.hpp"

#include "core/base/error.hpp"

#include <squish/plugin_abi.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <limits>
#include <random>
#include <sys/stat.h>
#include <unistd.h>

static_assert(std::endian::native == std::endian::little, "GGUF I/O assumes a little-endian host");

namespace squish::gguf {

// ---------------------------------------------------------------------------------------------
// Value

const char* value_type_name(ValueType t) {
  static constexpr const char* kNames[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32", "FLOAT32",
                                           "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
  auto i = static_cast<uint32_t>(t);
  return i < std::size(kNames) ? kNames[i] : "?";
}

bool Array::operator==(const Array& o) const { return type == o.type && items == o.items; }

Value::Value(Array a) {
  for (const auto& it : a.items)
    if (it.type() != a.type)
      fail(ExitCode::Runtime, "GGUF array of {} holds a {} item", value_type_name(a.type), value_type_name(it.type()));
  v_ = std::move(a);
}

Value Value::array(ValueType elem, std::vector<Value> items) { return Value(Array{elem, std::move(items)}); }

Value Value::strings(const std::vector<std::string>& items) {
  Array a{ValueType::STRING, {}};
  a.items.reserve(items.size());
  for (const auto& s : items) a.items.emplace_back(s);
  return Value(std::move(a));
}

Value Value::int32s(const std::vector<int32_t>& items) {
  Array a{ValueType::INT32, {}};
  a.items.assign(items.begin(), items.end());
  return Value(std::move(a));
}


Value Value::float32s(const std::vector<float>& items) {
  Array a{ValueType::FLOAT32, {}};
  a.items.assign(items.begin(), items.end());
  return Value(std::move(a));
}

bool Value::is_integer() const {
  switch (type()) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::UINT16: case ValueType::INT16:
    case ValueType::UINT32: case ValueType::INT32: case ValueType::UINT64: case ValueType::INT64:
      return true;
    default:
      return false;
  }
}

bool Value::is_number() const {
  return is_integer() || type() == ValueType::FLOAT32 || type() == ValueType::FLOAT64;
}

int64_t Value::as_int() const {
  if (auto* u = std::get_if<uint64_t>(&v_)) {
    if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(ExitCode::InputData, "GGUF value {} does not fit in int64", *u);
    return static_cast<int64_t>(*u);
  }
  if (!is_integer()) fail(ExitCode::InputData, "GGUF value of type {} is not an integer", value_type_name(type()));
  return std::visit(
      [](const auto& x) -> int64_t {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) return static_cast<int64_t>(x);
        else return 0;
      },
      v_);
}

uint64_t Value::as_uint() const {
  if (auto* u = std::get_if<uint64_t>(&v_)) return *u;
  int64_t x = as_int();
  if (x < 0) fail(ExitCode::InputData, "GGUF value {} is negative", x);
  return static_cast<uint64_t>(x);
}

double Value::as_float() const {
  if (auto* f = std::get_if<float>(&v_)) return *f;
  if (auto* d = std::get_if<double>(&v_)) return *d;
  if (auto* u = std::get_if<uint64_t>(&v_)) return static_cast<double>(*u);
  if (is_integer()) return static_cast<double>(as_int());
  fail(ExitCode::InputData, "GGUF value of type {} is not a number", value_type_name(type()));
}

bool Value::as_bool() const {
  if (auto* b = std::get_if<bool>(&v_)) return *b;
  fail(ExitCode::InputData, "GGUF value of type {} is not a BOOL", value_type_name(type()));
}

const std::string& Value::as_string() const {
  if (auto* s = std::get_if<std::string>(&v_)) return *s;
  fail(ExitCode::InputData, "GGUF value of type {} is not a STRING", value_type_name(type()));
}

const Array& Value::as_array() const {
  if (auto* a = std::get_if<Array>(&v_)) return *a;
  fail(ExitCode::InputData, "GGUF value of type {} is not an ARRAY", value_type_name(type()));
}

std::vector<std::string> Value::as_strings() const {
  std::vector<std::string> out;
  for (const auto& it : as_array().items) out.push_back(it.as_string());
  return out;
}

std::vector<int64_t> Value::as_ints() const {
  std::vector<int64_t> out;
  for (const auto& it : as_array().items) out.push_back(it.as_int());
  return out;
}

std::vector<double> Value::as_floats() const {
  std::vector<double> out;
  for (const auto& it : as_array().items) out.push_back(it.as_float());
  return out;
}

nlohmann::json Value::to_json() const {
  return std::visit(
      [](const auto& x) -> nlohmann::json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Array>) {
          nlohmann::json a = nlohmann::json::array();
          for (const auto& it : x.items) a.push_back(it.to_json());
          return a;
        } else if constexpr (std::is_same_v<T, float>) {
          return static_cast<double>(x);
        } else if constexpr (std::is_same_v<T, uint8_t> || std::is_same_v<T, uint16_t> || std::is_same_v<T, uint32_t>) {
          return static_cast<uint64_t>(x);
        } else if constexpr (std::is_same_v<T, int8_t> || std::is_same_v<T, int16_t> || std::is_same_v<T, int32_t>) {
          return static_cast<int64_t>(x);
        } else {
          return x;
        }
      },
      v_);
}

std::string Value::to_string(size_t max_items) const {
  if (!is_array()) return to_json().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const auto& a = as_array();
  std::string s = fmt::format("[{} x {}:", a.items.size(), value_type_name(a.type));
  for (size_t i = 0; i < a.items.size() && i < max_items; ++i) s += (i ? ", " : " ") + a.items[i].to_string(max_items);
  if (a.items.size() > max_items) s += ", ...";
  return s + "]";
}

bool Value::operator==(const Value& o) const {
  if (type() != o.type()) return false;
  // Floats bitwise: a rewritten file must carry exactly the same bits.
  if (auto* f = std::get_if<float>(&v_))
    return std::bit_cast<uint32_t>(*f) == std::bit_cast<uint32_t>(std::get<float>(o.v_));
  if (auto* d = std::get_if<double>(&v_))
    return std::bit_cast<uint64_t>(*d) == std::bit_cast<uint64_t>(std::get<double>(o.v_));
  return v_ == o.v_;
}

// ---------------------------------------------------------------------------------------------
// Tensor geometry

int64_t TensorInfo::n_elements() const {
  int64_t n = 1;
  for (auto d : ne) n *= d;
  return n;
}

int64_t TensorInfo::n_rows() const {
  int64_t n = 1;
  for (size_t i = 1; i < ne.size(); ++i) n *= ne[i];
  return n;
}

size_t tensor_nbytes(GGMLType type, std::span<const int64_t> ne, std::string* problem) {
  const auto* tr = ggml_type_traits(type);
  if (!tr) {
    *problem = fmt::format("unknown ggml type id {}", static_cast<uint32_t>(type));
    return 0;
  }
  if (ne.empty() || ne.size() > 4) {
    *problem = fmt::format("{} dimensions (must be 1..4)", ne.size());
    return 0;
  }
  // Bound the total so products cannot overflow: 2^62 bytes is far beyond any real file.
  constexpr uint64_t kLimit = uint64_t{1} << 62;
  uint64_t elems = 1;
  for (size_t i = 0; i < ne.size(); ++i) {
    if (ne[i] <= 0) {
      *problem = fmt::format("dimension {} is {} (must be > 0)", i, ne[i]);
      return 0;
    }
    if (static_cast<uint64_t>(ne[i]) > kLimit / elems) {
      *problem = "element count overflows";
      return 0;
    }
    elems *= static_cast<uint64_t>(ne[i]);
  }
  if (ne[0] % tr->block_size != 0) {
    *problem = fmt::format("row length {} is not a multiple of {}'s block size {}", ne[0], tr->name, tr->block_size);
    return 0;
  }
  uint64_t blocks = elems / static_cast<uint64_t>(tr->block_size);
  if (blocks > kLimit / tr->type_size) {
    *problem = "byte size overflows";
    return 0;
  }
  return static_cast<size_t>(blocks * tr->type_size);
}

static uint64_t pad_to(uint64_t x, uint64_t align) { return (x + align - 1) / align * align; }

// ---------------------------------------------------------------------------------------------
// Reader

namespace {

// Bounds-checked little-endian cursor over the mapping; every failure names what was being read.
class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, const std::string& path) : b_(bytes), path_(path) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return b_.size() - pos_; }

  [[noreturn]] void bad(const std::string& problem) const {
    fail(ExitCode::InputData, "{}: invalid GGUF: {}", path_, problem);
  }

  template <typename T>
  T read(const char* what) {
    if (remaining() < sizeof(T))
      bad(fmt::format("truncated: {} at byte {} needs {} bytes, {} left", what, pos_, sizeof(T), remaining()));
    T x;
    std::memcpy(&x, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return x;
  }

  std::string read_string(const char* what) {
    uint64_t n = read<uint64_t>(what);
    if (n > remaining())
      bad(fmt::format("truncated: {} at byte {} has length {} but only {} bytes are left", what, pos_ - 8, n, remaining()));
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    return s;
  }

 private:
  std::span<const std::byte> b_;
  const std::string& path_;
  size_t pos_ = 0;
};

// Smallest encoded size of one value of a type: bounds element counts before allocating.
size_t min_encoded_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
    case ValueType::UINT16: case ValueType::INT16: return 2;
    case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
    case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: case ValueType::STRING: return 8;
    case ValueType::ARRAY: return 12;
  }
  return 1;
}

constexpr int kMaxArrayDepth = 4;  // the spec allows arrays of arrays; nothing real goes deeper than 2

Value read_value(Cursor& c, uint32_t type_id, const std::string& key, int depth) {
  if (type_id > static_cast<uint32_t>(ValueType::FLOAT64)) c.bad(fmt::format("key '{}': unknown value type {}", key, type_id));
  switch (static_cast<ValueType>(type_id)) {
    case ValueType::UINT8: return c.read<uint8_t>("value");
    case ValueType::INT8: return c.read<int8_t>("value");
    case ValueType::UINT16: return c.read<uint16_t>("value");
    case ValueType::INT16: return c.read<int16_t>("value");
    case ValueType::UINT32: return c.read<uint32_t>("value");
    case ValueType::INT32: return c.read<int32_t>("value");
    case ValueType::FLOAT32: return c.read<float>("value");
    case ValueType::UINT64: return c.read<uint64_t>("value");
    case ValueType::INT64: return c.read<int64_t>("value");
    case ValueType::FLOAT64: return c.read<double>("value");
    case ValueType::BOOL: {
      uint8_t b = c.read<uint8_t>("value");
      if (b > 1) c.bad(fmt::format("key '{}': bool value {} is not 0 or 1", key, b));
      return b != 0;
    }
    case ValueType::STRING: return c.read_string("string value");
    case ValueType::ARRAY: {
      if (depth >= kMaxArrayDepth) c.bad(fmt::format("key '{}': arrays nested deeper than {}", key, kMaxArrayDepth));
      uint32_t elem = c.read<uint32_t>("array type");
      if (elem > static_cast<uint32_t>(ValueType::FLOAT64))
        c.bad(fmt::format("key '{}': unknown array element type {}", key, elem));
      uint64_t n = c.read<uint64_t>("array length");
      if (n > c.remaining() / min_encoded_size(static_cast<ValueType>(elem)))
        c.bad(fmt::format("key '{}': array of {} {} does not fit in the {} bytes left (truncated or corrupt)", key, n,
                          value_type_name(static_cast<ValueType>(elem)), c.remaining()));
      Array a{static_cast<ValueType>(elem), {}};
      a.items.reserve(n);
      for (uint64_t i = 0; i < n; ++i) a.items.push_back(read_value(c, elem, key, depth + 1));
      return Value(std::move(a));
    }
  }
  c.bad("unreachable");
}

}  // namespace

Reader Reader::open(const std::string& path) {
  Reader r;
  r.map_ = MappedFile::open(path);
  Cursor c(r.map_->bytes(), path);

  uint32_t magic = c.read<uint32_t>("magic");
  if (magic != kMagic) {
    char m[4];
    std::memcpy(m, &magic, 4);
    std::string shown;
    for (char ch : m) shown += (ch >= 32 && ch < 127) ? std::string(1, ch) : fmt::format("\\x{:02x}", uint8_t(ch));
    c.bad(fmt::format("bad magic '{}' (expected 'GGUF')", shown));
  }
  r.version_ = c.read<uint32_t>("version");
  if (r.version_ == 1) c.bad("version 1 is not supported (only 2 and 3)");
  if (r.version_ != 2 && r.version_ != 3) {
    if ((r.version_ & 0xFFFF) == 0) c.bad(fmt::format("version {:#x} looks big-endian; only little-endian GGUF is supported", r.version_));
    c.bad(fmt::format("unsupported version {} (only 2 and 3)", r.version_));
  }
  uint64_t n_tensors = c.read<uint64_t>("tensor count");
  uint64_t n_kv = c.read<uint64_t>("metadata count");
  // Each tensor info takes at least 8 (name len) + 4 + 8 (one dim) + 4 + 8 bytes; each kv at least 8 + 4 + 1.
  if (n_tensors > c.remaining() / 32) c.bad(fmt::format("tensor count {} is impossible for a {}-byte file (truncated or corrupt)", n_tensors, r.file_size()));
  if (n_kv > c.remaining() / 13) c.bad(fmt::format("metadata count {} is impossible for a {}-byte file (truncated or corrupt)", n_kv, r.file_size()));

  r.metadata_.reserve(n_kv);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string("metadata key");
    if (key.empty()) c.bad(fmt::format("metadata key {} is empty", i));
    if (r.key_index_.count(key)) c.bad(fmt::format("duplicate metadata key '{}'", key));
    uint32_t type = c.read<uint32_t>("value type");
    Value v = read_value(c, type, key, 0);
    r.key_index_.emplace(key, r.metadata_.size());
    r.metadata_.emplace_back(std::move(key), std::move(v));
  }

  if (const Value* a = r.get("general.alignment")) {
    if (!a->is_integer()) c.bad(fmt::format("general.alignment has type {} (must be an integer)", value_type_name(a->type())));
    int64_t al = a->as_int();
    if (al <= 0 || (al & (al - 1)) != 0 || al > (int64_t{1} << 30))
      c.bad(fmt::format("general.alignment {} is not a power of 2", al));
    r.alignment_ = static_cast<size_t>(al);
  }

  r.tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = c.read_string("tensor name");
    if (t.name.empty()) c.bad(fmt::format("tensor {} has an empty name", i));
    if (r.tensor_index_.count(t.name)) c.bad(fmt::format("duplicate tensor '{}'", t.name));
    uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
    if (n_dims == 0 || n_dims > 4) c.bad(fmt::format("tensor '{}': {} dimensions (must be 1..4)", t.name, n_dims));
    for (uint32_t d = 0; d < n_dims; ++d) t.ne.push_back(c.read<int64_t>("tensor dimension"));
    uint32_t type = c.read<uint32_t>("tensor type");
    if (!ggml_type_traits(type)) {
      // A plugin's type: the file says which plugin provides it (written with the type).
      auto word = [](const Value* v) {  // shown in a one-line message: a short identifier only
        if (!v || !v->is_string() || v->as_string().empty() || v->as_string().size() > 64) return false;
        return std::all_of(v->as_string().begin(), v->as_string().end(),
                           [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-'; });
      };
      const Value* plugin = r.get(fmt::format("squish.type.{}.plugin", type));
      const Value* tname = r.get(fmt::format("squish.type.{}.name", type));
      if (word(plugin))
        fail(ExitCode::Plugin, "{}: tensor '{}' has type {} (id {}) from plugin '{}', which is not loaded (load it: squish-run --plugin {})",
             path, t.name, word(tname) ? tname->as_string() : "?", type, plugin->as_string(), plugin->as_string());
      if (type >= SQUISH_TYPE_ID_PRIVATE_FIRST && type <= SQUISH_TYPE_ID_PRIVATE_LAST)
        c.bad(fmt::format("tensor '{}': type {} is a plugin type, but the file does not say which plugin provides it", t.name, type));
      c.bad(fmt::format("tensor '{}': unknown ggml type {}", t.name, type));
    }
    t.type = static_cast<GGMLType>(type);
    t.offset = c.read<uint64_t>("tensor offset");
    std::string problem;
    t.nbytes = tensor_nbytes(t.type, t.ne, &problem);
    if (t.nbytes == 0) c.bad(fmt::format("tensor '{}': {}", t.name, problem));
    if (t.offset % r.alignment_ != 0)
      c.bad(fmt::format("tensor '{}': offset {} is not a multiple of the alignment {}", t.name, t.offset, r.alignment_));
    r.tensor_index_.emplace(t.name, r.tensors_.size());
    r.tensors_.push_back(std::move(t));
  }

  r.data_offset_ = pad_to(c.pos(), r.alignment_);
  // A file without tensors may end right after the infos; with tensors the data must follow.
  if (n_tensors > 0 && r.data_offset_ > r.file_size())
    c.bad(fmt::format("truncated: data section would start at byte {} but the file has {} bytes", r.data_offset_, r.file_size()));

  const size_t data_size = r.file_size() - std::min(r.data_offset_, r.file_size());
  for (auto& t : r.tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      c.bad(fmt::format("tensor '{}': data [{}, {}) lies outside the {}-byte data section (truncated file?)", t.name,
                        t.offset, t.offset + t.nbytes, data_size));
    t.data = r.map_->bytes().subspan(r.data_offset_ + t.offset, t.nbytes);
  }
  // Overlap check in offset order (files normally have them in info order already).
  std::vector<const TensorInfo*> order;
  for (const auto& t : r.tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset)
      c.bad(fmt::format("tensors '{}' and '{}' overlap", order[i - 1]->name, order[i]->name));
  return r;
}

const TensorInfo* Reader::find(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& Reader::at(const std::string& name) const {
  if (const auto* t = find(name)) return *t;
  fail(ExitCode::InputData, "{}: no tensor '{}'", path(), name);
}

const Value* Reader::get(const std::string& key) const {
  auto it = key_index_.find(key);
  return it == key_index_.end() ? nullptr : &metadata_[it->second].second;
}

const Value& Reader::at_key(const std::string& key) const {
  if (const auto* v = get(key)) return *v;
  fail(ExitCode::InputData, "{}: no metadata key '{}'", path(), key);
}

// Typed getters rethrow conversion errors with the file and key named.
template <typename F>
static auto typed_get(const Reader& r, const std::string& key, F&& f) {
  try {
    return f(r.at_key(key));
  } catch (const Error& e) {
    fail(ExitCode::InputData, "{}: key '{}': {}", r.path(), key, e.what());
  }
}

int64_t Reader::get_int(const std::string& key, int64_t def) const {
  if (!get(key)) return def;
  return typed_get(*this, key, [](const Value& v) { return v.as_int(); });
}

double Reader::get_float(const std::string& key, double def) const {
  if (!get(key)) return def;
  return typed_get(*this, key, [](const Value& v) { return v.as_float(); });
}

std::string Reader::get_string(const std::string& key, const std::string& def) const {
  if (!get(key)) return def;
  return typed_get(*this, key, [](const Value& v) { return v.as_string(); });
}

// ---------------------------------------------------------------------------------------------
// Serialisation

namespace {

class Buffer {
 public:
  std::vector<std::byte> bytes;
  template <typename T>
  void put(T x) {
    auto* p = reinterpret_cast<const std::byte*>(&x);
    bytes.insert(bytes.end(), p, p + sizeof(T));
  }
  void put_string(const std::string& s) {
    put<uint64_t>(s.size());
    auto* p = reinterpret_cast<const std::byte*>(s.data());
    bytes.insert(bytes.end(), p, p + s.size());
  }
  void put_value(const Value& v) {
    std::visit(
        [&](const auto& x) {
          using T = std::decay_t<decltype(x)>;
          if constexpr (std::is_same_v<T, std::string>) put_string(x);
          else if constexpr (std::is_same_v<T, bool>) put<uint8_t>(x ? 1 : 0);
          else if constexpr (std::is_same_v<T, Array>) {
            put<uint32_t>(static_cast<uint32_t>(x.type));
            put<uint64_t>(x.items.size());
            for (const auto& it : x.items) put_value(it);
          } else put<T>(x);
        },
        v.storage());
  }
};

}  // namespace

std::vector<std::byte> serialize_header(const std::vector<KeyValue>& metadata, const std::vector<TensorInfo>& tensors,
                                        size_t alignment) {
  Buffer b;
  b.put<uint32_t>(kMagic);
  b.put<uint32_t>(kVersion);
  b.put<uint64_t>(tensors.size());
  b.put<uint64_t>(metadata.size());
  for (const auto& [key, v] : metadata) {
    b.put_string(key);
    b.put<uint32_t>(static_cast<uint32_t>(v.type()));
    b.put_value(v);
  }
  for (const auto& t : tensors) {
    b.put_string(t.name);
    b.put<uint32_t>(static_cast<uint32_t>(t.ne.size()));
    for (auto d : t.ne) b.put<int64_t>(d);
    b.put<uint32_t>(static_cast<uint32_t>(t.type));
    b.put<uint64_t>(t.offset);
  }
  b.bytes.resize(pad_to(b.bytes.size(), alignment), std::byte{0});
  return std::move(b.bytes);
}

// ---------------------------------------------------------------------------------------------
// Writer

Writer::Writer(std::string path, std::vector<KeyValue> metadata, std::vector<TensorDecl> decls)
    : path_(std::move(path)), metadata_(std::move(metadata)) {
  // Validate everything before touching the disk: a bad declaration is a bug in the caller.
  {
    std::unordered_map<std::string, int> seen;
    for (const auto& [k, v] : metadata_) {
      if (k.empty()) fail(ExitCode::Runtime, "{}: GGUF metadata key is empty", path_);
      if (seen[k]++) fail(ExitCode::Runtime, "{}: duplicate GGUF metadata key '{}'", path_, k);
      if (k == "general.alignment") {
        int64_t al = v.is_integer() ? v.as_int() : 0;
        if (v.type() != ValueType::UINT32 || al <= 0 || (al & (al - 1)) != 0)
          fail(ExitCode::Runtime, "{}: general.alignment must be a UINT32 power of 2", path_);
        alignment_ = static_cast<size_t>(al);
      }
    }
  }
  uint64_t offset = 0;
  tensors_.reserve(decls.size());
  for (auto& d : decls) {
    if (d.name.empty()) fail(ExitCode::Runtime, "{}: tensor with an empty name", path_);
    if (!index_.emplace(d.name, tensors_.size()).second) fail(ExitCode::Runtime, "{}: duplicate tensor '{}'", path_, d.name);
    TensorInfo t;
    t.name = std::move(d.name);
    t.ne = std::move(d.ne);
    t.type = d.type;
    std::string problem;
    t.nbytes = tensor_nbytes(t.type, t.ne, &problem);
    if (t.nbytes == 0) fail(ExitCode::Runtime, "{}: tensor '{}': {}", path_, t.name, problem);
    t.offset = offset;
    offset += pad_to(t.nbytes, alignment_);
    tensors_.push_back(std::move(t));
  }
  const auto header = serialize_header(metadata_, tensors_, alignment_);
  data_offset_ = header.size();
  file_size_ = data_offset_ + offset;
  written_ = std::make_unique<std::atomic<uint64_t>[]>(tensors_.size());

  // One temporary-file mechanism for every output (core/io/atomic_file.hpp): beside the
  // destination, unnamed where the filesystem allows, removed on failure and on signals.
  file_ = std::make_unique<AtomicFile>(path_);
  try {
    // Reserve the space now so a full disk fails here rather than halfway through; filesystems
    // without fallocate get a sparse file (the padding reads back as zeros either way).
    if (file_size_ > 0) file_->reserve(file_size_);
    pwrite_all(0, header);
  } catch (...) {
    discard();
    throw;
  }
}

Writer::~Writer() {
  if (!committed_) discard();
}

void Writer::discard() noexcept { file_.reset(); }

size_t Writer::index_of(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(ExitCode::Runtime, "{}: tensor '{}' was not declared", path_, name);
  return it->second;
}

void Writer::pwrite_all(uint64_t offset, std::span<const std::byte> data) { file_->pwrite(data.data(), data.size(), offset); }

void Writer::write_tensor(size_t index, std::span<const std::byte> data) {
  if (index >= tensors_.size()) fail(ExitCode::Runtime, "{}: tensor index {} out of range", path_, index);
  const auto& t = tensors_[index];
  if (data.size() != t.nbytes)
    fail(ExitCode::Runtime, "{}: tensor '{}' has {} bytes, got {}", path_, t.name, t.nbytes, data.size());
  write_tensor_part(index, 0, data);
}

void Writer::write_tensor_part(size_t index, size_t offset, std::span<const std::byte> data) {
  if (committed_ || !file_) fail(ExitCode::Runtime, "{}: write after commit", path_);
  if (index >= tensors_.size()) fail(ExitCode::Runtime, "{}: tensor index {} out of range", path_, index);
  const auto& t = tensors_[index];
  if (offset > t.nbytes || data.size() > t.nbytes - offset)
    fail(ExitCode::Runtime, "{}: write of {} bytes at {} overruns tensor '{}' ({} bytes)", path_, data.size(), offset,
         t.name, t.nbytes);
  // Count first so a duplicate write is caught even when two threads race on the same tensor.
  uint64_t before = written_[index].fetch_add(data.size());
  if (before + data.size() > t.nbytes) fail(ExitCode::Runtime, "{}: tensor '{}' written more than once", path_, t.name);
  pwrite_all(data_offset_ + t.offset + offset, data);
}

bool Writer::tensor_complete(size_t index) const { return written_[index].load() == tensors_.at(index).nbytes; }

void Writer::commit() {
  if (committed_) return;
  if (!file_) fail(ExitCode::Runtime, "{}: writer is closed", path_);
  std::vector<std::string> missing;
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (!tensor_complete(i)) missing.push_back(tensors_[i].name);
  if (!missing.empty())
    fail(ExitCode::Runtime, "{}: {} tensor(s) not fully written, first '{}'", path_, missing.size(), missing.front());
  file_->commit();
  committed_ = true;
}

std::vector<int> per_layer_values(const Reader& r, const std::string& key, int n_layer, int def) {
  const Value* v = r.get(key);
  if (!v) return std::vector<int>(n_layer, def);
  auto checked = [&](int64_t x) {
    if (x < 0 || x > (int64_t{1} << 30)) fail(ExitCode::InputData, "{}: key '{}': value {} out of range", r.path(), key, x);
    return static_cast<int>(x);
  };
  try {
    if (!v->is_array()) return std::vector<int>(n_layer, checked(v->as_int()));
    if (static_cast<int>(v->size()) != n_layer)
      fail(ExitCode::InputData, "{}: key '{}' has {} entries for {} layers", r.path(), key, v->size(), n_layer);
    std::vector<int> out;
    for (auto x : v->as_ints()) out.push_back(checked(x));
    return out;
  } catch (const Error& e) {
    if (std::string(e.what()).rfind(r.path(), 0) == 0) throw;
    fail(ExitCode::InputData, "{}: key '{}': {}", r.path(), key, e.what());
  }
}

}  // namespace squish::gguf
