// Branch-free float math that GCC/Clang auto-vectorise under `#pragma omp simd`.
//
// Why not at::vec: an out-of-tree extension is compiled without ATen's per-file
// CPU_CAPABILITY macros, so at::vec::Vectorized<float> falls back to its scalar
// path there. Why not expf: glibc only exposes its SIMD expf under -ffast-math,
// which would also let the compiler drop the NaN propagation the ops promise.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

namespace rubricrl {
namespace vec_math {

// exp(x) with ~1 ulp error on [-87, 88] (Cephes-style range reduction and a
// degree-6 polynomial). Returns 0 below the fp32 normal range, +inf above it and
// NaN for NaN, so -inf logits (masked vocab) contribute exactly 0.
//
// One definition for a float (`F = float`, `I = int32_t`, vectorised by the
// compiler under `#pragma omp simd`) and for GCC/Clang vector types (`F` a
// `vector_size` float vector, `I` the int32 vector of the same lane count).
// always_inline: it must inline into the CPU-level clones of its callers (softmax_epilogue).
template <typename F, typename I>
__attribute__((always_inline)) inline F exp_approx(F x) {
  const F hi = F{} + 88.3762626647949f;
  const F lo = F{} + -87.3365447505531f;
  F xc = x > hi ? hi : x;
  xc = xc < lo ? lo : xc;
  // round-to-nearest by the 1.5 * 2^23 trick: floorf would not vectorise
  // without -fno-trapping-math, and |xc * log2e| < 2^22 keeps the trick exact.
  const float magic = 12582912.0f;
  const F fx = (xc * 1.44269504088896341f + magic) - magic;
  const F r = xc - fx * 0.693359375f - fx * -2.12194440e-4f;
  const F r2 = r * r;
  F y = F{} + 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r2 + r + 1.0f;
  // 2^fx through the exponent bits; a bit cast (not memcpy) keeps the loop free
  // of memory round-trips so it still vectorises.
  I k;
  if constexpr (std::is_same_v<F, float>) {
    k = static_cast<I>(fx);
  } else {
    k = __builtin_convertvector(fx, I);
  }
  F out = y * __builtin_bit_cast(F, (k + 127) << 23);
  out = x < lo ? F{} : out;
  out = x > hi ? F{} + INFINITY : out;
  return x != x ? x : out;  // NaN in, NaN out
}

static inline float fast_exp(float x) { return exp_approx<float, int32_t>(x); }

}  // namespace vec_math
}  // namespace rubricrl
