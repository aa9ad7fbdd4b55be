#!/usr/bin/env bash
# A third-party quantizer plugin end to end: install Squish into a temporary prefix, build
# examples/nf4_plugin out of tree against it (find_package(Squish), squish_add_plugin), and run
# the INSTALLED squish-run with it: the type is listed, a recipe uses it, compress writes it,
# verify and perplexity read it; without the plugin the GGUF is refused naming it (exit 4).
#   bash tests/example_plugin_test.sh <build dir> <source dir> <shared dir>
set -euo pipefail
BUILD=$1 SRC=$2 SHARED=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cmake --install "$BUILD" --prefix "$tmp/prefix" >"$tmp/install.log"
cmake -S "$SRC/examples/nf4_plugin" -B "$tmp/nf4" -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_BUILD_TYPE=Release >"$tmp/configure.log"
cmake --build "$tmp/nf4" >"$tmp/build.log"
so="$tmp/nf4/squish_nf4.so"
run="$tmp/prefix/bin/squish-run"
pipes="$tmp/prefix/share/squish/pipelines"
test -f "$so"
"$run" --version
SQUISH_PLUGIN_PATH="$tmp/nf4" "$run" --list-nodes | grep -F "type NF4 (id 1100): blocks of 32 values in 20 bytes"

if [[ ! -d "$SHARED/models/coder-28m" ]]; then
  [[ -n "${CI:-}" ]] && { echo "../shared is missing"; exit 1; }
  echo "../shared is missing: skipped the model runs"; exit 77
fi
model="$SHARED/models/coder-28m"
head -c 20000 "$SHARED/data/code-humaneval.txt" >"$tmp/text.txt"
cat >"$tmp/recipe.json" <<'JSON'
{"format": "squish.recipe/1", "name": "nf4-mlp", "tensors": [{"match": "*", "type": "Q4_K"}, {"match": "*mlp*", "type": "NF4"}]}
JSON
"$run" "$pipes/compress.yaml" --plugin "$so" --no-progress --set model="$model" --set recipe="$tmp/recipe.json" --set output="$tmp/m.gguf"
"$run" "$pipes/verify.yaml" --plugin "$so" --no-progress --set model="$tmp/m.gguf" --set report="$tmp/verify.json" \
  --set source="$model" --set text="$tmp/text.txt" --set ctx=128
SQUISH_PLUGIN_PATH="$tmp/nf4" "$run" "$pipes/perplexity.yaml" --plugin nf4 --no-progress --set model="$tmp/m.gguf" \
  --set text="$tmp/text.txt" --set chunks=2 --set report="$tmp/ppl.json"
python3 - "$tmp/ppl.json" <<'PY'
import json, sys
ppl = json.load(open(sys.argv[1]))["ppl"]
assert 1 < ppl < 40, f"perplexity {ppl} is not a working model's"
print(f"NF4 mlp: PPL {ppl:.3f}")
PY
set +e
err=$("$run" "$pipes/perplexity.yaml" --no-progress --set model="$tmp/m.gguf" --set text="$tmp/text.txt" --set chunks=1 2>&1 >/dev/null)
rc=$?
set -e
echo "$err"
[[ $rc -eq 4 ]] || { echo "expected exit 4 without the plugin, got $rc"; exit 1; }
grep -qF "has type NF4 (id 1100) from plugin 'nf4', which is not loaded" <<<"$err"
echo "example plugin: OK"
