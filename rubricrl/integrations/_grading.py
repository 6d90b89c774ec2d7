"""Rubric grading shared by the host adapters: rows in a host's format -> rubric scores.

A host hands a reward function text (the prompt, the completion) and the row's
dataset columns. This module turns one row's rubric (a list of HealthBench-style
``{"criterion", "points", "tags"}`` dicts, :class:`RubricItem` objects, or that list
as a JSON string) into :class:`GradeRequest` objects and grades them with a judge on
a caller's model, through :meth:`HFEngine.borrowed` so the model is handed back in
the train/eval mode, ``requires_grad`` and device it had.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Sequence
from typing import Any

from rubricrl.data.rubrics import ROLES, RubricItem
from rubricrl.engines.hf import HFEngine
from rubricrl.judges import GradeRequest, Judge, make_judge

__all__ = ["as_conversation", "as_response", "parse_rubric", "grade_rows", "default_judge"]


def default_judge() -> Judge:
    """The prefix-shared log-prob judge with its defaults (soft ``expected`` score)."""
    return make_judge("logprob")


def parse_rubric(value: Any, where: str) -> list[RubricItem]:
    """One row's rubric -> items. ``where`` names the row in errors (e.g. ``"rubric[3]"``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not a JSON list of rubric items ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{where}: expected a non-empty list of rubric items, got {type(value).__name__}")
    items = []
    for i, raw in enumerate(value):
        if isinstance(raw, RubricItem):
            items.append(raw)
            continue
        if not isinstance(raw, dict):
            raise ValueError(f"{where}[{i}]: expected a dict with 'criterion' and 'points', got {type(raw).__name__}")
        criterion, points = raw.get("criterion"), raw.get("points")
        if not isinstance(criterion, str) or not criterion.strip():
            raise ValueError(f"{where}[{i}].criterion: expected a non-empty string, got {criterion!r}")
        # bool is an int subclass; `true` as points is a data bug, not 1 point
        if isinstance(points, bool) or not isinstance(points, numbers.Real) or not math.isfinite(points):
            raise ValueError(f"{where}[{i}].points: expected a finite number, got {points!r}")
        tags = raw.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError(f"{where}[{i}].tags: expected a list of strings, got {tags!r}")
        items.append(RubricItem(criterion, float(points), list(tags)))
    return items


def as_conversation(prompt: Any, where: str) -> list[dict]:
    """A prompt as a host gives it (plain text or a list of chat messages) -> chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, (list, tuple)) and prompt:
        out = []
        for i, msg in enumerate(prompt):
            if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
                raise ValueError(f"{where}[{i}]: expected {{'role': one of {ROLES}, 'content': str}}, got {msg!r}")
            out.append({"role": msg["role"], "content": msg["content"]})
        return out
    raise ValueError(f"{where}: expected a string or a non-empty list of chat messages, got {type(prompt).__name__}")


def as_response(completion: Any, where: str) -> str:
    """A completion as a host gives it (text, or a list of messages ending with the assistant's) -> text."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion:
        last = completion[-1]
        if isinstance(last, dict) and isinstance(last.get("content"), str):
            return last["content"]
    raise ValueError(f"{where}: expected a string or a list of chat messages, got {completion!r:.80}")


def grade_rows(
    model,
    tokenizer,
    judge: Judge,
    conversations: Sequence[list[dict]],
    responses: Sequence[str],
    rubrics: Sequence[list[RubricItem]],
) -> list[float | None]:
    """Rubric score of each response, graded by ``judge`` on ``model`` (None where ungraded).

    Rows with the same conversation form one group, so the log-prob judge runs that
    prefix once for all of them. The model is restored as found (mode, grads, device).
    """
    if not len(conversations) == len(responses) == len(rubrics):
        raise ValueError(
            f"conversations, responses and rubrics must have one entry per completion: "
            f"{len(conversations)}, {len(responses)}, {len(rubrics)}"
        )
    groups: dict[str, str] = {}
    requests = []
    for conv, resp, items in zip(conversations, responses, rubrics):
        key = json.dumps(conv, sort_keys=True)
        group = groups.setdefault(key, f"g{len(groups)}")
        requests.append(GradeRequest(conversation=conv, response=resp, items=items, group_id=group))
    if not requests:
        return []
    with HFEngine.borrowed(model, tokenizer) as engine:
        results = judge.grade(engine, requests)
    return [r.score for r in results]
