"""Pieces shared by the ``grade`` and ``meta-eval`` commands: engine/judge options, errors, progress."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

#: Exit code for bad input (a malformed data file, a bad model path or option).
EXIT_BAD_INPUT = 2

_DTYPES = ("float32", "bfloat16", "float16")


class CliError(Exception):
    """A user-facing error: printed as one line on stderr, exit code 2."""


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="local save_pretrained checkpoint directory (default: the embedded tiny model, random weights)",
    )
    group.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: cpu)")
    group.add_argument("--dtype", choices=_DTYPES, default="float32", help="model dtype (default: float32)")
    group.add_argument(
        "--engine", choices=("hf", "vllm"), default="hf", help="engine backend (default: hf; vllm needs rubricrl[vllm])"
    )


def add_judge_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("judge")
    group.add_argument("--judge", choices=("logprob", "generate"), default="logprob", help="judge kind (default: logprob)")
    group.add_argument(
        "--mode",
        choices=("expected", "threshold", "sample"),
        default=None,
        help="logprob judge: how p(met) enters the score (default: expected)",
    )
    group.add_argument(
        "--temperature", type=float, default=0.6, help="grading temperature (default: 0.6; 1.0 = rollout temperature)"
    )
    group.add_argument(
        "--no-share-prefix",
        dest="share_prefix",
        action="store_false",
        help="logprob judge: run every (response, item) prompt as a full sequence (slower; same result)",
    )
    group.add_argument("--max-new-tokens", type=int, default=128, help="generate judge: tokens per judgment (default: 128)")
    group.add_argument("--max-attempts", type=int, default=3, help="generate judge: tries per judgment (default: 3)")
    group.add_argument("--seed", type=int, default=0, help="seed of sampled verdicts (sample mode, generate judge)")


def check_judge_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject options that do not apply to the chosen judge (argparse error, exit 2)."""
    if args.judge == "generate":
        if args.mode is not None:
            parser.error("--mode applies to --judge logprob only (the generate judge gives hard verdicts)")
        if not args.share_prefix:
            parser.error("--no-share-prefix applies to --judge logprob only")


def judge_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.judge == "logprob":
        return {
            "mode": args.mode or "expected",
            "temperature": args.temperature,
            "share_prefix": args.share_prefix,
            "seed": args.seed,
        }
    return {
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "max_attempts": args.max_attempts,
        "seed": args.seed,
    }


def build_judge(args: argparse.Namespace):
    from rubricrl.judges import make_judge

    try:
        return make_judge(args.judge, **judge_options(args))
    except ValueError as err:
        raise CliError(str(err)) from None


def build_engine(args: argparse.Namespace):
    import torch

    from rubricrl.engines.factory import make_engine

    try:
        return make_engine(args.engine, args.model, dtype=getattr(torch, args.dtype), device=args.device)
    except ValueError as err:
        raise CliError(f"--model: {err}") from None


def model_label(args: argparse.Namespace) -> str:
    return args.model if args.model else "embedded tiny model (random weights)"


def run_command(body: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command body; data and usage errors become one stderr line and exit code 2."""
    from rubricrl.data.jsonl import DataError

    try:
        return body(args)
    except DataError as err:  # already "file:line: problem"
        _error(str(err))
    except FileNotFoundError as err:
        _error(f"{err.filename}: no such file")
    except IsADirectoryError as err:
        _error(f"{err.filename}: is a directory")
    except CliError as err:
        _error(str(err))
    return EXIT_BAD_INPUT


def _error(message: str) -> None:
    print(f"rubricrl: error: {' '.join(message.split())}", file=sys.stderr)


@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. Disabled: a no-op."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, soft_wrap=True)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
