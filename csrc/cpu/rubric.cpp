// CPU kernels of rubricrl::rubric_scores / rubric_scores_backward (docs/algorithms.md §3).
//
// Items are segmented by CSR offsets int64 [R+1]: response r owns the items
// [offsets[r], offsets[r+1]). Per response
//   num_r = sum_i p_i * met_i,  den_r = sum_i max(p_i, 0),  raw_r = num_r / den_r,
//   score_r = clip(raw_r, 0, 1) when clip, else raw_r;  NaN when den_r == 0.
// Inputs are validated in Python (offsets monotone from 0 to I, met in [0, 1]);
// here only the shapes are re-checked. Accumulation is fp32, outputs fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"

#include <algorithm>
#include <limits>

namespace rubricrl {
namespace cpu {
namespace {

// Responses per task: a segment is a handful of items, so batch many per task.
constexpr int64_t kSegmentGrain = 64;

void check_segments(const at::Tensor& points, const at::Tensor& offsets) {
  TORCH_CHECK(points.dim() == 1, "points must be [I]");
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.size(0) >= 1,
              "item_offsets must be int64 [R+1]");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> rubric_scores_fwd(const at::Tensor& met_in,
                                                                 const at::Tensor& points_in,
                                                                 const at::Tensor& offsets_in,
                                                                 bool clip) {
  check_segments(points_in, offsets_in);
  TORCH_CHECK(met_in.dim() == 1 && met_in.size(0) == points_in.size(0),
              "met and points must both be [I]");
  at::Tensor met = met_in.to(at::kFloat).contiguous();
  at::Tensor points = points_in.to(at::kFloat).contiguous();
  at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_responses = offsets.size(0) - 1;
  auto opt = points.options();
  at::Tensor scores = at::empty({num_responses}, opt);
  at::Tensor raw = at::empty({num_responses}, opt);
  at::Tensor den = at::empty({num_responses}, opt);
  const float* m = met.data_ptr<float>();
  const float* p = points.data_ptr<float>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  float* out = scores.data_ptr<float>();
  float* raw_out = raw.data_ptr<float>();
  float* den_out = den.data_ptr<float>();
  at::parallel_for(0, num_responses, kSegmentGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float num = 0.f, pos = 0.f;
      for (int64_t i = off[r]; i < off[r + 1]; ++i) {
        num += p[i] * m[i];
        pos += std::max(p[i], 0.f);
      }
      // No positive points: the score is undefined (docs/algorithms.md §3), not 0/0 by accident.
      const float x = pos > 0.f ? num / pos : std::numeric_limits<float>::quiet_NaN();
      raw_out[r] = x;
      den_out[r] = pos;
      // std::min/max would turn a NaN (from NaN points) into a bound; keep it NaN.
      out[r] = clip && x == x ? std::min(std::max(x, 0.f), 1.f) : x;
    }
  });
  return {scores, raw, den};
}

// d met_i = coef[r] * p_i for the response r owning item i, where the caller
// folds the upstream gradient, 1/den and the clip gate into coef [R].
at::Tensor rubric_scores_bwd(const at::Tensor& coef_in, const at::Tensor& points_in,
                             const at::Tensor& offsets_in) {
  check_segments(points_in, offsets_in);
  at::Tensor coef = coef_in.to(at::kFloat).contiguous();
  at::Tensor points = points_in.to(at::kFloat).contiguous();
  at::Tensor offsets = offsets_in.contiguous();
  const int64_t num_responses = offsets.size(0) - 1;
  TORCH_CHECK(coef.dim() == 1 && coef.size(0) == num_responses, "coef must be [R]");
  at::Tensor d_met = at::empty_like(points);
  const float* c = coef.data_ptr<float>();
  const float* p = points.data_ptr<float>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  float* d = d_met.data_ptr<float>();
  at::parallel_for(0, num_responses, kSegmentGrain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t i = off[r]; i < off[r + 1]; ++i) d[i] = c[r] * p[i];
  });
  return d_met;
}

}  // namespace cpu
}  // namespace rubricrl
