#include "linear_chunks.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "softmax_epilogue.h"

namespace rubricrl {
namespace cpu {

int64_t vocab_chunk_columns(int64_t n, int64_t vocab, int64_t chunk_size) {
  int64_t cols = chunk_size > 0 ? chunk_size : kDefaultVocabChunkElems / std::max<int64_t>(n, 1);
  cols = std::max<int64_t>(cols, kMinVocabChunkCols);
  return std::min(cols, vocab);
}

LinearOperands prepare_linear(const at::Tensor& hidden, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, int64_t chunk_size) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2, "hidden must be [N, H], weight [V, H]");
  TORCH_CHECK(hidden.size(1) == weight.size(1), "hidden and weight disagree on H");
  LinearOperands ops;
  ops.hidden = hidden.to(compute_type(hidden)).contiguous();
  ops.weight = weight.contiguous();
  if (bias.has_value() && bias->defined()) ops.bias = bias->contiguous();
  ops.chunk_cols = vocab_chunk_columns(hidden.size(0), weight.size(0), chunk_size);
  return ops;
}

void for_each_logits_chunk(
    const LinearOperands& ops,
    const std::function<void(int64_t, int64_t, at::Tensor&, const at::Tensor&)>& fn) {
  const int64_t n = ops.hidden.size(0);
  const int64_t vocab = ops.weight.size(0);
  const int64_t step = ops.chunk_cols;
  at::Tensor buffer = at::empty({n * step}, ops.hidden.options());
  for (int64_t v0 = 0; v0 < vocab; v0 += step) {
    const int64_t cols = std::min(step, vocab - v0);
    // A contiguous [n, cols] view of the front of the buffer (the last chunk is narrower).
    at::Tensor logits = buffer.narrow(0, 0, n * cols).view({n, cols});
    at::Tensor w = ops.weight.narrow(0, v0, cols).to(ops.hidden.scalar_type());
    if (ops.bias.defined()) {
      at::addmm_out(logits, ops.bias.narrow(0, v0, cols).to(ops.hidden.scalar_type()), ops.hidden, w.t());
    } else {
      at::mm_out(logits, ops.hidden, w.t());
    }
    fn(v0, cols, logits, w);
  }
}

void accumulate_linear_grads(const LinearOperands& ops, int64_t v0, int64_t cols,
                             const at::Tensor& dlogits, const at::Tensor& weight_chunk,
                             at::Tensor& d_hidden, at::Tensor& d_weight, at::Tensor& d_bias) {
  d_hidden.addmm_(dlogits, weight_chunk);
  at::Tensor dw_rows = d_weight.narrow(0, v0, cols);
  if (d_weight.scalar_type() == dlogits.scalar_type()) {
    at::mm_out(dw_rows, dlogits.t(), ops.hidden);  // rows of a contiguous [V, H]: contiguous
  } else {
    dw_rows.copy_(at::mm(dlogits.t(), ops.hidden));
  }
  if (d_bias.defined()) d_bias.narrow(0, v0, cols).copy_(dlogits.sum(0));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_lse_forward(const LinearOperands& ops,
                                                                  const at::Tensor& targets_in,
                                                                  double temperature) {
  const int64_t n = ops.hidden.size(0), vocab = ops.weight.size(0);
  at::Tensor targets = targets_in.contiguous();
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.dim() == 1 && targets.size(0) == n,
              "targets must be int64 [N] with N = ", n);
  auto opt = ops.hidden.options();
  return AT_DISPATCH_FLOATING_TYPES(ops.hidden.scalar_type(), "linear_lse_forward", [&] {
    using T = scalar_t;
    at::Tensor m = at::full({n}, -std::numeric_limits<T>::infinity(), opt);
    at::Tensor s = at::zeros({n}, opt), z_tgt = at::zeros({n}, opt);
    OnlineLseState<T> st{m.data_ptr<T>(), s.data_ptr<T>(), nullptr, z_tgt.data_ptr<T>()};
    const int64_t* tgt = targets.data_ptr<int64_t>();
    const T inv_t = T(1.0 / temperature);
    for_each_logits_chunk(ops, [&](int64_t v0, int64_t cols, at::Tensor& logits,
                                   const at::Tensor&) {
      lse_block_update<T>(logits.data_ptr<T>(), cols, n, cols, v0, tgt, inv_t, st);
    });
    at::Tensor log_s = at::empty({n}, opt), logprob = at::empty({n}, opt);
    T* ls = log_s.data_ptr<T>();
    T* lp = logprob.data_ptr<T>();
    for (int64_t r = 0; r < n; ++r) {
      ls[r] = std::log(st.s[r]);
      const bool valid = tgt[r] >= 0 && tgt[r] < vocab;
      // (z_t - m) - log s, not z_t - lse: keeps |z| ~ 1e4 from cancelling
      lp[r] = valid ? (st.z_tgt[r] - st.m[r]) - ls[r] : T(0);
    }
    return std::make_tuple(m, log_s, logprob);
  });
}

}  // namespace cpu
}  // namespace rubricrl
