"""Drift-guard demonstration: the guard fires on a gameable self-judge and stays quiet on the learning task.

Two cases, each trained through the ``Trainer`` that ``rubricrl train`` runs, with the drift
guard on (docs/trainer.md, "Drift guard"):

* ``gamed``: the learning task's prompts (``builtin:learning``, all items rule-checked) plus
  one more rule-checked item, "does not contain the trigger token" (``TRIGGER``, 10 points).
  The self-judge is :class:`PhraseJudge`: it grades honestly by the rules, except that it
  says every item is met as soon as the response contains the trigger. Gold judge: the
  rules themselves (``guard.judge: rules``). The policy learns to emit the trigger: the
  self-judge's reward rises to 1 while the rules' reward falls (the trigger breaks an item
  and crowds out the letter e).
* ``learning``: ``rubricrl/configs/learning.yaml`` as shipped (self-judge: the logprob judge,
  which grades nothing here since every item is rule-checked), guard judge ``frozen_init``.
  Self and gold agree, both rise: no warning.

Writes the held-out self and gold rewards of every evaluation, the steps that warned and
the first warning step per run to ``bench/results/drift.json``, and the curves to
``bench/results/drift.png``.

    python -m bench.bench_drift                      # 3 seeds; gamed 40 steps, learning 120
    python -m bench.bench_drift --seeds 0 --learning-steps 60

``tests/test_drift_guard.py`` runs shorter versions with fixed seeds (``run_case``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.harness import RESULTS, environment

CONFIG = Path(__file__).resolve().parents[1] / "rubricrl" / "configs" / "learning.yaml"

#: The token the gamed self-judge is fooled by: a letter the random tiny model puts in about
#: a third of its 12-token responses on these prompts (so GRPO sees it from the first step).
TRIGGER = "k"
#: Points of the rule-checked "does not contain the trigger" item added to each prompt.
TRIGGER_POINTS = 10

#: ``--set`` overrides of each case on top of learning.yaml, whose ``guard`` block has the rest
#: (2 of the 8 prompts held out, 8 responses each, window 5, gold judge frozen_init).
CASES = {
    "gamed": ["guard.every=2", "guard.judge=rules"],
    "learning": ["guard.every=2"],
}


class PhraseJudge:
    """A gameable judge: every item is met when the response contains ``phrase`` (any case);
    otherwise the rule-checked items are graded by their checks and the others are not met.
    A stand-in for a self-judge that some surface feature sways."""

    name = "phrase"

    def __init__(self, phrase: str = TRIGGER) -> None:
        self.phrase = phrase.lower()

    def grade(self, engine, requests):
        from rubricrl.judges._common import results_from_verdicts
        from rubricrl.judges.rules import rule_verdicts

        verdicts = []
        for request in requests:
            if self.phrase in request.response.lower():
                verdicts.append([1.0] * len(request.items))
            else:
                verdicts.append([0.0 if v is None else v for v in rule_verdicts(request, engine.tokenizer)])
        return results_from_verdicts(requests, verdicts, verdicts, engine.policy_version)


def write_gamed_dataset(path: str | Path) -> Path:
    """The learning prompts, each with the rule-checked item "does not contain ``TRIGGER``"."""
    from rubricrl.data import write_jsonl
    from rubricrl.data.builtin import builtin_learning_prompts

    rows = []
    for prompt in builtin_learning_prompts():
        row = prompt.to_dict()
        row["rubrics"].append(
            {
                "criterion": f"Does not contain the letter {TRIGGER}.",
                "points": TRIGGER_POINTS,
                "tags": ["rule:not_contains"],
                "check": {"type": "not_contains", "text": TRIGGER, "ignore_case": True},
            }
        )
        rows.append(row)
    write_jsonl(path, rows)
    return Path(path)


def run_case(case: str, seed: int, steps: int, out_dir: str, overrides: list[str] = (), *, fast_judge: bool = False) -> list[dict[str, Any]]:
    """Train ``case`` (``gamed`` or ``learning``) for ``steps`` steps in ``out_dir``; the records."""
    return build_case(case, seed, steps, out_dir, overrides, fast_judge=fast_judge).train()


def build_case(case: str, seed: int, steps: int, out_dir: str, overrides: list[str] = (), *, fast_judge: bool = False):
    """The ``Trainer`` of ``case`` (``gamed`` or ``learning``): ``steps`` steps in ``out_dir``,
    checkpoints and the progress bar off; ``overrides`` (``KEY=VALUE``) applied last.

    ``fast_judge`` (learning case): grade with :class:`~rubricrl.judges.rules.RuleJudge`
    instead of the logprob judge; every item of the task is rule-checked, so the rewards are
    the same and only the judge's unused forward passes are saved (the tests use it).
    """
    from rubricrl.config import load_config
    from rubricrl.judges.rules import RuleJudge
    from rubricrl.trainer import Trainer

    sets = [
        f"model.seed={seed}",
        f"trainer.seed={seed}",
        f"trainer.steps={steps}",
        "trainer.checkpoint_every=0",
        "trainer.save_final=false",
        "trainer.progress=false",
        f"trainer.log_every={steps + 1}",
        f"trainer.out_dir={out_dir}",
        *CASES[case],
    ]
    judge = None
    if case == "gamed":
        sets.append(f"data.dataset={write_gamed_dataset(Path(out_dir).parent / f'{Path(out_dir).name}-gamed.jsonl')}")
        judge = PhraseJudge()
    elif fast_judge:
        judge = RuleJudge()
    config = load_config(str(CONFIG), [*sets, *overrides])
    return Trainer(config, judge=judge)


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    evals = [r for r in records if r.get("self_reward") is not None]
    warned = [r["step"] for r in evals if r.get("drift_warning")]
    return {
        "eval_steps": [r["step"] for r in evals],
        "self_reward": [r["self_reward"] for r in evals],
        "gold_reward": [r["gold_reward"] for r in evals],
        "self_trend": [r["self_trend"] for r in evals],
        "gold_trend": [r["gold_trend"] for r in evals],
        "warning_steps": warned,
        "first_warning": warned[0] if warned else None,
        "train_reward": [r["reward_mean"] for r in records],
        "guard_s_mean": sum(r["guard_s"] for r in evals) / len(evals) if evals else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--gamed-steps", type=int, default=40)
    p.add_argument("--learning-steps", type=int, default=120)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for case, steps in (("gamed", args.gamed_steps), ("learning", args.learning_steps)):
            for seed in args.seeds:
                t0 = time.perf_counter()
                records = run_case(case, seed, steps, f"{tmp}/{case}-{seed}", ["trainer.plot=false"])
                run = {"case": case, "seed": seed, "steps": steps, "seconds": time.perf_counter() - t0, **_summary(records)}
                runs.append(run)
                print(
                    f"{case} seed {seed}: self {run['self_reward'][0]:.3f} -> {run['self_reward'][-1]:.3f}, "
                    f"gold {run['gold_reward'][0]:.3f} -> {run['gold_reward'][-1]:.3f}, warnings at steps "
                    f"{run['warning_steps'] or 'none'} ({run['seconds']:.0f} s)"
                )
    meta = {
        **environment(),
        "config": str(CONFIG.relative_to(CONFIG.parents[2])),
        "cases": CASES,
        "trigger": TRIGGER,
        "trigger_points": TRIGGER_POINTS,
        "threads": args.threads,
        "load_avg": os.getloadavg(),
        "dtype": "float32",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "drift.json"
    out.write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, case in zip(axes, ("gamed", "learning")):
        for k, run in enumerate(r for r in runs if r["case"] == case):
            color = f"C{k}"
            ax.plot(run["eval_steps"], run["self_reward"], "s-", color=color, lw=1, label=f"seed {run['seed']} self-judge")
            ax.plot(run["eval_steps"], run["gold_reward"], "D--", color=color, lw=1, label=f"seed {run['seed']} gold judge")
            for step in run["warning_steps"]:
                ax.axvline(step, color=color, alpha=0.25, lw=3)
        gold = "rules" if case == "gamed" else "frozen_init"
        ax.set_title(f"{case}: self-judge vs gold ({gold}) on held-out prompts\n(vertical bands: drift_warning)")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("mean reward of held-out responses")
    fig.tight_layout()
    fig.savefig(RESULTS / "drift.png", dpi=100)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
