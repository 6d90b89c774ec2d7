"""Per-step metrics: the JSONL log, the end-of-run plot and the step-time table.

Every step appends one JSON object to ``out_dir/metrics.jsonl`` (keys in
:data:`METRIC_KEYS`; a value that does not apply, e.g. ``clipfrac`` of a step with no
update, is ``null``; a non-finite float is the string ``"nan"``, ``"inf"`` or ``"-inf"``,
so a NaN loss never reads like a missing one, and :meth:`MetricsLog.read` turns them back
into floats). At the end the trainer plots ``metrics.png`` and prints a rich table of the
step-time breakdown.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rubricrl.trainer.faults import armed, fault_point

__all__ = [
    "METRIC_KEYS",
    "NONFINITE",
    "MetricsError",
    "MetricsLog",
    "plot_metrics",
    "reward_panel",
    "step_time_table",
    "summary_line",
]

log = logging.getLogger(__name__)

#: Keys of every metrics record, with their meaning (docs/trainer.md has the same table).
METRIC_KEYS: dict[str, str] = {
    "step": "training step (1-based)",
    "policy_version": "policy version after the step's update",
    "sample_version": "policy version that sampled the batch",
    "judge_version": "policy version that graded the batch",
    "staleness": "versions between sampling and update (<= pipeline.eta)",
    "behaviour_version_min": "oldest policy version that sampled a group of the step",
    "behaviour_version_max": "newest policy version that sampled a group of the step",
    "staleness_mean": "mean over the step's groups of versions between sampling and update",
    "stale_dropped_groups": "groups left out for being more than pipeline.eta versions old",
    "rollout_s": "seconds sampling the batch (on the producer / rollout thread when overlapped)",
    "wait_s": "seconds the trainer waited for the batch",
    "grading_s": "seconds computing rewards (self-grading; on the grading thread when streaming)",
    "update_s": "seconds in the actor update",
    "step_s": "wall seconds of the whole step",
    "grading_share": "grading_s / step_s (streaming: grading_s / (rollout_s + grading_s + update_s))",
    "reward_mean": "mean score of the graded responses",
    "reward_std": "std of the graded responses' scores",
    "response_len_mean": "mean response length in tokens (stop token included)",
    "tokens_per_s": "response tokens sampled per second of step time",
    "loss": "GRPO loss (mean over optimizer steps)",
    "clipfrac": "share of valid tokens on the clipped branch",
    "clipfrac_lower": "share of valid tokens on the dual-clip branch",
    "approx_kl": "mean(old - new log-prob) over valid tokens",
    "is_weight_mean": "loss.proximal=recompute: mean pi_old / pi_behaviour over valid tokens",
    "is_clipped_frac": "loss.proximal=recompute: share of valid tokens whose importance weight was truncated or masked",
    "entropy": "token entropy, aggregated like the loss",
    "kl": "KL to the reference policy, aggregated like the loss (null when loss.kl_coef = 0)",
    "grad_norm": "global gradient norm before clipping",
    "lr": "learning rate",
    "nonfinite_skipped": "optimizer steps skipped for a non-finite loss, gradient or weight",
    "responses": "responses sampled",
    "trained_responses": "responses in the update",
    "trained_tokens": "response tokens in the update",
    "ungraded": "responses with no usable judgment",
    "failed_judgments": "rubric items whose judgment failed",
    "empty_responses": "responses with no text (the stop token only)",
    "truncated_responses": "responses cut at rollout.max_new_tokens",
    "dropped_groups": "groups left out of the update (all-equal scores or filtered)",
    # the drift guard (rubricrl/trainer/drift.py): null except on its evaluation steps
    "self_reward": "drift guard: the self-judge's mean reward on held-out responses",
    "gold_reward": "drift guard: the gold judge's mean reward on the same held-out responses",
    "self_trend": "drift guard: least-squares change of self_reward over the last guard.window evaluations",
    "gold_trend": "drift guard: least-squares change of gold_reward over the last guard.window evaluations",
    "drift_warning": "drift guard: 1 when self_trend >= guard.min_self_rise and gold_trend <= -guard.min_gold_fall, else 0",
    "guard_ungraded": "drift guard: held-out responses left out (ungraded by either judge)",
    "guard_s": "drift guard: seconds of the evaluation (not in step_s)",
}


#: How non-finite floats are written in metrics.jsonl (JSON has no NaN/Infinity).
NONFINITE: dict[str, float] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetricsError(ValueError):
    """metrics.jsonl cannot be read; the message names the file and line."""


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value in NONFINITE:
        return NONFINITE[value]
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _line(record: dict[str, Any]) -> str:
    return json.dumps(_encode(record), allow_nan=False) + "\n"


class MetricsLog:
    """Appends records to ``path`` (one JSON object per line), flushing every write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run rewrites them), and a torn
        last line; the file is replaced atomically, so a kill here loses nothing."""
        if not self.path.exists():
            return
        keep = [r for r in self.read() if r["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            fh.write("".join(_line(r) for r in keep))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def append(self, record: dict[str, Any]) -> None:
        line = _line(record)
        with self.path.open("a", encoding="utf-8") as fh:
            if armed("metrics"):  # test hook: a kill between the halves leaves a torn line
                half = len(line) // 2
                fh.write(line[:half])
                fh.flush()
                fault_point("metrics")
                line = line[half:]
            fh.write(line)

    def read(self, *, warn: bool = True) -> list[dict[str, Any]]:
        """The records, non-finite strings back to floats.

        An unparsable last line is a write that was cut short (the run was killed while
        writing it): it is dropped, with a warning naming the file and line if ``warn``.
        Any other bad line is an error.

        Raises:
            MetricsError: a line before the last is not a JSON object with an integer ``step``.
        """
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
        records = []
        for k, (i, line) in enumerate(numbered):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if k == len(numbered) - 1:
                    if warn:
                        log.warning("%s:%d: dropped a torn last line (the run stopped while writing it)", self.path, i)
                    continue
                raise MetricsError(f"{self.path}:{i}: not a JSON line ({err.msg})") from None
            if not isinstance(record, dict) or type(record.get("step")) is not int:
                raise MetricsError(f"{self.path}:{i}: not a metrics record (a JSON object with an integer 'step')")
            records.append(_decode(record))
        return records


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_line(r: dict[str, Any]) -> str:
    """One-line summary of a step for the console."""
    return (
        f"step {r['step']}: reward {_fmt(r.get('reward_mean'), '.3f')}±{_fmt(r.get('reward_std'), '.3f')} "
        f"len {_fmt(r.get('response_len_mean'), '.1f')} clipfrac {_fmt(r.get('clipfrac'), '.3f')} "
        f"kl {_fmt(r.get('approx_kl'), '.2e')} | {_fmt(r.get('step_s'), '.2f')}s "
        f"(rollout {_fmt(r.get('rollout_s'), '.2f')}, grading {_fmt(r.get('grading_s'), '.2f')}, "
        f"update {_fmt(r.get('update_s'), '.2f')}) grading {_fmt(r.get('grading_share'), '.0%')}"
        + (f" | ungraded {r['ungraded']}" if r.get("ungraded") else "")
        + (f" failed {r['failed_judgments']}" if r.get("failed_judgments") else "")
        + (
            f" | held-out self {_fmt(r['self_reward'], '.3f')} gold {_fmt(r.get('gold_reward'), '.3f')}"
            if r.get("self_reward") is not None
            else ""
        )
        + (" DRIFT: self-judge up, gold judge down" if r.get("drift_warning") else "")
    )


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if v is not None:
            xs.append(r["step"])
            ys.append(float(v))
    return xs, ys


def reward_panel(ax, records: Sequence[dict[str, Any]]) -> None:
    """The reward panel of ``metrics.png``: the training reward (mean ± std) and, when the
    drift guard ran, its held-out ``self_reward`` and ``gold_reward`` with the steps that
    raised ``drift_warning`` shaded."""
    xs, mean = _series(records, "reward_mean")
    std = [float(r.get("reward_std") or 0.0) for r in records if r.get("reward_mean") is not None]
    ax.plot(xs, mean, marker="o", label="reward mean")
    ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2, label="± std")
    for key, label, style in (("self_reward", "self-judge (held-out)", "s-"), ("gold_reward", "gold judge (held-out)", "D-")):
        gx, gy = _series(records, key)
        if gx:
            ax.plot(gx, gy, style, label=label)
    warned = [r["step"] for r in records if r.get("drift_warning")]
    for k, step in enumerate(warned):
        ax.axvspan(step - 0.5, step + 0.5, color="tab:red", alpha=0.25, label="drift warning" if k == 0 else None)
    ax.set_title("reward")
    ax.set_xlabel("step")
    ax.legend(loc="best")


def plot_metrics(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Four panels: reward (mean ± std; the drift guard's held-out self and gold rewards), stacked step-time breakdown, clipfrac / approx_kl,
    grading share. Written with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    reward_panel(axes[0, 0], records)

    ax = axes[0, 1]
    steps = [r["step"] for r in records]
    bottom = [0.0] * len(records)
    for key, label in (("wait_s", "rollout (wait)"), ("grading_s", "grading"), ("update_s", "update")):
        vals = [float(r.get(key) or 0.0) for r in records]
        ax.bar(steps, vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    other = [max(0.0, float(r.get("step_s") or 0.0) - b) for r, b in zip(records, bottom)]
    ax.bar(steps, other, bottom=bottom, label="other")
    ax.set_title("step time (s)")
    ax.set_xlabel("step")
    ax.legend(loc="best")

    ax = axes[1, 0]
    xs, cf = _series(records, "clipfrac")
    ax.plot(xs, cf, marker="o", color="tab:blue", label="clipfrac")
    ax.set_ylabel("clipfrac")
    ax.set_xlabel("step")
    twin = ax.twinx()
    xs, kl = _series(records, "approx_kl")
    twin.plot(xs, kl, marker="x", color="tab:red", label="approx_kl")
    twin.set_ylabel("approx_kl")
    ax.set_title("clipfrac / approx_kl")

    ax = axes[1, 1]
    xs, share = _series(records, "grading_share")
    ax.plot(xs, [100 * s for s in share], marker="o")
    ax.set_ylim(0, 100)
    ax.set_title("grading share of step time (%)")
    ax.set_xlabel("step")

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def step_time_table(records: Sequence[dict[str, Any]], *, last: int = 20):
    """A rich Table of the step-time breakdown (the last ``last`` steps, then the median)."""
    from rich.table import Table

    cols = ("rollout_s", "wait_s", "grading_s", "update_s", "step_s")
    table = Table(title="step time (seconds)")
    table.add_column("step", justify="right")
    for c in ("rollout", "wait", "grading", "update", "step", "grading share", "reward"):
        table.add_column(c, justify="right")
    for r in list(records)[-last:]:
        table.add_row(
            str(r["step"]),
            *(_fmt(r.get(c), ".3f") for c in cols),
            _fmt(r.get("grading_share"), ".1%"),
            _fmt(r.get("reward_mean"), ".3f"),
        )
    if records:
        med = {c: statistics.median([float(r.get(c) or 0.0) for r in records]) for c in cols}
        share = med["grading_s"] / med["step_s"] if med["step_s"] else None
        rewards = [r["reward_mean"] for r in records if r.get("reward_mean") is not None]
        table.add_section()
        table.add_row(
            "median",
            *(f"{med[c]:.3f}" for c in cols),
            _fmt(share, ".1%"),
            _fmt(statistics.median(rewards) if rewards else None, ".3f"),
        )
    return table
