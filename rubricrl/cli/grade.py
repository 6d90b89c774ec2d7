"""``rubricrl grade``: grade responses against their rubrics with a judge.

Input: JSONL, one HealthBench-style rubric prompt per line (validated like
``rubricrl.data.load_rubric_jsonl``) plus the response(s) to grade::

    {"prompt_id": "p1", "prompt": [{"role": "user", "content": "..."}],
     "rubrics": [{"criterion": "...", "points": 5, "tags": []}, ...],
     "responses": ["first response", "second response"]}       # or "response": "..."

Output: JSONL, each input row with ``judge`` (settings + policy version), ``judge_version``
and ``grades``: per response ``{"response_index", "score", "ungraded", "n_failed",
"items": [{"criterion", "points", "p_met", "met", "failed", ...}]}``. A summary table
goes to stdout, a progress bar to stderr. ``--example PATH`` writes an example input
built from the built-in dataset.

The responses of one row share the conversation, so the logprob judge runs it once.

Checked before grading starts (one stderr line, exit 2): the input's rows, that it has
any, that ``--out`` can be written (before the model loads), ``--device``, and that every
row's longest judge prompt fits the model's context.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rubricrl.cli._common import (
    CliError,
    add_engine_args,
    add_judge_args,
    build_engine,
    build_judge,
    check_context,
    check_device_arg,
    check_engine_args,
    check_judge_args,
    check_out_path,
    console,
    fmt,
    judge_options,
    model_label,
    progress_bar,
    require_rows,
    run_command,
)

__all__ = ["add_grade_parser", "build_example_rows", "load_grade_input", "main_grade"]

DESCRIPTION = "Grade responses against their rubric items with a judge (the policy grades itself by default)."


def add_grade_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``grade`` on an argparse subparsers object; sets ``func`` (returns the exit code)."""
    parser = subparsers.add_parser("grade", help="grade responses against rubrics", description=DESCRIPTION)
    _configure(parser)
    return parser


def main_grade(argv: list[str] | None = None) -> int:
    """``rubricrl grade`` as a function: returns the exit code (argparse usage errors exit 2)."""
    parser = argparse.ArgumentParser(prog="rubricrl grade", description=DESCRIPTION)
    _configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", metavar="INPUT.jsonl", help="rubric prompts with 'response' or 'responses'")
    parser.add_argument("--out", metavar="OUTPUT.jsonl", help="where to write the graded rows")
    parser.add_argument(
        "--example",
        metavar="PATH",
        help="write an example INPUT file built from the built-in dataset to PATH, then exit",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_engine_args(parser)
    add_judge_args(parser)
    parser.set_defaults(func=lambda args: _run(parser, args))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.example is None:
        if args.input is None:
            parser.error("INPUT.jsonl is required (or --example PATH to write one)")
        if args.out is None:
            parser.error("--out OUTPUT.jsonl is required")
    check_judge_args(parser, args)
    return run_command(_grade if args.example is None else _write_example, args)


# --------------------------------------------------------------------------- input


def load_grade_input(path: str | Path) -> list[tuple[Any, list[str], dict]]:
    """Read and validate a grade input file: ``[(RubricPrompt, responses, raw_row), ...]``.

    Rubric fields follow ``load_rubric_jsonl``'s rules; each row needs exactly one of
    ``response`` (a string) or ``responses`` (a non-empty list of strings).

    Raises:
        DataError: ``file:line: problem`` for the first bad row.
    """
    return [(prompt, responses, obj) for prompt, responses, obj, _ in _load_rows(path)]


def _load_rows(path: str | Path) -> list[tuple[Any, list[str], dict, int]]:
    """:func:`load_grade_input` rows with their line numbers."""
    from rubricrl.data.jsonl import DataError, iter_jsonl_objects
    from rubricrl.data.rubrics import load_rubric_jsonl

    prompts = load_rubric_jsonl(path)  # validates rubric fields, prompt ids, positive points
    rows = list(iter_jsonl_objects(path))
    out = []
    for prompt, (line, obj) in zip(prompts, rows):
        has_one, has_many = "response" in obj, "responses" in obj
        if has_one == has_many:
            problem = (
                "has both 'response' and 'responses'"
                if has_one
                else "missing: give 'response' (a string) or 'responses' (a list of strings)"
            )
            raise DataError(path, line, f"prompt_id {prompt.prompt_id!r}: {problem}", "responses")
        if has_one:
            if not isinstance(obj["response"], str):
                got = _kind(obj["response"])
                raise DataError(path, line, f"field 'response': expected a string, got {got}", "response")
            responses = [obj["response"]]
        else:
            value = obj["responses"]
            if not isinstance(value, list) or not value:
                got = "an empty list" if isinstance(value, list) else _kind(value)
                problem = f"field 'responses': expected a non-empty list of strings, got {got}"
                raise DataError(path, line, problem, "responses")
            for i, text in enumerate(value):
                if not isinstance(text, str):
                    problem = f"field 'responses[{i}]': expected a string, got {_kind(text)}"
                    raise DataError(path, line, problem, f"responses[{i}]")
            responses = list(value)
        out.append((prompt, responses, obj, line))
    return out


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "a number", float: "a number", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- grading


def _grade(args: argparse.Namespace) -> int:
    from rubricrl.data.jsonl import write_jsonl
    from rubricrl.judges import GradeRequest

    lined = _load_rows(args.input)
    require_rows(lined, args.input, "rows to grade")
    check_out_path(args.out, args.input)  # before the model loads, not after all the grading
    check_device_arg(args)
    check_engine_args(args)
    judge = build_judge(args)
    engine = build_engine(args)
    check_context(
        judge, engine, ((f"{args.input}:{line}: prompt_id {p.prompt_id!r}", p.prompt, r, p.rubrics) for p, r, _, line in lined)
    )
    rows = [(prompt, responses, raw) for prompt, responses, raw, _ in lined]
    settings = {"name": args.judge, **judge_options(args), "model": model_label(args)}

    out_rows: list[dict] = []
    stats = {"responses": 0, "ungraded": 0, "items": 0, "failed": 0, "scores": [], "mass": []}
    start = time.perf_counter()
    with progress_bar(len(rows), "grading", enabled=args.progress) as advance:
        for prompt, responses, raw in rows:
            requests = [GradeRequest(prompt.prompt, text, prompt.rubrics, group_id=prompt.prompt_id) for text in responses]
            results = judge.grade(engine, requests)
            out_rows.append(_output_row(raw, prompt, results, settings, stats))
            advance(1)
    elapsed = time.perf_counter() - start
    write_jsonl(args.out, out_rows)
    _print_summary(args, settings, len(rows), stats, elapsed)
    return 0


def _output_row(raw: dict, prompt, results, settings: dict, stats: dict) -> dict:
    grades = []
    for index, result in enumerate(results):
        items = []
        for k, item in enumerate(prompt.rubrics):
            entry = {
                "criterion": item.criterion,
                "points": item.to_dict()["points"],
                "p_met": result.item_probs[k],
                "met": result.item_met[k],
                "failed": result.item_met[k] is None,
            }
            if result.verdict_mass:
                entry["verdict_mass"] = result.verdict_mass[k]
                if result.verdict_mass[k] is not None:  # None: a rule-checked item
                    stats["mass"].append(result.verdict_mass[k])
            if result.item_raw:
                entry["judge_output"] = result.item_raw[k]
                entry["attempts"] = result.item_attempts[k]
            items.append(entry)
        grades.append(
            {
                "response_index": index,
                "score": result.score,
                "ungraded": result.ungraded,
                "n_failed": result.n_failed,
                "items": items,
            }
        )
        stats["responses"] += 1
        stats["items"] += len(items)
        stats["failed"] += result.n_failed
        if result.ungraded:
            stats["ungraded"] += 1
        else:
            stats["scores"].append(result.score)
    version = results[0].judge_version if results else None
    return {**raw, "judge": {**settings, "version": version}, "judge_version": version, "grades": grades}


def _print_summary(args, settings: dict, n_rows: int, stats: dict, elapsed: float) -> None:
    from rich.table import Table

    scores, mass = stats["scores"], stats["mass"]
    table = Table(title="rubricrl grade", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    detail = f"{settings['mode']}, T={args.temperature}" if args.judge == "logprob" else f"T={args.temperature}"
    judge = f"{args.judge} ({detail})"
    table.add_row("judge", judge)
    table.add_row("model", settings["model"])
    table.add_row("rows (prompts)", str(n_rows))
    table.add_row("responses", str(stats["responses"]))
    table.add_row("mean score (graded responses)", fmt(sum(scores) / len(scores) if scores else None))
    table.add_row("ungraded responses", str(stats["ungraded"]))
    table.add_row("items judged", str(stats["items"]))
    table.add_row("failed items", str(stats["failed"]))
    if mass:
        table.add_row("mean verdict mass", fmt(sum(mass) / len(mass)))
    table.add_row("time (s)", f"{elapsed:.2f}")
    table.add_row("judgments / s", f"{stats['items'] / elapsed:.1f}" if elapsed > 0 else "-")
    table.add_row("output", str(args.out))
    console().print(table)


# --------------------------------------------------------------------------- example


def build_example_rows(max_rows: int | None = None) -> list[dict]:
    """Grade-input rows from the built-in data: rubric prompts with the completions that the
    built-in meta-evaluation set has for the same conversation (and the ideal completion)."""
    from rubricrl.data.builtin import builtin_meta_eval, builtin_rubric_prompts

    completions: dict[str, list[str]] = {}
    for row in builtin_meta_eval():
        seen = completions.setdefault(repr(row.prompt), [])
        if row.completion not in seen:
            seen.append(row.completion)
    rows = []
    for prompt in builtin_rubric_prompts():
        responses = list(completions.get(repr(prompt.prompt), []))
        ideal = (prompt.ideal_completions or {}).get("ideal_completion")
        if isinstance(ideal, str) and ideal not in responses:
            responses.append(ideal)
        if not responses:
            continue
        rows.append({**prompt.to_dict(), "responses": responses[:4]})
        if max_rows is not None and len(rows) >= max_rows:
            break
    return rows


def _write_example(args: argparse.Namespace) -> int:
    from rubricrl.data.jsonl import write_jsonl

    rows = build_example_rows()
    write_jsonl(args.example, rows)
    n = sum(len(r["responses"]) for r in rows)
    console(stderr=True).print(f"wrote {len(rows)} rows ({n} responses) to {args.example}; grade them with:")
    console(stderr=True).print(f"  rubricrl grade {args.example} --out graded.jsonl")
    return 0
