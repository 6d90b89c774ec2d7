"""The data side of a training step: prompts, rollout batches, reward sources and the
bounded-staleness rollout schedule (docs/algorithms.md §7)."""

from rubricrl.pipeline.data import (
    PromptPairs,
    PromptSchedule,
    TrainPrompt,
    load_reference_prompts,
    load_rubric_prompts,
    load_verdict_prompts,
)
from rubricrl.pipeline.rewards import (
    MixReward,
    PairwiseJudgeReward,
    PatarmReward,
    RewardOutput,
    RewardSource,
    RLPRReward,
    RubricReward,
    build_judge,
    load_pairs,
    make_reward_source,
    register_reward_source,
    reward_source_names,
)
from rubricrl.pipeline.rollout import Rollout, RolloutBatch, rollout_seed
from rubricrl.pipeline.schedule import RolloutPipeline, snapshot_engine

__all__ = [
    "MixReward",
    "PairwiseJudgeReward",
    "PatarmReward",
    "PromptPairs",
    "PromptSchedule",
    "RLPRReward",
    "RewardOutput",
    "RewardSource",
    "Rollout",
    "RolloutBatch",
    "RolloutPipeline",
    "RubricReward",
    "TrainPrompt",
    "build_judge",
    "load_pairs",
    "load_reference_prompts",
    "load_rubric_prompts",
    "load_verdict_prompts",
    "make_reward_source",
    "register_reward_source",
    "reward_source_names",
    "rollout_seed",
    "snapshot_engine",
]
