"""Plain-PyTorch backend of the GRPO loss ops: the definition of truth, readable.

Every backend follows the same three steps (the C++ one in csrc/cpu/grpo.cpp,
the Triton one in rubricrl/ops/_triton/grpo.py, which reuses this module's glue):

1. :func:`prepare_tokens`: flatten to ``[N]`` tokens and give each its
   aggregation weight ``w`` (0 on masked tokens), so that ``loss = sum(w * x)``
   for every ``loss_agg``;
2. :func:`token_terms`: the per-token loss ``x`` and its derivative, giving
   ``g_lp = w * dx/dlp`` (and ``g_ent``), plus the sums behind the metrics;
3. :func:`finish`: the loss and the fp32 metrics vector (order of
   ``rubricrl.ops.constants.GRPO_METRICS``).

Derivatives follow autograd's conventions at the kinks: ``clamp`` passes the
gradient on its bounds, and where both PPO branches are equal the unclipped one
is taken (the clipped branch is "active" only when strictly larger, as verl's
``clipfrac``).
"""

from __future__ import annotations

import torch

from .. import _chunked
from .._chunked import masked_grad  # noqa: F401  (re-exported for the Triton backend)
from .logprobs import TorchEpilogue

from ..constants import GRPO_METRICS, GRPO_SUMS, K3_MAX
from ..constants import LOG_RATIO_CLAMP as RATIO_LOG_CLAMP

NUM_SUMS = len(GRPO_SUMS)  # loss, clipped tokens, dual-clipped tokens, sum(old - lp), sum(w * kl), sum(w * entropy)
_S = {name: i for i, name in enumerate(GRPO_SUMS)}
# each metric: (its sum, divided by the valid-token count or not); order GRPO_METRICS
_METRIC_SUMS = {"clipfrac": ("clipped", True), "clipfrac_lower": ("lower", True),
                "approx_kl": ("old_minus_lp", True), "entropy": ("entropy", False), "kl": ("kl", False)}


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def row_weights(mask: torch.Tensor, opts) -> torch.Tensor:
    """mask ``[B, T]`` (compute dtype) -> per-response weight ``[B]``, 0 for empty responses.

    The token weight is ``mask * row_weight``: ``1/n_tokens`` (token-mean),
    ``1/(n_i * n_seq)``, ``1/n_seq``, ``1/(n_seq * horizon)`` (seq-mean modes);
    ``agg_norm`` replaces ``n_tokens`` / ``n_seq``.
    """
    counts = mask.sum(1)
    if opts.loss_agg == "token-mean":
        norm = counts.sum()
    else:
        norm = (counts > 0).sum().to(mask.dtype)
    if opts.agg_norm is not None:
        norm = torch.as_tensor(opts.agg_norm, dtype=mask.dtype, device=mask.device).reshape(())
    den = norm.expand_as(counts)
    if opts.loss_agg == "seq-mean-token-mean":
        den = den * counts
    elif opts.loss_agg == "seq-mean-token-sum-norm":
        den = den * float(opts.horizon if opts.horizon is not None else mask.shape[1])
    ok = (den > 0) & (counts > 0)
    return torch.where(ok, 1.0 / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def prepare_tokens(old_logprobs, advantages, mask, ref_logprobs, opts, dtype):
    """-> dict of flat ``[N]`` tensors in ``dtype``: old, adv, valid (bool), wt, ref (or None); and n_valid."""
    b, t = mask.shape
    m = mask.to(dtype)
    wt = (m * row_weights(m, opts)[:, None]).reshape(-1)
    adv = advantages.to(dtype)
    adv = (adv[:, None].expand(b, t) if adv.dim() == 1 else adv).reshape(-1)
    tokens = dict(
        old=old_logprobs.to(dtype).reshape(-1),
        adv=adv,
        valid=(mask != 0).reshape(-1),
        wt=wt,
        ref=ref_logprobs.to(dtype).reshape(-1) if ref_logprobs is not None else None,
    )
    return tokens, m.sum()


def token_terms(lp, ent, tok, opts):
    """Per-token GRPO terms for flat tokens.

    Args:
        lp: ``[n]`` log-probs; ent: ``[n]`` entropies or None; tok: the :func:`prepare_tokens`
        slices for the same tokens.

    Returns:
        ``(sums [NUM_SUMS], g_lp [n], g_ent [n] | None)`` in lp's dtype.
    """
    valid, wt, adv, old = tok["valid"], tok["wt"], tok["adv"], tok["old"]
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    delta = lp - old
    r = torch.exp(delta.clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))
    dr = torch.where(delta.abs() <= RATIO_LOG_CLAMP, r, zero)  # d r / d lp
    pg1 = -adv * r
    pg2 = -adv * r.clamp(1.0 - opts.eps_low, 1.0 + opts.eps_high)
    clipped = pg2 > pg1
    x = torch.where(clipped, pg2, pg1)
    dx = torch.where(clipped, zero, -adv * dr)
    lower = torch.zeros_like(clipped)
    if opts.clip_c is not None:
        pg3 = -adv * opts.clip_c
        lower = (adv < 0) & (x > pg3)
        x = torch.where(lower, pg3, x)
        dx = torch.where(lower, zero, dx)
    kl_sum = zero
    if tok["ref"] is not None:
        d = tok["ref"] - lp
        inside = d.abs() <= RATIO_LOG_CLAMP
        d = d.clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
        if opts.kl_type == "k1":
            k, dk = -d, torch.where(inside, torch.ones_like(d), zero)
        elif opts.kl_type == "k2":
            k, dk = 0.5 * d * d, torch.where(inside, -d, zero)
        else:
            e = torch.exp(d)
            k = e - d - 1.0
            capped = k > K3_MAX
            k = torch.where(capped, torch.full_like(k, K3_MAX), k)
            dk = torch.where(inside & ~capped, 1.0 - e, zero)
        kl_sum = torch.where(valid, wt * k, zero).sum()
        if opts.kl_coef != 0.0:
            x = x + opts.kl_coef * k
            dx = dx + opts.kl_coef * dk
    ent_sum, g_ent = zero, None
    if ent is not None:
        ent_sum = torch.where(valid, wt * ent, zero).sum()
        if opts.entropy_coef != 0.0:
            x = x - opts.entropy_coef * ent
        g_ent = torch.where(valid, -opts.entropy_coef * wt, zero)
    loss = torch.where(valid, wt * x, zero).sum()
    g_lp = torch.where(valid, wt * dx, zero)
    terms = dict(
        loss=loss,
        clipped=(clipped & valid).sum().to(lp.dtype),
        lower=(lower & valid).sum().to(lp.dtype),
        old_minus_lp=torch.where(valid, old - lp, zero).sum(),
        kl=kl_sum,
        entropy=ent_sum,
    )
    sums = torch.stack([terms[name] for name in GRPO_SUMS])
    return sums, g_lp, g_ent


def finish(sums: torch.Tensor, n_valid: torch.Tensor):
    """sums ``[NUM_SUMS]`` -> (loss, metrics fp32 ``[5]`` in the order of ``GRPO_METRICS``)."""
    n = n_valid.clamp_min(1).to(sums.dtype)
    metrics = []
    for name in GRPO_METRICS:
        total, per_token = _METRIC_SUMS[name]
        metrics.append(sums[_S[total]] / n if per_token else sums[_S[total]])
    return sums[_S["loss"]].clone(), torch.stack(metrics).float()


def loss_fwd(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, opts):
    """-> (loss, g_lp [B, T], g_ent [B, T] | None, metrics fp32 [5])."""
    dtype = compute_dtype(logprobs)
    tok, n_valid = prepare_tokens(old_logprobs, advantages, mask, ref_logprobs, opts, dtype)
    ent = entropy.to(dtype).reshape(-1) if entropy is not None else None
    sums, g_lp, g_ent = token_terms(logprobs.to(dtype).reshape(-1), ent, tok, opts)
    loss, metrics = finish(sums, n_valid)
    return loss, g_lp.view(mask.shape), g_ent.view(mask.shape) if g_ent is not None else None, metrics


def linear_driver(epi, token_terms_fn, hidden, weight, bias, targets, old_logprobs, advantages, mask,
                  ref_logprobs, temperature, opts, with_entropy, needs, chunk_size):
    """The token-chunked fused loss for the Python backends; ``token_terms_fn`` as :func:`token_terms`."""
    tok, n_valid = prepare_tokens(old_logprobs, advantages, mask, ref_logprobs, opts, torch.float32)
    # masked tokens become ignored rows: their targets are never read
    targets = torch.where(tok["valid"], targets, torch.full_like(targets, -1))
    sums = torch.zeros(NUM_SUMS, dtype=torch.float32, device=hidden.device)

    def coef_fn(n0, n1, lp, ent):
        part = {k: (v[n0:n1] if v is not None else None) for k, v in tok.items()}
        s, g_lp, g_ent = token_terms_fn(lp, ent if with_entropy else None, part, opts)
        sums.add_(s)
        return g_lp, g_ent if opts.entropy_coef != 0.0 else None

    d_hidden, d_weight, d_bias = _chunked.linear_token_chunks(
        epi, hidden, weight, bias, targets, temperature, with_entropy, coef_fn, needs, chunk_size
    )
    loss, metrics = finish(sums, n_valid)
    return loss, metrics, d_hidden, d_weight, d_bias


_EPI = TorchEpilogue()


def linear_fwd(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs, temperature, opts,
               with_entropy, needs, chunk_size):
    """-> (loss fp32, metrics fp32 [5], d_hidden | None, d_weight | None, d_bias | None)."""
    return linear_driver(_EPI, token_terms, hidden, weight, bias, targets, old_logprobs, advantages, mask,
                         ref_logprobs, temperature, opts, with_entropy, needs, chunk_size)
