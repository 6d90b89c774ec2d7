"""Checkpoints: everything a resumed run needs to continue exactly where it stopped.

Layout of ``out_dir/checkpoints/step_000012/``::

    model.pt        model state_dict
    optimizer.pt    ActorUpdater.state_dict(): AdamW state, fp32 master weights (bf16/fp16
                    models), the non-finite streak
    state.pt        step, policy version, optimizer steps, RNG states (torch, CUDA,
                    python random, numpy), reward-source state (RLPR debias cache,
                    std filter), rollout batches already sampled for later steps (eta > 0),
                    the drift guard's history (rubricrl/trainer/drift.py)
    config.yaml     the run's config

Paths: the saved config's ``trainer.out_dir`` is ``"."`` (the run directory itself), so a
copied or moved run resumes into wherever it now is (``run_dir_of``).

A checkpoint is written (and fsynced) in a temporary sibling ``step_N.tmp`` and renamed
into place, so a ``step_N`` directory is always complete; ``find_checkpoint`` picks the
highest-numbered one, and ``checkpoints/latest`` names it for people and scripts.
An unreadable file is reported as a :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rubricrl.config import ConfigError, TrainConfig, config_from_dict, config_to_dict
from rubricrl.trainer.faults import fault_point

__all__ = [
    "CHECKPOINT_FILES",
    "CheckpointError",
    "checkpoint_step",
    "find_checkpoint",
    "list_checkpoints",
    "load_checkpoint_files",
    "rng_state",
    "run_dir_of",
    "save_checkpoint_files",
    "set_rng_state",
]

FORMAT_VERSION = 1
CHECKPOINT_FILES = ("model.pt", "optimizer.pt", "state.pt", "config.yaml")
_STEP_DIR = re.compile(r"step_(\d+)")
_STATE_KEYS = ("step", "policy_version", "optimizer_steps", "rng", "reward_source", "pending_batches", "config")


class CheckpointError(ValueError):
    """A checkpoint that cannot be found or read; the message names the directory or file."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- writing ---------------------------------------------------------------------------


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, write) -> None:
    write(path)
    _fsync(path)


def save_checkpoint_files(
    directory: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    config: TrainConfig,
) -> Path:
    """Write a checkpoint directory atomically; update ``latest`` beside it; return its path."""
    import yaml

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():  # left by a writer that was killed
        shutil.rmtree(tmp)
    tmp.mkdir()
    raw_config = config_to_dict(config)
    raw_config["trainer"]["out_dir"] = "."  # the run directory, wherever it is when resumed
    _write_file(tmp / "model.pt", lambda p: torch.save(model_state, p))
    _write_file(tmp / "optimizer.pt", lambda p: torch.save(optimizer_state, p))
    fault_point("checkpoint")
    _write_file(tmp / "state.pt", lambda p: torch.save({"format_version": FORMAT_VERSION, **state, "config": raw_config}, p))
    _write_file(tmp / "config.yaml", lambda p: p.write_text(yaml.safe_dump(raw_config, sort_keys=False), encoding="utf-8"))
    _fsync(tmp)
    if directory.exists():  # rewriting a step: move the old one aside, so a step_N is never partial
        old = directory.with_name(directory.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old)
    else:
        tmp.rename(directory)
    _fsync(directory.parent)
    fault_point("latest")
    write_latest(directory)
    return directory


def write_latest(directory: Path) -> None:
    """Point ``checkpoints/latest`` at ``directory`` (replaced atomically)."""
    latest = directory.parent / "latest"
    tmp = latest.with_name("latest.tmp")
    tmp.write_text(directory.name + "\n", encoding="utf-8")
    os.replace(tmp, latest)


# ---- finding ---------------------------------------------------------------------------


def checkpoint_step(directory: str | Path) -> int | None:
    """The step of a ``step_N`` checkpoint directory name, else None."""
    m = _STEP_DIR.fullmatch(Path(directory).name)
    return int(m.group(1)) if m else None


def list_checkpoints(checkpoints: str | Path) -> list[Path]:
    """The ``step_N`` directories (written completely: they are renamed into place) of a
    ``checkpoints`` directory, by step."""
    root = Path(checkpoints)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p))


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from ``path``: the checkpoint itself, a run's ``out_dir``
    (its highest-step checkpoint) or a ``checkpoints`` directory.

    Raises:
        FileNotFoundError: ``path`` does not exist, or holds no checkpoint (the message
            says so in one line, and says when it is a run stopped before its first one).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no checkpoint (no such directory)")
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: is a file, not a run or checkpoint directory")
    if any((path / name).is_file() for name in CHECKPOINT_FILES):
        return path  # a checkpoint directory (a missing file is reported when it is read)
    for root in (path / "checkpoints", path):
        steps = list_checkpoints(root)
        if steps:
            return steps[-1]
    if (path / "metrics.jsonl").is_file():
        raise FileNotFoundError(
            f"{path}: the run stopped before its first checkpoint, so there is nothing to resume; "
            f"start it again with --out {path} --overwrite"
        )
    raise FileNotFoundError(f"{path}: no checkpoint (expected state.pt, or checkpoints/step_*)")


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/step_N`` -> ``RUN``).

    Raises:
        CheckpointError: the checkpoint is not inside a run's ``checkpoints`` directory.
    """
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name != "checkpoints" or checkpoint_step(checkpoint) is None:
        raise CheckpointError(
            f"{checkpoint}: not a checkpoint inside a run directory (RUN/checkpoints/step_N), "
            "so there is no run to continue; copy it into one, or train from it with "
            "rubricrl export and --model"
        )
    return checkpoint.parent.parent


# ---- reading ---------------------------------------------------------------------------


def _load(directory: Path, name: str, *, weights_only: bool) -> Any:
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint is incomplete)")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as err:  # torch/pickle/zip raise many types for a damaged file
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise CheckpointError(f"{path}: unreadable (truncated or corrupt: {reason})") from None


def load_checkpoint_files(path: str | Path) -> dict[str, Any]:
    """``{"path", "model", "optimizer", "state", "config"}`` of the checkpoint at/under ``path``.

    Raises:
        FileNotFoundError: no checkpoint at/under ``path``.
        CheckpointError: a file is missing, unreadable or not what this program writes.
    """
    directory = find_checkpoint(path)
    # state.pt holds python/numpy RNG states and sampled batches (plain python objects), so it
    # is not a weights-only file; it is a file this program wrote.
    state = _load(directory, "state.pt", weights_only=False)
    state_path = directory / "state.pt"
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_path}: not a rubricrl checkpoint state (a {type(state).__name__})")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{state_path}: checkpoint format {state.get('format_version')} is not {FORMAT_VERSION}")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{state_path}: missing {missing}")
    try:
        config = config_from_dict(state["config"])
    except ConfigError as err:
        raise CheckpointError(f"{state_path}: saved config: {err}") from None
    model = _load(directory, "model.pt", weights_only=True)
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"{directory / 'model.pt'}: not a state_dict of tensors")
    optimizer = _load(directory, "optimizer.pt", weights_only=True)
    # ActorUpdater.state_dict() ({"optimizer": ..., "master_params", ...}) or, in older
    # checkpoints, the bare optimizer state_dict
    inner = optimizer.get("optimizer", optimizer) if isinstance(optimizer, dict) else None
    if not isinstance(inner, dict) or not {"state", "param_groups"} <= set(inner):
        raise CheckpointError(f"{directory / 'optimizer.pt'}: not an optimizer state_dict")
    return {"path": directory, "model": model, "optimizer": optimizer, "state": state, "config": config}
