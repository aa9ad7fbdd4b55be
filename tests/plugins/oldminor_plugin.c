/* A quantizer plugin built against ABI 3.0 (tests/plugins/plugin_abi_3_0.h), before types could
 * bring a dot kernel: its squish_type is shorter than the host's. Type OLDQ8 (id 2047): blocks of
 * 32 values as an f32 scale (absmax / 127) and 32 int8 levels. The host must load it and run its
 * rows by dequantizing them.
 * With OLDMINOR_CLAIM_NEWER it claims a minor version newer than any host: must be refused. */
#include "plugin_abi_3_0.h"

#include <math.h>
#include <string.h>

typedef struct {
  float d;
  int8_t q[32];
} block_oldq8;

static void quantize_rows(void* self, const float* src, void* dst, int64_t n_rows, int64_t n, const float* importance) {
  (void)self, (void)importance;
  block_oldq8* out = (block_oldq8*)dst;
  for (int64_t b = 0; b < n_rows * n / 32; ++b) {
    const float* x = src + b * 32;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(x[i]));
    out[b].d = amax / 127.f;
    const float id = amax > 0 ? 127.f / amax : 0.f;
    for (int i = 0; i < 32; ++i) out[b].q[i] = (int8_t)lrintf(x[i] * id);
  }
}

static void dequantize_row(void* self, const void* src, float* dst, int64_t n) {
  (void)self;
  const block_oldq8* b = (const block_oldq8*)src;
  for (int64_t i = 0; i < n; ++i) dst[i] = b[i / 32].d * b[i / 32].q[i % 32];
}

static int register_types(const squish_host* host) {
  squish_type t;
  memset(&t, 0, sizeof t);
  t.struct_size = sizeof t;
  t.id = 2047;
  t.name = "OLDQ8";
  t.block_size = 32;
  t.block_bytes = sizeof(block_oldq8);
  t.quantize_rows = quantize_rows;
  t.dequantize_row = dequantize_row;
  return host->register_type(host->ctx, &t);
}

__attribute__((visibility("default"))) const squish_plugin_info* squish_plugin_entry(void) {
#ifdef OLDMINOR_CLAIM_NEWER
  static const squish_plugin_info info = {SQUISH_ABI_MAJOR, 99, sizeof(squish_plugin_info), "newminor", "0", "claims ABI 3.99",
                                          register_types, 0, 0};
#else
  static const squish_plugin_info info = {SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, sizeof(squish_plugin_info), "oldminor", "0",
                                          "ABI 3.0 quantizer (no dot kernel)", register_types, 0, 0};
#endif
  return &info;
}
