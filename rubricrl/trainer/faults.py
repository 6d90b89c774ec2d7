"""TEST HOOK for the fault-injection tests (tests/test_faults.py): a process that kills
itself with SIGKILL at a named point of a run. Off, and free, unless the environment
variable ``RUBRICRL_FAULT_KILL`` is set; never set it outside tests.

``RUBRICRL_FAULT_KILL=POINT:N`` kills the process the N-th time (1-based) it reaches
``POINT`` (counted from the process start, so a resumed process counts afresh):

=============  ==============================================================
``rollout``    a step's batch has been sampled, before it is graded
``grading``    a step's responses have been graded, before the update
``update``     the optimizer step is done, before the metrics record is written
``metrics``    half of a metrics line written and flushed (a torn last line)
``checkpoint`` model.pt and optimizer.pt of a checkpoint written in its temporary
               directory, state.pt not yet
``latest``     a checkpoint renamed into place, ``checkpoints/latest`` not yet updated
=============  ==============================================================
"""

from __future__ import annotations

import os
import signal
from typing import Any

__all__ = ["ENV", "POINTS", "armed", "fault_point", "instrument"]

ENV = "RUBRICRL_FAULT_KILL"
POINTS = ("rollout", "grading", "update", "metrics", "checkpoint", "latest")

_reached: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(ENV)
    if not spec:
        return None
    point, _, n = spec.partition(":")
    if point not in POINTS or not n.isdigit() or int(n) < 1:
        raise ValueError(f"{ENV}={spec!r}: expected POINT:N with POINT one of {POINTS} and N >= 1")
    return point, int(n)


def armed(name: str) -> bool:
    """Whether the hook targets ``name`` in this process (for points that prepare a fault)."""
    target = _target()
    return target is not None and target[0] == name


def fault_point(name: str) -> None:
    """Kill this process (SIGKILL, no cleanup) if ``RUBRICRL_FAULT_KILL`` names this visit."""
    target = _target()
    if target is None or target[0] != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)


def _after(fn: Any, name: str) -> Any:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        fault_point(name)
        return out

    return wrapped


def instrument(trainer: Any) -> None:
    """Put the ``rollout``, ``grading`` and ``update`` points after the trainer's rollout,
    reward and update calls (only when the hook is on)."""
    if _target() is None:
        return
    trainer.rollout = _after(trainer.rollout, "rollout")
    trainer.reward.score = _after(trainer.reward.score, "grading")
    trainer.updater.update = _after(trainer.updater.update, "update")
