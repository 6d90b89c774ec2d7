// CPU kernel of rubricrl::verdict_probs (docs/algorithms.md §3, judge mode `logprob`).
//
// From the hidden state at the verdict position, only the output-projection
// rows of the verdict tokens are needed for p(met):
//   z = (hidden @ W[ids]^T + b[ids]) / T            [N, Ky + Kn], ids = yes ++ no
//   p_met = sum_{yes} e^z / sum_{yes ++ no} e^z
// With with_mass, the verdict mass sum_{yes ++ no} softmax(z)_y under the full
// vocabulary also needs the log-sum-exp over all V logits; that runs through
// the fused chunk loop (linear_lse_forward), never holding [N, V].
// Ids are validated in Python (in range, no overlap, no repeats).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "ops.h"
#include "linear_chunks.h"

namespace rubricrl {
namespace cpu {
namespace {

constexpr int64_t kRowGrain = 256;  // rows are only Ky + Kn wide

// One row of verdict logits x[0:k] (the first k_yes are the yes ids) -> p_met
// and the verdict log-sum-exp as m + log_s (see linear_lse_forward), at inverse
// temperature inv_t.
inline void verdict_row(const float* x, int64_t k, int64_t k_yes, float inv_t, float* p_met,
                        float* m, float* log_s) {
  float xmax = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < k; ++j) xmax = std::max(xmax, x[j]);
  // Scale the difference, not the logit: (x - xmax) is exact for nearby logits,
  // so |l| ~ 1e4 at T != 1 costs no precision in p_met.
  float s_yes = 0.f, s_no = 0.f;
  for (int64_t j = 0; j < k_yes; ++j) s_yes += std::exp((x[j] - xmax) * inv_t);
  for (int64_t j = k_yes; j < k; ++j) s_no += std::exp((x[j] - xmax) * inv_t);
  const float s_all = s_yes + s_no;  // >= s_yes term by term, so p_met <= 1 exactly
  *p_met = s_yes / s_all;
  // Same form of the offset as the chunked epilogue (max(x) * inv_t), so the
  // offsets cancel exactly in the mass when the verdict holds the top logit.
  *m = xmax * inv_t;
  *log_s = std::log(s_all);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> verdict_probs_fwd(const at::Tensor& hidden,
                                                     const at::Tensor& weight,
                                                     const c10::optional<at::Tensor>& bias,
                                                     const at::Tensor& yes_ids,
                                                     const at::Tensor& no_ids, double temperature,
                                                     bool with_mass, int64_t chunk_size) {
  TORCH_CHECK(yes_ids.scalar_type() == at::kLong && no_ids.scalar_type() == at::kLong &&
                  yes_ids.dim() == 1 && no_ids.dim() == 1,
              "yes_ids and no_ids must be int64 [Ky], [Kn]");
  // fp32 accumulation for every input dtype (these reward ops have no fp64 gradcheck path)
  LinearOperands ops = prepare_linear(hidden.to(at::kFloat), weight, bias, chunk_size);
  const int64_t n = ops.hidden.size(0);
  const int64_t k_yes = yes_ids.size(0);
  at::Tensor ids = at::cat({yes_ids, no_ids});
  const int64_t k = ids.size(0);
  // The tiny GEMM: only the verdict rows of the output projection.
  at::Tensor w_verdict = ops.weight.index_select(0, ids).to(at::kFloat);
  at::Tensor logits = ops.bias.defined()
                          ? at::addmm(ops.bias.index_select(0, ids).to(at::kFloat), ops.hidden,
                                      w_verdict.t())
                          : at::mm(ops.hidden, w_verdict.t());
  logits = logits.contiguous();
  auto opt = ops.hidden.options();
  at::Tensor p_met = at::empty({n}, opt), m_v = at::empty({n}, opt), log_s_v = at::empty({n}, opt);
  const float inv_t = float(1.0 / temperature);
  const float* x = logits.data_ptr<float>();
  float* p = p_met.data_ptr<float>();
  float* mv = m_v.data_ptr<float>();
  float* lsv = log_s_v.data_ptr<float>();
  at::parallel_for(0, n, kRowGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      verdict_row(x + r * k, k, k_yes, inv_t, p + r, mv + r, lsv + r);
  });
  if (!with_mass) return {p_met, at::empty({0}, opt)};
  at::Tensor no_target = at::full({n}, -1, ids.options());
  auto full = linear_lse_forward(ops, no_target, temperature);
  // exp(lse_verdict - lse_full) with both as m + log_s; the two sums come from
  // different GEMM orders, so clamp the rounding above 1 (NaN stays NaN).
  at::Tensor mass =
      at::exp((m_v - std::get<0>(full)) + (log_s_v - std::get<1>(full))).clamp_max(1.0);
  return {p_met, mass};
}

}  // namespace cpu
}  // namespace rubricrl
