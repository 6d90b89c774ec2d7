"""Triton backend of verdict_probs.

The ``[N, H] x [H, K]`` GEMM over the gathered verdict rows stays with cuBLAS
(``torch.mm``); one program per row then splits the ``K = Ky + Kn`` verdict
logits into p(met) and, with the mass, combines the verdict log-sum-exp with the
full-vocabulary one from the chunked Triton epilogue (rubricrl/ops/_triton/logprobs.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rubricrl.ops import _chunked

from .logprobs import TritonEpilogue

BLOCK_K = 256

_EPI = TritonEpilogue()


@triton.jit
def _verdict_rows_kernel(
    x_ptr, stride_x, k, k_yes, inv_t, m_full_ptr, log_s_full_ptr, p_ptr, mass_ptr,
    WITH_MASS: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_x
    offs = tl.arange(0, BLOCK)
    xmax = tl.full([BLOCK], float("-inf"), tl.float32)
    for c0 in range(0, k, BLOCK):
        cols = c0 + offs
        xmax = tl.maximum(xmax, tl.load(x_row + cols, mask=cols < k, other=float("-inf")))
    x_max = tl.max(xmax, axis=0)
    s_yes = tl.zeros([BLOCK], tl.float32)
    s_no = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, k, BLOCK):
        cols = c0 + offs
        valid = cols < k
        x = tl.load(x_row + cols, mask=valid, other=0.0)
        # scale the difference, not the logit: exact for nearby logits even at |l| ~ 1e4
        e = tl.where(valid, tl.exp((x - x_max) * inv_t), 0.0)
        s_yes += tl.where(cols < k_yes, e, 0.0)
        s_no += tl.where(cols < k_yes, 0.0, e)
    sy = tl.sum(s_yes, axis=0)
    s_all = sy + tl.sum(s_no, axis=0)  # >= sy term by term, so p_met <= 1 exactly
    tl.store(p_ptr + row, sy / s_all)
    if WITH_MASS:
        # lse_verdict - lse_full with each lse as m + log_s (see _chunked.linear_lse): the
        # offsets have the same form (max(x) * inv_t) and cancel when the verdict holds the top logit
        d_m = x_max * inv_t - tl.load(m_full_ptr + row)
        mass = tl.exp(d_m + (tl.log(s_all) - tl.load(log_s_full_ptr + row)))
        tl.store(mass_ptr + row, tl.where(mass > 1.0, 1.0, mass))  # rounding; NaN stays NaN


def verdict_fwd(hidden, weight, bias, yes_ids, no_ids, temperature, with_mass, chunk_size):
    """hidden [N,H], weight [V,H], ids int64 -> (p_met [N], mass [N] or [0]), fp32."""
    ids = torch.cat([yes_ids, no_ids])
    logits = _chunked.gathered_logits(hidden, weight, bias, ids).contiguous()
    n, k = logits.shape
    p_met = torch.empty(n, dtype=torch.float32, device=logits.device)
    if with_mass:
        m_full, log_s_full, _ = _chunked.linear_lse(_EPI, hidden, weight, bias, None, temperature, chunk_size)
        mass = torch.empty_like(p_met)
    else:
        m_full = log_s_full = mass = p_met  # placeholder pointers, unused without the mass
    _verdict_rows_kernel[(n,)](
        logits, logits.stride(0), k, yes_ids.shape[0], 1.0 / temperature, m_full, log_s_full, p_met, mass,
        WITH_MASS=bool(with_mass), BLOCK=min(BLOCK_K, triton.next_power_of_2(k)),
    )
    return p_met, (mass if with_mass else p_met.new_empty(0))
