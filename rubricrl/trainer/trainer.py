"""The GRPO trainer with self-graded rubric rewards (docs/algorithms.md §7).

One step::

    rollout      engine.generate: G responses per prompt at T = 1, behaviour log-probs kept
    grading      the reward source scores them; for rubric rewards the policy grades its own
                 responses with the weights that sampled them (pi_old)
    advantages   group_advantages over each group's graded responses; all-equal groups dropped
    update       fused_linear_grpo_loss on the final hidden states and lm_head, micro-batches,
                 AdamW, grad clipping; old log-probs = the behaviour log-probs
    version      engine.bump_version()

Ungraded responses (no usable judgment) follow ``reward.ungraded``:

* ``exclude`` (default): the response is left out of its group: the group's mean and std
  come from its graded responses only, and the response gets no loss tokens;
* ``group_mean``: the response takes the mean score of its group's graded responses and
  stays in the update (advantage = that of a mean score).

Either way it is counted (``ungraded``), never scored 0. A group left with no graded
response is dropped.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rubricrl.config import TrainConfig, pipeline_streams, torch_dtype
from rubricrl.engines import Engine, HFEngine
from rubricrl.engines.factory import make_engine
from rubricrl.judges.base import Judge
from rubricrl.pipeline import (
    GradedBatch,
    PromptSchedule,
    RewardOutput,
    RewardSource,
    Rollout,
    RolloutBatch,
    RolloutPipeline,
    StreamPipeline,
    make_reward_source,
)
from rubricrl.ops import group_advantages
from rubricrl.trainer import faults
from rubricrl.trainer.checkpoint import (
    CheckpointError,
    checkpoint_step,
    find_checkpoint,
    list_checkpoints,
    load_checkpoint_files,
    rng_state,
    run_dir_of,
    save_checkpoint_files,
    set_rng_state,
    write_latest,
)
from rubricrl.trainer.drift import DriftGuard
from rubricrl.trainer.metrics import MetricsLog, plot_metrics, step_time_table, summary_line
from rubricrl.trainer.rundir import RunDir, RunDirError
from rubricrl.trainer.update import ActorUpdater, NonFiniteUpdateError, UpdateBatch

__all__ = ["Trainer", "resolve_device"]

log = logging.getLogger(__name__)

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


class Trainer:
    """GRPO with self-graded rubric (or RLPR / mixed) rewards.

    Args:
        config: a validated :class:`~rubricrl.config.TrainConfig`.
        engine: the policy engine (default: ``make_engine(config.engine.backend, config.model.path, ...)``).
        judge: replaces the judge of ``config.reward.judge`` (e.g. a custom judge).
        reward_source: replaces the reward source of ``config.reward.source``.
        console: a ``rich.console.Console`` for the progress bar and logs (default: stderr).
        snapshot_factory: how the producer (batch mode, ``pipeline.overlap``) or rollout
            (stream mode) thread copies the engine.
        overwrite: start over in a ``trainer.out_dir`` that holds a previous run (its files
            are deleted first); without it such a directory is refused.
        run_dir: an already claimed :class:`~rubricrl.trainer.rundir.RunDir` for
            ``trainer.out_dir`` (``from_checkpoint`` passes the one it resumes).

    The run directory is claimed (locked, checked) before the model is built, and its lock
    is held until ``close()``: a second trainer on the same directory raises
    :class:`~rubricrl.trainer.rundir.RunDirError`. Continue a run with :meth:`from_checkpoint`.

    Use ``train()`` for the whole run, or ``start()``, ``step()`` ... ``close()`` to drive it.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        engine: Engine | None = None,
        judge: Judge | None = None,
        reward_source: RewardSource | None = None,
        console: Any = None,
        snapshot_factory: Callable[[Engine], Engine] | None = None,
        overwrite: bool = False,
        run_dir: RunDir | None = None,
    ) -> None:
        self.config = config.validate()
        tr = config.trainer
        if run_dir is None:
            run_dir = RunDir.claim(tr.out_dir, mode="overwrite" if overwrite else "new")
        elif Path(tr.out_dir) != run_dir.path:
            raise ValueError(f"run_dir {run_dir.path} is not trainer.out_dir {tr.out_dir}")
        self.run_dir = run_dir
        try:
            self._build(engine, judge, reward_source)
        except BaseException:
            run_dir.release()
            raise
        self._snapshot_factory = snapshot_factory
        self._console = console
        faults.instrument(self)  # a test hook; does nothing unless RUBRICRL_FAULT_KILL is set

    def _build(self, engine: Engine | None, judge: Judge | None, reward_source: RewardSource | None) -> None:
        config = self.config
        tr = config.trainer
        seed_everything(tr.seed)
        # the data first: a bad row or an impossible schedule is reported before the model loads
        self.reward = reward_source if reward_source is not None else make_reward_source(config.reward.source, config, judge=judge)
        self.guard = DriftGuard(config, self.reward)  # holds its prompts out of the training pools
        self.schedule = PromptSchedule(
            self.guard.train_pools(), config.data.prompts_per_step, seed=tr.seed, shuffle=config.data.shuffle
        )
        if engine is None:
            engine = make_engine(
                config.engine.backend,
                config.model.path,
                seed=config.model.seed,
                dtype=torch_dtype(config.model.dtype),
                device=resolve_device(config.model.device),
                max_batch_size=config.rollout.max_batch_size,
                kv_cache_mb=config.engine.kv_cache_mb,
                sglang_url=config.engine.sglang_url,
            )
        self.engine = engine
        self.guard.attach(engine)  # a frozen copy of the initial weights, before a checkpoint loads
        ro = config.rollout
        self.rollout = Rollout(
            self.schedule, n=ro.n, max_new_tokens=ro.max_new_tokens, temperature=ro.temperature, top_p=ro.top_p, seed=tr.seed
        )
        ref_engine = None
        if config.loss.kl_coef > 0:
            ref_model = copy.deepcopy(engine.model).requires_grad_(False)
            ref_engine = HFEngine(ref_model, engine.tokenizer)
        self.updater = ActorUpdater(
            engine, config.loss, config.optim, temperature=ro.temperature, horizon=ro.max_new_tokens, ref_engine=ref_engine
        )
        self.out_dir = self.run_dir.path
        self.metrics_log = MetricsLog(self.out_dir / "metrics.jsonl")
        self.history: list[dict[str, Any]] = []
        self.step_count = 0  # completed steps
        self.last_checkpoint: Path | None = None
        self._pending: list[RolloutBatch | GradedBatch] = []
        self._pipeline: RolloutPipeline | StreamPipeline | None = None
        self._rollout = self.rollout  # the Rollout itself (faults.instrument may wrap self.rollout)

    # ---- the loop --------------------------------------------------------------------

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True)
        return self._console

    def start(self, last_step: int | None = None) -> None:
        """Start the rollout pipeline (called by ``train``; call it before ``step()``);
        takes the run directory's lock again after a ``close()``."""
        if self._pipeline is not None:
            return
        self.run_dir.lock()
        p = self.config.pipeline
        last = self.config.trainer.steps if last_step is None else last_step
        if pipeline_streams(self.config):  # rollout, grading and updates on three threads
            self._pipeline = StreamPipeline(
                self.engine,
                self._rollout,
                self.reward,
                eta=p.eta,
                last_step=last,
                groups_per_call=p.stream_groups,
                behaviour_version=p.behaviour_version,
                rollout_threads=p.rollout_threads,
                on_sampled=lambda step: faults.fault_point("rollout"),
                rollout_engine=self._snapshot_factory(self.engine) if self._snapshot_factory is not None else None,
            )
            self._pipeline.start(self.step_count + 1, self._pending)
        else:
            thread = p.overlap == "thread" or (p.overlap == "auto" and p.eta > 0)
            self._pipeline = RolloutPipeline(
                self.engine,
                self.rollout,
                eta=p.eta,
                overlap=thread,
                last_step=last,
                snapshot_factory=self._snapshot_factory,
            )
            self._pipeline.start(self.step_count + 1, [b.batch if isinstance(b, GradedBatch) else b for b in self._pending])
        self._pending = []

    def close(self) -> None:
        """Stop the rollout pipeline and release the run directory's lock."""
        try:
            if self._pipeline is not None:
                self._pipeline.close()
                self._pipeline = None
        finally:
            self.run_dir.release()

    def train(self) -> list[dict[str, Any]]:
        """Run steps ``step_count + 1 .. trainer.steps``; write metrics, checkpoints, the plot
        and print the step-time table. Returns the records of the steps run."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        tr = self.config.trainer
        first = self.step_count + 1
        records = []
        progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not tr.progress,
        )
        self.start()
        try:
            with progress:
                task = progress.add_task("train", total=tr.steps, completed=self.step_count, info="")
                for s in range(first, tr.steps + 1):
                    record = self.step()
                    records.append(record)
                    progress.update(
                        task,
                        advance=1,
                        info=f"reward {record['reward_mean'] if record['reward_mean'] is not None else float('nan'):.3f} "
                        f"step {record['step_s']:.2f}s grading {record['grading_share']:.0%}",
                    )
                    if s % tr.log_every == 0:
                        progress.console.print(summary_line(record))
                    if tr.checkpoint_every and s % tr.checkpoint_every == 0:
                        self.save_checkpoint()
                if tr.save_final and self.step_count > 0 and (
                    self.last_checkpoint is None or self.last_checkpoint.name != f"step_{self.step_count:06d}"
                ):
                    self.save_checkpoint()
        finally:
            self.close()
        if self.history:
            if tr.plot:
                plot_metrics(self.history, self.out_dir / "metrics.png")
            self.console.print(step_time_table(self.history))
        return records

    def step(self) -> dict[str, Any]:
        """One training step; returns its metrics record (also appended to metrics.jsonl)."""
        if self._pipeline is None:
            self.start()
        assert self._pipeline is not None
        step = self.step_count + 1
        t0 = time.perf_counter()
        item = self._pipeline.get(step)
        wait_s = time.perf_counter() - t0

        if isinstance(item, GradedBatch):  # streaming: graded on the grading thread, group by group
            batch, reward, grading_s = item.batch, item.reward, item.grading_seconds
            versions, stale_dropped = item.behaviour_versions, item.stale_dropped_groups
        else:
            batch = item
            t1 = time.perf_counter()
            reward = self.reward.score(self.engine, batch)
            grading_s = time.perf_counter() - t1
            versions, stale_dropped = [g[0].policy_version for g in batch.samples if g], 0

        update_batch, stats = self.build_update_batch(batch, reward)
        t2 = time.perf_counter()
        upd = self.updater.update(update_batch)
        update_s = time.perf_counter() - t2

        version = self.engine.bump_version()
        self.step_count = step
        self._pipeline.after_update(step)
        step_s = time.perf_counter() - t0

        samples = batch.flat_samples
        n_tokens = sum(len(s.response_ids) for s in samples)
        # a step's stage work: grading's share of it (the stages overlap when streaming)
        work_s = step_s if not isinstance(item, GradedBatch) else batch.rollout_seconds + grading_s + update_s
        record: dict[str, Any] = {
            "step": step,
            "policy_version": version,
            "sample_version": batch.policy_version,
            "judge_version": reward.judge_version,
            "staleness": (version - 1) - batch.policy_version,
            # off-policy bookkeeping: the versions that sampled the step's groups, per group
            "behaviour_version_min": min(versions, default=None),
            "behaviour_version_max": max(versions, default=None),
            "staleness_mean": statistics.fmean((version - 1) - v for v in versions) if versions else None,
            "stale_dropped_groups": stale_dropped,
            "rollout_s": batch.rollout_seconds,
            "wait_s": wait_s,
            "grading_s": grading_s,
            "update_s": update_s,
            "step_s": step_s,
            "grading_share": grading_s / work_s if work_s > 0 else None,
            **stats,
            "response_len_mean": n_tokens / len(samples) if samples else None,
            "tokens_per_s": n_tokens / step_s if step_s > 0 else None,
            **{k: upd.get(k) for k in ("loss", "clipfrac", "clipfrac_lower", "approx_kl", "is_weight_mean", "is_clipped_frac", "entropy", "kl",
                                 "grad_norm", "lr")},
            "optimizer_steps": upd["optimizer_steps"],
            "nonfinite_skipped": upd.get("nonfinite_skipped", 0),
            "responses": len(samples),
            "trained_responses": len(update_batch),
            "trained_tokens": update_batch.num_tokens,
            "empty_responses": sum(1 for s in samples if not s.response_text.strip()),
            "truncated_responses": sum(1 for s in samples if not s.finished),
        }
        for k, v in reward.counts.items():
            record.setdefault(k, v)
        record.update(self.guard.after_step(self.engine, step))  # drift guard: held-out self vs gold reward
        self.history.append(record)
        self.metrics_log.append(record)
        self._check_nonfinite_streak()
        return record

    def _check_nonfinite_streak(self) -> None:
        """Stop the run after ``trainer.max_nonfinite_steps`` consecutive skipped optimizer
        steps (the skipped steps changed no weight, so the last checkpoint is a good one)."""
        limit = self.config.trainer.max_nonfinite_steps
        streak = self.updater.nonfinite_streak
        if streak >= limit:
            last = f"; last good checkpoint: {self.last_checkpoint}" if self.last_checkpoint is not None else ""
            raise NonFiniteUpdateError(
                f"step {self.step_count}: {streak} optimizer steps in a row skipped for non-finite values "
                f"(last: {self.updater.last_nonfinite}), stopping (trainer.max_nonfinite_steps = {limit}){last}"
            )

    # ---- rewards -> advantages -> update batch ---------------------------------------

    def build_update_batch(self, batch: RolloutBatch, reward: RewardOutput) -> tuple[UpdateBatch, dict[str, Any]]:
        """Advantages per group (docs/algorithms.md §2) and the responses that enter the update.

        Returns the batch and ``reward_mean``, ``reward_std``, ``ungraded``,
        ``failed_judgments``, ``dropped_groups``.
        """
        cfg = self.config
        G = len(batch.samples[0]) if batch.samples else 0
        scores = list(reward.scores)
        if len(scores) != len(batch.prompts) * G:
            raise RuntimeError(f"reward source returned {len(scores)} scores for {len(batch.prompts) * G} responses")
        graded = [s for s in scores if s is not None]
        ungraded = len(scores) - len(graded)
        if cfg.reward.ungraded == "group_mean":
            for i in range(len(batch.prompts)):
                group = [s for s in scores[i * G : (i + 1) * G] if s is not None]
                if group and len(group) < G:
                    mean = sum(group) / len(group)
                    scores[i * G : (i + 1) * G] = [mean if s is None else s for s in scores[i * G : (i + 1) * G]]

        kept: list[int] = []  # flat indices in the update
        dropped = 0
        for i in range(len(batch.prompts)):
            members = [i * G + j for j in range(G) if scores[i * G + j] is not None]
            values = [scores[k] for k in members]
            drop = not members
            drop |= reward.keep_groups is not None and not reward.keep_groups[i]
            drop |= cfg.advantages.drop_equal_groups and bool(values) and max(values) == min(values)
            if drop:
                dropped += 1
            else:
                kept.extend(members)

        update = UpdateBatch()
        if kept:
            s = torch.tensor([scores[k] for k in kept], dtype=torch.float32)
            g = torch.tensor([k // G for k in kept], dtype=torch.long)
            adv = group_advantages(s, g, norm_by_std=cfg.advantages.norm_by_std, eps=cfg.advantages.eps)
            samples = batch.flat_samples
            for k, a in zip(kept, adv.tolist()):
                smp = samples[k]
                # old (proximal) = behaviour until the decoupled correction computes proximal ones
                update.add(smp.prompt_ids, smp.response_ids, smp.behaviour_logprobs, a, behaviour_logprobs=smp.behaviour_logprobs)
        stats = {
            "reward_mean": statistics.fmean(graded) if graded else None,
            "reward_std": statistics.pstdev(graded) if len(graded) > 1 else (0.0 if graded else None),
            "ungraded": ungraded,
            "failed_judgments": int(reward.counts.get("failed_judgments", 0)),
            "dropped_groups": dropped,
        }
        return update, stats

    # ---- checkpoints -----------------------------------------------------------------

    def save_checkpoint(self, directory: str | Path | None = None) -> Path:
        """Save everything needed to resume after the last completed step."""
        self.run_dir.lock()  # held already unless the trainer was closed
        if directory is None:
            directory = self.out_dir / "checkpoints" / f"step_{self.step_count:06d}"
        pending = self._pipeline.pending(self.step_count) if self._pipeline is not None else list(self._pending)
        try:
            return self._save_checkpoint(directory, pending)
        finally:
            if self._pipeline is not None:
                self._pipeline.unpause()

    def _save_checkpoint(self, directory: str | Path, pending: Sequence[RolloutBatch | GradedBatch]) -> Path:
        state = {
            "step": self.step_count,
            "policy_version": self.engine.policy_version,
            "optimizer_steps": self.updater.optimizer_steps,
            "rng": rng_state(),
            "reward_source": self.reward.state_dict(),
            "pending_batches": [b.to_dict() for b in pending],
            "drift_guard": self.guard.state_dict(),
        }
        self.last_checkpoint = save_checkpoint_files(
            directory,
            model_state=self.engine.model.state_dict(),
            optimizer_state=self.updater.state_dict(),
            state=state,
            config=self.config,
        )
        return self.last_checkpoint

    def load_checkpoint(self, path: str | Path | dict[str, Any]) -> Path:
        """Restore a checkpoint (a checkpoint directory, a run's out_dir, or what
        ``load_checkpoint_files`` returned) before training; metrics.jsonl is cut back to
        the checkpoint's step.

        Raises:
            CheckpointError: a file of the checkpoint is unreadable or does not fit this
                trainer (the message names the file).
        """
        if self._pipeline is not None:
            raise RuntimeError("load_checkpoint must be called before the pipeline starts")
        ckpt = path if isinstance(path, dict) else load_checkpoint_files(path)
        state, where = ckpt["state"], Path(ckpt["path"])
        try:
            self.engine.load_weights(ckpt["model"], int(state["policy_version"]))
        except ValueError as err:
            raise CheckpointError(f"{where / 'model.pt'}: {err}") from None
        try:
            self.updater.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{where / 'optimizer.pt'}: does not fit the model's optimizer ({err})") from None
        try:
            self.updater.optimizer_steps = int(state["optimizer_steps"])
            self.reward.load_state_dict(state["reward_source"])
            self.step_count = int(state["step"])
            self._pending = [
                GradedBatch.from_dict(b) if "reward" in b else RolloutBatch.from_dict(b) for b in state["pending_batches"]
            ]
            self.guard.load_state_dict(state.get("drift_guard"))  # absent in checkpoints from before the guard
            set_rng_state(state["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise CheckpointError(f"{where / 'state.pt'}: cannot be restored ({err})") from None
        self.metrics_log.truncate_after(self.step_count)
        self.history = self.metrics_log.read()
        self.last_checkpoint = where
        return where

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, overrides: Sequence[str] = (), *, overwrite: bool = False, **kwargs: Any
    ) -> Trainer:
        """A trainer that continues the run of the checkpoint at/under ``path``, restored.

        The run continues in the run directory the checkpoint is in (``path`` itself when
        it is a run directory; ``RUN`` for ``RUN/checkpoints/step_N``), never in the
        ``trainer.out_dir`` of the saved config, so a copied run resumes into the copy. The
        config is the checkpoint's plus ``KEY=VALUE`` overrides (not ``trainer.out_dir``).

        Args:
            overwrite: resuming from a checkpoint older than the run's newest deletes the
                newer checkpoints (without it, that is refused).

        Raises:
            FileNotFoundError: no checkpoint at/under ``path``.
            CheckpointError: a checkpoint file is unreadable (named).
            RunDirError: the run directory is in use, ``trainer.steps`` is not past the
                checkpoint's step, ``trainer.out_dir`` is overridden, or newer checkpoints
                exist and ``overwrite`` is not set.
            ConfigError: a bad override.
        """
        from rubricrl.config import apply_overrides, config_from_dict, config_to_dict, parse_override

        if any(parse_override(o)[0] == "trainer.out_dir" for o in overrides):
            raise RunDirError(
                f"{path}: a resumed run continues in its own directory, so trainer.out_dir (--out) cannot change; "
                "to branch a run, copy its directory and resume the copy"
            )
        checkpoint = find_checkpoint(path)
        run_path = run_dir_of(checkpoint)
        run_dir = RunDir.claim(run_path, mode="resume")
        try:
            ckpt = load_checkpoint_files(checkpoint)
            step = int(ckpt["state"]["step"])
            raw = apply_overrides(config_to_dict(ckpt["config"]), overrides)
            raw["trainer"]["out_dir"] = str(run_path)
            config = config_from_dict(raw).validate()
            if config.trainer.steps <= step:
                raise RunDirError(
                    f"{checkpoint}: the run is at step {step} and trainer.steps is {config.trainer.steps}: nothing to "
                    f"train; raise it past {step} (--set trainer.steps=N)"
                )
            newer = [c for c in list_checkpoints(run_path / "checkpoints") if checkpoint_step(c) > step]
            if newer and not overwrite:
                raise RunDirError(
                    f"{run_path} has checkpoints after step {step} ({', '.join(c.name for c in newer)}): resuming "
                    f"from {checkpoint.name} would replace them; add --overwrite to delete them, or resume a copy"
                )
            MetricsLog(run_path / "metrics.jsonl").read(warn=False)  # a bad line: an error before the model is built
            for c in newer:
                shutil.rmtree(c)
            if newer:
                write_latest(checkpoint)
            trainer = cls(config, run_dir=run_dir, **kwargs)
            trainer.load_checkpoint(ckpt)
        except BaseException:
            run_dir.release()
            raise
        return trainer
