// Reading and streaming throughput of the runtime, against the raw read rate of the same bytes.
// All figures are page-cache warm (the benchmark reads the files once before timing), so they
// measure the software path, not the disk. Run: build/bin/stream_bench
#include "core/io/safetensors.hpp"
#include "core/io/sha256.hpp"
#include "core/runtime/graph.hpp"
#include "core/runtime/pipeline.hpp"

#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace squish;

namespace {
const std::string kModel = std::string(SQUISH_SHARED_DIR) + "/models/coder-28m";

std::vector<std::string> shard_files() {
  std::vector<std::string> v;
  for (auto& de : std::filesystem::directory_iterator(kModel))
    if (de.path().extension() == ".safetensors") v.push_back(de.path().string());
  return v;
}

// read(2) of every shard into a 1 MiB buffer: the ceiling for any reader of these files.
void BM_RawRead(benchmark::State& state) {
  auto files = shard_files();
  std::vector<char> buf(1 << 20);
  int64_t bytes = 0;
  for (auto _ : state) {
    for (auto& f : files) {
      int fd = ::open(f.c_str(), O_RDONLY);
      ssize_t n;
      while ((n = ::read(fd, buf.data(), buf.size())) > 0) bytes += n;
      ::close(fd);
    }
    benchmark::DoNotOptimize(buf.data());
  }
  state.SetBytesProcessed(bytes);
}

// Open + validate the checkpoint and touch every page of every tensor through the mmap views.
void BM_SafetensorsMmapRead(benchmark::State& state) {
  int64_t bytes = 0;
  for (auto _ : state) {
    auto m = SafetensorsModel::open(kModel);
    uint64_t sum = 0;
    for (const auto& e : m.entries()) {
      auto t = m.load(e);
      auto b = t.bytes();
      for (size_t i = 0; i < b.size(); i += 64) sum += static_cast<uint8_t>(b[i]);
      bytes += b.size();
    }
    benchmark::DoNotOptimize(sum);
  }
  state.SetBytesProcessed(bytes);
}

void BM_Sha256(benchmark::State& state) {
  std::vector<std::byte> data(8 << 20, std::byte{7});
  for (auto _ : state) benchmark::DoNotOptimize(sha256_hex(data));
  state.SetBytesProcessed(int64_t(state.iterations()) * data.size());
}

// The whole runtime path: source -> pass-through (bf16 -> f32 conversion) -> manifest sink,
// on the flow graph with `threads` workers. Bytes counted are the checkpoint's.
void BM_StreamPipeline(benchmark::State& state) {
  const std::string dir = std::filesystem::temp_directory_path() / "squish-stream-bench";
  std::filesystem::create_directories(dir);
  {
    std::ofstream p(dir + "/p.yaml");
    p << "name: bench\nplugins: [io]\nnodes:\n"
         "  read: {kind: io.safetensors_source, params: {model: " << kModel << "}}\n"
         "  conv: {kind: io.passthrough, parallel: true, params: {to_f32: " << (state.range(1) ? "true" : "false") << "}}\n"
         "  sum: {kind: io.checksum_manifest, params: {output: " << dir << "/m.json}}\n"
         "edges: [read -> conv, conv -> sum]\n";
  }
  EventSink events(nullptr, false);
  int64_t bytes = 0;
  for (auto _ : state) {
    PluginHost host;
    Pipeline p = Pipeline::load(dir + "/p.yaml", {}, host);
    p.threads = static_cast<int>(state.range(0));
    GraphRunner(p, events).run();
    bytes += 56652800;
  }
  state.SetBytesProcessed(bytes);
  state.SetLabel(fmt::format("threads={} to_f32={}", state.range(0), state.range(1)));
}
// End to end: coder-28m (bf16 safetensors) -> Q4_K_M GGUF through the compress pipeline, in
// process. llama.cpp on this machine: 0.86 s quantize (+ 0.81 s convert), 120 MiB peak RSS.
void BM_CompressQ4KM(benchmark::State& state) {
  const std::string out = (std::filesystem::temp_directory_path() / "squish-bench-q4km.gguf").string();
  const std::string pipeline = std::string(SQUISH_SOURCE_DIR) + "/pipelines/compress.yaml";
  EventSink events(nullptr, false);
  for (auto _ : state) {
    PluginHost host;
    Pipeline p = Pipeline::load(pipeline, {{"model", kModel}, {"preset", "Q4_K_M"}, {"output", out}}, host);
    p.threads = static_cast<int>(state.range(0));
    GraphRunner(p, events).run();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * 56652800);
  state.counters["peak_rss_MiB"] = peak_rss_bytes() / 1048576.0;
  state.counters["llama_cpp_s"] = 0.86;
  std::filesystem::remove(out);
}
}  // namespace

BENCHMARK(BM_CompressQ4KM)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RawRead)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SafetensorsMmapRead)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Sha256)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_StreamPipeline)->Args({1, 0})->Args({2, 0})->Args({2, 1})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
