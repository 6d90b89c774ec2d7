"""Checkpoints: everything a resumed run needs to continue exactly where it stopped.

Layout of ``out_dir/checkpoints/step_000012/``::

    model.pt        model state_dict
    optimizer.pt    ActorUpdater.state_dict(): AdamW state, fp32 master weights (bf16/fp16
                    models), the non-finite streak
    state.pt        step, policy version, optimizer steps, RNG states (torch, CUDA,
                    python random, numpy), reward-source state (RLPR debias cache,
                    std filter), rollout batches already sampled for later steps (eta > 0)
    config.yaml     the run's config

A checkpoint is written to a temporary sibling and renamed into place, and
``checkpoints/latest`` names the newest one, so an interrupted save never leaves a
half-written checkpoint that ``--resume`` would pick.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rubricrl.config import TrainConfig, config_from_dict, config_to_dict, save_config

__all__ = ["find_checkpoint", "load_checkpoint_files", "rng_state", "save_checkpoint_files", "set_rng_state"]

FORMAT_VERSION = 1


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


def save_checkpoint_files(
    directory: str | Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    config: TrainConfig,
) -> Path:
    """Write a checkpoint directory atomically; update ``latest`` beside it; return its path."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(model_state, tmp / "model.pt")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save({"format_version": FORMAT_VERSION, **state, "config": config_to_dict(config)}, tmp / "state.pt")
    save_config(config, tmp / "config.yaml")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    (directory.parent / "latest").write_text(directory.name + "\n", encoding="utf-8")
    return directory


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from ``path``: the checkpoint itself, a run's ``out_dir``
    (its latest checkpoint) or a ``checkpoints`` directory.

    Raises:
        FileNotFoundError: no checkpoint there.
    """
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    for root in (path / "checkpoints", path):
        latest = root / "latest"
        if latest.is_file():
            candidate = root / latest.read_text(encoding="utf-8").strip()
            if (candidate / "state.pt").is_file():
                return candidate
        steps = sorted(p for p in root.glob("step_*") if (p / "state.pt").is_file() and not p.name.endswith(".tmp"))
        if steps:
            return steps[-1]
    raise FileNotFoundError(f"no checkpoint in {str(path)!r} (expected state.pt, or checkpoints/step_*)")


def load_checkpoint_files(path: str | Path) -> dict[str, Any]:
    """``{"path", "model", "optimizer", "state", "config"}`` of the checkpoint at/under ``path``."""
    directory = find_checkpoint(path)
    # state.pt holds python/numpy RNG states and sampled batches (plain python objects), so it
    # is not a weights-only file; it is a file this program wrote.
    state = torch.load(directory / "state.pt", map_location="cpu", weights_only=False)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory}: checkpoint format {state.get('format_version')} is not {FORMAT_VERSION}")
    return {
        "path": directory,
        "model": torch.load(directory / "model.pt", map_location="cpu", weights_only=True),
        "optimizer": torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=False),
        "state": state,
        "config": config_from_dict(state["config"]),
    }
