// CPU kernels of rubricrl::token_logprobs(_backward) and rubricrl::fused_linear_logprobs(_backward).
//
// Contract (validated in Python, re-checked cheaply here): targets are int64
// [N]; a target outside [0, V) marks an ignored row (log-prob 0, entropy 0, no
// gradient). Outputs are fp32 [N] (fp64 for fp64 inputs, so gradcheck can run);
// gradients come back in the inputs' dtypes.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "ops.h"
#include "linear_chunks.h"
#include "softmax_epilogue.h"

namespace rubricrl {
namespace cpu {
namespace {

template <typename T>
struct LseBuffers {
  at::Tensor m, s, a, z_tgt;
  LseBuffers(int64_t n, bool with_entropy, const at::TensorOptions& opt) {
    m = at::full({n}, -std::numeric_limits<T>::infinity(), opt);
    s = at::zeros({n}, opt);
    a = with_entropy ? at::zeros({n}, opt) : at::Tensor();
    z_tgt = at::zeros({n}, opt);
  }
  OnlineLseState<T> state() {
    return {m.data_ptr<T>(), s.data_ptr<T>(), a.defined() ? a.data_ptr<T>() : nullptr,
            z_tgt.data_ptr<T>()};
  }
  // -> (logprobs, entropy, lse), each [N] in the compute dtype.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& targets, int64_t vocab) {
    const int64_t n = targets.size(0);
    at::Tensor lse = at::empty({n}, m.options()), logprob = at::empty({n}, m.options());
    at::Tensor entropy = at::zeros({n}, m.options());
    lse_finish<T>(n, vocab, targets.data_ptr<int64_t>(), state(), lse.data_ptr<T>(),
                  logprob.data_ptr<T>(), a.defined() ? entropy.data_ptr<T>() : nullptr);
    return {logprob, entropy, lse};
  }
};

// Upstream gradients in the compute dtype, zeroed on ignored rows so they get no gradient.
at::Tensor masked_grad(const at::Tensor& grad, const at::Tensor& targets, int64_t vocab,
                       at::ScalarType type) {
  at::Tensor valid = targets.ge(0).logical_and(targets.lt(vocab));
  return at::where(valid, grad.to(type), at::zeros({}, grad.options().dtype(type))).contiguous();
}

// The row-gradient epilogue on a [n, cols] block, with optional entropy gradient.
template <typename T>
void grad_block(at::Tensor& block, int64_t v0, const at::Tensor& targets, T inv_t,
                const at::Tensor& lse, const at::Tensor& entropy, const at::Tensor& g_lp,
                const at::Tensor& g_ent) {
  logprob_grad_block<T>(block.data_ptr<T>(), block.size(1), block.size(0), block.size(1), v0,
                        targets.data_ptr<int64_t>(), inv_t, lse.data_ptr<T>(),
                        entropy.data_ptr<T>(), g_lp.data_ptr<T>(),
                        g_ent.defined() ? g_ent.data_ptr<T>() : nullptr);
}

void check_targets(const at::Tensor& targets, int64_t n) {
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.dim() == 1 && targets.size(0) == n,
              "targets must be int64 [N] with N = ", n);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_logprobs_fwd(const at::Tensor& logits,
                                                                  const at::Tensor& targets_in,
                                                                  double temperature,
                                                                  bool with_entropy) {
  TORCH_CHECK(logits.dim() == 2, "logits must be [N, V]");
  const int64_t n = logits.size(0), vocab = logits.size(1);
  at::Tensor targets = targets_in.contiguous();
  check_targets(targets, n);
  at::Tensor x = logits.to(compute_type(logits)).contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "token_logprobs_fwd", [&] {
    LseBuffers<scalar_t> buf(n, with_entropy, x.options());
    lse_block_update<scalar_t>(x.data_ptr<scalar_t>(), vocab, n, vocab, 0,
                               targets.data_ptr<int64_t>(), scalar_t(1.0 / temperature),
                               buf.state());
    return buf.finish(targets, vocab);
  });
}

at::Tensor token_logprobs_bwd(const at::Tensor& grad_logprobs,
                              const c10::optional<at::Tensor>& grad_entropy,
                              const at::Tensor& logits, const at::Tensor& targets_in,
                              const at::Tensor& lse, const at::Tensor& entropy,
                              double temperature) {
  const int64_t n = logits.size(0), vocab = logits.size(1);
  at::Tensor targets = targets_in.contiguous();
  check_targets(targets, n);
  const at::ScalarType type = compute_type(logits);
  at::Tensor g_lp = masked_grad(grad_logprobs, targets, vocab, type);
  at::Tensor g_ent;
  if (grad_entropy.has_value() && grad_entropy->defined())
    g_ent = masked_grad(*grad_entropy, targets, vocab, type);
  // A fresh copy that the epilogue overwrites with d logits.
  at::Tensor dx = logits.to(type, /*non_blocking=*/false, /*copy=*/true).contiguous();
  at::Tensor lse_c = lse.to(type).contiguous(), ent_c = entropy.to(type).contiguous();
  AT_DISPATCH_FLOATING_TYPES(type, "token_logprobs_bwd", [&] {
    grad_block<scalar_t>(dx, 0, targets, scalar_t(1.0 / temperature), lse_c, ent_c, g_lp, g_ent);
  });
  return dx.to(logits.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_logprobs_fwd(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& targets_in, double temperature, bool with_entropy, int64_t chunk_size) {
  LinearOperands ops = prepare_linear(hidden, weight, bias, chunk_size);
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  at::Tensor targets = targets_in.contiguous();
  check_targets(targets, n);
  return AT_DISPATCH_FLOATING_TYPES(ops.hidden.scalar_type(), "linear_logprobs_fwd", [&] {
    LseBuffers<scalar_t> buf(n, with_entropy, ops.hidden.options());
    const scalar_t inv_t = scalar_t(1.0 / temperature);
    for_each_logits_chunk(ops, [&](int64_t v0, int64_t cols, at::Tensor& logits,
                                   const at::Tensor&) {
      lse_block_update<scalar_t>(logits.data_ptr<scalar_t>(), cols, n, cols, v0,
                                 targets.data_ptr<int64_t>(), inv_t, buf.state());
    });
    return buf.finish(targets, vocab);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_logprobs_bwd(
    const at::Tensor& grad_logprobs, const c10::optional<at::Tensor>& grad_entropy,
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& targets_in, const at::Tensor& lse, const at::Tensor& entropy,
    double temperature, int64_t chunk_size) {
  LinearOperands ops = prepare_linear(hidden, weight, bias, chunk_size);
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  at::Tensor targets = targets_in.contiguous();
  check_targets(targets, n);
  const at::ScalarType type = ops.hidden.scalar_type();
  at::Tensor g_lp = masked_grad(grad_logprobs, targets, vocab, type);
  at::Tensor g_ent;
  if (grad_entropy.has_value() && grad_entropy->defined())
    g_ent = masked_grad(*grad_entropy, targets, vocab, type);
  // Rows without upstream gradient (ignored tokens among them) get exact-zero d logits from
  // the epilogue, but d_weight = d_logits^T @ hidden would still add 0 * hidden, and
  // 0 * NaN = NaN would reach every row of d_weight: those rows of hidden become exact
  // zeros first (one [N, H] pass, only when there are such rows).
  at::Tensor silent = g_lp.eq(0);
  if (g_ent.defined()) silent.logical_and_(g_ent.eq(0));
  if (silent.any().item<bool>()) ops.hidden = ops.hidden.masked_fill(silent.unsqueeze(1), 0);
  at::Tensor lse_c = lse.to(type).contiguous(), ent_c = entropy.to(type).contiguous();
  at::Tensor d_hidden = at::zeros_like(ops.hidden);
  at::Tensor d_weight = at::empty_like(ops.weight);
  at::Tensor d_bias = ops.bias.defined() ? at::empty({vocab}, ops.hidden.options()) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(type, "linear_logprobs_bwd", [&] {
    const scalar_t inv_t = scalar_t(1.0 / temperature);
    for_each_logits_chunk(ops, [&](int64_t v0, int64_t cols, at::Tensor& logits,
                                   const at::Tensor& w) {
      grad_block<scalar_t>(logits, v0, targets, inv_t, lse_c, ent_c, g_lp, g_ent);
      accumulate_linear_grads(ops, v0, cols, logits, w, d_hidden, d_weight, d_bias);
    });
  });
  at::Tensor d_bias_out =
      d_bias.defined() ? d_bias.to(ops.bias.scalar_type()) : at::empty({0}, ops.hidden.options());
  return {d_hidden.to(hidden.scalar_type()), d_weight, d_bias_out};
}

}  // namespace cpu
}  // namespace rubricrl
