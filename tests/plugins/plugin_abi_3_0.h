/* <squish/plugin_abi.h> as it stood at ABI 3.0, frozen: the test plugin oldminor_plugin.c is built
 * against it to prove that a plugin from the previous minor version keeps loading. Never edit. */
#ifndef SQUISH_PLUGIN_ABI_3_0_H
#define SQUISH_PLUGIN_ABI_3_0_H
#include <stddef.h>
#include <stdint.h>

#define SQUISH_ABI_MAJOR 3
#define SQUISH_ABI_MINOR 0

typedef struct squish_type {
  uint32_t struct_size;
  uint32_t id;
  const char* name;
  uint32_t block_size;
  uint32_t block_bytes;
  void* self;
  int (*supports_row)(void* self, int64_t n_per_row);
  void (*quantize_rows)(void* self, const float* src, void* dst, int64_t n_rows, int64_t n_per_row, const float* importance);
  void (*dequantize_row)(void* self, const void* src, float* dst, int64_t n);
} squish_type;

typedef struct squish_host {
  uint32_t abi_major, abi_minor, struct_size;
  void* ctx;
  int (*register_type)(void* ctx, const squish_type* type);
  const squish_type* (*find_type)(void* ctx, uint32_t id);
  const char* (*last_error)(void* ctx);
} squish_host;

typedef struct squish_plugin_info {
  uint32_t abi_major;
  uint32_t abi_minor;
  uint32_t struct_size;
  const char* name;
  const char* version;
  const char* summary;
  int (*register_types)(const squish_host* host);
  const char* cxx_build;
  void (*register_nodes)(void* node_registry);
} squish_plugin_info;

#endif
