"""Plain-PyTorch backend of the GRPO loss ops: the definition of truth, readable.

Every backend follows the same three steps (the C++ one in csrc/cpu/grpo.cpp,
the Triton one in rubricrl/ops/_triton/grpo.py, which reuses this module's glue):

1. :func:`prepare_tokens`: flatten to ``[N]`` tokens and give each its
   aggregation weight ``w`` (0 on masked tokens), so that ``loss = sum(w * x)``
   for every ``loss_agg``; for GSPO also each response's log-ratio
   (:func:`sequence_log_ratio`);
2. :func:`token_terms`: the per-token loss ``x`` and its derivative, giving
   ``g_lp = w * dx/dlp`` (and ``g_ent``), plus the sums behind the metrics;
   GSPO's share of it is spread over the response (:func:`spread_over_responses`);
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

    The token weight is ``mask * row_weight``: ``1/n_tokens`` (token-mean), ``1`` (token-sum),
    ``1/(n_i * n_seq)``, ``1/n_seq``, ``1/(n_seq * horizon)`` (seq-mean modes);
    ``agg_norm`` replaces ``n_tokens`` / ``n_seq`` (token-sum: ``1/agg_norm``).
    """
    counts = mask.sum(1)
    if opts.loss_agg == "token-mean":
        norm = counts.sum()
    elif opts.loss_agg == "token-sum":
        norm = torch.ones((), dtype=mask.dtype, device=mask.device)
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


def prepare_tokens(old_logprobs, advantages, mask, ref_logprobs, weights, opts, dtype):
    """-> dict of flat ``[N]`` tensors in ``dtype``: old (None: on-policy), adv, valid (bool),
    wt (aggregation weight), ref (or None), pgw (per-token policy weight, or None); and n_valid."""
    b, t = mask.shape
    m = mask.to(dtype)
    wt = (m * row_weights(m, opts)[:, None]).reshape(-1)
    adv = advantages.to(dtype)
    adv = (adv[:, None].expand(b, t) if adv.dim() == 1 else adv).reshape(-1)
    flat = lambda x: x.to(dtype).reshape(-1) if x is not None else None  # noqa: E731
    tokens = dict(old=flat(old_logprobs), adv=adv, valid=(mask != 0).reshape(-1), wt=wt, ref=flat(ref_logprobs),
                  pgw=flat(weights))
    return tokens, m.sum()


def _ratio(log_ratio, zero):
    """``r = exp(clamp(log_ratio, +-C))`` and ``d r / d log_ratio`` (0 outside the clamp)."""
    r = torch.exp(log_ratio.clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP))
    return r, torch.where(log_ratio.abs() <= RATIO_LOG_CLAMP, r, zero)


def policy_terms(lp, adv, r, dr, opts, zero):
    """The policy term of each token and its derivatives, before any weight.

    Args:
        lp: ``[n]`` log-probs; adv: ``[n]`` advantages; r, dr: the ratio the loss uses (token,
        or the response's for the sequence-level losses) and ``d r / d log r``.

    Returns:
        ``(x, dx_dlogr, dx_dlp, clipped, lower)``: the term, its derivative through the ratio's
        log (the path the sequence-level losses redistribute over the response), its direct
        derivative in lp (CISPO's ``log pi``), and the clip indicators of the metrics.
    """
    no = torch.zeros_like(lp, dtype=torch.bool)
    if opts.policy_loss == "cispo":
        # -sg(clip(r)) * A * lp: the gradient goes through lp only
        c = r.clamp(1.0 - opts.eps_low, 1.0 + opts.eps_high)
        return -c * adv * lp, torch.zeros_like(lp), -c * adv, c != r, no
    if opts.policy_loss == "sapo":
        # soft gate f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau by the advantage's sign
        tau = torch.where(adv > 0, torch.full_like(adv, opts.tau_pos), torch.full_like(adv, opts.tau_neg))
        sig = torch.sigmoid(tau * (r - 1.0))
        return -adv * sig * 4.0 / tau, -adv * 4.0 * sig * (1.0 - sig) * dr, torch.zeros_like(lp), no, no
    # the clipped PPO objective (vanilla, gspo, gspo_token)
    pg1 = -adv * r
    pg2 = -adv * r.clamp(1.0 - opts.eps_low, 1.0 + opts.eps_high)
    clipped = pg2 > pg1
    x = torch.where(clipped, pg2, pg1)
    dx = torch.where(clipped, zero, -adv * dr)
    lower = no
    if opts.clip_c is not None:
        pg3 = -adv * opts.clip_c
        lower = (adv < 0) & (x > pg3)
        x = torch.where(lower, pg3, x)
        dx = torch.where(lower, zero, dx)
    return x, dx, torch.zeros_like(lp), clipped, lower


def kl_terms(lp, ref, opts, zero):
    """The KL estimator ``k`` of each token and ``d k / d lp`` (``d = ref - lp`` clamped, k3 capped)."""
    d = ref - lp
    inside = d.abs() <= RATIO_LOG_CLAMP
    d = d.clamp(-RATIO_LOG_CLAMP, RATIO_LOG_CLAMP)
    if opts.kl_type == "k1":
        return -d, torch.where(inside, torch.ones_like(d), zero)
    if opts.kl_type == "k2":
        return 0.5 * d * d, torch.where(inside, -d, zero)
    e = torch.exp(d)
    k = e - d - 1.0
    capped = k > K3_MAX
    return torch.where(capped, torch.full_like(k, K3_MAX), k), torch.where(inside & ~capped, 1.0 - e, zero)


def token_terms(lp, ent, tok, opts):
    """Per-token GRPO terms for flat tokens.

    Args:
        lp: ``[n]`` log-probs; ent: ``[n]`` entropies or None; tok: the :func:`prepare_tokens`
        slices for the same tokens, plus ``seq_lr`` (``[n]``, each token's response log-ratio
        ``mean(lp - old)``) for the sequence-level policy losses.

    Returns:
        ``(sums [NUM_SUMS], g_lp [n], g_ent [n] | None, g_logr [n])`` in lp's dtype. ``g_logr``
        is the part of ``g_lp`` that flows through the policy ratio's log: GSPO
        (:func:`loss_driver`) spreads it over the response.
    """
    valid, wt, adv = tok["valid"], tok["wt"], tok["adv"]
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    # on-policy (no old log-probs): the ratio is 1 at the current log-probs, its gradient flows
    old = tok["old"] if tok["old"] is not None else lp.detach()
    tok_r, tok_dr = _ratio(lp - old, zero)
    r, dr = _ratio(tok["seq_lr"], zero) if opts.sequence_level else (tok_r, tok_dr)
    x, dx_logr, dx_lp, clipped, lower = policy_terms(lp, adv, r, dr, opts, zero)
    if tok["pgw"] is not None:  # per-token weights multiply the policy term only
        pgw = torch.where(valid, tok["pgw"], zero)
        x, dx_logr, dx_lp = x * pgw, dx_logr * pgw, dx_lp * pgw
    g_logr = torch.where(valid, wt * dx_logr, zero)
    dx = dx_logr + dx_lp
    kl_sum = zero
    if tok["ref"] is not None:
        k, dk = kl_terms(lp, tok["ref"], opts, zero)
        if opts.kl_bias_correction:  # k * r: the KL estimated under the sampling policy
            k, dk = k * tok_r, dk * tok_r + k * tok_dr
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
    return sums, g_lp, g_ent, g_logr


def finish(sums: torch.Tensor, n_valid: torch.Tensor):
    """sums ``[NUM_SUMS]`` -> (loss, metrics fp32 ``[5]`` in the order of ``GRPO_METRICS``)."""
    n = n_valid.clamp_min(1).to(sums.dtype)
    metrics = []
    for name in GRPO_METRICS:
        total, per_token = _METRIC_SUMS[name]
        metrics.append(sums[_S[total]] / n if per_token else sums[_S[total]])
    return sums[_S["loss"]].clone(), torch.stack(metrics).float()


def sequence_log_ratio(lp, old, mask):
    """``[B, T]`` -> each response's ``mean(lp - old)`` over its valid tokens, per token ``[B*T]``
    (GSPO's log-ratio; 0 for an empty response and for on-policy ``old=None``)."""
    if old is None:
        return torch.zeros(lp.numel(), dtype=lp.dtype, device=lp.device)
    valid = mask != 0
    diff = torch.where(valid, lp - old.view(lp.shape), torch.zeros((), dtype=lp.dtype, device=lp.device))
    n = valid.sum(1, keepdim=True).clamp_min(1).to(lp.dtype)
    return (diff.sum(1, keepdim=True) / n).expand_as(lp).reshape(-1)


def spread_over_responses(g_logr, mask):
    """GSPO's ratio is ``exp(mean(lp - old))``: d loss / d lp of each valid token is the
    response's summed ``g_logr`` over its token count. ``[B*T]`` -> ``[B*T]``."""
    valid = mask != 0
    g = g_logr.view(mask.shape)
    n = valid.sum(1, keepdim=True).clamp_min(1).to(g.dtype)
    return torch.where(valid, (g.sum(1, keepdim=True) / n).expand_as(g), torch.zeros_like(g)).reshape(-1)


def loss_driver(token_terms_fn, logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, opts,
                dtype):
    """``grpo_loss`` for the Python backends with their ``token_terms_fn`` (as :func:`token_terms`).
    -> (loss, g_lp [B, T], g_ent [B, T] | None, metrics fp32 [5])."""
    tok, n_valid = prepare_tokens(old_logprobs, advantages, mask, ref_logprobs, weights, opts, dtype)
    lp = logprobs.to(dtype)
    if opts.sequence_level:
        tok["seq_lr"] = sequence_log_ratio(lp, tok["old"], mask)
    ent = entropy.to(dtype).reshape(-1) if entropy is not None else None
    sums, g_lp, g_ent, g_logr = token_terms_fn(lp.reshape(-1), ent, tok, opts)
    if opts.policy_loss == "gspo":
        g_lp = g_lp - g_logr + spread_over_responses(g_logr, mask)
    loss, metrics = finish(sums, n_valid)
    return loss, g_lp.view(mask.shape), g_ent.view(mask.shape) if g_ent is not None else None, metrics


def loss_fwd(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, opts):
    """-> (loss, g_lp [B, T], g_ent [B, T] | None, metrics fp32 [5])."""
    return loss_driver(token_terms, logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, opts,
                       compute_dtype(logprobs))


def linear_driver(epi, token_terms_fn, hidden, weight, bias, targets, old_logprobs, advantages, mask,
                  ref_logprobs, weights, temperature, opts, with_entropy, needs, chunk_size):
    """The token-chunked fused loss for the Python backends; ``token_terms_fn`` as :func:`token_terms`.
    Token-local policy losses only (the API runs the sequence-level ones as log-probs + loss)."""
    if opts.sequence_level:
        raise ValueError(f"fused_linear_grpo_loss op: policy_loss={opts.policy_loss!r} is sequence-level; "
                         "rubricrl.ops.fused_linear_grpo_loss runs it as fused_linear_logprobs + grpo_loss")
    tok, n_valid = prepare_tokens(old_logprobs, advantages, mask, ref_logprobs, weights, opts, torch.float32)
    # masked tokens become ignored rows: their targets are never read
    targets = torch.where(tok["valid"], targets, torch.full_like(targets, -1))
    sums = torch.zeros(NUM_SUMS, dtype=torch.float32, device=hidden.device)

    def coef_fn(n0, n1, lp, ent):
        part = {k: (v[n0:n1] if v is not None else None) for k, v in tok.items()}
        s, g_lp, g_ent, _ = token_terms_fn(lp, ent if with_entropy else None, part, opts)
        sums.add_(s)
        return g_lp, g_ent if opts.entropy_coef != 0.0 else None

    d_hidden, d_weight, d_bias = _chunked.linear_token_chunks(
        epi, hidden, weight, bias, targets, temperature, with_entropy, coef_fn, needs, chunk_size
    )
    loss, metrics = finish(sums, n_valid)
    return loss, metrics, d_hidden, d_weight, d_bias


_EPI = TorchEpilogue()


def linear_fwd(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs, weights, temperature,
               opts, with_entropy, needs, chunk_size):
    """-> (loss fp32, metrics fp32 [5], d_hidden | None, d_weight | None, d_bias | None)."""
    return linear_driver(_EPI, token_terms, hidden, weight, bias, targets, old_logprobs, advantages, mask,
                         ref_logprobs, weights, temperature, opts, with_entropy, needs, chunk_size)
