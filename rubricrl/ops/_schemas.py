"""The schema of every ``torch.ops.rubricrl`` op: their one definition.

C++ defines the ops from ``csrc/rubricrl_defs.h`` (generated from this module by
``python -m rubricrl.ops._codegen``); without the extension,
:mod:`rubricrl.ops._library` defines them from here. Each public op has one
schema; ``*_backward`` ops are the analytic backward pieces its autograd calls.

Conventions: targets are int64 with ignored positions outside ``[0, V)`` (the
Python API maps ``ignore_index`` to -1); ``vocab_chunk`` / ``token_chunk`` 0
means the default budget (:mod:`rubricrl.ops.constants`). In the GRPO ops an absent
``old_logprobs`` means on-policy (the ratio is 1 at the current log-probs, detached) and
``weights`` multiplies each token's policy term. ``fused_linear_grpo_loss`` takes the
token-local policy losses only; the Python API runs the response-level ones
(``SEQUENCE_POLICY_LOSSES``) as ``fused_linear_logprobs`` + ``grpo_loss``.
"""

SCHEMAS = {
    "token_logprobs": (
        "token_logprobs(Tensor logits, Tensor targets, float temperature, bool with_entropy)"
        " -> (Tensor logprobs, Tensor entropy, Tensor lse)"
    ),
    "token_logprobs_backward": (
        "token_logprobs_backward(Tensor grad_logprobs, Tensor? grad_entropy, Tensor logits, Tensor targets,"
        " Tensor lse, Tensor entropy, float temperature) -> Tensor"
    ),
    "fused_linear_logprobs": (
        "fused_linear_logprobs(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, float temperature,"
        " bool with_entropy, int vocab_chunk) -> (Tensor logprobs, Tensor entropy, Tensor lse)"
    ),
    "fused_linear_logprobs_backward": (
        "fused_linear_logprobs_backward(Tensor grad_logprobs, Tensor? grad_entropy, Tensor hidden, Tensor weight,"
        " Tensor? bias, Tensor targets, Tensor lse, Tensor entropy, float temperature, int vocab_chunk)"
        " -> (Tensor d_hidden, Tensor d_weight, Tensor d_bias)"
    ),
    "grpo_loss": (
        "grpo_loss(Tensor logprobs, Tensor? old_logprobs, Tensor advantages, Tensor mask, Tensor? ref_logprobs,"
        " Tensor? entropy, Tensor? weights, str policy_loss, float eps_low, float eps_high, float? clip_c,"
        " float tau_pos, float tau_neg, str loss_agg, float kl_coef, str kl_type, bool kl_bias_correction,"
        " float entropy_coef, Tensor? agg_norm, int? horizon)"
        " -> (Tensor loss, Tensor grad_logprobs, Tensor grad_entropy, Tensor metrics)"
    ),
    "fused_linear_grpo_loss": (
        "fused_linear_grpo_loss(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor? old_logprobs,"
        " Tensor advantages, Tensor mask, Tensor? ref_logprobs, Tensor? weights, float temperature,"
        " str policy_loss, float eps_low, float eps_high, float? clip_c, float tau_pos, float tau_neg,"
        " str loss_agg, float kl_coef, str kl_type, bool kl_bias_correction, float entropy_coef,"
        " Tensor? agg_norm, int? horizon, bool with_entropy, bool need_d_hidden, bool need_d_weight,"
        " bool need_d_bias, int token_chunk)"
        " -> (Tensor loss, Tensor metrics, Tensor d_hidden, Tensor d_weight, Tensor d_bias)"
    ),
    "group_advantages": "group_advantages(Tensor scores, Tensor group_index, bool norm_by_std, float eps) -> Tensor",
    "rubric_scores": (
        "rubric_scores(Tensor met, Tensor points, Tensor item_offsets, bool clip)"
        " -> (Tensor scores, Tensor raw, Tensor den)"
    ),
    "rubric_scores_backward": "rubric_scores_backward(Tensor coef, Tensor points, Tensor item_offsets) -> Tensor",
    "verdict_probs": (
        "verdict_probs(Tensor hidden, Tensor weight, Tensor? bias, Tensor yes_ids, Tensor no_ids,"
        " float temperature, bool with_mass, int vocab_chunk) -> (Tensor p_met, Tensor mass)"
    ),
    "span_mean_prob": (
        "span_mean_prob(Tensor hidden, Tensor weight, Tensor? bias, Tensor targets, Tensor span_index,"
        " int num_spans, float temperature, int vocab_chunk) -> Tensor"
    ),
}
