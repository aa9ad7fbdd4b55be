// squish-prune-sweep: where is the quality cliff? Runs the main job (pipelines/squish.yaml) at a
// series of pruning targets — KV-group and FFN-channel fractions, each with every recovery — and
// scores every file with the perplexity pipeline, then writes a table and a plot of PPL against
// the parameters removed. An orchestrator of `squish-run` (each point is one ordinary run, its
// log beside its file); the score stage's statistics and the measurements are taken once and
// reused by every point.
//
//   build/bin/squish-prune-sweep --model DIR --text CALIB.txt --eval A.txt[:CHUNKS][,B.txt[:CHUNKS]] --out DIR
//       [--kv 0.125,0.25,0.375,0.5] [--ffn 0.1,0.2,0.3] [--recovery none,bias,refit]
//       [--bpw 16] [--max-tokens 0] [--threads 0] [--pipelines DIR] [--kl true|false]
//
// Writes <out>/sweep.json, sweep.md (the table) and sweep.svg; exit code of the first failing
// run (its log named), 2 for bad arguments. Points already finished in <out> (file, recipe and
// reports) are read back, so an interrupted sweep resumes where it stopped. squish-run is taken
// from beside this program (build/bin). docs/pruning.md shows a sweep of coder-28m
// (docs/pruning-sweep/).
#include "core/gguf/gguf.hpp"
#include "core/io/atomic_file.hpp"
#include "core/io/text_file.hpp"
#include "core/base/error.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

extern char** environ;

namespace fs = std::filesystem;
using namespace squish;

namespace {

struct Eval {
  std::string path, name;
  int chunks = 0;
};

struct Point {
  double kv = 0, ffn = 0;
  std::string recovery;
  std::string tag;
  uint64_t params = 0, bytes = 0;
  std::vector<nlohmann::json> results{};  // per eval: the perplexity report
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "squish-prune-sweep: %s\nusage: squish-prune-sweep --model DIR --text CALIB.txt --eval A.txt[:CHUNKS][,B.txt[:CHUNKS]] --out DIR\n"
               "    [--kv 0.125,0.25,0.375,0.5] [--ffn 0.1,0.2,0.3] [--recovery none,bias,refit] [--bpw 16] [--max-tokens 0]\n"
               "    [--threads 0] [--pipelines DIR] [--kl true|false]\n", why.c_str());
  std::exit(static_cast<int>(ExitCode::Usage));
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, sep);)
    if (!x.empty()) out.push_back(x);
  return out;
}

std::vector<double> fractions(const std::string& s, const char* what) {
  std::vector<double> v;
  for (const auto& x : split(s, ',')) {
    char* end = nullptr;
    const double d = std::strtod(x.c_str(), &end);
    if (*end || !(d >= 0 && d < 1)) usage(fmt::format("{}: '{}' is not a fraction in [0, 1)", what, x));
    v.push_back(d);
  }
  return v;
}

// The written file's parameters (every tensor's elements) and bytes.
void size_of(const std::string& gguf, Point& p) {
  const gguf::Reader r = gguf::Reader::open(gguf);
  p.params = 0;
  for (const auto& t : r.tensors()) {
    uint64_t n = 1;
    for (int64_t x : t.ne) n *= uint64_t(x);
    p.params += n;
  }
  p.bytes = fs::file_size(gguf);
}

// Runs argv with stdout and stderr into `log`; returns the exit code.
int run(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int e = posix_spawn(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (e != 0) fail(ExitCode::Runtime, "cannot start {}: {}", argv[0], std::strerror(e));
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return WEXITSTATUS(status);
}

std::string svg_plot(const std::vector<Point>& pts, const std::vector<Eval>& evals, uint64_t base_params) {
  // One panel per eval text; x = fraction of parameters removed, y = PPL; one line per
  // (kind, recovery).
  const int W = 520, H = 340, left = 60, top = 40, pw = W - left - 20, ph = H - top - 50;
  const std::map<std::string, const char*> colour = {{"none", "#d73027"}, {"bias", "#fc8d59"}, {"refit", "#1a9850"}};
  std::string s = fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"monospace\" font-size=\"11\">\n",
                              W * int(evals.size()), H);
  for (size_t e = 0; e < evals.size(); ++e) {
    const int ox = W * int(e);
    double xmax = 0, ymin = 1e300, ymax = 0;
    for (const auto& p : pts) {
      const double x = 1.0 - double(p.params) / double(base_params), y = p.results[e].value("ppl", 0.0);
      xmax = std::max(xmax, x), ymin = std::min(ymin, y), ymax = std::max(ymax, y);
    }
    if (xmax <= 0) xmax = 1;
    if (ymax <= ymin) ymax = ymin + 1;
    auto X = [&](double x) { return ox + left + pw * x / xmax; };
    auto Y = [&](double y) { return top + ph - ph * (y - ymin) / (ymax - ymin); };
    s += fmt::format("<text x=\"{}\" y=\"16\" font-size=\"13\">{}: PPL vs parameters removed</text>\n", ox + 4, evals[e].name);
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n", ox + left, top, pw, ph);
    for (int k = 0; k <= 4; ++k) {
      const double y = ymin + (ymax - ymin) * k / 4, x = xmax * k / 4;
      s += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">{:.2f}</text>\n", ox + left - 4, Y(y) + 4, y);
      s += fmt::format("<text x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:.0f}%</text>\n", X(x), top + ph + 14, 100 * x);
    }
    int legend = 0;
    for (const char* kind : {"kv", "ffn"})
      for (const auto& [rec, col] : colour) {
        std::vector<std::pair<double, double>> line;
        for (const auto& p : pts) {
          const bool base = p.kv == 0 && p.ffn == 0;
          const bool mine = std::string(kind) == "kv" ? p.kv > 0 && p.ffn == 0 : p.ffn > 0 && p.kv == 0;
          if (base || (mine && p.recovery == rec)) line.push_back({1.0 - double(p.params) / double(base_params), p.results[e].value("ppl", 0.0)});
        }
        if (line.size() < 2) continue;
        std::sort(line.begin(), line.end());
        std::string d;
        for (const auto& [x, y] : line) d += fmt::format("{}{:.1f},{:.1f}", d.empty() ? "M" : " L", X(x), Y(y));
        s += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"{}/>\n", d, col,
                         std::string(kind) == "ffn" ? " stroke-dasharray=\"5,3\"" : "");
        for (const auto& [x, y] : line) s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"/>\n", X(x), Y(y), col);
        s += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{} {} recovery{}</text>\n", ox + left + 8, top + 14 + 13 * legend++, col, kind, rec,
                         std::string(kind) == "ffn" ? " (dashed)" : "");
      }
  }
  return s + "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::map<std::string, std::string> a = {{"--kv", "0.125,0.25,0.375,0.5"}, {"--ffn", "0.1,0.2,0.3"}, {"--recovery", "none,bias,refit"},
                                            {"--bpw", "16"}, {"--max-tokens", "0"}, {"--threads", "0"},
                                            {"--pipelines", SQUISH_PIPELINE_DIR}, {"--kl", "true"}};
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      if (k == "-h" || k == "--help") usage("help");
      static const char* known[] = {"--model", "--text", "--eval", "--out", "--kv", "--ffn", "--recovery", "--bpw", "--max-tokens", "--threads", "--pipelines", "--kl"};
      if (std::find(std::begin(known), std::end(known), k) == std::end(known)) usage(fmt::format("unknown option '{}'", k));
      if (i + 1 >= argc) usage(fmt::format("{} needs a value", k));
      a[k] = argv[++i];
    }
    for (const char* k : {"--model", "--text", "--eval", "--out"})
      if (!a.count(k) || a[k].empty()) usage(fmt::format("{} is required", k));
    const std::vector<std::string> recoveries = split(a["--recovery"], ',');
    for (const auto& r : recoveries)
      if (r != "none" && r != "bias" && r != "refit") usage(fmt::format("--recovery: '{}' is not none, bias or refit", r));
    std::vector<Eval> evals;
    for (const auto& e : split(a["--eval"], ',')) {
      Eval ev;
      const auto colon = e.rfind(':');
      ev.path = colon == std::string::npos ? e : e.substr(0, colon);
      if (colon != std::string::npos) ev.chunks = std::atoi(e.c_str() + colon + 1);
      if (!fs::is_regular_file(ev.path)) usage(fmt::format("--eval: {} is not a file", ev.path));
      ev.name = fs::path(ev.path).stem().string() + (ev.chunks ? fmt::format("[{}]", ev.chunks) : "");
      evals.push_back(ev);
    }
    const fs::path out = a["--out"];
    fs::create_directories(out);
    const fs::path stats = out / "stats";
    const std::string run_bin = (fs::canonical("/proc/self/exe").parent_path() / "squish-run").string();
    const std::string squish_yaml = (fs::path(a["--pipelines"]) / "squish.yaml").string();
    const std::string ppl_yaml = (fs::path(a["--pipelines"]) / "perplexity.yaml").string();

    std::vector<Point> pts;
    pts.push_back({0, 0, "none", "dense"});
    for (double kv : fractions(a["--kv"], "--kv"))
      if (kv > 0)
        for (const auto& r : recoveries) pts.push_back({kv, 0, r, fmt::format("kv{:.3f}-{}", kv, r)});
    for (double ffn : fractions(a["--ffn"], "--ffn"))
      if (ffn > 0)
        for (const auto& r : recoveries) pts.push_back({0, ffn, r, fmt::format("ffn{:.3f}-{}", ffn, r)});

    for (size_t i = 0; i < pts.size(); ++i) {
      Point& p = pts[i];
      const std::string gguf = (out / (p.tag + ".gguf")).string();
      auto report_of = [&](size_t e) { return (out / fmt::format("{}.{}.json", p.tag, fs::path(evals[e].path).stem().string())).string(); };
      // A point finished by an earlier run (file, recipe and every report there) is read back.
      bool done = fs::exists(gguf) && fs::exists(out / (p.tag + ".recipe.json"));
      for (size_t e = 0; e < evals.size(); ++e) done = done && fs::exists(report_of(e)) && fs::last_write_time(report_of(e)) >= fs::last_write_time(gguf);
      if (done) {
        std::fprintf(stderr, "[%zu/%zu] %s: stored", i + 1, pts.size(), p.tag.c_str());
        size_of(gguf, p);
        for (size_t e = 0; e < evals.size(); ++e) p.results.push_back(read_json_file(report_of(e), "perplexity report"));
        std::fprintf(stderr, ": PPL %.4f\n", p.results[0].value("ppl", 0.0));
        continue;
      }
      std::fprintf(stderr, "[%zu/%zu] %s: compress", i + 1, pts.size(), p.tag.c_str());
      const std::string log = (out / (p.tag + ".log")).string();
      int rc = run({run_bin, "--no-progress", squish_yaml, "--set", "model=" + a["--model"], "--set", "text=" + a["--text"], "--set",
                    "max_tokens=" + a["--max-tokens"], "--set", "bpw=" + a["--bpw"], "--set", fmt::format("prune_kv={}", p.kv), "--set",
                    fmt::format("prune_ffn={}", p.ffn), "--set", "recovery=" + p.recovery, "--set", "artifacts=" + stats.string(), "--set",
                    "output=" + gguf},
                   log);
      if (rc != 0) {
        std::fprintf(stderr, "\nsquish-prune-sweep: point %s failed (exit %d): see %s\n", p.tag.c_str(), rc, log.c_str());
        return rc;
      }
      fs::copy_file(stats / "recipe.json", out / (p.tag + ".recipe.json"), fs::copy_options::overwrite_existing);
      size_of(gguf, p);
      for (size_t e = 0; e < evals.size(); ++e) {
        std::fprintf(stderr, ", %s", evals[e].name.c_str());
        const std::string report = report_of(e);
        std::vector<std::string> cmd = {run_bin, "--no-progress", ppl_yaml, "--set", "model=" + gguf, "--set", "text=" + evals[e].path, "--set",
                                        fmt::format("chunks={}", evals[e].chunks), "--set", "threads=" + a["--threads"], "--set", "report=" + report};
        if (e == 0 && a["--kl"] == "true") cmd.insert(cmd.end(), {"--set", "reference=" + a["--model"]});  // KL against the float model on the first text
        rc = run(cmd, log + ".ppl");
        if (rc != 0) {
          std::fprintf(stderr, "\nsquish-prune-sweep: perplexity of %s failed (exit %d): see %s.ppl\n", p.tag.c_str(), rc, log.c_str());
          return rc;
        }
        p.results.push_back(read_json_file(report, "perplexity report"));
      }
      std::fprintf(stderr, ": PPL %.4f\n", p.results[0].value("ppl", 0.0));
      std::fflush(stderr);
    }

    const uint64_t base = pts[0].params;
    nlohmann::json j = {{"format", "squish.prune_sweep/1"}, {"model", a["--model"]}, {"text", a["--text"]}, {"bpw", a["--bpw"]}};
    std::string md = "| point | KV removed | FFN removed | recovery | params removed | file bytes |";
    for (const auto& e : evals) md += fmt::format(" {} PPL | Δ |", e.name);
    md += fmt::format(" {} KL |\n|---|---|---|---|---|---|", evals[0].name);
    for (size_t e = 0; e < evals.size(); ++e) md += "---|---|";
    md += "---|\n";
    for (const auto& p : pts) {
      nlohmann::json pj = {{"tag", p.tag}, {"prune_kv", p.kv}, {"prune_ffn", p.ffn}, {"recovery", p.recovery}, {"params", p.params},
                           {"params_removed", 1.0 - double(p.params) / double(base)}, {"file_bytes", p.bytes}, {"results", p.results}};
      j["points"].push_back(pj);
      md += fmt::format("| {} | {:.1f}% | {:.1f}% | {} | {:.2f}% | {} |", p.tag, 100 * p.kv, 100 * p.ffn, p.kv == 0 && p.ffn == 0 ? "-" : p.recovery,
                        100.0 * (1.0 - double(p.params) / double(base)), p.bytes);
      for (size_t e = 0; e < evals.size(); ++e) {
        const double ppl = p.results[e].value("ppl", 0.0), b = pts[0].results[e].value("ppl", 0.0);
        md += fmt::format(" {:.4f} | {:+.4f} |", ppl, ppl - b);
      }
      md += p.results[0].contains("kl_mean") ? fmt::format(" {:.4f} |\n", p.results[0]["kl_mean"].get<double>()) : std::string(" - |\n");
    }
    write_json_file((out / "sweep.json").string(), j);
    write_file_atomic((out / "sweep.md").string(), md);
    write_file_atomic((out / "sweep.svg").string(), svg_plot(pts, evals, base));
    std::fputs(md.c_str(), stdout);
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "squish-prune-sweep: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "squish-prune-sweep: %s\n", e.what());
    return static_cast<int>(ExitCode::Runtime);
  }
}
