"""The gold-judge drift guard: is the policy gaming its own judge? (docs/trainer.md, "Drift guard")

A self-graded policy can learn what fools its judge instead of what the rubric asks. Every
``guard.every`` steps the guard samples ``guard.samples`` responses from the current policy
for each of ``guard.prompts`` held-out prompts (never trained on), and grades them twice:

* ``self_reward``: with the self-judge, exactly as training grades (the reward source's
  judge on the policy's own engine);
* ``gold_reward``: with a fixed gold judge (``guard.judge``): a frozen copy of the initial
  policy, another checkpoint, the rule checks only, or a registered judge.

Both are means over the responses that both judges could grade. The **trend test**
(:func:`drift_test`) fits a least-squares line to each judge's rewards over the last
``guard.window`` evaluations; its change over the window (slope x (W - 1) evaluations) is
``self_trend`` / ``gold_trend``. Drift is ``self_trend >= min_self_rise`` and
``gold_trend <= -min_gold_fall``: the self-judge says the policy improves while the gold
judge says it gets worse. The guard then logs one warning line (once per drift episode: the
first evaluation of a run of drifting ones) and records ``drift_warning = 1``.

Held-out prompts: ``guard.prompts`` rubric prompts drawn from the training data with
``random.Random(f"guard/{trainer.seed}")`` and removed from the training pools (so the
schedule never sees them), or drawn the same way from ``guard.dataset`` (then no training
prompt is removed, and a held-out prompt with the same messages as a training prompt is an
error). Every evaluation samples with the same seed (common random numbers): two
evaluations differ because the policy changed, not because the sampling noise did.

The evaluation runs inside ``torch.random.fork_rng``, so the global RNG that training (and a
``judge_mode: sample`` judge) draws from is left as it was: with ``guard.dataset`` a run
with the guard trains exactly as one without it. The history of evaluations is saved in
checkpoints (``state_dict``), so a resumed run's window spans the checkpoint.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rubricrl.config import ConfigError, TrainConfig, config_to_dict, torch_dtype
from rubricrl.engines import Engine, HFEngine
from rubricrl.judges.base import GradeRequest, Judge
from rubricrl.judges.registry import build_judge as build_judge_by_name
from rubricrl.judges.rules import RuleJudge
from rubricrl.pipeline.data import TrainPrompt, load_rubric_prompts
from rubricrl.pipeline.rewards import RewardSource, _valid_score, build_judge, grade_safely
from rubricrl.pipeline.rollout import rollout_seed

__all__ = ["GUARD_KEYS", "DriftGuard", "TrendResult", "drift_test", "fitted_change", "split_held_out"]

log = logging.getLogger(__name__)

#: Metrics keys the guard adds to every step record (null on steps without an evaluation;
#: meanings in rubricrl.trainer.metrics.METRIC_KEYS).
GUARD_KEYS = ("self_reward", "gold_reward", "self_trend", "gold_trend", "drift_warning", "guard_ungraded", "guard_s")

#: Special values of ``guard.judge`` (anything else is ``checkpoint:PATH`` or a registered judge name).
FROZEN_INIT, RULES, CHECKPOINT = "frozen_init", "rules", "checkpoint:"


# --------------------------------------------------------------------------- the trend test


def fitted_change(values: Sequence[float]) -> float:
    """Change of the least-squares line through ``values`` (at x = 0, 1, ..., n - 1) from its
    first to its last point: ``slope * (n - 1)`` with
    ``slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)``.

    Raises:
        ValueError: fewer than 2 values, or a non-finite one.
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"a fitted change needs at least 2 values, got {n}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite, got {list(values)}")
    x_mean = (n - 1) / 2
    y_mean = math.fsum(values) / n
    sxy = math.fsum((i - x_mean) * (y - y_mean) for i, y in enumerate(values))
    sxx = math.fsum((i - x_mean) ** 2 for i in range(n))
    return sxy / sxx * (n - 1)


@dataclass(frozen=True)
class TrendResult:
    """The trend test over one window: each judge's fitted change and the verdict."""

    self_trend: float
    gold_trend: float
    drift: bool


def drift_test(
    self_rewards: Sequence[float],
    gold_rewards: Sequence[float],
    *,
    window: int,
    min_self_rise: float,
    min_gold_fall: float,
) -> TrendResult | None:
    """The trend test over the last ``window`` evaluations (None while there are fewer).

    Drift: ``fitted_change(self) >= min_self_rise`` and ``fitted_change(gold) <= -min_gold_fall``.
    """
    if len(self_rewards) != len(gold_rewards):
        raise ValueError(f"{len(self_rewards)} self rewards but {len(gold_rewards)} gold rewards")
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if len(self_rewards) < window:
        return None
    s = fitted_change(list(self_rewards)[-window:])
    g = fitted_change(list(gold_rewards)[-window:])
    return TrendResult(s, g, s >= min_self_rise and g <= -min_gold_fall)


# --------------------------------------------------------------------------- held-out prompts


def _eligible(prompt: TrainPrompt) -> bool:
    return prompt.kind == "rubric" and any(item.points > 0 for item in prompt.items)


def split_held_out(
    pools: list[tuple[list[TrainPrompt], float]], n: int, seed: int
) -> tuple[list[tuple[list[TrainPrompt], float]], list[TrainPrompt]]:
    """Take ``n`` rubric prompts out of the training ``pools``: ``(pools without them, held out)``.

    The held-out prompts are ``random.Random(f"guard/{seed}").sample`` of the rubric prompts
    of all pools (in pool, then file order), returned in that order.

    Raises:
        ConfigError: (``guard.prompts``) fewer than ``n`` rubric prompts, or a pool left empty.
    """
    candidates = [(j, k) for j, (prompts, _) in enumerate(pools) for k, p in enumerate(prompts) if _eligible(p)]
    total = len(candidates)
    if n > total:
        raise ConfigError("guard.prompts", f"{n} held-out prompts, but the training data has only {total} rubric prompts")
    chosen = sorted(random.Random(f"guard/{seed}").sample(candidates, n))
    taken = set(chosen)
    held_out = [pools[j][0][k] for j, k in chosen]
    out = []
    for j, (prompts, share) in enumerate(pools):
        kept = [p for k, p in enumerate(prompts) if (j, k) not in taken]
        if not kept:
            raise ConfigError(
                "guard.prompts",
                f"holding out {n} prompts leaves none of the {len(prompts)} training prompts to train on; "
                "lower guard.prompts or give held-out prompts in guard.dataset",
            )
        out.append((kept, share))
    return out, held_out


def _self_judge(reward: RewardSource) -> Judge:
    """The judge a rubric-style reward source grades with (``rubric``; ``mix``'s rubric part)."""
    judge = getattr(reward, "judge", None) or getattr(getattr(reward, "rubric", None), "judge", None)
    if judge is None:
        raise ConfigError(
            "guard.every",
            f"the drift guard compares the self-judge of a rubric reward with a gold judge, but reward source "
            f"{getattr(reward, 'name', type(reward).__name__)!r} has no judge; set guard.every=0",
        )
    return judge


# --------------------------------------------------------------------------- the guard


def _null_metrics() -> dict[str, Any]:
    return dict.fromkeys(GUARD_KEYS)


class DriftGuard:
    """Held-out evaluation with the self-judge and a gold judge, and the trend test.

    Built in two phases by the trainer: ``DriftGuard(config, reward)`` splits the held-out
    prompts off and checks the gold judge before any model is built; ``attach(engine)``
    builds the gold judge's model (a frozen copy of the *initial* policy, taken before a
    checkpoint is loaded into it). With ``guard.every = 0`` the guard does nothing and its
    metrics are null.

    Raises:
        ConfigError: naming the ``guard`` key at fault.
    """

    def __init__(self, config: TrainConfig, reward: RewardSource) -> None:
        self.config = config
        g = config.guard
        self.enabled = g.every > 0
        self.history: list[dict[str, Any]] = []  # {"step", "self_reward", "gold_reward"} per graded evaluation
        self.in_drift = False
        self.gold_engine: Engine | None = None
        self._train_pools = reward.pools()
        self.held_out: list[TrainPrompt] = []
        if not self.enabled:
            return
        self.self_judge = _self_judge(reward)
        seed = config.trainer.seed
        if g.dataset is None:
            self._train_pools, self.held_out = split_held_out(self._train_pools, g.prompts, seed)
        else:
            self.held_out = self._held_out_file(g.dataset, g.prompts, seed)
        self.gold_judge = self._gold_judge()
        self._gold_name = g.judge
        # one fixed sampling seed: every evaluation draws with the same random numbers (any
        # fixed value would do; the XOR only makes it differ from step 0's rollout seed)
        self.seed = rollout_seed(seed, 0) ^ 0x5EED

    # ---- building ----------------------------------------------------------------------

    def _held_out_file(self, dataset: str, n: int, seed: int) -> list[TrainPrompt]:
        try:
            prompts = [p for p in load_rubric_prompts(dataset) if _eligible(p)]
        except ValueError as err:
            raise ConfigError("guard.dataset", str(err)) from None
        if n > len(prompts):
            raise ConfigError("guard.prompts", f"{n} held-out prompts, but guard.dataset {dataset!r} has only {len(prompts)} rubric prompts")
        held = [prompts[k] for k in sorted(random.Random(f"guard/{seed}").sample(range(len(prompts)), n))]
        training = {_key(p) for pool, _ in self._train_pools for p in pool}
        for p in held:
            if _key(p) in training:
                raise ConfigError(
                    "guard.dataset",
                    f"held-out prompt {p.prompt_id!r} has the same messages as a training prompt; held-out prompts must not be trained on",
                )
        return held

    def _gold_judge(self) -> Judge:
        g = self.config.guard
        named = g.judge not in (FROZEN_INIT, RULES) and not g.judge.startswith(CHECKPOINT)
        if g.judge_options and not named:
            raise ConfigError(
                "guard.judge_options",
                f"options are for a judge name; guard.judge={g.judge} grades with reward.judge and reward.judge_options",
            )
        if g.judge == RULES:
            for p in self.held_out:
                if not any(item.check is not None and item.points > 0 for item in p.items):
                    raise ConfigError(
                        "guard.judge",
                        f"rules grades rule-checked items only, but held-out prompt {p.prompt_id!r} has no rule-checked "
                        "item with positive points (docs/rubrics.md)",
                    )
            return RuleJudge()
        if not named:
            return build_judge(self.config)  # reward.judge's kind and settings, on another model
        r = self.config.reward
        try:
            return build_judge_by_name(
                g.judge, temperature=r.grading_temperature, mode=r.judge_mode, share_prefix=r.share_prefix, options=g.judge_options
            )
        except ValueError as err:
            raise ConfigError(
                "guard.judge", f"expected {FROZEN_INIT}, {RULES}, {CHECKPOINT}PATH or a registered judge name: {err}"
            ) from None

    def attach(self, engine: Engine) -> None:
        """Build the gold judge's model from the policy ``engine`` as it is now (the initial
        weights: call before a checkpoint is loaded)."""
        if not self.enabled or self.gold_engine is not None:
            return
        g = self.config.guard
        if g.judge == RULES:
            self.gold_engine = engine  # for its tokenizer only (length checks in tokens)
        elif g.judge.startswith(CHECKPOINT):
            self.gold_engine = self._checkpoint_engine(engine, g.judge[len(CHECKPOINT) :])
        else:
            model = copy.deepcopy(engine.model).requires_grad_(False)
            self.gold_engine = HFEngine(model, engine.tokenizer)

    def _checkpoint_engine(self, engine: Engine, path: str) -> Engine:
        """A ``save_pretrained`` directory (loaded as is), or a rubricrl run / checkpoint
        directory (its ``model.pt`` loaded into a copy of the policy's architecture)."""
        where = Path(path)
        device = next(engine.model.parameters()).device
        if (where / "config.json").is_file():
            return HFEngine.from_path(where, dtype=torch_dtype(self.config.model.dtype), device=device)
        from rubricrl.trainer.checkpoint import CheckpointError, load_checkpoint_files

        try:
            ckpt = load_checkpoint_files(where)
        except (FileNotFoundError, CheckpointError) as err:
            raise ConfigError("guard.judge", str(err)) from None
        model = copy.deepcopy(engine.model).requires_grad_(False)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as err:
            reason = " ".join(str(err).split())[:200]
            raise ConfigError("guard.judge", f"{ckpt['path'] / 'model.pt'} does not fit the policy model ({reason})") from None
        return HFEngine(model, engine.tokenizer)

    def train_pools(self) -> list[tuple[list[TrainPrompt], float]]:
        """The reward source's pools without the held-out prompts: what the schedule trains on."""
        return self._train_pools

    # ---- evaluating --------------------------------------------------------------------

    def after_step(self, engine: Engine, step: int) -> dict[str, Any]:
        """The guard's metrics for the record of ``step`` (an evaluation every ``guard.every``
        steps, null keys otherwise)."""
        if not self.enabled or step % self.config.guard.every:
            return _null_metrics()
        return self.evaluate(engine, step)

    @torch.no_grad()
    def evaluate(self, engine: Engine, step: int) -> dict[str, Any]:
        """Sample the held-out prompts with the policy ``engine``, grade with both judges, run
        the trend test; log a warning on the first evaluation of a drift episode."""
        assert self.enabled and self.gold_engine is not None, "DriftGuard.attach(engine) was not called"
        g, ro = self.config.guard, self.config.rollout
        t0 = time.perf_counter()
        device = next(engine.model.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            samples = engine.generate(
                [p.messages for p in self.held_out],
                g.samples,
                max_new_tokens=g.max_new_tokens or ro.max_new_tokens,
                temperature=ro.temperature,
                top_p=ro.top_p,
                seed=self.seed,
            )
            requests = [
                GradeRequest(p.messages, s.response_text, p.items, f"guard/{step}/{i}/{p.prompt_id}")
                for i, p in enumerate(self.held_out)
                for s in samples[i]
            ]
            own, _ = grade_safely(self.self_judge, engine, requests)
            gold, _ = grade_safely(self.gold_judge, self.gold_engine, requests)
        pairs = [(a, b) for a, b in ((_valid_score(x), _valid_score(y)) for x, y in zip(own, gold)) if a is not None and b is not None]
        out = _null_metrics()
        out["guard_ungraded"] = len(requests) - len(pairs)
        if pairs:
            out["self_reward"] = statistics.fmean(a for a, _ in pairs)
            out["gold_reward"] = statistics.fmean(b for _, b in pairs)
            self.history.append({"step": step, "self_reward": out["self_reward"], "gold_reward": out["gold_reward"]})
        result = drift_test(
            [h["self_reward"] for h in self.history],
            [h["gold_reward"] for h in self.history],
            window=g.window,
            min_self_rise=g.min_self_rise,
            min_gold_fall=g.min_gold_fall,
        )
        if pairs and result is not None:
            out["self_trend"], out["gold_trend"] = result.self_trend, result.gold_trend
            out["drift_warning"] = int(result.drift)
            if result.drift and not self.in_drift:
                first = self.history[-g.window]["step"]
                log.warning(
                    "drift guard: steps %d-%d: the self-judge's reward rose %+.3f while the gold judge (%s) moved %+.3f "
                    "(least-squares change over the last %d evaluations, %d held-out prompts x %d responses): "
                    "the policy may be gaming its own judge",
                    first, step, result.self_trend, self._gold_name, result.gold_trend, g.window, len(self.held_out), g.samples,
                )
            self.in_drift = result.drift
        out["guard_s"] = time.perf_counter() - t0
        return out

    # ---- checkpoints -------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        """What the history depends on: a history made with other settings is not continued."""
        g = config_to_dict(self.config.guard)
        keys = ("judge", "judge_options", "prompts", "dataset", "samples", "max_new_tokens")
        return {**{k: g[k] for k in keys}, "held_out": [p.prompt_id for p in self.held_out]}

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "in_drift": self.in_drift, "settings": self._settings()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the history; ``None`` (a checkpoint from before the guard) starts it empty.
        A history made with other guard settings is dropped, with a warning."""
        if not self.enabled or state is None or not state["history"]:
            return
        if state["settings"] != self._settings():
            log.warning("drift guard: the checkpoint's guard settings differ from this run's; its %d evaluations are not continued", len(state["history"]))
            return
        self.history = [dict(h) for h in state["history"]]
        self.in_drift = bool(state["in_drift"])


def _key(prompt: TrainPrompt) -> tuple:
    return tuple((m["role"], m["content"]) for m in prompt.messages)
