"""Grader quality: run a judge over meta-evaluation rows and score it with MF1 (docs/algorithms.md §3).

Each row (a conversation, a completion, one rubric criterion, physicians' labels) becomes
one :class:`GradeRequest` with a single positive-points item. The judge's verdict on that
item is paired with every physician label by
:func:`rubricrl.rewards.metrics.meta_eval_mf1`.

Verdicts: a hard ``item_met`` (0/1: ``threshold`` or ``sample`` mode, the generate judge)
is used as is; a soft one (``expected`` mode) is read as met when p >= 0.5. Failed
judgments (generate judge) have no verdict: they are left out of MF1 and counted in
``n_failed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rubricrl.data.rubrics import MetaEvalRow, RubricItem
from rubricrl.judges.base import GradeRequest, GradeResult
from rubricrl.rewards.metrics import meta_eval_mf1

__all__ = ["meta_eval_requests", "run_meta_eval"]


def meta_eval_requests(rows: Sequence[MetaEvalRow]) -> list[GradeRequest]:
    """One request per row, with the row's criterion as a single +1-point item.

    Rows with the same conversation get the same ``group_id`` (a prefix-sharing judge runs
    that conversation once).
    """
    groups: dict[str, str] = {}
    requests = []
    for row in rows:
        key = repr(row.prompt)
        group = groups.setdefault(key, f"meta-{len(groups)}")
        requests.append(GradeRequest(list(row.prompt), row.completion, [RubricItem(row.rubric, 1.0)], group_id=group))
    return requests


def _hard_verdict(result: GradeResult) -> bool | None:
    met = result.item_met[0]
    if met is None:
        return None
    if met in (0.0, 1.0):
        return met == 1.0
    return met >= 0.5


def run_meta_eval(
    judge,
    engine,
    rows: Sequence[MetaEvalRow],
    *,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    return_verdicts: bool = False,
) -> dict[str, Any]:
    """MF1 of ``judge`` (grading with ``engine``) on meta-evaluation ``rows``, overall and per category.

    Args:
        judge: any :class:`rubricrl.judges.base.Judge`.
        engine: the engine the judge grades with (the policy itself for self-grading).
        rows: meta-evaluation rows (e.g. ``rubricrl.data.builtin.builtin_meta_eval()``).
        batch_size: rows per ``judge.grade`` call.
        progress: called with the number of rows just graded after each batch.
        return_verdicts: also return ``verdicts``: each row's hard verdict (True / False,
            None for a failed judgment), in row order (to compare two judges row by row).

    Returns:
        The dict of :func:`~rubricrl.rewards.metrics.meta_eval_mf1` (``mf1``, ``f1_met``,
        ``f1_not_met``, counts, ``per_category``) over the rows with a verdict, plus
        ``n_rows``, ``n_failed``, ``judge`` (name) and ``judge_version``. When every
        judgment failed, ``mf1`` and the F1 values are None and ``per_category`` is empty.
    """
    if not rows:
        raise ValueError("run_meta_eval: no meta-evaluation rows")
    requests = meta_eval_requests(rows)
    results: list[GradeResult] = []
    for start in range(0, len(requests), max(1, batch_size)):
        batch = requests[start : start + batch_size]
        results.extend(judge.grade(engine, batch))
        if progress is not None:
            progress(len(batch))
    verdicts, labels, categories = [], [], []
    every_verdict = [_hard_verdict(result) for result in results]
    n_failed = 0
    for row, verdict in zip(rows, every_verdict):
        if verdict is None:
            n_failed += 1
            continue
        verdicts.append(verdict)
        labels.append(list(row.binary_labels))
        categories.append(row.category)
    if verdicts:
        summary = meta_eval_mf1(verdicts, labels, categories)
    else:
        summary = {"mf1": None, "f1_met": None, "f1_not_met": None, "n_items": 0, "n_pairs": 0, "per_category": {}}
    summary.update(
        n_rows=len(rows),
        n_failed=n_failed,
        judge=getattr(judge, "name", type(judge).__name__),
        judge_version=results[0].judge_version if results else None,
    )
    if return_verdicts:
        summary["verdicts"] = every_verdict
    return summary
