# The layering check (cmake/check_layers.cmake) on a small tree: an include that goes up a layer
# or across to a sibling stage fails; includes down the layers and of third-party headers pass.
#   cmake -DCHECKER=<check_layers.cmake> -DWORK=<scratch folder> -P layers_test.cmake
file(REMOVE_RECURSE "${WORK}")
file(WRITE "${WORK}/rules.txt" "core/base: \ncore/io: core/base\nstages/a: core/base core/io\nstages/b: core/base core/io\n")
file(WRITE "${WORK}/core/base/e.hpp" "#include <vector>\n")
file(WRITE "${WORK}/core/io/f.cpp" "#include \"core/io/f.hpp\"\n#include \"core/base/e.hpp\"\n#include <fmt/format.h>\n")
file(WRITE "${WORK}/stages/a/s.cpp" "#include \"core/io/f.hpp\"\n")
function(check expect_ok what)
  execute_process(COMMAND ${CMAKE_COMMAND} -DROOT=${WORK} -DRULES=${WORK}/rules.txt -DSTAMP=${WORK}/ok -P ${CHECKER}
                  RESULT_VARIABLE rc ERROR_VARIABLE err)
  if(expect_ok AND NOT rc EQUAL 0)
    message(FATAL_ERROR "${what}: refused a tree that keeps its layers:\n${err}")
  elseif(NOT expect_ok AND rc EQUAL 0)
    message(FATAL_ERROR "${what}: accepted a tree that breaks its layers")
  elseif(NOT expect_ok AND NOT err MATCHES "${ARGN}")
    message(FATAL_ERROR "${what}: the error does not name the include:\n${err}")
  endif()
endfunction()
check(TRUE "a layered tree")
# Folders without a rule (tools/, tests/) may include every layer and stage.
file(WRITE "${WORK}/tools/t.cpp" "#include \"stages/a/s.hpp\"\n#include \"stages/b/u.hpp\"\n#include \"core/io/f.hpp\"\n")
check(TRUE "a tool including stages and core")
file(WRITE "${WORK}/core/base/up.hpp" "#include \"core/io/f.hpp\"\n")
check(FALSE "base including io" "core/base/up.hpp: includes core/io/f.hpp")
file(REMOVE "${WORK}/core/base/up.hpp")
file(WRITE "${WORK}/stages/a/t.hpp" "  #  include \"stages/b/u.hpp\"\n")
check(FALSE "a stage including another" "stages/a/t.hpp: includes stages/b/u.hpp")
