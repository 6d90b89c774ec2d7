"""Rubric score of one response from per-item verdicts (plain Python, docs/algorithms.md §3).

``S = clip(sum_i p_i * met_i / sum_i max(p_i, 0), 0, 1)``

``met_i`` is a hard verdict (``bool``) or a probability in ``[0, 1]`` (soft
verdict; then S is the expected score before clipping). A verdict of ``None``
means the judgment failed: that item is left out of both the numerator and the
denominator, so a failed judgment neither rewards nor punishes the response.
When no successfully judged item has positive points the score is undefined
and the response is reported *ungraded* (``score=None``) rather than 0.

This is the per-response version used with the generative judge and as a test
reference; the batched tensor op is :func:`rubricrl.ops.rubric_scores`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rubricrl.data.rubrics import RubricItem

__all__ = ["ScoreResult", "score_response"]


@dataclass(frozen=True)
class ScoreResult:
    """Score of one response.

    Attributes:
        score: the clipped score in ``[0, 1]``, or ``None`` when ungraded.
        ungraded: True when no successfully judged item carries positive points.
        raw: ``sum p_i * met_i`` over judged items (before dividing and clipping).
        max_points: ``sum max(p_i, 0)`` over judged items (the denominator).
        n_items: number of rubric items.
        n_failed: items whose judgment failed (verdict ``None``) and were left out.
    """

    score: float | None
    ungraded: bool
    raw: float
    max_points: float
    n_items: int
    n_failed: int

    @property
    def n_graded(self) -> int:
        """Items with a usable verdict."""
        return self.n_items - self.n_failed


def score_response(
    items: Sequence[RubricItem], verdicts: Sequence[float | bool | None], *, clip: bool = True
) -> ScoreResult:
    """Score one response from its rubric items and per-item verdicts.

    Args:
        items: the prompt's rubric items.
        verdicts: one per item, in order: ``True``/``False``, a probability in
            ``[0, 1]``, or ``None`` for a failed judgment.
        clip: clip the score to ``[0, 1]`` (docs/algorithms.md §3); ``False`` returns the
            unclipped ratio, which can be negative.

    Raises:
        ValueError: lengths differ, or a verdict is not a bool, None or a number in [0, 1].
    """
    if len(items) != len(verdicts):
        raise ValueError(f"score_response: {len(items)} rubric items but {len(verdicts)} verdicts")
    raw = 0.0
    max_points = 0.0
    n_failed = 0
    for i, (item, verdict) in enumerate(zip(items, verdicts)):
        if verdict is None:
            n_failed += 1
            continue
        met = _as_probability(verdict, i)
        raw += item.points * met
        max_points += max(item.points, 0.0)
    if max_points <= 0.0:
        return ScoreResult(None, True, raw, max_points, len(items), n_failed)
    score = raw / max_points
    if clip:
        score = min(max(score, 0.0), 1.0)
    return ScoreResult(score, False, raw, max_points, len(items), n_failed)


def _as_probability(verdict: float | bool, index: int) -> float:
    if isinstance(verdict, bool):
        return 1.0 if verdict else 0.0
    try:
        if isinstance(verdict, (str, bytes)):
            raise TypeError  # "0.5" would convert, but a string verdict is a caller bug
        value = float(verdict)
    except (TypeError, ValueError):
        raise ValueError(f"score_response: verdicts[{index}] is {type(verdict).__name__}, expected bool, None or a number in [0, 1]") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"score_response: verdicts[{index}] = {value} is outside [0, 1]")
    return value
