/* A third-party quantizer plugin, built out of tree against an installed Squish
 * (find_package(Squish), squish_add_plugin): the NF4 type of QLoRA (Dettmers et al., 2023).
 *
 * Blocks of 32 weights: an f32 absmax scale and 32 4-bit indices into the 16 NF4 levels, the
 * quantiles of a standard normal rescaled to [-1, 1] (20 bytes: 5 bits per weight). It brings no
 * dot kernel (the optional ABI 3.1 functions stay NULL): Squish's engine dequantizes its rows and
 * multiplies in float. Pure C, no Squish library linked: only <squish/plugin_abi.h>.
 *
 * Use: squish-run pipelines/compress.yaml --plugin /path/to/squish_nf4.so --set recipe=r.json ...
 * with {"match": "*mlp*", "type": "NF4"} in the recipe's tensors. */
#include <squish/plugin_abi.h>

#include <math.h>
#include <string.h>

static const float kLevels[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1848449f, -0.0910500f, 0.0f,
                                  0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f, 0.4407098f, 0.5626170f, 0.7229568f, 1.0f};

typedef struct {
  float absmax;
  uint8_t q[16]; /* two 4-bit indices per byte, low nibble first */
} block_nf4;

static int nearest(float v) {
  int best = 0;
  for (int k = 1; k < 16; ++k)
    if (fabsf(v - kLevels[k]) < fabsf(v - kLevels[best])) best = k;
  return best;
}

static void quantize_rows(void* self, const float* src, void* dst, int64_t n_rows, int64_t n, const float* importance) {
  (void)self, (void)importance; /* NF4 is a fixed grid: no importance weighting */
  block_nf4* out = (block_nf4*)dst;
  for (int64_t b = 0; b < n_rows * n / 32; ++b) {
    const float* x = src + b * 32;
    float amax = 0;
    for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(x[i]));
    out[b].absmax = amax;
    memset(out[b].q, 0, sizeof out[b].q);
    for (int i = 0; i < 32; ++i) {
      const int k = amax > 0 ? nearest(x[i] / amax) : 7;
      out[b].q[i / 2] |= (uint8_t)(k << (4 * (i & 1)));
    }
  }
}

static void dequantize_row(void* self, const void* src, float* dst, int64_t n) {
  (void)self;
  const block_nf4* b = (const block_nf4*)src;
  for (int64_t i = 0; i < n; ++i) dst[i] = b[i / 32].absmax * kLevels[(b[i / 32].q[(i % 32) / 2] >> (4 * (i & 1))) & 15];
}

static int register_types(const squish_host* host) {
  squish_type t;
  memset(&t, 0, sizeof t);
  t.struct_size = sizeof t;
  t.id = 1100; /* from the private range; docs/plugins.md lists the ids in use */
  t.name = "NF4";
  t.block_size = 32;
  t.block_bytes = sizeof(block_nf4);
  t.quantize_rows = quantize_rows;
  t.dequantize_row = dequantize_row;
  return host->register_type(host->ctx, &t);
}

SQUISH_PLUGIN_METADATA(0, "");  /* types only: read by the host before it loads the plugin */

SQUISH_PLUGIN_EXPORT const squish_plugin_info* squish_plugin_entry(void) {
  static const squish_plugin_info info = {SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, sizeof(squish_plugin_info), "nf4", "1.0",
                                          "NF4 (QLoRA's 4-bit normal-float levels, absmax per 32)", register_types, 0, 0};
  return &info;
}
