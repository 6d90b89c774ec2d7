"""Triton backend of the GRPO loss ops.

One kernel, :func:`_grpo_token_kernel`, does the per-token work of
``grpo_loss`` in a single pass over the tokens: the ratio (token-level, or the
response's for GSPO / GSPO-token, read per token from ``seq_lr``), the policy
term of ``policy_loss`` (clipped PPO with the optional dual clip, CISPO, SAPO),
the per-token policy weights, the KL term (optionally bias-corrected by the
token ratio), the entropy bonus, the aggregation weight, d loss / d logprob (and
d entropy, and the share of d loss / d logprob through the ratio's log, which
the shared glue spreads over the response for GSPO), and per-program partial
sums of the loss and metrics (summed by torch afterwards, so the result does not
depend on scheduling). The policy loss, the KL type, the dual clip, the bias
correction and which optional inputs are given (old log-probs, per-token
weights, reference log-probs, entropy) are ``tl.constexpr`` switches, so each
configuration compiles to straight-line code; the coefficients are runtime
scalars. No value is read back to the host.

The glue is shared with the PyTorch backend (:mod:`rubricrl.ops._torch.grpo`,
whose ``token_terms`` is the specification this kernel follows): the aggregation
weight of every token, GSPO's response log-ratio and the spreading of its
gradient (:func:`rubricrl.ops._torch.grpo.loss_driver`), and the token-chunked
driver of ``fused_linear_grpo_loss`` (:func:`rubricrl.ops._torch.grpo.linear_driver`),
which here runs the GEMMs with ``torch.mm`` (cuBLAS) and the softmax epilogues
with the Triton kernels of :mod:`rubricrl.ops._triton.logprobs`.

Computes in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rubricrl.ops import constants
from rubricrl.ops._torch import grpo as _glue

from .logprobs import TritonEpilogue

BLOCK = 1024
_KL_TYPES = {name: i + 1 for i, name in enumerate(constants.KL_TYPES)}  # 0: no KL term
_POLICY = {name: i for i, name in enumerate(constants.POLICY_LOSSES)}
# the shared constants (rubricrl.ops.constants), as compile-time constants of the kernels
_CLAMP = tl.constexpr(constants.LOG_RATIO_CLAMP)
_K3_MAX = tl.constexpr(constants.K3_MAX)
_VANILLA, _CISPO, _SAPO, _GSPO, _GSPO_TOKEN = (
    tl.constexpr(_POLICY[name]) for name in ("vanilla", "cispo", "sapo", "gspo", "gspo_token")
)
_K1, _K2 = tl.constexpr(_KL_TYPES["k1"]), tl.constexpr(_KL_TYPES["k2"])
# where each partial sum goes in a program's row of `part` (layout: constants.GRPO_SUMS)
_NUM_SUMS = tl.constexpr(len(constants.GRPO_SUMS))
_S_LOSS, _S_CLIPPED, _S_LOWER, _S_OLD_MINUS_LP, _S_KL, _S_ENTROPY = (
    tl.constexpr(constants.GRPO_SUMS.index(name))
    for name in ("loss", "clipped", "lower", "old_minus_lp", "kl", "entropy")
)


@triton.jit
def _ratio(log_ratio):
    """``exp(log_ratio)`` with the log clamped to +-LOG_RATIO_CLAMP, and its derivative in the log
    (0 outside the clamp)."""
    r = tl.exp(tl.minimum(tl.maximum(log_ratio, -_CLAMP), _CLAMP))
    return r, tl.where(tl.abs(log_ratio) <= _CLAMP, r, 0.0)


@triton.jit
def _grpo_token_kernel(
    lp_ptr, ent_ptr, old_ptr, adv_ptr, valid_ptr, wt_ptr, ref_ptr, pgw_ptr, seq_lr_ptr,
    g_lp_ptr, g_ent_ptr, g_logr_ptr, part_ptr, n,
    eps_low, eps_high, clip_c, tau_pos, tau_neg, kl_coef, entropy_coef,
    POLICY: tl.constexpr, HAS_OLD: tl.constexpr, HAS_PGW: tl.constexpr, DUAL_CLIP: tl.constexpr,
    KL_TYPE: tl.constexpr, KL_BIAS: tl.constexpr, HAS_ENT: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    # masked tokens are never read (their inputs may be anything, NaN included)
    valid = (tl.load(valid_ptr + offs, mask=inb, other=0) != 0) & inb
    lp = tl.load(lp_ptr + offs, mask=valid, other=0.0)
    adv = tl.load(adv_ptr + offs, mask=valid, other=0.0)
    wt = tl.load(wt_ptr + offs, mask=valid, other=0.0)
    if HAS_OLD:
        old = tl.load(old_ptr + offs, mask=valid, other=0.0)
    else:
        old = lp  # on-policy: the ratio is 1 at the current log-probs, its gradient flows
    tok_r, tok_dr = _ratio(lp - old)
    if POLICY == _GSPO or POLICY == _GSPO_TOKEN:
        # the response's ratio exp(mean(lp - old)), given per token
        r, dr = _ratio(tl.load(seq_lr_ptr + offs, mask=valid, other=0.0))
    else:
        r, dr = tok_r, tok_dr
    # the policy term x, its derivative through the ratio's log (dx_logr) and directly in lp (dx_lp)
    never = offs < 0  # all False, block-shaped
    lower = never
    dx_lp = tl.zeros([BLOCK], tl.float32)
    if POLICY == _CISPO:
        # -sg(clip(r)) * A * lp: the gradient goes through lp only
        c = tl.minimum(tl.maximum(r, 1.0 - eps_low), 1.0 + eps_high)
        x = -c * adv * lp
        dx_logr = tl.zeros([BLOCK], tl.float32)
        dx_lp = -c * adv
        clipped = c != r
    elif POLICY == _SAPO:
        # soft gate f(r) = sigmoid(tau (r - 1)) * 4 / tau, tau by the advantage's sign
        tau = tl.where(adv > 0.0, tau_pos, tau_neg)
        sig = 1.0 / (1.0 + tl.exp(-tau * (r - 1.0)))
        x = -adv * sig * 4.0 / tau
        dx_logr = -adv * 4.0 * sig * (1.0 - sig) * dr
        clipped = never
    else:
        # the clipped PPO objective (vanilla, gspo, gspo_token)
        pg1 = -adv * r
        pg2 = -adv * tl.minimum(tl.maximum(r, 1.0 - eps_low), 1.0 + eps_high)
        clipped = pg2 > pg1  # the clipped branch is active only when strictly larger
        x = tl.where(clipped, pg2, pg1)
        dx_logr = tl.where(clipped, 0.0, -adv * dr)
        if DUAL_CLIP:
            pg3 = -adv * clip_c
            lower = (adv < 0.0) & (x > pg3)
            x = tl.where(lower, pg3, x)
            dx_logr = tl.where(lower, 0.0, dx_logr)
    if HAS_PGW:  # per-token weights multiply the policy term only
        pgw = tl.load(pgw_ptr + offs, mask=valid, other=0.0)
        x = x * pgw
        dx_logr = dx_logr * pgw
        dx_lp = dx_lp * pgw
    tl.store(g_logr_ptr + offs, tl.where(valid, wt * dx_logr, 0.0), mask=inb)
    dx = dx_logr + dx_lp
    kl_w = tl.zeros([BLOCK], tl.float32)
    if KL_TYPE > 0:
        d_raw = tl.load(ref_ptr + offs, mask=valid, other=0.0) - lp
        inside = tl.abs(d_raw) <= _CLAMP
        d = tl.minimum(tl.maximum(d_raw, -_CLAMP), _CLAMP)
        if KL_TYPE == _K1:
            k = -d
            dk = tl.where(inside, 1.0, 0.0)
        elif KL_TYPE == _K2:
            k = 0.5 * d * d
            dk = tl.where(inside, -d, 0.0)
        else:
            e = tl.exp(d)
            k = e - d - 1.0
            capped = k > _K3_MAX
            k = tl.where(capped, _K3_MAX, k)
            dk = tl.where(inside & (~capped), 1.0 - e, 0.0)
        if KL_BIAS:  # k * r: the KL estimated under the sampling policy
            dk = dk * tok_r + k * tok_dr
            k = k * tok_r
        kl_w = tl.where(valid, wt * k, 0.0)
        # a zero coefficient leaves the loss as it is (as the reference, which skips the term)
        x = x + tl.where(kl_coef != 0.0, kl_coef * k, 0.0)
        dx = dx + tl.where(kl_coef != 0.0, kl_coef * dk, 0.0)
    ent_w = tl.zeros([BLOCK], tl.float32)
    if HAS_ENT:
        ent = tl.load(ent_ptr + offs, mask=valid, other=0.0)
        ent_w = tl.where(valid, wt * ent, 0.0)
        x = x - tl.where(entropy_coef != 0.0, entropy_coef * ent, 0.0)
        tl.store(g_ent_ptr + offs, tl.where(valid, -entropy_coef * wt, 0.0), mask=inb)
    tl.store(g_lp_ptr + offs, tl.where(valid, wt * dx, 0.0), mask=inb)
    part = part_ptr + pid * _NUM_SUMS
    tl.store(part + _S_LOSS, tl.sum(tl.where(valid, wt * x, 0.0), axis=0))
    tl.store(part + _S_CLIPPED, tl.sum(tl.where(valid & clipped, 1.0, 0.0), axis=0))
    tl.store(part + _S_LOWER, tl.sum(tl.where(valid & lower, 1.0, 0.0), axis=0))
    tl.store(part + _S_OLD_MINUS_LP, tl.sum(tl.where(valid, old - lp, 0.0), axis=0))
    tl.store(part + _S_KL, tl.sum(kl_w, axis=0))
    tl.store(part + _S_ENTROPY, tl.sum(ent_w, axis=0))


def token_terms(lp, ent, tok, opts):
    """Same contract as :func:`rubricrl.ops._torch.grpo.token_terms`, fp32:
    ``(sums [NUM_SUMS], g_lp [n], g_ent [n] | None, g_logr [n])``."""
    n = lp.numel()
    f32 = lambda t: t.float().contiguous() if t is not None else None  # noqa: E731
    lp, ent = f32(lp), f32(ent)
    old, adv, wt, ref, pgw = (f32(tok[k]) for k in ("old", "adv", "wt", "ref", "pgw"))
    seq_lr = f32(tok["seq_lr"]) if opts.sequence_level else None
    valid = tok["valid"].to(torch.uint8).contiguous()
    g_lp, g_logr = torch.empty_like(lp), torch.empty_like(lp)
    g_ent = torch.empty_like(lp) if ent is not None else None
    block = min(BLOCK, max(16, triton.next_power_of_2(max(n, 1))))
    grid = (triton.cdiv(n, block),)
    part = torch.zeros(max(grid[0], 1), len(constants.GRPO_SUMS), dtype=torch.float32, device=lp.device)
    if n > 0:
        # absent optional inputs: any valid pointer, never read (their constexpr switch is off)
        _grpo_token_kernel[grid](
            lp, ent if ent is not None else lp, old if old is not None else lp, adv, valid, wt,
            ref if ref is not None else lp, pgw if pgw is not None else lp, seq_lr if seq_lr is not None else lp,
            g_lp, g_ent if g_ent is not None else g_lp, g_logr, part, n,
            opts.eps_low, opts.eps_high, opts.clip_c if opts.clip_c is not None else 0.0,
            opts.tau_pos, opts.tau_neg, opts.kl_coef, opts.entropy_coef,
            POLICY=_POLICY[opts.policy_loss], HAS_OLD=old is not None, HAS_PGW=pgw is not None,
            DUAL_CLIP=opts.clip_c is not None, KL_TYPE=_KL_TYPES[opts.kl_type] if ref is not None else 0,
            KL_BIAS=bool(opts.kl_bias_correction) and ref is not None, HAS_ENT=ent is not None, BLOCK=block,
        )
    return part.sum(0), g_lp, g_ent, g_logr


def loss_fwd(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, opts):
    """-> (loss fp32, g_lp [B, T], g_ent [B, T] | None, metrics fp32 [5])."""
    return _glue.loss_driver(token_terms, logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights,
                             opts, torch.float32)


_EPI = TritonEpilogue()


def linear_fwd(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs, weights, temperature,
               opts, with_entropy, needs, chunk_size):
    """-> (loss fp32, metrics fp32 [5], d_hidden | None, d_weight | None, d_bias | None)."""
    return _glue.linear_driver(_EPI, token_terms, hidden, weight, bias, targets, old_logprobs, advantages, mask,
                               ref_logprobs, weights, temperature, opts, with_entropy, needs, chunk_size)
