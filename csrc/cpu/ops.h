// The CPU kernels of the rubricrl ops, as csrc/cpu/registration.cpp registers them.
// Schemas: csrc/rubricrl_defs.h. Inputs are validated by the Python API; the kernels
// re-check shapes cheaply (TORCH_CHECK) for C++ callers.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace rubricrl {
namespace cpu {

std::tuple<at::Tensor, at::Tensor, at::Tensor> token_logprobs_fwd(const at::Tensor& logits,
                                                                  const at::Tensor& targets, double temperature,
                                                                  bool with_entropy);
at::Tensor token_logprobs_bwd(const at::Tensor& grad_logprobs, const c10::optional<at::Tensor>& grad_entropy,
                              const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                              const at::Tensor& entropy, double temperature);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_logprobs_fwd(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& targets, double temperature, bool with_entropy, int64_t chunk_size);
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_logprobs_bwd(
    const at::Tensor& grad_logprobs, const c10::optional<at::Tensor>& grad_entropy, const at::Tensor& hidden,
    const at::Tensor& weight, const c10::optional<at::Tensor>& bias, const at::Tensor& targets,
    const at::Tensor& lse, const at::Tensor& entropy, double temperature, int64_t chunk_size);

// old_logprobs absent: on-policy; weights: per-token weights of the policy term. The
// sequence-level policy losses (gspo, gspo_token) are grpo_loss_fwd's only: linear_grpo_fwd
// raises for them.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> grpo_loss_fwd(
    const at::Tensor& logprobs, const c10::optional<at::Tensor>& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs, const c10::optional<at::Tensor>& entropy,
    const c10::optional<at::Tensor>& weights, c10::string_view policy_loss, double eps_low, double eps_high,
    c10::optional<double> clip_c, double tau_pos, double tau_neg, c10::string_view loss_agg, double kl_coef,
    c10::string_view kl_type, bool kl_bias_correction, double entropy_coef, c10::optional<double> agg_norm,
    c10::optional<int64_t> horizon);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_grpo_fwd(
    const at::Tensor& hidden, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const at::Tensor& targets, const c10::optional<at::Tensor>& old_logprobs, const at::Tensor& advantages,
    const at::Tensor& mask, const c10::optional<at::Tensor>& ref_logprobs, const c10::optional<at::Tensor>& weights,
    double temperature, c10::string_view policy_loss, double eps_low, double eps_high,
    c10::optional<double> clip_c, double tau_pos, double tau_neg, c10::string_view loss_agg, double kl_coef,
    c10::string_view kl_type, bool kl_bias_correction, double entropy_coef, c10::optional<double> agg_norm,
    c10::optional<int64_t> horizon, bool with_entropy, bool need_d_hidden, bool need_d_weight, bool need_d_bias,
    int64_t chunk_size);

at::Tensor group_advantages(const at::Tensor& scores, const at::Tensor& group_index, bool norm_by_std, double eps);

std::tuple<at::Tensor, at::Tensor, at::Tensor> rubric_scores_fwd(const at::Tensor& met, const at::Tensor& points,
                                                                 const at::Tensor& offsets, bool clip);
at::Tensor rubric_scores_bwd(const at::Tensor& coef, const at::Tensor& points, const at::Tensor& offsets);

std::tuple<at::Tensor, at::Tensor> verdict_probs_fwd(const at::Tensor& hidden, const at::Tensor& weight,
                                                     const c10::optional<at::Tensor>& bias, const at::Tensor& yes_ids,
                                                     const at::Tensor& no_ids, double temperature, bool with_mass,
                                                     int64_t chunk_size);

at::Tensor span_mean_prob_fwd(const at::Tensor& hidden, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const at::Tensor& targets,
                              const at::Tensor& span_index, int64_t num_spans, double temperature,
                              int64_t chunk_size);

}  // namespace cpu
}  // namespace rubricrl
