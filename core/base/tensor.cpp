#include "core/base/tensor.hpp"

#include "core/base/error.hpp"

#include <bit>
#include <cmath>
#include <cstring>

namespace squish {

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I8: return "I8";
    case DType::I16: return "I16";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    case DType::Bool: return "BOOL";
    case DType::Quantized: return "QUANTIZED";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::Bool: return 1;
    case DType::Quantized: return 0;
  }
  return 0;
}

bool dtype_from_safetensors(const std::string& s, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F64", DType::F64},
      {"I8", DType::I8},   {"I16", DType::I16}, {"I32", DType::I32},   {"I64", DType::I64},
      {"U8", DType::U8},   {"BOOL", DType::Bool}};
  for (auto& [name, t] : table)
    if (s == name) { out = t; return true; }
  return false;
}

namespace {
class OwnedBuffer final : public Buffer {
 public:
  explicit OwnedBuffer(std::vector<std::byte> d) : data_(std::move(d)) {}
  std::span<const std::byte> bytes() const override { return data_; }
 private:
  std::vector<std::byte> data_;
};
class OwnedFloats final : public Buffer {
 public:
  explicit OwnedFloats(std::vector<float> d) : data_(std::move(d)) {}
  std::span<const std::byte> bytes() const override { return std::as_bytes(std::span(data_)); }
 private:
  std::vector<float> data_;
};
class ViewBuffer final : public Buffer {
 public:
  ViewBuffer(std::span<const std::byte> d, std::shared_ptr<const void> owner) : data_(d), owner_(std::move(owner)) {}
  std::span<const std::byte> bytes() const override { return data_; }
 private:
  std::span<const std::byte> data_;
  std::shared_ptr<const void> owner_;
};
}  // namespace

std::shared_ptr<const Buffer> Buffer::owned_floats(std::vector<float> data) { return std::make_shared<OwnedFloats>(std::move(data)); }

std::shared_ptr<const Buffer> Buffer::owned(std::vector<std::byte> data) {
  return std::make_shared<OwnedBuffer>(std::move(data));
}
std::shared_ptr<const Buffer> Buffer::view(std::span<const std::byte> data, std::shared_ptr<const void> owner) {
  return std::make_shared<ViewBuffer>(data, std::move(owner));
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::vector<float> Tensor::to_f32() const {
  const auto b = bytes();
  const int64_t n = numel();
  std::vector<float> out(static_cast<size_t>(n));
  auto need = [&](size_t es) {
    if (b.size() != static_cast<size_t>(n) * es)
      fail(ExitCode::InputData, "tensor {}: {} bytes for {} elements of {}", name, b.size(), n, dtype_name(dtype));
  };
  switch (dtype) {
    case DType::F32: need(4); std::memcpy(out.data(), b.data(), b.size()); break;
    case DType::F16: {
      need(2);
      const auto* p = reinterpret_cast<const uint16_t*>(b.data());
      for (int64_t i = 0; i < n; ++i) out[i] = f16_to_f32(p[i]);
      break;
    }
    case DType::BF16: {
      need(2);
      const auto* p = reinterpret_cast<const uint16_t*>(b.data());
      for (int64_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p[i]);
      break;
    }
    case DType::F64: {
      need(8);
      const auto* p = reinterpret_cast<const double*>(b.data());
      for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
      break;
    }
    default: fail(ExitCode::InputData, "tensor {}: cannot convert {} to F32", name, dtype_name(dtype));
  }
  return out;
}

Message Message::of(Tensor t, FlightTicket ticket) {
  return Message{std::make_shared<const Tensor>(std::move(t)), std::move(ticket)};
}
Message Message::of(Document d) { return Message{std::make_shared<const Document>(std::move(d)), {}}; }

float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((u >> 16) | 64);  // quiet NaN
  return static_cast<uint16_t>((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

// IEEE half conversions, round-to-nearest-even (matches F16C hardware and ggml's scalar path).
float f16_to_f32(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  const float exp_scale = std::bit_cast<float>(0x7800000u);
  const float normalized = std::bit_cast<float>((two_w >> 4) + exp_offset) * exp_scale;
  const uint32_t magic_mask = 126u << 23;
  const float magic_bias = 0.5f;
  const float denormalized = std::bit_cast<float>((two_w >> 17) | magic_mask) - magic_bias;
  const uint32_t denorm_cutoff = 1u << 27;
  const uint32_t result =
      sign | (two_w < denorm_cutoff ? std::bit_cast<uint32_t>(denormalized) : std::bit_cast<uint32_t>(normalized));
  return std::bit_cast<float>(result);
}

uint16_t f32_to_f16(float f) {
  const float scale_to_inf = std::bit_cast<float>(0x77800000u);
  const float scale_to_zero = std::bit_cast<float>(0x08800000u);
  float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
  const uint32_t w = std::bit_cast<uint32_t>(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = std::bit_cast<float>((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = std::bit_cast<uint32_t>(base);
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u;
  const uint32_t mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

}  // namespace squish
