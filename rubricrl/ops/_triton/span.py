"""Triton backend of span_mean_prob.

Per-token log-probs come from the chunked GEMM loop with the Triton online
log-sum-exp epilogue (rubricrl/ops/_triton/logprobs.py); one more kernel turns them into
probabilities and adds them, with a count, into their span's slot. Spans are
given by an index per token in any order, hence the atomics (fp32 sums of at
most M terms; the order of the additions may vary between GPU runs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rubricrl.ops import _chunked

from .logprobs import TritonEpilogue

BLOCK = 256

_EPI = TritonEpilogue()


@triton.jit
def _span_accumulate_kernel(lp_ptr, span_ptr, sum_ptr, count_ptr, m, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < m
    lp = tl.load(lp_ptr + offs, mask=valid, other=0.0)
    span = tl.load(span_ptr + offs, mask=valid, other=0)
    tl.atomic_add(sum_ptr + span, tl.exp(lp), mask=valid)
    tl.atomic_add(count_ptr + span, tl.full([BLOCK], 1.0, tl.float32), mask=valid)


def span_fwd(hidden, weight, bias, targets, span_index, num_spans, temperature, chunk_size):
    """hidden [M,H], weight [V,H], targets/span_index int64 [M] -> fp32 [num_spans] (NaN if empty)."""
    logprobs = _chunked.linear_lse(_EPI, hidden, weight, bias, targets, temperature, chunk_size)[2]
    m = logprobs.shape[0]
    sums = torch.zeros(num_spans, dtype=torch.float32, device=hidden.device)
    counts = torch.zeros_like(sums)
    if m > 0 and num_spans > 0:
        _span_accumulate_kernel[(triton.cdiv(m, BLOCK),)](logprobs, span_index, sums, counts, m, BLOCK=BLOCK)
    return sums / counts  # 0 / 0 = NaN for an empty span
