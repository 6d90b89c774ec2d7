"""Reward sources: turn a rollout batch into one score per response (a small registry).

A reward source is looked up by name (``reward.source`` in the config):

* ``rubric``: the policy grades its own responses against each prompt's rubric with the
  judge of ``reward.judge`` (docs/algorithms.md §3);
* ``rlpr``: RLPR probability reward against a reference answer (docs/algorithms.md §4), with the
  optional std filter;
* ``mix``: rubric prompts plus scoring data with a known label, rewarded 1 when the
  response's verdict matches the label (docs/algorithms.md §3, mixed data);
* ``patarm``: preference pairs; the policy judges each response pointwise and is rewarded
  with PaTaRM's preference-aware reward plus the format reward (docs/rlpr_patarm.md);
* ``pairwise_judge``: preference pairs; the policy names the better response (RM-R1
  style), rewarded 1 when right (docs/rlpr_patarm.md).

Add one with ``@register_reward_source("name")`` on a factory
``factory(config, *, judge=None) -> RewardSource``; the trainer never changes. The registry
itself is ``rubricrl.rewards.registry`` (below the config, which checks the name).

Failures never stop training. A response whose judgment failed for every positive item
is *ungraded* (``score=None``) and counted; how the trainer treats it is its
``reward.ungraded`` rule. A judge call that raises is retried group by group; a group that
still fails is recorded as failed judgments (never as a score of 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rubricrl.config import ConfigError
from rubricrl.engines import Engine
from rubricrl.judges.base import GradeRequest, GradeResult, Judge
from rubricrl.judges.registry import build_judge as build_judge_by_name
from rubricrl.ops import span_mean_prob
from rubricrl.data.builtin import PAIR_DATASETS, builtin_pairs
from rubricrl.data.pairs import PreferencePair, load_pair_jsonl
from rubricrl.pipeline.data import (
    PromptPairs,
    TrainPrompt,
    load_reference_prompts,
    load_rubric_prompts,
    load_verdict_prompts,
)
from rubricrl.pipeline.rollout import RolloutBatch
from rubricrl.rewards import patarm, rlpr
from rubricrl.rewards.judge_parse import parse_verdict
from rubricrl.rewards.pairwise import assign_positions, build_pairwise_prompt, conversation_text, pairwise_reward, parse_pairwise
from rubricrl.rewards.patarm_prompts import build_pointwise_prompt
from rubricrl.rewards.registry import register_reward_source, reward_source_factory, reward_source_names

if TYPE_CHECKING:
    from rubricrl.config import TrainConfig

__all__ = [
    "MixReward",
    "PairwiseJudgeReward",
    "PatarmReward",
    "RLPRReward",
    "RewardOutput",
    "RewardSource",
    "RubricReward",
    "build_judge",
    "load_pairs",
    "make_reward_source",
    "register_reward_source",
    "reward_source_names",
]

log = logging.getLogger(__name__)


@dataclass
class RewardOutput:
    """Scores of one batch, prompt-major (index ``i * G + j``).

    Attributes:
        scores: one per response, in ``[0, 1]`` (``patarm``: PaTaRM's [-1.5, 1.4]); None =
            ungraded (no usable judgment).
        judge_version: policy version of the weights that graded the batch.
        keep_groups: optional per-prompt filter from the source (e.g. RLPR's std filter);
            False leaves the group out of the update.
        counts: per-step counters and diagnostics for the metrics (``failed_judgments``,
            ``ungraded``, ``verdict_mass``, ...).
    """

    scores: list[float | None]
    judge_version: int
    keep_groups: list[bool] | None = None
    counts: dict[str, float] = field(default_factory=dict)


class RewardSource(Protocol):
    """What the trainer needs from a reward source."""

    name: str

    def pools(self) -> list[tuple[list[TrainPrompt], float]]:
        """Training prompt pools and each one's share of a step (see ``PromptSchedule``)."""
        ...

    def score(self, engine: Engine, batch: RolloutBatch) -> RewardOutput:
        """Score every response of ``batch`` with ``engine`` (the policy, for self-grading)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything stateful (caches, filters) a checkpoint must keep."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def make_reward_source(name: str, config: TrainConfig, *, judge: Judge | None = None) -> RewardSource:
    """Build the reward source ``name`` from ``config`` (``judge`` replaces the configured one)."""
    return reward_source_factory(name)(config, judge=judge)


def build_judge(config: TrainConfig) -> Judge:
    """The judge of ``config.reward`` via ``rubricrl.judges.build_judge``.

    Raises:
        ConfigError: (``reward.judge``) the judge is unknown or rejects its options.
    """
    r = config.reward
    try:
        # No judge seed: the judge draws (judge_mode=sample) from the global torch RNG, which
        # checkpoints save and restore, so resumed runs grade exactly as uninterrupted ones.
        return build_judge_by_name(
            r.judge,
            temperature=r.grading_temperature,
            mode=r.judge_mode,
            share_prefix=r.share_prefix,
            layout=r.judge_layout,
            options=r.judge_options,
        )
    except ValueError as err:
        raise ConfigError("reward.judge", str(err)) from None


# --------------------------------------------------------------------------- rubric


def _failed_result(request: GradeRequest, version: int) -> GradeResult:
    n = len(request.items)
    return GradeResult([None] * n, [None] * n, None, True, n, version)


def _valid_score(result: GradeResult) -> float | None:
    s = result.score
    if result.ungraded or s is None or isinstance(s, bool):
        return None
    s = float(s)
    return min(max(s, 0.0), 1.0) if math.isfinite(s) else None


def grade_safely(judge: Judge, engine: Engine, requests: list[GradeRequest]) -> tuple[list[GradeResult], int]:
    """``judge.grade`` over all requests; if it raises, grade group by group and record the
    groups that still raise as failed. Returns ``(results, groups that raised)``."""
    if not requests:
        return [], 0
    try:
        results = judge.grade(engine, requests)
        if len(results) != len(requests):
            raise RuntimeError(f"judge returned {len(results)} results for {len(requests)} requests")
        return list(results), 0
    except Exception as err:  # noqa: BLE001 - a judge failure must not stop training
        log.warning("judge %s raised %r; grading group by group", getattr(judge, "name", judge), err)
    out: list[GradeResult] = []
    errors = 0
    start = 0
    while start < len(requests):
        end = start
        while end < len(requests) and requests[end].group_id == requests[start].group_id:
            end += 1
        group = requests[start:end]
        try:
            res = list(judge.grade(engine, group))
            if len(res) != len(group):
                raise RuntimeError(f"judge returned {len(res)} results for {len(group)} requests")
        except Exception as err:  # noqa: BLE001
            log.warning("judge failed on group %r: %r; recorded as failed judgments", group[0].group_id, err)
            errors += 1
            res = [_failed_result(r, engine.policy_version) for r in group]
        out.extend(res)
        start = end
    return out, errors


class RubricReward:
    """Self-graded rubric score (docs/algorithms.md §3) of every response, with the configured judge."""

    name = "rubric"
    #: a group's scores depend on that group only: the streaming pipeline grades group by group
    grades_per_group = True

    def __init__(self, prompts: list[TrainPrompt], judge: Judge) -> None:
        self._prompts = prompts
        self.judge = judge

    def pools(self) -> list[tuple[list[TrainPrompt], float]]:
        return [(self._prompts, 1.0)]

    def grade(self, engine: Engine, batch: RolloutBatch, indices: Sequence[int]) -> tuple[dict[int, float | None], dict[str, float], int]:
        """Scores of the responses of prompts ``indices``: ``({flat index: score}, counts, judge_version)``."""
        G = len(batch.samples[0]) if batch.samples else 0
        requests, flat = [], []
        for i in indices:
            prompt = batch.prompts[i]
            for j, sample in enumerate(batch.samples[i]):
                requests.append(
                    GradeRequest(
                        prompt.messages, sample.response_text, prompt.items, f"{batch.step}/{i}/{prompt.prompt_id}",
                        response_ids=sample.response_ids,
                    )
                )
                flat.append(i * G + j)
        results, errors = grade_safely(self.judge, engine, requests)
        scores = {k: _valid_score(r) for k, r in zip(flat, results)}
        mass = [m for r in results for m in (r.verdict_mass or []) if m is not None]
        counts = {
            "failed_judgments": float(sum(int(r.n_failed) for r in results)),
            "judged_items": float(sum(len(r.item_probs) for r in results)),
            "judge_errors": float(errors),
        }
        if mass:
            counts["verdict_mass"] = sum(mass) / len(mass)
        versions = [r.judge_version for r in results if r.judge_version is not None]
        return scores, counts, (max(versions) if versions else engine.policy_version)

    def score(self, engine: Engine, batch: RolloutBatch) -> RewardOutput:
        scores, counts, version = self.grade(engine, batch, range(len(batch.prompts)))
        return RewardOutput([scores[k] for k in range(len(scores))], version, None, counts)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@register_reward_source("rubric")
def _rubric(config: TrainConfig, *, judge: Judge | None = None) -> RubricReward:
    prompts = load_rubric_prompts(config.data.dataset, min_items=config.data.min_items)
    return RubricReward(prompts, judge if judge is not None else build_judge(config))


# --------------------------------------------------------------------------- mix


class MixReward:
    """Rubric prompts (self-graded) mixed with scoring data (verifiable verdict reward).

    A scoring prompt asks the policy, as a generative judge, whether a completion meets a
    criterion; the reward is 1 when the parsed ``criteria_met`` equals the reviewers'
    majority label and 0 otherwise, an unparsable verdict included (that is the policy's
    own output being wrong, not a failed judgment; it is counted as ``unparsed_verdicts``).
    """

    name = "mix"
    grades_per_group = True  # as RubricReward

    def __init__(self, rubric: RubricReward, verdict_prompts: list[TrainPrompt], fraction: float) -> None:
        self.rubric = rubric
        self._verdict_prompts = verdict_prompts
        self.fraction = fraction

    def pools(self) -> list[tuple[list[TrainPrompt], float]]:
        return [(self._verdict_prompts, self.fraction), (self.rubric.pools()[0][0], 1.0 - self.fraction)]

    def score(self, engine: Engine, batch: RolloutBatch) -> RewardOutput:
        G = len(batch.samples[0]) if batch.samples else 0
        scores: list[float | None] = [None] * (len(batch.prompts) * G)
        rubric_idx = [i for i, p in enumerate(batch.prompts) if p.kind == "rubric"]
        counts: dict[str, float] = {"unparsed_verdicts": 0.0, "verdict_accuracy": math.nan}
        version = engine.policy_version
        if rubric_idx:
            graded, rc, version = self.rubric.grade(engine, batch, rubric_idx)
            for k, s in graded.items():
                scores[k] = s
            counts.update(rc)
        hits = total = 0
        for i, prompt in enumerate(batch.prompts):
            if prompt.kind != "verdict":
                continue
            for j, sample in enumerate(batch.samples[i]):
                verdict = parse_verdict(sample.response_text)
                if verdict is None:
                    counts["unparsed_verdicts"] += 1
                hit = verdict is not None and verdict == prompt.label
                scores[i * G + j] = 1.0 if hit else 0.0
                hits += hit
                total += 1
        if total:
            counts["verdict_accuracy"] = hits / total
        return RewardOutput(scores, version, None, counts)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@register_reward_source("mix")
def _mix(config: TrainConfig, *, judge: Judge | None = None) -> MixReward:
    rubric = _rubric(config, judge=judge)
    verdicts, _ = load_verdict_prompts(config.data.mix_dataset)
    return MixReward(rubric, verdicts, config.data.mix_fraction)


# --------------------------------------------------------------------------- rlpr


class RLPRReward:
    """RLPR probability reward (docs/algorithms.md §4) from the policy's own token probabilities.

    ``r`` = mean probability of the reference tokens after the response's reasoning, at the
    rollout temperature; ``r'`` (debias) the same right after the prompt; reward
    ``(1 - fc) * clip(r - r', 0, 1) + fc * format_ok``. Optional std filter (adaptive
    curriculum) leaves low-variance groups out of the update.
    """

    name = "rlpr"

    def __init__(
        self,
        prompts: list[TrainPrompt],
        *,
        temperature: float,
        format_coef: float = 0.1,
        debias: str = "cached",
        std_filter: rlpr.StdFilter | None = None,
        batch_size: int = 8,
    ) -> None:
        self._prompts = prompts
        self.temperature = temperature
        self.format_coef = format_coef
        self.debias = debias
        self.cache = rlpr.DebiasCache("per_step" if debias == "per_step" else "cached")
        self.std_filter = std_filter
        self.batch_size = batch_size

    def pools(self) -> list[tuple[list[TrainPrompt], float]]:
        return [(self._prompts, 1.0)]

    @torch.no_grad()
    def _span_probs(self, engine: Engine, sequences: list[rlpr.SubstitutedSequence]) -> list[float]:
        """Mean reference-token probability of each sequence (``span_mean_prob`` on the span rows)."""
        out: list[float] = []
        weight, bias = engine.output_projection()
        pad = engine.tokenizer.pad_token_id
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start : start + self.batch_size]
            packed = rlpr.pack_spans(chunk, pad_token_id=pad)
            hidden = engine.hidden_states(packed["input_ids"], packed["attention_mask"])
            device = hidden.device
            rows = hidden.reshape(-1, hidden.shape[-1])[packed["span_positions"].to(device)]
            probs = span_mean_prob(
                rows,
                weight,
                packed["span_targets"].to(device),
                packed["span_index"].to(device),
                len(chunk),
                temperature=self.temperature,
                bias=bias,
            )
            out.extend(probs.cpu().tolist())
        return out

    def score(self, engine: Engine, batch: RolloutBatch) -> RewardOutput:
        samples = batch.flat_samples
        G = len(batch.samples[0])
        prompts = [batch.prompts[k // G] for k in range(len(samples))]
        tok = engine.tokenizer
        inputs = rlpr.build_rlpr_inputs(
            tok, [s.prompt_ids for s in samples], [s.response_text for s in samples], [p.reference for p in prompts]
        )
        r = torch.zeros(len(samples))
        if inputs.sequences:
            r[inputs.valid_index] = torch.tensor(self._span_probs(engine, inputs.sequences))
        if self.debias == "off":
            r_debias = torch.zeros(len(samples))
        else:
            by_id = {p.prompt_id: (s.prompt_ids, p.reference) for s, p in zip(samples, prompts)}

            def compute(ids: list[Any]) -> list[float]:
                seqs = [rlpr.build_debias_sequence(tok, by_id[i][0], by_id[i][1]) for i in ids]
                return self._span_probs(engine, seqs)

            r_debias = self.cache.get_or_compute([p.prompt_id for p in prompts], compute, engine.policy_version)
        reward = rlpr.rlpr_reward(r, r_debias, inputs.format_ok, self.format_coef)
        keep = None
        counts = {"malformed_responses": float(inputs.num_malformed)}
        if self.std_filter is not None and G >= 2:
            keep = self.std_filter.update_and_select(reward.view(-1, G)).tolist()
            counts["std_filtered_groups"] = float(len(keep) - sum(keep))
        return RewardOutput(reward.tolist(), engine.policy_version, keep, counts)

    def state_dict(self) -> dict[str, Any]:
        return {
            "debias_cache": self.cache.state_dict(),
            "std_filter": None if self.std_filter is None else self.std_filter.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cache.load_state_dict(state["debias_cache"])
        if self.std_filter is not None and state.get("std_filter") is not None:
            self.std_filter.load_state_dict(state["std_filter"])


@register_reward_source("rlpr")
def _rlpr(config: TrainConfig, *, judge: Judge | None = None) -> RLPRReward:
    prompts, _ = load_reference_prompts(config.data.dataset)
    c = config.reward.rlpr
    filt = rlpr.StdFilter(c.std_filter_beta, warmup_steps=c.std_filter_warmup) if c.std_filter else None
    return RLPRReward(
        prompts,
        temperature=config.rollout.temperature,
        format_coef=c.format_coef,
        debias=c.debias,
        std_filter=filt,
        batch_size=config.optim.micro_batch_size,
    )


# --------------------------------------------------------------------------- preference pairs


def load_pairs(dataset: str) -> list[PreferencePair]:
    """Preference pairs of ``data.dataset`` for the pair sources: ``builtin`` or
    ``builtin:pairs`` (the shipped training pairs), ``builtin:pairs-heldout``, or a pair
    JSONL path (validated with ``file:line`` errors, :mod:`rubricrl.data.pairs`)."""
    if dataset == "builtin":
        dataset = "builtin:pairs"
    return builtin_pairs(dataset) if dataset in PAIR_DATASETS else load_pair_jsonl(dataset)


def _pair_key(prompt: TrainPrompt) -> str:
    # prompt ids of the pair sources are "<pair_id>/<suffix>"; pair ids may contain "/"
    return prompt.prompt_id.rsplit("/", 1)[0]


class PatarmReward:
    """PaTaRM (docs/algorithms.md §5): the policy judges each response of a preference pair
    pointwise (its own extra rubrics, then a 0-10 score), and each judgment is rewarded
    with the preference-aware reward against the other response's mean score plus the
    format reward (:func:`rubricrl.rewards.patarm.patarm_rewards`).

    Every pair is two prompts, the chosen response's judge prompt at ``2i`` and the
    rejected one's at ``2i + 1`` of a :class:`~rubricrl.pipeline.data.PromptPairs` pool, so
    the schedule puts both in one step; the G responses of each are the n judgments of
    that side. Scores lie in [-1.5, 1.4] (the PaTaRM scale, not [0, 1]); an unparsable
    judgment gets its format penalty, it is never ungraded.
    """

    name = "patarm"

    def __init__(self, pairs: Sequence[PreferencePair], *, f: str = "graded") -> None:
        self.f = f
        self._prompts = PromptPairs()
        for pair in pairs:
            conversation = conversation_text(pair.prompt)
            for side, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
                text = build_pointwise_prompt(conversation, response, pair.task)
                self._prompts.append(
                    TrainPrompt(f"{pair.pair_id}/{side}", [{"role": "user", "content": text}], "pointwise", label=side == "chosen")
                )

    def pools(self) -> list[tuple[list[TrainPrompt], float]]:
        return [(self._prompts, 1.0)]

    def score(self, engine: Engine, batch: RolloutBatch) -> RewardOutput:
        G = len(batch.samples[0]) if batch.samples else 0
        sides: dict[str, dict[bool, int]] = {}
        for i, prompt in enumerate(batch.prompts):
            sides.setdefault(_pair_key(prompt), {})[bool(prompt.label)] = i
        scores: list[float | None] = [None] * (len(batch.prompts) * G)
        unparsed = right = ties = judged = 0
        for key, where in sides.items():
            if len(where) != 2:
                missing = "rejected" if True in where else "chosen"
                raise RuntimeError(f"patarm: pair {key!r} has no {missing} prompt in step {batch.step}; pairs must train together")
            i_c, i_r = where[True], where[False]
            texts_c = [s.response_text for s in batch.samples[i_c]]
            texts_r = [s.response_text for s in batch.samples[i_r]]
            r_c, r_r = patarm.patarm_rewards(texts_c, texts_r, self.f)
            scores[i_c * G : (i_c + 1) * G] = r_c.tolist()
            scores[i_r * G : (i_r + 1) * G] = r_r.tolist()
            s_c = [patarm.parse_judgment(t).score for t in texts_c]
            s_r = [patarm.parse_judgment(t).score for t in texts_r]
            unparsed += sum(s is None for s in s_c + s_r)
            m_c, m_r = patarm.vote(s_c), patarm.vote(s_r)  # the means PAR compares with
            if m_c is not None and m_r is not None:
                judged += 1
                right += m_c - m_r > patarm.DELTA_TOL
                ties += abs(m_c - m_r) <= patarm.DELTA_TOL
        counts = {
            "unparsed_judgments": float(unparsed),
            "judged_pairs": float(judged),
            # share of pairs (both sides with a valid score) whose mean chosen score is higher
            "pair_accuracy": right / judged if judged else math.nan,
            "pair_ties": float(ties),
        }
        return RewardOutput(scores, engine.policy_version, None, counts)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@register_reward_source("patarm")
def _patarm(config: TrainConfig, *, judge: Judge | None = None) -> PatarmReward:
    return PatarmReward(load_pairs(config.data.dataset), f=config.reward.pairs.par_f)


class PairwiseJudgeReward:
    """RM-R1-style pairwise judging: the policy writes rubrics, evaluates both responses of
    a pair and names the better one (:mod:`rubricrl.rewards.pairwise`); reward 1 when it
    names the chosen one, 0 otherwise (an unparsable output included, counted as
    ``unparsed_judgments``).

    Each pair is one prompt; the slot (A or B) of its chosen response is drawn once per
    pair with ``order_seed``, balanced over the data set (:func:`assign_positions`), and
    recorded in the prompt (``label`` True = chosen is A; the id ends in ``/A`` or ``/B``).
    """

    name = "pairwise_judge"

    def __init__(self, pairs: Sequence[PreferencePair], *, order_seed: int = 0) -> None:
        positions = assign_positions([p.pair_id for p in pairs], order_seed)
        self._prompts: list[TrainPrompt] = []
        for pair, pos in zip(pairs, positions):
            a, b = (pair.chosen, pair.rejected) if pos == "A" else (pair.rejected, pair.chosen)
            text = build_pairwise_prompt(conversation_text(pair.prompt), a, b)
            self._prompts.append(
                TrainPrompt(f"{pair.pair_id}/{pos}", [{"role": "user", "content": text}], "pairwise", label=pos == "A")
            )

    def pools(self) -> list[tuple[list[TrainPrompt], float]]:
        return [(self._prompts, 1.0)]

    def score(self, engine: Engine, batch: RolloutBatch) -> RewardOutput:
        scores: list[float | None] = []
        unparsed = answered_a = right = 0
        for prompt, group in zip(batch.prompts, batch.samples):
            chosen = "A" if prompt.label else "B"
            for sample in group:
                judgment = parse_pairwise(sample.response_text)
                reward = pairwise_reward(judgment, chosen)
                scores.append(reward)
                unparsed += judgment.choice is None
                answered_a += judgment.choice == "A"
                right += reward == 1.0
        n = len(scores)
        counts = {
            "unparsed_judgments": float(unparsed),
            "pairwise_accuracy": right / n if n else math.nan,
            # position diagnostics: where the chosen response sat, and how often "A" was named
            "chosen_in_a": sum(bool(p.label) for p in batch.prompts) / len(batch.prompts) if batch.prompts else math.nan,
            "answered_a": answered_a / n if n else math.nan,
        }
        return RewardOutput(scores, engine.policy_version, None, counts)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@register_reward_source("pairwise_judge")
def _pairwise_judge(config: TrainConfig, *, judge: Judge | None = None) -> PairwiseJudgeReward:
    return PairwiseJudgeReward(load_pairs(config.data.dataset), order_seed=config.reward.pairs.order_seed)
