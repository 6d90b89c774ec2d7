// CPU kernel of rubricrl::span_mean_prob (RLPR, docs/algorithms.md §4).
//
// The caller passes only the span positions: hidden [M, H] predicts the span
// tokens targets [M]; span_index [M] says which of num_spans spans each position
// belongs to. Per span s:  mean_{t in s} p(target_t) at temperature T
// (arithmetic mean of probabilities, not exp of the mean log-prob); NaN for a
// span with no tokens. The output projection runs only for those M rows,
// vocabulary chunk by chunk (linear_lse_forward), never [M, V] at once.
// Forward only: rewards need no gradient. Inputs are validated in Python.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "ops.h"
#include "linear_chunks.h"

namespace rubricrl {
namespace cpu {

at::Tensor span_mean_prob_fwd(const at::Tensor& hidden, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const at::Tensor& targets,
                              const at::Tensor& span_index_in, int64_t num_spans,
                              double temperature, int64_t chunk_size) {
  TORCH_CHECK(num_spans >= 0, "num_spans must be >= 0");
  // fp32 accumulation for every input dtype (these reward ops have no fp64 gradcheck path)
  LinearOperands ops = prepare_linear(hidden.to(at::kFloat), weight, bias, chunk_size);
  const int64_t m = ops.hidden.size(0);
  at::Tensor span_index = span_index_in.contiguous();
  TORCH_CHECK(span_index.scalar_type() == at::kLong && span_index.dim() == 1 &&
                  span_index.size(0) == m,
              "span_index must be int64 [M] with M = ", m);
  at::Tensor logprob = std::get<2>(linear_lse_forward(ops, targets, temperature));
  // M is small (the span tokens only): one serial pass for the segmented mean.
  std::vector<float> sum(num_spans, 0.f);
  std::vector<int64_t> count(num_spans, 0);
  const float* lp = logprob.data_ptr<float>();
  const int64_t* span = span_index.data_ptr<int64_t>();
  for (int64_t i = 0; i < m; ++i) {
    const int64_t s = span[i];
    TORCH_CHECK(s >= 0 && s < num_spans, "span_index[", i, "] = ", s, " is outside [0, ",
                num_spans, ")");
    sum[s] += std::exp(lp[i]);
    count[s] += 1;
  }
  at::Tensor out = at::empty({num_spans}, ops.hidden.options());
  float* o = out.data_ptr<float>();
  for (int64_t s = 0; s < num_spans; ++s)
    o[s] = count[s] > 0 ? sum[s] / float(count[s]) : std::nanf("");  // empty span: undefined
  return out;
}

}  // namespace cpu
}  // namespace rubricrl
