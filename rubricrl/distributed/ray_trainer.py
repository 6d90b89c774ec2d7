"""The GRPO trainer on Ray: :class:`RayTrainer`, the :class:`~rubricrl.trainer.Trainer`
loop with engine workers and data-parallel trainer ranks as Ray actors.

The driver (this process) keeps what a step decides: the prompt schedule, advantages,
metrics, checkpoints, the policy version. It holds no model. Per step::

    sample + grade   the step's prompts in chunks, one per engine worker (rollout, then
                     self-grading with the same weights: pi_old), submitted at once
    advantages       Trainer.build_update_batch on the driver (scores only)
    update           every trainer rank gets the UpdateBatch (object store) and computes
                     its rows; agg_norm, loss and gradients all-reduced (dp_updater)
    weights          rank 0's CPU state dict into the object store; every worker loads it

``Trainer.step`` runs unchanged: the driver gives it stand-ins with the interfaces it
uses (a rollout pipeline, a reward source, an updater, an engine's version and weights).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from rubricrl.config import config_to_dict
from rubricrl.distributed.cluster import connect, place
from rubricrl.distributed.engines import EngineFleet
from rubricrl.distributed.errors import DistributedError, TrainerRankError
from rubricrl.distributed.ranks import RankDied, RankGroup
from rubricrl.pipeline import PromptSchedule, RewardOutput, RolloutBatch, make_reward_source
from rubricrl.trainer.drift import DriftGuard
from rubricrl.trainer.metrics import MetricsLog
from rubricrl.trainer.trainer import Trainer, seed_everything
from rubricrl.trainer.update import UpdateBatch

__all__ = ["RayTrainer"]


class _WorkerGradedReward:
    """The run's reward source for the prompt pools and checkpoint state; its ``score``
    collects the grading the engine workers already do."""

    def __init__(self, source: Any, trainer: RayTrainer) -> None:
        self.source, self.trainer, self.name = source, trainer, source.name

    def pools(self):
        return self.source.pools()

    def score(self, engine: Any, batch: RolloutBatch) -> RewardOutput:
        out = self.trainer.fleet.grades(batch)
        s = self.trainer.fleet.stats
        out.counts.update(resampled_groups=float(s.resampled_groups), engine_restarts=float(s.restarts), worker_grading_s=s.grading_s)
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state)


class _RayPipeline:
    """What ``Trainer.step`` uses of the rollout pipeline: on-policy (eta = 0)."""

    def __init__(self, trainer: RayTrainer) -> None:
        self.trainer = trainer

    def get(self, step: int) -> RolloutBatch:
        return self.trainer.fleet.sample(step, self.trainer.schedule.prompts_for(step))

    def after_update(self, step: int) -> None:
        self.trainer.sync_weights()

    def pending(self, step: int) -> list[RolloutBatch]:
        return []

    def unpause(self) -> None:
        """Nothing to resume after ``pending`` (the pipelines' protocol)."""

    def close(self) -> None:
        pass


class _Model:
    def __init__(self, trainer: RayTrainer) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.call_ranks(lambda r: r.weights())


class _Policy:
    """The engine as the driver sees it: the policy version, and the weights on the ranks."""

    def __init__(self, trainer: RayTrainer, version: int = 0) -> None:
        self.trainer, self.policy_version, self.model = trainer, version, _Model(trainer)

    def bump_version(self) -> int:
        self.policy_version += 1
        return self.policy_version

    def load_weights(self, state: dict[str, Any], version: int) -> None:
        self.trainer.call_ranks(lambda r: r.load(model_state=state, version=version))
        self.policy_version = version
        self.trainer.sync_weights()


class _RankUpdater:
    """The updater as the driver sees it: the update runs on the ranks; counters mirrored."""

    def __init__(self, trainer: RayTrainer) -> None:
        self.trainer = trainer
        self._optimizer_steps = 0
        self.nonfinite_streak = 0
        self.last_nonfinite: str | None = None

    @property
    def optimizer_steps(self) -> int:
        return self._optimizer_steps

    @optimizer_steps.setter
    def optimizer_steps(self, value: int) -> None:
        self.trainer.call_ranks(lambda r: r.load(optimizer_steps=value))
        self._optimizer_steps = value

    def update(self, batch: UpdateBatch) -> dict[str, Any]:
        if self.trainer.fault_hook is not None:
            self.trainer.fault_hook("update", self.trainer.step_count + 1, self.trainer)
        out = self.trainer.call_ranks(lambda r: r.update(batch))
        self._optimizer_steps = out["optimizer_steps"]
        self.nonfinite_streak = out["nonfinite_streak"]
        self.last_nonfinite = out["last_nonfinite"]
        return out["metrics"]

    def state_dict(self) -> dict[str, Any]:
        return self.trainer.call_ranks(lambda r: r.optimizer_state())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.call_ranks(lambda r: r.load(optimizer_state=state))


class RayTrainer(Trainer):
    """:class:`~rubricrl.trainer.Trainer` with ``distributed.backend = ray`` (docs/distributed.md).

    Args: those of ``Trainer`` except ``engine``, ``judge``, ``reward_source`` and
    ``snapshot_factory`` (each engine worker builds its own from the config), plus

        fault_hook: a test hook called as ``fault_hook(stage, step, obj)`` with stage
            ``"rollout"`` (obj: the :class:`EngineFleet`, after a step's sampling is
            submitted) and ``"update"`` (obj: this trainer, before the update is submitted).

    It joins the cluster of ``distributed.address`` / ``$RAY_ADDRESS`` or starts a local
    one (shut down by ``close()``), and reuses a Ray connection the process already has.

    Raises:
        TrainerRankError: a trainer rank died; the run stopped (one line, with the
            checkpoint to resume from).
        DistributedError: the actors cannot be placed, or an engine worker died more than
            ``distributed.max_restarts`` times.
    """

    def __init__(self, config, *, fault_hook: Callable[[str, int, Any], None] | None = None, **kwargs: Any) -> None:
        for name in ("engine", "judge", "reward_source", "snapshot_factory"):
            if kwargs.get(name) is not None:
                raise ValueError(f"RayTrainer: {name}= is not supported: each engine worker builds its own from the config")
        self.fault_hook = fault_hook
        self.fleet: EngineFleet | None = None
        self.ranks: RankGroup | None = None
        self._placement = None
        self._started_ray = False
        self._closed = False
        super().__init__(config, **kwargs)

    # ---- building the actors -------------------------------------------------------

    def _build(self, engine, judge, reward_source) -> None:
        config = self.config
        tr, d = config.trainer, config.distributed
        seed_everything(tr.seed)
        # the data first, as in one process: a bad row is reported before any actor starts
        source = make_reward_source(config.reward.source, config)
        self.schedule = PromptSchedule(source.pools(), config.data.prompts_per_step, seed=tr.seed, shuffle=config.data.shuffle)
        self.reward = _WorkerGradedReward(source, self)
        self.guard = DriftGuard(config, source)  # off: the config refuses guard.every > 0 on Ray
        self.rollout = None
        self.out_dir = self.run_dir.path
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl")
        self.history: list[dict[str, Any]] = []
        self.step_count = 0
        self.last_checkpoint = None
        self._pending: list[RolloutBatch] = []
        self._pipeline = None
        self.timings: dict[str, float] = {}
        try:
            start = time.perf_counter()
            self._started_ray = connect(d.address, d.local_cpus)
            self.timings["ray_init_s"] = time.perf_counter() - start
            start = time.perf_counter()
            self._placement = place(
                d.engine_workers,
                d.trainer_ranks,
                engine_resources=(d.engine_num_cpus, d.engine_num_gpus),
                trainer_resources=(d.trainer_num_cpus, d.trainer_num_gpus),
                strategy=d.placement,
                timeout_s=d.timeout_s,
            )
            raw = config_to_dict(config)
            # both sets of actors start at once; the ranks' constructor waits for the process group
            self.fleet = EngineFleet(
                raw,
                self._placement,
                d.engine_num_cpus,
                d.engine_num_gpus,
                max_restarts=d.max_restarts,
                timeout_s=d.timeout_s,
                seed=tr.seed,
                fault_hook=self.fault_hook,
            )
            self.ranks = self.call_ranks(lambda _: RankGroup(raw, self._placement, d.trainer_num_cpus, d.trainer_num_gpus, d.timeout_s))
            self.engine = _Policy(self)
            self.updater = _RankUpdater(self)
            self.sync_weights()  # the workers start from rank 0's weights, whatever they built
            # placement, the actors' start (imports, models), the process group, the first sync
            self.timings["actor_start_s"] = time.perf_counter() - start
        except BaseException:
            self._shutdown()
            raise

    # ---- the pieces Trainer.step calls ---------------------------------------------------

    def call_ranks(self, fn: Callable[[RankGroup | None], Any]) -> Any:
        """``fn(self.ranks)``; a rank that died stops the run: actors killed, one-line error."""
        try:
            return fn(self.ranks)
        except RankDied as died:
            self._shutdown()
            if self.last_checkpoint is not None:
                hint = f"resume from {self.last_checkpoint.name} with: rubricrl train --resume {self.out_dir}"
            else:
                hint = "no checkpoint was written (trainer.checkpoint_every = 0); start again with --overwrite"
            raise TrainerRankError(
                f"step {self.step_count + 1}: trainer rank {died.rank} died ({died.cause}); the run stopped; {hint}"
            ) from None

    def sync_weights(self) -> None:
        """Rank 0's weights to every engine worker (object store), as the current version."""
        self.fleet.sync(self.call_ranks(lambda r: r.weights_ref()), self.engine.policy_version)

    def start(self, last_step: int | None = None) -> None:
        if self._pipeline is not None:
            return
        if self._closed:
            raise RuntimeError("a RayTrainer's actors are gone after close(); continue with RayTrainer.from_checkpoint")
        if self._pending:
            raise DistributedError(
                f"the checkpoint holds {len(self._pending)} batch(es) sampled ahead (pipeline.eta > 0); "
                "distributed.backend=ray samples on-policy: resume it with distributed.backend=none"
            )
        self.run_dir.lock()
        self._pipeline = _RayPipeline(self)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        """Kill the actors, free the placement group, stop Ray if this trainer started it."""
        import ray

        self._closed = True
        for part in (self.fleet, self.ranks):
            if part is not None:
                try:
                    part.kill()
                except Exception:  # noqa: BLE001 - already gone
                    pass
        self.fleet = self.ranks = None
        if self._placement is not None:
            try:
                self._placement.remove()
            except Exception:  # noqa: BLE001
                pass
            self._placement = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False
