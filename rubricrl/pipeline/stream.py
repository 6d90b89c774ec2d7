"""Streaming pipeline: rollout, self-grading and updates overlap, group by group.

Three threads share the machine's devices (the CPU cores, or one GPU):

* **rollout** (``rubricrl-rollout``): samples the steps in order on its own engine (an
  ``HFEngine`` snapshot, or the lagging serving copy of a ``VLLMEngine``) with
  ``engine.generate_stream``, which hands over each prompt's group of ``G`` responses as
  soon as it is finished (vLLM: continuous batching; HF: chunks of
  ``pipeline.stream_groups`` prompts per generate call);
* **grading** (``rubricrl-grading``): grades every group as soon as it is handed over, with
  a copy of the weights that sampled it (the judge is pi_behaviour, as in the synchronous
  trainer where it is pi_old), while later groups are still being sampled; a reward source
  without ``grades_per_group = True`` (RLPR: its std filter looks at a whole step) is
  called once per step, when the step's last group is in;
* **trainer** (the caller): takes each step's graded groups (:meth:`StreamPipeline.get`),
  updates, and publishes the new weights (:meth:`StreamPipeline.after_update`).

Mini-batches are steps: ``data.prompts_per_step`` groups (the unit of advantages, of the
prompt schedule and of checkpoints); the trainer updates as soon as the step's groups are
graded, while the rollout thread already samples the next steps.

Staleness (AReaL's admission rule). Versions count trainer updates. The groups of step
``s`` are sampled with the weights of version ``b(s) = max(0, s - 1 - eta)``: the rollout
thread *waits* until the trainer has published that version, so it runs at most ``eta``
steps ahead, and switches weights between steps (never inside a request). The update of
step ``s`` runs at version ``s - 1``, so a sample's staleness ``s - 1 - b(s)`` is at most
``eta`` (versions count from the engine's version at the first step: an engine that
starts at ``v0`` samples step ``s`` with ``v0 + b(s)``). At update time :meth:`get` checks the rule on every group's recorded behaviour
version and *drops* (and counts, ``stale_dropped_groups``) any group that is more than
``eta`` versions old; by the schedule that only happens to groups restored from a
checkpoint written with a larger ``eta``. Nothing is lost: every sampled group is trained,
dropped and counted (stale, ungraded, all-equal) or still in the pipeline at the end
(``counts``).

Determinism. Which weights sample and grade which group, the sampling seeds (per step and
per chunk) and the grading units (one group, or one step) do not depend on timing, so a run
is reproducible and a resumed run continues bitwise like an uninterrupted one (as long as
the judge does not draw from the global RNG: ``judge_mode=sample`` interleaves with the
rollout thread's seeded sampling). The price: step ``s`` is always sampled with version
``b(s)`` even when newer weights exist.

Checkpoints: :meth:`pending` waits until steps ``k + 1 .. k + eta`` (sampled with weights
older than the current ones) are graded, pauses grading, and returns every fully graded
step after ``k``; they are saved with their rewards, and :meth:`start` of a resumed run
takes them back (the rollout thread skips them). Partly graded steps are sampled and graded
again after a resume, with the same weights and seeds.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from rubricrl.engines import Engine, HFEngine
from rubricrl.engines.base import Sample
from rubricrl.pipeline.rewards import RewardOutput, RewardSource
from rubricrl.pipeline.data import TrainPrompt
from rubricrl.pipeline.rollout import Rollout, RolloutBatch, rollout_seed

__all__ = ["GradedBatch", "StreamPipeline", "behaviour_version_of", "merge_rewards"]

#: counts of RewardOutput that are means (merged as group-weighted means), not counters
_MEAN_COUNTS = ("verdict_mass", "verdict_accuracy")


def behaviour_version_of(step: int, eta: int) -> int:
    """The weight version that samples step ``step`` (1-based) under staleness bound ``eta``."""
    return max(0, step - 1 - eta)


@dataclass
class GradedBatch:
    """One step's groups with their rewards, as the streaming pipeline hands them over.

    Attributes:
        batch: prompts and samples (``batch.policy_version`` = the oldest behaviour version).
        reward: the scores, prompt-major like ``batch.flat_samples``.
        grading_seconds: grading thread time spent on this step's groups.
        stale_dropped_groups: groups left out by the admission rule (set by ``get``).
        behaviour_versions: per group, the version that sampled it.
    """

    batch: RolloutBatch
    reward: RewardOutput
    grading_seconds: float
    stale_dropped_groups: int = 0
    behaviour_versions: list[int] = field(default_factory=list)

    @property
    def step(self) -> int:
        return self.batch.step

    def to_dict(self) -> dict[str, Any]:
        r = self.reward
        return {
            **self.batch.to_dict(),
            "reward": {"scores": r.scores, "judge_version": r.judge_version, "keep_groups": r.keep_groups, "counts": r.counts},
            "grading_seconds": self.grading_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradedBatch:
        batch = RolloutBatch.from_dict(d)
        r = d["reward"]
        reward = RewardOutput(list(r["scores"]), int(r["judge_version"]), r["keep_groups"], dict(r["counts"]))
        return cls(batch, reward, float(d["grading_seconds"]), 0, [g[0].policy_version for g in batch.samples])


def merge_rewards(parts: list[RewardOutput], group_sizes: list[int]) -> RewardOutput:
    """One ``RewardOutput`` from per-group (or per-chunk) ones, in order: scores and
    ``keep_groups`` concatenated, counters summed, mean diagnostics averaged over the parts
    that report them, ``judge_version`` the newest."""
    scores: list[float | None] = []
    keep: list[bool] | None = [] if any(p.keep_groups is not None for p in parts) else None
    counts: dict[str, float] = {}
    means: dict[str, list[float]] = {}
    for part, groups in zip(parts, group_sizes):
        scores.extend(part.scores)
        if keep is not None:
            keep.extend(part.keep_groups if part.keep_groups is not None else [True] * groups)
        for k, v in part.counts.items():
            if k in _MEAN_COUNTS:
                if not (isinstance(v, float) and math.isnan(v)):
                    means.setdefault(k, []).append(float(v))
                else:
                    means.setdefault(k, [])
            else:
                counts[k] = counts.get(k, 0.0) + v
    for k, vs in means.items():
        counts[k] = sum(vs) / len(vs) if vs else math.nan
    version = max((p.judge_version for p in parts), default=0)
    return RewardOutput(scores, version, keep, counts)


def grading_engine(engine: Engine) -> Engine:
    """An engine over a copy of ``engine``'s weights for the grading thread:
    ``engine.snapshot()``, or an ``HFEngine`` over a copy of the trainer's model for
    engines that cannot copy themselves (``VLLMEngine``: its serving copy belongs to the
    rollout thread)."""
    try:
        return engine.snapshot()
    except NotImplementedError:
        twin = HFEngine(copy.deepcopy(engine.model), copy.deepcopy(engine.tokenizer), policy_version=engine.policy_version)
        return twin


def _rollout_side(engine: Engine) -> Engine:
    """The rollout thread's engine: a snapshot, or (``VLLMEngine``) the engine itself with
    its serving copy lagging behind the trainer (weights pushed by ``serve_weights``)."""
    if hasattr(engine, "serve_weights"):
        engine.sync_on_update = False  # type: ignore[attr-defined]
        return engine
    return engine.snapshot()


def _weights(engine: Engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


class _Stop(Exception):
    """Raised inside the worker threads when the pipeline closes."""


class StreamPipeline:
    """Rollout, grading and updates on three threads; see the module doc.

    Args:
        engine: the trainer's engine (updated in place by the trainer).
        rollout: the :class:`Rollout` (prompt schedule, ``n``, caps, temperature, seed).
        reward: the reward source (graded per group when ``reward.grades_per_group``).
        eta: staleness bound (>= 0).
        last_step: no step past it is sampled.
        groups_per_call: prompts per generate call on engines without continuous batching.
        on_sampled: called on the rollout thread after each step's last group is sampled.
        rollout_engine / grader_engine: the two threads' engines (default: copies, see
            :func:`grading_engine`), for tests and custom engines.

    Protocol (as ``RolloutPipeline``): ``start(next_step, pending)``, then per step
    ``get(step)`` and, after the update and ``engine.bump_version()``, ``after_update(step)``;
    ``pending(step)`` + ``unpause()`` around a checkpoint; ``close()``.
    """

    def __init__(
        self,
        engine: Engine,
        rollout: Rollout,
        reward: RewardSource,
        *,
        eta: int,
        last_step: int,
        groups_per_call: int = 1,
        on_sampled: Callable[[int], None] | None = None,
        rollout_engine: Engine | None = None,
        grader_engine: Engine | None = None,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.engine = engine
        self.rollout = rollout
        self.reward = reward
        self.eta = eta
        self.last_step = last_step
        self.groups_per_call = groups_per_call
        self.on_sampled = on_sampled
        self._rollout_engine = rollout_engine
        self._grader_engine = grader_engine
        self._cond = threading.Condition()
        self._weights: dict[int, dict[str, torch.Tensor]] = {}
        # (step, group index, samples, rollout seconds, the step's prompts)
        self._queue: list[tuple[int, int, list[Sample], float, list[TrainPrompt]]] = []
        self._ready: dict[int, GradedBatch] = {}
        self._restored: set[int] = set()
        self._error: BaseException | None = None
        self._stop = False
        self._paused = False
        self._grading_busy = False
        self._collected_groups = 0  # handed to the grading thread, step not complete yet
        self._threads: list[threading.Thread] = []
        #: (time, event, step, group): "sampled", "grading", "graded" per group; for tests and benches
        self.events: list[tuple[float, str, int, int]] = []
        #: busy and waiting seconds per stage, groups per outcome
        self.counts: dict[str, float] = {
            "rollout_busy_s": 0.0,
            "rollout_wait_s": 0.0,
            "grading_busy_s": 0.0,
            "grading_wait_s": 0.0,
            "sampled_groups": 0,
            "graded_groups": 0,
            "delivered_groups": 0,
            "stale_dropped_groups": 0,
            "generated_tokens": 0,
        }

    # ---- protocol ----------------------------------------------------------------------

    def start(self, next_step: int, pending: Iterable[GradedBatch | RolloutBatch] = ()) -> None:
        """Start the threads at ``next_step``; ``pending`` are steps sampled (and graded)
        before a checkpoint: graded ones are handed over as they are, ungraded ones (a
        checkpoint of the batch pipeline) are graded with the oldest weights available."""
        if self._threads:
            return
        if self._rollout_engine is None:
            self._rollout_engine = _rollout_side(self.engine)
        if self._grader_engine is None:
            self._grader_engine = grading_engine(self.engine)
        self._publish()
        for item in pending:
            self._restored.add(item.step)
            if isinstance(item, GradedBatch):
                self._ready[item.step] = item
            else:
                for i, group in enumerate(item.samples):
                    share = item.rollout_seconds / max(1, len(item.samples))
                    self._queue.append((item.step, i, group, share, item.prompts))
        self._next_step = next_step
        # versions count updates: step s updates version offset + s - 1 (offset 0 unless the
        # engine came with a version of its own)
        self._offset = max(0, self.engine.policy_version - (next_step - 1))
        self._torch_threads = torch.get_num_threads()
        for name, target in (("rubricrl-rollout", self._rollout_loop), ("rubricrl-grading", self._grading_loop)):
            thread = threading.Thread(target=self._guard(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def get(self, step: int) -> GradedBatch:
        """Step ``step``'s graded groups, waiting for them; groups staler than ``eta`` against
        the engine's current version are dropped and counted (the admission rule)."""
        with self._cond:
            while step not in self._ready:
                self._raise_if_failed()
                if step > self.last_step:
                    raise RuntimeError(f"step {step} is past the last step {self.last_step}")
                self._cond.wait()
            graded = self._ready.pop(step)
        return self._admit(graded, self.engine.policy_version)

    def after_update(self, step: int) -> None:
        """The update of ``step`` is done and the version bumped: publish the new weights."""
        self._publish()

    def pending(self, step: int) -> list[GradedBatch]:
        """For a checkpoint after ``step``: wait until steps ``step + 1 .. step + eta`` (sampled
        with weights older than the current ones) are graded, pause grading (until
        :meth:`unpause`) and return them. A whole-step reward source (its state, e.g. RLPR's
        std filter, changed by grading) also gets the later steps it has fully graded, so
        its saved state and the saved steps agree; per-group sources have no such state, and
        later steps are sampled and graded again after a resume (same weights and seeds)."""
        upto = min(step + self.eta, self.last_step)
        with self._cond:
            for s in range(step + 1, upto + 1):
                while s not in self._ready:
                    self._raise_if_failed()
                    self._cond.wait()
            self._paused = True
            while self._grading_busy:
                self._raise_if_failed()
                self._cond.wait()
            if not getattr(self.reward, "grades_per_group", False):
                upto = self.last_step
            return [self._ready[s] for s in sorted(self._ready) if step < s <= upto]

    def unpause(self) -> None:
        """Let grading continue after :meth:`pending`."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def close(self) -> None:
        """Stop both threads (after the generate call or grading unit each is running)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads = []
        engine = self._rollout_engine
        if engine is self.engine and hasattr(engine, "serve_weights") and not engine.sync_on_update:  # type: ignore[attr-defined]
            # the serving copy follows the trainer again
            engine.serve_weights(_weights(engine), engine.policy_version)  # type: ignore[attr-defined]
            engine.sync_on_update = True  # type: ignore[attr-defined]

    def in_flight(self) -> int:
        """Groups sampled but not yet handed to the trainer (queued, being graded, graded)."""
        with self._cond:
            ready = sum(len(g.batch.samples) for g in self._ready.values())
            return len(self._queue) + self._collected_groups + ready

    def __enter__(self) -> StreamPipeline:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the trainer side ------------------------------------------------------------------

    def _admit(self, graded: GradedBatch, current: int) -> GradedBatch:
        keep = [i for i, v in enumerate(graded.behaviour_versions) if current - v <= self.eta]
        dropped = len(graded.behaviour_versions) - len(keep)
        with self._cond:
            self.counts["delivered_groups"] += len(keep)
            self.counts["stale_dropped_groups"] += dropped
        if not dropped:
            return graded
        batch, reward = graded.batch, graded.reward
        G = len(batch.samples[0]) if batch.samples else 0
        samples = [batch.samples[i] for i in keep]
        sub = RolloutBatch(
            batch.step,
            [batch.prompts[i] for i in keep],
            samples,
            min((g[0].policy_version for g in samples), default=batch.policy_version),
            batch.rollout_seconds,
        )
        scores = [reward.scores[i * G + j] for i in keep for j in range(G)]
        keep_groups = None if reward.keep_groups is None else [reward.keep_groups[i] for i in keep]
        out = RewardOutput(scores, reward.judge_version, keep_groups, dict(reward.counts))
        return GradedBatch(sub, out, graded.grading_seconds, dropped, [graded.behaviour_versions[i] for i in keep])

    def _publish(self) -> None:
        """Keep a copy of the engine's current weights for the two threads; drop the copies
        no thread can need any more (older than ``current - eta``)."""
        version = self.engine.policy_version
        weights = _weights(self.engine)
        with self._cond:
            self._weights[version] = weights
            for v in [v for v in self._weights if v < version - self.eta]:
                del self._weights[v]
            self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the streaming pipeline failed: {self._error!r}") from self._error

    # ---- worker threads ------------------------------------------------------------------

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                # a new thread starts with OpenMP's default team size: use the caller's
                # (the stages share the cores; vLLM's CPU attention also insists on it)
                torch.set_num_threads(self._torch_threads)
                target()
            except _Stop:
                pass
            except BaseException as err:  # surfaced to the trainer thread in get()
                with self._cond:
                    self._error = err
                    self._cond.notify_all()

        return run

    def _weights_for(self, version: int) -> tuple[int, dict[str, torch.Tensor]]:
        """(Under the lock.) The weights of ``version``, waiting until they are published; a
        version already dropped gives the oldest one kept."""
        while True:
            if self._stop:
                raise _Stop
            if version in self._weights:
                return version, self._weights[version]
            if self._weights and min(self._weights) > version:
                oldest = min(self._weights)
                return oldest, self._weights[oldest]
            self._cond.wait()

    def _rollout_loop(self) -> None:
        engine = self._rollout_engine
        assert engine is not None
        ro = self.rollout
        for step in range(self._next_step, self.last_step + 1):
            if step in self._restored:
                continue
            t0 = time.perf_counter()
            with self._cond:
                version, weights = self._weights_for(self._offset + behaviour_version_of(step, self.eta))
            if version != _serving_version(engine):
                _load(engine, weights, version)
            with self._cond:
                self.counts["rollout_wait_s"] += time.perf_counter() - t0
            prompts = ro.schedule.prompts_for(step)
            t1 = time.perf_counter()
            stream = engine.generate_stream(
                [p.messages for p in prompts],
                ro.n,
                max_new_tokens=ro.caps(prompts),
                temperature=ro.temperature,
                top_p=ro.top_p,
                seed=rollout_seed(ro.seed, step),
                groups_per_call=self.groups_per_call,
            )
            try:
                for i, group in stream:
                    now = time.perf_counter()
                    with self._cond:
                        if self._stop:
                            raise _Stop
                        self.counts["rollout_busy_s"] += now - t1
                        self.counts["sampled_groups"] += 1
                        self.counts["generated_tokens"] += sum(len(s.response_ids) for s in group)
                        self.events.append((now, "sampled", step, i))
                        self._queue.append((step, i, group, now - t1, prompts))
                        self._cond.notify_all()
                    t1 = time.perf_counter()
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()  # a vLLM stream aborts its unfinished requests
            if self.on_sampled is not None:
                self.on_sampled(step)

    def _grading_loop(self) -> None:
        engine = self._grader_engine
        assert engine is not None
        per_group = bool(getattr(self.reward, "grades_per_group", False))
        # step -> {group index: (samples, rollout seconds)} waiting to be graded (whole-step sources)
        # and step -> {group index: RewardOutput} graded
        collected: dict[int, dict[int, tuple[list[Sample], float]]] = {}
        graded: dict[int, dict[int, RewardOutput]] = {}
        seconds: dict[int, float] = {}
        while True:
            t0 = time.perf_counter()
            with self._cond:
                while not self._queue or self._paused:
                    if self._stop:
                        return
                    self._cond.wait()
                step, i, group, rollout_s, prompts = self._queue.pop(0)
                self._grading_busy = True
                self.counts["grading_wait_s"] += time.perf_counter() - t0
            try:
                collected.setdefault(step, {})[i] = (group, rollout_s)
                with self._cond:
                    self._collected_groups += 1
                units = [[i]] if per_group else ([sorted(collected[step])] if len(collected[step]) == len(prompts) else [])
                for unit in units:
                    t1 = time.perf_counter()
                    version = min(collected[step][k][0][0].policy_version for k in unit)
                    with self._cond:
                        self.events.append((t1, "grading", step, unit[0]))
                        judge_version, weights = self._weights_for(version)
                    if judge_version != _serving_version(engine):
                        _load(engine, weights, judge_version)
                    sub = RolloutBatch(
                        step, [prompts[k] for k in unit], [collected[step][k][0] for k in unit], version, 0.0
                    )
                    out = self.reward.score(engine, sub)
                    parts = graded.setdefault(step, {})
                    if per_group:
                        parts[unit[0]] = out
                    else:
                        parts[-1] = out
                    took = time.perf_counter() - t1
                    seconds[step] = seconds.get(step, 0.0) + took
                    with self._cond:
                        self.counts["grading_busy_s"] += took
                        self.counts["graded_groups"] += len(unit)
                        self.events.append((time.perf_counter(), "graded", step, unit[0]))
                if len(collected[step]) == len(prompts) and (not per_group or len(graded.get(step, {})) == len(prompts)):
                    self._finish_step(step, prompts, collected.pop(step), graded.pop(step), seconds.pop(step, 0.0), per_group)
            finally:
                with self._cond:
                    self._grading_busy = False
                    self._cond.notify_all()

    def _finish_step(self, step, prompts, groups, parts, grading_s, per_group) -> None:
        order = list(range(len(prompts)))
        samples = [groups[k][0] for k in order]
        versions = [g[0].policy_version for g in samples]
        if per_group:
            reward = merge_rewards([parts[k] for k in order], [1] * len(order))
        else:
            reward = parts[-1]
        batch = RolloutBatch(step, list(prompts), samples, min(versions), sum(groups[k][1] for k in order))
        with self._cond:
            self._ready[step] = GradedBatch(batch, reward, grading_s, 0, versions)
            self._collected_groups -= len(samples)
            self._cond.notify_all()


def _serving_version(engine: Engine) -> int:
    """The version a thread's engine samples with (a lagging vLLM serving copy: its own)."""
    return engine.served_version if hasattr(engine, "serve_weights") else engine.policy_version  # type: ignore[attr-defined]


def _load(engine: Engine, weights: Mapping[str, torch.Tensor], version: int) -> None:
    """Switch a thread's engine to ``version`` (between requests)."""
    if hasattr(engine, "serve_weights"):
        engine.serve_weights(weights, version)  # type: ignore[attr-defined]
    else:
        engine.load_weights(weights, version)
