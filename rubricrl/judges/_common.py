"""Small helpers shared by the judges: option checks, batching, result assembly."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rubricrl.ops import rubric_scores
from rubricrl.judges.base import GradeRequest, GradeResult

__all__ = ["check_positive_float", "check_positive_int", "check_requests", "results_from_verdicts"]


def check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_requests(requests: Sequence[GradeRequest]) -> list[GradeRequest]:
    if isinstance(requests, GradeRequest) or not isinstance(requests, Sequence):
        raise ValueError(f"requests must be a list of GradeRequest, got {type(requests).__name__}")
    for i, request in enumerate(requests):
        if not isinstance(request, GradeRequest):
            raise ValueError(f"requests[{i}] is {type(request).__name__}, expected GradeRequest")
        if not isinstance(request.response, str):
            raise ValueError(f"requests[{i}].response must be a str, got {type(request.response).__name__}")
    return list(requests)


def results_from_verdicts(
    requests: Sequence[GradeRequest],
    item_probs: Sequence[Sequence[float | None]],
    item_met: Sequence[Sequence[float | None]],
    judge_version: int,
    verdict_mass: Sequence[Sequence[float]] | None = None,
) -> list[GradeResult]:
    """Assemble :class:`GradeResult` objects, scoring every response with ``rubric_scores``.

    Failed judgments (``None`` in ``item_met``) are left out of numerator and denominator
    (docs/algorithms.md §3); a response with no successful positive-points item is ungraded.
    """
    met: list[float] = []
    points: list[float] = []
    offsets = [0]
    n_failed: list[int] = []
    for request, mets in zip(requests, item_met):
        failed = 0
        for item, m in zip(request.items, mets):
            if m is None:
                failed += 1
                continue
            met.append(float(m))
            points.append(float(item.points))
        offsets.append(len(met))
        n_failed.append(failed)
    scores = rubric_scores(
        torch.tensor(met, dtype=torch.float32),
        torch.tensor(points, dtype=torch.float32),
        torch.tensor(offsets, dtype=torch.long),
        clip=True,
    ).tolist()
    results = []
    for r in range(len(requests)):
        score = scores[r]
        ungraded = math.isnan(score)
        results.append(
            GradeResult(
                item_probs=list(item_probs[r]),
                item_met=list(item_met[r]),
                score=None if ungraded else float(score),
                ungraded=ungraded,
                n_failed=n_failed[r],
                judge_version=judge_version,
                verdict_mass=list(verdict_mass[r]) if verdict_mass is not None else [],
            )
        )
    return results
