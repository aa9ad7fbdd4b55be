// The io plugin: streaming sources and sinks shared by every pipeline.
//   io.safetensors_source  - streams a Hugging Face checkpoint's tensors one at a time (zero-copy)
//   io.passthrough         - forwards tensors; optionally checks they are finite / converts to F32
//   io.checksum_manifest   - writes a JSON manifest of every tensor's dtype, shape and SHA-256
#include "core/io/atomic_file.hpp"
#include "core/io/text_file.hpp"
#include "core/io/safetensors.hpp"
#include "core/io/sha256.hpp"
#include "core/base/error.hpp"
#include "core/runtime/plugin_api.hpp"

#include <fnmatch.h>

#include <cmath>
#include <cstring>
#include <mutex>

namespace squish {
namespace {

bool matches_any(const std::string& name, const nlohmann::json& patterns) {
  for (const auto& p : patterns)
    if (::fnmatch(p.get<std::string>().c_str(), name.c_str(), 0) == 0) return true;
  return false;
}

class SafetensorsSource final : public Node {
 public:
  explicit SafetensorsSource(const NodeContext& ctx)
      : model_(std::make_shared<SafetensorsModel>(SafetensorsModel::open(ctx.params["model"].get<std::string>()))),
        release_(ctx.params["release_pages"].get<bool>()) {
    const auto& inc = ctx.params["include"];
    const auto& exc = ctx.params["exclude"];
    for (const auto& e : model_->entries()) {
      if (!inc.empty() && !matches_any(e.name, inc)) continue;
      if (matches_any(e.name, exc)) continue;
      order_.push_back(&e);
    }
  }
  bool produce(Message& out) override {
    if (next_ >= order_.size()) return false;
    const SafetensorsEntry& e = *order_[next_++];
    Tensor t = model_->load(e);
    t.meta["source"] = model_->files()[e.file].path();
    // When every message derived from this tensor is gone, drop its pages from our RSS. The
    // ticket may outlive this node (a message buffered in a cancelled graph): it owns the model.
    FlightTicket ticket;
    if (release_) ticket = std::shared_ptr<void>(nullptr, [model = model_, &e](void*) { model->release(e); });
    out = Message::of(std::move(t), std::move(ticket));
    return true;
  }
  uint64_t expected_count() const override { return order_.size(); }

 private:
  std::shared_ptr<SafetensorsModel> model_;  // entries_ point into it: never reallocated
  bool release_;
  std::vector<const SafetensorsEntry*> order_;
  size_t next_ = 0;
};

class Passthrough final : public Node {
 public:
  explicit Passthrough(const NodeContext& ctx)
      : check_finite_(ctx.params["check_finite"].get<bool>()), to_f32_(ctx.params["to_f32"].get<bool>()) {}
  void consume(const Message& in, Emitter& out) override {
    if (!in.is_tensor() || (!check_finite_ && !to_f32_)) {
      out.emit(in);
      return;
    }
    const Tensor& t = in.tensor();
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16 && t.dtype != DType::F64) {
      out.emit(in);
      return;
    }
    std::vector<float> v = t.to_f32();
    if (check_finite_)
      for (size_t i = 0; i < v.size(); ++i)
        if (!std::isfinite(v[i]))
          fail(ExitCode::InputData, "{}: tensor '{}' has a non-finite value ({}) at element {}",
               t.meta.value("source", std::string("?")), t.name, v[i], i);
    if (!to_f32_) {
      out.emit(in);
      return;
    }
    Tensor f;
    f.name = t.name;
    f.dtype = DType::F32;
    f.shape = t.shape;
    f.meta = t.meta;
    std::vector<std::byte> bytes(v.size() * 4);
    std::memcpy(bytes.data(), v.data(), bytes.size());
    f.data = Buffer::owned(std::move(bytes));
    out.emit(in.derive(std::move(f)));
  }

 private:
  bool check_finite_, to_f32_;
};

class ChecksumManifest final : public Node {
 public:
  explicit ChecksumManifest(const NodeContext& ctx) : output_(ctx.params["output"].get<std::string>()) {}
  void consume(const Message& in, Emitter&) override {
    if (!in.is_tensor()) return;
    const Tensor& t = in.tensor();
    nlohmann::json e{{"name", t.name}, {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"bytes", t.nbytes()},
                     {"sha256", sha256_hex(t.bytes())}};
    std::lock_guard lock(mu_);
    if (entries_.contains(t.name)) fail(ExitCode::InputData, "tensor '{}' arrived twice", t.name);
    total_ += t.nbytes();
    entries_[t.name] = std::move(e);
  }
  void finish(Emitter&) override {
    nlohmann::json tensors = nlohmann::json::array();
    for (auto& [name, e] : entries_.items()) tensors.push_back(e);  // sorted by name: deterministic
    nlohmann::json doc{{"format", "squish.checksum_manifest/1"}, {"tensor_count", tensors.size()}, {"total_bytes", total_},
                       {"tensors", tensors}};
    write_json_file(output_, doc);
  }

 private:
  std::string output_;
  std::mutex mu_;
  nlohmann::json entries_ = nlohmann::json::object();
  uint64_t total_ = 0;
};

void register_nodes(NodeRegistry& r) {
  r.add({"io.safetensors_source",
         "stream a safetensors checkpoint (file, folder or sharded index) one tensor at a time",
         NodeRole::Source,
         false,
         {{"model", ParamType::Path, true, nullptr, "Hugging Face folder, .safetensors file or index.json"},
          {"include", ParamType::List, false, nlohmann::json::array(), "glob patterns of tensor names to stream (default all)"},
          {"exclude", ParamType::List, false, nlohmann::json::array(), "glob patterns of tensor names to skip"},
          {"release_pages", ParamType::Bool, false, true, "drop a tensor's pages once it is processed (bounded RSS)"}},
         [](const NodeContext& c) { return std::make_unique<SafetensorsSource>(c); }});
  r.add({"io.passthrough",
         "forward tensors unchanged; optionally check they are finite or convert them to F32",
         NodeRole::Transform,
         true,
         {{"check_finite", ParamType::Bool, false, false, "fail on NaN/Inf weights"},
          {"to_f32", ParamType::Bool, false, false, "convert F16/BF16/F64 tensors to F32"}},
         [](const NodeContext& c) { return std::make_unique<Passthrough>(c); }});
  r.add({"io.checksum_manifest",
         "write a JSON manifest (name, dtype, shape, bytes, SHA-256) of every tensor received",
         NodeRole::Sink,
         true,
         {{"output", ParamType::Output, true, nullptr, "manifest JSON file (written atomically)"}},
         [](const NodeContext& c) { return std::make_unique<ChecksumManifest>(c); }});
}

}  // namespace
}  // namespace squish

SQUISH_PLUGIN("io", "0.1.0", "streaming safetensors source, pass-through and checksum sinks", squish::register_nodes)
