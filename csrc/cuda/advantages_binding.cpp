// torch binding of the CUDA kernel of rubricrl::group_advantages (compiled only
// when the extension is built with CUDA; see setup.py). The op itself is
// defined in csrc/cpu/registration.cpp; this adds its CUDA kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <memory>

#include "advantages.cuh"

namespace rubricrl {
namespace cuda {

at::Tensor group_advantages_cuda(const at::Tensor& scores, const at::Tensor& group_index, bool norm_by_std,
                                 double eps) {
  TORCH_CHECK(scores.dim() == 1 && group_index.dim() == 1 && scores.size(0) == group_index.size(0),
              "scores and group_index must both be [B]");
  const c10::cuda::CUDAGuard guard(scores.device());
  const auto st = scores.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor s = scores.to(st).contiguous();
  at::Tensor out = at::empty_like(s);
  const int64_t b = s.size(0);
  if (b == 0) return out;
  // Sorted segments of equal ids, with no host sync (the number of groups stays on the device).
  at::Tensor gid = group_index.to(at::kLong).contiguous();
  auto sorted = at::sort(gid, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor& ids = std::get<0>(sorted);
  at::Tensor order = std::get<1>(sorted).contiguous();
  at::Tensor starts = at::ones({b}, gid.options().dtype(at::kLong));
  if (b > 1) starts.narrow(0, 1, b - 1).copy_(ids.narrow(0, 1, b - 1).ne(ids.narrow(0, 0, b - 1)));
  at::Tensor segment = starts.cumsum(0).sub_(1);
  at::Tensor counts = at::zeros({b}, gid.options()).index_add_(0, segment, at::ones_like(segment));
  at::Tensor offsets = counts.cumsum(0).sub_(counts).contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err;
  if (st == at::kDouble) {
    err = launch_group_advantages(s.data_ptr<double>(), order.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                                  counts.data_ptr<int64_t>(), b, norm_by_std, eps, out.data_ptr<double>(), stream);
  } else {
    err = launch_group_advantages(s.data_ptr<float>(), order.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
                                  counts.data_ptr<int64_t>(), b, norm_by_std, eps, out.data_ptr<float>(), stream);
  }
  C10_CUDA_CHECK(err);
  return out;
}

namespace {
// rubricrl.ops._backend looks for torch.ops.rubricrl.cuda_kernels_built to know that the
// extension has CUDA kernels. Its natural home is csrc/module.cpp; it is defined here only
// if no other CUDA source did so first, so several CUDA bindings can each carry it.
struct CudaKernelsMarker {
  std::unique_ptr<torch::Library> lib;
  CudaKernelsMarker() {
    if (!c10::Dispatcher::singleton().findSchema({"rubricrl::cuda_kernels_built", ""}).has_value()) {
      lib = std::make_unique<torch::Library>(torch::Library::FRAGMENT, "rubricrl", std::nullopt, __FILE__,
                                             __LINE__);
      lib->def("cuda_kernels_built() -> bool", [] { return true; });
    }
  }
};
const CudaKernelsMarker marker;
}  // namespace

}  // namespace cuda
}  // namespace rubricrl

TORCH_LIBRARY_IMPL(rubricrl, CUDA, m) { m.impl("group_advantages", &rubricrl::cuda::group_advantages_cuda); }
