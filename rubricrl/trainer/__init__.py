"""GRPO trainer with self-graded rubric rewards: the step loop, the actor update,
metrics and checkpoints (see docs/trainer.md)."""

from rubricrl.trainer.checkpoint import find_checkpoint
from rubricrl.trainer.metrics import METRIC_KEYS, MetricsLog, plot_metrics, step_time_table
from rubricrl.trainer.trainer import Trainer, resolve_device
from rubricrl.trainer.update import ActorUpdater, NonFiniteUpdateError, UpdateBatch

__all__ = [
    "METRIC_KEYS",
    "ActorUpdater",
    "MetricsLog",
    "NonFiniteUpdateError",
    "Trainer",
    "UpdateBatch",
    "find_checkpoint",
    "plot_metrics",
    "resolve_device",
    "step_time_table",
]
