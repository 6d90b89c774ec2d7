// CPU kernel of rubricrl::group_advantages (docs/algorithms.md §2).
//
// A_i = (S_i - mean_g) / (std_g + eps) (unbiased std) or S_i - mean_g; groups of
// one and groups whose scores are all equal read 0. Groups are found by a
// stable sort of the ids (any values, any order); statistics are two-pass in
// double. The CUDA kernel (csrc/cuda/advantages.cu) registers for the same op
// when the extension is built with CUDA.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace rubricrl {
namespace cpu {
namespace {

template <typename T>
void group_advantages_impl(const T* s, const int64_t* gid, int64_t b, bool norm_by_std, double eps,
                           T* out) {
  std::vector<int64_t> order(b);
  std::iota(order.begin(), order.end(), int64_t(0));
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return gid[x] < gid[y]; });
  std::vector<int64_t> starts;
  for (int64_t k = 0; k < b; ++k)
    if (k == 0 || gid[order[k]] != gid[order[k - 1]]) starts.push_back(k);
  starts.push_back(b);
  const int64_t groups = int64_t(starts.size()) - 1;
  at::parallel_for(0, groups, 64, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t lo = starts[g], hi = starts[g + 1], n = hi - lo;
      double sum = 0.0, mn = double(s[order[lo]]), mx = mn;
      for (int64_t k = lo; k < hi; ++k) {
        const double v = double(s[order[k]]);
        sum += v;
        mn = std::min(mn, v);
        mx = std::max(mx, v);
      }
      if (n < 2 || mn == mx) {  // no baseline, or no signal
        for (int64_t k = lo; k < hi; ++k) out[order[k]] = T(0);
        continue;
      }
      const double mean = sum / double(n);
      double denom = 1.0;
      if (norm_by_std) {
        double ss = 0.0;
        for (int64_t k = lo; k < hi; ++k) {
          const double d = double(s[order[k]]) - mean;
          ss += d * d;
        }
        denom = std::sqrt(ss / double(n - 1)) + eps;
      }
      for (int64_t k = lo; k < hi; ++k) out[order[k]] = T((double(s[order[k]]) - mean) / denom);
    }
  });
}

}  // namespace

at::Tensor group_advantages(const at::Tensor& scores, const at::Tensor& group_index, bool norm_by_std,
                            double eps) {
  TORCH_CHECK(scores.dim() == 1 && group_index.dim() == 1 && scores.size(0) == group_index.size(0),
              "scores and group_index must both be [B]");
  const auto st = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor s = scores.to(st).contiguous();
  at::Tensor gid = group_index.to(at::kLong).contiguous();
  at::Tensor out = at::empty_like(s);
  if (st == at::kDouble) {
    group_advantages_impl<double>(s.data_ptr<double>(), gid.data_ptr<int64_t>(), s.size(0), norm_by_std,
                                  eps, out.data_ptr<double>());
  } else {
    group_advantages_impl<float>(s.data_ptr<float>(), gid.data_ptr<int64_t>(), s.size(0), norm_by_std,
                                 eps, out.data_ptr<float>());
  }
  return out;
}

}  // namespace cpu
}  // namespace rubricrl
