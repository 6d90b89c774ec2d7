"""JSON Lines reading and writing with errors that point at ``file:line``.

Every loader in :mod:`rubricrl.data` goes through :func:`iter_jsonl_objects`, so
all data errors share one format: a single line ``path:line: problem`` carried
by :class:`DataError`. Blank (whitespace-only) lines are skipped; every other
line must be one JSON object, otherwise loading stops with an error. Nothing is
ever dropped silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["DataError", "PathLike", "iter_jsonl_objects", "write_jsonl"]


class DataError(ValueError):
    """A data file is malformed.

    ``str(err)`` is one line, ``"{path}:{line}: {problem}"``, so editors and
    terminals can jump to the offending row. The parts are kept as attributes
    for programmatic use; ``field`` is the dotted path of the offending field
    (``"rubrics[2].points"``) or ``None`` when the problem is not one field.
    """

    def __init__(self, path: PathLike, line: int, problem: str, field: str | None = None):
        # One line, always: a newline inside a message would break `file:line:` tooling.
        problem = " ".join(str(problem).split())
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem
        self.field = field
        super().__init__(f"{self.path}:{line}: {problem}")


def iter_jsonl_objects(path: PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` for every non-blank line of a JSONL file.

    Line numbers are 1-based physical lines. The file is decoded line by line
    (UTF-8, a leading BOM is tolerated) so that an encoding error, too, names
    its line.

    Raises:
        DataError: a line is not valid UTF-8, not valid JSON, or not a JSON object (when
            the first line shows a JSON array or pretty-printed JSON, the message says the
            file must be JSONL); or a value anywhere in the object is an integer too long
            to parse or a string or key with a lone surrogate (the field is named).
        FileNotFoundError: the file does not exist (left as is: not a data problem).
    """
    first = True  # the first non-blank line: where a JSON array or pretty-printed file shows itself
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, line_no, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
            if not text.strip():
                continue  # blank lines are allowed (and documented) separators
            try:
                obj = json.loads(text, parse_int=_parse_int)
            except json.JSONDecodeError as exc:
                hint = _not_jsonl_hint(text) if first else None
                problem = f"invalid JSON: {hint}" if hint else f"invalid JSON: {exc.msg} (column {exc.colno})"
                raise DataError(path, line_no, problem) from None
            except RecursionError:
                raise DataError(path, line_no, "invalid JSON: nested too deeply") from None
            if not isinstance(obj, dict):
                hint = _not_jsonl_hint(text) if first and isinstance(obj, list) else None
                problem = f"expected a JSON object, got {_json_type(obj)}"
                raise DataError(path, line_no, f"{problem}: {hint}" if hint else problem)
            first = False
            _check_values(path, line_no, obj)
            yield line_no, obj


class _HugeInt(str):
    """The digits of a JSON integer too long for ``int()`` (over ``sys.get_int_max_str_digits()``).

    Kept as a marker so that the error can name the field instead of the parser's traceback.
    """


def _parse_int(digits: str) -> int | _HugeInt:
    try:
        return int(digits)
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        return _HugeInt(digits)


def _not_jsonl_hint(text: str) -> str | None:
    """The problem, when a bad line looks like part of a JSON array or of pretty-printed JSON
    (a ``.json`` file given where JSONL is read); None otherwise."""
    head = text.strip()
    if head.startswith("["):
        return "this looks like a JSON array, but the file must be JSONL: one JSON object per line"
    if head == "{":  # an object spread over lines: its first line is a lone brace
        return "this looks like pretty-printed JSON, but the file must be JSONL: one JSON object per line"
    return None


def _check_values(path: PathLike, line: int, obj: dict[str, Any]) -> None:
    """Reject values no loader can use, naming the field: integers too long to parse, and
    strings (or keys) with a lone UTF-16 surrogate (``"\\ud800"``), which is not Unicode
    text and breaks every tokenizer later."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:  # iterative: JSON nesting may be deeper than the recursion limit
        name, value = stack.pop()
        if isinstance(value, _HugeInt):
            raise DataError(path, line, f"field {name!r}: integer with {len(value.lstrip('-'))} digits is out of range", name)
        if isinstance(value, str):
            bad = _surrogate_at(value)
            if bad is not None:
                problem = f"lone surrogate \\u{ord(value[bad]):04x} at character {bad} (not valid Unicode text)"
                raise DataError(path, line, f"field {name!r}: {problem}", name)
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{name}.{key}" if name else key
                if _surrogate_at(key) is not None:
                    raise DataError(path, line, f"key {child!r}: lone surrogate (not valid Unicode text)", name or None)
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{name}[{i}]", item) for i, item in enumerate(value))


def _surrogate_at(text: str) -> int | None:
    """Index of the first lone surrogate code point in ``text``, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def write_jsonl(path: PathLike, records: Iterable[Any]) -> int:
    """Write ``records`` to ``path`` as JSON Lines; return the number written.

    A record is a mapping, or an object with a ``to_dict()`` method (such as
    :class:`~rubricrl.data.rubrics.RubricPrompt`). Text is UTF-8 with non-ASCII
    characters kept as they are. The file is written to a temporary sibling and
    renamed into place, so a crash never leaves a half-written dataset behind. It gets
    the mode a plain ``open(path, "w")`` would give (``0o666`` less the umask).

    Raises:
        OSError: the file cannot be written; the error names ``path`` (never the
            temporary file).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as err:
        raise type(err)(err.errno, err.strerror, os.fspath(path)) from None
    count = 0
    try:
        # mkstemp creates the file 0600, whatever the umask says.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for record in records:
                obj = record.to_dict() if hasattr(record, "to_dict") else record
                if not isinstance(obj, Mapping):
                    raise TypeError(f"write_jsonl: record {count} is {type(record).__name__}, expected a mapping or an object with to_dict()")
                # allow_nan=False: NaN/Infinity are not JSON and other readers would reject the file.
                fh.write(json.dumps(dict(obj), ensure_ascii=False, allow_nan=False))
                fh.write("\n")
                count += 1
        os.replace(tmp_name, target)
    except BaseException as err:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        if isinstance(err, OSError) and err.errno is not None:
            raise type(err)(err.errno, err.strerror, os.fspath(path)) from None
        raise
    return count


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _json_type(value: Any) -> str:
    """Name a decoded JSON value's type the way JSON does (for error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
