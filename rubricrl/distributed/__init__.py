"""The trainer beyond one process: Ray actors for engine workers and data-parallel
trainer ranks (``distributed.backend = ray``; docs/distributed.md).

Importing this package does not import Ray; :func:`trainer_class` does, for ``ray``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rubricrl.distributed.errors import DistributedError, TrainerRankError

__all__ = ["DistributedError", "TrainerRankError", "ray_problem", "resume_backend", "trainer_class"]


def ray_problem() -> str | None:
    """Why Ray cannot be used here (None: it can)."""
    try:
        import ray  # noqa: F401
    except ImportError as err:
        return f"ray is not installed ({err}); install the pinned one: pip install -r requirements-peers.txt"
    return None


def trainer_class(backend: str) -> type:
    """The trainer class of ``distributed.backend``: ``Trainer`` (``none``) or ``RayTrainer``.

    Raises:
        ValueError: ``ray`` without an importable Ray (one line, how to install it).
    """
    if backend == "ray":
        problem = ray_problem()
        if problem is not None:
            raise ValueError(f"distributed.backend=ray: {problem}")
        from rubricrl.distributed.ray_trainer import RayTrainer

        return RayTrainer
    from rubricrl.trainer import Trainer

    return Trainer


def resume_backend(path: str | Path, overrides: Sequence[str] = ()) -> str:
    """``distributed.backend`` for resuming the checkpoint at/under ``path`` with ``overrides``
    (read from its config.yaml; ``none`` when that cannot be read: the single-process
    trainer then reports what is wrong with the checkpoint or the overrides)."""
    import yaml

    from rubricrl.config import apply_overrides, config_from_dict
    from rubricrl.trainer.checkpoint import find_checkpoint

    try:
        raw = yaml.safe_load((find_checkpoint(path) / "config.yaml").read_text(encoding="utf-8"))
        return config_from_dict(apply_overrides(raw, overrides)).distributed.backend
    except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
        return "none"
