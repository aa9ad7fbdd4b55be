// Stand-in for <nlohmann/json.hpp>, found before the real one in GCC builds (the top-level
// CMakeLists.txt puts cmake/gcc-shims on the include path for GCC only).
//
// GCC 12 (and up to 14, nlohmann/json#4819) reports -Warray-bounds inside json's own code
// wherever a json value is built, copied or destroyed with JSON_DIAGNOSTICS=1 (core's setting):
// set_parents() walks the value as an object on a path its type rules out, and GCC cannot see
// that. A false positive of the kind GCC tracks under its -Warray-bounds meta-bug, GCC bug 56456.
//
// The warning is ignored for the lines of json's headers only. GCC matches a warning against the
// pragmas at every place of its inlining chain, innermost first, so a bad access whose place is
// in our code (or in a standard header) is still reported. The standard headers json uses are
// included first, outside the pragma, so that they keep the warning in every translation unit.
#pragma once

#include <algorithm>
#include <any>
#include <array>
#include <cassert>
#include <cctype>
#include <cerrno>
#include <clocale>
#include <cmath>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <forward_list>
#include <functional>
#include <initializer_list>
#include <iomanip>
#include <ios>
#include <iosfwd>
#include <istream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <ostream>
#include <ranges>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <valarray>
#include <vector>
#include <version>

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 15
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Warray-bounds"
#include_next <nlohmann/json.hpp>
#pragma GCC diagnostic pop
#else
#include_next <nlohmann/json.hpp>
#endif
