"""Learning benchmark: does ``rubricrl train`` make the embedded tiny model climb an exact reward?

Trains with the shipped ``rubricrl/configs/learning.yaml`` (prompts whose rubric items are
all rule-checked: docs/rubrics.md) through the ``Trainer`` that ``rubricrl train`` runs, for
several seeds, and writes the reward of every step plus each run's first-10 and last-10
mean rewards and their seed-to-seed spread to ``bench/results/learning.json``, and the curves
to ``bench/results/learning.png``.

    python -m bench.bench_learning                       # 3 seeds x 120 steps
    python -m bench.bench_learning --jobs 3 --threads 1  # the 3 seeds in parallel processes
    python -m bench.bench_learning --seeds 0 1 --steps 100 --set optim.lr=3e-3

``tests/test_learning.py`` runs a shorter version with one fixed seed (``run_learning``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import RESULTS, environment

CONFIG = Path(__file__).resolve().parents[1] / "rubricrl" / "configs" / "learning.yaml"


def run_learning(seed: int, steps: int, overrides: list[str] = (), out_dir: str | None = None) -> list[float]:
    """Train ``steps`` steps of the learning config with ``seed``; the mean reward per step.

    ``overrides`` are ``--set`` style ``KEY=VALUE`` strings applied after the seed and steps.
    Checkpoints, plots and the progress bar are off; metrics go to a temporary directory
    unless ``out_dir`` is given.
    """
    from rubricrl.config import load_config
    from rubricrl.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            str(CONFIG),
            [
                f"model.seed={seed}",
                f"trainer.seed={seed}",
                f"trainer.steps={steps}",
                "trainer.checkpoint_every=0",
                "trainer.save_final=false",
                "trainer.progress=false",
                "trainer.plot=false",
                f"trainer.log_every={steps + 1}",
                f"trainer.out_dir={out_dir or tmp}",
                *overrides,
            ],
        )
        records = Trainer(config).train()
    rewards = [r["reward_mean"] for r in records]
    if any(r is None for r in rewards):
        raise RuntimeError(f"seed {seed}: a step had no graded response: {rewards}")
    return [float(r) for r in rewards]


def summarize(rewards: list[float], window: int = 10) -> dict:
    first, last = statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])
    return {"first10": first, "last10": last, "gain": last - first}


def _one_run(seed: int, steps: int, overrides: list[str], threads: int) -> dict:
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rewards = run_learning(seed, steps, overrides)
    return {"seed": seed, "seconds": time.perf_counter() - t0, **summarize(rewards), "rewards": rewards}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", default="learning", help="results file stem under bench/results/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs) as pool:
            runs = list(pool.map(_one_run, args.seeds, [args.steps] * len(args.seeds), [args.overrides] * len(args.seeds), [args.threads] * len(args.seeds)))
    else:
        runs = [_one_run(seed, args.steps, args.overrides, args.threads) for seed in args.seeds]
    for run in runs:
        print(f"seed {run['seed']}: first10 {run['first10']:.3f} last10 {run['last10']:.3f} gain {run['gain']:+.3f} ({run['seconds']:.0f} s)")

    def spread(key: str) -> dict:
        values = [r[key] for r in runs]
        return {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values),
            "max": max(values),
        }

    summary = {k: spread(k) for k in ("first10", "last10", "gain")}
    meta = {
        **environment(),
        "config": str(CONFIG.relative_to(CONFIG.parents[2])),
        "overrides": args.overrides,
        "steps": args.steps,
        "threads": args.threads,
        "jobs": args.jobs,
        "load_avg": os.getloadavg(),
        "dtype": "float32",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        ax.plot(range(1, len(run["rewards"]) + 1), run["rewards"], lw=1, label=f"seed {run['seed']} ({run['first10']:.2f} -> {run['last10']:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("mean rule-checked rubric reward")
    ax.set_title("tiny model on builtin:learning (configs/learning.yaml)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=100)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
