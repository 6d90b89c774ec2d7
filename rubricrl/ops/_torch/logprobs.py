"""Plain-PyTorch backend of the log-prob ops: the chunked algorithm, readable.

Same online log-sum-exp and the same analytic backward as the C++ and Triton
backends, written with torch ops (it materialises a few ``[N, cols]``
temporaries per chunk, never ``[N, V]``). It is the fallback when the extension
is not built and the baseline "rubricrl reference (chunked)" in the benchmarks.
"""

from __future__ import annotations

import torch

from .. import _chunked
from .._chunked import LseState


class TorchEpilogue:
    def update(self, x, v0, targets, inv_t, st: LseState) -> None:
        xmax = x.amax(dim=1)  # propagates NaN, so a NaN row stays NaN
        zmax = xmax * inv_t
        # a block of -inf logits only (a masked vocabulary tail) subtracts 0: zero exps, not NaN
        shift = torch.where(xmax == -torch.inf, torch.zeros_like(xmax), xmax)
        d = (x - shift[:, None]) * inv_t  # difference before scaling, as the C++ and Triton kernels
        z = x * inv_t
        e = torch.exp(d)
        s_blk = e.sum(1)
        m_new = torch.maximum(st.m, zmax)
        first = torch.isinf(st.m) & (st.m < 0)
        f_old = torch.where(first, torch.zeros_like(m_new), torch.exp(st.m - m_new))
        f_blk = torch.where(zmax == -torch.inf, torch.zeros_like(m_new), torch.exp(zmax - m_new))
        if st.a is not None:
            a_old = torch.where(first, torch.zeros_like(m_new), st.a + st.s * (st.m - m_new))
            e_d = torch.where(e != 0, e * d, torch.zeros_like(e))  # -inf logits add 0, not 0 * -inf
            a_blk = torch.where(zmax == -torch.inf, torch.zeros_like(m_new), f_blk * (e_d.sum(1) + s_blk * (zmax - m_new)))
            st.a.copy_(f_old * a_old + a_blk)
        st.s.copy_(f_old * st.s + f_blk * s_blk)
        st.m.copy_(m_new)
        local = targets - v0
        hit = (local >= 0) & (local < x.shape[1])
        rows = hit.nonzero().squeeze(1)
        st.z_tgt[rows] = z[rows, local[rows]]

    def grad(self, x, v0, targets, inv_t, lse, entropy, g_lp, g_ent) -> None:
        z = x * inv_t
        p = torch.exp(z - lse[:, None])
        coef = g_lp[:, None].expand_as(p)
        if g_ent is not None:
            # dH/dz_j = -p_j (z_j - lse + H)
            coef = coef + g_ent[:, None] * (z - lse[:, None] + entropy[:, None])
        dz = torch.where(p != 0, -p * coef, torch.zeros_like(p))  # -inf logits: 0, not 0 * inf
        # rows without upstream gradient (ignored tokens) read exactly 0, even if p is NaN
        silent = g_lp == 0 if g_ent is None else (g_lp == 0) & (g_ent == 0)
        dz[silent] = 0.0
        local = targets - v0
        hit = (local >= 0) & (local < x.shape[1])
        rows = hit.nonzero().squeeze(1)
        dz[rows, local[rows]] += g_lp[rows]
        x.copy_(dz * inv_t)


_EPI = TorchEpilogue()


token_fwd, token_bwd, linear_fwd, linear_bwd = _chunked.logprob_ops(_EPI)
