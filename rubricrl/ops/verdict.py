"""Verdict probabilities of a self-grading judge (SPEC §3, judge mode ``logprob``).

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

from . import _backend, _chunked
from ._checks import check_output_projection, compiling, require_integer, require_positive, same_device
from ._impl import implementation, preload

preload("verdict")


class _VerdictProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, yes_ids, no_ids, temperature, with_mass, chunk_size, backend):
        impl = implementation(backend, "verdict", hidden.device)
        p_met, mass = impl.verdict_fwd(hidden, weight, bias, yes_ids, no_ids, temperature, with_mass, chunk_size)
        ctx.save_for_backward(hidden, weight, bias, yes_ids, no_ids, p_met)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(mass)
        ctx.set_materialize_grads(False)
        return p_met, mass

    @staticmethod
    def backward(ctx, g_p, _g_mass):
        """Gradient of p(met) only (the mass is a diagnostic and is not differentiated).

        The backward is ``K = Ky + Kn`` columns wide for any backend, so it is written
        once with torch ops: with q = softmax(z) over yes ∪ no and q^Y over yes only,
        ``dp/dz_j = p * (1[j in yes] q^Y_j - q_j)`` and ``dz/dlogit = 1/T``.
        """
        hidden, weight, bias, yes_ids, no_ids, p_met = ctx.saved_tensors
        if g_p is None:
            return (None,) * 9
        inv_t = 1.0 / ctx.temperature
        ids = torch.cat([yes_ids, no_ids])
        k_yes = yes_ids.shape[0]
        h32 = hidden.float()
        w_v = weight.index_select(0, ids).float()
        z = _chunked.gathered_logits(h32, weight, bias, ids) * inv_t
        q_all = torch.softmax(z, dim=-1)
        q_yes = torch.nn.functional.pad(torch.softmax(z[:, :k_yes], dim=-1), (0, ids.shape[0] - k_yes))
        d_logits = (g_p.float() * p_met)[:, None] * (q_yes - q_all) * inv_t  # [N, K]
        # rows without upstream gradient contribute exactly 0, even with NaN/Inf hidden states
        # (0 * NaN would otherwise reach every verdict row of d weight): see _chunked.zero_rows
        silent = g_p == 0
        d_logits = d_logits.masked_fill(silent[:, None], 0)
        h32 = _chunked.zero_rows(h32, silent)
        d_hidden = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            d_hidden = (d_logits @ w_v).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            d_weight.index_add_(0, ids, d_logits.t() @ h32)
            d_weight = d_weight.to(weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            d_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
            d_bias.index_add_(0, ids, d_logits.sum(0))
            d_bias = d_bias.to(bias.dtype)
        return d_hidden, d_weight, d_bias, None, None, None, None, None, None


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
        bad = (ids < 0) | (ids >= vocab)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name}[{i}] = {int(ids[i])} is outside [0, {vocab}) (weight has V = {vocab} rows)")
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
    chunk_size: int | None = None,
    backend: str | None = None,
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
        temperature: grading temperature T > 0 (SPEC §3).
        return_mass: also return the verdict mass ``sum_{y in yes ∪ no} softmax(l/T)_y`` under
            the full-vocabulary softmax (one extra chunked pass over V, forward only).
        bias: optional ``[V]``.
        chunk_size: vocabulary columns per chunk of the mass pass; default keeps a chunk at
            8M fp32 logits.
        backend: ``torch``, ``cpp`` or ``triton``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        fp32 ``[...]`` p_met in [0, 1]; with ``return_mass`` the tuple ``(p_met, mass)``,
        mass fp32 ``[...]`` in [0, 1]. ``p_met`` is differentiable in hidden, weight and
        bias (a ``K``-column backward); the mass is not differentiated.

    Raises:
        ValueError: bad shapes/dtypes, empty, repeated, overlapping or out-of-range ids,
            temperature <= 0.
    """
    check_output_projection(hidden, weight, bias, chunk_size)
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
    p_met, mass = _VerdictProbs.apply(
        flat,
        weight,
        bias,
        yes.long().contiguous(),
        no.long().contiguous(),
        float(temperature),
        bool(return_mass),
        chunk_size,
        name,
    )
    p_met = p_met.view(lead)
    return (p_met, mass.view(lead)) if return_mass else p_met
