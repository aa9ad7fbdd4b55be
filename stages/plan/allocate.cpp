#include "stages/plan/allocate.hpp"

#include "core/base/error.hpp"

#include <algorithm>
#include <limits>

namespace squish::plan {

Allocation allocate(const std::vector<std::vector<Option>>& items, uint64_t budget, int grid) {
  const size_t n = items.size();
  uint64_t smallest = 0;
  for (const auto& it : items) {
    if (it.empty()) fail(ExitCode::InputData, "allocation: an item has no option");
    uint64_t b = it[0].bytes;
    for (const auto& o : it) b = std::min(b, o.bytes);
    smallest += b;
  }
  if (smallest > budget)
    fail(ExitCode::InputData, "budget of {} bytes for the weights cannot be met: the smallest reachable is {} bytes", budget, smallest);

  const uint64_t unit = std::max<uint64_t>(1, (budget + grid - 1) / std::max(1, grid));
  const size_t cap = static_cast<size_t>(budget / unit);
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // best[g]: least loss of the items so far using at most g units; pick[i][g]: item i's option.
  std::vector<double> best(cap + 1, 0.0), next(cap + 1);
  std::vector<std::vector<int8_t>> pick(n, std::vector<int8_t>(cap + 1, -1));
  for (size_t i = 0; i < n; ++i) {
    std::fill(next.begin(), next.end(), kInf);
    for (size_t k = 0; k < items[i].size(); ++k) {
      const size_t c = static_cast<size_t>((items[i][k].bytes + unit - 1) / unit);
      if (c > cap) continue;
      const double l = items[i][k].loss;
      for (size_t g = c; g <= cap; ++g) {
        const double v = best[g - c] + l;
        if (v < next[g]) next[g] = v, pick[i][g] = static_cast<int8_t>(k);
      }
    }
    best.swap(next);
  }
  Allocation a;
  a.choice.assign(n, 0);
  if (!(best[cap] < kInf)) {
    // The rounding made the smallest options too big for the grid: take them (they fit exactly).
    for (size_t i = 0; i < n; ++i)
      a.choice[i] = static_cast<int>(std::min_element(items[i].begin(), items[i].end(),
                                                      [](const Option& x, const Option& y) { return x.bytes < y.bytes; }) -
                                     items[i].begin());
  } else {
    size_t g = cap;
    for (size_t i = n; i-- > 0;) {
      const int k = pick[i][g];
      a.choice[i] = k;
      g -= static_cast<size_t>((items[i][k].bytes + unit - 1) / unit);
    }
  }
  for (size_t i = 0; i < n; ++i) a.bytes += items[i][a.choice[i]].bytes, a.loss += items[i][a.choice[i]].loss;
  // Spend what the rounding left: the upgrade with the largest loss saved per byte, repeatedly.
  for (;;) {
    double best_rate = 0;
    size_t bi = n;
    int bk = -1;
    for (size_t i = 0; i < n; ++i) {
      const Option& cur = items[i][a.choice[i]];
      for (size_t k = 0; k < items[i].size(); ++k) {
        const Option& o = items[i][k];
        if (o.loss >= cur.loss || a.bytes - cur.bytes + o.bytes > budget) continue;
        const double rate = (cur.loss - o.loss) / double(std::max<uint64_t>(1, o.bytes > cur.bytes ? o.bytes - cur.bytes : 1));
        if (rate > best_rate) best_rate = rate, bi = i, bk = static_cast<int>(k);
      }
    }
    if (bi == n) break;
    a.bytes = a.bytes - items[bi][a.choice[bi]].bytes + items[bi][bk].bytes;
    a.loss = a.loss - items[bi][a.choice[bi]].loss + items[bi][bk].loss;
    a.choice[bi] = bk;
  }
  return a;
}

}  // namespace squish::plan
