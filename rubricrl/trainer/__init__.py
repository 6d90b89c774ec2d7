"""GRPO trainer with self-graded rubric rewards: the step loop, the actor update,
metrics, checkpoints, the run directory and the drift guard (see docs/trainer.md)."""

from rubricrl.trainer.checkpoint import CheckpointError, find_checkpoint, load_checkpoint_files
from rubricrl.trainer.drift import DriftGuard
from rubricrl.trainer.metrics import METRIC_KEYS, MetricsError, MetricsLog, plot_metrics, step_time_table
from rubricrl.trainer.rundir import RunDir, RunDirError
from rubricrl.trainer.trainer import Trainer, resolve_device
from rubricrl.trainer.update import ActorUpdater, NonFiniteUpdateError, UpdateBatch

__all__ = [
    "METRIC_KEYS",
    "ActorUpdater",
    "CheckpointError",
    "DriftGuard",
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
