#include "stages/plan/prune_select.hpp"

#include "core/arch/architecture.hpp"
#include "core/arch/hf_config.hpp"
#include "core/io/moments.hpp"
#include "core/io/safetensors.hpp"
#include "core/io/score_folder.hpp"
#include "core/prune/recovery.hpp"
#include "core/base/error.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <optional>
#include <set>

namespace squish::plan {

namespace fs = std::filesystem;

namespace {

struct Stats {
  std::optional<ScoresFile> scores;
  FisherFactors fisher;
  std::optional<Moments> moments;
};

// Costs of removing input columns of one layer's output projection under the recovery.
// `unit`: the axis its removed columns count (q heads: attn_output; FFN channels: ffn_down).
prune::RemovalCost projection_cost(const SafetensorsModel& st, const Stats& s, arch::Axis unit, int layer, prune::Recovery mode,
                                   double damp) {
  const arch::TensorKind& kind = arch::projection_reading(unit);
  const std::string gguf = arch::gguf_name(kind, layer);
  const SafetensorsEntry& e = st.at(arch::hf_name(kind, layer));
  const Tensor t = st.load(e);
  const std::vector<float> w = t.to_f32();
  st.release(e);  // the float copy is what is used: the mapped pages leave RSS
  const int64_t rows = t.shape.at(0);
  const int n = static_cast<int>(t.shape.at(1));
  prune::InputStats in;
  in.n = n;
  in.mean = s.fisher.at(gguf, FisherFactor::Mean, size_t(n));
  int hn = 0;
  in.h = s.moments->load(gguf, &hn);
  if (hn != n) fail(ExitCode::InputData, "{}: the moments of {} are {} x {}, the tensor has {} columns", s.moments->dir(), gguf, hn, hn, n);
  const auto& g = s.fisher.at(gguf, FisherFactor::Out, size_t(rows));
  return prune::RemovalCost(w.data(), rows, n, in, g, mode, damp);
}

std::string fmt_cost(double c) { return fmt::format("{:.4g}", c); }

void check_target(const PruneTarget& t) {
  if (!(t.q >= 0 && t.q < 1)) fail(ExitCode::Usage, "prune_q must be a fraction in [0, 1) (got {})", t.q);
  if (!(t.kv >= 0 && t.kv < 1)) fail(ExitCode::Usage, "prune_kv must be a fraction in [0, 1) (got {})", t.kv);
  if (!(t.ffn >= 0 && t.ffn < 1)) fail(ExitCode::Usage, "prune_ffn must be a fraction in [0, 1) (got {})", t.ffn);
  if (t.drop_layers < 0) fail(ExitCode::Usage, "drop_layers must be >= 0 (got {})", t.drop_layers);
  if (t.by != "predicted" && t.by != "taylor" && t.by != "fisher")
    fail(ExitCode::Usage, "prune_by must be predicted, taylor or fisher (got '{}')", t.by);
  if (t.ffn_align < 0) fail(ExitCode::Usage, "ffn_align must be >= 0 (got {})", t.ffn_align);
  if (!(t.damp >= 0)) fail(ExitCode::Usage, "recovery_damp must be >= 0 (got {})", t.damp);
}

// What every selection step reads, and the removals it records (the recipe's reasons).
struct Selection {
  const PruneTarget& t;
  const ModelConfig cfg;
  const SafetensorsModel st;
  Stats s;
  prune::Recovery mode;
  bool predicted;
  std::optional<ScoreMeasure> measure;
  nlohmann::json removals = nlohmann::json::array();
  std::function<void()> tick{};
  std::vector<int> live{};  // layers not dropped
};

// Whole layers: the least important by the score stage's branch masks.
std::set<int> drop_layers(Selection& x) {
  std::set<int> dropped;
  const int L = x.cfg.n_layer;
  if (x.t.drop_layers > 0) {
    if (x.t.drop_layers >= L) fail(ExitCode::Usage, "drop_layers {} would remove every layer (the model has {})", x.t.drop_layers, L);
    std::vector<std::pair<double, int>> imp;
    for (int l = 0; l < L; ++l)
      imp.push_back({x.s.scores->branch_taylor(l, ScoreBranch::Attn) + x.s.scores->branch_taylor(l, ScoreBranch::Mlp), l});
    std::sort(imp.begin(), imp.end());
    for (int i = 0; i < x.t.drop_layers; ++i) {
      dropped.insert(imp[size_t(i)].second);
      x.removals.push_back({{"kind", "layer"}, {"layer", imp[size_t(i)].second}, {"score", imp[size_t(i)].first}, {"by", "taylor"},
                            {"reason", fmt::format("layer {}: attention + MLP Taylor importance {:.4g}, {} lowest of {}", imp[size_t(i)].second,
                                                   imp[size_t(i)].first, i + 1, L)}});
    }
  }
  for (int l = 0; l < L; ++l)
    if (!dropped.count(l)) x.live.push_back(l);
  return dropped;
}

// Attention: KV groups, then q heads within the kept groups. Both greedy over every layer, each
// candidate costed jointly with what its layer has already lost (a set of removed q heads: a
// removed group removes all of its heads).
void select_attention(Selection& x, recipe::CompressionRecipe& recipe) {
  const PruneTarget& t = x.t;
  const auto& cfg = x.cfg;
  const bool predicted = x.predicted;
  const int L = cfg.n_layer, n_kv = cfg.n_head_kv, qpg = cfg.n_head / cfg.n_head_kv, hd = cfg.head_dim;
  const std::vector<int>& live = x.live;
  std::vector<std::optional<prune::RemovalCost>> cost(static_cast<size_t>(L));
  std::vector<std::vector<double>> group_score(static_cast<size_t>(L)), head_score(static_cast<size_t>(L));
  for (int l : live) {
    if (predicted) {
      cost[size_t(l)].emplace(projection_cost(x.st, x.s, arch::Axis::QHeads, l, x.mode, t.damp));
    } else {
      group_score[size_t(l)] = x.s.scores->unit_scores(l, ScoreUnits::KvGroups, *x.measure, size_t(n_kv));
      head_score[size_t(l)] = x.s.scores->unit_scores(l, ScoreUnits::Heads, *x.measure, size_t(cfg.n_head));
    }
    x.tick();
  }
  // Cost of a layer losing these q heads (and the groups among them entirely).
  auto joint = [&](int l, const std::set<int>& heads) {
    if (predicted) {
      std::vector<int64_t> c;
      for (int h : heads)
        for (int r = 0; r < hd; ++r) c.push_back(int64_t{h} * hd + r);
      return (*cost[size_t(l)])(c);
    }
    double v = 0;  // mask scores: a group's own score covers its heads
    for (int g = 0; g < n_kv; ++g) {
      int n = 0;
      for (int h = g * qpg; h < (g + 1) * qpg; ++h) n += static_cast<int>(heads.count(h));
      if (n == qpg) {
        v += group_score[size_t(l)][size_t(g)];
      } else {
        for (int h = g * qpg; h < (g + 1) * qpg; ++h) v += heads.count(h) ? head_score[size_t(l)][size_t(h)] : 0.0;
      }
    }
    return v;
  };
  std::vector<std::set<int>> gone(static_cast<size_t>(L));  // removed q heads
  std::vector<std::vector<int>> groups_gone(static_cast<size_t>(L));
  std::vector<double> layer_cost(static_cast<size_t>(L), 0.0);
  auto heads_of = [&](int g) {
    std::set<int> h;
    for (int i = g * qpg; i < (g + 1) * qpg; ++i) h.insert(i);
    return h;
  };
  auto group_gone = [&](int l, int g) { return std::count(groups_gone[size_t(l)].begin(), groups_gone[size_t(l)].end(), g) != 0; };

  const int want_kv = static_cast<int>(std::lround(t.kv * double(live.size()) * n_kv));
  const int most_kv = static_cast<int>(live.size()) * (n_kv - 1);
  if (want_kv > most_kv)
    fail(ExitCode::Usage, "prune_kv {} removes {} KV groups but at most {} can go (every layer keeps one of its {})", t.kv, want_kv, most_kv, n_kv);
  for (int step = 0; step < want_kv; ++step) {
    double best = 0;
    int bl = -1, bg = -1;
    for (int l : live) {
      if (static_cast<int>(groups_gone[size_t(l)].size()) >= n_kv - 1) continue;
      for (int g = 0; g < n_kv; ++g) {
        if (group_gone(l, g)) continue;
        std::set<int> with = gone[size_t(l)];
        for (int h : heads_of(g)) with.insert(h);
        const double inc = joint(l, with) - layer_cost[size_t(l)];
        if (bl < 0 || inc < best) best = inc, bl = l, bg = g;
      }
    }
    groups_gone[size_t(bl)].push_back(bg);
    const std::set<int> group_heads = heads_of(bg);
    for (int h : group_heads) gone[size_t(bl)].insert(h);
    layer_cost[size_t(bl)] += best;
    x.removals.push_back({{"kind", "kv_group"}, {"layer", bl}, {"index", bg}, {"score", best}, {"by", t.by},
                          {"q_heads", std::vector<int>(group_heads.begin(), group_heads.end())},
                          {"reason", predicted ? fmt::format("KV group {} of layer {}: predicted dL {} after {} recovery, jointly with the layer's "
                                                             "earlier removals; the cheapest remaining group of any layer",
                                                             bg, bl, fmt_cost(best), t.recovery)
                                               : fmt::format("KV group {} of layer {}: {} importance {}; the lowest remaining of any layer", bg,
                                                             bl, t.by, fmt_cost(best))}});
  }

  // q heads: a unit takes one more head from every kept group of a layer (GGUF's GQA layout
  // needs the same count per group), each the cheapest given the rest; a group keeps one.
  const int want_q = static_cast<int>(std::lround(t.q * double(live.size()) * cfg.n_head));
  int removed_q = 0;
  for (int l : live) removed_q += static_cast<int>(gone[size_t(l)].size());
  if (t.q > 0 && qpg < 2) fail(ExitCode::Usage, "prune_q: every KV group has one q head; remove groups with prune_kv");
  auto kept_per_group = [&](int l) {  // heads still kept per kept group
    for (int g = 0; g < n_kv; ++g)
      if (!group_gone(l, g)) {
        int n = 0;
        for (int h : heads_of(g)) n += static_cast<int>(gone[size_t(l)].count(h));
        return qpg - n;
      }
    return qpg;
  };
  while (t.q > 0 && removed_q < want_q) {
    double best = 0;
    int bl = -1;
    std::vector<int> bunit;
    for (int l : live) {
      if (kept_per_group(l) <= 1) continue;
      std::set<int> with = gone[size_t(l)];
      std::vector<int> unit;
      for (int g = 0; g < n_kv; ++g) {
        if (group_gone(l, g)) continue;
        int pick = -1;
        double pc = 0;
        for (int h : heads_of(g)) {
          if (with.count(h)) continue;
          std::set<int> w2 = with;
          w2.insert(h);
          const double c = joint(l, w2);
          if (pick < 0 || c < pc) pick = h, pc = c;
        }
        with.insert(pick);
        unit.push_back(pick);
      }
      if (removed_q + static_cast<int>(unit.size()) - want_q > want_q - removed_q) continue;  // overshoots more than it reaches
      const double inc = (joint(l, with) - layer_cost[size_t(l)]) / double(unit.size());  // per head removed
      if (bl < 0 || inc < best) best = inc, bl = l, bunit = unit;
    }
    if (bl < 0) break;  // nothing left that brings the count closer
    for (int h : bunit) gone[size_t(bl)].insert(h);
    const double c = joint(bl, gone[size_t(bl)]);
    const double inc = c - layer_cost[size_t(bl)];
    layer_cost[size_t(bl)] = c;
    removed_q += static_cast<int>(bunit.size());
    x.removals.push_back({{"kind", "q_heads"}, {"layer", bl}, {"q_heads", bunit}, {"score", inc}, {"by", t.by},
                          {"reason", fmt::format("q heads {} of layer {} (one per kept group): {} {} {}; the cheapest per head of any layer",
                                                 fmt::join(bunit, ","), bl, predicted ? "predicted dL" : t.by + " importance", fmt_cost(inc),
                                                 predicted ? "after " + t.recovery + " recovery, jointly with the layer's earlier removals" : "")}});
  }
  for (int l : live) {
    if (gone[size_t(l)].empty()) continue;
    recipe::AttentionKeep k;
    for (int g = 0; g < n_kv; ++g)
      if (!group_gone(l, g)) k.kv_groups.push_back(g);
    for (int h = 0; h < cfg.n_head; ++h)
      if (!gone[size_t(l)].count(h)) k.q_heads.push_back(h);
    recipe.attention[l] = k;
  }
}

// FFN channels: per layer cheapest first, in blocks of `align`; blocks taken across layers by
// cost. A layer's cost matrices (n_ff² each) are held only while that layer is costed: built
// once to rank its channels, again for the cost of the set finally removed.
void select_ffn_channels(Selection& x, recipe::CompressionRecipe& recipe) {
  const PruneTarget& t = x.t;
  if (!x.predicted) fail(ExitCode::Usage, "prune_ffn selects by predicted cost only (prune_by={} is for KV groups)", t.by);
  const int L = x.cfg.n_layer, n_ff = x.cfg.n_ff;
  const std::vector<int>& live = x.live;
  const int align = t.ffn_align > 0 ? t.ffn_align : (n_ff % 256 == 0 ? 256 : 32);
  if (align >= n_ff) fail(ExitCode::Usage, "ffn_align {} leaves no channel to remove (n_ff {})", align, n_ff);
  const int per_layer_blocks = (n_ff - 1) / align;  // a layer keeps at least n_ff - that many x align channels
  const int want = static_cast<int>(std::lround(t.ffn * double(live.size()) * n_ff / align));
  if (want > per_layer_blocks * static_cast<int>(live.size()))
    fail(ExitCode::Usage, "prune_ffn {} removes more channels than the layers can lose", t.ffn);
  std::vector<std::vector<int>> order(static_cast<size_t>(L));
  std::vector<std::vector<double>> block_cost(static_cast<size_t>(L));
  for (int l : live) {
    const prune::RemovalCost cost = projection_cost(x.st, x.s, arch::Axis::FfnChannels, l, x.mode, t.damp);
    std::vector<double> c(static_cast<size_t>(n_ff));
    for (int j = 0; j < n_ff; ++j) c[size_t(j)] = cost.single(j);
    auto& o = order[size_t(l)];
    o.resize(size_t(n_ff));
    std::iota(o.begin(), o.end(), 0);
    std::stable_sort(o.begin(), o.end(), [&](int a, int b) { return c[size_t(a)] < c[size_t(b)]; });
    for (int b = 0; b < per_layer_blocks; ++b) {
      double v = 0;
      for (int i = b * align; i < (b + 1) * align; ++i) v += c[size_t(o[size_t(i)])];
      block_cost[size_t(l)].push_back(v);
    }
    x.tick();
  }
  std::vector<int> taken(size_t(L), 0);
  for (int step = 0; step < want; ++step) {
    int bl = -1;
    for (int l : live)
      if (taken[size_t(l)] < per_layer_blocks &&
          (bl < 0 || block_cost[size_t(l)][size_t(taken[size_t(l)])] < block_cost[size_t(bl)][size_t(taken[size_t(bl)])]))
        bl = l;
    taken[size_t(bl)]++;
  }
  for (int l : live) {
    const int r = taken[size_t(l)] * align;
    if (r == 0) continue;
    std::vector<int64_t> gone(order[size_t(l)].begin(), order[size_t(l)].begin() + r);
    std::sort(gone.begin(), gone.end());
    const double c = projection_cost(x.st, x.s, arch::Axis::FfnChannels, l, x.mode, t.damp)(gone);
    std::vector<int> kept;
    for (int j = 0, gi = 0; j < n_ff; ++j) {
      if (gi < r && gone[size_t(gi)] == j) ++gi;
      else kept.push_back(j);
    }
    recipe.ffn_channels[l] = kept;
    x.removals.push_back({{"kind", "ffn_channels"}, {"layer", l}, {"count", r}, {"score", c}, {"by", t.by},
                          {"reason", fmt::format("{} of {} FFN channels of layer {} (cheapest first, in blocks of {}): predicted dL {} after "
                                                 "{} recovery, all of them at once",
                                                 r, n_ff, l, align, fmt_cost(c), t.recovery)}});
  }
}

}  // namespace

void select_pruning(const std::string& model_dir, const std::string& stats_dir, const PruneTarget& t, recipe::CompressionRecipe& recipe,
                    const std::function<void(uint64_t, uint64_t)>& progress) {
  check_target(t);
  const prune::Recovery mode = prune::recovery_from_name(t.recovery);
  if (!t.any()) return;  // nothing removed: nothing to repair (the recipe says no recovery)
  recipe.recovery = t.recovery;
  recipe.recovery_damp = t.damp;

  const ScoreFolder folder(stats_dir);
  Selection x{t, ModelConfig::load(model_dir), SafetensorsModel::open(model_dir), Stats{}, mode, t.by == "predicted", score_measure_from_name(t.by)};
  x.s.scores = folder.scores();
  x.s.fisher = folder.fisher();
  if (x.predicted && (t.kv > 0 || t.q > 0 || t.ffn > 0))
    x.s.moments = folder.require_moments("predicted pruning costs need the second moments", ", or prune_by=taylor");
  const int L = x.cfg.n_layer;
  uint64_t steps = 0;
  const uint64_t total_steps = uint64_t(t.kv > 0 || t.q > 0 ? L : 0) + uint64_t(t.ffn > 0 ? L : 0) + 1;
  x.tick = [&] {
    if (progress) progress(++steps, total_steps);
  };

  const std::set<int> dropped = drop_layers(x);
  if (t.kv > 0 || t.q > 0) select_attention(x, recipe);
  if (t.ffn > 0) select_ffn_channels(x, recipe);
  recipe.drop_layers.assign(dropped.begin(), dropped.end());
  recipe.removals = x.removals;
  recipe.source["pruning"] = {{"prune_kv", t.kv}, {"prune_q", t.q}, {"prune_ffn", t.ffn}, {"drop_layers", t.drop_layers}, {"by", t.by},
                              {"recovery", t.recovery}, {"recovery_damp", t.damp}, {"stats", fs::absolute(stats_dir).string()}};
  x.tick();
}

}  // namespace squish::plan
