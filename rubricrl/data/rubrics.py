"""Rubric data model and HealthBench-style JSONL loaders.

Two kinds of file:

* **rubric prompts** (training / evaluation data), one object per line::

    {"prompt_id": "...", "prompt": [{"role": "user", "content": "..."}],
     "rubrics": [{"criterion": "...", "points": 7, "tags": ["axis:accuracy"]}],
     "example_tags": ["theme:..."], "ideal_completions_data": {...} | null}

* **meta-evaluation rows** (grader quality against physician labels)::

    {"prompt": [...], "completion": "...", "rubric": "<one criterion>",
     "binary_labels": [true, false], "category": "health"}

Loaders validate every field and stop at the first problem with a
:class:`~rubricrl.data.jsonl.DataError` naming the file, line and field. Blank
lines are skipped; no other row is ever dropped. Unknown top-level fields are
ignored (HealthBench files carry extra bookkeeping fields).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rubricrl.data.jsonl import DataError, PathLike, iter_jsonl_objects, write_jsonl
from rubricrl.rewards.rule_checks import CheckError, RuleCheck, parse_check

__all__ = [
    "ROLES",
    "DataError",
    "MetaEvalRow",
    "RubricItem",
    "RubricPrompt",
    "RuleCheck",
    "load_meta_eval_jsonl",
    "load_rubric_jsonl",
    "write_jsonl",
]

#: Message roles accepted in a conversation.
ROLES = ("system", "user", "assistant")


@dataclass
class RubricItem:
    """One rubric criterion.

    ``points`` may be negative: the criterion then describes undesirable
    behaviour and "met" means that behaviour is present (docs/algorithms.md §3).

    ``check``: a rule that grades this item exactly by code (docs/rubrics.md); ``None`` =
    graded by the judge. ``criterion`` still describes the item for people.
    """

    criterion: str
    points: float
    tags: list[str] = field(default_factory=list)
    check: RuleCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        # Whole points are written as integers, the way rubric files are usually authored.
        points = int(self.points) if float(self.points).is_integer() else self.points
        out: dict[str, Any] = {"criterion": self.criterion, "points": points, "tags": list(self.tags)}
        if self.check is not None:
            out["check"] = self.check.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RubricItem:
        """Inverse of :meth:`to_dict` for already-validated items (checkpoints, rollouts)."""
        check = d.get("check")
        return cls(d["criterion"], float(d["points"]), list(d.get("tags", [])), None if check is None else parse_check(check))


@dataclass
class RubricPrompt:
    """A conversation to respond to, with the rubric that grades the response."""

    prompt_id: str
    prompt: list[dict[str, str]]
    rubrics: list[RubricItem]
    example_tags: list[str] = field(default_factory=list)
    ideal_completions: dict[str, Any] | None = None

    @property
    def max_score(self) -> float:
        """Sum of the positive points: the denominator of the rubric score (docs/algorithms.md §3)."""
        return float(sum(item.points for item in self.rubrics if item.points > 0))

    def to_dict(self) -> dict[str, Any]:
        """The HealthBench-style JSON object that :func:`load_rubric_jsonl` reads back."""
        return {
            "prompt_id": self.prompt_id,
            "prompt": [dict(m) for m in self.prompt],
            "rubrics": [item.to_dict() for item in self.rubrics],
            "example_tags": list(self.example_tags),
            "ideal_completions_data": self.ideal_completions,
        }


@dataclass
class MetaEvalRow:
    """A completion, one rubric criterion, and physicians' binary verdicts on it."""

    prompt: list[dict[str, str]]
    completion: str
    rubric: str
    binary_labels: list[bool]
    category: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": [dict(m) for m in self.prompt],
            "completion": self.completion,
            "rubric": self.rubric,
            "binary_labels": list(self.binary_labels),
            "category": self.category,
        }


# --------------------------------------------------------------------------- loaders


def load_rubric_jsonl(path: PathLike) -> list[RubricPrompt]:
    """Load HealthBench-style rubric prompts from a JSONL file, validating each row.

    Required fields: ``prompt_id`` (non-empty string, unique in the file),
    ``prompt`` (non-empty list of ``{role, content}`` messages, role one of
    system/user/assistant), ``rubrics`` (non-empty list of
    ``{criterion, points, tags?}``; criterion a non-empty string, points a finite
    number, tags a list of strings, check an optional rule object validated by
    :func:`rubricrl.rewards.rule_checks.parse_check`). Optional: ``example_tags`` (list of strings),
    ``ideal_completions_data`` (object or null).

    A rubric set without any positive points is rejected, naming the prompt:
    its score ``sum p*met / sum max(p, 0)`` is undefined (docs/algorithms.md §3).

    Raises:
        DataError: ``file:line: problem`` for the first bad row.
    """
    prompts: list[RubricPrompt] = []
    first_line_of: dict[str, int] = {}
    for line_no, obj in iter_jsonl_objects(path):
        row = _Row(path, line_no, obj)
        prompt_id = row.nonempty_str(obj, "prompt_id", "prompt_id")
        if prompt_id in first_line_of:
            raise DataError(path, line_no, f"duplicate prompt_id {prompt_id!r} (first on line {first_line_of[prompt_id]})", "prompt_id")
        first_line_of[prompt_id] = line_no
        messages = row.messages(obj, "prompt")
        items = [row.rubric_item(raw, f"rubrics[{i}]") for i, raw in enumerate(row.nonempty_list(obj, "rubrics", "rubrics"))]
        if not any(item.points > 0 for item in items):
            raise DataError(
                path, line_no, f"prompt_id {prompt_id!r}: field 'rubrics' has no item with positive points, so its score is undefined", "rubrics"
            )
        example_tags = row.str_list(obj.get("example_tags", []), "example_tags")
        ideal = obj.get("ideal_completions_data")
        if ideal is not None and not isinstance(ideal, dict):
            row.fail("ideal_completions_data", f"expected an object or null, got {_kind(ideal)}")
        prompts.append(RubricPrompt(prompt_id, messages, items, example_tags, ideal))
    return prompts


def load_meta_eval_jsonl(path: PathLike) -> list[MetaEvalRow]:
    """Load meta-evaluation rows (completion + one criterion + physician labels).

    Required fields: ``prompt`` (messages, as for rubric prompts), ``completion``
    (string, may be empty: an empty answer can still be graded), ``rubric``
    (non-empty string), ``binary_labels`` (non-empty list of booleans),
    ``category`` (non-empty string).

    Raises:
        DataError: ``file:line: problem`` for the first bad row.
    """
    rows: list[MetaEvalRow] = []
    for line_no, obj in iter_jsonl_objects(path):
        row = _Row(path, line_no, obj)
        messages = row.messages(obj, "prompt")
        completion = row.str_field(obj, "completion", "completion")
        rubric = row.nonempty_str(obj, "rubric", "rubric")
        labels = row.nonempty_list(obj, "binary_labels", "binary_labels")
        for i, label in enumerate(labels):
            if not isinstance(label, bool):
                row.fail(f"binary_labels[{i}]", f"expected true or false, got {_kind(label)}")
        category = row.nonempty_str(obj, "category", "category")
        rows.append(MetaEvalRow(messages, completion, rubric, list(labels), category))
    return rows


# --------------------------------------------------------------------------- validation


class _Row:
    """Field checks for one line; every failure raises a DataError naming the field."""

    def __init__(self, path: PathLike, line: int, obj: Mapping[str, Any]):
        self.path = path
        self.line = line
        self.obj = obj

    def fail(self, field_name: str, problem: str) -> None:
        raise DataError(self.path, self.line, f"field {field_name!r}: {problem}", field_name)

    def _get(self, container: Mapping[str, Any], key: str, name: str) -> Any:
        if key not in container:
            self.fail(name, "missing")
        return container[key]

    def str_field(self, container: Mapping[str, Any], key: str, name: str) -> str:
        value = self._get(container, key, name)
        if not isinstance(value, str):
            self.fail(name, f"expected a string, got {_kind(value)}")
        return value

    def nonempty_str(self, container: Mapping[str, Any], key: str, name: str) -> str:
        value = self.str_field(container, key, name)
        if not value.strip():
            self.fail(name, "empty string")
        return value

    def nonempty_list(self, container: Mapping[str, Any], key: str, name: str) -> list[Any]:
        value = self._get(container, key, name)
        if not isinstance(value, list):
            self.fail(name, f"expected a list, got {_kind(value)}")
        if not value:
            self.fail(name, "empty list")
        return value

    def str_list(self, value: Any, name: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(name, f"expected a list of strings, got {_kind(value)}")
        for i, tag in enumerate(value):
            if not isinstance(tag, str):
                self.fail(f"{name}[{i}]", f"expected a string, got {_kind(tag)}")
        return list(value)

    def messages(self, container: Mapping[str, Any], key: str) -> list[dict[str, str]]:
        out = []
        for i, msg in enumerate(self.nonempty_list(container, key, key)):
            name = f"{key}[{i}]"
            if not isinstance(msg, dict):
                self.fail(name, f"expected a message object, got {_kind(msg)}")
            role = self.str_field(msg, "role", f"{name}.role")
            if role not in ROLES:
                self.fail(f"{name}.role", f"{role!r} is not one of {', '.join(ROLES)}")
            content = self.str_field(msg, "content", f"{name}.content")
            out.append({"role": role, "content": content})
        return out

    def rubric_item(self, raw: Any, name: str) -> RubricItem:
        if not isinstance(raw, dict):
            self.fail(name, f"expected a rubric object, got {_kind(raw)}")
        criterion = self.nonempty_str(raw, "criterion", f"{name}.criterion")
        points = self._get(raw, "points", f"{name}.points")
        # bool is an int subclass in Python; `true` as points is a data bug, not 1 point.
        if isinstance(points, bool) or not isinstance(points, (int, float)):
            self.fail(f"{name}.points", f"expected a number, got {_kind(points)}")
        try:
            finite = math.isfinite(points)
        except OverflowError:  # an integer beyond the float range (JSON has no size limit)
            self.fail(f"{name}.points", f"integer with {len(str(abs(points)))} digits is out of range")
        if not finite:
            self.fail(f"{name}.points", f"expected a finite number, got {points}")
        tags = self.str_list(raw.get("tags", []), f"{name}.tags")
        check = None
        if "check" in raw:
            try:
                check = parse_check(raw["check"])
            except CheckError as err:
                self.fail(f"{name}.check.{err.field}" if err.field else f"{name}.check", err.problem)
        return RubricItem(criterion, float(points), tags, check)


def _kind(value: Any) -> str:
    """Describe a decoded JSON value for an error message: its JSON type and a short repr."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    kind = {int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{kind} {text}"
