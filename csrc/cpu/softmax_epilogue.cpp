#include "softmax_epilogue.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <c10/util/Exception.h>

#include "vec_math.h"

namespace rubricrl {
namespace cpu {

// fp32 rows use the vectorisable polynomial; fp64 (gradcheck) keeps libm's exp.
inline float row_exp(float x) { return vec_math::fast_exp(x); }
inline double row_exp(double x) { return std::exp(x); }

namespace {

// Rows per task: enough work per task to amortise scheduling, few enough that
// two threads split a 2048-row block evenly.
constexpr int64_t kRowGrain = 4;

inline bool in_block(int64_t t, int64_t v0, int64_t vc) { return t >= v0 && t < v0 + vc; }
}  // namespace

template <typename T>
void lse_block_update(const T* x, int64_t ld, int64_t n, int64_t vc, int64_t v0,
                      const int64_t* targets, T inv_t, OnlineLseState<T> st) {
  const T kNegInf = -std::numeric_limits<T>::infinity();
  const bool with_entropy = st.a != nullptr;
  at::parallel_for(0, n, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = x + r * ld;
      T xmax = kNegInf;
#pragma omp simd reduction(max : xmax)
      for (int64_t j = 0; j < vc; ++j) xmax = std::max(xmax, row[j]);
      // inv_t > 0, so the max commutes with the scaling. Differences are taken
      // before scaling, (x - xmax) * inv_t: exact 0 at the max (x * inv_t - zmax
      // would be contracted to an FMA and leave the product's rounding error,
      // making s < 1 and p > 1), and no cancellation at |x| ~ 1e4.
      const T zmax = xmax * inv_t;
      // A block of -inf logits only (a masked vocabulary tail) subtracts 0: its exps are then
      // exact zeros rather than NaN from -inf - -inf, and -inf logits add 0 to the entropy sum.
      const T shift = xmax == kNegInf ? T(0) : xmax;
      T s_blk = T(0), a_blk = T(0);
      if (with_entropy) {
#pragma omp simd reduction(+ : s_blk, a_blk)
        for (int64_t j = 0; j < vc; ++j) {
          const T d = (row[j] - shift) * inv_t;
          const T e = row_exp(d);
          s_blk += e;
          a_blk += e != T(0) ? e * d : T(0);
        }
      } else {
#pragma omp simd reduction(+ : s_blk)
        for (int64_t j = 0; j < vc; ++j) s_blk += row_exp((row[j] - shift) * inv_t);
      }
      // Merge with the running state (first block: m = -inf, s = a = 0).
      const T m_old = st.m[r];
      const T m_new = std::max(m_old, zmax);
      const T f_old = m_old == kNegInf ? T(0) : std::exp(m_old - m_new);
      const T f_blk = zmax == kNegInf ? T(0) : std::exp(zmax - m_new);
      if (with_entropy) {
        const T a_old = m_old == kNegInf ? T(0) : st.a[r] + st.s[r] * (m_old - m_new);
        st.a[r] = f_old * a_old + (zmax == kNegInf ? T(0) : f_blk * (a_blk + s_blk * (zmax - m_new)));
      }
      st.s[r] = f_old * st.s[r] + f_blk * s_blk;
      // NaN logits: std::max dropped them from zmax but s_blk is NaN, and the
      // NaN must survive into m so this row (and only this row) reads NaN.
      st.m[r] = std::isnan(s_blk) ? s_blk : m_new;
      const int64_t t = targets[r];
      if (in_block(t, v0, vc)) st.z_tgt[r] = row[t - v0] * inv_t;
    }
  });
}

template <typename T>
void lse_finish(int64_t n, int64_t vocab, const int64_t* targets, OnlineLseState<T> st,
                T* lse, T* logprob, T* entropy) {
  for (int64_t r = 0; r < n; ++r) {
    const T log_s = std::log(st.s[r]);
    lse[r] = st.m[r] + log_s;
    const bool valid = targets[r] >= 0 && targets[r] < vocab;
    logprob[r] = valid ? st.z_tgt[r] - lse[r] : T(0);
    if (entropy != nullptr) entropy[r] = valid ? log_s - st.a[r] / st.s[r] : T(0);
  }
}

template <typename T>
void logprob_grad_block(T* x, int64_t ld, int64_t n, int64_t vc, int64_t v0,
                        const int64_t* targets, T inv_t, const T* lse, const T* entropy,
                        const T* g_lp, const T* g_ent) {
  at::parallel_for(0, n, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      T* row = x + r * ld;
      const T gl = g_lp[r];
      const T ge = g_ent != nullptr ? g_ent[r] : T(0);
      if (gl == T(0) && ge == T(0)) {
        std::fill(row, row + vc, T(0));
        continue;
      }
      const T l = lse[r];
      // d logp(t)/dz_j = 1[j=t] - p_j ;  dH/dz_j = -p_j (z_j - lse + H)
      const T shift = ge != T(0) ? entropy[r] - l : T(0);
      // A local copy: inv_t is captured by reference, and the stores to row[]
      // could alias it as far as the compiler knows, which blocks vectorisation.
      const T it = inv_t;
#pragma omp simd
      for (int64_t j = 0; j < vc; ++j) {
        const T z = row[j] * it;
        const T p = row_exp(z - l);
        row[j] = p != T(0) ? -p * (gl + ge * (z + shift)) * it : T(0);  // z = -inf: 0, not 0 * inf
      }
      const int64_t t = targets[r];
      if (in_block(t, v0, vc)) row[t - v0] += gl * inv_t;
    }
  });
}

// ---- whole-vocabulary epilogue of vocabulary-major chunks, on explicit vectors ----
//
// Explicit GCC/Clang vector types over 16 tokens of a chunk (one AVX-512
// register, two AVX2 registers, plain SSE elsewhere): sweeps of contiguous
// chunk rows compute max, sums, loss coefficients and d logits. The exp is
// vec_math::exp_approx, shared with the loops above.
namespace {

constexpr int kLanes = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

__attribute__((always_inline)) inline vfloat vsplat(float v) { return vfloat{} + v; }
__attribute__((always_inline)) inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void vstore(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
// vec_math::exp_approx lane-wise: the same range reduction and polynomial.
__attribute__((always_inline)) inline vfloat vexp(vfloat x) { return vec_math::exp_approx<vfloat, vint>(x); }

}  // namespace

namespace {

// Vocabulary rows per task of the column epilogue: a fixed count, so the sums (and the
// bits of every result) depend on neither the thread count nor the chunk width.
constexpr int64_t kColRows = 256;

// Lanes [k, k + kLanes) of a per-token array.
__attribute__((always_inline)) inline vfloat lanes(const float* p, int64_t k) { return vload(p + k); }

}  // namespace

// The sweeps over vocabulary rows [v0, v1) of a chunk, one task's work each. They are
// compiled for several x86-64 levels and picked at load time (GCC function
// multi-versioning: an ifunc resolver reads the CPU), so a portable build (no
// -march=native) still runs them on AVX-512 or AVX2 where the CPU has it: on the
// benchmark's CPU the portable SSE build of these loops cost ~1 s of a ~6 s step.
// They take raw pointers only, no lambdas or library templates, so each clone holds
// the whole loop: the vector helpers are always_inline, since a call to a helper
// compiled for the default target would pass 64-byte vectors through memory.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(RUBRICRL_NO_CPU_CLONES)
#define RUBRICRL_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RUBRICRL_CPU_CLONES
#endif

namespace cols {

// pm[k] = max over the rows of x[v, k] (pm pre-filled by the caller).
RUBRICRL_CPU_CLONES void sweep_max(const float* x, int64_t ld, int64_t v0, int64_t v1, int64_t nl, float* pm) {
  for (int64_t v = v0; v < v1; ++v)
    for (int64_t k = 0; k < nl; k += kLanes) {
      const vfloat xv = vload(x + v * ld + k), m = lanes(pm, k);
      vstore(pm + k, xv > m ? xv : m);  // NaN is dropped here but poisons the sums below
    }
}

// ps += exp(d), pa += exp(d) d (pa may be null), d = (x - xmax) / T; x = exp(d) if keep_exp.
RUBRICRL_CPU_CLONES void sweep_sum(float* x, int64_t ld, int64_t v0, int64_t v1, int64_t nl, const float* xmax,
                                   float inv_t, float* ps, float* pa, bool keep_exp) {
  for (int64_t v = v0; v < v1; ++v)
    for (int64_t k = 0; k < nl; k += kLanes) {
      float* px = x + v * ld + k;
      const vfloat d = (vload(px) - lanes(xmax, k)) * inv_t;
      const vfloat e = vexp(d);
      vstore(ps + k, lanes(ps, k) + e);
      if (pa != nullptr) vstore(pa + k, lanes(pa, k) + (((d == d) & (e != 0.f)) ? e * d : vsplat(0.f)));
      if (keep_exp) vstore(px, e);
    }
}

// x = the dense part of d logits: -p (gl + ge (z + shift)) / T, 0 where nothing flows.
RUBRICRL_CPU_CLONES void sweep_grad(float* x, int64_t ld, int64_t v0, int64_t v1, int64_t nl, const float* g_lp,
                                    const float* g_ent, const float* lse, const float* shift, float inv_t) {
  for (int64_t v = v0; v < v1; ++v)
    for (int64_t k = 0; k < nl; k += kLanes) {
      float* px = x + v * ld + k;
      const vfloat gl = lanes(g_lp, k), ge = lanes(g_ent, k);
      const vfloat z = vload(px) * inv_t;
      const vfloat pr = vexp(z - lanes(lse, k));
      const vfloat g = -pr * (gl + ge * (z + lanes(shift, k))) * inv_t;
      vstore(px, ((gl == 0.f) & (ge == 0.f)) | (pr == 0.f) ? vsplat(0.f) : g);  // z = -inf: 0, not 0 * inf
    }
}

}  // namespace cols

void softmax_cols_fused(float* x, int64_t ld, int64_t n, int64_t vocab, const int64_t* targets,
                        float inv_t, bool with_entropy, bool with_grad, bool entropy_grad,
                        const RowCoefFn& coef, float* lse, float* logprob, float* entropy, float* col_scale,
                        float* col_onehot) {
  TORCH_CHECK(ld % kLanes == 0 && ld >= n, "softmax_cols_fused: ld must be a multiple of ", kLanes, " and >= n");
  const int64_t nl = (n + kLanes - 1) / kLanes * kLanes;  // lanes swept: whole vectors
  const int64_t parts = (vocab + kColRows - 1) / kColRows;
  const bool keep_exp = with_grad && !entropy_grad;
  std::vector<float> z_tgt(nl, 0.f);
  for (int64_t j = 0; j < n; ++j)
    if (targets[j] >= 0 && targets[j] < vocab) z_tgt[j] = x[targets[j] * ld + j] * inv_t;

  // Sweep 1: the max logit of each token. Rows of the chunk are contiguous: each part
  // streams its rows with the per-token state (ld floats) in L1.
  std::vector<float> part_max(parts * nl);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* pm = part_max.data() + p * nl;
      std::fill(pm, pm + nl, kNegInf);
      cols::sweep_max(x, ld, p * kColRows, std::min(vocab, (p + 1) * kColRows), nl, pm);
    }
  });
  // A token whose logits are all -inf subtracts 0 instead: exps are then exact zeros.
  std::vector<float> xmax(nl, kNegInf);
  for (int64_t p = 0; p < parts; ++p)
    for (int64_t k = 0; k < nl; k += kLanes) {
      const vfloat a = lanes(part_max.data() + p * nl, k), m = lanes(xmax.data(), k);
      vstore(xmax.data() + k, a > m ? a : m);
    }
  for (int64_t k = 0; k < nl; k += kLanes) {
    const vfloat m = lanes(xmax.data(), k);
    vstore(xmax.data() + k, m == kNegInf ? vsplat(0.f) : m);
  }

  // Sweep 2: per part, sum exp(d) and sum exp(d) d with d = (x - max) / T (the difference
  // before scaling: exact 0 at the max, no cancellation at |x| ~ 1e4); exp(d) replaces the
  // logit when the gradient is a per-token multiple of it.
  std::vector<float> part_s(parts * nl), part_a(with_entropy ? parts * nl : 0);
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      float* ps = part_s.data() + p * nl;
      float* pa = with_entropy ? part_a.data() + p * nl : nullptr;
      std::fill(ps, ps + nl, 0.f);
      if (pa != nullptr) std::fill(pa, pa + nl, 0.f);
      cols::sweep_sum(x, ld, p * kColRows, std::min(vocab, (p + 1) * kColRows), nl, xmax.data(), inv_t, ps, pa,
                      keep_exp);
    }
  });
  std::vector<float> sum_s(nl, 0.f), sum_a(nl, 0.f);
  for (int64_t p = 0; p < parts; ++p)  // in part order: deterministic
    for (int64_t k = 0; k < nl; k += kLanes) {
      vstore(sum_s.data() + k, lanes(sum_s.data(), k) + lanes(part_s.data() + p * nl, k));
      if (with_entropy) vstore(sum_a.data() + k, lanes(sum_a.data(), k) + lanes(part_a.data() + p * nl, k));
    }

  // Per token: lse, log-prob, entropy, then the loss coefficients, in token order.
  std::vector<float> g_lp(nl, 0.f), g_ent(nl, 0.f), lse_l(nl, 0.f), shift(nl, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const bool valid = targets[j] >= 0 && targets[j] < vocab;
    const float log_s = std::log(sum_s[j]);
    const float l = xmax[j] * inv_t + log_s;
    const float lp = valid ? z_tgt[j] - l : 0.f;
    const float ent = (valid && with_entropy) ? log_s - sum_a[j] / sum_s[j] : 0.f;
    lse[j] = lse_l[j] = l;
    logprob[j] = lp;
    if (entropy != nullptr) entropy[j] = ent;
    float gl = 0.f, ge = 0.f;
    coef(j, lp, ent, gl, ge);
    if (!valid) gl = ge = 0.f;
    g_lp[j] = gl;
    g_ent[j] = ge;
    shift[j] = ent - l;
    if (with_grad) {
      // d loss / d z_v = gl (1[v = t] - p_v) - ge p_v (z_v - lse + H), times 1/T for the logits
      col_onehot[j] = gl * inv_t;
      col_scale[j] = keep_exp ? (gl != 0.f ? -gl * inv_t / sum_s[j] : 0.f) : (gl != 0.f || ge != 0.f ? 1.f : 0.f);
    }
  }
  if (!with_grad || keep_exp) return;

  // With an entropy gradient the logits become the dense part of d logits in one more sweep.
  at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      cols::sweep_grad(x, ld, p * kColRows, std::min(vocab, (p + 1) * kColRows), nl, g_lp.data(), g_ent.data(),
                       lse_l.data(), shift.data(), inv_t);
  });
}

#define RUBRICRL_INSTANTIATE(T)                                                              \
  template void lse_block_update<T>(const T*, int64_t, int64_t, int64_t, int64_t,            \
                                    const int64_t*, T, OnlineLseState<T>);                   \
  template void lse_finish<T>(int64_t, int64_t, const int64_t*, OnlineLseState<T>, T*, T*, T*); \
  template void logprob_grad_block<T>(T*, int64_t, int64_t, int64_t, int64_t, const int64_t*, \
                                      T, const T*, const T*, const T*, const T*);
RUBRICRL_INSTANTIATE(float)
RUBRICRL_INSTANTIATE(double)
#undef RUBRICRL_INSTANTIATE

}  // namespace cpu
}  // namespace rubricrl
