/* Squish plugin ABI: the C boundary between squish-run and the shared objects it dlopens.
 *
 * A plugin exports one function, `squish_plugin_entry`, returning a squish_plugin_info. The host
 * reads `abi_major` first (it sits where ABI 1 and 2 kept their single version number), refuses
 * a plugin whose major differs from its own or whose minor is newer, and reads nothing beyond a
 * struct's `struct_size`: fields a minor version appends are zero for older plugins.
 *
 * What crosses this boundary is plain C (integers, C strings, function pointers), so a quantizer
 * plugin may be built with any C or C++ compiler and does not link libsquish_core. Stage plugins
 * that add pipeline nodes hand C++ objects to the host; `register_nodes` is therefore called only
 * when the plugin's `cxx_build` string equals the host's (same Squish core, compiler and C++
 * standard library), see docs/plugins.md.
 *
 * Versions: 3.0 types with quantize/dequantize; 3.1 adds a type's own dot kernel; 3.2 adds the
 * metadata the host reads from the file before loading it (SQUISH_PLUGIN_METADATA). */
#ifndef SQUISH_PLUGIN_ABI_H
#define SQUISH_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SQUISH_ABI_MAJOR 3
#define SQUISH_ABI_MINOR 2
#define SQUISH_PLUGIN_ENTRY_SYMBOL "squish_plugin_entry"

/* GGUF tensor type ids below 1024 are ggml's (ggml.h, enum ggml_type). Plugins take ids from this
 * private range; docs/plugins.md lists the ids Squish's own plugins use. A GGUF holding a private
 * type records the providing plugin in its metadata (squish.type.<id>.plugin). */
#define SQUISH_TYPE_ID_PRIVATE_FIRST 1024u
#define SQUISH_TYPE_ID_PRIVATE_LAST 2047u

/* A tensor type: rows of `block_size`-element blocks of `block_bytes` bytes each. Every function
 * must be reentrant (the host calls it from many threads at once) and must not throw. */
typedef struct squish_type {
  uint32_t struct_size; /* sizeof(squish_type) as the plugin was compiled */
  uint32_t id;          /* a private-range id */
  const char* name;     /* "HQ3_K": letters, digits, '_'; unique, matched case-insensitively */
  uint32_t block_size;  /* elements per block */
  uint32_t block_bytes; /* bytes per block */
  void* self;           /* passed back to every function below */

  /* ---- ABI 3.0 ---- */
  /* Optional: 0 when rows of n_per_row elements cannot be stored in this type (beyond n_per_row
   * being a multiple of block_size, which the host checks). NULL: any such row is fine. */
  int (*supports_row)(void* self, int64_t n_per_row);
  /* n_rows rows of n_per_row floats -> n_rows * (n_per_row / block_size) blocks at dst.
   * importance: NULL, or n_per_row non-negative weights per input column (the mean squared
   * activation each column sees): minimise the importance-weighted squared error. */
  void (*quantize_rows)(void* self, const float* src, void* dst, int64_t n_rows, int64_t n_per_row,
                        const float* importance);
  /* One whole row of n elements (as quantized) back to floats. */
  void (*dequantize_row)(void* self, const void* src, float* dst, int64_t n);

  /* ---- ABI 3.1: the type's own dot kernel (all three, or activation_bytes NULL for none: the
   * host then dequantizes rows and multiplies in float) ---- */
  /* Bytes an activation vector of n floats takes once prepared for this type's dots. */
  size_t (*activation_bytes)(void* self, int64_t n);
  /* Prepares x (n floats) once per vector; the result is shared by every row of a matrix. */
  void (*prepare_activation)(void* self, const float* x, void* xa, int64_t n);
  /* sum_i w[i] * x[i] for one quantized row w of n elements and a prepared activation. */
  float (*vec_dot)(void* self, int64_t n, const void* w_row, const void* xa);
} squish_type;

/* What the host offers a plugin while it registers. */
typedef struct squish_host {
  uint32_t abi_major, abi_minor, struct_size;
  void* ctx;
  /* Adds a type. Returns 0, or non-zero with the reason left in last_error (the host then refuses
   * the plugin with that reason). The host copies *type; the strings and functions it points to
   * must live as long as the plugin is loaded. */
  int (*register_type)(void* ctx, const squish_type* type);
  /* A built-in type (a ggml id: 10 = Q2_K, 11 = Q3_K, 12 = Q4_K, 14 = Q6_K, 8 = Q8_0, ...) or one
   * registered earlier, as a squish_type whose functions call the host's kernels; NULL if none.
   * Lets a plugin build on a built-in quantizer and its dot kernel. */
  const squish_type* (*find_type)(void* ctx, uint32_t id);
  const char* (*last_error)(void* ctx);
} squish_host;

typedef struct squish_plugin_info {
  uint32_t abi_major;   /* first: ABI 1 and 2 plugins kept their one version number here */
  uint32_t abi_minor;
  uint32_t struct_size; /* sizeof(squish_plugin_info) as the plugin was compiled */
  const char* name;     /* "hadamard": the plugin's name, recorded in GGUFs that use its types */
  const char* version;
  const char* summary;
  /* Optional: registers the plugin's tensor types. 0 on success. */
  int (*register_types)(const squish_host* host);
  /* Optional, C++ only: registers pipeline node kinds into a squish::NodeRegistry*. Called only
   * when cxx_build equals the host's (SQUISH_CXX_BUILD in core/runtime/plugin_api.hpp). */
  const char* cxx_build;
  void (*register_nodes)(void* node_registry);
} squish_plugin_info;

typedef const squish_plugin_info* (*squish_plugin_entry_fn)(void);

#define SQUISH_PLUGIN_EXPORT __attribute__((visibility("default")))

/* ---- ABI 3.2: metadata read from the file, before the plugin is loaded ----
 * dlopen runs a shared object's static constructors before the host can call anything in it, so
 * the versions are also written where the host can read them without loading the code: one
 * squish_plugin_metadata in the ELF section ".squish_plugin" (as DuckDB reads an extension's
 * metadata footer first). A plugin built against 3.2 or later places it with
 * SQUISH_PLUGIN_METADATA(adds_nodes, cxx_build) once, at file scope; the host refuses an
 * incompatible one before dlopen. Plugins built against 3.0 or 3.1 have no such section and are
 * checked after loading, through their entry point. */
#define SQUISH_PLUGIN_SECTION ".squish_plugin"

typedef struct squish_plugin_metadata {
  char magic[8];         /* "SQUISHPL", no terminating NUL */
  uint32_t abi_major;
  uint32_t abi_minor;
  uint32_t struct_size;  /* sizeof(squish_plugin_metadata) as the plugin was compiled */
  uint32_t adds_nodes;   /* 1: the plugin registers pipeline nodes (its cxx_build must equal the host's) */
  char cxx_build[192];   /* NUL-terminated; "" for a plugin that only adds tensor types */
} squish_plugin_metadata;

#define SQUISH_PLUGIN_METADATA(ADDS_NODES, CXX_BUILD)                                                           \
  __attribute__((section(SQUISH_PLUGIN_SECTION), used)) static const squish_plugin_metadata squish_plugin_metadata_ = { \
      {'S', 'Q', 'U', 'I', 'S', 'H', 'P', 'L'}, SQUISH_ABI_MAJOR, SQUISH_ABI_MINOR, sizeof(squish_plugin_metadata), (ADDS_NODES), CXX_BUILD}

#ifdef __cplusplus
}
#endif

#endif /* SQUISH_PLUGIN_ABI_H */
