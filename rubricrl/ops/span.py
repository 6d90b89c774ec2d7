"""RLPR probability reward: mean token probability over marked spans (docs/algorithms.md §4).

The caller passes only the span positions: the hidden states that predict the
span tokens (e.g. the reference answer substituted into a response), the span
tokens and, per position, which span it belongs to. The output projection runs
for those ``M`` rows only, vocabulary chunk by vocabulary chunk through the
fused log-sum-exp, never ``[M, V]`` logits at once. Forward only: a reward
needs no gradient (the outputs do not require grad).
"""

from __future__ import annotations

import torch

from . import _backend
from ._checks import (
    check_index_range,
    check_output_projection,
    chunk_option,
    require_integer,
    require_positive,
    same_device,
)
from ._library import call


@torch.no_grad()
def span_mean_prob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    span_index: torch.Tensor,
    num_spans: int,
    *,
    temperature: float = 1.0,
    bias: torch.Tensor | None = None,
    vocab_chunk: int | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean probability of the span tokens, per span: ``mean_{t in span s} p(target_t)``.

    ``p(target_t) = softmax((hidden_t @ weight.T + bias) / T)[target_t]``; the mean is the
    arithmetic mean of probabilities (RLPR), not the exponential of the mean log-prob.

    Args:
        hidden: ``[M, H]`` fp32/bf16/fp16, the hidden states that predict the span tokens
            (position t-1 for token t), gathered from the batch by the caller.
        weight: ``[V, H]`` output projection (lm_head).
        targets: integer ``[M]`` span tokens, in [0, V).
        span_index: integer ``[M]`` in [0, num_spans): the span of each position (any order).
        num_spans: number of spans S >= 0.
        temperature: T > 0 (RLPR scores at the rollout temperature).
        bias: optional ``[V]``.
        vocab_chunk: vocabulary columns per chunk; default keeps a chunk at 8M fp32 logits.
        chunk_size: deprecated name of ``vocab_chunk``.
        backend: ``torch``, ``cpp`` or ``triton``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        fp32 ``[num_spans]`` in [0, 1]; NaN for a span with no tokens. Not differentiable
        (computed under ``torch.no_grad``).

    Raises:
        ValueError: bad shapes/dtypes, a target outside [0, V), a span index outside
            [0, num_spans), num_spans < 0, temperature <= 0.
    """
    check_output_projection(hidden, weight, bias)
    require_integer("targets", targets)
    require_integer("span_index", span_index)
    require_positive("temperature", temperature)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [M, H], got {tuple(hidden.shape)}")
    m = hidden.shape[0]
    if tuple(targets.shape) != (m,) or tuple(span_index.shape) != (m,):
        raise ValueError(
            f"targets and span_index must be [M] = [{m}] (hidden {tuple(hidden.shape)}): "
            f"targets {tuple(targets.shape)}, span_index {tuple(span_index.shape)}"
        )
    if isinstance(num_spans, bool) or not isinstance(num_spans, int) or num_spans < 0:
        raise ValueError(f"num_spans must be an int >= 0, got {num_spans!r}")
    vocab_chunk = chunk_option("vocab_chunk", vocab_chunk, "vocabulary columns", chunk_size)
    device = same_device(hidden=hidden, weight=weight, targets=targets, span_index=span_index, bias=bias)
    # no ignore_index: the caller passes span positions only, so every target is a real
    # token and every position belongs to a span
    check_index_range("targets", targets, weight.shape[0], bound_name="V")
    check_index_range("span_index", span_index, num_spans, bound_name="num_spans")
    name = _backend.resolve("span_mean_prob", device, backend)
    if m == 0:
        return torch.full((num_spans,), float("nan"), dtype=torch.float32, device=device)
    return call(
        "span_mean_prob", name, device, hidden, weight, bias, targets.long().contiguous(),
        span_index.long().contiguous(), num_spans, float(temperature), vocab_chunk,
    )
