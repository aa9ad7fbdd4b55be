#!/usr/bin/env bash
# Fuzz Squish's input parsers with libFuzzer (targets in tests/fuzz/, see tests/fuzz/README.md).
#
#   bash bench/fuzz.sh [--time S | --runs N] [--build DIR] [--work DIR] [--jobs J] [--no-build]
#                      [--only t1,t2] [--max-len-scale F]
#
# Builds the fuzz folder (clang, ASan+UBSan, -DSQUISH_FUZZ=ON), generates seed corpora from
# ../shared and tests/fuzz/seeds, runs each target in turn (one at a time, nice'd) for S seconds
# (default 60) or N runs, then replays tests/fuzz/regressions/<target>/*. Prints per target:
# executions, exec/s and findings (crash/leak/timeout/oom files). Exit 1 on any finding.
# CI: bash bench/fuzz.sh --time 15
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD=/tmp/squish-fuzzbuild
WORK=/tmp/squish-fuzzwork
TIME=60
RUNS=""
JOBS=2
DO_BUILD=1
ONLY=""
TARGETS=(safetensors safetensors_index config tokenizer gguf recipe pipeline overrides)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --time) TIME="$2"; RUNS=""; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --build) BUILD="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --no-build) DO_BUILD=0; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [[ -n "$ONLY" ]]; then IFS=, read -r -a TARGETS <<<"$ONLY"; fi

# Per target: input size bound, dictionary.
declare -A MAXLEN=([safetensors]=16384 [safetensors_index]=16384 [config]=4096 [tokenizer]=32768 [gguf]=65536
                   [recipe]=8192 [pipeline]=8192 [overrides]=2048)
declare -A DICT=([safetensors]=json [safetensors_index]=json [config]=json [tokenizer]=tokenizer [gguf]=gguf
                 [recipe]=recipe [pipeline]=yaml [overrides]=overrides)

if [[ $DO_BUILD == 1 ]]; then
  if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    CC=clang CXX=clang++ nice -n 10 cmake -S "$SRC" -B "$BUILD" -DSQUISH_FUZZ=ON -DSQUISH_BUILD_TESTS=OFF \
      -DSQUISH_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  nice -n 10 cmake --build "$BUILD" --target squish_fuzz_all -j"$JOBS"
fi

mkdir -p "$WORK"
rm -rf "$WORK/seeds"
python3 "$SRC/tests/fuzz/make_corpus.py" "$WORK/seeds"

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

total_findings=0
summary=()
for t in "${TARGETS[@]}"; do
  bin="$BUILD/bin/fuzz_$t"
  [[ -x "$bin" ]] || { echo "fuzz.sh: $bin missing" >&2; exit 2; }
  corpus="$WORK/corpus/$t"
  art="$WORK/findings/$t"
  mkdir -p "$corpus" "$art"
  cp -n "$WORK/seeds/$t"/* "$corpus"/ 2>/dev/null || true
  log="$WORK/$t.log"
  limit=(-max_total_time="$TIME")
  [[ -n "$RUNS" ]] && limit=(-runs="$RUNS")
  before=$(ls "$art" | wc -l)
  echo "== $t: ${limit[*]} (log $log)"
  set +e
  (cd "$WORK" && nice -n 10 "$bin" "$corpus" "${limit[@]}" -max_len="${MAXLEN[$t]}" -timeout=10 -rss_limit_mb=2048 \
     -dict="$SRC/tests/fuzz/dicts/${DICT[$t]}.dict" -artifact_prefix="$art/" -print_final_stats=1 \
     -keep_going=0 >"$log" 2>&1)
  rc=$?
  set -e
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  speed=$(grep -Eo 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  if [[ -z "$execs" ]]; then  # stopped by a crash: the last status line
    execs=$(grep -Eo '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    speed=$(grep -Eo 'exec/s: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+')
  fi
  new=$(( $(ls "$art" | wc -l) - before ))
  found=()
  [[ $new -gt 0 ]] && found+=($(ls -t "$art" | head -n "$new"))
  [[ $rc -ne 0 && $new -eq 0 ]] && found+=("exit-$rc(see-log)")
  # Known reproducers: each must now pass (no crash, no finding).
  regress=0
  if [[ -d "$SRC/tests/fuzz/regressions/$t" ]]; then
    for f in "$SRC/tests/fuzz/regressions/$t"/*; do
      [[ -f "$f" ]] || continue
      if ! (cd "$WORK" && "$bin" -runs=1 -timeout=10 -rss_limit_mb=2048 "$f" >"$WORK/$t.regress.log" 2>&1); then
        found+=("regression:$(basename "$f")")
        regress=$((regress + 1))
      fi
    done
  fi
  n=${#found[@]}
  total_findings=$((total_findings + n))
  line=$(printf '%-18s execs %-10s exec/s %-7s findings %d %s' "$t" "${execs:-?}" "${speed:-?}" "$n" "${found[*]:-}")
  echo "$line"
  for f in "${found[@]:-}"; do
    [[ -n "$f" && -f "$art/$f" ]] && grep -m1 -E 'ERROR: |FINDING|runtime error|out-of-memory|timeout' "$log" | sed 's/^/    /' || true
  done
  summary+=("$line")
done

echo
echo "== fuzz summary (findings in $WORK/findings/<target>/)"
printf '%s\n' "${summary[@]}"
[[ $total_findings -eq 0 ]] || { echo "FAIL: $total_findings finding(s)"; exit 1; }
echo "OK: no findings"
