"""Bounded-staleness rollout schedule: sample ahead while the trainer grades and updates.

With staleness bound ``eta`` the batch of step ``s`` (1-based) is sampled with the weights
of version ``max(0, s - 1 - eta)``, i.e. right after the update of step ``s - 1 - eta``
(versions count trainer steps). So an update never uses a batch more than ``eta``
versions old, and the schedule is deterministic: which weights sample which batch does
not depend on timing.

* ``eta = 0``: the batch of step ``s`` is sampled after the update of step ``s - 1``,
  with the current weights: the synchronous trainer.
* ``eta >= 1``: after the update of step ``k`` the pipeline starts sampling step
  ``k + 1 + eta``; with ``overlap=True`` it does so on a producer thread, with a
  snapshot (copy) of the weights, while the trainer thread grades and updates steps
  ``k + 1 ... k + eta``. Torch releases the GIL inside its kernels, so the two
  overlap on one device. With ``overlap=False`` the same schedule runs inline.

Sampling is seeded per step on both paths, so ``eta = 0`` with or without the thread gives
identical batches (tested). With ``eta > 0`` and the thread, a judge that draws from the
global torch RNG (``judge_mode=sample``) can interleave with the producer's seeded
sampling, so such runs are not bitwise reproducible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from rubricrl.engines import Engine
from rubricrl.pipeline.rollout import RolloutBatch

__all__ = ["RolloutPipeline", "snapshot_engine"]

RolloutFn = Callable[[Engine, int], RolloutBatch]


def snapshot_engine(engine: Engine) -> Engine:
    """``engine.snapshot()``: a second engine with a copy of the weights, at the same policy
    version (``HFEngine``: a deep copy of model and tokenizer)."""
    try:
        return engine.snapshot()
    except NotImplementedError as err:
        raise TypeError(str(err)) from None


def _weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


class RolloutPipeline:
    """Supplies each step's :class:`RolloutBatch`, sampled ``eta`` steps ahead at most.

    Args:
        engine: the trainer's engine (its weights are updated in place between steps).
        rollout: ``rollout(engine, step) -> RolloutBatch``.
        eta: staleness bound (>= 0).
        overlap: sample ahead on a producer thread with a weight snapshot (else inline).
        last_step: no batch is sampled past this step.
        snapshot_factory: builds the producer's engine (default :func:`snapshot_engine`).

    Protocol: ``start(next_step, pending)`` once, then per step ``get(step)`` and, after the
    update and ``engine.bump_version()``, ``after_update(step)``; ``pending(step)`` returns
    the batches already sampled for later steps (for a checkpoint); ``close()`` at the end.
    """

    def __init__(
        self,
        engine: Engine,
        rollout: RolloutFn,
        *,
        eta: int,
        overlap: bool,
        last_step: int,
        snapshot_factory: Callable[[Engine], Engine] | None = None,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.engine = engine
        self.rollout = rollout
        self.eta = eta
        self.overlap = overlap
        self.last_step = last_step
        self._snapshot_factory = snapshot_factory or snapshot_engine
        self._ready: dict[int, RolloutBatch] = {}
        self._lazy: set[int] = set()
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._jobs: list[tuple[int, Mapping[str, torch.Tensor] | None, int] | None] = []
        self._thread: threading.Thread | None = None
        self._producer: Engine | None = None

    # ---- protocol --------------------------------------------------------------------

    def start(self, next_step: int, pending: Iterable[RolloutBatch] = ()) -> None:
        """Schedule steps ``next_step .. next_step + eta``; ``pending`` are batches sampled
        before a checkpoint (they keep their older policy versions)."""
        for batch in pending:
            self._ready[batch.step] = batch
        steps = [s for s in range(next_step, next_step + self.eta + 1) if s not in self._ready]
        if self.overlap and self._producer is None:
            self._producer = self._snapshot_factory(self.engine)  # copied here, before any update
        weights = _weights(self.engine) if self.overlap and steps else None
        for s in steps:
            self._schedule(s, weights)

    def get(self, step: int) -> RolloutBatch:
        """The batch of ``step``, waiting for the producer if needed."""
        if step in self._lazy:
            self._lazy.discard(step)
            return self.rollout(self.engine, step)
        with self._cond:
            while step not in self._ready and self._error is None:
                if not self.overlap:
                    raise RuntimeError(f"step {step} was never scheduled")
                self._cond.wait()
            if self._error is not None:
                raise RuntimeError(f"rollout on the producer thread failed: {self._error!r}") from self._error
            return self._ready.pop(step)

    def after_update(self, step: int) -> None:
        """The update of ``step`` is done (and the version bumped): schedule ``step + 1 + eta``."""
        s = step + 1 + self.eta
        self._schedule(s, _weights(self.engine) if self.overlap else None)

    def pending(self, step: int) -> list[RolloutBatch]:
        """Batches for steps ``step + 1 .. step + eta`` (sampled with weights older than the
        current ones, so a checkpoint must keep them), waiting for them if needed."""
        out = []
        for s in range(step + 1, min(step + self.eta, self.last_step) + 1):
            with self._cond:
                while s not in self._ready and self._error is None:
                    self._cond.wait()
                if self._error is not None:
                    raise RuntimeError(f"rollout on the producer thread failed: {self._error!r}") from self._error
                out.append(self._ready[s])
        return out

    def unpause(self) -> None:
        """Nothing to resume after ``pending`` (the protocol of ``StreamPipeline``)."""

    def close(self) -> None:
        """Stop the producer thread (after the job it is running)."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._jobs.clear()
            self._jobs.append(None)
            self._cond.notify_all()
        thread.join()
        self._thread = None

    def __enter__(self) -> RolloutPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------

    def _schedule(self, step: int, weights: Mapping[str, torch.Tensor] | None) -> None:
        if step > self.last_step:
            return
        if not self.overlap:
            if self.eta == 0:
                self._lazy.add(step)  # sampled in get(): same weights, and its time counts in its own step
            else:
                self._ready[step] = self.rollout(self.engine, step)
            return
        with self._cond:
            self._jobs.append((step, weights, self.engine.policy_version))
            self._cond.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="rubricrl-rollout", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job = self._jobs.pop(0)
            if job is None:
                return
            step, weights, version = job
            try:
                assert self._producer is not None
                if weights is not None and version != self._producer.policy_version:
                    self._producer.load_weights(weights, version)
                batch = self.rollout(self._producer, step)
            except BaseException as err:  # surfaced to the trainer thread in get()
                with self._cond:
                    self._error = err
                    self._cond.notify_all()
                return
            with self._cond:
                self._ready[step] = batch
                self._cond.notify_all()
