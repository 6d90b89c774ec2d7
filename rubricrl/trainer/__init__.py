"""GRPO trainer with self-graded rubric rewards: the step loop, the actor update,
metrics, checkpoints and the run directory (see docs/trainer.md)."""

from rubricrl.trainer.checkpoint import CheckpointError, find_checkpoint, load_checkpoint_files
from rubricrl.trainer.metrics import METRIC_KEYS, MetricsError, MetricsLog, plot_metrics, step_time_table
from rubricrl.trainer.rundir import RunDir, RunDirError
from rubricrl.trainer.trainer import Trainer, resolve_device
from rubricrl.trainer.update import ActorUpdater, NonFiniteUpdateError, UpdateBatch

__all__ = [
    "METRIC_KEYS",
    "ActorUpdater",
    "CheckpointError",
    "MetricsError",
    "MetricsLog",
    "NonFiniteUpdateError",
    "RunDir",
    "RunDirError",
    "Trainer",
    "UpdateBatch",
    "find_checkpoint",
    "load_checkpoint_files",
    "plot_metrics",
    "resolve_device",
    "step_time_table",
]
