"""Token log-probabilities and entropies, from logits or fused with the output projection.

``token_logprobs`` reads them from materialised logits; ``fused_linear_logprobs``
goes from hidden states and the output projection straight to per-token
values, vocabulary chunk by vocabulary chunk, never holding ``[N, V]`` logits.
Both are differentiable (the fused one in hidden, weight and bias) and return
fp32 whatever the input dtype (fp32, bf16, fp16; accumulation is fp32).
"""

from __future__ import annotations

import torch

from . import _backend
from ._checks import (
    check_output_projection,
    check_targets_in_range,
    chunk_option,
    require_floating,
    require_integer,
    require_positive,
    same_device,
)
from ._library import call


def _prepare_targets(targets: torch.Tensor, vocab: int, ignore_index: int) -> torch.Tensor:
    """Flattened int64 targets with ignored positions mapped to -1 (outside [0, V) for every kernel)."""
    check_targets_in_range(targets, vocab, ignore_index)
    flat = targets.reshape(-1).long()
    return torch.where(flat == ignore_index, torch.full_like(flat, -1), flat).contiguous()


def token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    backend: str | None = None,
):
    """log p(target) under ``softmax(logits / temperature)``, per token.

    Args:
        logits: ``[..., V]`` fp32/bf16/fp16.
        targets: integer ``[...]`` (the leading dims of ``logits``); positions equal to
            ``ignore_index`` give 0 and receive no gradient.
        temperature: > 0.
        return_entropy: also return the entropy of the temperature-scaled distribution.
        backend: ``torch``, ``cpp`` or ``triton``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        fp32 ``[...]`` log-probs, and fp32 ``[...]`` entropies when ``return_entropy``.
    """
    require_floating("logits", logits)
    require_integer("targets", targets)
    require_positive("temperature", temperature)
    if logits.dim() < 1 or tuple(logits.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"logits [..., V] and targets [...] must share leading dims: logits {tuple(logits.shape)}, "
            f"targets {tuple(targets.shape)}"
        )
    device = same_device(logits=logits, targets=targets)
    vocab = logits.shape[-1]
    name = _backend.resolve("token_logprobs", device, backend)
    flat_targets = _prepare_targets(targets, vocab, ignore_index)
    logprobs, entropy, _ = call(
        "token_logprobs", name, device, logits.reshape(-1, vocab), flat_targets, float(temperature),
        bool(return_entropy),
    )
    logprobs = logprobs.view(targets.shape)
    return (logprobs, entropy.view(targets.shape)) if return_entropy else logprobs


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    vocab_chunk: int | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
):
    """log p(target) of ``softmax((hidden @ weight.T + bias) / temperature)`` without ``[N, V]`` logits.

    Args:
        hidden: ``[..., H]`` fp32/bf16/fp16 (e.g. the final-norm hidden states).
        weight: ``[V, H]`` output projection (lm_head), same dtype family.
        targets: integer ``[...]`` = ``hidden.shape[:-1]``; ``ignore_index`` positions give 0
            and no gradient.
        bias: optional ``[V]``.
        vocab_chunk: vocabulary columns per chunk; default keeps a chunk at 8M fp32 logits (32 MiB).
        chunk_size: deprecated name of ``vocab_chunk``.
        backend: ``torch``, ``cpp`` or ``triton``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        fp32 ``[...]`` log-probs (and entropies with ``return_entropy``). Gradients flow to
        hidden, weight and bias in their own dtypes.
    """
    check_output_projection(hidden, weight, bias)
    vocab_chunk = chunk_option("vocab_chunk", vocab_chunk, "vocabulary columns", chunk_size)
    require_integer("targets", targets)
    require_positive("temperature", temperature)
    if tuple(hidden.shape[:-1]) != tuple(targets.shape):
        raise ValueError(
            f"targets must have hidden's leading dims: hidden {tuple(hidden.shape)}, targets {tuple(targets.shape)}"
        )
    device = same_device(hidden=hidden, weight=weight, targets=targets, bias=bias)
    vocab = weight.shape[0]
    name = _backend.resolve("fused_linear_logprobs", device, backend)
    flat_targets = _prepare_targets(targets, vocab, ignore_index)
    logprobs, entropy, _ = call(
        "fused_linear_logprobs", name, device, hidden.reshape(-1, hidden.shape[-1]), weight, bias, flat_targets,
        float(temperature), bool(return_entropy), vocab_chunk,
    )
    logprobs = logprobs.view(targets.shape)
    return (logprobs, entropy.view(targets.shape)) if return_entropy else logprobs
