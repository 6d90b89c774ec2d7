// Row-wise epilogues applied to a block of logits right after the GEMM that
// produced it, shared by every op that reads log-probabilities from logits
// (token log-probs, the fused linear ops, the GRPO loss, verdict mass).
//
// A block is `n` rows of `vc` logits of type T (float; double for gradcheck) with row stride `ld`, holding the
// vocabulary columns [v0, v0 + vc). Logits are raw (before the temperature);
// z = x / T is formed on the fly.
#pragma once

#include <cstdint>
#include <functional>

namespace rubricrl {
namespace cpu {

// Online log-sum-exp state of one row, merged across vocabulary blocks:
//   m = running max of z, s = sum exp(z - m), a = sum exp(z - m) * (z - m).
// Then lse = m + log(s) and the entropy is log(s) - a / s (kept relative to m
// so |z| ~ 1e4 loses no precision to cancellation).
template <typename T>
struct OnlineLseState {
  T* m;
  T* s;
  T* a;       // may be null when the entropy is not needed
  T* z_tgt;   // z of the target token, written by the block holding it
};

// Folds one logits block into the per-row states. Rows are split over the
// ATen intra-op thread pool.
template <typename T>
void lse_block_update(const T* x, int64_t ld, int64_t n, int64_t vc, int64_t v0,
                      const int64_t* targets, T inv_t, OnlineLseState<T> st);

// Allocation-free finish: lse, log p(target), entropy from the merged states.
// Rows whose target is outside [0, V) (ignore_index) get log-prob 0 and entropy 0.
template <typename T>
void lse_finish(int64_t n, int64_t vocab, const int64_t* targets, OnlineLseState<T> st,
                T* lse, T* logprob, T* entropy);

// Overwrites a logits block (in place) with d loss / d logits for
//   loss = sum_r g_lp[r] * logp_r(target) + g_ent[r] * H_r
// using the saved lse and entropy; g_ent may be null. Rows with both
// coefficients zero are zero-filled without touching exp().
template <typename T>
void logprob_grad_block(T* x, int64_t ld, int64_t n, int64_t vc, int64_t v0,
                        const int64_t* targets, T inv_t, const T* lse, const T* entropy,
                        const T* g_lp, const T* g_ent);

}  // namespace cpu
}  // namespace rubricrl

namespace rubricrl {
namespace cpu {

// d loss / d logprob and d loss / d entropy of one token (row of logits), from its
// log-prob and entropy: coef(row, logprob, entropy, g_lp, g_ent). Called once per
// token, in token order, on the calling thread.
using RowCoefFn = std::function<void(int64_t row, float logprob, float entropy, float& g_lp, float& g_ent)>;

// Whole-vocabulary chunks stored vocabulary-major (the token-chunked fused GRPO op): x is
// [vocab, ld], token j of the chunk in column j (n <= ld tokens; ld a multiple of 16; columns
// n..ld-1 are scratch and may be overwritten). Why this layout: GEMM 1 then runs as
// W h_c^T, which on MKL costs what a full-size GEMM does per FLOP (the row-major h_c W^T
// paid ~10% more at 512-token chunks, re-packing W per call), and the epilogue streams
// contiguous rows of the chunk's tokens, 16 tokens per vector.
//
// Per token: log-sum-exp, log-prob and entropy (sums over vocabulary parts of fixed size,
// merged in order: results depend on neither the thread count nor the chunk width), then
// coef(), called in token order. With with_grad, d loss / d logits is left as
//   d logits^T[v, j] = col_scale[j] * x[v, j] + col_onehot[j] * 1[v = target_j]
// for the caller's GEMMs to apply (a per-token scale of the GEMM's small operand and a
// rank-one correction): without an entropy gradient x is overwritten by exp((x - max_j) / T),
// so no second sweep over the chunk is needed; with one, by the dense part of the gradient
// (col_scale 1). Tokens with no gradient get col_scale = col_onehot = 0. Without with_grad
// x is left as it was. Vocabulary parts in parallel on the ATen pool.
void softmax_cols_fused(float* x, int64_t ld, int64_t n, int64_t vocab, const int64_t* targets,
                        float inv_t, bool with_entropy, bool with_grad, bool entropy_grad,
                        const RowCoefFn& coef, float* lse, float* logprob, float* entropy, float* col_scale,
                        float* col_onehot);

}  // namespace cpu
}  // namespace rubricrl
