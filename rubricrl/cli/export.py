"""``rubricrl export``: a training checkpoint as a ``save_pretrained`` directory.

    rubricrl export CKPT_OR_RUN_DIR --out DIR

``CKPT_OR_RUN_DIR`` is a checkpoint directory or a run directory (its newest
checkpoint). The checkpoint's weights go into the run's architecture (the embedded tiny
model, or the run's ``model.path``) in the run's ``model.dtype``, and the model and its
tokenizer are written with ``save_pretrained`` to DIR, which ``rubricrl train --model DIR``,
``rubricrl grade --model DIR`` and ``rubricrl meta-eval --model DIR`` load. DIR must not
exist or be empty; it is written in a temporary sibling and renamed, so it is never
half-written. Errors exit with status 2 and one line naming the file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

__all__ = ["add_export_parser", "export_checkpoint", "run_export"]


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="write a training checkpoint as a save_pretrained model directory",
        description="Write a training checkpoint (or a run's newest one) as a save_pretrained directory "
        "(model + tokenizer) that --model accepts.",
    )
    p.add_argument("checkpoint", metavar="CKPT_OR_RUN_DIR", help="a checkpoint directory or a run directory")
    p.add_argument("--out", metavar="DIR", required=True, help="the directory to write (must not exist or be empty)")
    p.set_defaults(func=run_export)
    return p


def export_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write the checkpoint at/under ``path`` as a ``save_pretrained`` directory ``out``.

    Returns the checkpoint directory exported.

    Raises:
        FileNotFoundError: no checkpoint at/under ``path``.
        ValueError: ``out`` is a file or a non-empty directory, a checkpoint file is
            unreadable or does not fit the run's model (``CheckpointError``, naming it),
            or the run's ``model.path`` cannot be loaded.
    """
    from rubricrl.config import torch_dtype
    from rubricrl.models import load_policy
    from rubricrl.trainer.checkpoint import CheckpointError, load_checkpoint_files

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: exists and is {'a file' if not out.is_dir() else 'not empty'}; choose a new --out")
    ckpt = load_checkpoint_files(path)
    config = ckpt["config"]
    try:
        model, tokenizer = load_policy(config.model.path, seed=config.model.seed, dtype=torch_dtype(config.model.dtype))
    except ValueError as err:
        raise ValueError(f"{ckpt['path']}: the run's model.path: {err}") from None
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as err:  # missing / unexpected keys, wrong shapes
        reason = " ".join(str(err).split())[:200]
        raise CheckpointError(f"{ckpt['path'] / 'model.pt'}: does not fit the run's model ({reason})") from None
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _respect_umask(tmp)
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    return ckpt["path"]


def _respect_umask(directory: Path) -> None:
    """Give the written files the modes the user's umask asks for (some writers use 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in directory.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~umask)


def _fail(message: str) -> int:
    print(f"rubricrl export: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def run_export(args: argparse.Namespace) -> int:
    try:
        source = export_checkpoint(args.checkpoint, args.out)
    except (FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    print(f"exported {source} to {args.out}")
    return 0
