"""Group-relative advantages (docs/algorithms.md §2): each response's score against its group's.

``A_i = (S_i - mean_g) / (std_g + eps)`` with the unbiased std, or ``S_i - mean_g``
with ``norm_by_std=False`` (Dr. GRPO). A group of one response and a group whose
scores are all equal get ``A = 0``: they carry no learning signal. (verl gives a
lone response ``A = S``, treating it as mean 0, std 1; rubricrl deliberately does
not: one response has no baseline.)
"""

from __future__ import annotations

import numbers

import torch

from . import _backend
from ._checks import require_floating, require_integer, same_device
from ._library import call


def group_advantages(
    scores: torch.Tensor,
    group_index: torch.Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-response advantage relative to the response's group.

    Args:
        scores: ``[B]`` fp32/bf16/fp16/fp64 scalar rewards.
        group_index: integer ``[B]``: responses with equal ids form a group (ids are
            arbitrary: any values, any order, groups need not be contiguous).
        norm_by_std: divide by ``std_g + eps`` (GRPO) or not (Dr. GRPO).
        eps: >= 0, added to the std.
        backend: ``torch``, ``cpp``, ``triton`` or ``cuda``; default: see :mod:`rubricrl.ops._backend`.

    Returns:
        ``[B]`` fp32 advantages (fp64 for fp64 scores), not differentiable (advantages are
        constants of the policy-gradient loss). Groups of one and all-equal groups read 0.
    """
    require_floating("scores", scores)
    require_integer("group_index", group_index)
    if scores.dim() != 1 or tuple(group_index.shape) != tuple(scores.shape):
        raise ValueError(
            f"scores and group_index must both be [B]: scores {list(scores.shape)}, "
            f"group_index {list(group_index.shape)}"
        )
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps >= 0:
        raise ValueError(f"eps must be a real number >= 0, got {eps!r}")
    device = same_device(scores=scores, group_index=group_index)
    name = _backend.resolve("group_advantages", device, backend)
    return call("group_advantages", name, device, scores.detach(), group_index.long().contiguous(),
                bool(norm_by_std), float(eps))
