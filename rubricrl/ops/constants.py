"""The numeric constants and layouts shared by the Python, Triton and C++ kernels: their one definition.

C++ reads them from ``csrc/rubricrl_defs.h``, generated from this module (and
from :mod:`rubricrl.ops._schemas`) by ``python -m rubricrl.ops._codegen``;
``tests/test_op_registration.py`` fails when the committed header is not what
the generator writes. Triton kernels read them as ``tl.constexpr`` globals.
This module imports nothing, so the generator runs without torch.
"""

# The PPO log-ratio lp - old and the KL log-ratio ref - lp are clamped to +-LOG_RATIO_CLAMP
# before exp (exp(20) ~ 4.9e8 stays finite in fp32); the derivative is 0 outside the clamp.
LOG_RATIO_CLAMP = 20.0
# The k3 KL estimator exp(d) - d - 1 is capped at K3_MAX (derivative 0 where capped).
K3_MAX = 10.0

# Sums the GRPO kernels accumulate, in this order (C++: enum Sum, kSumLoss .. kNumSums).
GRPO_SUMS = ("loss", "clipped", "lower", "old_minus_lp", "kl", "entropy")
# The metrics vector every GRPO kernel returns, in this order (C++: enum Metric, kMetricClipfrac ..
# kNumMetrics): clipfrac, clipfrac_lower and approx_kl are means over valid tokens (sums
# "clipped", "lower", "old_minus_lp" divided by the valid-token count); entropy and kl are
# aggregated like the loss (sums "entropy" and "kl").
GRPO_METRICS = ("clipfrac", "clipfrac_lower", "approx_kl", "entropy", "kl")

# Loss options, by name; C++ parses the same strings (its enums follow these orders).
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum")
KL_TYPES = ("k1", "k2", "k3")
# Policy losses (docs/algorithms.md §1b). vanilla, cispo and sapo are token-local; gspo and
# gspo_token use a response-level ratio, so their per-token terms need the whole response's
# log-probs first (the fused linear loss runs them as log-probs + loss, one more GEMM).
POLICY_LOSSES = ("vanilla", "cispo", "sapo", "gspo", "gspo_token")
SEQUENCE_POLICY_LOSSES = ("gspo", "gspo_token")
# Importance correction between the behaviour policy (what the engine sampled with) and the
# proximal policy (old_logprobs): the weight per token or per response, truncated or masked.
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")

# Vocabulary-chunked ops (fused_linear_logprobs, verdict_probs' mass, span_mean_prob): fp32
# logits per chunk when the caller gives no vocab_chunk (8M = 32 MiB), and the fewest columns.
DEFAULT_VOCAB_CHUNK_ELEMS = 1 << 23
MIN_VOCAB_CHUNK_COLS = 64
# Token-chunked fused GRPO loss: fp32 logits per chunk of whole vocabulary rows when the caller
# gives no token_chunk: 320 MB, i.e. 512 rows at V = 151936 (fewer passes over d W than 256
# rows: 1.07x vs 1.13x the GEMM floor, still less peak memory than Liger); rows are rounded
# down to a multiple of TOKEN_CHUNK_ALIGN (the C++ epilogue's vector width).
DEFAULT_TOKEN_CHUNK_ELEMS = 80_000_000
TOKEN_CHUNK_ALIGN = 16
