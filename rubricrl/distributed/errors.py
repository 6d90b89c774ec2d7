"""Errors of the distributed trainer (no Ray import, so the CLI can catch them cheaply)."""

from __future__ import annotations

__all__ = ["DistributedError", "TrainerRankError"]


class DistributedError(RuntimeError):
    """The distributed run cannot go on (a cluster that cannot place the actors, an engine
    worker that died more often than ``distributed.max_restarts``); the message is one line."""


class TrainerRankError(DistributedError):
    """A trainer rank died: the run stopped; the message names the rank, the step and the
    checkpoint to resume from."""
