#pragma once
// Multiple-choice knapsack: pick one option per item (a type per tensor) minimising the summed
// loss with the summed bytes within a budget. Dynamic programming over a byte grid: option
// sizes are rounded up to the grid unit, so every solution it returns fits the exact budget,
// and it is optimal for the budget minus (items x unit) at worst; a greedy pass then spends the
// bytes the rounding left over on the upgrades that buy the most loss per byte.
#include <cstdint>
#include <vector>

namespace squish::plan {

struct Option {
  uint64_t bytes;
  double loss;
};

struct Allocation {
  std::vector<int> choice;  // option index per item
  uint64_t bytes = 0;
  double loss = 0;
};

// Throws Error(InputData) "... the smallest reachable is N bytes" when even the smallest
// options do not fit. grid: number of DP cells (the unit is ceil(budget / grid)).
Allocation allocate(const std::vector<std::vector<Option>>& items, uint64_t budget, int grid = 1 << 15);

}  // namespace squish::plan
