#!/usr/bin/env python3
"""Squish's engine next to stock llama.cpp on the same GGUF files, in one run, interleaved.

    python3 bench/compare_llama_cpp.py --llama-bin /tmp/llama.cpp/build/bin --model a.gguf --model b.gguf \
        [--threads 1,2] [--depths 0,2048,8192] [--reps 3] [--n 32] [--no-prefill] [--rss]

llama.cpp is not part of Squish: build a fetched copy yourself (cmake -B build -DGGML_NATIVE=ON ...;
targets llama-bench, llama-batched-bench, llama-cli) and point --llama-bin at its bin folder.

Per model, thread count and repetition it runs Squish's scale_bench and then llama.cpp on the same
file, so both see the same machine state; machines are shared and noisy, so the table gives the
median of the repetitions and the ratio of the medians:
  - decode at depth 0: scale_bench Decode vs llama-bench tg<n>;
  - decode at depth d > 0: scale_bench Decode (cache filled with d tokens) vs llama-batched-bench
    -npp d -ntg <n> -npl 1 (its S_TG: generation speed after a prompt of d tokens);
  - prefill: scale_bench Prefill512 vs llama-bench pp512;
  - --rss: peak RSS of a 64-token generation, squish-run generate.yaml vs llama-cli (one thread
    count), from /usr/bin/time.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd, env=None):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"compare_llama_cpp: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout, p.stderr


def squish(build, model, threads, depths, n, prefill):
    filt = "Decode" + ("|Prefill512" if prefill else "")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        run([os.path.join(build, "bin", "scale_bench"), f"--model={model}", f"--threads={threads}",
             f"--depths={','.join(map(str, depths))}", f"--n={n}", f"--benchmark_filter={filt}",
             f"--benchmark_out={out.name}", "--benchmark_out_format=json"])
        rows = json.load(open(out.name))["benchmarks"]
    res = {}
    for r in rows:
        name = r["name"]
        if name.startswith("Decode/"):
            d = int(re.search(r"depth:(\d+)", name).group(1))
            res[("tg", d)] = r["tok_per_s"]
            res[("bw", d)] = r["bw_fraction"]
        elif name.startswith("Prefill512/"):
            res[("pp", 0)] = r["tok_per_s"]
            res[("sgemm", 0)] = r["sgemm_fraction"]
    return res


def llama(bin_dir, model, threads, depths, n, prefill):
    res = {}
    args = [os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", str(threads), "-r", "1", "-o", "json",
            "-n", str(n), "-p", "512" if prefill else "0"]
    out, _ = run(args)
    for r in json.loads(out):
        if r["n_prompt"] > 0 and r["n_gen"] == 0:
            res[("pp", 0)] = r["avg_ts"]
        elif r["n_gen"] > 0 and r["n_prompt"] == 0:
            res[("tg", 0)] = r["avg_ts"]
    for d in depths:
        if d == 0:
            continue
        out, _ = run([os.path.join(bin_dir, "llama-batched-bench"), "-m", model, "-t", str(threads), "-c", str(d + n + 16),
                      "-b", "2048", "-ub", "512", "-npp", str(d), "-ntg", str(n), "-npl", "1"])
        # | PP | TG | B | N_KV | T_PP s | S_PP t/s | T_TG s | S_TG t/s | T s | S t/s |
        for line in out.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) >= 8 and cells[0] == str(d) and cells[1] == str(n):
                res[("tg", d)] = float(cells[7])
    return res


def peak_rss_kb(cmd):
    _, err = run(["/usr/bin/time", "-f", "RSS_KB=%M"] + cmd)
    return int(re.findall(r"RSS_KB=(\d+)", err)[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--depths", default="0")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--no-prefill", action="store_true")
    ap.add_argument("--rss", action="store_true")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    depths = [int(d) for d in a.depths.split(",")]
    prefill = not a.no_prefill
    samples = {}  # (model, threads, metric, depth, who) -> [values]
    for rep in range(a.reps):
        for m in a.model:
            for t in threads:
                for who, res in (("squish", squish(a.build, m, t, depths, a.n, prefill)),
                                 ("llama.cpp", llama(a.llama_bin, m, t, depths, a.n, prefill))):
                    for (metric, d), v in res.items():
                        samples.setdefault((m, t, metric, d, who), []).append(v)
                print(f"rep {rep + 1}/{a.reps} {os.path.basename(m)} t={t} done", file=sys.stderr)
    med = lambda k: statistics.median(samples[k]) if k in samples else float("nan")
    print(f"| model | threads | test | Squish tok/s | llama.cpp tok/s | ratio | Squish fraction of limit |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for m in a.model:
        name = os.path.basename(m)
        for t in threads:
            rows = [("tg", d, f"decode tg{a.n}" + (f" @ depth {d}" if d else ""), "bw") for d in depths]
            if prefill:
                rows.append(("pp", 0, "prefill pp512", "sgemm"))
            for metric, d, label, frac in rows:
                s, l = med((m, t, metric, d, "squish")), med((m, t, metric, d, "llama.cpp"))
                f = med((m, t, frac, d, "squish"))
                print(f"| {name} | {t} | {label} | {s:.2f} | {l:.2f} | {s / l:.2f}x | {f:.0%} {'bandwidth' if frac == 'bw' else 'sgemm'} |")
    if a.rss:
        print("\n| model | Squish peak RSS MB | llama.cpp peak RSS MB |\n|---|---:|---:|")
        for m in a.model:
            with tempfile.TemporaryDirectory() as tmp:
                s = peak_rss_kb([os.path.join(a.build, "bin", "squish-run"), os.path.join(HERE, "..", "pipelines", "generate.yaml"),
                                 "--no-progress", "--set", f"model={m}", "--set", "prompt=def main():", "--set", "n=64",
                                 "--set", f"threads={threads[-1]}", "--set", f"report={tmp}/g.json"])
            l = peak_rss_kb([os.path.join(a.llama_bin, "llama-cli"), "-m", m, "-p", "def main():", "-n", "64", "-t", str(threads[-1]),
                             "-no-cnv", "--temp", "0", "-c", "2048"])
            print(f"| {os.path.basename(m)} | {s / 1024:.0f} | {l / 1024:.0f} |")


if __name__ == "__main__":
    main()
