"""``rubricrl train``: run the GRPO trainer from a YAML config.

    rubricrl train [--config PATH] [--set KEY=VALUE ...] [--resume DIR] [--model PATH] [--out DIR]

Without ``--config`` the shipped demo config is used. ``--model`` and ``--out`` are
shorthands for ``--set model.path=...`` and ``--set trainer.out_dir=...``. With
``--resume`` the config is the checkpoint's own, and ``--set`` / ``--model`` / ``--out``
are applied on top of it (e.g. ``--set trainer.steps=20`` to train longer); ``--config``
is then not allowed. A config error exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_train_parser", "run_train"]


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
    p.add_argument("--resume", metavar="DIR", help="continue from a checkpoint directory or a run's out_dir")
    p.add_argument("--model", metavar="PATH", help="policy checkpoint directory (same as --set model.path=PATH)")
    p.add_argument("--out", metavar="DIR", help="output directory (same as --set trainer.out_dir=DIR)")
    p.set_defaults(func=run_train)
    return p


def _fail(message: str) -> int:
    print(f"rubricrl train: error: {message}", file=sys.stderr)
    return 2


def run_train(args: argparse.Namespace) -> int:
    from rubricrl.config import ConfigError, load_config

    overrides = list(args.overrides)
    if args.model is not None:
        overrides.append(f"model.path={args.model}")
    if args.out is not None:
        overrides.append(f"trainer.out_dir={args.out}")
    try:
        if args.resume:
            if args.config:
                return _fail("--resume uses the checkpoint's config; change it with --set instead of --config")
            from rubricrl.trainer import Trainer

            try:
                trainer = Trainer.from_checkpoint(args.resume, overrides)
            except FileNotFoundError as err:
                return _fail(str(err))
        else:
            config = load_config(args.config, overrides)
            from rubricrl.trainer import Trainer

            trainer = Trainer(config)
    except ConfigError as err:
        return _fail(str(err))
    except ValueError as err:  # data and model loading errors name their file / field
        return _fail(str(err))
    from rubricrl.trainer import NonFiniteUpdateError

    try:
        trainer.train()
    except NonFiniteUpdateError as err:  # a run-time failure, not bad input: exit 1
        print(f"rubricrl train: error: {err}", file=sys.stderr)
        return 1
    trainer.console.print(f"metrics: {trainer.metrics_log.path}  checkpoint: {trainer.last_checkpoint}")
    return 0
