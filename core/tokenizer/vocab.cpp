#include "core/tokenizer/vocab.hpp"
#include "core/io/text_file.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>

#include "core/base/error.hpp"

namespace squish {

namespace {

using json = nlohmann::json;

// The pre-tokenizer regexes we implement (pretokenize.hpp), as tokenizer.json spells them, and
// the tokenizer.ggml.pre name llama.cpp gives each.
constexpr std::pair<const char*, const char*> kPreRegexes[] = {
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    {"gpt-2", R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)"},
};

// tokenizer.ggml.pre names llama.cpp (llama-vocab.cpp) splits with the GPT-2 regex and nothing
// else special. Not "default": that is a cascade of four regexes.
constexpr const char* kGpt2PreNames[] = {"gpt-2",      "phi-2",      "jina-es", "jina-de", "gigachat", "jina-v2-es",
                                         "jina-v2-de", "a.x-4.0",    "mellum",  "mpt",     "olmo"};

constexpr const char* kSpmSpace = "\xE2\x96\x81";  // U+2581 '▁'

std::optional<json> read_json(const std::filesystem::path& p, bool required) {
  std::error_code ec;
  if (!required && !std::filesystem::exists(p, ec)) return std::nullopt;
  return read_json_file(p.string(), p.filename().string().c_str());
}

// Every node of a (possibly nested) Sequence of normalizers / pre-tokenizers / post-processors.
void flatten(const json& node, const char* list_key, std::vector<const json*>& out) {
  if (!node.is_object()) return;
  if (node.value("type", "") == "Sequence" && node.contains(list_key)) {
    for (const json& child : node[list_key]) flatten(child, list_key, out);
  } else {
    out.push_back(&node);
  }
}

bool looks_special(const std::string& t) {
  // convert_hf_to_gguf.py's does_token_look_special: added tokens some models forget to flag.
  const auto starts = [&](std::string_view p) { return t.size() >= p.size() && t.compare(0, p.size(), p) == 0; };
  const auto ends = [&](std::string_view s) {
    return t.size() >= s.size() && t.compare(t.size() - s.size(), s.size(), s) == 0;
  };
  return t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]" || (starts("<|") && ends("|>")) ||
         (starts("<\xEF\xBD\x9C") && ends("\xEF\xBD\x9C>")) || (starts("<unused") && ends(">"));
}

bool is_byte_piece(const std::string& t) {  // <0xAB>
  const auto hex = [](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; };
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  for (size_t pos = 0; (pos = s.find(from, pos)) != std::string::npos; pos += to.size()) s.replace(pos, from.size(), to);
}

std::optional<std::string> token_content(const json& entry) {  // "x" or {"content": "x"}
  if (entry.is_string()) return entry.get<std::string>();
  if (entry.is_object() && entry.contains("content") && entry["content"].is_string()) return entry["content"];
  return std::nullopt;
}

std::optional<bool> json_bool(const std::optional<json>& j, const std::string& key) {
  if (j && j->is_object() && j->contains(key) && (*j)[key].is_boolean()) return (*j)[key].get<bool>();
  return std::nullopt;
}

// tokenizer.ggml.pre of a byte-level BPE: ByteLevel with use_regex (GPT-2's regex), or a Split
// by one of the known regexes followed by ByteLevel without it.
std::string detect_pre(const json& tj, const std::string& path) {
  std::vector<const json*> pres;
  if (tj.contains("pre_tokenizer")) flatten(tj["pre_tokenizer"], "pretokenizers", pres);
  bool byte_level = false;
  int regexes = 0;
  std::string pre;
  for (const json* p : pres) {
    const std::string type = p->value("type", "");
    if (type == "ByteLevel") {
      byte_level = true;
      if (p->value("use_regex", true)) ++regexes, pre = "gpt-2";
    } else if (type == "Split" && p->contains("pattern") && (*p)["pattern"].contains("Regex")) {
      const std::string regex = (*p)["pattern"]["Regex"];
      const auto* known = std::find_if(std::begin(kPreRegexes), std::end(kPreRegexes),
                                       [&](const auto& k) { return regex == k.second; });
      if (known == std::end(kPreRegexes)) fail(ExitCode::InputData, "{}: unsupported pre-tokenizer regex {}", path, regex);
      ++regexes, pre = known->first;
    } else {
      fail(ExitCode::InputData, "{}: unsupported pre-tokenizer '{}'", path, type);
    }
  }
  if (!byte_level) fail(ExitCode::InputData, "{}: BPE without byte_fallback needs a ByteLevel pre-tokenizer", path);
  if (regexes != 1)
    fail(ExitCode::InputData, "{}: unsupported pre-tokenizer ({} splitting regexes; one is supported)", path, regexes);
  return pre;
}

// tokenizer.json's tokens by id: the model vocabulary, then added tokens (which may extend it
// and win on a shared id). By id, so that "lowest id first" is the maps' order.
struct TokenTable {
  struct Added {
    std::string content;
    bool special = false;
  };
  std::map<int64_t, Added> added;
  std::map<int64_t, std::string> vocab;
  int64_t n = 0;                                   // the vocabulary's size
  std::vector<std::optional<std::string>> by_id;  // n entries; empty: an id no token has
};

TokenTable read_token_table(const json& tj, const json& model, const std::string& path, int n_vocab) {
  TokenTable t;
  // Ids are integers below 2^24 (config.json's vocab_size bound), so nothing below truncates
  // or sizes a table from a hostile number.
  constexpr int64_t kMaxId = int64_t(1) << 24;
  const auto token_id = [&](const json& id, const std::string& text) {
    if (!id.is_number_integer() || (id.is_number_unsigned() ? id.get<uint64_t>() >= uint64_t(kMaxId) : id.get<int64_t>() < 0))
      fail(ExitCode::InputData, "{}: token '{}' has id {}, not an integer in 0..{}", path, text, json_text(id), kMaxId - 1);
    return id.get<int64_t>();
  };
  if (!model.at("vocab").is_object()) fail(ExitCode::InputData, "{}: model.vocab must be an object of token: id", path);
  for (const auto& [text, id] : model.at("vocab").items()) t.vocab[token_id(id, text)] = text;
  if (tj.contains("added_tokens") && tj["added_tokens"].is_array())
    for (const json& a : tj["added_tokens"]) {
      const std::string content = a.at("content");
      t.added[token_id(a.at("id"), content)] = {content, a.value("special", false)};
    }
  int64_t max_id = -1;
  if (!t.vocab.empty()) max_id = t.vocab.rbegin()->first;
  if (!t.added.empty()) max_id = std::max(max_id, t.added.rbegin()->first);
  // The model's vocab_size decides the vocabulary size (as the converter's), else the tokenizer's,
  // whose ids must then be nearly dense (unlisted ids become padding tokens).
  const int64_t listed = static_cast<int64_t>(t.vocab.size() + t.added.size());
  if (n_vocab <= 0 && max_id + 1 > 2 * listed + 1024)
    fail(ExitCode::InputData, "{}: highest token id {} but only {} tokens listed (ids must be nearly contiguous)", path, max_id, listed);
  t.n = n_vocab > 0 ? n_vocab : max_id + 1;
  const auto check = [&](int64_t id, const std::string& text) {
    if (id < 0 || id >= t.n) fail(ExitCode::InputData, "{}: token id {} ('{}') is outside vocab_size {}", path, id, text, t.n);
  };
  for (const auto& [id, text] : t.vocab) check(id, text);
  for (const auto& [id, a] : t.added) check(id, a.content);
  t.by_id.resize(static_cast<size_t>(t.n));
  for (const auto& [id, text] : t.vocab) t.by_id[static_cast<size_t>(id)] = text;
  for (const auto& [id, a] : t.added) t.by_id[static_cast<size_t>(id)] = a.content;
  return t;
}

// Special-token ids (SpecialVocab): the tokenizer_config.json string looked up among the added
// tokens (lowest id first), else config.json's <typ>_token_id. Then add_bos/add_eos:
// tokenizer_config.json's flags, else what the post-processor template does (a special token
// first / last); add_bos is always written, add_eos only when known. And the chat template.
void read_special_tokens(Vocab& v, const json& tj, const TokenTable& t, const std::optional<json>& tcfg, const std::optional<json>& cfg) {
  const auto special_id = [&](const std::string& typ) -> int32_t {
    if (tcfg && tcfg->is_object() && tcfg->contains(typ + "_token"))
      if (const auto content = token_content((*tcfg)[typ + "_token"]))
        for (const auto& [id, a] : t.added)
          if (a.content == *content) return static_cast<int32_t>(id);
    const std::string key = typ + "_token_id";
    if (cfg && cfg->is_object() && cfg->contains(key) && (*cfg)[key].is_number_integer()) {
      const int64_t id = (*cfg)[key];
      if (id >= 0 && id < t.n) return static_cast<int32_t>(id);
    }
    return -1;
  };
  v.bos = special_id("bos");
  v.eos = special_id("eos");
  v.unk = special_id("unk");
  v.sep = special_id("sep");
  v.pad = special_id("pad");

  const json* single = nullptr;
  if (tj.contains("post_processor") && tj["post_processor"].is_object()) {
    std::vector<const json*> procs;
    flatten(tj["post_processor"], "processors", procs);
    for (const json* p : procs)
      if (p->value("type", "") == "TemplateProcessing" && p->contains("single") && (*p)["single"].is_array() && !(*p)["single"].empty())
        single = &(*p)["single"];
  }
  const std::optional<bool> tc_bos = json_bool(tcfg, "add_bos_token"), tc_eos = json_bool(tcfg, "add_eos_token");
  v.add_bos = tc_bos ? *tc_bos : single && single->front().contains("SpecialToken");
  v.has_add_eos = tc_eos || single;
  v.add_eos = tc_eos ? *tc_eos : single && single->back().contains("SpecialToken");
  if (tcfg && tcfg->is_object() && tcfg->contains("chat_template") && (*tcfg)["chat_template"].is_string())
    v.chat_template = (*tcfg)["chat_template"];
}

// Byte-level BPE (convert_hf_to_gguf.py _set_vocab_gpt2).
void fill_byte_level(Vocab& v, const json& tj, const json& model, TokenTable& t, const std::string& path) {
  v.model = "gpt2";
  v.pre = detect_pre(tj, path);
  v.ignore_merges = model.value("ignore_merges", false);
  for (int64_t i = 0; i < t.n; ++i) {
    auto& text = t.by_id[static_cast<size_t>(i)];
    TokenType type = TokenType::Normal;
    if (!text) {
      text = fmt::format("[PAD{}]", i);
      type = TokenType::Unused;
    } else if (auto it = t.added.find(i); it != t.added.end()) {
      if (it->second.special || looks_special(*text)) {
        type = TokenType::Control;
      } else {
        type = TokenType::UserDefined;
        replace_all(*text, kSpmSpace, " ");  // the converter pre-normalizes user-defined spaces
      }
    }
    v.tokens[static_cast<size_t>(i)] = std::move(*text);
    v.token_types[static_cast<size_t>(i)] = static_cast<int32_t>(type);
  }
  // Merges: "a b" strings, or [a, b] pairs (spaces inside a part become U+0120, as the
  // converter writes them).
  for (const json& m : model.value("merges", json::array())) {
    if (m.is_string()) {
      v.merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2) {
      std::string a = m[0], b = m[1];
      replace_all(a, " ", "\xC4\xA0");
      replace_all(b, " ", "\xC4\xA0");
      v.merges.push_back(a + " " + b);
    } else {
      fail(ExitCode::InputData, "{}: unknown merges format", path);
    }
  }
}

// SentencePiece-style BPE with byte fallback, written as convert_hf_to_gguf.py's
// _set_vocab_sentencepiece would from the original tokenizer.model: the unk_token is Unknown,
// added tokens Control (flagged or looking special) or UserDefined, <0xXX> Byte. Normal pieces
// score -0, -1, -2, ... in id order (SentencePiece BPE scores a piece by minus its merge rank;
// HF's converter orders ids the same way), other pieces 0, padding -1000.
void fill_sentencepiece(Vocab& v, const json& tj, const json& model, TokenTable& t, const std::string& path) {
  v.model = "llama";
  std::vector<const json*> norms;
  if (tj.contains("normalizer")) flatten(tj["normalizer"], "normalizers", norms);
  std::vector<const json*> pres;
  if (tj.contains("pre_tokenizer")) flatten(tj["pre_tokenizer"], "pretokenizers", pres);
  bool prepend = false;
  for (const json* nz : norms) {
    const std::string type = nz->value("type", "");
    if (type == "Prepend" && nz->value("prepend", "") == kSpmSpace) {
      prepend = true;
    } else if (type == "Replace" && nz->contains("pattern") && (*nz)["pattern"].value("String", "") == " " &&
               nz->value("content", "") == kSpmSpace) {
      // spaces become '▁': what the SPM tokenizer always does
    } else {
      fail(ExitCode::InputData, "{}: unsupported normalizer '{}'", path, type);
    }
  }
  for (const json* p : pres) {
    if (p->value("type", "") != "Metaspace" || p->value("replacement", "") != kSpmSpace)
      fail(ExitCode::InputData, "{}: unsupported pre-tokenizer '{}' for a byte-fallback BPE", path, p->value("type", ""));
    prepend = p->value("prepend_scheme", "always") != "never" || p->value("add_prefix_space", false);
  }
  v.add_space_prefix = prepend;
  const std::string unk_text = model.contains("unk_token") && model["unk_token"].is_string() ? model["unk_token"].get<std::string>() : "";
  v.scores.resize(static_cast<size_t>(t.n));
  int32_t rank = 0;
  for (int64_t i = 0; i < t.n; ++i) {
    auto& text = t.by_id[static_cast<size_t>(i)];
    TokenType type = TokenType::Normal;
    float score = 0.0f;
    if (!text) {
      text = fmt::format("[PAD{}]", i);
      type = TokenType::Unused;
      score = -1000.0f;
    } else if (!unk_text.empty() && *text == unk_text) {
      type = TokenType::Unknown;
    } else if (auto it = t.added.find(i); it != t.added.end()) {
      type = it->second.special || looks_special(*text) ? TokenType::Control : TokenType::UserDefined;
    } else if (is_byte_piece(*text)) {
      type = TokenType::Byte;
    } else {
      score = -static_cast<float>(rank++);
    }
    v.scores[static_cast<size_t>(i)] = score;
    v.tokens[static_cast<size_t>(i)] = std::move(*text);
    v.token_types[static_cast<size_t>(i)] = static_cast<int32_t>(type);
  }
}

}  // namespace

Vocab Vocab::from_tokenizer_json(const std::string& path, int n_vocab) {
  namespace fs = std::filesystem;
  const json tj = *read_json(path, true);
  const fs::path dir = fs::path(path).parent_path();
  Vocab v;
  try {
    const json& model = tj.at("model");
    if (model.value("type", "") != "BPE")
      fail(ExitCode::InputData, "{}: unsupported tokenizer model '{}' (only BPE)", path, model.value("type", ""));
    TokenTable table = read_token_table(tj, model, path, n_vocab);
    read_special_tokens(v, tj, table, read_json(dir / "tokenizer_config.json", false), read_json(dir / "config.json", false));
    v.tokens.resize(static_cast<size_t>(table.n));
    v.token_types.resize(static_cast<size_t>(table.n));
    if (model.value("byte_fallback", false)) fill_sentencepiece(v, tj, model, table, path);
    else fill_byte_level(v, tj, model, table, path);
  } catch (const json::exception& e) {
    fail_json_shape(path, "malformed tokenizer.json", e);
  }
  v.validate(path);
  return v;
}

Vocab Vocab::from_gguf(const gguf::Reader& r) {
  const std::string& path = r.path();
  Vocab v;
  v.model = r.get_string("tokenizer.ggml.model", "");
  if (v.model != "gpt2" && v.model != "llama")
    fail(ExitCode::InputData, "{}: unsupported tokenizer.ggml.model '{}'", path, v.model);
  const gguf::Value& tokens = r.at_key("tokenizer.ggml.tokens");
  v.tokens = tokens.as_strings();
  const size_t n = v.tokens.size();
  if (const gguf::Value* t = r.get("tokenizer.ggml.token_type")) {
    for (int64_t x : t->as_ints()) v.token_types.push_back(static_cast<int32_t>(x));
  } else {
    v.token_types.assign(n, static_cast<int32_t>(TokenType::Normal));
  }
  if (const gguf::Value* s = r.get("tokenizer.ggml.scores"))
    for (double x : s->as_floats()) v.scores.push_back(static_cast<float>(x));
  const gguf::Value* merges = r.get("tokenizer.ggml.merges");
  if (merges) v.merges = merges->as_strings();

  if (v.model == "llama") {
    // llama.cpp's SPM defaults.
    v.bos = 1, v.eos = 2, v.unk = 0, v.pad = -1;
    v.add_bos = true;
    if (v.scores.empty()) fail(ExitCode::InputData, "{}: tokenizer.ggml.scores missing for an SPM vocabulary", path);
  } else {
    v.pre = r.get_string("tokenizer.ggml.pre", "");
    if (v.pre == "qwen2") {
      v.add_bos = false;
    } else if (v.pre == "llama-bpe" || v.pre == "llama3") {
      v.pre = "llama-bpe";
      v.ignore_merges = true;
      v.add_bos = true;
    } else if (std::find(std::begin(kGpt2PreNames), std::end(kGpt2PreNames), v.pre) != std::end(kGpt2PreNames)) {
      v.pre = "gpt-2";
      v.add_bos = false;
    } else {
      fail(ExitCode::InputData, "{}: unsupported tokenizer.ggml.pre '{}' (supported: qwen2, llama-bpe, gpt-2)", path,
           v.pre);
    }
    if (!merges) fail(ExitCode::InputData, "{}: tokenizer.ggml.merges missing for a BPE vocabulary", path);
  }
  // Ids are UINT32 in GGUF; 0xFFFFFFFF means "none" (llama.cpp's LLAMA_TOKEN_NULL). Any other id
  // outside the vocabulary is a broken file: refused, for the ids Squish uses and the ones it
  // does not (eot, eom, fim_*), which other runtimes stop or insert at.
  const auto id_value = [&](const std::string& key, const gguf::Value& x) -> int32_t {
    uint64_t u = 0;
    try {
      u = x.as_uint();
    } catch (const Error&) {
      fail(ExitCode::InputData, "{}: {} is not a token id (a non-negative integer)", path, key);
    }
    if (u == 0xFFFFFFFFu) return -1;
    if (u >= n) fail(ExitCode::InputData, "{}: {} is {}, outside the vocabulary of {} tokens", path, key, u, n);
    return static_cast<int32_t>(u);
  };
  for (const auto& kv : r.metadata())
    if (kv.first.starts_with("tokenizer.ggml.") && kv.first.ends_with("_token_id") && !kv.second.is_array()) id_value(kv.first, kv.second);
  const auto id = [&](const char* key, int32_t def) -> int32_t {
    const gguf::Value* x = r.get(key);
    return x ? id_value(key, *x) : def;
  };
  v.bos = id("tokenizer.ggml.bos_token_id", v.bos);
  v.eos = id("tokenizer.ggml.eos_token_id", v.eos);
  v.unk = id("tokenizer.ggml.unknown_token_id", v.unk);
  v.sep = id("tokenizer.ggml.seperator_token_id", v.sep);
  v.pad = id("tokenizer.ggml.padding_token_id", v.pad);
  if (const gguf::Value* b = r.get("tokenizer.ggml.add_bos_token")) v.add_bos = b->as_bool();
  if (const gguf::Value* b = r.get("tokenizer.ggml.add_eos_token")) v.add_eos = b->as_bool(), v.has_add_eos = true;
  if (const gguf::Value* b = r.get("tokenizer.ggml.add_space_prefix")) v.add_space_prefix = b->as_bool();
  v.chat_template = r.get_string("tokenizer.chat_template", "");
  v.validate(path);
  return v;
}

std::vector<gguf::KeyValue> Vocab::gguf_metadata() const {
  std::vector<gguf::KeyValue> kv;
  kv.emplace_back("tokenizer.ggml.model", model);
  if (model == "gpt2") kv.emplace_back("tokenizer.ggml.pre", pre);
  kv.emplace_back("tokenizer.ggml.tokens", gguf::Value::strings(tokens));
  if (model == "llama") kv.emplace_back("tokenizer.ggml.scores", gguf::Value::float32s(scores));
  kv.emplace_back("tokenizer.ggml.token_type", gguf::Value::int32s(token_types));
  if (model == "gpt2") kv.emplace_back("tokenizer.ggml.merges", gguf::Value::strings(merges));
  // The converter's order (eos first).
  const auto id = [&](const char* key, int32_t v) {
    if (v >= 0) kv.emplace_back(key, static_cast<uint32_t>(v));
  };
  id("tokenizer.ggml.eos_token_id", eos);
  id("tokenizer.ggml.bos_token_id", bos);
  id("tokenizer.ggml.unknown_token_id", unk);
  id("tokenizer.ggml.seperator_token_id", sep);
  id("tokenizer.ggml.padding_token_id", pad);
  kv.emplace_back("tokenizer.ggml.add_bos_token", add_bos);
  if (has_add_eos) kv.emplace_back("tokenizer.ggml.add_eos_token", add_eos);
  if (model == "llama" && !add_space_prefix) kv.emplace_back("tokenizer.ggml.add_space_prefix", false);
  if (!chat_template.empty()) kv.emplace_back("tokenizer.chat_template", chat_template);
  return kv;
}

void Vocab::validate(const std::string& what) const {
  const size_t n = tokens.size();
  if (n == 0) fail(ExitCode::InputData, "{}: empty vocabulary", what);
  if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max()))
    fail(ExitCode::InputData, "{}: vocabulary too large ({})", what, n);
  if (token_types.size() != n)
    fail(ExitCode::InputData, "{}: {} token types for {} tokens", what, token_types.size(), n);
  if (!scores.empty() && scores.size() != n)
    fail(ExitCode::InputData, "{}: {} scores for {} tokens", what, scores.size(), n);
  for (int32_t t : token_types)
    if (t < 0 || t > static_cast<int32_t>(TokenType::Byte)) fail(ExitCode::InputData, "{}: bad token type {}", what, t);
  for (int32_t id : {bos, eos, unk, sep, pad})
    if (id < -1 || id >= static_cast<int32_t>(n)) fail(ExitCode::InputData, "{}: special token id {} out of range", what, id);
  if (model == "gpt2" && pre != "qwen2" && pre != "llama-bpe" && pre != "gpt-2")
    fail(ExitCode::InputData, "{}: unsupported pre-tokenizer '{}'", what, pre);
  if (model == "llama" && scores.size() != n) fail(ExitCode::InputData, "{}: SPM vocabulary without scores", what);
  if (model != "gpt2" && model != "llama") fail(ExitCode::InputData, "{}: unsupported tokenizer model '{}'", what, model);
}

}  // namespace squish
