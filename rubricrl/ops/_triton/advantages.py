"""Triton backend of ``group_advantages``: one program per group segment.

The groups are laid out as sorted segments without a host sync
(:func:`rubricrl.ops._torch.advantages.group_segments`); the grid has one
program per response, and programs past the last group exit at once. Each
program makes two passes over its group (sum/min/max, then squared deviations)
in fp64 and writes the advantages in the scores' dtype (fp32, or fp64).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rubricrl.ops._torch.advantages import group_segments

BLOCK = 64


@triton.jit
def _group_advantages_kernel(s_ptr, order_ptr, offsets_ptr, counts_ptr, out_ptr, eps,
                             NORM_BY_STD: tl.constexpr, BLOCK: tl.constexpr):
    g = tl.program_id(0)
    n = tl.load(counts_ptr + g)
    if n > 0:
        members = order_ptr + tl.load(offsets_ptr + g)
        offs = tl.arange(0, BLOCK)
        acc = tl.zeros([BLOCK], tl.float64)
        lo = tl.full([BLOCK], float("inf"), tl.float64)
        hi = tl.full([BLOCK], float("-inf"), tl.float64)
        for c0 in range(0, n, BLOCK):
            k = c0 + offs
            idx = tl.load(members + k, mask=k < n, other=0)
            v = tl.load(s_ptr + idx, mask=k < n, other=0.0).to(tl.float64)
            acc += tl.where(k < n, v, 0.0)
            lo = tl.minimum(lo, tl.where(k < n, v, float("inf")))
            hi = tl.maximum(hi, tl.where(k < n, v, float("-inf")))
        mean = tl.sum(acc, axis=0) / n.to(tl.float64)
        no_signal = (n < 2) | (tl.min(lo, axis=0) == tl.max(hi, axis=0))
        denom = 1.0
        if NORM_BY_STD:
            ss = tl.zeros([BLOCK], tl.float64)
            for c0 in range(0, n, BLOCK):
                k = c0 + offs
                idx = tl.load(members + k, mask=k < n, other=0)
                v = tl.load(s_ptr + idx, mask=k < n, other=0.0).to(tl.float64)
                ss += tl.where(k < n, (v - mean) * (v - mean), 0.0)
            denom = tl.sqrt(tl.sum(ss, axis=0) / tl.maximum(n - 1, 1).to(tl.float64)) + eps
        for c0 in range(0, n, BLOCK):
            k = c0 + offs
            idx = tl.load(members + k, mask=k < n, other=0)
            v = tl.load(s_ptr + idx, mask=k < n, other=0.0).to(tl.float64)
            a = tl.where(no_signal, 0.0, (v - mean) / denom)
            tl.store(out_ptr + idx, a.to(out_ptr.dtype.element_ty), mask=k < n)


def group_advantages(scores, group_index, norm_by_std, eps):
    """scores ``[B]``, group_index int64 ``[B]`` -> ``[B]`` fp32 (fp64 for fp64 scores)."""
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    s = scores.to(dtype).contiguous()
    out = torch.empty_like(s)
    b = s.numel()
    if b == 0:
        return out
    order, offsets, counts = group_segments(group_index)
    _group_advantages_kernel[(b,)](s, order, offsets, counts, out, float(eps), NORM_BY_STD=bool(norm_by_std),
                                   BLOCK=BLOCK)
    return out
