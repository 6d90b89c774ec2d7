"""Preference pairs: a prompt with a chosen and a rejected response (docs/rlpr_patarm.md).

The data of ``reward.source=patarm`` and ``reward.source=pairwise_judge``. One object per
line::

    {"pair_id": "if-0001", "prompt": [{"role": "user", "content": "..."}],
     "chosen": "...", "rejected": "...", "task": "instruction_following",
     "rubrics": [{"criterion": "...", "points": 1, "check": {...}}]}

Required: ``pair_id`` (non-empty string, unique in the file), ``prompt`` (a non-empty
list of ``{role, content}`` messages, as in rubric files), ``chosen`` and ``rejected``
(non-empty strings that differ once surrounding whitespace is removed: a pair of equal
responses carries no preference). Optional: ``task`` (a PaTaRM task type, selecting the
primary rubrics of the pointwise judge prompt; default ``chat``) and ``rubrics`` (rubric
items, validated as in rubric files, e.g. the rule checks that make the preference
exact; no reward source reads them). Unknown top-level fields are ignored.

Every problem is a :class:`~rubricrl.data.jsonl.DataError` ``file:line: field 'x': ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rubricrl.data.jsonl import DataError, PathLike, iter_jsonl_objects
from rubricrl.data.rubrics import RubricItem, _kind, _Row
from rubricrl.rewards.patarm_prompts import TASK_TYPES

__all__ = ["DEFAULT_TASK", "PreferencePair", "load_pair_jsonl"]

#: ``task`` when a row gives none.
DEFAULT_TASK = "chat"


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair; ``chosen`` is the better response to ``prompt``."""

    pair_id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    task: str = DEFAULT_TASK
    rubrics: list[RubricItem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pair_id": self.pair_id,
            "prompt": [dict(m) for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
            "task": self.task,
        }
        if self.rubrics:
            out["rubrics"] = [item.to_dict() for item in self.rubrics]
        return out


def load_pair_jsonl(path: PathLike) -> list[PreferencePair]:
    """Load preference pairs from a JSONL file, validating each row (module docstring).

    Raises:
        DataError: ``file:line: field 'x': problem`` for the first bad row, or
            ``file:1: no pairs`` for a file without any.
    """
    pairs: list[PreferencePair] = []
    first_line_of: dict[str, int] = {}
    for line_no, obj in iter_jsonl_objects(path):
        row = _Row(path, line_no, obj)
        pair_id = row.nonempty_str(obj, "pair_id", "pair_id")
        if pair_id in first_line_of:
            raise DataError(path, line_no, f"duplicate pair_id {pair_id!r} (first on line {first_line_of[pair_id]})", "pair_id")
        first_line_of[pair_id] = line_no
        messages = row.messages(obj, "prompt")
        chosen = row.nonempty_str(obj, "chosen", "chosen")
        rejected = row.nonempty_str(obj, "rejected", "rejected")
        if chosen.strip() == rejected.strip():
            row.fail("rejected", f"identical to 'chosen' (pair_id {pair_id!r}): a pair of equal responses has no preference")
        task = obj.get("task", DEFAULT_TASK)
        if not isinstance(task, str) or task not in TASK_TYPES:
            row.fail("task", f"expected one of {', '.join(TASK_TYPES)}, got {_kind(task)}")
        raw_rubrics = obj.get("rubrics", [])
        if not isinstance(raw_rubrics, list):
            row.fail("rubrics", f"expected a list of rubric objects, got {_kind(raw_rubrics)}")
        rubrics = [row.rubric_item(raw, f"rubrics[{i}]") for i, raw in enumerate(raw_rubrics)]
        pairs.append(PreferencePair(pair_id, messages, chosen, rejected, task, rubrics))
    if not pairs:
        raise DataError(path, 1, "no pairs (the file has no JSON object lines)")
    return pairs
