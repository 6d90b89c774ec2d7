"""Streaming pipeline: rollout, self-grading and updates overlap, group by group.

Three threads share the machine's devices (the CPU cores, or one GPU):

* **rollout** (``rubricrl-rollout``): samples the steps on its own engine (an ``HFEngine``
  snapshot, or the lagging serving copy of a ``VLLMEngine``) through one generation
  session (``engine.open_session``, rubricrl/engines/session.py), which hands over each
  prompt's group of ``G`` responses as soon as it is finished (vLLM: continuous batching;
  HF: chunks of ``pipeline.stream_groups`` prompts per generate call). Every step the
  served weights may sample joins the session at once, so on vLLM the next steps' requests
  fill the slots that the current step's short responses leave while its long tail still
  decodes;
* **grading** (``rubricrl-grading``): grades every group as soon as it is handed over, with
  a copy of the weights that sampled it (the judge is pi_behaviour, as in the synchronous
  trainer where it is pi_old), while later groups are still being sampled; a reward source
  without ``grades_per_group = True`` (RLPR: its std filter looks at a whole step) is
  called once per step, when the step's last group is in;
* **trainer** (the caller): takes each step's graded groups (:meth:`StreamPipeline.get`),
  updates, and publishes the new weights (:meth:`StreamPipeline.after_update`).

The devices are split in two: the rollout, and the *learner*, on which grading and updates
take turns (from ``get`` to ``after_update`` the trainer has the turn; a grading unit under
way finishes first). On the CPU the split is of torch's threads (``pipeline.rollout_threads``,
default half of the caller's, rounded up; the learner gets the rest, or as many as the
rollout on an engine with ``equal_stage_threads`` (vLLM), and the caller's thread count is
set to it until ``close``): no more compute threads run than there are cores, so
the stages overlap instead of stealing cores from each other (three OpenMP teams on two
cores slowed every stage 2-3x, measured). The rollout lends its threads to grading (with
``newest`` and a per-group reward source): while it waits for weights, and between two
decode iterations while the trainer has the learner's turn, it grades queued groups on
the grader's copy (one grader at a time; ``counts["rollout_graded_groups"]``), so a
learner that falls behind gets help from a rollout that is ahead. On one GPU the stages
share the device's streams; the turn-taking keeps grading's activations and the
update's gradients from being resident at once.

Mini-batches are steps: ``data.prompts_per_step`` groups (the unit of advantages, of the
prompt schedule and of checkpoints); the trainer updates as soon as the step's groups are
graded, while the rollout thread already samples the next steps.

Staleness (AReaL's admission rule). Versions count trainer updates; the update of step
``s`` runs at version ``s - 1`` (plus the engine's version at the first step, if it came
with one), so a step sampled with version ``v`` is ``s - 1 - v`` versions stale at its
update; the rule is ``s - 1 - v <= eta``, i.e. ``v >= b(s) = max(0, s - 1 - eta)``. The
rollout switches weights only when its session is drained (never inside a request: an
in-flight sample keeps one version) and then loads, by ``pipeline.behaviour_version``:

* ``newest`` (default): the newest published weights, waiting until they are at least
  ``b(s)`` for the next step ``s``; every following step those weights admit joins the
  session too. With ``eta = k`` about ``k`` steps share one set of weights and one
  continuous batch, and the rollout drains (and waits for weights) once per ``k`` steps
  instead of once per step. Which version samples a step depends on timing.
* ``scheduled``: exactly ``b(s)``, so only steps with the same scheduled version
  (steps ``1 .. eta + 1``, all at version 0) share a session; reproducible (below).

At update time :meth:`get` checks the rule on every group's recorded behaviour version and
*drops* (and counts, ``stale_dropped_groups``) any group that is more than ``eta``
versions old; by construction that only happens to groups restored from a checkpoint
written with a larger ``eta``. Nothing is lost: every sampled group is trained, dropped
and counted (stale, ungraded, all-equal) or still in the pipeline at the end (``counts``).

Determinism (``scheduled``). Which weights sample and grade which group, the sampling seeds
(per step and per chunk) and the grading units (one group, or one step) do not depend on
timing, so a run is reproducible and a resumed run continues bitwise like an uninterrupted
one (as long as the judge does not draw from the global RNG: ``judge_mode=sample``
interleaves with the rollout thread's seeded sampling). The price: step ``s`` is always
sampled with version ``b(s)`` even when newer weights exist, and the rollout drains every
step. ``newest`` keeps the seeds but not the versions: runs differ in which version sampled
a step (recorded per step, ``behaviour_version_min`` / ``_max``), and a resume is not
bitwise.

Checkpoints: :meth:`pending` waits until steps ``k + 1 .. k + eta`` (sampled with weights
older than the current ones) are graded, pauses grading, and returns every fully graded
step after ``k``; they are saved with their rewards, and :meth:`start` of a resumed run
takes them back (the rollout thread skips them). Partly graded steps are sampled and graded
again after a resume, with the same seeds (``scheduled``: and the same weights).
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

from rubricrl.config import BEHAVIOUR_VERSIONS
from rubricrl.engines import Engine, HFEngine
from rubricrl.engines.base import Sample, check_int
from rubricrl.engines.session import GenerationSession
from rubricrl.pipeline.rewards import RewardOutput, RewardSource
from rubricrl.pipeline.data import TrainPrompt
from rubricrl.pipeline.rollout import Rollout, RolloutBatch, rollout_seed

__all__ = ["GradedBatch", "StreamPipeline", "behaviour_version_of", "merge_rewards"]

#: counts of RewardOutput that are means (merged as group-weighted means), not counters
_MEAN_COUNTS = ("verdict_mass", "verdict_accuracy")


def behaviour_version_of(step: int, eta: int) -> int:
    """The oldest weight version that may sample step ``step`` (1-based) under staleness bound
    ``eta``, and the one that does with ``behaviour_version="scheduled"``."""
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
    that report them (weighted by their groups), ``judge_version`` the newest."""
    scores: list[float | None] = []
    keep: list[bool] | None = [] if any(p.keep_groups is not None for p in parts) else None
    counts: dict[str, float] = {}
    means: dict[str, list[tuple[float, int]]] = {}
    for part, groups in zip(parts, group_sizes):
        scores.extend(part.scores)
        if keep is not None:
            keep.extend(part.keep_groups if part.keep_groups is not None else [True] * groups)
        for k, v in part.counts.items():
            if k in _MEAN_COUNTS:
                reported = means.setdefault(k, [])
                if not (isinstance(v, float) and math.isnan(v)):
                    reported.append((float(v), groups))
            else:
                counts[k] = counts.get(k, 0.0) + v
    for k, vs in means.items():
        weight = sum(w for _, w in vs)
        counts[k] = sum(v * w for v, w in vs) / weight if weight else math.nan
    version = max((p.judge_version for p in parts), default=0)
    return RewardOutput(scores, version, keep, counts)


def reorder_groups(reward: RewardOutput, order: list[int], group_size: int) -> RewardOutput:
    """``reward`` of groups in ``order`` (``order[p]`` = the group index at position ``p``)
    rearranged into group-index order (scores: ``group_size`` per group)."""
    if order == sorted(order):
        return reward
    position = {g: p for p, g in enumerate(order)}
    ranked = [position[g] for g in sorted(order)]
    scores = [s for p in ranked for s in reward.scores[p * group_size : (p + 1) * group_size]]
    keep = None if reward.keep_groups is None else [reward.keep_groups[p] for p in ranked]
    return RewardOutput(scores, reward.judge_version, keep, dict(reward.counts))


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
        behaviour_version: ``newest`` (the default) or ``scheduled``; see the module doc.
        rollout_threads: torch threads of the rollout thread (0: half of the caller's,
            rounded up); see :func:`stage_threads`.
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
        behaviour_version: str = "newest",
        rollout_threads: int = 0,
        on_sampled: Callable[[int], None] | None = None,
        rollout_engine: Engine | None = None,
        grader_engine: Engine | None = None,
    ) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        if behaviour_version not in BEHAVIOUR_VERSIONS:
            raise ValueError(f"behaviour_version must be one of {BEHAVIOUR_VERSIONS}, got {behaviour_version!r}")
        self.behaviour_version = behaviour_version
        check_int(rollout_threads, "rollout_threads", minimum=0)
        self.rollout_threads = rollout_threads
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
        # who grades right now (one unit at a time, on the grader engine): "grading" (the
        # grading thread, on the learner's threads), "rollout" (the rollout thread lending
        # its threads, see _lends) or None
        self._grader_user: str | None = None
        # per-step grading state, touched only by the thread holding the grader
        self._collected: dict[int, dict[int, tuple[list[Sample], float]]] = {}
        self._graded: dict[int, list[tuple[list[int], RewardOutput]]] = {}
        self._grade_seconds: dict[int, float] = {}
        self._updating = False  # the trainer holds the learner's turn (get .. after_update)
        self._collected_groups = 0  # handed to the grading thread, step not complete yet
        self._threads: list[threading.Thread] = []
        # the rollout thread grades too (newest, per-group sources): while it waits for
        # weights, and between decode iterations while the trainer has the learner's turn
        self._lends = behaviour_version == "newest" and bool(getattr(reward, "grades_per_group", False))
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
            "rollout_graded_groups": 0,
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
        self._caller_threads = torch.get_num_threads()
        rollout_threads, learner_threads = stage_threads(self._caller_threads, self.rollout_threads)
        if getattr(self._rollout_engine, "equal_stage_threads", False):
            learner_threads = rollout_threads  # see VLLMEngine.equal_stage_threads
        #: torch threads of (the rollout, the learner) while the pipeline runs
        self.stage_thread_counts = (rollout_threads, learner_threads)
        torch.set_num_threads(learner_threads)  # the caller's updates (restored by close)
        for name, target, threads in (
            ("rubricrl-rollout", self._rollout_loop, rollout_threads),
            ("rubricrl-grading", self._grading_loop, learner_threads),
        ):
            thread = threading.Thread(target=self._guard(target, threads), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def get(self, step: int) -> GradedBatch:
        """Step ``step``'s graded groups, waiting for them; groups staler than ``eta`` against
        the engine's current version are dropped and counted (the admission rule). The
        caller then has the learner's turn: grading waits until :meth:`after_update`."""
        with self._cond:
            while step not in self._ready:
                self._raise_if_failed()
                if step > self.last_step:
                    raise RuntimeError(f"step {step} is past the last step {self.last_step}")
                self._cond.wait()
            graded = self._ready.pop(step)
            self._updating = True
            while self._grader_user == "grading":  # the learner's grading unit finishes first
                self._raise_if_failed()
                self._cond.wait()
        return self._admit(graded, self.engine.policy_version)

    def after_update(self, step: int) -> None:
        """The update of ``step`` is done and the version bumped: publish the new weights and
        hand the learner's turn back to grading."""
        self._publish()
        with self._cond:
            self._updating = False
            self._cond.notify_all()

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
            while self._grader_user is not None:
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
        if self._threads:
            torch.set_num_threads(self._caller_threads)
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

    def _guard(self, target: Callable[[], None], threads: int) -> Callable[[], None]:
        def run() -> None:
            try:
                # a new thread starts with OpenMP's default team size: give it its share
                torch.set_num_threads(threads)
                target()
            except _Stop:
                pass
            except BaseException as err:  # surfaced to the trainer thread in get()
                with self._cond:
                    self._error = err
                    self._cond.notify_all()

        return run

    def _published(self, version: int) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(Under the lock.) The weights of ``version`` if published, the oldest kept if
        ``version`` was already dropped, else None."""
        if version in self._weights:
            return version, self._weights[version]
        if self._weights and min(self._weights) > version:
            oldest = min(self._weights)
            return oldest, self._weights[oldest]
        return None

    def _weights_for(self, version: int) -> tuple[int, dict[str, torch.Tensor]]:
        """(Under the lock.) :meth:`_published`, waiting until ``version`` is published."""
        while True:
            if self._stop:
                raise _Stop
            found = self._published(version)
            if found is not None:
                return found
            self._cond.wait()

    def _weights_to_sample(self, step: int) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(Under the lock.) The weights the rollout loads to sample ``step`` once its session
        is drained, or None while they are not published: the scheduled version ``b(step)``
        (:meth:`_published`), or (``newest``) the newest published version once it is at
        least ``b(step)``."""
        needed = self._offset + behaviour_version_of(step, self.eta)
        if self.behaviour_version == "scheduled":
            return self._published(needed)
        newest = max(self._weights, default=-1)
        return (newest, self._weights[newest]) if newest >= needed else None

    def _wait_for_weights(self, step: int) -> tuple[int, dict[str, torch.Tensor]]:
        """The weights to sample ``step`` with (:meth:`_weights_to_sample`), waiting for them;
        meanwhile a lending rollout (``_lends``) grades queued groups whenever the grader is
        free (on the grader engine, with the rollout's threads)."""
        steal = self._lends
        while True:
            with self._cond:
                while True:
                    if self._stop:
                        raise _Stop
                    found = self._weights_to_sample(step)
                    if found is not None:
                        return found
                    taken = self._claim("rollout") if steal else None
                    if taken is not None:
                        break
                    self._cond.wait()
            self._grade(taken)

    def _admissible(self, step: int, version: int) -> bool:
        """Whether weights ``version`` may sample ``step``: its scheduled version exactly, or
        (``newest``) any version that keeps the step within ``eta`` at its update."""
        needed = self._offset + behaviour_version_of(step, self.eta)
        return version == needed if self.behaviour_version == "scheduled" else version >= needed

    def _rollout_loop(self) -> None:
        engine = self._rollout_engine
        assert engine is not None
        ro = self.rollout
        steps = [s for s in range(self._next_step, self.last_step + 1) if s not in self._restored]
        left: dict[int, int] = {}  # step -> groups not sampled yet
        prompts_of: dict[int, list[TrainPrompt]] = {}
        k = 0  # steps[k] is the next step to submit

        def submit(session: GenerationSession, step: int) -> None:
            prompts = ro.schedule.prompts_for(step)
            prompts_of[step], left[step] = prompts, len(prompts)
            session.submit(
                step,
                [p.messages for p in prompts],
                ro.n,
                max_new_tokens=ro.caps(prompts),
                temperature=ro.temperature,
                top_p=ro.top_p,
                seed=rollout_seed(ro.seed, step),
            )

        served = _serving_version(engine)  # tracked here: asking vLLM on every decode step costs
        with engine.open_session(self.groups_per_call) as session:
            t1 = time.perf_counter()
            while k < len(steps) or session.in_flight():
                if not session.in_flight():
                    # drained: the only moment the weights may change (never inside a request)
                    t0 = time.perf_counter()
                    version, weights = self._wait_for_weights(steps[k])
                    if version != served:
                        _load(engine, weights, version)
                        served = version
                    submit(session, steps[k])
                    k += 1
                    t1 = time.perf_counter()
                    with self._cond:
                        self.counts["rollout_wait_s"] += t1 - t0
                # every later step the served weights may sample joins the same session
                while k < len(steps) and self._admissible(steps[k], served):
                    submit(session, steps[k])
                    k += 1
                finished = session.poll()
                now = time.perf_counter()
                with self._cond:
                    if self._stop:
                        raise _Stop
                    for step, i, group in finished:
                        self.counts["rollout_busy_s"] += now - t1
                        self.counts["sampled_groups"] += 1
                        self.counts["generated_tokens"] += sum(len(s.response_ids) for s in group)
                        self.events.append((now, "sampled", step, i))
                        self._queue.append((step, i, group, now - t1, prompts_of[step]))
                        t1 = now
                        left[step] -= 1
                    if finished:
                        self._cond.notify_all()
                for step in [s for s, n in left.items() if n == 0]:
                    del left[step], prompts_of[step]
                    if self.on_sampled is not None:
                        self.on_sampled(step)
                if self._lends:  # while the trainer updates, grade between decode iterations
                    with self._cond:
                        taken = self._claim("rollout") if self._updating else None
                    if taken is not None:
                        t2 = time.perf_counter()
                        self._grade(taken)
                        t1 += time.perf_counter() - t2  # grading time is not rollout time

    def _grading_loop(self) -> None:
        while True:
            t0 = time.perf_counter()
            with self._cond:
                while (taken := self._claim("grading")) is None:
                    if self._stop:
                        return
                    self._cond.wait()
                self.counts["grading_wait_s"] += time.perf_counter() - t0
            self._grade(taken)

    def _claim(self, user: str) -> list[tuple[int, int, list[Sample], float, list[TrainPrompt]]] | None:
        """(Under the lock.) Take the next grading unit's groups off the queue for ``user``
        ("grading" or "rollout"), or None: nothing queued, grading paused, the grader in use,
        or (the grading thread) the trainer has the learner's turn. The oldest queued group;
        with ``newest`` and a per-group source also every queued group of its step and
        version (one call grades them together: bigger batches when grading falls behind)."""
        if not self._queue or self._paused or self._grader_user is not None:
            return None
        if user == "grading" and self._updating:
            return None
        taken = [self._queue.pop(0)]
        if self.behaviour_version == "newest" and getattr(self.reward, "grades_per_group", False):
            step, version = taken[0][0], taken[0][2][0].policy_version
            same = [q[0] == step and q[2][0].policy_version == version for q in self._queue]
            taken += [q for q, s in zip(self._queue, same) if s]
            self._queue = [q for q, s in zip(self._queue, same) if not s]
        self._grader_user = user
        self._collected_groups += len(taken)
        return taken

    def _grade(self, taken: list[tuple[int, int, list[Sample], float, list[TrainPrompt]]]) -> None:
        """Grade groups claimed by :meth:`_claim` on the grader engine (a whole-step source:
        once the step's last group is in), then give the grader back."""
        engine = self._grader_engine
        assert engine is not None
        user = self._grader_user
        per_group = bool(getattr(self.reward, "grades_per_group", False))
        try:
            step, prompts = taken[0][0], taken[0][4]
            collected = self._collected.setdefault(step, {})
            for _, i, group, rollout_s, _ in taken:
                collected[i] = (group, rollout_s)
            complete = len(collected) == len(prompts)
            units = [[q[1] for q in taken]] if per_group else ([sorted(collected)] if complete else [])
            for unit in units:
                t1 = time.perf_counter()
                version = min(collected[k][0][0].policy_version for k in unit)
                with self._cond:
                    self.events.append((t1, "grading", step, unit[0]))
                    judge_version, weights = self._weights_for(version)
                if judge_version != _serving_version(engine):
                    _load(engine, weights, judge_version)
                sub = RolloutBatch(step, [prompts[k] for k in unit], [collected[k][0] for k in unit], version, 0.0)
                self._graded.setdefault(step, []).append((unit, self.reward.score(engine, sub)))
                took = time.perf_counter() - t1
                self._grade_seconds[step] = self._grade_seconds.get(step, 0.0) + took
                with self._cond:
                    self.counts["grading_busy_s"] += took
                    self.counts["graded_groups"] += len(unit)
                    if user == "rollout":
                        self.counts["rollout_graded_groups"] += len(unit)
                    self.events.extend((time.perf_counter(), "graded", step, k) for k in unit)
            if complete and sum(len(unit) for unit, _ in self._graded.get(step, [])) == len(prompts):
                self._finish_step(
                    step, prompts, self._collected.pop(step), self._graded.pop(step), self._grade_seconds.pop(step, 0.0)
                )
        finally:
            with self._cond:
                self._grader_user = None
                self._cond.notify_all()

    def _finish_step(
        self,
        step: int,
        prompts: list[TrainPrompt],
        groups: dict[int, tuple[list[Sample], float]],
        units: list[tuple[list[int], RewardOutput]],
        grading_s: float,
    ) -> None:
        """Hand over a fully graded step: its groups and their grades in prompt order."""
        samples = [groups[k][0] for k in range(len(prompts))]
        versions = [g[0].policy_version for g in samples]
        reward = reorder_groups(merge_rewards([out for _, out in units], [len(u) for u, _ in units]),
                                [k for unit, _ in units for k in unit], len(samples[0]) if samples else 0)  # fmt: skip
        batch = RolloutBatch(step, list(prompts), samples, min(versions), sum(groups[k][1] for k in groups))
        with self._cond:
            self._ready[step] = GradedBatch(batch, reward, grading_s, 0, versions)
            self._collected_groups -= len(samples)
            self._cond.notify_all()


def stage_threads(total: int, rollout_threads: int = 0) -> tuple[int, int]:
    """Torch threads of (the rollout thread, the learner: grading and updates, which take
    turns) out of the caller's ``total``: ``rollout_threads`` (0: half, rounded up) and the
    rest, each at least 1."""
    rollout = rollout_threads or max(1, (total + 1) // 2)
    return rollout, max(1, total - rollout)


def _serving_version(engine: Engine) -> int:
    """The version a thread's engine samples with (a lagging vLLM serving copy: its own)."""
    return engine.served_version if hasattr(engine, "serve_weights") else engine.policy_version  # type: ignore[attr-defined]


def _load(engine: Engine, weights: Mapping[str, torch.Tensor], version: int) -> None:
    """Switch a thread's engine to ``version`` (between requests)."""
    if hasattr(engine, "serve_weights"):
        engine.serve_weights(weights, version)  # type: ignore[attr-defined]
    else:
        engine.load_weights(weights, version)
