# Checks that every source folder includes only what its layer may (cmake -P; run by the build,
# see core/CMakeLists.txt). Arguments:
#   -DROOT=<source tree>  -DRULES=<file of lines "folder: allowed-folder allowed-folder ...">
#   -DSTAMP=<file written when the check passes>
# A rule's folder is a path under ROOT (core/io, stages/plan); an include of "X/..." where X is
# another ruled folder must name a folder in the rule's list (transitive closure already
# applied by the caller). Includes of unruled paths (system and third-party headers) are free,
# and so are the includes of folders without a rule (tests/, tools/: they may use every layer).
file(STRINGS "${RULES}" rule_lines)
set(folders)
foreach(line ${rule_lines})
  string(REGEX MATCH "^([^:]+):(.*)$" _ "${line}")
  set(f "${CMAKE_MATCH_1}")
  string(STRIP "${CMAKE_MATCH_2}" allowed)
  separate_arguments(allowed)
  list(APPEND folders "${f}")
  set(allowed_${f} ${allowed})
endforeach()
set(errors)
foreach(f ${folders})
  file(GLOB_RECURSE sources "${ROOT}/${f}/*.cpp" "${ROOT}/${f}/*.hpp" "${ROOT}/${f}/*.h" "${ROOT}/${f}/*.c")
  foreach(src ${sources})
    file(STRINGS "${src}" includes REGEX "^[ \t]*#[ \t]*include[ \t]+\"")
    foreach(inc ${includes})
      string(REGEX MATCH "\"([^\"]+)\"" _ "${inc}")
      set(path "${CMAKE_MATCH_1}")
      foreach(g ${folders})
        if(path MATCHES "^${g}/" AND NOT g STREQUAL f)
          list(FIND allowed_${f} "${g}" at)
          if(at EQUAL -1)
            file(RELATIVE_PATH rel "${ROOT}" "${src}")
            list(APPEND errors "${rel}: includes ${path}, but ${f} may include only: ${allowed_${f}}")
          endif()
        endif()
      endforeach()
    endforeach()
  endforeach()
endforeach()
if(errors)
  list(JOIN errors "\n  " text)
  message(FATAL_ERROR "layering (core/CMakeLists.txt, SQUISH_AREA_DEPS):\n  ${text}")
endif()
file(WRITE "${STAMP}" "ok\n")
