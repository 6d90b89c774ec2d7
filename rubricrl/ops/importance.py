"""Importance correction between the behaviour policy and the proximal policy (docs/algorithms.md §1b).

An inference engine samples with its own numerics (and, in an asynchronous
pipeline, with older weights): its *behaviour* log-probs differ from the
*proximal* policy's (``old_logprobs``, the policy the PPO ratio is taken
against). The decoupled PPO loss weights each token's policy term by
``pi_prox / pi_behav``, truncated or masked so that rare tokens cannot dominate:

* ``token_truncate``: ``w_t = clamp(exp(old_t - behav_t), is_min, is_max)``;
* ``token_mask``: ``w_t = exp(old_t - behav_t)``, or 0 outside ``[is_min, is_max]``;
* ``sequence_truncate`` / ``sequence_mask``: the same with one ratio per response,
  ``exp(sum_t (old_t - behav_t))`` over its valid tokens.

The weights are constants of the loss (no gradient): the GRPO ops take them as
their per-token ``weights``. Computed with tensor ops only (no host sync).
"""

from __future__ import annotations

import torch

from .constants import IS_MODES, LOG_RATIO_CLAMP

__all__ = ["behaviour_weights", "IS_MODES"]


def check_is_options(mode: str, is_max: float | None, is_min: float | None) -> None:
    """Raises ValueError naming the option."""
    if mode not in IS_MODES:
        raise ValueError(f"is_mode must be one of {IS_MODES}, got {mode!r}")
    for name, value in (("is_max", is_max), ("is_min", is_min)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    if is_max is not None and is_min is not None and is_min > is_max:
        raise ValueError(f"is_min ({is_min}) must be <= is_max ({is_max})")
    if mode.endswith("truncate") and is_max is None and is_min is None:
        raise ValueError(f"is_mode={mode!r} needs is_max or is_min")


@torch.no_grad()
def behaviour_weights(
    old_logprobs: torch.Tensor,
    behaviour_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_truncate",
    is_max: float | None = 2.0,
    is_min: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token importance weights ``pi_prox / pi_behav`` of the decoupled PPO loss.

    Args:
        old_logprobs: ``[B, T]`` proximal-policy log-probs. behaviour_logprobs: ``[B, T]``
            log-probs the engine sampled with. mask: ``[B, T]`` 0/1; masked tokens are never read.
        mode: one of ``IS_MODES``; is_max / is_min: the band (None: unbounded on that side).

    Returns:
        ``(weights, stats)``: weights ``[B, T]`` (fp32, fp64 for fp64 inputs; 0 on masked
        tokens) and fp32 scalars ``is_weight_mean`` (mean raw ratio over valid tokens),
        ``is_clipped_frac`` (share of valid tokens whose weight was truncated or masked).
    """
    check_is_options(mode, is_max, is_min)
    dtype = torch.float64 if old_logprobs.dtype == torch.float64 else torch.float32
    valid = mask != 0
    zero = torch.zeros((), dtype=dtype, device=old_logprobs.device)
    diff = torch.where(valid, old_logprobs.to(dtype) - behaviour_logprobs.to(dtype), zero)
    if mode.startswith("sequence"):
        diff = diff.sum(1, keepdim=True).expand_as(diff)
    ratio = torch.exp(diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    lo = is_min if is_min is not None else 0.0
    hi = is_max if is_max is not None else float("inf")
    outside = (ratio < lo) | (ratio > hi)
    if mode.endswith("truncate"):
        weights = ratio.clamp(lo, hi)
    else:
        weights = torch.where(outside, zero, ratio)
    weights = torch.where(valid, weights, zero)
    n = valid.sum().clamp_min(1).to(dtype)
    stats = {
        "is_weight_mean": (torch.where(valid, ratio, zero).sum() / n).float(),
        "is_clipped_frac": ((outside & valid).sum().to(dtype) / n).float(),
    }
    return weights, stats
