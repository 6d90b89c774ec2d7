"""Triton backend of the log-prob ops: row-wise softmax epilogues on logits blocks.

The GEMMs stay with cuBLAS (``torch.mm`` in :mod:`rubricrl.ops._chunked`); these
kernels do what would otherwise take several full passes over a ``[N, cols]``
block in eager PyTorch: one program per row streams the block once for the
running max and once for the exp-sums (online log-sum-exp merged into the row's
state), and once more in the backward to write d logits in place.

GPU-side cost per chunk (not measured here; no GPU on the project's machines):
the forward reads the block twice (4 bytes x N x cols each) and writes 16 bytes
of state per row; the backward reads and writes it once. Eager PyTorch would
make ~8 passes and allocate 4 block-sized temporaries.
"""

from __future__ import annotations

import triton
import triton.language as tl

from rubricrl.ops import _chunked
from rubricrl.ops._chunked import LseState

BLOCK = 1024


@triton.jit
def _lse_block_update_kernel(
    x_ptr, stride_x, n_cols, v0, tgt_ptr, inv_t,
    m_ptr, s_ptr, a_ptr, zt_ptr,
    WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_x
    offs = tl.arange(0, BLOCK)
    # pass 1: block max of z (inv_t > 0, so max(x) * inv_t == max(z))
    xmax = tl.full([BLOCK], float("-inf"), tl.float32)
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + offs
        x = tl.load(x_row + cols, mask=cols < n_cols, other=float("-inf"))
        xmax = tl.maximum(xmax, x)
    xmax_row = tl.max(xmax, axis=0)
    zmax = xmax_row * inv_t
    # a block of -inf logits only (a masked vocabulary tail) subtracts 0: exact zero exps, not NaN
    shift = tl.where(xmax_row == float("-inf"), 0.0, xmax_row)
    # pass 2: sums relative to the block max
    s_acc = tl.zeros([BLOCK], tl.float32)
    a_acc = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + offs
        valid = cols < n_cols
        x = tl.load(x_row + cols, mask=valid, other=0.0)
        d = (x - shift) * inv_t  # difference first: exact 0 at the max, no FMA residue
        e = tl.where(valid, tl.exp(d), 0.0)
        s_acc += e
        if WITH_ENTROPY:
            a_acc += tl.where(e != 0.0, e * d, 0.0)  # -inf logits add 0, not 0 * -inf
    s_blk = tl.sum(s_acc, axis=0)
    m_old = tl.load(m_ptr + row)
    s_old = tl.load(s_ptr + row)
    m_new = tl.maximum(m_old, zmax)
    first = m_old == float("-inf")
    m_old = tl.where(first, m_new, m_old)  # avoids -inf - -inf in the unselected branches
    f_old = tl.where(first, 0.0, tl.exp(m_old - m_new))
    f_blk = tl.where(zmax == float("-inf"), 0.0, tl.exp(zmax - m_new))
    if WITH_ENTROPY:
        a_old = tl.where(first, 0.0, tl.load(a_ptr + row) + s_old * (m_old - m_new))
        a_blk = tl.sum(a_acc, axis=0)
        a_new = tl.where(zmax == float("-inf"), 0.0, f_blk * (a_blk + s_blk * (zmax - m_new)))
        tl.store(a_ptr + row, f_old * a_old + a_new)
    tl.store(s_ptr + row, f_old * s_old + f_blk * s_blk)
    # keep NaN rows NaN (max() may have skipped the NaN, the sum did not)
    tl.store(m_ptr + row, tl.where(s_blk != s_blk, s_blk, m_new))
    t = tl.load(tgt_ptr + row) - v0
    if (t >= 0) & (t < n_cols):
        tl.store(zt_ptr + row, tl.load(x_row + t) * inv_t)


@triton.jit
def _logprob_grad_block_kernel(
    x_ptr, stride_x, n_cols, v0, tgt_ptr, inv_t,
    lse_ptr, ent_ptr, glp_ptr, gent_ptr,
    WITH_ENTROPY: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_x
    offs = tl.arange(0, BLOCK)
    lse = tl.load(lse_ptr + row)
    gl = tl.load(glp_ptr + row)
    ge = 0.0
    shift = 0.0
    if WITH_ENTROPY:
        ge = tl.load(gent_ptr + row)
        shift = tl.load(ent_ptr + row) - lse
    t = tl.load(tgt_ptr + row) - v0
    for c0 in range(0, n_cols, BLOCK):
        cols = c0 + offs
        valid = cols < n_cols
        z = tl.load(x_row + cols, mask=valid, other=0.0) * inv_t
        p = tl.exp(z - lse)
        # d logp(t)/dz = 1[j=t] - p ; dH/dz = -p (z - lse + H)
        dz = tl.where(p != 0.0, -p * (gl + ge * (z + shift)), 0.0) + tl.where(cols == t, gl, 0.0)
        # rows with no upstream gradient (ignored tokens) must read exactly 0, even if p is NaN
        dz = tl.where((gl == 0.0) & (ge == 0.0), 0.0, dz)
        tl.store(x_row + cols, dz * inv_t, mask=valid)


class TritonEpilogue:
    def update(self, x, v0, targets, inv_t, st: LseState) -> None:
        n, cols = x.shape
        a = st.a if st.a is not None else st.s  # placeholder pointer, unused without entropy
        _lse_block_update_kernel[(n,)](
            x, x.stride(0), cols, v0, targets, inv_t, st.m, st.s, a, st.z_tgt,
            WITH_ENTROPY=st.a is not None, BLOCK=min(BLOCK, triton.next_power_of_2(cols)),
        )

    def grad(self, x, v0, targets, inv_t, lse, entropy, g_lp, g_ent) -> None:
        n, cols = x.shape
        _logprob_grad_block_kernel[(n,)](
            x, x.stride(0), cols, v0, targets, inv_t, lse, entropy, g_lp,
            g_ent if g_ent is not None else g_lp,
            WITH_ENTROPY=g_ent is not None, BLOCK=min(BLOCK, triton.next_power_of_2(cols)),
        )


_EPI = TritonEpilogue()


token_fwd, token_bwd, linear_fwd, linear_bwd = _chunked.logprob_ops(_EPI)
