"""Training-step time breakdown: self-grading with the generate judge vs the prefix-shared logprob judge.

    python -m bench.bench_step                    # both judges, 1 warm-up + 3 measured steps each
    python -m bench.bench_step --judges logprob --steps 5 --threads 2
    python -m bench.bench_step --lengths 48 256   # also longer responses (logprob judge only)

Setup (CPU, the embedded tiny model): 4 builtin prompts with >= 11 rubric items each,
4 responses per prompt (max 48 new tokens, T = 1.0), so ~176 (response, item) judgments
per step; the actor update is one AdamW step on the 16 responses. Each judge runs in a
fresh trainer with the same seed, so both see the same first batch. Reported: the median
over the measured steps of rollout / grading / update / whole-step seconds and of the
grading share of the step.

The generate judge writes up to ``--judge-tokens`` tokens per judgment with one attempt:
the tiny model's text is noise, so no retry would ever parse, and retries would only
multiply its cost; with a trained model most judgments parse on the first attempt. It is
measured at the first of ``--lengths`` only (it is by far the slowest).

Writes ``bench/results/step.json`` and ``bench/results/step.md`` (a markdown table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench import harness
from rubricrl.config import config_from_dict
from rubricrl.trainer import Trainer

KEYS = ("rollout_s", "grading_s", "update_s", "step_s", "grading_share")


def bench_judge(judge: str, max_new_tokens: int, args: argparse.Namespace, out_dir: Path) -> dict:
    reward: dict = {"judge": judge, "grading_temperature": 1.0}
    if judge == "generate":
        reward["judge_options"] = {"max_new_tokens": args.judge_tokens, "max_attempts": 1}
    cfg = config_from_dict(
        {
            "model": {"device": "cpu"},
            "data": {"prompts_per_step": 4, "min_items": 11},
            "rollout": {"n": 4, "max_new_tokens": max_new_tokens},
            "reward": reward,
            "optim": {"lr": 1e-4, "micro_batch_size": 8, "weight_decay": 0.0},
            "trainer": {
                "steps": args.steps + 1,
                "out_dir": str(out_dir / f"{judge}-{max_new_tokens}"),
                "progress": False,
                "plot": False,
                "save_final": False,
            },
        }
    ).validate()
    trainer = Trainer(cfg)
    records = []
    try:
        trainer.start()
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            records.append(trainer.step())
            print(f"  {judge} (max_new_tokens {max_new_tokens}) step {records[-1]['step']}: {time.perf_counter() - t0:.2f}s", flush=True)
    finally:
        trainer.close()
    measured = records[1:]  # the first step warms up allocators and caches
    prompts = trainer.schedule.prompts_for(2)
    return {
        "judge": judge,
        "max_new_tokens": max_new_tokens,
        "median": {k: statistics.median(r[k] for r in measured) for k in KEYS},
        "steps": [{k: r[k] for k in ("step", *KEYS, "reward_mean", "response_len_mean", "failed_judgments", "ungraded", "judged_items")} for r in records],
        "items_per_prompt": [len(p.items) for p in prompts],
        "response_len_mean": statistics.median(r["response_len_mean"] for r in measured),
    }


def _table(results: list[dict]) -> str:
    lines = [
        "| judge | max new tokens | response tokens | rollout s | grading s | update s | step s | grading share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r["median"]
        lines.append(
            f"| {r['judge']} | {r['max_new_tokens']} | {r['response_len_mean']:.1f} | {m['rollout_s']:.2f} | {m['grading_s']:.2f} | {m['update_s']:.2f} | "
            f"{m['step_s']:.2f} | {m['grading_share']:.1%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judges", nargs="+", default=["generate", "logprob"], choices=["generate", "logprob"])
    parser.add_argument("--steps", type=int, default=3, help="measured steps after one warm-up step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--lengths", type=int, nargs="+", default=[48], help="rollout max_new_tokens values")
    parser.add_argument("--judge-tokens", type=int, default=64, help="generate judge: max new tokens per judgment")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    env = harness.environment()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for length in args.lengths:
            for judge in args.judges:
                if judge == "generate" and length != args.lengths[0]:
                    continue
                results.append(bench_judge(judge, length, args, Path(tmp)))
    env["loadavg_1m_end"] = __import__("os").getloadavg()[0]
    from rubricrl.models import TINY_CONFIG

    setup = {
        "model": "embedded tiny Qwen3-style model (fp32)",
        "hidden_size": TINY_CONFIG["hidden_size"],
        "layers": TINY_CONFIG["num_hidden_layers"],
        "vocab": TINY_CONFIG["vocab_size"],
        "prompts_per_step": 4,
        "responses_per_prompt": 4,
        "max_new_tokens": args.lengths,
        "items_per_prompt_step2": results[0]["items_per_prompt"],
        "generate_judge": {"max_new_tokens": args.judge_tokens, "max_attempts": 1},
        "measured_steps": args.steps,
        "warmup_steps": 1,
    }
    table = _table(results)
    out = {"environment": env, "setup": setup, "results": results, "table": table}
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    (harness.RESULTS / "step.json").write_text(json.dumps(out, indent=2) + "\n")
    md = (
        "## Training-step breakdown (CPU, tiny model, 4 prompts x 4 responses x >= 11 items)\n\n"
        f"torch {env['versions'].get('torch')}, transformers {env['versions'].get('transformers')}, "
        f"{env['threads']} thread(s), {env['cpu']}, "
        f"load average {env['loadavg_1m']:.1f} -> {env['loadavg_1m_end']:.1f} "
        f"(a shared machine: indicative figures); vocabulary {setup['vocab']} (the built-in byte-level BPE); "
        f"median of {args.steps} steps after 1 warm-up step. Response tokens: the mean sampled "
        "length; the generate judge writes up to "
        f"{args.judge_tokens} tokens per judgment with 1 attempt.\n\n" + table + "\n"
    )
    (harness.RESULTS / "step.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
