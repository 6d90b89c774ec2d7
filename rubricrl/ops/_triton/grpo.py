"""Triton backend of the GRPO loss ops.

One kernel, :func:`_grpo_token_kernel`, does the per-token work of
``grpo_loss`` in a single pass over the tokens: ratio, clipping, dual clip, KL,
entropy bonus, the aggregation weight, d loss / d logprob (and d entropy), and
per-program partial sums of the loss and metrics (summed by torch afterwards,
so the result does not depend on scheduling). The glue that gives every token
its aggregation weight is shared with the PyTorch backend
(:mod:`rubricrl.ops._torch.grpo`), and so is the token-chunked driver of
``fused_linear_grpo_loss``, which here runs the GEMMs with ``torch.mm``
(cuBLAS) and the softmax epilogues with the Triton kernels of
:mod:`rubricrl.ops._triton.logprobs`.

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
# the shared constants (rubricrl.ops.constants), as compile-time constants of the kernels
_CLAMP = tl.constexpr(constants.LOG_RATIO_CLAMP)
_K3_MAX = tl.constexpr(constants.K3_MAX)
# where each partial sum goes in a program's row of `part` (layout: constants.GRPO_SUMS)
_NUM_SUMS = tl.constexpr(len(constants.GRPO_SUMS))
_S_LOSS, _S_CLIPPED, _S_LOWER, _S_OLD_MINUS_LP, _S_KL, _S_ENTROPY = (
    tl.constexpr(constants.GRPO_SUMS.index(name))
    for name in ("loss", "clipped", "lower", "old_minus_lp", "kl", "entropy")
)


@triton.jit
def _grpo_token_kernel(
    lp_ptr, ent_ptr, old_ptr, adv_ptr, valid_ptr, wt_ptr, ref_ptr,
    g_lp_ptr, g_ent_ptr, part_ptr, n,
    eps_low, eps_high, clip_c, kl_coef, entropy_coef,
    DUAL_CLIP: tl.constexpr, KL_TYPE: tl.constexpr, HAS_ENT: tl.constexpr, ENT_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    valid = (tl.load(valid_ptr + offs, mask=inb, other=0) != 0) & inb
    lp = tl.load(lp_ptr + offs, mask=valid, other=0.0)
    old = tl.load(old_ptr + offs, mask=valid, other=0.0)
    adv = tl.load(adv_ptr + offs, mask=valid, other=0.0)
    wt = tl.load(wt_ptr + offs, mask=valid, other=0.0)
    # PPO ratio with the log-ratio clamped to +-LOG_RATIO_CLAMP; d r / d lp is 0 outside the clamp
    delta = lp - old
    r = tl.exp(tl.minimum(tl.maximum(delta, -_CLAMP), _CLAMP))
    dr = tl.where(tl.abs(delta) <= _CLAMP, r, 0.0)
    pg1 = -adv * r
    pg2 = -adv * tl.minimum(tl.maximum(r, 1.0 - eps_low), 1.0 + eps_high)
    clipped = pg2 > pg1  # the clipped branch is active only when strictly larger
    x = tl.where(clipped, pg2, pg1)
    dx = tl.where(clipped, 0.0, -adv * dr)
    lower = offs < 0  # all False, block-shaped
    if DUAL_CLIP:
        pg3 = -adv * clip_c
        lower = (adv < 0.0) & (x > pg3)
        x = tl.where(lower, pg3, x)
        dx = tl.where(lower, 0.0, dx)
    kl_w = tl.zeros([BLOCK], tl.float32)
    if KL_TYPE > 0:
        d_raw = tl.load(ref_ptr + offs, mask=valid, other=0.0) - lp
        inside = tl.abs(d_raw) <= _CLAMP
        d = tl.minimum(tl.maximum(d_raw, -_CLAMP), _CLAMP)
        if KL_TYPE == 1:
            k = -d
            dk = tl.where(inside, 1.0, 0.0)
        elif KL_TYPE == 2:
            k = 0.5 * d * d
            dk = tl.where(inside, -d, 0.0)
        else:
            e = tl.exp(d)
            k = e - d - 1.0
            capped = k > _K3_MAX
            k = tl.where(capped, _K3_MAX, k)
            dk = tl.where(inside & (~capped), 1.0 - e, 0.0)
        kl_w = tl.where(valid, wt * k, 0.0)
        x = x + kl_coef * k
        dx = dx + kl_coef * dk
    ent_w = tl.zeros([BLOCK], tl.float32)
    if HAS_ENT:
        ent = tl.load(ent_ptr + offs, mask=valid, other=0.0)
        ent_w = tl.where(valid, wt * ent, 0.0)
        x = x - entropy_coef * ent
        if ENT_GRAD:
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
    """Same contract as :func:`rubricrl.ops._torch.grpo.token_terms`, fp32."""
    n = lp.numel()
    lp = lp.float().contiguous()
    ent = ent.float().contiguous() if ent is not None else None
    f32 = lambda t: t.float().contiguous() if t is not None else None  # noqa: E731
    old, adv, wt, ref = f32(tok["old"]), f32(tok["adv"]), f32(tok["wt"]), f32(tok["ref"])
    valid = tok["valid"].to(torch.uint8).contiguous()
    g_lp = torch.empty_like(lp)
    ent_grad = ent is not None
    g_ent = torch.empty_like(lp) if ent_grad else None
    block = min(BLOCK, max(16, triton.next_power_of_2(max(n, 1))))
    grid = (triton.cdiv(n, block),)
    part = torch.zeros(max(grid[0], 1), len(constants.GRPO_SUMS), dtype=torch.float32, device=lp.device)
    if n > 0:
        _grpo_token_kernel[grid](
            lp, ent if ent is not None else lp, old, adv, valid, wt, ref if ref is not None else lp,
            g_lp, g_ent if g_ent is not None else g_lp, part, n,
            opts.eps_low, opts.eps_high, opts.clip_c if opts.clip_c is not None else 0.0,
            opts.kl_coef, opts.entropy_coef,
            DUAL_CLIP=opts.clip_c is not None, KL_TYPE=_KL_TYPES[opts.kl_type] if ref is not None else 0,
            HAS_ENT=ent is not None, ENT_GRAD=ent_grad, BLOCK=block,
        )
    return part.sum(0), g_lp, g_ent


def loss_fwd(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, opts):
    """-> (loss fp32, g_lp [B, T], g_ent [B, T] | None, metrics fp32 [5])."""
    tok, n_valid = _glue.prepare_tokens(old_logprobs, advantages, mask, ref_logprobs, opts, torch.float32)
    ent = entropy.reshape(-1) if entropy is not None else None
    sums, g_lp, g_ent = token_terms(logprobs.reshape(-1), ent, tok, opts)
    loss, metrics = _glue.finish(sums, n_valid)
    return loss, g_lp.view(mask.shape), g_ent.view(mask.shape) if g_ent is not None else None, metrics


_EPI = TritonEpilogue()


def linear_fwd(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs, temperature, opts,
               with_entropy, needs, chunk_size):
    """-> (loss fp32, metrics fp32 [5], d_hidden | None, d_weight | None, d_bias | None)."""
    return _glue.linear_driver(_EPI, token_terms, hidden, weight, bias, targets, old_logprobs, advantages, mask,
                               ref_logprobs, temperature, opts, with_entropy, needs, chunk_size)
