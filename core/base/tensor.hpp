#pragma once
// The two kinds of message that flow through a pipeline graph: tensors (streamed one at a
// time) and documents (JSON artifacts such as a recipe, scores or a report).
#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <variant>
#include <vector>

namespace squish {

// Element types of checkpoint tensors. Quantized GGUF types live in core/quant (GGMLType);
// a tensor message whose dtype is Quantized carries the ggml type id in `ggml_type`.
enum class DType : uint8_t { F32, F16, BF16, F64, I8, I16, I32, I64, U8, Bool, Quantized };

const char* dtype_name(DType t);
size_t dtype_size(DType t);  // bytes per element; 0 for Quantized
bool dtype_from_safetensors(const std::string& s, DType& out);

// Immutable bytes; may be a view into a memory-mapped file (keeping the mapping alive) or owned.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual std::span<const std::byte> bytes() const = 0;
  static std::shared_ptr<const Buffer> owned(std::vector<std::byte> data);
  // Float32 values as bytes, without a copy (a tensor built from a computed float vector).
  static std::shared_ptr<const Buffer> owned_floats(std::vector<float> data);
  // A view that keeps `owner` alive as long as the view lives.
  static std::shared_ptr<const Buffer> view(std::span<const std::byte> data, std::shared_ptr<const void> owner);
};

// Releases one slot of the in-flight limiter when the last message derived from a source
// tensor dies. Copied into every message derived from it.
using FlightTicket = std::shared_ptr<void>;

struct Tensor {
  std::string name;
  DType dtype = DType::F32;
  int ggml_type = -1;             // set when dtype == Quantized (or to force the GGUF type id)
  std::vector<int64_t> shape;     // row-major, outermost first (as in safetensors / PyTorch)
  std::shared_ptr<const Buffer> data;
  nlohmann::json meta = nlohmann::json::object();  // free-form: source file, reason, padding...

  int64_t numel() const;
  size_t nbytes() const { return data ? data->bytes().size() : 0; }
  std::span<const std::byte> bytes() const { return data ? data->bytes() : std::span<const std::byte>{}; }
  // Values as float32 (converts F16/BF16/F64). Throws for quantized/integer tensors.
  std::vector<float> to_f32() const;
};

struct Document {
  std::string kind;  // "recipe", "scores", "report", ...
  nlohmann::json body;
};

struct Message {
  std::variant<std::shared_ptr<const Tensor>, std::shared_ptr<const Document>> payload;
  FlightTicket ticket;  // empty for messages not subject to the in-flight limit

  bool is_tensor() const { return payload.index() == 0; }
  const Tensor& tensor() const { return *std::get<0>(payload); }
  const Document& document() const { return *std::get<1>(payload); }
  static Message of(Tensor t, FlightTicket ticket = {});
  static Message of(Document d);
  // A new message carrying the same flight ticket (so derived tensors keep the slot).
  Message derive(Tensor t) const { return of(std::move(t), ticket); }
};

// bf16/f16 <-> f32 conversions used across stages (round-to-nearest-even, as PyTorch and ggml).
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);

}  // namespace squish
