"""Padding and position ids of token batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["left_pad", "position_ids_from_mask", "right_pad"]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token rows into ``(input_ids [B, T] int64, attention_mask [B, T] int64)``."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if row:
            ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[b, width - len(row) :] = 1
    return ids, mask


def right_pad(
    rows: Sequence[Sequence[float]], pad: float, *, dtype: torch.dtype = torch.long
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad rows into ``(values [B, T] dtype, mask [B, T] int64)``, ``T`` the longest row.

    ``dtype`` is int64 for token ids; float for per-token values (log-probs) padded with 0.
    """
    width = max(len(r) for r in rows)
    values = torch.full((len(rows), width), pad, dtype=dtype)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        if len(row):
            values[b, : len(row)] = torch.as_tensor(row, dtype=dtype)
            mask[b, : len(row)] = 1
    return values, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: ``[B, T]`` int64, 0 at padding.

    With left padding the first real token gets position 0, exactly as
    ``transformers.GenerationMixin.generate`` numbers them, so a teacher-forced
    forward of a padded batch sees the same RoPE positions as sampling did.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)
