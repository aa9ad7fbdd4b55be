#pragma once
// GGUF (v3) reader and writer.
//
// File layout (all little-endian):
//   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x { string key | u32 value type | value }
//   n_tensors x { string name | u32 n_dims | n_dims x i64 ne | u32 ggml type | u64 offset }
//   zero padding to `general.alignment` (default 32)
//   data section: each tensor at its offset (relative to the section start), each padded with
//   zeros to the alignment (the last one too, as ggml and llama-quantize write it).
// A string is u64 length + bytes (no terminator); an array is u32 element type + u64 count +
// elements; a bool is one byte.
#include "core/io/mapped_file.hpp"
#include "core/quant/ggml_types.hpp"

#include <nlohmann/json.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include "core/io/atomic_file.hpp"

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <variant>
#include <vector>

namespace squish::gguf {

enum class ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* value_type_name(ValueType t);  // "UINT32", ...; "?" if out of range

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kVersion = 3;         // what the writer produces
constexpr size_t kDefaultAlignment = 32;

class Value;

// A homogeneous array: every item has type `type` (items of an ARRAY array are themselves arrays).
struct Array {
  ValueType type = ValueType::UINT8;
  std::vector<Value> items;
  bool operator==(const Array&) const;
};

// A metadata value: a scalar, a string, or an array of one element type.
// The variant's alternative index equals the ValueType id, so type() is just index().
class Value {
 public:
  using Storage = std::variant<uint8_t, int8_t, uint16_t, int16_t, uint32_t, int32_t, float, bool, std::string,
                               Array, uint64_t, int64_t, double>;

  Value() : v_(uint8_t{0}) {}
  // Implicit from each stored C++ type; the C++ type decides the GGUF type (int32_t -> INT32, ...).
  Value(uint8_t x) : v_(x) {}
  Value(int8_t x) : v_(x) {}
  Value(uint16_t x) : v_(x) {}
  Value(int16_t x) : v_(x) {}
  Value(uint32_t x) : v_(x) {}
  Value(int32_t x) : v_(x) {}
  Value(float x) : v_(x) {}
  Value(bool x) : v_(x) {}
  Value(std::string x) : v_(std::move(x)) {}
  Value(std::string_view x) : v_(std::string(x)) {}
  Value(const char* x) : v_(std::string(x)) {}
  Value(uint64_t x) : v_(x) {}
  Value(int64_t x) : v_(x) {}
  Value(double x) : v_(x) {}
  // Throws Error(Runtime) unless every item has type `elem`.
  Value(Array a);

  // Array builders.
  static Value array(ValueType elem, std::vector<Value> items);
  static Value strings(const std::vector<std::string>& items);
  static Value int32s(const std::vector<int32_t>& items);
  static Value float32s(const std::vector<float>& items);

  ValueType type() const { return static_cast<ValueType>(v_.index()); }
  bool is_array() const { return type() == ValueType::ARRAY; }
  bool is_string() const { return type() == ValueType::STRING; }
  bool is_integer() const;  // any integer type (not bool)
  bool is_number() const;   // integer or float

  // Conversions; throw Error(InputData) when the value has the wrong kind.
  int64_t as_int() const;      // any integer type (UINT64 above INT64_MAX throws)
  uint64_t as_uint() const;    // any non-negative integer
  double as_float() const;     // any integer or float type
  bool as_bool() const;        // BOOL only
  const std::string& as_string() const;
  const Array& as_array() const;

  // Array access (throw unless is_array()).
  size_t size() const { return as_array().items.size(); }
  ValueType elem_type() const { return as_array().type; }
  const Value& operator[](size_t i) const { return as_array().items.at(i); }
  std::vector<std::string> as_strings() const;  // array of STRING
  std::vector<int64_t> as_ints() const;         // array of any integer type
  std::vector<double> as_floats() const;        // array of any number type

  const Storage& storage() const { return v_; }
  template <typename T> const T* get_if() const { return std::get_if<T>(&v_); }

  // Diagnostics: numbers as numbers, strings as strings, arrays as JSON arrays (floats keep
  // their exact value; FLOAT32 goes through float so 1e-5f prints as 9.999999747378752e-06).
  nlohmann::json to_json() const;
  // Short one-line rendering; long arrays are summarised ("[8192 x STRING: "a", "b", ...]").
  std::string to_string(size_t max_items = 8) const;

  // Same type and same value (floats compared bitwise, so NaN == NaN and 0.0 != -0.0).
  bool operator==(const Value& o) const;

 private:
  Storage v_;
};

using KeyValue = std::pair<std::string, Value>;

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the row length (innermost)
  GGMLType type = GGMLType::F32;
  uint64_t offset = 0;      // relative to the start of the data section
  size_t nbytes = 0;
  std::span<const std::byte> data;  // view into the mapping (empty in a Writer's layout)

  int64_t n_elements() const;
  int64_t n_rows() const;  // product of ne[1..]
};

// Validates a tensor declaration (1..4 dims, each > 0, type known, ne[0] a multiple of the block
// size) and returns its byte size; on a defect returns 0 and sets *problem.
size_t tensor_nbytes(GGMLType type, std::span<const int64_t> ne, std::string* problem);

class Reader {  // mmap, no copies of tensor data, strict validation
 public:
  // Throws Error(InputData) "<path>: invalid GGUF: <problem>".
  static Reader open(const std::string& path);

  const std::string& path() const { return map_->path(); }
  uint32_t version() const { return version_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }  // absolute offset of the data section
  size_t file_size() const { return map_->size(); }

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file (info) order
  const TensorInfo* find(const std::string& name) const;
  const TensorInfo& at(const std::string& name) const;  // throws InputData if missing

  // Metadata, in file order.
  const std::vector<KeyValue>& metadata() const { return metadata_; }
  const Value* get(const std::string& key) const;
  const Value& at_key(const std::string& key) const;  // throws InputData if missing
  // Typed look-ups with a default when the key is absent (wrong kind still throws).
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_float(const std::string& key, double def) const;
  std::string get_string(const std::string& key, const std::string& def) const;

  // The mapping the tensor views point into (hold it to keep them alive).
  const std::shared_ptr<const MappedFile>& mapping() const { return map_; }

 private:
  std::shared_ptr<const MappedFile> map_;
  uint32_t version_ = 0;
  size_t alignment_ = kDefaultAlignment;
  size_t data_offset_ = 0;
  std::vector<KeyValue> metadata_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> key_index_, tensor_index_;
};

// What a writer needs to know about a tensor before any data exists.
struct TensorDecl {
  std::string name;
  std::vector<int64_t> ne;  // ggml order
  GGMLType type = GGMLType::F32;
};

// Serialises header + metadata + tensor infos + padding to the data section, exactly as ggml
// does. `tensors` must carry their final offsets. Used by Writer; exposed for tests and tools.
std::vector<std::byte> serialize_header(const std::vector<KeyValue>& metadata,
                                        const std::vector<TensorInfo>& tensors, size_t alignment);

// Streaming GGUF v3 writer.
//
// The caller declares every metadata key/value and every tensor (name, ne, type) up front; the
// constructor computes the complete layout (tensor i at the end of tensor i-1, padded to the
// alignment — the layout ggml and llama-quantize produce), creates a temporary file next to the
// destination, sizes it and writes the header. Tensor bytes can then be written at their final
// offsets in any order, from any number of threads at once (pwrite; no model in memory).
// commit() checks that every tensor was fully written, fsyncs and renames the temporary file
// into place atomically. A Writer destroyed without commit() removes its temporary file.
// I/O failures throw Error(Runtime, "<path>: <strerror>").
class Writer {
 public:
  // Alignment comes from a `general.alignment` key in `metadata` if present, else 32.
  Writer(std::string path, std::vector<KeyValue> metadata, std::vector<TensorDecl> tensors);
  ~Writer();
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  const std::string& path() const { return path_; }            // final destination
  // Where the bytes go until commit: "" while the temporary is an unnamed O_TMPFILE inode.
  const std::string& temp_path() const { return file_ ? file_->temp_path() : path_; }
  size_t alignment() const { return alignment_; }
  size_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return file_size_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // layout (data empty)
  const std::vector<KeyValue>& metadata() const { return metadata_; }
  size_t index_of(const std::string& name) const;  // throws Runtime if not declared

  // Writes a whole tensor (data.size() must equal its nbytes). Thread-safe; each tensor once.
  void write_tensor(size_t index, std::span<const std::byte> data);
  void write_tensor(const std::string& name, std::span<const std::byte> data) { write_tensor(index_of(name), data); }
  // Writes part of a tensor: `data` goes to byte `offset` inside the tensor. Parts must not
  // overlap; the tensor counts as written once parts totalling nbytes have arrived. Thread-safe.
  void write_tensor_part(size_t index, size_t offset, std::span<const std::byte> data);

  bool tensor_complete(size_t index) const;
  // Verifies completeness, fsyncs, renames into place, fsyncs the directory. Not thread-safe
  // with concurrent writes (call it after they are done).
  void commit();
  bool committed() const { return committed_; }

 private:
  void pwrite_all(uint64_t offset, std::span<const std::byte> data);
  void discard() noexcept;

  std::string path_;
  std::unique_ptr<AtomicFile> file_;  // the temporary until commit
  bool committed_ = false;
  size_t alignment_ = kDefaultAlignment;
  size_t data_offset_ = 0;
  uint64_t file_size_ = 0;
  std::vector<KeyValue> metadata_;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::unique_ptr<std::atomic<uint64_t>[]> written_;  // bytes written per tensor
};

// Per-layer value of a key stored either as one integer or as an integer array of n_layer
// entries; `def` when absent. Throws Error(InputData) on a wrong length or type.
std::vector<int> per_layer_values(const Reader& r, const std::string& key, int n_layer, int def);

}  // namespace squish::gguf
