"""KV-cache helpers for prefix sharing (one prefix, many continuations).

A judge scores many rubric items for one response: all of them share the judge
instructions, the conversation and the response. Compute that prefix once with
``engine.forward_with_cache(prefix_ids)`` (batch 1), then give every batch of
continuations its own cache with ``expand_cache(prefix_cache, k)``::

    _, prefix = engine.forward_with_cache(prefix_ids)          # [1, P]
    hidden, _ = engine.forward_with_cache(items_ids,             # [k, T], right padded
                                          expand_cache(prefix, k),
                                          attention_mask=mask)   # [k, P + T]

``forward_with_cache`` extends the cache it is given, so a cache must not be passed
twice; ``expand_cache`` returns a new cache and leaves its argument unchanged, so the
prefix cache can be expanded again for the next batch.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache

__all__ = ["cache_batch_size", "expand_cache", "select_rows"]


def expand_cache(cache: DynamicCache, repeats: int) -> DynamicCache:
    """Return a new cache whose batch entry ``i * repeats + r`` is entry ``i`` of ``cache``.

    Args:
        cache: a ``transformers.DynamicCache`` with key/value tensors ``[B, kv_heads, P, head_dim]``.
        repeats: copies of each batch entry (>= 1); ``repeats=1`` is a cheap independent copy.

    Returns:
        A ``DynamicCache`` with batch size ``B * repeats`` (the layout of
        ``repeat_interleave``, i.e. of ``generate(num_return_sequences=repeats)``).
        ``cache`` itself is not modified.
    """
    if not isinstance(cache, DynamicCache):
        raise ValueError(f"cache must be a transformers.DynamicCache, got {type(cache).__name__}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    # Shallow copies of the cache and its layers share the key/value tensors. That is safe
    # for dynamic layers: their update() concatenates into new tensors and never writes in
    # place, so extending the copy leaves the original untouched.
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    if repeats > 1:
        out.batch_repeat_interleave(repeats)
    return out


def cache_batch_size(cache: DynamicCache) -> int | None:
    """Batch size of the tensors held in ``cache``, or None while it holds no tokens."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.numel() > 0:
            return int(keys.shape[0])
    return None


def select_rows(cache: DynamicCache, rows: torch.Tensor, batch: int) -> DynamicCache:
    """A new cache whose entry ``j`` is entry ``rows[j]`` of ``cache`` (batch size ``batch``),
    which is left unchanged. ``rows`` is an int64 ``[n]`` tensor of indices into the batch."""
    n = rows.numel()
    if n % batch == 0 and torch.equal(rows, torch.arange(batch).repeat_interleave(n // batch)):
        return expand_cache(cache, n // batch)  # the common case: every item of every response
    out = expand_cache(cache, 1)
    out.batch_select_indices(rows.to(_cache_device(cache)))
    return out


def _cache_device(cache: DynamicCache) -> torch.device:
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None:
            return keys.device
    return torch.device("cpu")
