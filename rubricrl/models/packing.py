"""Padding-free (packed) forward passes: several sequences in one row, no padding tokens.

A micro-batch of ``S`` sequences of lengths ``L_1 .. L_S`` runs as one row of
``N = sum L_i`` tokens instead of ``S`` rows padded to ``max L_i``. Two things keep the
sequences apart:

* ``position_ids`` restart at 0 for every sequence (RoPE sees each sequence from its start);
* attention is causal *within* each sequence only (block-diagonal causal): the row's
  cumulative lengths ``cu_seqlens`` ``[S + 1]`` (int32, ``cu[0] = 0``, ``cu[-1] = N``) are
  given to the decoder as ``cu_seq_lens_q`` / ``cu_seq_lens_k`` keyword arguments, which
  transformers forwards untouched to every attention layer, and the attention function
  ``rubricrl_varlen`` registered here reads them.

``rubricrl_varlen`` attends each sequence to itself only, so attention costs
``sum L_i^2`` (not ``N^2`` as a dense block-diagonal mask would, nor ``S * max L^2`` as
padding does):

* on a CUDA device with ``flash_attn`` installed and a bf16/fp16 model,
  ``flash_attn_varlen_func`` (the kernel verl's remove-padding uses) in one call:
  ``_flash_varlen`` (not exercised by the CPU test suite);
* elsewhere (the CPU), one causal ``scaled_dot_product_attention`` per sequence, GQA heads
  expanded by the kernel (``enable_gqa``): ``_sdpa_per_sequence``.

transformers itself also detects packing from ``position_ids`` (``masking_utils.
find_packed_sequence_indices``, when ``attention_mask`` is None and there is no cache) and
then builds a dense ``[1, 1, N, N]`` block-diagonal mask for sdpa/eager: correct, but every
query is computed against every key of the row. The tests use that path as the reference.

The attention implementation is switched only inside :func:`packed_hidden_states` (the
model's config is restored on exit), like ``rubricrl.engines.split_attention``. The switch
is on the model's config object, so no other thread may run a forward of the same model
object meanwhile (a weight snapshot, as ``pipeline.eta``'s producer samples on, is another
object).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch.nn import functional as F
from transformers import AttentionInterface

__all__ = ["NAME", "pack_sequences", "packed_hidden_states", "packing_unsupported"]

NAME = "rubricrl_varlen"

#: Model types whose decoders forward attention keyword arguments (``cu_seq_lens_q`` ...) to
#: every attention layer and use only full causal attention by default; ``optim.packing=auto``
#: packs these (checked by the tests on Qwen3, the tiny model's architecture).
PACKABLE_MODEL_TYPES = ("qwen3", "qwen2", "llama")


def _text_config(model: torch.nn.Module):
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def packing_unsupported(model: torch.nn.Module) -> str | None:
    """Why ``model`` cannot run packed, or None when it can (full causal attention only,
    a model type of :data:`PACKABLE_MODEL_TYPES`)."""
    config = _text_config(model)
    if config.model_type not in PACKABLE_MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {list(PACKABLE_MODEL_TYPES)}"
    layer_types = getattr(config, "layer_types", None) or []
    if any(t != "full_attention" for t in layer_types) or getattr(config, "use_sliding_window", False):
        return "the model has sliding-window layers (packing handles full causal attention only)"
    if getattr(config, "attention_dropout", 0.0):
        return "the model has attention dropout"
    return None


def pack_sequences(sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [1, N] int64, position_ids [1, N] int64, cu_seqlens [S + 1] int32)`` of
    the non-empty ``sequences`` laid end to end.

    Raises:
        ValueError: no sequence, or an empty one (it would have no position 0).
    """
    if not sequences:
        raise ValueError("pack_sequences: no sequences")
    lengths = [len(s) for s in sequences]
    if min(lengths) == 0:
        raise ValueError(f"pack_sequences: sequence {lengths.index(0)} is empty")
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long).unsqueeze(0)
    positions = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths]).unsqueeze(0)
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32), 0)
    return ids, positions, cu


@contextlib.contextmanager
def _varlen_attention(model: torch.nn.Module) -> Iterator[None]:
    config = _text_config(model)
    saved = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = saved


def packed_hidden_states(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor
) -> torch.Tensor:
    """Final-norm hidden states ``[1, N, H]`` (model dtype) of a packed row
    (:func:`pack_sequences`), through the model's base transformer (no LM head).

    Equal to running each sequence on its own (within fp32 rounding; tested)."""
    reason = packing_unsupported(model)
    if reason is not None:
        raise ValueError(f"cannot run packed sequences: {reason}")
    device = next(model.parameters()).device
    cu = cu_seqlens.to(device=device, dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    with _varlen_attention(model):
        out = model.base_model(
            input_ids=input_ids.to(device),
            position_ids=position_ids.to(device),
            attention_mask=None,
            use_cache=False,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=longest,
            max_length_k=longest,
        )
    return out.last_hidden_state


def _flash_varlen():
    """``flash_attn.flash_attn_varlen_func`` where importable, else None."""
    try:
        from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
    except ImportError:
        return None
    return flash_attn_varlen_func


def _sdpa_per_sequence(query, key, value, cu: list[int], scale: float) -> torch.Tensor:
    """``[N, heads, D]``: causal attention of each ``cu`` segment on its own."""
    group = query.shape[1] // key.shape[1]
    outs = []
    for start, end in zip(cu[:-1], cu[1:]):
        q, k, v = (x[:, :, start:end] for x in (query, key, value))
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=group > 1))
    return torch.cat(outs, dim=2)[0].transpose(0, 1)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Block-diagonal causal attention of a packed row: ``query [1, heads, N, D]``,
    ``key``/``value`` ``[1, kv_heads, N, D]`` -> ``[1, N, heads, D]`` (transformers' layout)."""
    if cu_seq_lens_q is None or query.shape[0] != 1 or attention_mask is not None:
        raise ValueError("rubricrl_varlen attention needs one packed row, cu_seq_lens_q and no attention_mask")
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    # flash-attn kernels take fp16 / bf16 only; an fp32 model runs the per-sequence SDPA
    flash = _flash_varlen() if query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) else None
    if flash is not None:
        # flash_attn takes [N, heads, D] and handles GQA itself
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
        out = flash(q, k, v, cu_seq_lens_q, cu_seq_lens_q, max_length_q, max_length_q, softmax_scale=scale, causal=True)
    else:
        out = _sdpa_per_sequence(query, key, value, cu_seq_lens_q.tolist(), scale)
    return out.unsqueeze(0), None


AttentionInterface.register(NAME, varlen_attention_forward)
