"""Segmented rubric scores (docs/algorithms.md §3) for many responses at once.

Response ``r`` owns the rubric items ``item_offsets[r]:item_offsets[r+1]`` (CSR
offsets). Its score is ``sum_i p_i * met_i / sum_i max(p_i, 0)``, clipped to
[0, 1] by default. ``met`` may be hard (bool / 0-1) or soft (probabilities of
"met", e.g. from :func:`rubricrl.ops.verdict_probs`); the score is then the
expected score before clipping, and it is differentiable in ``met``.
"""

from __future__ import annotations

import torch

from . import _backend
from ._checks import compiling, require_floating, require_integer, same_device
from ._library import call


def _check_offsets(item_offsets: torch.Tensor, num_items: int) -> None:
    """Offsets start at 0, never decrease and end at I (skipped under torch.compile)."""
    if compiling():
        return
    first, last = int(item_offsets[0]), int(item_offsets[-1])
    if first != 0:
        raise ValueError(f"item_offsets[0] must be 0, got {first} (item_offsets shape {tuple(item_offsets.shape)})")
    if last != num_items:
        raise ValueError(
            f"item_offsets[-1] must equal the number of items I = {num_items} (met/points shape "
            f"[{num_items}]), got {last}"
        )
    drop = item_offsets[1:] < item_offsets[:-1]
    if bool(drop.any()):
        r = int(drop.nonzero()[0, 0])
        raise ValueError(
            f"item_offsets must be non-decreasing: item_offsets[{r + 1}] = {int(item_offsets[r + 1])} < "
            f"item_offsets[{r}] = {int(item_offsets[r])}"
        )


def _check_values(met: torch.Tensor, points: torch.Tensor) -> None:
    """met in [0, 1] and points finite (skipped under torch.compile)."""
    if compiling() or met.numel() == 0:
        return
    if met.dtype != torch.bool:
        bad = ~((met >= 0) & (met <= 1))  # also catches NaN
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"met[{i}] = {float(met[i])} is outside [0, 1] (met shape {tuple(met.shape)})")
    bad = ~torch.isfinite(points)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"points[{i}] = {float(points[i])} is not finite (points shape {tuple(points.shape)})")


def rubric_scores(
    met: torch.Tensor,
    points: torch.Tensor,
    item_offsets: torch.Tensor,
    *,
    clip: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Rubric score of each response: ``sum_i p_i * met_i / sum_i max(p_i, 0)`` over its items.

    Args:
        met: ``[I]`` bool (hard verdicts) or floating in [0, 1] (soft verdicts, e.g. p(met)).
        points: ``[I]`` floating; may be negative (undesirable behaviour; then "met" means
            the behaviour is present).
        item_offsets: integer ``[R+1]`` CSR offsets: response ``r`` owns items
            ``item_offsets[r]:item_offsets[r+1]``; starts at 0, non-decreasing, ends at I.
        clip: clip the score to [0, 1] (docs/algorithms.md §3); ``False`` returns the raw ratio.
        backend: ``torch``, ``cpp`` or ``triton``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        fp32 ``[R]``. A response with no positive points (including one with no items)
        has no defined score: NaN. Differentiable in a floating ``met`` (zero gradient
        where the clip is active, none from NaN scores); not in ``points``.

    Raises:
        ValueError: bad shapes or dtypes, offsets not starting at 0 / decreasing / not
            ending at I, ``met`` outside [0, 1] or non-finite ``points`` (naming the index).
    """
    if not isinstance(met, torch.Tensor):
        raise ValueError(f"met must be a torch.Tensor, got {type(met).__name__}")
    if met.dtype != torch.bool:
        require_floating("met", met)
    require_floating("points", points)
    require_integer("item_offsets", item_offsets)
    if met.dim() != 1 or tuple(points.shape) != tuple(met.shape):
        raise ValueError(
            f"met and points must both be 1-D [I]: met {tuple(met.shape)}, points {tuple(points.shape)}"
        )
    if item_offsets.dim() != 1 or item_offsets.numel() < 1:
        raise ValueError(f"item_offsets must be 1-D [R+1] with R >= 0, got shape {tuple(item_offsets.shape)}")
    device = same_device(met=met, points=points, item_offsets=item_offsets)
    offsets = item_offsets.long().contiguous()
    _check_offsets(offsets, met.shape[0])
    _check_values(met, points)
    name = _backend.resolve("rubric_scores", device, backend)
    if met.dtype == torch.bool:
        met = met.float()
    num_responses = offsets.shape[0] - 1
    if num_responses == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    return call("rubric_scores", name, device, met.contiguous(), points.contiguous(), offsets, bool(clip))[0]
