// The vocabulary-chunked GEMM loop shared by the fused linear ops.
//
// Chunking runs over the vocabulary, not over tokens: each chunk's d_weight
// rows are then written exactly once (no [V, H] read-modify-write per token
// block) and only the small d_hidden [N, H] accumulates across chunks.
#pragma once

#include <ATen/ATen.h>

#include <functional>

#include "rubricrl_defs.h"

namespace rubricrl {
namespace cpu {

// Vocabulary columns per chunk: the caller's chunk_size if > 0, else what fits
// the default budget (kDefaultVocabChunkElems) for n rows, at least kMinVocabChunkCols and at most vocab.
int64_t vocab_chunk_columns(int64_t n, int64_t vocab, int64_t chunk_size);

// Accumulation dtype of every op: fp32, or fp64 when the inputs are fp64 (gradcheck).
inline at::ScalarType compute_type(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// hidden/weight/bias as the operands of the chunk GEMMs.
struct LinearOperands {
  at::Tensor hidden;  // [N, H] compute dtype, contiguous
  at::Tensor weight;  // [V, H] original dtype, contiguous
  at::Tensor bias;    // [V] original dtype or undefined
  int64_t chunk_cols;
};

LinearOperands prepare_linear(const at::Tensor& hidden, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, int64_t chunk_size);

// Calls fn(v0, cols, logits [N, cols] contiguous, weight_chunk [cols, H]), both in the compute dtype,
// for each vocabulary chunk, reusing one logits buffer.
void for_each_logits_chunk(
    const LinearOperands& ops,
    const std::function<void(int64_t, int64_t, at::Tensor&, const at::Tensor&)>& fn);

// Backward GEMMs for one chunk given d logits [N, cols] (compute dtype):
// d_hidden += dl @ W_c, d_weight[v0:v0+cols] = dl^T @ hidden, d_bias = colsum(dl).
void accumulate_linear_grads(const LinearOperands& ops, int64_t v0, int64_t cols,
                             const at::Tensor& dlogits, const at::Tensor& weight_chunk,
                             at::Tensor& d_hidden, at::Tensor& d_weight, at::Tensor& d_bias);

// Forward only (no gradient state), for reward ops: for each row of
// z = (hidden @ W^T + b) / T, the log-sum-exp over the whole vocabulary and
// log p(targets[r]), through the same chunk loop and online log-sum-exp
// epilogue as the fused log-prob ops. targets: int64 [N]; a value outside
// [0, V) means "no target" (log-prob 0), e.g. all -1 for the normaliser only.
// Returns (m, log_s, logprob), fp32 [N], with lse = m + log_s kept as two
// numbers: at |z| ~ 1e4 one fp32 lse is only good to ~5e-4, while z - m is
// exact for nearby logits, so logprob = (z_t - m) - log_s and ratios of
// normalisers keep full relative precision.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_lse_forward(const LinearOperands& ops,
                                                                  const at::Tensor& targets,
                                                                  double temperature);

}  // namespace cpu
}  // namespace rubricrl
