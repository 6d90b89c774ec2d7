"""An engine worker: samples groups and self-grades them with its own engine (a Ray actor).

A step's prompts are cut into contiguous chunks, one per worker
(:func:`split_groups`); chunk ``c`` of step ``s`` is sampled with :func:`chunk_seed` and,
before grading, the worker's torch RNG is seeded with it too (``judge_mode=sample`` draws
from it). So a chunk's samples and scores depend only on (run seed, step, chunk, weights):
a chunk re-sampled on a restarted worker is the chunk that was lost, and one worker
(chunk 0, seed ``rollout_seed``) samples exactly what the single-process trainer does.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rubricrl.config import config_from_dict, torch_dtype
from rubricrl.engines.factory import make_engine
from rubricrl.pipeline import RewardOutput, RolloutBatch, make_reward_source
from rubricrl.pipeline.data import TrainPrompt
from rubricrl.pipeline.rollout import rollout_seed

__all__ = ["EngineWorker", "chunk_seed", "split_groups"]


def split_groups(num_prompts: int, workers: int) -> list[range]:
    """Contiguous, near-equal chunks of ``range(num_prompts)``, one per worker (some empty
    when there are fewer prompts than workers)."""
    base, extra = divmod(num_prompts, workers)
    out, start = [], 0
    for w in range(workers):
        size = base + (w < extra)
        out.append(range(start, start + size))
        start += size
    return out


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk`` of ``step``: chunk 0 has the single-process
    trainer's ``rollout_seed(seed, step)``."""
    return (rollout_seed(seed, step) + chunk * 104_729) % (2**31 - 1)


class EngineWorker:
    """Actor body (wrapped with ``ray.remote`` by :mod:`rubricrl.distributed.engines`).

    Args:
        raw_config: ``config_to_dict`` of the run's config.
        num_threads: torch threads (the actor's CPUs).
    """

    def __init__(self, raw_config: dict[str, Any], num_threads: int) -> None:
        from rubricrl.trainer.trainer import resolve_device, seed_everything

        torch.set_num_threads(num_threads)
        c = self.config = config_from_dict(raw_config).validate()
        seed_everything(c.trainer.seed)
        self.engine = make_engine(
            c.engine.backend,
            c.model.path,
            seed=c.model.seed,
            dtype=torch_dtype(c.model.dtype),
            device=resolve_device(c.model.device),
            max_batch_size=c.rollout.max_batch_size,
            kv_cache_mb=c.engine.kv_cache_mb,
        )
        self.reward = make_reward_source(c.reward.source, c)

    def load_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        self.engine.load_weights(state, version)
        return version

    def rollout(self, step: int, prompts: list[TrainPrompt], seed: int) -> tuple[list[list[Any]], int, float]:
        """``(samples, policy_version, seconds)``: ``rollout.n`` responses per prompt."""
        r = self.config.rollout
        start = time.perf_counter()
        samples = self.engine.generate(
            [p.messages for p in prompts], r.n, max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, seed=seed
        )
        return samples, self.engine.policy_version, time.perf_counter() - start

    def grade(self, step: int, prompts: list[TrainPrompt], rolled: tuple[list[list[Any]], int, float], seed: int) -> tuple[RewardOutput, float]:
        """``(scores of the chunk, seconds)``; ``rolled`` is :meth:`rollout`'s result."""
        samples, version, seconds = rolled
        torch.manual_seed(seed)
        start = time.perf_counter()
        out = self.reward.score(self.engine, RolloutBatch(step, prompts, samples, version, seconds))
        return out, time.perf_counter() - start
