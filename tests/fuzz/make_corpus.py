#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, generated from ../shared and the checkout.

  make_corpus.py OUT_DIR            writes OUT_DIR/<target>/* (small valid and near-valid inputs)
  make_corpus.py --committed        (re)writes the tiny synthetic seeds in tests/fuzz/seeds/

Big shared files are shrunk so seeds stay small and valid: safetensors tensors get tiny shapes
with offsets recomputed, GGUFs keep their metadata (token arrays trimmed) with tiny tensors,
tokenizer.json files keep their first few hundred tokens and merges.
"""
import json
import os
import shutil
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("SQUISH_SHARED", os.path.join(os.path.dirname(SRC), "shared"))

DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def put(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(os.path.join(d, name), mode) as f:
        f.write(data)


def shared(*p):
    return os.path.join(SHARED, *p)


def have(*p):
    return os.path.exists(shared(*p))


# ---- safetensors ------------------------------------------------------------------------------

def st_build(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape)] -> a valid safetensors file with zero data."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape in tensors:
        n = DTYPE_SIZE[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - (8 + len(h)) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(off)


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), n


def st_shrunk(path, limit=None):
    """The file's tensors (names, dtypes, ranks, metadata) with every dimension cut to <= 2."""
    h, _ = st_header(path)
    meta = h.pop("__metadata__", None)
    items = sorted(h.items(), key=lambda kv: kv[1]["data_offsets"][0])
    if limit:
        items = items[:limit]
    return st_build([(k, v["dtype"], [min(d, 2) for d in v["shape"]]) for k, v in items], meta)


def st_truncated(path, extra=64):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        f.seek(0)
        return f.read(8 + n + extra)


def safetensors_seeds(out):
    put(out, "safetensors", "tiny_f32", st_build([("a", "F32", [2, 2]), ("b", "F16", [3])], {"format": "pt"}))
    put(out, "safetensors", "empty_header", struct.pack("<Q", 2) + b"{}")
    put(out, "safetensors", "all_dtypes", st_build([(f"t_{d}", d, [2]) for d in DTYPE_SIZE] + [("zero", "F32", [0, 4])]))
    if have("models/stories260K/model.safetensors"):
        p = shared("models/stories260K/model.safetensors")
        put(out, "safetensors", "stories260K_shrunk", st_shrunk(p))
        put(out, "safetensors", "stories260K_truncated", st_truncated(p))
    if have("models/coder-28m/model-00001-of-00004.safetensors"):
        put(out, "safetensors", "coder_shard1_shrunk", st_shrunk(shared("models/coder-28m/model-00001-of-00004.safetensors"), 12))


# ---- safetensors index ------------------------------------------------------------------------

# The shards fuzz_safetensors_index.cpp writes beside the fuzzed index.
INDEX_SHARDS = {
    "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
    "model.norm.weight": "model-00001-of-00002.safetensors",
    "model.layers.0.mlp.down_proj.weight": "model-00002-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors",
}


def index_seeds(out):
    put(out, "safetensors_index", "valid", json.dumps({"metadata": {"total_size": 384}, "weight_map": INDEX_SHARDS}, indent=2))
    one = {k: v for k, v in INDEX_SHARDS.items() if v.endswith("00001-of-00002.safetensors")}
    put(out, "safetensors_index", "one_shard_missing_tensors", json.dumps({"weight_map": one}))
    put(out, "safetensors_index", "wrong_shard",
        json.dumps({"weight_map": {**INDEX_SHARDS, "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    if have("models/coder-28m/model.safetensors.index.json"):
        with open(shared("models/coder-28m/model.safetensors.index.json")) as f:
            put(out, "safetensors_index", "coder-28m", f.read())


# ---- config.json ------------------------------------------------------------------------------

def config_seeds(out):
    for m in ("stories260K", "coder-28m"):
        if have("models", m, "config.json"):
            with open(shared("models", m, "config.json")) as f:
                put(out, "config", m, f.read())
    base = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 8,
            "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 512, "rms_norm_eps": 1e-5}
    put(out, "config", "llama3_rope", json.dumps({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
    put(out, "config", "mistral_window", json.dumps({**base, "model_type": "mistral", "sliding_window": 4096}))
    put(out, "config", "qwen2_params", json.dumps({**base, "model_type": "qwen2",
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}, "use_sliding_window": False}))
    put(out, "config", "head_dim", json.dumps({**base, "head_dim": 16, "attention_bias": True}))


# ---- tokenizer.json ---------------------------------------------------------------------------

def trim_tokenizer(tj, n_tokens=300, n_merges=300):
    m = tj["model"]
    m["vocab"] = {k: v for k, v in m["vocab"].items() if v < n_tokens}
    if isinstance(m.get("merges"), list):
        m["merges"] = m["merges"][:n_merges]
    return tj


def tokenizer_seeds(out):
    for m, trim in (("stories260K", False), ("coder-28m", True)):
        if not have("models", m, "tokenizer.json"):
            continue
        with open(shared("models", m, "tokenizer.json")) as f:
            tj = json.load(f)
        if trim:
            tj = trim_tokenizer(tj)
            # added tokens far beyond the trimmed vocabulary would pad it back to 8192 entries
            tj["added_tokens"] = [dict(a, id=a["id"] if a["id"] < 300 else 300 + i) for i, a in enumerate(tj.get("added_tokens", []))]
        text = json.dumps(tj, ensure_ascii=False, separators=(",", ":"))
        put(out, "tokenizer", m, text)
        side = text
        for name in ("tokenizer_config.json", "config.json"):
            if have("models", m, name):
                with open(shared("models", m, name)) as f:
                    side += "\n@@" + name + "@@\n" + f.read()
        put(out, "tokenizer", m + "_with_configs", side)


def tokenizer_committed(out):
    bpe = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "\u0120": 3}, "merges": ["a b"]},
           "pre_tokenizer": {"type": "ByteLevel", "use_regex": True},
           "added_tokens": [{"id": 4, "content": "<|endoftext|>", "special": True}]}
    put(out, "tokenizer", "tiny_gpt2", json.dumps(bpe) + "\n@@tokenizer_config.json@@\n" +
        json.dumps({"eos_token": "<|endoftext|>", "add_bos_token": False}))
    spm = {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                              {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
           "model": {"type": "BPE", "byte_fallback": True, "unk_token": "<unk>",
                     "vocab": {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x41>": 3, "\u2581a": 4, "b": 5}, "merges": []},
           "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}]},
           "added_tokens": [{"id": 1, "content": "<s>", "special": True}, {"id": 2, "content": "</s>", "special": True}]}
    put(out, "tokenizer", "tiny_spm", json.dumps(spm, ensure_ascii=False) + "\n@@config.json@@\n" + json.dumps({"bos_token_id": 1, "eos_token_id": 2}))


# ---- GGUF -------------------------------------------------------------------------------------

GGML_BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
              10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
              24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 30: (1, 2)}
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class GGUF:
    def __init__(self, data):
        self.d, self.p = data, 0

    def u(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.p)[0]
        self.p += struct.calcsize("<" + fmt)
        return v

    def s(self):
        n = self.u("Q")
        v = self.d[self.p:self.p + n]
        self.p += n
        return v

    def value(self, t):
        if t in SCALAR:
            return self.u(SCALAR[t])
        if t == 8:
            return self.s()
        et, n = self.u("I"), self.u("Q")
        return (et, [self.value(et) for _ in range(n)])


def gguf_read(path):
    with open(path, "rb") as f:
        g = GGUF(f.read())
    assert g.u("I") == 0x46554747
    version, nt, nkv = g.u("I"), g.u("Q"), g.u("Q")
    kv = []
    for _ in range(nkv):
        k = g.s()
        t = g.u("I")
        kv.append((k, t, g.value(t)))
    tensors = []
    for _ in range(nt):
        name = g.s()
        nd = g.u("I")
        ne = [g.u("q") for _ in range(nd)]
        tensors.append((name, ne, g.u("I"), g.u("Q")))
    return version, kv, tensors


def enc_value(t, v):
    if t in SCALAR:
        return struct.pack("<" + SCALAR[t], v)
    if t == 8:
        return struct.pack("<Q", len(v)) + v
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(enc_value(et, x) for x in items)


def gguf_write(kv, tensors, align=32, version=3):
    """tensors: [(name, ne, type)] laid out contiguously, zero data."""
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kv))
    for k, t, v in kv:
        out += struct.pack("<Q", len(k)) + k + struct.pack("<I", t) + enc_value(t, v)
    off, sizes = 0, []
    for name, ne, ty in tensors:
        bs, ts = GGML_BLOCK[ty]
        n = 1
        for d in ne:
            n *= d
        size = n // bs * ts
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(ne)) + b"".join(struct.pack("<q", d) for d in ne)
        out += struct.pack("<IQ", ty, off)
        off += (size + align - 1) // align * align
    out += bytes((align - len(out) % align) % align)
    return out + bytes(off)


TOKEN_KEYS = (b"tokenizer.ggml.tokens", b"tokenizer.ggml.scores", b"tokenizer.ggml.token_type")


def gguf_shrunk(path, n_tokens=None, n_tensors=None):
    _, kv, tensors = gguf_read(path)
    kv2 = []
    for k, t, v in kv:
        if n_tokens and t == 9 and (k in TOKEN_KEYS or k == b"tokenizer.ggml.merges"):
            v = (v[0], v[1][:n_tokens])
        kv2.append((k, t, v))
    if n_tensors:
        tensors = tensors[:n_tensors]
    small = []
    for name, ne, ty, _ in tensors:
        bs, _ = GGML_BLOCK.get(ty, (1, 4))
        small.append((name, [bs] + [min(d, 2) for d in ne[1:]], ty if ty in GGML_BLOCK else 0))
    return gguf_write(kv2, small)


def gguf_seeds(out):
    for rel, name, n_tok in (("reference/stories260K/stories260K-f32.gguf", "stories260K_f32", None),
                             ("reference/stories260K/stories260K-q8_0-ffndown_f16.gguf", "stories260K_q8_0", None),
                             ("reference/coder-28m-Q4_K_M.gguf", "coder_q4_k_m", 200),
                             ("reference/coder-28m-Q2_K.gguf", "coder_q2_k", 200)):
        if have(rel):
            put(out, "gguf", name, gguf_shrunk(shared(rel), n_tok))


def gguf_committed(out):
    s = lambda x: x.encode()
    kv = [(b"general.architecture", 8, b"llama"), (b"general.alignment", 4, 32),
          (b"llama.block_count", 4, 1), (b"llama.embedding_length", 4, 32), (b"llama.feed_forward_length", 4, 64),
          (b"llama.attention.head_count", 4, 4), (b"llama.attention.head_count_kv", 4, 2),
          (b"llama.context_length", 4, 128), (b"llama.rope.freq_base", 6, 10000.0),
          (b"llama.attention.layer_norm_rms_epsilon", 6, 1e-5),
          (b"tokenizer.ggml.model", 8, b"llama"),
          (b"tokenizer.ggml.tokens", 9, (8, [s(t) for t in ("<unk>", "<s>", "</s>", "\u2581a", "b")])),
          (b"tokenizer.ggml.scores", 9, (6, [0.0, 0.0, 0.0, -1.0, -2.0])),
          (b"tokenizer.ggml.token_type", 9, (5, [2, 3, 3, 1, 1])),
          (b"tokenizer.ggml.bos_token_id", 4, 1), (b"tokenizer.ggml.eos_token_id", 4, 2),
          (b"nested", 9, (9, [(4, [1, 2]), (4, [3])]))]
    tensors = [(b"token_embd.weight", [32, 5], 0), (b"blk.0.attn_q.weight", [32, 32], 8),
               (b"blk.0.ffn_down.weight", [256, 1], 12), (b"output_norm.weight", [32], 1)]
    put(out, "gguf", "tiny_llama", gguf_write(kv, tensors))
    put(out, "gguf", "header_only", gguf_write([(b"general.architecture", 8, b"qwen2")], []))
    kv_bpe = [(b"tokenizer.ggml.model", 8, b"gpt2"), (b"tokenizer.ggml.pre", 8, b"qwen2"),
              (b"tokenizer.ggml.tokens", 9, (8, [b"a", b"b", b"ab"])), (b"tokenizer.ggml.merges", 9, (8, [b"a b"])),
              (b"tokenizer.ggml.token_type", 9, (5, [1, 1, 1]))]
    put(out, "gguf", "tiny_bpe_v2", gguf_write(kv_bpe, [(b"t", [2], 0)], version=2))


# ---- recipes ----------------------------------------------------------------------------------

RECIPES = {
    "doc_example": {"format": "squish.recipe/1", "name": "coder-32b-laptop", "preset": "Q3_K_S",
                    "tensors": [{"match": "*.weight", "type": "Q3_K", "reason": "base"},
                                {"match": "model.layers.*.mlp.down_proj.weight", "type": "Q4_K", "reason": "down_proj is sensitive"},
                                {"match": "model.layers.0.self_attn.v_proj.weight", "type": "Q6_K", "reason": "highest head score"}],
                    "attention": {"3": {"kv_groups": [0, 2, 3]}, "5": {"q_heads": [0, 1, 4, 5]}},
                    "ffn_channels": {"2": [0, 1, 2, 5, 8]}, "drop_layers": [7], "block_fit": "fallback",
                    "device": "laptop-32GB", "memory_budget_bytes": 17179869184, "source": {"scores": "scores/scores.json"}},
    "preset_only": {"preset": "q4_k_m"},
    "gptq_refit": {"name": "g", "tensors": [{"match": "*", "type": "Q8_0"}], "method": "gptq", "gptq_damp": 0.05,
                   "recovery": "refit", "recovery_damp": 0.02,
                   "removals": [{"kind": "kv_group", "layer": 1, "index": 0, "score": 0.1, "by": "predicted", "reason": "low"}]},
    "bias_error": {"preset": "Q2_K", "recovery": "bias", "block_fit": "error", "attention": {"0": {}}, "ffn_channels": {"1": []}},
}


def recipe_seeds(out):
    for name, r in RECIPES.items():
        put(out, "recipe", name, json.dumps(r, indent=1))


# ---- pipelines --------------------------------------------------------------------------------

OVERRIDES = {
    "squish_main": "@squish\nmodel=models/stories260K\ntext=models/stories260K/calibration.txt\nsize=400000\nprompt=Once upon a time\noutput=stories260K-squish.gguf\n",
    "compress_preset": "@compress\nmodel=m\npreset=Q4_K_M\noutput=o.gguf\n",
    "compress_node_params": "@compress\nmodel=m\noutput=o.gguf\nquantize.damp=0.05\nquantize.act_order=true\nread.include=[a, b]\nread.release_pages=off\n",
    "score": "@score\nmodel=m\ntext=t.txt\noutput=out\nctx=512\nmax_tokens=1000\nmoments=true\n",
    "plan": "@plan\nmodel=m\nstats=s\nsize=1000\noutput=r.json\n",
    "verify": "@verify\nmodel=f.gguf\nreport=v.json\nsource=m\nrecipe=r.json\ntext=t\nppl_reference=3.5\nprompt=hi\n",
    "perplexity": "@perplexity\nmodel=f.gguf\ntext=t\nctx=512\nthreads=2\nreport=p.json\n",
    "generate": "@generate\nmodel=f.gguf\nprompt=Once upon a time\nn=64\nreport=g.json\n",
    "checksum": "@checksum\nmodel=m\noutput=c.json\n",
}


# Every edge form, parallel forms, variable forms, typed parameters of every kind.
PIPELINE_ALL_FORMS = """name: all-forms
description: fuzz seed
plugins: [io, compress]
variables:
  model: {default: m, help: folder}
  out: ~
  base: "${pipeline_dir}/x"
  derived: "${base}.gguf"
settings: {max_in_flight: 2, threads: 1}
nodes:
  recipe: {kind: compress.recipe, params: {model: "${model}", preset: Q4_K_M}}
  read:
    kind: io.safetensors_source
    params: {model: "${model}", include: ["model.*", "lm_head.weight"], exclude: [], release_pages: "yes"}
  pass: {kind: io.passthrough, parallel: 2, params: {check_finite: true, to_f32: off}}
  quant: {kind: compress.quantize, parallel: true, params: {damp: 0.5, act_order: 1, method: !!str gptq}}
  write: {kind: compress.gguf_writer, params: {output: "${derived}"}}
  sums: {kind: io.checksum_manifest, description: manifest, params: {output: "${out}"}}
edges:
  - recipe -> read
  - [read, pass]
  - {from: pass, to: quant}
  - "recipe->quant"
  - quant -> write
  - read -> sums
"""


def pipeline_seeds(out):
    d = os.path.join(SRC, "pipelines")
    for f in sorted(os.listdir(d)):
        if f.endswith(".yaml"):
            with open(os.path.join(d, f)) as fh:
                text = fh.read()
            put(out, "pipeline", f[:-5], text)
            # The same with every required variable given a default, so it loads as it stands.
            put(out, "pipeline", f[:-5] + "_defaults", text.replace("default: ~", "default: x").replace(": ~\n", ": x\n"))


def overrides_seeds(out):
    for name, text in OVERRIDES.items():
        put(out, "overrides", name, text)


def main():
    if sys.argv[1:] == ["--committed"]:
        out = os.path.join(HERE, "seeds")
        put(out, "safetensors", "tiny_f32", st_build([("a", "F32", [2, 2]), ("b", "F16", [3])], {"format": "pt"}))
        put(out, "safetensors_index", "valid", json.dumps({"metadata": {"total_size": 384}, "weight_map": INDEX_SHARDS}, indent=2))
        base = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 8,
                "num_key_value_heads": 4, "num_hidden_layers": 2, "vocab_size": 512}
        put(out, "config", "llama3_rope", json.dumps({**base, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}))
        put(out, "config", "qwen2_window", json.dumps({**base, "model_type": "qwen2", "sliding_window": 4096,
            "use_sliding_window": False, "rope_parameters": {"rope_theta": 1e6}}))
        tokenizer_committed(out)
        gguf_committed(out)
        put(out, "recipe", "doc_example", json.dumps(RECIPES["doc_example"], indent=1))
        put(out, "recipe", "gptq_refit", json.dumps(RECIPES["gptq_refit"]))
        put(out, "overrides", "compress_node_params", OVERRIDES["compress_node_params"])
        put(out, "overrides", "squish_main", OVERRIDES["squish_main"])
        put(out, "pipeline", "all_forms", PIPELINE_ALL_FORMS)
        return
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    safetensors_seeds(out)
    index_seeds(out)
    config_seeds(out)
    tokenizer_seeds(out)
    tokenizer_committed(out)
    gguf_seeds(out)
    gguf_committed(out)
    recipe_seeds(out)
    pipeline_seeds(out)
    put(out, "pipeline", "all_forms_set", PIPELINE_ALL_FORMS.replace("  out: ~", "  out: o.json"))
    overrides_seeds(out)
    # The committed hand-written seeds join the generated ones.
    seeds = os.path.join(HERE, "seeds")
    for t in os.listdir(seeds):
        for f in os.listdir(os.path.join(seeds, t)):
            os.makedirs(os.path.join(out, t), exist_ok=True)
            shutil.copy(os.path.join(seeds, t, f), os.path.join(out, t, "committed_" + f))


if __name__ == "__main__":
    main()
