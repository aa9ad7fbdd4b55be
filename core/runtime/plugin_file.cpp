#include "core/runtime/plugin_file.hpp"

#include "core/base/error.hpp"

#include <elf.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

namespace squish {

namespace {

// Reads [offset, offset + n) of the file, or fails naming what was being read.
class FileReader {
 public:
  explicit FileReader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) fail(ExitCode::Plugin, "{}: cannot open plugin: {}", path, std::strerror(errno));
    in_.seekg(0, std::ios::end);
    size_ = static_cast<uint64_t>(in_.tellg());
  }
  void read(uint64_t offset, void* out, uint64_t n, const char* what) {
    if (offset > size_ || n > size_ - offset) broken(what);
    in_.seekg(static_cast<std::streamoff>(offset));
    if (!in_.read(static_cast<char*>(out), static_cast<std::streamsize>(n))) broken(what);
  }
  [[noreturn]] void broken(const char* what) const {
    fail(ExitCode::Plugin, "{}: not a Squish plugin: {} lies outside the file", path_, what);
  }

 private:
  std::string path_;
  std::ifstream in_;
  uint64_t size_ = 0;
};

}  // namespace

std::optional<squish_plugin_metadata> read_plugin_metadata(const std::string& path) {
  FileReader f(path);
  Elf64_Ehdr eh{};
  f.read(0, &eh, sizeof(eh), "the ELF header");
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
    fail(ExitCode::Plugin, "{}: not a Squish plugin: not a 64-bit little-endian ELF shared object", path);
  if (eh.e_shoff == 0) return std::nullopt;  // no section table
  if (eh.e_shentsize != sizeof(Elf64_Shdr)) fail(ExitCode::Plugin, "{}: not a Squish plugin: unexpected ELF section header size", path);
  // Counts and the name table's index too large for the header live in section 0.
  Elf64_Shdr first{};
  f.read(eh.e_shoff, &first, sizeof(first), "the section table");
  const uint64_t count = eh.e_shnum ? eh.e_shnum : first.sh_size;
  const uint64_t names_index = eh.e_shstrndx == SHN_XINDEX ? first.sh_link : eh.e_shstrndx;
  if (count == 0 || count > (1u << 20) || names_index >= count)
    fail(ExitCode::Plugin, "{}: not a Squish plugin: broken ELF section table", path);
  std::vector<Elf64_Shdr> sections(count);
  f.read(eh.e_shoff, sections.data(), count * sizeof(Elf64_Shdr), "the section table");
  const Elf64_Shdr& names = sections[names_index];
  if (names.sh_size > (64u << 20)) fail(ExitCode::Plugin, "{}: not a Squish plugin: broken ELF section names", path);
  std::vector<char> name_table(names.sh_size + 1, '\0');
  f.read(names.sh_offset, name_table.data(), names.sh_size, "the section names");
  for (const Elf64_Shdr& s : sections) {
    if (s.sh_name >= names.sh_size || std::strcmp(name_table.data() + s.sh_name, SQUISH_PLUGIN_SECTION) != 0) continue;
    // The fields up to struct_size are ABI 3.2's prefix; a later minor may append more.
    squish_plugin_metadata m{};
    constexpr uint64_t kPrefix = offsetof(squish_plugin_metadata, struct_size) + sizeof(m.struct_size);
    if (s.sh_type == SHT_NOBITS || s.sh_size < kPrefix)
      fail(ExitCode::Plugin, "{}: not a Squish plugin: its {} section is too small", path, SQUISH_PLUGIN_SECTION);
    f.read(s.sh_offset, &m, std::min<uint64_t>(s.sh_size, sizeof(m)), "the plugin metadata");
    if (std::memcmp(m.magic, "SQUISHPL", 8) != 0)
      fail(ExitCode::Plugin, "{}: not a Squish plugin: its {} section has no SQUISHPL mark", path, SQUISH_PLUGIN_SECTION);
    m.cxx_build[sizeof(m.cxx_build) - 1] = '\0';
    return m;
  }
  return std::nullopt;
}

}  // namespace squish
