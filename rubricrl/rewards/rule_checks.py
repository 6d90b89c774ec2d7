"""Rule-checked rubric items: a criterion graded exactly by code instead of a judge.

A rubric item may carry a ``check`` object (docs/rubrics.md). Its verdict is computed
from the response text alone, so ``p(met)`` is exactly 1.0 or 0.0 and no model is asked.
The check types and their fields (``ignore_case`` defaults to false everywhere):

================  =============================================================  ========================
type              met when                                                        fields
================  =============================================================  ========================
``contains``      ``text`` occurs at least ``min_count`` times (non-overlapping)  text, min_count=1
``not_contains``  ``text`` does not occur                                         text
``regex``         ``re.search(pattern, response)`` finds a match                  pattern
``starts_with``   the response, leading whitespace removed, starts with ``text``  text
``length``        ``min <= length <= max`` (either bound may be left out)         unit (words|tokens|chars)
``json``          the response, surrounding whitespace removed, parses as JSON    (none)
``list``          at least ``min_items`` lines are list items of ``style``        style (bullet|numbered|any)
``share``         ``min <= share <= max`` of the non-whitespace characters        chars
                  that are one of ``chars`` (0 for an empty response)
``callable``      ``function(response, **args)`` returns True                     function ("module:attr"),
                                                                                  args={}
================  =============================================================  ========================

Words are whitespace-separated runs; tokens are the grading engine's tokenizer's tokens
(``add_special_tokens=False``). A bullet item is a line starting (after indentation) with
``-``, ``*`` or ``•`` and a space; a numbered item starts with digits then ``.`` or ``)``
and a space.

:func:`parse_check` validates a decoded ``check`` object and raises :class:`CheckError`
naming the bad field (relative to the check, e.g. ``pattern``); the rubric loader turns it
into a ``file:line`` error. This module imports nothing from the data or judge layers.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CHECK_TYPES", "LENGTH_UNITS", "LIST_STYLES", "CheckError", "RuleCheck", "parse_check"]

#: type -> (required fields, optional fields). ``type`` itself is implied.
CHECK_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "contains": (("text",), ("ignore_case", "min_count")),
    "not_contains": (("text",), ("ignore_case",)),
    "regex": (("pattern",), ("ignore_case",)),
    "starts_with": (("text",), ("ignore_case",)),
    "length": (("unit",), ("min", "max")),
    "json": ((), ()),
    "list": ((), ("style", "min_items")),
    "share": (("chars",), ("min", "max", "ignore_case")),
    "callable": (("function",), ("args",)),
}

#: Units of a ``length`` check.
LENGTH_UNITS = ("words", "tokens", "chars")
#: Styles of a ``list`` check.
LIST_STYLES = ("bullet", "numbered", "any")

_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+\S")


class CheckError(ValueError):
    """A bad ``check`` object; ``field`` names the offending key (``""`` = the object itself)."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}" if field_name else problem)
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True)
class RuleCheck:
    """A validated check. ``spec`` is the check object as written (``type`` included);
    ``evaluate`` grades one response."""

    spec: dict[str, Any]
    _fn: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @property
    def type(self) -> str:
        return self.spec["type"]

    def to_dict(self) -> dict[str, Any]:
        """The check object that :func:`parse_check` reads back."""
        return json.loads(json.dumps(self.spec))

    def evaluate(self, response: str, tokenizer: Any = None) -> bool:
        """True when ``response`` meets the check.

        ``tokenizer`` (an HF tokenizer) is needed by ``length`` checks in tokens only.

        Raises:
            ValueError: a ``tokens`` length check without a tokenizer, or a ``callable``
                check whose function returned something other than a bool.
        """
        s = self.spec
        kind = s["type"]
        flags = re.IGNORECASE if s.get("ignore_case", False) else 0
        if kind == "contains":
            return len(re.findall(re.escape(s["text"]), response, flags)) >= s.get("min_count", 1)
        if kind == "not_contains":
            return re.search(re.escape(s["text"]), response, flags) is None
        if kind == "regex":
            assert self._regex is not None
            return self._regex.search(response) is not None
        if kind == "starts_with":
            return re.match(re.escape(s["text"]), response.lstrip(), flags) is not None
        if kind == "length":
            return _within(_length(response, s["unit"], tokenizer), s)
        if kind == "json":
            try:
                json.loads(response.strip())
            except ValueError:
                return False
            return True
        if kind == "list":
            pattern = {"bullet": (_BULLET,), "numbered": (_NUMBERED,), "any": (_BULLET, _NUMBERED)}[s.get("style", "any")]
            n = sum(1 for line in response.splitlines() if any(p.match(line) for p in pattern))
            return n >= s.get("min_items", 1)
        if kind == "share":
            chars = [c for c in response if not c.isspace()]
            wanted = s["chars"]
            if s.get("ignore_case", False):
                chars, wanted = [c.lower() for c in chars], wanted.lower()
            share = sum(c in wanted for c in chars) / len(chars) if chars else 0.0
            return _within(share, s)
        if kind == "callable":
            assert self._fn is not None
            out = self._fn(response, **s.get("args", {}))
            if not isinstance(out, bool):
                raise ValueError(f"check function {s['function']!r} returned {type(out).__name__}, expected a bool")
            return out
        raise AssertionError(f"unvalidated check type {kind!r}")  # parse_check admits no other


def _within(value: float, spec: Mapping[str, Any]) -> bool:
    return ("min" not in spec or value >= spec["min"]) and ("max" not in spec or value <= spec["max"])


def _length(response: str, unit: str, tokenizer: Any) -> int:
    if unit == "words":
        return len(response.split())
    if unit == "chars":
        return len(response)
    if tokenizer is None:
        raise ValueError("a length check in tokens needs the grading engine's tokenizer")
    return len(tokenizer.encode(response, add_special_tokens=False))


# --------------------------------------------------------------------------- parsing


def parse_check(raw: Any) -> RuleCheck:
    """Validate a decoded ``check`` object and build its :class:`RuleCheck`.

    Raises:
        CheckError: naming the field: not an object, unknown or missing ``type``, a missing
            or unknown field, a wrong type, a bad regular expression, an empty text, bounds
            out of order, or a ``callable`` whose function cannot be imported.
    """
    if not isinstance(raw, dict):
        raise CheckError("", f"expected a check object, got {type(raw).__name__}")
    kind = raw.get("type")
    if "type" not in raw:
        raise CheckError("type", "missing")
    if not isinstance(kind, str) or kind not in CHECK_TYPES:
        raise CheckError("type", f"unknown check type {kind!r}; known: {', '.join(CHECK_TYPES)}")
    required, optional = CHECK_TYPES[kind]
    for key in required:
        if key not in raw:
            raise CheckError(key, f"missing (a {kind!r} check needs {', '.join(required)})")
    unknown = sorted(set(raw) - {"type", *required, *optional})
    if unknown:
        allowed = ", ".join((*required, *optional)) or "no other field"
        raise CheckError(unknown[0], f"unknown field for a {kind!r} check (it takes {allowed})")

    for key in ("text", "chars"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key]):
            raise CheckError(key, f"expected a non-empty string, got {raw[key]!r}")
    if "ignore_case" in raw and not isinstance(raw["ignore_case"], bool):
        raise CheckError("ignore_case", f"expected true or false, got {raw['ignore_case']!r}")
    for key in ("min_count", "min_items"):
        if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], int) or raw[key] < 1):
            raise CheckError(key, f"expected an integer >= 1, got {raw[key]!r}")

    regex = None
    if kind == "regex":
        pattern = raw["pattern"]
        if not isinstance(pattern, str) or not pattern:
            raise CheckError("pattern", f"expected a non-empty string, got {pattern!r}")
        try:
            regex = re.compile(pattern, re.IGNORECASE if raw.get("ignore_case", False) else 0)
        except re.error as err:
            raise CheckError("pattern", f"bad regular expression {pattern!r}: {err}") from None
    if kind == "length":
        if raw["unit"] not in LENGTH_UNITS:
            raise CheckError("unit", f"{raw['unit']!r} is not one of {', '.join(LENGTH_UNITS)}")
        _bounds(raw, integer=True)
    if kind == "share":
        _bounds(raw, integer=False)
    if kind == "list" and "style" in raw and raw["style"] not in LIST_STYLES:
        raise CheckError("style", f"{raw['style']!r} is not one of {', '.join(LIST_STYLES)}")

    fn = None
    if kind == "callable":
        fn = _import_function(raw["function"])
        args = raw.get("args", {})
        if not isinstance(args, dict):
            raise CheckError("args", f"expected an object of keyword arguments, got {type(args).__name__}")
    return RuleCheck(json.loads(json.dumps(raw)), fn, regex)


def _bounds(raw: Mapping[str, Any], *, integer: bool) -> None:
    if "min" not in raw and "max" not in raw:
        raise CheckError("min", f"missing (a {raw['type']!r} check needs min, max or both)")
    for key in ("min", "max"):
        if key not in raw:
            continue
        v = raw[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise CheckError(key, f"expected a finite number, got {v!r}")
        if integer and (not isinstance(v, int) or v < 0):
            raise CheckError(key, f"expected an integer >= 0, got {v!r}")
        if not integer and not 0 <= v <= 1:
            raise CheckError(key, f"expected a share in [0, 1], got {v!r}")
    if "min" in raw and "max" in raw and raw["min"] > raw["max"]:
        raise CheckError("max", f"max ({raw['max']}) is below min ({raw['min']})")


def _import_function(name: Any) -> Callable[..., Any]:
    if not isinstance(name, str) or name.count(":") != 1 or not all(name.split(":")):
        raise CheckError("function", f"expected 'module:function', got {name!r}")
    module_name, attr = name.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any import failure is a bad data file
        raise CheckError("function", f"cannot import module {module_name!r}: {err}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CheckError("function", f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CheckError("function", f"{name!r} is not callable")
    return obj
