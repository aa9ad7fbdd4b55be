#pragma once
// A plugin's metadata read from its file, before anything of it is loaded (see
// SQUISH_PLUGIN_METADATA in <squish/plugin_abi.h>).
#include <squish/plugin_abi.h>

#include <optional>
#include <string>

namespace squish {

// The ".squish_plugin" section of the ELF shared object at `path`; nullopt when it has none (a
// plugin built against ABI 3.0 or 3.1). Error(Plugin) "<path>: not a Squish plugin: <why>" when
// the file is not a 64-bit little-endian ELF object or its section table or metadata is broken.
std::optional<squish_plugin_metadata> read_plugin_metadata(const std::string& path);

}  // namespace squish
