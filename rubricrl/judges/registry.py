"""Judges by name: ``make_judge("logprob", mode="threshold")``.

Like verl's registries of losses and advantage estimators: a trainer or CLI picks a judge
by name, and a user adds one with :func:`register_judge` without touching either.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from rubricrl.judges.base import Judge
from rubricrl.judges.generate import GenerateJudge
from rubricrl.judges.logprob import LogprobJudge

__all__ = ["JUDGES", "build_judge", "make_judge", "register_judge"]

#: name -> judge class (or factory taking keyword options).
JUDGES: dict[str, Callable[..., Judge]] = {"logprob": LogprobJudge, "generate": GenerateJudge}


def register_judge(name: str, factory: Callable[..., Judge], *, overwrite: bool = False) -> None:
    """Make ``make_judge(name, **options)`` return ``factory(**options)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"judge name must be a non-empty string, got {name!r}")
    if name in JUDGES and not overwrite:
        raise ValueError(f"a judge named {name!r} is already registered (pass overwrite=True to replace it)")
    JUDGES[name] = factory


def make_judge(name: str, **options) -> Judge:
    """Build the judge registered as ``name`` with keyword ``options``.

    The judge grades with whatever engine ``grade(engine, requests)`` is given: pass the
    policy's own engine for self-grading (docs/algorithms.md §3, pi_old), or another engine.

    Raises:
        ValueError: unknown name, or an option the judge does not take (listing the ones it does).
    """
    factory = JUDGES.get(name)
    if factory is None:
        raise ValueError(f"unknown judge {name!r}; known judges: {', '.join(sorted(JUDGES))}")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(params)) if params and not takes_any else []
    if unknown:
        accepted = sorted(k for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        raise ValueError(f"judge {name!r} does not take option(s) {unknown}; it takes {accepted}")
    return factory(**options)


def build_judge(
    name: str,
    *,
    temperature: float,
    mode: str | None = None,
    share_prefix: bool | None = None,
    layout: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Judge:
    """The judge ``name`` from the grading settings the trainer config and the CLI share.

    ``temperature`` goes to every judge; ``mode``, ``share_prefix`` and ``layout`` to the
    logprob judge only (other judges never see them; None keeps the judge's default; a
    ``layout`` other than ``instructions_first`` for another judge is an error); ``options`` are
    further keyword options for the judge (``reward.judge_options``, the CLI's ``--seed``,
    ``--max-new-tokens``, ...) and win over the settings above.

    Raises:
        ValueError: ``'<name>' with options {...}: <why>`` for an unknown judge, an option
            it does not take, or one its constructor rejects.
    """
    settings: dict[str, Any] = {"temperature": temperature}
    if name == "logprob":
        settings.update(
            {k: v for k, v in (("mode", mode), ("share_prefix", share_prefix), ("layout", layout)) if v is not None}
        )
    elif layout not in (None, "instructions_first"):
        raise ValueError(f"{name!r}: judge layout {layout!r} is for the logprob judge only")
    settings.update(options or {})
    try:
        return make_judge(name, **settings)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name!r} with options {settings}: {err}") from None
