// Fuzz target: a GGUF file (gguf::Reader::open), then what the stages read from it: every
// metadata value rendered, the tokenizer vocabulary (Vocab::from_gguf), the architecture
// (ModelArch::from_gguf + validate), the tensor views; and a re-serialisation of the header that
// must read back to the same metadata. Input = the whole file.
#include "tests/fuzz/fuzz_common.hpp"

#include "core/arch/architecture.hpp"
#include "core/gguf/gguf.hpp"
#include "core/io/text_file.hpp"
#include "core/tokenizer/vocab.hpp"

using namespace squish;

SQUISH_FUZZ_TARGET(gguf) {
  const std::string dir = fuzz::scratch_dir("gguf");
  const std::string path = dir + "/input.gguf";
  fuzz::write_bytes(path, data, size);
  const gguf::Reader r = gguf::Reader::open(path);

  for (const auto& [key, value] : r.metadata()) {
    (void)value.to_string();
    (void)json_text(value.to_json());
  }
  const size_t file_size = r.file_size();
  for (const auto& t : r.tensors()) {
    SQUISH_FUZZ_CHECK(t.data.size() == t.nbytes, t.name);
    SQUISH_FUZZ_CHECK(r.data_offset() + t.offset + t.nbytes <= file_size, t.name + ": outside the file");
    SQUISH_FUZZ_CHECK(r.find(t.name) == &t, t.name);
    SQUISH_FUZZ_CHECK(t.n_elements() > 0 && t.n_rows() > 0, t.name);
    if (t.nbytes) {
      volatile std::byte first = t.data.front(), last = t.data.back();
      (void)first, (void)last;
    }
  }

  // Re-serialise the header (metadata and tensor infos); it must read back the same.
  if (r.metadata().size() + r.tensors().size() < 100000) {
    std::vector<gguf::TensorInfo> infos = r.tensors();
    for (auto& t : infos) t.data = {};
    auto bytes = gguf::serialize_header(r.metadata(), infos, r.alignment());
    // Pad with the data section so the tensor offsets stay valid.
    bytes.resize(bytes.size() + (file_size - std::min(file_size, r.data_offset())));
    const std::string again = dir + "/again.gguf";
    fuzz::write_bytes(again, bytes.data(), bytes.size());
    const gguf::Reader r2 = gguf::Reader::open(again);
    SQUISH_FUZZ_CHECK(r2.metadata() == r.metadata(), "metadata differs after a write/read round trip");
    SQUISH_FUZZ_CHECK(r2.tensors().size() == r.tensors().size(), "tensor count differs after a round trip");
    for (size_t i = 0; i < r.tensors().size(); ++i) {
      const auto &a = r.tensors()[i], &b = r2.tensors()[i];
      SQUISH_FUZZ_CHECK(a.name == b.name && a.ne == b.ne && a.type == b.type && a.offset == b.offset && a.nbytes == b.nbytes,
                        a.name + ": tensor info differs after a round trip");
    }
  }

  // Deeper readers; each may refuse with squish::Error independently.
  try {
    const Vocab v = Vocab::from_gguf(r);
    (void)v.gguf_metadata();
  } catch (const Error&) {
  }
  try {
    const arch::ModelArch a = arch::ModelArch::from_gguf(r);
    a.validate(path);
    for (int l = 0; l < a.n_layer(); ++l)
      for (const auto& k : arch::tensor_kinds())
        if (a.has(k, l)) (void)a.hf_shape(k, l);
    (void)a.rope_inv_freq();
  } catch (const Error&) {
  }
  return 0;
}
