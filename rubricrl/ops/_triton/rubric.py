"""Triton backend of rubric_scores: one program per response sums its CSR segment of items.

Segments are short (a rubric has tens of items), so a program loops over its
segment in BLOCK-item tiles; the whole op is one read of ``met`` and ``points``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128


@triton.jit
def _rubric_scores_kernel(
    met_ptr, pts_ptr, off_ptr, score_ptr, raw_ptr, den_ptr,
    CLIP: tl.constexpr, BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    lo = tl.load(off_ptr + r)
    hi = tl.load(off_ptr + r + 1)
    offs = tl.arange(0, BLOCK)
    num = tl.zeros([BLOCK], tl.float32)
    pos = tl.zeros([BLOCK], tl.float32)
    for i0 in range(lo, hi, BLOCK):
        idx = i0 + offs
        valid = idx < hi
        p = tl.load(pts_ptr + idx, mask=valid, other=0.0)
        m = tl.load(met_ptr + idx, mask=valid, other=0.0)
        num += p * m
        pos += tl.where(p > 0.0, p, 0.0)
    num_r = tl.sum(num, axis=0)
    den_r = tl.sum(pos, axis=0)
    has_pos = den_r > 0.0
    # no positive points: undefined score (NaN), without dividing by zero
    raw = tl.where(has_pos, num_r / tl.where(has_pos, den_r, 1.0), float("nan"))
    score = raw
    if CLIP:
        clipped = tl.where(raw < 0.0, 0.0, tl.where(raw > 1.0, 1.0, raw))  # NaN stays NaN
        score = clipped
    tl.store(score_ptr + r, score)
    tl.store(raw_ptr + r, raw)
    tl.store(den_ptr + r, den_r)


@triton.jit
def _rubric_scores_bwd_kernel(coef_ptr, pts_ptr, off_ptr, d_ptr, BLOCK: tl.constexpr):
    r = tl.program_id(0)
    lo = tl.load(off_ptr + r)
    hi = tl.load(off_ptr + r + 1)
    c = tl.load(coef_ptr + r)
    offs = tl.arange(0, BLOCK)
    for i0 in range(lo, hi, BLOCK):
        idx = i0 + offs
        valid = idx < hi
        p = tl.load(pts_ptr + idx, mask=valid, other=0.0)
        tl.store(d_ptr + idx, c * p, mask=valid)


def rubric_fwd(met, points, offsets, clip):
    """met, points ``[I]``; offsets int64 ``[R+1]`` -> (scores, raw, den), fp32 ``[R]``."""
    met32 = met.float().contiguous()
    pts32 = points.float().contiguous()
    r = offsets.shape[0] - 1
    scores, raw, den = (torch.empty(r, dtype=torch.float32, device=pts32.device) for _ in range(3))
    if r > 0:
        _rubric_scores_kernel[(r,)](met32, pts32, offsets, scores, raw, den, CLIP=bool(clip), BLOCK=BLOCK)
    return scores, raw, den


def rubric_bwd(coef, points, offsets):
    """coef fp32 ``[R]`` -> d met ``[I]`` = coef[owner(i)] * p_i, fp32."""
    pts32 = points.float().contiguous()
    d_met = torch.empty_like(pts32)
    r = offsets.shape[0] - 1
    if r > 0:
        _rubric_scores_bwd_kernel[(r,)](coef, pts32, offsets, d_met, BLOCK=BLOCK)
    return d_met
