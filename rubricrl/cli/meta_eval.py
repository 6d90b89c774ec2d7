"""``rubricrl meta-eval``: grader quality (MF1 against physician labels), overall and per category.

Input: meta-evaluation JSONL (``{"prompt", "completion", "rubric", "binary_labels",
"category"}`` per line; see ``rubricrl.data.load_meta_eval_jsonl``); without INPUT the
built-in set is used. Prints a table, or the result as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import time

from rubricrl.cli._common import (
    add_engine_args,
    add_judge_args,
    build_engine,
    build_judge,
    check_context,
    check_device_arg,
    check_judge_args,
    console,
    fmt,
    judge_options,
    model_label,
    progress_bar,
    require_rows,
    run_command,
)

__all__ = ["add_meta_eval_parser", "main_meta_eval"]

DESCRIPTION = "Measure a judge against physician labels: MF1 = mean of F1(met) and F1(not met), overall and per category."


def add_meta_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``meta-eval`` on an argparse subparsers object; sets ``func`` (returns the exit code)."""
    parser = subparsers.add_parser("meta-eval", help="grader quality (MF1) on labelled rows", description=DESCRIPTION)
    _configure(parser)
    return parser


def main_meta_eval(argv: list[str] | None = None) -> int:
    """``rubricrl meta-eval`` as a function: returns the exit code (argparse usage errors exit 2)."""
    parser = argparse.ArgumentParser(prog="rubricrl meta-eval", description=DESCRIPTION)
    _configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", nargs="?", metavar="INPUT.jsonl", help="meta-evaluation rows (default: the built-in set)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout instead of a table")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N rows")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per judge call (default: 16)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_engine_args(parser)
    add_judge_args(parser)

    def run(args: argparse.Namespace) -> int:
        check_judge_args(parser, args)
        if args.limit is not None and args.limit < 1:
            parser.error("--limit must be >= 1")
        if args.batch_size < 1:
            parser.error("--batch-size must be >= 1")
        return run_command(_meta_eval, args)

    parser.set_defaults(func=run)


def _meta_eval(args: argparse.Namespace) -> int:
    from rubricrl.data.builtin import builtin_meta_eval
    from rubricrl.data.rubrics import RubricItem, load_meta_eval_jsonl
    from rubricrl.judges import run_meta_eval

    rows = load_meta_eval_jsonl(args.input) if args.input else builtin_meta_eval()
    if args.limit is not None:
        rows = rows[: args.limit]
    require_rows(rows, args.input, "meta-evaluation rows")
    check_device_arg(args)
    judge = build_judge(args)
    engine = build_engine(args)
    source = args.input or "built-in meta-eval set"
    check_context(
        judge,
        engine,
        ((f"{source}: row {i + 1}", r.prompt, [r.completion], [RubricItem(r.rubric, 1.0)]) for i, r in enumerate(rows)),
    )
    start = time.perf_counter()
    with progress_bar(len(rows), "meta-eval", enabled=args.progress and not args.json) as advance:
        result = run_meta_eval(judge, engine, rows, batch_size=args.batch_size, progress=advance)
    elapsed = time.perf_counter() - start
    result["input"] = args.input or "built-in meta-eval set"
    result["judge_settings"] = {"name": args.judge, **judge_options(args), "model": model_label(args)}
    result["time_s"] = elapsed
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0


def _print_table(result: dict) -> None:
    from rich.table import Table

    settings = result["judge_settings"]
    mode = f", {settings['mode']}" if "mode" in settings else ""
    table = Table(
        title=f"MF1 of the {settings['name']} judge (T={settings['temperature']}{mode}) on {result['input']}",
        title_justify="left",
        caption=(
            f"model: {settings['model']}; {result['n_rows']} rows, {result['n_failed']} failed judgments "
            f"(left out); {result['time_s']:.1f} s"
        ),
        caption_justify="left",
    )
    table.add_column("category")
    for name in ("items", "label pairs", "F1 met", "F1 not met", "MF1"):
        table.add_column(name, justify="right")
    for category, summary in result["per_category"].items():
        table.add_row(category, *_cells(summary))
    table.add_section()
    table.add_row("overall", *_cells(result), style="bold")
    console().print(table)


def _cells(summary: dict) -> list[str]:
    return [
        str(summary["n_items"]),
        str(summary["n_pairs"]),
        fmt(summary["f1_met"]),
        fmt(summary["f1_not_met"]),
        fmt(summary["mf1"]),
    ]
