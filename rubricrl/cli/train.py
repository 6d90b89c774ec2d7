"""``rubricrl train``: run the GRPO trainer from a YAML config.

    rubricrl train [--config PATH] [--set KEY=VALUE ...] [--model PATH] [--out DIR] [--overwrite]
    rubricrl train --resume DIR [--set KEY=VALUE ...] [--overwrite]

Without ``--config`` the shipped demo config is used. ``--model`` and ``--out`` are
shorthands for ``--set model.path=...`` and ``--set trainer.out_dir=...``.

A run directory holds one run: a new run refuses a directory that already holds one
unless ``--overwrite`` (which deletes it first), and refuses one another process is
writing. ``--resume DIR`` continues the run in DIR (a run directory, or a checkpoint
``DIR/checkpoints/step_N``), whatever directory the checkpoint was written in; the config
is the checkpoint's, with ``--set`` / ``--model`` applied on top (e.g. ``--set
trainer.steps=20`` to train longer); ``--config`` and ``--out`` are then not allowed.

Config, run-directory and checkpoint errors exit with status 2 and one line on stderr
before the model is built; Ctrl-C exits with status 130 and one line saying how to go on.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["EXIT_INTERRUPTED", "add_train_parser", "run_train"]

#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train a policy with GRPO and self-graded rubric rewards",
        description="Train a policy with GRPO and self-graded rubric rewards (see docs/trainer.md).",
    )
    p.add_argument("--config", metavar="PATH", help="YAML config (default: the shipped demo.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=1e-5 (repeatable; values are YAML scalars)",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR (a run directory or one of its checkpoints/step_N); it writes into DIR",
    )
    p.add_argument("--model", metavar="PATH", help="policy checkpoint directory (same as --set model.path=PATH)")
    p.add_argument("--out", metavar="DIR", help="output directory (same as --set trainer.out_dir=DIR)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run already in the output directory and start over; with --resume, "
        "delete the checkpoints newer than the one resumed",
    )
    p.set_defaults(func=run_train)
    return p


def _fail(message: str) -> int:
    print(f"rubricrl train: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _interrupted(trainer) -> int:
    if trainer is None:
        print("rubricrl train: interrupted before the first step", file=sys.stderr)
        return EXIT_INTERRUPTED
    from rubricrl.trainer.checkpoint import list_checkpoints

    where = trainer.out_dir
    # what is on disk: the interrupt may land after a checkpoint's rename, before save returns
    saved = list_checkpoints(where / "checkpoints")
    if saved:
        hint = f"continue from {saved[-1].name} with: rubricrl train --resume {where}"
    else:
        hint = f"no checkpoint was written; start again with: rubricrl train --out {where} --overwrite"
    print(f"rubricrl train: interrupted after step {trainer.step_count}; {hint}", file=sys.stderr)
    return EXIT_INTERRUPTED


def run_train(args: argparse.Namespace) -> int:
    from rubricrl.config import ConfigError, load_config

    if args.resume and args.config:
        return _fail("--resume uses the checkpoint's config; change it with --set instead of --config")
    if args.resume and args.out is not None:
        return _fail(
            f"--resume continues the run in its own directory ({args.resume}); --out cannot move it: "
            "to branch a run, copy its directory and resume the copy"
        )
    overrides = list(args.overrides)
    if args.model is not None:
        overrides.append(f"model.path={args.model}")
    if args.out is not None:
        overrides.append(f"trainer.out_dir={args.out}")
    trainer = None
    try:
        try:
            from rubricrl.distributed import DistributedError, resume_backend, trainer_class  # Trainer or RayTrainer

            if args.resume:
                cls = trainer_class(resume_backend(args.resume, overrides))
                trainer = cls.from_checkpoint(args.resume, overrides, overwrite=args.overwrite)
            else:
                config = load_config(args.config, overrides)
                trainer = trainer_class(config.distributed.backend)(config, overwrite=args.overwrite)
        except FileNotFoundError as err:
            return _fail(str(err))
        # ConfigError, RunDirError, CheckpointError, MetricsError and data / model loading
        # errors are ValueErrors whose message names the key, directory or file.
        # DistributedError: the cluster cannot place the actors (a resources / cluster mismatch).
        except (ConfigError, ValueError, DistributedError) as err:
            return _fail(str(err))
        from rubricrl.trainer import NonFiniteUpdateError

        try:
            trainer.train()
        except (NonFiniteUpdateError, DistributedError) as err:  # a run-time failure, not bad input: exit 1
            print(f"rubricrl train: error: {err}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        if trainer is not None:
            trainer.close()
        return _interrupted(trainer)
    trainer.console.print(f"metrics: {trainer.metrics_log.path}  checkpoint: {trainer.last_checkpoint}")
    return 0
