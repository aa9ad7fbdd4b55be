#include "core/model/attention.hpp"

#include "core/model/kernels.hpp"
#include "core/model/parallel.hpp"
#include "core/quant/quantize.hpp"
#include "core/base/error.hpp"
#include "core/base/tensor.hpp"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#define SQUISH_AVX2 __attribute__((target("avx2,fma,f16c")))
#define SQUISH_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma,f16c")))

namespace squish::infer {
namespace {

constexpr int kB = 16;         // keys per transposed block: one AVX-512 vector, two AVX2 vectors
constexpr int kMinSpan = 256;  // keys per decode task at least (smaller spans cost more to merge than they save)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline float to_f(uint16_t h) { return f16_to_f32(h); }
inline float to_f(float f) { return f; }
inline void from_f(float x, uint16_t& h) { h = f32_to_f16(x); }
inline void from_f(float x, float& f) { f = x; }

// Element e of key j in a KV head's transposed key blocks.
inline size_t key_index(int j, int e, int D) { return (size_t(j / kB) * D + e) * kB + j % kB; }

// What one decode task produces for one query row and one query head of its group: the span's
// softmax max and sum and its probability-weighted sum of values (D floats after it).
struct SpanResult {
  float m, l;
};

// ---- scalar reference --------------------------------------------------------------------------

// Scores (scale q.k) of keys [j0, j1) for G query heads into s[h * span + (j - j0)].
template <class E>
void scores_ref(const E* K, int D, const float* const* q, int G, int j0, int j1, float scale, float* s, int span) {
  for (int h = 0; h < G; ++h)
    for (int j = j0; j < j1; ++j) {
      float d = 0;
      for (int e = 0; e < D; ++e) d += q[h][e] * to_f(K[key_index(j, e, D)]);
      s[h * span + (j - j0)] = d * scale;
    }
}

// o[h] += sum_j p[h * span + j - j0] v_j over keys [j0, j1).
template <class E>
void values_ref(const E* V, int D, const float* p, int G, int j0, int j1, int span, float* o) {
  for (int j = j0; j < j1; ++j)
    for (int h = 0; h < G; ++h) {
      const float w = p[h * span + (j - j0)];
      for (int e = 0; e < D; ++e) o[h * D + e] += w * to_f(V[size_t(j) * D + e]);
    }
}

void exp_ref(float* x, int n, float m) {
  for (int i = 0; i < n; ++i) x[i] = x[i] == kNegInf ? 0.f : std::exp(x[i] - m);
}

// ---- AVX2 ----------------------------------------------------------------------------------------

SQUISH_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
SQUISH_AVX2 inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// e^x for 8 lanes (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n through
// the exponent bits): relative error ~1e-7 over the softmax range.
SQUISH_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.3365447505531f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

// In place: x = exp(x - m), 0 where x is -inf (masked keys); n a multiple of 8.
SQUISH_AVX2 void exp_avx2(float* x, int n, float m) {
  const __m256 vm = _mm256_set1_ps(m), ninf = _mm256_set1_ps(kNegInf);
  for (int i = 0; i < n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(x + i, _mm256_andnot_ps(_mm256_cmp_ps(v, ninf, _CMP_EQ_OQ), exp8(_mm256_sub_ps(v, vm))));
  }
}

// Scores of the keys of blocks [b0, b1) for G query heads, up to four heads per pass (a block
// of 16 keys is read from memory once per group, from L1 in later passes).
template <class E>
SQUISH_AVX2 void scores_avx2(const E* K, int D, const float* const* q, int G, int b0, int b1, float scale, float* s, int span) {
  const __m256 vs = _mm256_set1_ps(scale);
  for (int h0 = 0; h0 < G; h0 += 4) {
    const int nh = std::min(4, G - h0);
    for (int b = b0; b < b1; ++b) {
      const E* kb = K + size_t(b) * D * kB;
      __m256 a0[4], a1[4];
      for (int h = 0; h < 4; ++h) a0[h] = a1[h] = _mm256_setzero_ps();
      for (int e = 0; e < D; ++e) {
        const __m256 x0 = load8(kb + e * kB), x1 = load8(kb + e * kB + 8);
        for (int h = 0; h < nh; ++h) {
          const __m256 qv = _mm256_broadcast_ss(q[h0 + h] + e);
          a0[h] = _mm256_fmadd_ps(qv, x0, a0[h]);
          a1[h] = _mm256_fmadd_ps(qv, x1, a1[h]);
        }
      }
      for (int h = 0; h < nh; ++h) {
        float* out = s + (h0 + h) * span + (b - b0) * kB;
        _mm256_storeu_ps(out, _mm256_mul_ps(a0[h], vs));
        _mm256_storeu_ps(out + 8, _mm256_mul_ps(a1[h], vs));
      }
    }
  }
}

// o[h] += sum_j p[h][j] v_j over keys [j0, j1): 16 dimensions and up to four heads per pass in
// eight accumulators.
template <class E>
SQUISH_AVX2 void values_avx2(const E* V, int D, const float* p, int G, int j0, int j1, int span, float* o) {
  for (int h0 = 0; h0 < G; h0 += 4) {
    const int nh = std::min(4, G - h0);
    for (int e = 0; e < D; e += 16) {
      const int e1 = e + 8 < D ? e + 8 : e;  // D % 16 == 8: the last pass does one chunk twice
      __m256 a0[4], a1[4];
      for (int h = 0; h < nh; ++h) a0[h] = _mm256_loadu_ps(o + (h0 + h) * D + e), a1[h] = _mm256_setzero_ps();
      for (int j = j0; j < j1; ++j) {
        const E* vj = V + size_t(j) * D;
        const __m256 v0 = load8(vj + e), v1 = load8(vj + e1);
        for (int h = 0; h < nh; ++h) {
          const __m256 w = _mm256_broadcast_ss(p + (h0 + h) * span + (j - j0));
          a0[h] = _mm256_fmadd_ps(w, v0, a0[h]);
          a1[h] = _mm256_fmadd_ps(w, v1, a1[h]);
        }
      }
      for (int h = 0; h < nh; ++h) {
        _mm256_storeu_ps(o + (h0 + h) * D + e, a0[h]);
        if (e1 != e) _mm256_storeu_ps(o + (h0 + h) * D + e1, _mm256_add_ps(_mm256_loadu_ps(o + (h0 + h) * D + e1), a1[h]));
      }
    }
  }
}

// ---- AVX-512 -----------------------------------------------------------------------------------
// The same loops with 16 lanes: a key block per vector; 32 value dimensions per pass.

SQUISH_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
SQUISH_AVX512 inline __m512 load16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

template <class E>
SQUISH_AVX512 void scores_avx512(const E* K, int D, const float* const* q, int G, int b0, int b1, float scale, float* s, int span) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (int h0 = 0; h0 < G; h0 += 8) {
    const int nh = std::min(8, G - h0);
    for (int b = b0; b < b1; ++b) {
      const E* kb = K + size_t(b) * D * kB;
      __m512 acc[8];
      for (int h = 0; h < 8; ++h) acc[h] = _mm512_setzero_ps();
      for (int e = 0; e < D; ++e) {
        const __m512 x = load16(kb + e * kB);
        for (int h = 0; h < nh; ++h) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(q[h0 + h][e]), x, acc[h]);
      }
      for (int h = 0; h < nh; ++h) _mm512_storeu_ps(s + (h0 + h) * span + (b - b0) * kB, _mm512_mul_ps(acc[h], vs));
    }
  }
}

template <class E>
SQUISH_AVX512 void values_avx512(const E* V, int D, const float* p, int G, int j0, int j1, int span, float* o) {
  for (int h0 = 0; h0 < G; h0 += 4) {
    const int nh = std::min(4, G - h0);
    for (int e = 0; e < D; e += 32) {
      const int e1 = e + 16 < D ? e + 16 : e;  // D % 32 == 16: the last pass does one chunk twice
      __m512 a0[4], a1[4];
      for (int h = 0; h < nh; ++h) a0[h] = _mm512_loadu_ps(o + (h0 + h) * D + e), a1[h] = _mm512_setzero_ps();
      for (int j = j0; j < j1; ++j) {
        const E* vj = V + size_t(j) * D;
        const __m512 v0 = load16(vj + e), v1 = load16(vj + e1);
        for (int h = 0; h < nh; ++h) {
          const __m512 w = _mm512_set1_ps(p[(h0 + h) * span + (j - j0)]);
          a0[h] = _mm512_fmadd_ps(w, v0, a0[h]);
          a1[h] = _mm512_fmadd_ps(w, v1, a1[h]);
        }
      }
      for (int h = 0; h < nh; ++h) {
        _mm512_storeu_ps(o + (h0 + h) * D + e, a0[h]);
        if (e1 != e) _mm512_storeu_ps(o + (h0 + h) * D + e1, _mm512_add_ps(_mm512_loadu_ps(o + (h0 + h) * D + e1), a1[h]));
      }
    }
  }
}

// One decode task: KV head g of `layer`, keys [j0, j1) (j0 a multiple of 8), query rows 0..T-1.
// For row t the visible keys are [lo_t, hi_t); results go to res[t * G + h] and o[(t * G + h) * D].
template <class E>
void decode_span(const E* K, const E* V, int D, int G, const float* q, int ldq, int T, int p0, int window, float scale,
                 int j0, int j1, SpanResult* res, float* o) {
  // SIMD kernels need whole vectors of dimensions: 8 (AVX2) or 16 (AVX-512) per chunk.
  const SimdLevel level = simd_level();
  const bool avx512 = level == SimdLevel::Avx512 && D % 16 == 0, simd = avx512 || (level >= SimdLevel::Avx2 && D % 8 == 0);
  const int span = (j1 - j0 + kB - 1) / kB * kB;
  thread_local std::vector<float> s;
  s.resize(size_t(G) * span);
  std::vector<const float*> qh(G);
  for (int t = 0; t < T; ++t) {
    const int lo = std::max(j0, kernels::first_visible_key(p0 + t, window)), hi = std::min(j1, p0 + t + 1);
    SpanResult* r = res + size_t(t) * G;
    float* ot = o + size_t(t) * G * D;
    std::fill(ot, ot + size_t(G) * D, 0.f);
    if (lo >= hi) {
      for (int h = 0; h < G; ++h) r[h] = {kNegInf, 0.f};
      continue;
    }
    for (int h = 0; h < G; ++h) qh[h] = q + size_t(t) * ldq + size_t(h) * D;
    // Whole blocks covering [lo, hi); keys outside are masked below.
    const int b0 = lo / kB, b1 = (hi + kB - 1) / kB, base = b0 * kB - j0, n = (b1 - b0) * kB;
    float* sb = s.data() + base;
    if (avx512) scores_avx512(K, D, qh.data(), G, b0, b1, scale, sb, span);
    else if (simd) scores_avx2(K, D, qh.data(), G, b0, b1, scale, sb, span);
    else scores_ref(K, D, qh.data(), G, b0 * kB, b1 * kB, scale, sb, span);
    for (int h = 0; h < G; ++h) {
      float* sh = sb + size_t(h) * span;
      for (int j = b0 * kB; j < lo; ++j) sh[j - b0 * kB] = kNegInf;
      for (int j = hi; j < b1 * kB; ++j) sh[j - b0 * kB] = kNegInf;
      float m = kNegInf;
      for (int i = 0; i < n; ++i) m = std::max(m, sh[i]);
      if (simd) exp_avx2(sh, n, m);
      else exp_ref(sh, n, m);
      double l = 0;
      for (int i = 0; i < n; ++i) l += sh[i];
      r[h] = {m, float(l)};
    }
    if (avx512) values_avx512(V, D, sb + (lo - b0 * kB), G, lo, hi, span, ot);
    else if (simd) values_avx2(V, D, sb + (lo - b0 * kB), G, lo, hi, span, ot);
    else values_ref(V, D, sb + (lo - b0 * kB), G, lo, hi, span, ot);
  }
}

template <class E>
void store_rows(E* K, E* V, int D, int p0, int T, const float* k, const float* v, int ld, int g) {
  for (int t = 0; t < T; ++t) {
    const int j = p0 + t;
    const float* kt = k + size_t(t) * ld + size_t(g) * D;
    const float* vt = v + size_t(t) * ld + size_t(g) * D;
    for (int e = 0; e < D; ++e) from_f(kt[e], K[key_index(j, e, D)]);
    for (int e = 0; e < D; ++e) from_f(vt[e], V[size_t(j) * D + e]);
  }
}

template <class E>
void expand(const E* K, const E* V, int D, int n, float* kf, float* vf) {
  for (int j = 0; j < n; ++j)
    for (int e = 0; e < D; ++e) {
      kf[size_t(j) * D + e] = to_f(K[key_index(j, e, D)]);
      vf[size_t(j) * D + e] = to_f(V[size_t(j) * D + e]);
    }
}

}  // namespace

// The size is arch's (the planner's device budget counts the same bytes); its padding is this
// file's key block.
static_assert(kB == arch::kKvCacheBlock, "the KV cache's key block is arch::kKvCacheBlock");

uint64_t KVCache::bytes_needed(const arch::ModelArch& a, int n_ctx, KVType type) {
  return a.kv_cache_bytes(n_ctx, type == KVType::F16 ? 2 : 4);
}

KVCache::KVCache(const arch::ModelArch& a, int n_ctx, KVType type)
    : type_(type), n_ctx_(n_ctx), n_ctx_pad_(arch::kv_cache_positions(n_ctx)), head_dim_(a.head_dim) {
  size_t offset = 0;
  for (const auto& L : a.layers) {
    layers_.push_back({L.n_head, L.n_head_kv, offset});
    offset += 2 * size_t(L.n_head_kv) * key_stride();
  }
  data_.assign(offset * elem_bytes(), std::byte{0});  // zeros: padding keys stay finite
}

void KVCache::store(int layer, int p0, int T, const float* k, const float* v) {
  const Layer& L = layers_[layer];
  if (p0 < 0 || p0 + T > n_ctx_) fail(ExitCode::Runtime, "KV cache: positions {}..{} outside its {}", p0, p0 + T - 1, n_ctx_);
  const int D = head_dim_, ld = L.n_head_kv * D;
  for (int g = 0; g < L.n_head_kv; ++g) {
    auto* K = const_cast<std::byte*>(keys(layer, g));
    auto* V = const_cast<std::byte*>(values(layer, g));
    if (type_ == KVType::F16)
      store_rows(reinterpret_cast<uint16_t*>(K), reinterpret_cast<uint16_t*>(V), D, p0, T, k, v, ld, g);
    else
      store_rows(reinterpret_cast<float*>(K), reinterpret_cast<float*>(V), D, p0, T, k, v, ld, g);
  }
}

void KVCache::attend(int layer, int p0, int T, const float* q, float* out, float scale, int window) const {
  if (T < 8) attend_decode(layer, p0, T, q, out, scale, window);
  else attend_batch(layer, p0, T, q, out, scale, window);
}

void KVCache::attend_decode(int layer, int p0, int T, const float* q, float* out, float scale, int window) const {
  const Layer& L = layers_[layer];
  const int D = head_dim_, G = L.n_head / L.n_head_kv, HQ = L.n_head * D;
  const int lo = kernels::first_visible_key(p0, window) / kB * kB, hi = p0 + T;
  // Spans: the same number per KV head, a multiple of the thread count so every thread gets as
  // many keys (a pruned layer's 3 heads on 2 threads would otherwise leave one thread idle a
  // sixth of the time); none shorter than kMinSpan keys; block-aligned.
  const int threads = tbb::this_task_arena::max_concurrency();
  const int want = threads * (L.n_head_kv >= 2 ? 1 : 2);
  const int S = std::max(1, std::min(want, (hi - lo) / kMinSpan));
  const int step = ((hi - lo + S - 1) / S + kB - 1) / kB * kB;
  const int tasks = L.n_head_kv * S;
  // The caller's scratch (thread_local names are not captured: each worker would see its own).
  thread_local std::vector<SpanResult> res_buf;
  thread_local std::vector<float> part_buf;
  std::vector<SpanResult>& res = res_buf;
  std::vector<float>& part = part_buf;
  res.resize(size_t(tasks) * T * G);
  part.resize(size_t(tasks) * T * G * D);
  par_for_static(tasks, [&](int task) {
    const int g = task / S, j0 = lo + (task % S) * step, j1 = std::min(hi, j0 + step);
    SpanResult* r = res.data() + size_t(task) * T * G;
    float* o = part.data() + size_t(task) * T * G * D;
    const float* qg = q + size_t(g) * G * D;
    if (j0 >= j1) {
      for (int i = 0; i < T * G; ++i) r[i] = {kNegInf, 0.f};
      std::fill(o, o + size_t(T) * G * D, 0.f);
    } else if (type_ == KVType::F16) {
      decode_span(reinterpret_cast<const uint16_t*>(keys(layer, g)), reinterpret_cast<const uint16_t*>(values(layer, g)), D, G, qg,
                  HQ, T, p0, window, scale, j0, j1, r, o);
    } else {
      decode_span(reinterpret_cast<const float*>(keys(layer, g)), reinterpret_cast<const float*>(values(layer, g)), D, G, qg, HQ,
                  T, p0, window, scale, j0, j1, r, o);
    }
  });
  // Merge the spans of each (row, head): out = sum_s e^(m_s - m) o_s / sum_s e^(m_s - m) l_s.
  for (int t = 0; t < T; ++t)
    for (int g = 0; g < L.n_head_kv; ++g)
      for (int h = 0; h < G; ++h) {
        float m = kNegInf;
        for (int sp = 0; sp < S; ++sp) m = std::max(m, res[(size_t(g * S + sp) * T + t) * G + h].m);
        float* dst = out + size_t(t) * HQ + size_t(g * G + h) * D;
        std::fill(dst, dst + D, 0.f);
        double l = 0;
        for (int sp = 0; sp < S; ++sp) {
          const size_t i = (size_t(g * S + sp) * T + t) * G + h;
          if (res[i].m == kNegInf) continue;
          const float w = std::exp(res[i].m - m);
          l += double(w) * res[i].l;
          const float* o = part.data() + i * D;
          for (int e = 0; e < D; ++e) dst[e] += w * o[e];
        }
        const float inv = float(1.0 / l);
        for (int e = 0; e < D; ++e) dst[e] *= inv;
      }
}

void KVCache::attend_batch(int layer, int p0, int T, const float* q, float* out, float scale, int window) const {
  const Layer& L = layers_[layer];
  const int D = head_dim_, G = L.n_head / L.n_head_kv, HQ = L.n_head * D, n_kv = p0 + T;
  thread_local std::vector<float> kf_buf, vf_buf;  // the caller's (see attend_decode)
  std::vector<float>& kf = kf_buf;
  std::vector<float>& vf = vf_buf;
  kf.resize(size_t(L.n_head_kv) * n_kv * D);
  vf.resize(kf.size());
  par_for_static(L.n_head_kv, [&](int g) {
    float* kg = kf.data() + size_t(g) * n_kv * D;
    float* vg = vf.data() + size_t(g) * n_kv * D;
    if (type_ == KVType::F16)
      expand(reinterpret_cast<const uint16_t*>(keys(layer, g)), reinterpret_cast<const uint16_t*>(values(layer, g)), D, n_kv, kg, vg);
    else
      expand(reinterpret_cast<const float*>(keys(layer, g)), reinterpret_cast<const float*>(values(layer, g)), D, n_kv, kg, vg);
  });
  // One task per (query head, block of queries), over the keys the block can see.
  const int qb = 64, n_qb = (T + qb - 1) / qb;
  par_for_static(L.n_head * n_qb, [&](int task) {
    const int h = task / n_qb, t0 = (task % n_qb) * qb, nt = std::min(qb, T - t0);
    const int n_vis = p0 + t0 + nt;  // keys visible to the last query of the block
    thread_local std::vector<float> P;
    P.resize(size_t(nt) * n_vis);
    const float* kg = kf.data() + size_t(h / G) * n_kv * D;
    const float* vg = vf.data() + size_t(h / G) * n_kv * D;
    kernels::attention_probs(P.data(), q + size_t(t0) * HQ + size_t(h) * D, HQ, kg, D, nt, p0 + t0, n_vis, D, scale, window);
    kernels::attention_apply(P.data(), vg, D, out + size_t(t0) * HQ + size_t(h) * D, HQ, nt, n_vis, D);
  });
}

}  // namespace squish::infer
