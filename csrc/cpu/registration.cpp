// Defines the rubricrl ops (one schema each, from csrc/rubricrl_defs.h) and registers
// their CPU kernels. Their fake kernels, autograd formulas and Triton CUDA kernels are
// registered by the Python module rubricrl.ops._library, which loading rubricrl._C
// imports (csrc/module.cpp); set_python_module names it in torch's error messages
// for C++-only processes (e.g. a trainer linking librubricrl_ops) that never import it.
#include <torch/library.h>

#include "ops.h"
#include "rubricrl_defs.h"

namespace rubricrl {
namespace cpu {
namespace {

// agg_norm is a scalar tensor in the schema (so a traced caller can pass a device value
// without a host sync); the CPU kernel reads it here, inside the kernel.
c10::optional<double> scalar_or_none(const c10::optional<at::Tensor>& t) {
  if (!t.has_value() || !t->defined()) return c10::nullopt;
  TORCH_CHECK(t->numel() == 1, "agg_norm must be a scalar, got ", t->numel(), " elements");
  return t->item<double>();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_loss(
    const at::Tensor& logprobs, const c10::optional<at::Tensor>& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs, const c10::optional<at::Tensor>& entropy,
    const c10::optional<at::Tensor>& weights, c10::string_view policy_loss, double eps_low, double eps_high,
    c10::optional<double> clip_c, double tau_pos, double tau_neg, c10::string_view loss_agg, double kl_coef,
    c10::string_view kl_type, bool kl_bias_correction, double entropy_coef, const c10::optional<at::Tensor>& agg_norm,
    c10::optional<int64_t> horizon) {
  return grpo_loss_fwd(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, policy_loss,
                       eps_low, eps_high, clip_c, tau_pos, tau_neg, loss_agg, kl_coef, kl_type, kl_bias_correction,
                       entropy_coef, scalar_or_none(agg_norm), horizon);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_linear_grpo_loss(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& targets, const c10::optional<at::Tensor>& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs, const c10::optional<at::Tensor>& weights,
    double temperature, c10::string_view policy_loss, double eps_low, double eps_high,
    c10::optional<double> clip_c, double tau_pos, double tau_neg, c10::string_view loss_agg, double kl_coef,
    c10::string_view kl_type, bool kl_bias_correction, double entropy_coef, const c10::optional<at::Tensor>& agg_norm,
    c10::optional<int64_t> horizon, bool with_entropy, bool need_d_hidden, bool need_d_weight, bool need_d_bias,
    int64_t token_chunk) {
  return linear_grpo_fwd(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs, weights,
                         temperature, policy_loss, eps_low, eps_high, clip_c, tau_pos, tau_neg, loss_agg, kl_coef,
                         kl_type, kl_bias_correction, entropy_coef, scalar_or_none(agg_norm), horizon, with_entropy,
                         need_d_hidden, need_d_weight, need_d_bias, token_chunk);
}

}  // namespace
}  // namespace cpu
}  // namespace rubricrl

TORCH_LIBRARY(rubricrl, m) {
  m.set_python_module("rubricrl.ops._library", "it registers the fake kernels and the autograd formulas");
  m.def(rubricrl::kSchemaTokenLogprobs);
  m.def(rubricrl::kSchemaTokenLogprobsBackward);
  m.def(rubricrl::kSchemaFusedLinearLogprobs);
  m.def(rubricrl::kSchemaFusedLinearLogprobsBackward);
  m.def(rubricrl::kSchemaGrpoLoss);
  m.def(rubricrl::kSchemaFusedLinearGrpoLoss);
  m.def(rubricrl::kSchemaGroupAdvantages);
  m.def(rubricrl::kSchemaRubricScores);
  m.def(rubricrl::kSchemaRubricScoresBackward);
  m.def(rubricrl::kSchemaVerdictProbs);
  m.def(rubricrl::kSchemaSpanMeanProb);
}

TORCH_LIBRARY_IMPL(rubricrl, CPU, m) {
  namespace k = rubricrl::cpu;
  m.impl("token_logprobs", &k::token_logprobs_fwd);
  m.impl("token_logprobs_backward", &k::token_logprobs_bwd);
  m.impl("fused_linear_logprobs", &k::linear_logprobs_fwd);
  m.impl("fused_linear_logprobs_backward", &k::linear_logprobs_bwd);
  m.impl("grpo_loss", &k::grpo_loss);
  m.impl("fused_linear_grpo_loss", &k::fused_linear_grpo_loss);
  m.impl("group_advantages", &k::group_advantages);
  m.impl("rubric_scores", &k::rubric_scores_fwd);
  m.impl("rubric_scores_backward", &k::rubric_scores_bwd);
  m.impl("verdict_probs", &k::verdict_probs_fwd);
  m.impl("span_mean_prob", &k::span_mean_prob_fwd);
}
