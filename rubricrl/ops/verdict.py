"""Verdict probabilities of a self-grading judge (docs/algorithms.md §3, judge mode ``logprob``).

At the verdict position of a judge prompt, ``p(met) = sum_{yes} e^{l/T} /
sum_{yes ∪ no} e^{l/T}`` needs only the output-projection rows of the verdict
tokens: gather those ``Ky + Kn`` rows of ``weight`` and run a ``[N, H] x [H, K]``
GEMM instead of the ``[N, V]`` one. The verdict mass (how much of the
full-vocabulary softmax falls on the verdict tokens, a format diagnostic) needs
the log-sum-exp over all ``V`` logits; that runs through the fused chunked
log-sum-exp (forward only), never holding ``[N, V]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import _backend
from ._checks import (
    check_index_range,
    check_output_projection,
    chunk_option,
    compiling,
    require_integer,
    require_positive,
    same_device,
)
from ._library import call


def _as_ids(name: str, ids, device: torch.device) -> torch.Tensor:
    if isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        ids = torch.as_tensor(list(ids), dtype=torch.int64, device=device)
    require_integer(name, ids)
    if ids.dim() != 1 or ids.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    return ids


def _check_ids(yes_ids: torch.Tensor, no_ids: torch.Tensor, vocab: int) -> None:
    """Ids in [0, V), no id repeated within a set or shared by both (skipped under torch.compile)."""
    if compiling():
        return
    for name, ids in (("yes_ids", yes_ids), ("no_ids", no_ids)):
        check_index_range(name, ids, vocab)
        uniq, counts = torch.unique(ids, return_counts=True)
        if bool((counts > 1).any()):
            raise ValueError(f"{name} repeats token id(s) {uniq[counts > 1].tolist()}; each id must appear once")
    shared = yes_ids[torch.isin(yes_ids, no_ids)]
    if shared.numel() > 0:
        raise ValueError(f"yes_ids and no_ids overlap: token id(s) {shared.tolist()} are in both")


def verdict_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    yes_ids,
    no_ids,
    *,
    temperature: float = 1.0,
    return_mass: bool = False,
    bias: torch.Tensor | None = None,
    vocab_chunk: int | None = None,
    backend: str | None = None,
    chunk_size: int | None = None,
):
    """p(met) of a judge verdict from the hidden state at the verdict position.

    ``p_met = sum_{y in yes} e^{l_y/T} / sum_{y in yes ∪ no} e^{l_y/T}`` with
    ``l = hidden @ weight.T + bias``, computed from only the verdict rows of ``weight``.

    Args:
        hidden: ``[..., H]`` fp32/bf16/fp16, the final hidden states at the verdict positions.
        weight: ``[V, H]`` output projection (lm_head).
        yes_ids: integer ``[Ky]`` token ids meaning "met" (e.g. the tokenizations of "true");
            a list of ints is accepted too.
        no_ids: integer ``[Kn]`` token ids meaning "not met". Both non-empty, ids in [0, V),
            no id repeated or shared between the two.
        temperature: grading temperature T > 0 (docs/algorithms.md §3).
        return_mass: also return the verdict mass ``sum_{y in yes ∪ no} softmax(l/T)_y`` under
            the full-vocabulary softmax (one extra chunked pass over V, forward only).
        bias: optional ``[V]``.
        vocab_chunk: vocabulary columns per chunk of the mass pass; default keeps a chunk at
            8M fp32 logits.
        chunk_size: deprecated name of ``vocab_chunk``.
        backend: ``torch``, ``cpp`` or ``triton``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        fp32 ``[...]`` p_met in [0, 1]; with ``return_mass`` the tuple ``(p_met, mass)``,
        mass fp32 ``[...]`` in [0, 1]. ``p_met`` is differentiable in hidden, weight and
        bias (a ``K``-column backward); the mass is not differentiated.

    Raises:
        ValueError: bad shapes/dtypes, empty, repeated, overlapping or out-of-range ids,
            temperature <= 0.
    """
    check_output_projection(hidden, weight, bias)
    vocab_chunk = chunk_option("vocab_chunk", vocab_chunk, "vocabulary columns", chunk_size)
    require_positive("temperature", temperature)
    yes = _as_ids("yes_ids", yes_ids, hidden.device)
    no = _as_ids("no_ids", no_ids, hidden.device)
    device = same_device(hidden=hidden, weight=weight, yes_ids=yes, no_ids=no, bias=bias)
    vocab = weight.shape[0]
    _check_ids(yes, no, vocab)
    name = _backend.resolve("verdict_probs", device, backend)
    lead = hidden.shape[:-1]
    flat = hidden.reshape(-1, hidden.shape[-1])
    if flat.shape[0] == 0:
        empty = torch.empty(lead, dtype=torch.float32, device=device)
        return (empty, empty.clone()) if return_mass else empty
    p_met, mass = call(
        "verdict_probs", name, device, flat, weight, bias, yes.long().contiguous(), no.long().contiguous(),
        float(temperature), bool(return_mass), vocab_chunk,
    )
    p_met = p_met.view(lead)
    return (p_met, mass.view(lead)) if return_mass else p_met
