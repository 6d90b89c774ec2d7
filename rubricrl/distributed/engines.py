"""The engine workers of a run, driven from the driver: weight sync, sampling and grading,
re-sampling the chunks of a worker that died.

Engine workers are restarted by Ray (``max_restarts = distributed.max_restarts``). A
restarted worker comes back with the initial weights, so before it takes work again it
loads the current weights (the object-store reference of the last sync) with the current
version. A chunk whose rollout or grading was lost is sampled and graded again, whole,
with the same seed and weights: the step gets exactly one result per group.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from rubricrl.distributed.cluster import Placement, actor_options, threads_for
from rubricrl.distributed.engine_worker import EngineWorker, chunk_seed, split_groups
from rubricrl.distributed.errors import DistributedError
from rubricrl.pipeline import RewardOutput, RolloutBatch
from rubricrl.pipeline.data import TrainPrompt

__all__ = ["EngineFleet", "merge_rewards"]

#: RewardOutput.counts keys that are means (merged weighted by responses), not counts.
MEAN_COUNTS = ("verdict_mass", "verdict_accuracy")


def merge_rewards(parts: list[tuple[RewardOutput, int]]) -> RewardOutput:
    """One step's RewardOutput from its chunks' ``(output, groups)``, in chunk order.

    Counts add up; :data:`MEAN_COUNTS` are averaged weighted by the chunks' groups (all
    groups have G responses; NaN chunks, which had nothing to average, left out);
    ``judge_version`` is the newest.
    """
    scores: list[float | None] = []
    keep: list[bool] | None = [] if any(o.keep_groups is not None for o, _ in parts) else None
    counts: dict[str, float] = {}
    weights: dict[str, float] = {}
    for out, n in parts:
        scores.extend(out.scores)
        if keep is not None:
            keep.extend(out.keep_groups if out.keep_groups is not None else [True] * n)
        for k, v in out.counts.items():
            if k in MEAN_COUNTS:
                counts[k] = counts.get(k, 0.0)
                weights[k] = weights.get(k, 0.0)
                if not math.isnan(v):
                    counts[k] += v * n
                    weights[k] += n
            else:
                counts[k] = counts.get(k, 0.0) + v
    for k, w in weights.items():
        counts[k] = counts[k] / w if w > 0 else math.nan
    return RewardOutput(scores, max(o.judge_version for o, _ in parts), keep, counts)


@dataclass
class StepStats:
    """Per step: re-sampled groups, worker restarts, the slowest chunk's rollout and grading seconds."""

    resampled_groups: int = 0
    restarts: int = 0
    rollout_s: float = 0.0
    grading_s: float = 0.0
    lost: set[int] = field(default_factory=set)


class EngineFleet:
    """``engine_workers`` :class:`EngineWorker` actors.

    Args:
        raw_config: ``config_to_dict`` of the run's config.
        placement: bundles ``placement.worker_bundles``, one per worker.
        fault_hook: a test hook, called as ``fault_hook("rollout", step, fleet)`` right after
            a step's work is submitted.
    """

    def __init__(
        self,
        raw_config: dict[str, Any],
        placement: Placement,
        num_cpus: float,
        num_gpus: float,
        *,
        max_restarts: int,
        timeout_s: float,
        seed: int,
        fault_hook: Callable[[str, int, Any], None] | None = None,
    ) -> None:
        remote = ray.remote(max_restarts=max_restarts, max_task_retries=0)(EngineWorker)
        self.actors = [
            remote.options(**actor_options(placement, b, num_cpus, num_gpus)).remote(raw_config, threads_for(num_cpus))
            for b in placement.worker_bundles
        ]
        self.max_restarts = max_restarts
        self.timeout_s = timeout_s
        self.restarts = [0] * len(self.actors)
        self.seed = seed
        self.fault_hook = fault_hook
        self._weights: tuple[ray.ObjectRef, int] | None = None
        self._inflight: dict[int, tuple[ray.ObjectRef, ray.ObjectRef]] = {}
        self._chunks: list[range] = []
        self._step = 0
        self._prompts: list[TrainPrompt] = []
        self.stats = StepStats()
        #: seconds of each weight sync (driver wall time until every worker holds them)
        self.sync_seconds: list[float] = []

    # ---- weights ---------------------------------------------------------------------

    def sync(self, weights: ray.ObjectRef, version: int) -> None:
        """Every worker loads ``weights`` (an object-store reference) as ``version``."""
        start = time.perf_counter()
        self._weights = (weights, version)
        refs = {w: a.load_weights.remote(weights, version) for w, a in enumerate(self.actors)}
        for w, ref in refs.items():
            try:
                ray.get(ref)
            except RayActorError as err:
                self._revive(w, err)
        self.sync_seconds.append(time.perf_counter() - start)

    def _revive(self, w: int, err: BaseException) -> None:
        """Worker ``w`` died: count it, wait for Ray's restart and give it the current weights."""
        self.restarts[w] += 1
        self.stats.restarts += 1
        if self.restarts[w] > self.max_restarts:
            raise DistributedError(
                f"step {self._step}: engine worker {w} died {self.restarts[w]} times (distributed.max_restarts = "
                f"{self.max_restarts}): {type(err).__name__}"
            ) from None
        weights, version = self._weights
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                ray.get(self.actors[w].load_weights.remote(weights, version))
                return
            except ActorUnavailableError:  # restarting: calls are refused until it is back
                if time.monotonic() > deadline:
                    raise DistributedError(
                        f"step {self._step}: engine worker {w} did not come back within distributed.timeout_s = {self.timeout_s:g} s"
                    ) from None
                time.sleep(0.1)
            except RayActorError as again:  # died again (or for good): counted as another death
                self._revive(w, again)
                return

    # ---- one step ------------------------------------------------------------------

    def _submit(self, c: int) -> None:
        prompts = [self._prompts[i] for i in self._chunks[c]]
        seed = chunk_seed(self.seed, self._step, c)
        actor = self.actors[c]
        rolled = actor.rollout.remote(self._step, prompts, seed)
        self._inflight[c] = (rolled, actor.grade.remote(self._step, prompts, rolled, seed))

    def _result(self, c: int, which: int) -> Any:
        """Chunk ``c``'s rollout (0) or grading (1) result, re-sampling it while its worker dies."""
        while True:
            try:
                return ray.get(self._inflight[c][which])
            except RayActorError as err:
                self._revive(c, err)
                self.stats.resampled_groups += len(self._chunks[c])
                self.stats.lost.add(c)
                self._submit(c)

    def sample(self, step: int, prompts: list[TrainPrompt]) -> RolloutBatch:
        """Submit sampling and grading of every chunk of ``step``; return the sampled batch."""
        self._step, self._prompts = step, list(prompts)
        self._chunks = split_groups(len(prompts), len(self.actors))
        self.stats = StepStats()
        self._inflight = {}
        for c, chunk in enumerate(self._chunks):
            if len(chunk):
                self._submit(c)
        if self.fault_hook is not None:
            self.fault_hook("rollout", step, self)
        samples: list[list[Any]] = []
        versions = []
        for c in sorted(self._inflight):
            chunk_samples, version, seconds = self._result(c, 0)
            samples.extend(chunk_samples)
            versions.append(version)
            self.stats.rollout_s = max(self.stats.rollout_s, seconds)
        if len(set(versions)) > 1:  # cannot happen: every worker synced before the step
            raise DistributedError(f"step {step}: engine workers sampled with different policy versions {versions}")
        return RolloutBatch(step, list(prompts), samples, versions[0], self.stats.rollout_s)

    def grades(self, batch: RolloutBatch) -> RewardOutput:
        """The scores of ``batch`` (the last :meth:`sample`); a chunk re-sampled while grading
        replaces its samples in ``batch`` (the same ones when sampling is deterministic)."""
        parts = []
        lost_before = set(self.stats.lost)
        for c in sorted(self._inflight):
            out, seconds = self._result(c, 1)
            self.stats.grading_s = max(self.stats.grading_s, seconds)
            if c in self.stats.lost - lost_before:  # re-sampled now: its samples are the new rollout's
                chunk_samples, _, _ = self._result(c, 0)
                for i, group in zip(self._chunks[c], chunk_samples):
                    batch.samples[i] = group
            parts.append((out, len(self._chunks[c])))
        return merge_rewards(parts)

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
