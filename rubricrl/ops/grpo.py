"""Clipped token-level GRPO loss (docs/algorithms.md §1), on log-probs or fused with the output projection.

``grpo_loss`` takes per-token log-probs (e.g. from :func:`fused_linear_logprobs`);
``fused_linear_grpo_loss`` goes from hidden states and the lm_head weight to the
loss without ever holding ``[N, V]`` logits, with the whole backward (d hidden,
d weight, d bias) done inside the forward's chunk loop.

Why the backward fits in the forward: the loss is a sum of per-token terms, each
a function of that token's log-prob (and entropy), weighted by an aggregation
weight that depends only on the mask. So ``dloss/dlp`` of a token is known as
soon as its log-prob is, and the logits block that produced it can be turned
into d logits on the spot: 3 GEMMs in all (logits, d hidden, d weight) instead
of the 4 of a recompute-in-backward scheme. The autograd backward then only
scales the stored gradients by the upstream gradient.

Conventions shared by every backend (see docs/grpo.md):

* a token is *valid* where ``mask == 1``; masked tokens are ignored entirely
  (their log-probs may be anything, even NaN; their targets are never read);
* per-token loss ``x = pg + kl_coef * kl - entropy_coef * entropy`` and
  ``loss = sum(w * x)`` with the aggregation weight ``w`` of ``loss_agg``;
* metrics (fp32 scalar tensors, no host sync): ``clipfrac``, ``clipfrac_lower``,
  ``approx_kl`` are means over valid tokens; ``kl`` and ``entropy`` are
  aggregated like the loss (as verl's ``kl_loss`` and ``entropy_loss``).
"""

from __future__ import annotations

import torch

from . import _backend
from ._checks import (
    check_index_range,
    check_output_projection,
    chunk_option,
    compiling,
    require_floating,
    require_integer,
    require_positive,
    same_device,
)
from ._library import call
from ._options import GrpoOptions, grpo_options
from .constants import GRPO_METRICS, IS_MODES, KL_TYPES, LOSS_AGG_MODES, POLICY_LOSSES
from .importance import behaviour_weights, check_is_options
from .logprobs import fused_linear_logprobs

METRIC_NAMES = GRPO_METRICS  # order of the ops' metrics tensor (rubricrl.ops.constants)
__all__ = ["grpo_loss", "fused_linear_grpo_loss", "GrpoOptions", "LOSS_AGG_MODES", "KL_TYPES", "POLICY_LOSSES",
           "IS_MODES", "METRIC_NAMES"]


def _agg_norm_tensor(agg_norm: float | torch.Tensor | None) -> torch.Tensor | None:
    """agg_norm as the ops take it: a scalar tensor (a traced caller's device value needs no host read)."""
    if agg_norm is None or isinstance(agg_norm, torch.Tensor):
        return agg_norm.reshape(()) if agg_norm is not None else None
    return torch.tensor(float(agg_norm), dtype=torch.float64)


def _option_args(opts: GrpoOptions) -> tuple:
    """The options in the ops' schema order (policy_loss .. horizon)."""
    return (opts.policy_loss, opts.eps_low, opts.eps_high, opts.clip_c, opts.tau_pos, opts.tau_neg, opts.loss_agg,
            opts.kl_coef, opts.kl_type, opts.kl_bias_correction, opts.entropy_coef, _agg_norm_tensor(opts.agg_norm),
            opts.horizon)


def _token_weights(shape, mask, old_logprobs, weights, behaviour_logprobs, is_mode, is_max, is_min):
    """The per-token policy weights the ops take: ``weights`` times the behaviour correction.
    -> (weights [B, T] or None, the correction's metrics)."""
    if behaviour_logprobs is None:
        return weights, {}
    if old_logprobs is None:
        raise ValueError("behaviour_logprobs needs old_logprobs (the proximal policy the ratio is taken against)")
    check_is_options(is_mode, is_max, is_min)
    is_w, stats = behaviour_weights(old_logprobs.reshape(shape), behaviour_logprobs.reshape(shape),
                                    mask.reshape(shape), is_mode, is_max, is_min)
    if weights is not None:
        is_w = is_w * weights.reshape(shape).to(is_w.dtype)
    return is_w, stats


def _check_mask(mask: torch.Tensor) -> None:
    """mask holds only 0 and 1 (skipped under torch.compile: it reads data)."""
    if mask.is_complex():
        raise ValueError(f"mask must be a real tensor of 0/1, got {mask.dtype}")
    if compiling() or mask.dtype == torch.bool or mask.numel() == 0:
        return
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"mask must hold only 0 and 1, got mask{list(idx)} = {mask[idx].item()}")


def _check_token_tensors(shape: tuple, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is None:
            continue
        require_floating(name, t)
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(t.shape)}")


def _check_advantages(advantages: torch.Tensor, shape: tuple) -> torch.Tensor:
    """-> advantages as ``[B]`` or ``[B, T]`` (``[B, 1]`` is squeezed)."""
    require_floating("advantages", advantages)
    adv_shape = tuple(advantages.shape)
    if len(shape) == 2 and adv_shape == (shape[0], 1):
        return advantages.reshape(shape[0])
    if adv_shape == shape or (len(shape) == 2 and adv_shape == (shape[0],)):
        return advantages
    expected = f"[{shape[0]}] or {list(shape)}" if len(shape) == 2 else f"{list(shape)}"
    raise ValueError(f"advantages must have shape {expected}, got {list(adv_shape)}")


def _metrics_dict(metrics: torch.Tensor, has_entropy: bool, has_ref: bool) -> dict[str, torch.Tensor]:
    out = {name: metrics[GRPO_METRICS.index(name)] for name in ("clipfrac", "clipfrac_lower", "approx_kl")}
    if has_entropy:
        out["entropy"] = metrics[GRPO_METRICS.index("entropy")]
    if has_ref:
        out["kl"] = metrics[GRPO_METRICS.index("kl")]
    return out


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    policy_loss: str = "vanilla",
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    clip_c: float | None = None,
    loss_agg: str = "token-mean",
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    agg_norm: float | torch.Tensor | None = None,
    horizon: int | None = None,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    kl_bias_correction: bool = False,
    weights: torch.Tensor | None = None,
    behaviour_logprobs: torch.Tensor | None = None,
    is_mode: str = "token_truncate",
    is_max: float | None = 2.0,
    is_min: float | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped GRPO/DAPO policy loss and its family (docs/algorithms.md §1, §1b).

    Per valid token: ``r = exp(clamp(lp - old, -20, 20))``,
    ``pg = max(-A*r, -A*clip(r, 1-eps_low, 1+eps_high))``, with dual clip
    ``pg = min(pg, -A*clip_c)`` where ``A < 0``; plus ``kl_coef * k`` (``k1``:
    ``lp - ref``, ``k2``: ``(lp - ref)^2 / 2``, ``k3``: ``exp(d) - d - 1`` with
    ``d = ref - lp``; d clamped to ±20, k3 to ≤ 10) and ``- entropy_coef * entropy``;
    aggregated by ``loss_agg``:

    * ``token-mean``: ``sum(x) / n_tokens`` (``agg_norm`` replaces ``n_tokens``);
    * ``seq-mean-token-mean``: mean over each response's tokens, then over non-empty responses;
    * ``seq-mean-token-sum``: sum over each response, then mean over non-empty responses;
    * ``seq-mean-token-sum-norm``: ``seq-mean-token-sum / horizon`` (default horizon: ``T``).

    * ``token-sum``: ``sum(x)`` (``/ agg_norm`` when given).

    For the seq-mean modes ``agg_norm`` replaces the number of non-empty responses.

    ``policy_loss`` picks the policy term (``r`` as above, ``A`` the advantage):

    * ``vanilla``: the clipped PPO term above;
    * ``gspo``: the same with the response's ratio ``s = exp(mean_t(lp - old))`` for every
      token, differentiated through the mean (GSPO; TRL's ``importance_sampling_level="sequence"``);
    * ``gspo_token``: value ``s``, gradient ``s * d lp_t`` per token (GSPO-token; verl's ``gspo``);
    * ``cispo``: ``-sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * lp``;
    * ``sapo``: ``-A * sigmoid(tau (r - 1)) * 4 / tau``, ``tau = tau_pos`` where ``A > 0`` else ``tau_neg``.

    Args:
        logprobs: ``[B, T]`` fp32/bf16/fp16/fp64 log-probs under the trained policy; differentiable.
        old_logprobs: ``[B, T]`` log-probs under the proximal (old) policy, or None for
            on-policy training: the ratio is 1 at the current log-probs (detached), as TRL
            with one iteration, with no extra pass.
        advantages: ``[B]`` (one per response) or ``[B, T]`` (per token).
        mask: ``[B, T]`` of 0/1 (bool, integer or floating).
        eps_low, eps_high: clip range ``[1 - eps_low, 1 + eps_high]``; ``0 <= eps_low <= 1`` (1: no lower
            clip), ``eps_high >= 0``.
        clip_c: dual-clip constant (> 1, e.g. 3.0) or None.
        loss_agg: one of ``token-mean``, ``seq-mean-token-mean``, ``seq-mean-token-sum``,
            ``seq-mean-token-sum-norm``, ``token-sum``.
        ref_logprobs: ``[B, T]`` reference-policy log-probs; needed when ``kl_coef > 0``.
        kl_coef, kl_type: KL penalty weight (>= 0) and estimator (``k1``, ``k2``, ``k3``).
        entropy: ``[B, T]`` per-token entropies (differentiable) for the bonus and the metric.
        entropy_coef: ``loss -= entropy_coef * agg(entropy)``; needs ``entropy`` when non-zero.
        agg_norm: global normaliser for data-parallel runs (float or scalar tensor, > 0).
        horizon: constant of ``seq-mean-token-sum-norm``.
        tau_pos, tau_neg: SAPO's gate temperatures (> 0).
        kl_bias_correction: multiply the KL estimator by the token ratio ``r`` (TRL's
            ``use_bias_correction_kl``); token-level policy losses only.
        weights: ``[B, T]`` per-token weights of the policy term (not of the KL or entropy terms).
        behaviour_logprobs: ``[B, T]`` log-probs the engine sampled with; the policy term is then
            weighted by ``pi_old / pi_behav`` per ``is_mode`` (``token_truncate``, ``token_mask``,
            ``sequence_truncate``, ``sequence_mask``) within ``[is_min, is_max]``
            (:func:`rubricrl.ops.importance.behaviour_weights`); needs ``old_logprobs``.
        backend: ``torch``, ``cpp`` or ``triton``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        ``(loss, metrics)``: the scalar loss (fp32; fp64 for fp64 log-probs on the
        torch/cpp backends) and a dict of fp32 scalar tensors ``clipfrac`` (CISPO: share of
        ratios its clip changed; SAPO: 0), ``clipfrac_lower``, ``approx_kl``
        (``mean(old - lp)``), ``entropy`` when ``entropy`` is given, ``kl`` when
        ``ref_logprobs`` is given, and ``is_weight_mean``, ``is_clipped_frac`` with
        ``behaviour_logprobs``. A batch without valid tokens gives 0 everywhere and zero gradients.
    """
    require_floating("logprobs", logprobs)
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {list(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    _check_token_tensors(shape, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, entropy=entropy,
                         weights=weights, behaviour_logprobs=behaviour_logprobs)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
        raise ValueError(f"mask must be a tensor of shape {list(shape)}, got {list(getattr(mask, 'shape', []))}")
    advantages = _check_advantages(advantages, shape)
    if entropy is None and entropy_coef != 0:
        raise ValueError(f"entropy_coef={entropy_coef} needs the per-token entropy tensor")
    opts = grpo_options(eps_low, eps_high, clip_c, loss_agg, kl_coef, kl_type, entropy_coef, agg_norm, horizon,
                        policy_loss, tau_pos, tau_neg, kl_bias_correction, has_ref=ref_logprobs is not None)
    _check_mask(mask)
    device = same_device(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask,
                         ref_logprobs=ref_logprobs, entropy=entropy, weights=weights,
                         behaviour_logprobs=behaviour_logprobs)
    weights, is_stats = _token_weights(shape, mask, old_logprobs, weights, behaviour_logprobs, is_mode, is_max,
                                       is_min)
    name = _backend.resolve("grpo_loss", device, backend)
    loss, _, _, metrics = call("grpo_loss", name, device, logprobs, _detached(old_logprobs), advantages, mask,
                               _detached(ref_logprobs), entropy, _detached(weights), *_option_args(opts))
    return loss, {**_metrics_dict(metrics, entropy is not None, ref_logprobs is not None), **is_stats}


def _detached(t: torch.Tensor | None) -> torch.Tensor | None:
    """Inputs the loss treats as constants (the op has no gradient for them)."""
    return t.detach() if t is not None else None


def fused_linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    policy_loss: str = "vanilla",
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    clip_c: float | None = None,
    loss_agg: str = "token-mean",
    ref_logprobs: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_type: str = "k3",
    entropy_coef: float = 0.0,
    compute_entropy: bool = False,
    agg_norm: float | torch.Tensor | None = None,
    horizon: int | None = None,
    tau_pos: float = 1.0,
    tau_neg: float = 1.05,
    kl_bias_correction: bool = False,
    weights: torch.Tensor | None = None,
    behaviour_logprobs: torch.Tensor | None = None,
    is_mode: str = "token_truncate",
    is_max: float | None = 2.0,
    is_min: float | None = None,
    token_chunk: int | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`grpo_loss` of the log-probs of ``softmax((hidden @ weight.T + bias) / temperature)``.

    Never materialises ``[N, V]`` logits: tokens are processed in chunks of
    ``token_chunk`` rows over the whole vocabulary; each chunk's logits buffer
    becomes its d logits, so the forward also produces d hidden, d weight and d
    bias (3 GEMMs in all). Masked tokens are skipped where the backend can (cpp).
    The response-level policy losses (``gspo``, ``gspo_token``) need every token of a
    response before any token's gradient is known: they run as
    :func:`fused_linear_logprobs` + :func:`grpo_loss` (4 GEMMs, still no ``[N, V]`` logits).

    Args:
        hidden: ``[B, T, H]`` (or ``[N, H]`` with ``loss_agg`` ``token-mean``/``token-sum``) fp32/bf16/fp16.
        weight: ``[V, H]`` output projection. bias: optional ``[V]``.
        targets: integer ``[B, T]`` (``[N]``) sampled tokens; read only where ``mask == 1``,
            where they must lie in ``[0, V)``.
        old_logprobs, mask, ref_logprobs, weights, behaviour_logprobs: ``[B, T]`` (``[N]``), as in
            :func:`grpo_loss` (``old_logprobs=None``: on-policy).
        advantages: ``[B]`` or ``[B, T]`` (``[N]`` for 2-D hidden).
        temperature: sampling temperature (> 0); log-probs are of ``softmax(logits / T)``.
        entropy_coef: entropy bonus, the entropy computed from the logits.
        compute_entropy: also report the ``entropy`` metric when ``entropy_coef == 0``.
        token_chunk: token rows per chunk; default keeps the fp32 ``[rows, V]`` buffer near
            320 MB (512 rows at V = 151936).
        chunk_size: deprecated name of ``token_chunk``.
        Other options: as in :func:`grpo_loss`.

    Returns:
        ``(loss, metrics)`` as :func:`grpo_loss` (``entropy`` in metrics when computed,
        ``kl`` when ``ref_logprobs`` is given). Gradients flow to hidden, weight and bias.
    """
    check_output_projection(hidden, weight, bias)
    require_integer("targets", targets)
    require_positive("temperature", temperature)
    if hidden.dim() not in (2, 3):
        raise ValueError(f"hidden must be [B, T, H] or [N, H], got {list(hidden.shape)}")
    shape = tuple(hidden.shape[:-1])
    if tuple(targets.shape) != shape:
        raise ValueError(f"targets must have shape {list(shape)}, got {list(targets.shape)}")
    _check_token_tensors(shape, old_logprobs=old_logprobs, ref_logprobs=ref_logprobs, weights=weights,
                         behaviour_logprobs=behaviour_logprobs)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != shape:
        raise ValueError(f"mask must be a tensor of shape {list(shape)}, got {list(getattr(mask, 'shape', []))}")
    advantages = _check_advantages(advantages, shape)
    token_chunk = chunk_option("token_chunk", token_chunk, "token rows", chunk_size)
    opts = grpo_options(eps_low, eps_high, clip_c, loss_agg, kl_coef, kl_type, entropy_coef, agg_norm, horizon,
                        policy_loss, tau_pos, tau_neg, kl_bias_correction, has_ref=ref_logprobs is not None)
    if len(shape) == 1 and loss_agg not in ("token-mean", "token-sum"):
        raise ValueError(f"loss_agg={loss_agg!r} needs responses: pass hidden as [B, T, H], not [N, H]")
    if len(shape) == 1 and opts.sequence_level:
        raise ValueError(f"policy_loss={policy_loss!r} needs responses: pass hidden as [B, T, H], not [N, H]")
    _check_mask(mask)
    device = same_device(hidden=hidden, weight=weight, targets=targets, old_logprobs=old_logprobs,
                         advantages=advantages, mask=mask, ref_logprobs=ref_logprobs, bias=bias, weights=weights,
                         behaviour_logprobs=behaviour_logprobs)
    check_index_range("targets", targets, weight.shape[0], skip=mask == 0, skip_note=" at a valid token")
    with_entropy = bool(compute_entropy) or opts.entropy_coef != 0.0
    if opts.sequence_level:
        return _sequence_level_linear_loss(hidden, weight, bias, targets, old_logprobs, advantages, mask,
                                           ref_logprobs, weights, behaviour_logprobs, temperature, opts,
                                           with_entropy, (is_mode, is_max, is_min), backend)
    weights, is_stats = _token_weights(shape, mask, old_logprobs, weights, behaviour_logprobs, is_mode, is_max,
                                       is_min)
    name = _backend.resolve("fused_linear_grpo_loss", device, backend)
    if len(shape) == 1:  # one row of N tokens
        shape = (1, shape[0])
        advantages = advantages.reshape(shape)
    view = lambda t: t.detach().reshape(shape) if t is not None else None  # noqa: E731
    # which gradients the forward computes: those autograd will ask for
    grad = torch.is_grad_enabled()
    needs = (grad and hidden.requires_grad, grad and weight.requires_grad,
             grad and bias is not None and bias.requires_grad)
    loss, metrics, *_ = call(
        "fused_linear_grpo_loss", name, device, hidden.reshape(-1, hidden.shape[-1]), weight, bias,
        targets.reshape(-1).long().contiguous(), view(old_logprobs), advantages, view(mask), view(ref_logprobs),
        view(weights), float(temperature), *_option_args(opts), with_entropy, *needs, token_chunk,
    )
    return loss, {**_metrics_dict(metrics, with_entropy, ref_logprobs is not None), **is_stats}


def _sequence_level_linear_loss(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs,
                                weights, behaviour_logprobs, temperature, opts, with_entropy, is_options, backend):
    """GSPO from hidden states: fused log-probs (chunked over the vocabulary, backward by
    recomputation), then the loss on them. Masked tokens are ignored rows."""
    ignored = torch.where(mask != 0, targets, torch.full_like(targets, -100))
    out = fused_linear_logprobs(hidden, weight, ignored, bias=bias, temperature=temperature,
                                return_entropy=with_entropy, backend=backend)
    lp, ent = out if with_entropy else (out, None)
    if ent is not None and opts.entropy_coef == 0.0:
        ent = ent.detach()  # the metric only
    is_mode, is_max, is_min = is_options
    return grpo_loss(lp, old_logprobs, advantages, mask, policy_loss=opts.policy_loss, eps_low=opts.eps_low,
                     eps_high=opts.eps_high, clip_c=opts.clip_c, loss_agg=opts.loss_agg, ref_logprobs=ref_logprobs,
                     kl_coef=opts.kl_coef, kl_type=opts.kl_type, entropy=ent, entropy_coef=opts.entropy_coef,
                     agg_norm=opts.agg_norm, horizon=opts.horizon, tau_pos=opts.tau_pos, tau_neg=opts.tau_neg,
                     weights=weights, behaviour_logprobs=behaviour_logprobs, is_mode=is_mode, is_max=is_max,
                     is_min=is_min, backend=backend)
