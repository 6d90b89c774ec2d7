"""Pieces shared by the ``grade`` and ``meta-eval`` commands: engine/judge options, errors, progress."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rubricrl.config import MODEL_DTYPES, torch_dtype

#: Exit code for bad input (a malformed data file, a bad model path or option).
EXIT_BAD_INPUT = 2


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
    group.add_argument("--device", default=None, help="torch device: auto, cpu, cuda or cuda:N (default: cpu)")
    group.add_argument("--dtype", choices=MODEL_DTYPES, default="float32", help="model dtype (default: float32)")
    group.add_argument(
        "--engine",
        choices=("hf", "vllm", "sglang"),
        default="hf",
        help="engine backend (default: hf; vllm needs rubricrl[vllm]; sglang needs --sglang-url)",
    )
    group.add_argument(
        "--sglang-url", metavar="URL", default=None, help="--engine sglang: the running SGLang server, http://host:port"
    )


def check_engine_args(args: argparse.Namespace) -> None:
    """``--engine sglang`` needs a valid ``--sglang-url``, which no other engine takes (before any model loads)."""
    from rubricrl.config import server_url_problem

    url = getattr(args, "sglang_url", None)
    if args.engine == "sglang":
        problem = server_url_problem(url)
        if problem is not None:
            raise CliError(f"--sglang-url: --engine sglang needs it: it {problem}")
    elif url is not None:
        raise CliError(f"--sglang-url applies to --engine sglang only (--engine is {args.engine})")


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
    group.add_argument(
        "--judge-layout",
        choices=("instructions_first", "continue_rollout"),
        default=None,
        help="logprob judge: prompt layout (default: instructions_first; continue_rollout = the rollout's prompt "
        "and response first, then the grading turn)",
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
        if getattr(args, "judge_layout", None) is not None:
            parser.error("--judge-layout applies to --judge logprob only")


def judge_options(args: argparse.Namespace) -> dict[str, Any]:
    """The judge's keyword options from the command line (also recorded in the output)."""
    if args.judge == "logprob":
        return {
            "mode": args.mode or "expected",
            "temperature": args.temperature,
            "share_prefix": args.share_prefix,
            "seed": args.seed,
            # getattr: a Namespace built in code (not by add_judge_args) may lack the option
            "layout": getattr(args, "judge_layout", None) or "instructions_first",
        }
    return {
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "max_attempts": args.max_attempts,
        "seed": args.seed,
    }


def build_judge(args: argparse.Namespace):
    from rubricrl.judges import build_judge as build_judge_by_name

    try:
        return build_judge_by_name(args.judge, temperature=args.temperature, options=judge_options(args))
    except ValueError as err:
        raise CliError(str(err)) from None


def check_device_arg(args: argparse.Namespace) -> None:
    """Reject a ``--device`` that does not name a usable device (before any model loads)."""
    if args.device is None:
        return
    from rubricrl.config import device_problem

    problem = device_problem(args.device)
    if problem is not None:
        raise CliError(f"--device: {problem}")


def check_out_path(out: str | os.PathLike, input_path: str | os.PathLike | None = None) -> None:
    """Fail now, not after grading, when ``--out`` cannot be written: it is the input, a
    directory, in a folder that does not exist, or in a folder or file without write permission."""
    target = Path(out)
    if input_path is not None and target.exists() and target.resolve() == Path(input_path).resolve():
        raise CliError("--out must differ from INPUT (the input would be overwritten)")
    if target.is_dir():
        raise CliError(f"--out {out}: is a directory (give a file path)")
    parent = target.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a directory"
        raise CliError(f"--out {out}: folder {str(parent)!r} {what}")
    # The file is written to a temporary sibling and renamed: the folder must be writable.
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"--out {out}: folder {str(parent)!r} is not writable")
    if target.exists() and not os.access(target, os.W_OK):
        raise CliError(f"--out {out}: the file exists and is not writable")


def require_rows(rows: list, input_path: str | os.PathLike | None, what: str) -> None:
    """An input with no rows is an error (exit 2), not an empty result."""
    if not rows:
        raise CliError(f"{input_path}: no {what} (the file has no JSON object lines)")


def context_length(engine) -> int | None:
    """The model's context in tokens (``max_position_embeddings``), or None when it has none."""
    config = getattr(getattr(engine, "model", None), "config", None)
    n = getattr(config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def judge_prompt_tokens(judge, engine, conversation: list[dict], responses: list[str], items: list) -> int:
    """Tokens of the longest sequence the judge will run for one row: the judge prompt
    (conversation, response, rubric item) plus, for a generating judge, its new tokens."""
    tokenizer = engine.tokenizer
    if hasattr(judge, "prompt_encoder"):  # logprob judge: prefix | response | item suffix
        enc = judge.prompt_encoder(tokenizer)
        return (
            len(enc.prefix_ids(conversation))
            + max(len(enc.response_ids(r)) for r in responses)
            + max(len(enc.suffix_ids(item)) for item in items)
        )
    from rubricrl.engines.prompts import encode_prompts
    from rubricrl.rewards.judge_prompts import generate_judge_prompt

    chat = getattr(judge, "chat", None)
    if chat is None:
        chat = getattr(tokenizer, "chat_template", None) is not None
    longest = 0
    for response in responses:
        for item in items:
            text = generate_judge_prompt(conversation, response, item)
            prompt = [{"role": "user", "content": text}] if chat else text
            longest = max(longest, len(encode_prompts(tokenizer, [prompt])[0]))
    return longest + int(getattr(judge, "max_new_tokens", 0))


def check_context(judge, engine, rows) -> None:
    """Refuse rows whose judge prompts do not fit the model's context (before grading any).

    ``rows``: ``(where, conversation, responses, items)``, ``where`` naming the row
    (``file:line: prompt_id 'p1'``). A model cannot attend past its context, so such a
    row would be graded on garbage (or crash); nothing is truncated silently.
    """
    limit = context_length(engine)
    if limit is None:
        return
    import logging

    # transformers warns on every over-long encoding; the error below says it once, better.
    hf_log = logging.getLogger("transformers.tokenization_utils_base")
    level = hf_log.level
    hf_log.setLevel(logging.ERROR)
    try:
        for where, conversation, responses, items in rows:
            n = judge_prompt_tokens(judge, engine, conversation, responses, items)
            if n > limit:
                extra = " including the judge's new tokens" if not hasattr(judge, "prompt_encoder") else ""
                raise CliError(
                    f"{where}: the longest judge prompt is {n} tokens{extra}, more than the model's context "
                    f"of {limit} (max_position_embeddings); shorten the conversation or the response"
                )
    finally:
        hf_log.setLevel(level)


def build_engine(args: argparse.Namespace):
    import torch

    from rubricrl.engines.factory import make_engine

    check_device_arg(args)
    check_engine_args(args)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return make_engine(
            args.engine, args.model, dtype=torch_dtype(args.dtype), device=device, sglang_url=args.sglang_url
        )
    except (ValueError, RuntimeError) as err:
        if args.engine == "sglang":
            from rubricrl.engines.sglang import SGLangError  # the server did not answer or refused the weights

            if isinstance(err, SGLangError):
                raise CliError(f"--sglang-url {args.sglang_url}: {err}") from None
        if isinstance(err, ValueError):
            raise CliError(f"--model: {err}") from None
        raise


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
    except PermissionError as err:
        _error(f"{err.filename}: permission denied")
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
