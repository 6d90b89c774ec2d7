"""Rollout batches and the function that samples one.

A :class:`RolloutBatch` is one step's prompts with their G sampled responses. Every
``Sample`` carries the ``policy_version`` of the weights that sampled it; grading adds the
``judge_version`` of the weights that graded it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from rubricrl.engines import Engine, Sample
from rubricrl.pipeline.data import PromptSchedule, TrainPrompt

__all__ = ["Rollout", "RolloutBatch", "rollout_seed"]


def rollout_seed(seed: int, step: int) -> int:
    """The sampling seed of ``step``: fixed per (run seed, step), so a resumed run resamples
    exactly what an uninterrupted run samples."""
    return (seed * 1_000_003 + step) % (2**31 - 1)


@dataclass
class RolloutBatch:
    """One step's prompts and responses.

    Attributes:
        step: the training step (1-based) this batch is for.
        prompts: ``P`` prompts.
        samples: ``samples[i][j]`` is response ``j`` of prompt ``i`` (``G`` per prompt).
        policy_version: version of the weights that sampled it (also on every sample).
        rollout_seconds: wall time spent sampling it.
    """

    step: int
    prompts: list[TrainPrompt]
    samples: list[list[Sample]]
    policy_version: int
    rollout_seconds: float

    @property
    def flat_samples(self) -> list[Sample]:
        """Prompt-major: index ``i * G + j``."""
        return [s for group in self.samples for s in group]

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "prompts": [p.to_dict() for p in self.prompts],
            "samples": [[dataclasses.asdict(s) for s in group] for group in self.samples],
            "policy_version": self.policy_version,
            "rollout_seconds": self.rollout_seconds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RolloutBatch:
        return cls(
            step=int(d["step"]),
            prompts=[TrainPrompt.from_dict(p) for p in d["prompts"]],
            samples=[[Sample(**s) for s in group] for group in d["samples"]],
            policy_version=int(d["policy_version"]),
            rollout_seconds=float(d["rollout_seconds"]),
        )


class Rollout:
    """Samples the batch of a step: ``schedule.prompts_for(step)``, ``n`` responses each.

    Calling it with an engine is all the pipeline needs; the engine may be the trainer's
    or a snapshot of older weights on a producer thread.

    ``max_new_tokens_for`` (optional) gives a prompt its own cap (at most ``max_new_tokens``),
    e.g. to spread response lengths in a benchmark: ``caps(prompts)`` are what every
    ``generate`` call of the step gets, on both the synchronous and the streaming path.
    """

    def __init__(
        self,
        schedule: PromptSchedule,
        *,
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_new_tokens_for: Callable[[TrainPrompt], int] | None = None,
    ) -> None:
        self.schedule = schedule
        self.n = n
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed
        self.max_new_tokens_for = max_new_tokens_for

    def caps(self, prompts: list[TrainPrompt]) -> int | list[int]:
        """``max_new_tokens`` for ``engine.generate``: one int, or one cap per prompt."""
        if self.max_new_tokens_for is None:
            return self.max_new_tokens
        return [min(self.max_new_tokens, int(self.max_new_tokens_for(p))) for p in prompts]

    def __call__(self, engine: Engine, step: int) -> RolloutBatch:
        prompts = self.schedule.prompts_for(step)
        start = time.perf_counter()
        samples = engine.generate(
            [p.messages for p in prompts],
            self.n,
            max_new_tokens=self.caps(prompts),
            temperature=self.temperature,
            top_p=self.top_p,
            seed=rollout_seed(self.seed, step),
        )
        return RolloutBatch(step, prompts, samples, engine.policy_version, time.perf_counter() - start)
