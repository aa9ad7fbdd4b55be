#pragma once
// Hugging Face -> GGUF for every family of core/arch: what llama.cpp's
// convert_hf_to_gguf.py + llama-quantize produce, so Squish's output loads in llama.cpp and,
// for the same weights and types, matches its files byte for byte.
//  - tensor names (both directions) and llama.cpp's tensor order,
//  - the Llama q/k row permutation (HF rotate-half -> GGUF interleaved rope layout),
//  - the metadata list (hyper-parameters and tokenizer), in llama.cpp's key order.
#include "core/gguf/gguf.hpp"
#include "core/arch/hf_config.hpp"

#include <optional>
#include <string>
#include <vector>

namespace squish::gguf {

// ---- tensor names ----------------------------------------------------------------------------

// "model.layers.3.self_attn.q_proj.weight" -> "blk.3.attn_q.weight"; nullopt for names that
// have no GGUF counterpart (e.g. rotary_emb.inv_freq) or are unknown.
std::optional<std::string> hf_to_gguf_name(const std::string& hf_name);
// The reverse: "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight".
std::optional<std::string> gguf_to_hf_name(const std::string& gguf_name);
// GGUF ne (innermost first) from an HF/PyTorch shape (outermost first): the reverse.
std::vector<int64_t> gguf_ne_from_hf_shape(const std::vector<int64_t>& shape);
// Layer index of "blk.N.*", or -1.
int gguf_layer_of(const std::string& gguf_name);
// llama.cpp's tensor order (llama_model_loader's weights_map, which llama-quantize writes in):
// non-layer tensors first, then by layer number, by name within a group.
bool llama_tensor_order_less(const std::string& a, const std::string& b);

// ---- q/k permutation -------------------------------------------------------------------------

// Whether a tensor needs the q/k permutation when writing GGUF architecture `arch`: attn_q /
// attn_k weights and biases of the interleaved-rope architectures (llama, and deci, which a
// pruned qwen2 may be written as: its q/k biases are permuted too, as convert_hf_to_gguf.py's
// LlamaModel/DeciModel.permute does for q_proj/k_proj .weight and .bias). Qwen2 is stored unpermuted.
bool needs_qk_permute(const std::string& arch, const std::string& gguf_name);
// Heads that a q or k tensor is split into for the permutation: n_head for attn_q, n_head_kv
// for attn_k.
int qk_permute_heads(const std::string& gguf_name, int n_head, int n_head_kv);
// HF stores each head's rows as [first halves of the rotary pairs | second halves]
// (rotate-half); GGUF wants the pairs interleaved: out row h*d + 2*j + i = in row h*d + i*d/2 + j,
// for head h, i in {0,1}, j < d/2, d = n_rows / n_heads. Rows are row_len floats (1 for a bias).
void permute_qk_rows(const float* in, float* out, int64_t n_rows, int64_t row_len, int n_heads);
// The inverse (GGUF -> HF).
void unpermute_qk_rows(const float* in, float* out, int64_t n_rows, int64_t row_len, int n_heads);
// Row permutation as an index map: out row r = in row map[r]. Works for any row format
// (e.g. bf16 rows or already-quantized rows), so callers can permute bytes without converting.
std::vector<int64_t> qk_permutation(int64_t n_rows, int n_heads);

// ---- metadata --------------------------------------------------------------------------------

// llama.cpp's llama_ftype values (general.file_type).
enum class LlamaFileType : uint32_t {
  ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q4_0 = 2, MOSTLY_Q4_1 = 3, MOSTLY_Q8_0 = 7, MOSTLY_Q5_0 = 8,
  MOSTLY_Q5_1 = 9, MOSTLY_Q2_K = 10, MOSTLY_Q3_K_S = 11, MOSTLY_Q3_K_M = 12, MOSTLY_Q3_K_L = 13,
  MOSTLY_Q4_K_S = 14, MOSTLY_Q4_K_M = 15, MOSTLY_Q5_K_S = 16, MOSTLY_Q5_K_M = 17, MOSTLY_Q6_K = 18,
  MOSTLY_IQ2_XXS = 19, MOSTLY_IQ2_XS = 20, MOSTLY_IQ3_XS = 22, MOSTLY_IQ3_XXS = 23, MOSTLY_IQ4_NL = 25, MOSTLY_IQ3_S = 26, MOSTLY_IQ3_M = 27,
  MOSTLY_IQ1_S = 24, MOSTLY_IQ2_S = 28, MOSTLY_IQ2_M = 29, MOSTLY_IQ1_M = 31,
  MOSTLY_IQ4_XS = 30, MOSTLY_BF16 = 32,
};
// "Q4_K_M" (llama-quantize's names, case-insensitive), "F32", "F16", "BF16", "Q8_0", ...
std::optional<LlamaFileType> llama_file_type_from_name(const std::string& name);

constexpr uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION, written by llama-quantize

struct MetadataOptions {
  std::string name;  // general.name; empty = the model folder's name
  // general.file_type; when set, general.quantization_version and general.file_type are
  // appended last, as llama-quantize does. Unset: neither key (an unquantized conversion).
  std::optional<LlamaFileType> file_type;
  // Per-layer shapes after pruning; empty = uniform from the config. When the entries differ
  // they are written as INT32 arrays (llama.cpp's get_key_or_arr), otherwise as one UINT32.
  std::vector<int> head_count, head_count_kv, feed_forward_length;
};

// Hyper-parameter keys: general.architecture, general.name, <arch>.context_length,
// embedding_length, block_count, feed_forward_length, attention.head_count, head_count_kv,
// key_length, value_length, [llama, deci: rope.dimension_count], rope.freq_base,
// attention.layer_norm_rms_epsilon. The architecture is cfg.arch / cfg.family (a pruned model's
// output architecture may differ from its config.json family: core/recipe).
std::vector<KeyValue> hparams_metadata(const ModelConfig& cfg, const MetadataOptions& opt);

// Tokenizer keys (tokenizer.ggml.*) from <model_dir>/tokenizer.json (+ tokenizer_config.json,
// config.json): Vocab::from_tokenizer_json(...).gguf_metadata() (core/tokenizer/vocab.hpp), the
// one conversion, so every file compress writes is one Squish's own tokenizer reads back.
std::vector<KeyValue> tokenizer_metadata(const ModelConfig& cfg, const std::string& model_dir);

// The complete list in llama.cpp's order: hparams, tokenizer, then (if opt.file_type)
// general.quantization_version and general.file_type. For coder-28m with file_type Q4_K_M this
// equals the metadata of reference/coder-28m-Q4_K_M.gguf exactly.
std::vector<KeyValue> build_metadata(const ModelConfig& cfg, const std::string& model_dir, const MetadataOptions& opt);

}  // namespace squish::gguf
