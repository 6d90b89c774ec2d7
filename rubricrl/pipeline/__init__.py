"""The data side of a training step: prompts, rollout batches, reward sources and the
bounded-staleness rollout schedules: whole batches ahead (``RolloutPipeline``) or streamed
group by group through grading (``StreamPipeline``) (docs/algorithms.md §7, docs/trainer.md)."""

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
from rubricrl.pipeline.stream import GradedBatch, StreamPipeline, behaviour_version_of, merge_rewards

__all__ = [
    "GradedBatch",
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
    "StreamPipeline",
    "TrainPrompt",
    "behaviour_version_of",
    "build_judge",
    "load_pairs",
    "load_reference_prompts",
    "load_rubric_prompts",
    "load_verdict_prompts",
    "make_reward_source",
    "merge_rewards",
    "register_reward_source",
    "reward_source_names",
    "rollout_seed",
    "snapshot_engine",
]
