"""Rubrics that mix rule-checked items with judge items.

Items with a ``check`` (``rubricrl.rewards.rule_checks``) are graded by code: their
``p(met)`` and ``met`` are exactly 1.0 or 0.0, whatever the judge's mode. Only the other
items go to the judge's engine. :func:`grade_with_rules` splits each request, lets the judge
grade the judge items, and merges the two back in item order; the response's score is then
the usual docs/algorithms.md §3 score (``rubric_scores``) over all its items, so the formula is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rubricrl.judges._common import results_from_verdicts
from rubricrl.judges.base import GradeRequest, GradeResult

__all__ = ["RuleJudge", "grade_with_rules", "rule_verdicts"]


def rule_verdicts(request: GradeRequest, tokenizer=None) -> list[float | None]:
    """Per item of ``request``: 1.0 / 0.0 for a rule-checked item, None for a judge item."""
    return [
        None if item.check is None else (1.0 if item.check.evaluate(request.response, tokenizer) else 0.0)
        for item in request.items
    ]


def grade_with_rules(
    engine,
    requests: Sequence[GradeRequest],
    grade_judge_items: Callable[[list[GradeRequest]], list[GradeResult]],
) -> list[GradeResult]:
    """Grade ``requests``: rule items by their checks, the rest with ``grade_judge_items``.

    ``grade_judge_items`` receives the requests with their judge items only (a request may
    be left with none) and returns one result per request, item-aligned with what it got.
    Without any rule item the requests go to it unchanged. Per-item diagnostics of rule
    items are ``None`` (verdict mass, raw output) or 0 (attempts).
    """
    if not any(item.check is not None for req in requests for item in req.items):
        return grade_judge_items(list(requests))
    tokenizer = getattr(engine, "tokenizer", None)
    rules = [rule_verdicts(req, tokenizer) for req in requests]
    judged_requests = [
        GradeRequest(
            req.conversation, req.response, [it for it, v in zip(req.items, rv) if v is None], req.group_id, req.response_ids
        )
        for req, rv in zip(requests, rules)
    ]
    judged = grade_judge_items(judged_requests)
    if len(judged) != len(requests):
        raise RuntimeError(f"judge returned {len(judged)} results for {len(requests)} requests")

    probs, mets, masses = [], [], []
    for rv, res in zip(rules, judged):
        p_iter, m_iter = iter(res.item_probs), iter(res.item_met)
        mass_iter = iter(res.verdict_mass)
        probs.append([next(p_iter) if v is None else v for v in rv])
        mets.append([next(m_iter) if v is None else v for v in rv])
        masses.append([next(mass_iter) if v is None else None for v in rv] if res.verdict_mass else None)
    version = judged[0].judge_version if judged else engine.policy_version
    has_mass = any(m is not None for m in masses)
    out = results_from_verdicts(
        requests, probs, mets, version, [m or [None] * len(rv) for m, rv in zip(masses, rules)] if has_mass else None
    )
    for result, rv, res in zip(out, rules, judged):
        if res.item_raw:
            raw_iter, att_iter = iter(res.item_raw), iter(res.item_attempts)
            result.item_raw = [next(raw_iter) if v is None else None for v in rv]
            result.item_attempts = [next(att_iter) if v is None else 0 for v in rv]
    return out


class RuleJudge:
    """Grades the rule-checked items of a rubric only, exactly, with no model.

    Judge items (no ``check``) are failed judgments (``None``), so they are left out of the
    score like any failed judgment (docs/algorithms.md §3); a response whose rubric has no
    rule-checked item with positive points is ungraded. The engine is used only for its
    tokenizer (``length`` checks in tokens). The drift guard's ``guard.judge: rules``.
    """

    name = "rules"

    def grade(self, engine, requests: Sequence[GradeRequest]) -> list[GradeResult]:
        version = getattr(engine, "policy_version", 0)

        def no_judge(judged: list[GradeRequest]) -> list[GradeResult]:
            return [
                GradeResult([None] * len(r.items), [None] * len(r.items), None, True, len(r.items), version)
                for r in judged
            ]

        return grade_with_rules(engine, requests, no_judge)
