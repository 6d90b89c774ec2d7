"""Training prompts and the per-step prompt schedule.

A :class:`TrainPrompt` is what the trainer samples responses for. Its ``kind`` says how
the response is rewarded:

* ``rubric``: graded by the policy itself against ``items`` (docs/algorithms.md §3);
* ``reference``: RLPR probability of ``reference`` after the response's reasoning (docs/algorithms.md §4);
* ``verdict``: scoring data mixed into training: the prompt is a judge prompt and the
  reward is 1 when the response's verdict matches ``label`` (docs/algorithms.md §3, mixed data);
* ``pointwise`` / ``pairwise``: judge prompts built from preference pairs
  (``reward.source=patarm`` / ``pairwise_judge``, docs/rlpr_patarm.md).

:class:`PromptSchedule` picks each step's prompts as a pure function of the step, so a
resumed run sees exactly the prompts an uninterrupted run would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Literal

from rubricrl.data import RubricItem, load_meta_eval_jsonl, load_rubric_jsonl
from rubricrl.data.builtin import builtin_learning_prompts, builtin_meta_eval, builtin_rubric_prompts
from rubricrl.data.rubrics import MetaEvalRow, RubricPrompt
from rubricrl.data.samplers import PairPreservingSampler
from rubricrl.rewards.judge_prompts import generate_judge_prompt

__all__ = [
    "PromptPairs",
    "PromptSchedule",
    "TrainPrompt",
    "load_reference_prompts",
    "load_rubric_prompts",
    "load_verdict_prompts",
]

PromptKind = Literal["rubric", "reference", "verdict", "pointwise", "pairwise"]


@dataclass
class TrainPrompt:
    """One training prompt: chat ``messages`` plus what its reward needs."""

    prompt_id: str
    messages: list[dict[str, str]]
    kind: PromptKind = "rubric"
    items: list[RubricItem] = field(default_factory=list)
    reference: str | None = None
    label: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "messages": [dict(m) for m in self.messages],
            "kind": self.kind,
            "items": [item.to_dict() for item in self.items],
            "reference": self.reference,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainPrompt:
        items = [RubricItem.from_dict(i) for i in d["items"]]
        return cls(d["prompt_id"], [dict(m) for m in d["messages"]], d["kind"], items, d["reference"], d["label"])


def _rubric_file(dataset: str) -> list[RubricPrompt]:
    # "builtin:learning": the shipped all-rule-checked task (configs/learning.yaml).
    if dataset == "builtin:learning":
        return builtin_learning_prompts()
    rows = builtin_rubric_prompts() if dataset == "builtin" else load_rubric_jsonl(dataset)
    if not rows:
        raise ValueError(f"data.dataset {dataset!r}: no prompts (the file has no JSON object lines)")
    return rows


def load_rubric_prompts(dataset: str, *, min_items: int = 0) -> list[TrainPrompt]:
    """Rubric prompts from ``"builtin"`` or a HealthBench-style JSONL, with >= ``min_items`` items.

    Raises:
        ValueError: no prompt has ``min_items`` items.
    """
    rows = _rubric_file(dataset)
    prompts = [
        TrainPrompt(p.prompt_id, p.prompt, "rubric", list(p.rubrics)) for p in rows if len(p.rubrics) >= min_items
    ]
    if not prompts:
        raise ValueError(f"data.dataset {dataset!r}: no prompt has at least {min_items} rubric items (data.min_items)")
    return prompts


def load_reference_prompts(dataset: str) -> tuple[list[TrainPrompt], int]:
    """Prompts with a reference answer for RLPR, and how many rows had none (left out).

    The reference is ``ideal_completions_data["reference"]``, else
    ``ideal_completions_data["ideal_completion"]``.

    Raises:
        ValueError: no row has a reference answer.
    """
    rows = _rubric_file(dataset)
    prompts: list[TrainPrompt] = []
    for p in rows:
        ideal = p.ideal_completions or {}
        ref = ideal.get("reference") or ideal.get("ideal_completion")
        if isinstance(ref, str) and ref.strip():
            prompts.append(TrainPrompt(p.prompt_id, p.prompt, "reference", list(p.rubrics), reference=ref))
    if not prompts:
        raise ValueError(
            f"data.dataset {dataset!r}: no prompt has a reference answer "
            "(ideal_completions_data.reference or .ideal_completion), which reward.source=rlpr needs"
        )
    return prompts, len(rows) - len(prompts)


def _majority(labels: list[bool]) -> bool | None:
    yes = sum(labels)
    no = len(labels) - yes
    return None if yes == no else yes > no


def load_verdict_prompts(dataset: str) -> tuple[list[TrainPrompt], int]:
    """Scoring data as prompts: the generative judge prompt for (conversation, completion,
    criterion), labelled with the reviewers' majority verdict. Rows whose reviewers are
    evenly split have no label and are left out; their number is returned too.

    Raises:
        ValueError: no row has a majority label.
    """
    rows: list[MetaEvalRow] = builtin_meta_eval() if dataset == "builtin" else load_meta_eval_jsonl(dataset)
    prompts: list[TrainPrompt] = []
    for i, row in enumerate(rows):
        label = _majority(row.binary_labels)
        if label is None:
            continue
        item = RubricItem(row.rubric, 1.0)
        text = generate_judge_prompt(row.prompt, row.completion, item)
        prompts.append(TrainPrompt(f"verdict-{i:05d}", [{"role": "user", "content": text}], "verdict", [item], label=label))
    if not prompts:
        raise ValueError(f"data.mix_dataset {dataset!r}: no row has a majority label")
    return prompts, len(rows) - len(prompts)


class PromptPairs(list):
    """A prompt pool of pairs: items ``2i`` and ``2i + 1`` belong together (PaTaRM's
    chosen and rejected judge prompts). :class:`PromptSchedule` orders it with
    :class:`~rubricrl.data.samplers.PairPreservingSampler` and takes an even number of
    prompts from it per step, so both halves of a pair are always in the same step."""


def _pool_counts(pools: list[tuple[list[TrainPrompt], float]], per_step: int) -> list[int]:
    """Prompts per step from each pool: ``round(share * per_step)``, the last pool the rest."""
    counts = [round(share * per_step) for _, share in pools[:-1]]
    counts = [min(c, per_step - sum(counts[:i])) for i, c in enumerate(counts)]
    counts.append(per_step - sum(counts))
    return counts


def _fits(pools: list[tuple[list[TrainPrompt], float]], per_step: int) -> bool:
    return all(c <= len(prompts) for (prompts, _), c in zip(pools, _pool_counts(pools, per_step)))


class PromptSchedule:
    """Which prompts each step trains on: a pure function of ``(seed, step)``.

    Args:
        pools: ``[(prompts, share)]``; each step takes ``round(share * per_step)`` prompts from
            a pool (the last pool takes what is left), cycling through it in epochs. A step may
            not take more prompts from a pool than it holds (ValueError naming
            ``data.prompts_per_step``): that would repeat prompts within the step.
        per_step: prompts per step.
        seed: epoch ``e`` of pool ``j`` is shuffled with ``random.Random(f"{seed}/{j}/{e}")``.
        shuffle: False walks the pools in file order.
    """

    def __init__(self, pools: list[tuple[list[TrainPrompt], float]], per_step: int, *, seed: int, shuffle: bool = True):
        if not pools or any(not prompts for prompts, _ in pools):
            raise ValueError("PromptSchedule needs non-empty pools")
        self.pools = pools
        self.per_step = per_step
        self.seed = seed
        self.shuffle = shuffle
        counts = _pool_counts(pools, per_step)
        for j, ((prompts, _), count) in enumerate(zip(pools, counts)):
            if isinstance(prompts, PromptPairs) and (count % 2 or len(prompts) % 2):
                raise ValueError(
                    f"data.prompts_per_step={per_step}: a step would take {count} prompts from a pool of pairs "
                    f"of {len(prompts)}; both must be even so that no pair is split across steps"
                )
            # More than a pool holds would repeat prompts within one step (each group a copy).
            if count > len(prompts):
                which = f"pool {j} of the reward source" if len(pools) > 1 else "the dataset"
                fits = next(p for p in range(per_step - 1, 0, -1) if _fits(pools, p))
                raise ValueError(
                    f"data.prompts_per_step={per_step}: a step would take {count} prompts from {which}, which has "
                    f"only {len(prompts)}, so prompts would repeat within a step; use data.prompts_per_step <= {fits}"
                )
        self.counts = counts
        self._orders: dict[tuple[int, int], list[int]] = {}

    def _order(self, pool: int, epoch: int) -> list[int]:
        key = (pool, epoch)
        order = self._orders.get(key)
        if order is None:  # a local, so a clear() by another thread (streaming pipeline) cannot lose it
            prompts = self.pools[pool][0]
            if isinstance(prompts, PromptPairs):
                # whole pairs at even offsets; with an even count per step and an even pool,
                # every step's slice (epoch boundaries included) starts at an even offset
                sampler = PairPreservingSampler(len(prompts), shuffle=self.shuffle, seed=self.seed * 1009 + pool)
                sampler.set_epoch(epoch)
                order = list(sampler)
            else:
                order = list(range(len(prompts)))
                if self.shuffle:
                    random.Random(f"{self.seed}/{pool}/{epoch}").shuffle(order)
            if len(self._orders) > 64:
                self._orders.clear()
            self._orders[key] = order
        return order

    def prompts_for(self, step: int) -> list[TrainPrompt]:
        """The prompts of ``step`` (1-based), pool by pool."""
        out: list[TrainPrompt] = []
        for j, ((prompts, _), count) in enumerate(zip(self.pools, self.counts)):
            n = len(prompts)
            for k in range(count):
                position = (step - 1) * count + k
                out.append(prompts[self._order(j, position // n)[position % n]])
        return out
