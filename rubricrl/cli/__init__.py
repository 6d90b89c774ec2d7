"""The ``rubricrl`` command line: ``rubricrl train``, ``export``, ``grade`` and ``meta-eval``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rubricrl", description="GRPO with self-graded rubric rewards.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    # Every subcommand ships with the package: an ImportError here is a bug to see, not a
    # command to drop silently.
    from rubricrl.cli.export import add_export_parser
    from rubricrl.cli.grade import add_grade_parser
    from rubricrl.cli.meta_eval import add_meta_eval_parser
    from rubricrl.cli.train import add_train_parser

    add_train_parser(subparsers)
    add_export_parser(subparsers)
    add_grade_parser(subparsers)
    add_meta_eval_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for usage and config errors, 130 after Ctrl-C in train)."""
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return int(args.func(args) or 0)
