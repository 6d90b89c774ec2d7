"""The GRPO loss options: their one validation, shared by ``grpo_loss`` and ``fused_linear_grpo_loss``.

Callers above the ops (the trainer's config) validate their settings by calling
:func:`grpo_options` too, so a bad option gives the same one-line error
everywhere.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from ._checks import require_positive
from .constants import KL_TYPES, LOSS_AGG_MODES, POLICY_LOSSES, SEQUENCE_POLICY_LOSSES


class GrpoOptions(NamedTuple):
    """The scalar options of the loss, validated; passed as one value to the Python backends."""

    eps_low: float
    eps_high: float
    clip_c: float | None
    loss_agg: str
    kl_coef: float
    kl_type: str
    entropy_coef: float
    agg_norm: float | torch.Tensor | None
    horizon: int | None
    policy_loss: str = "vanilla"
    tau_pos: float = 1.0
    tau_neg: float = 1.05
    kl_bias_correction: bool = False

    @property
    def sequence_level(self) -> bool:
        """The policy term uses a response-level ratio (needs the whole response's log-probs)."""
        return self.policy_loss in SEQUENCE_POLICY_LOSSES


def _real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    return float(value)


def grpo_options(
    eps_low=0.2,
    eps_high=0.28,
    clip_c=None,
    loss_agg="token-mean",
    kl_coef=0.0,
    kl_type="k3",
    entropy_coef=0.0,
    agg_norm=None,
    horizon=None,
    policy_loss="vanilla",
    tau_pos=1.0,
    tau_neg=1.05,
    kl_bias_correction=False,
    *,
    has_ref: bool = True,
) -> GrpoOptions:
    """Validates the loss options (see :func:`rubricrl.ops.grpo_loss`); ``has_ref``: a reference
    policy is given (``kl_coef > 0`` needs one). Raises ValueError naming the option."""
    if policy_loss not in POLICY_LOSSES:
        raise ValueError(f"policy_loss must be one of {POLICY_LOSSES}, got {policy_loss!r}")
    eps_low, eps_high = _real("eps_low", eps_low), _real("eps_high", eps_high)
    # eps_low = 1 puts the lower clip bound at 0: no lower clip (CISPO as TRL runs it)
    if not 0.0 <= eps_low <= 1.0:
        raise ValueError(f"eps_low must be in [0, 1], got {eps_low}")
    if eps_high < 0.0:
        raise ValueError(f"eps_high must be >= 0, got {eps_high}")
    if clip_c is not None:
        clip_c = _real("clip_c", clip_c)
        if not clip_c > 1.0:
            raise ValueError(f"clip_c (dual clip) must be > 1, got {clip_c}")
        if policy_loss in ("cispo", "sapo"):
            raise ValueError(f"clip_c (dual clip) applies to the clipped PPO losses, not policy_loss={policy_loss!r}")
    tau_pos, tau_neg = _real("tau_pos", tau_pos), _real("tau_neg", tau_neg)
    for name, tau in (("tau_pos", tau_pos), ("tau_neg", tau_neg)):
        if not tau > 0.0:
            raise ValueError(f"{name} (SAPO gate temperature) must be > 0, got {tau}")
    if not isinstance(kl_bias_correction, bool):
        raise ValueError(f"kl_bias_correction must be a bool, got {kl_bias_correction!r}")
    if kl_bias_correction and policy_loss in ("gspo", "gspo_token"):
        raise ValueError(f"kl_bias_correction weights the KL by the token ratio; not with policy_loss={policy_loss!r}")
    if loss_agg not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg must be one of {LOSS_AGG_MODES}, got {loss_agg!r}")
    if kl_type not in KL_TYPES:
        raise ValueError(f"kl_type must be one of {KL_TYPES}, got {kl_type!r}")
    kl_coef, entropy_coef = _real("kl_coef", kl_coef), _real("entropy_coef", entropy_coef)
    if kl_coef < 0.0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    if kl_coef > 0.0 and not has_ref:
        raise ValueError(f"kl_coef={kl_coef} > 0 needs ref_logprobs")
    if agg_norm is not None:
        if isinstance(agg_norm, torch.Tensor):
            if agg_norm.numel() != 1:
                raise ValueError(f"agg_norm must be a scalar, got a tensor of shape {tuple(agg_norm.shape)}")
        else:
            agg_norm = _real("agg_norm", agg_norm)
            require_positive("agg_norm", agg_norm)
    if horizon is not None:
        if isinstance(horizon, bool) or not isinstance(horizon, numbers.Integral) or horizon <= 0:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}")
        horizon = int(horizon)
    return GrpoOptions(eps_low, eps_high, clip_c, loss_agg, kl_coef, kl_type, entropy_coef, agg_norm, horizon,
                       policy_loss, tau_pos, tau_neg, kl_bias_correction)
