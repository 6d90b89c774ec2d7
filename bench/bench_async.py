"""Synchronous vs streaming asynchronous training, side by side, and a simulated projection.

    python -m bench.bench_async                 # HF and vLLM engines, eta 0 / 1 / 2 / 4, then the simulation
    python -m bench.bench_async --quick         # a smoke run (seconds): short responses, 2 steps
    python -m bench.bench_async --engines hf --steps 6 --max-new-tokens 1024

Measured (CPU, the embedded tiny model, ``--threads`` torch threads, see "Threads"):
``--prompts`` builtin rubric prompts (>= 11 items each) x 4 responses per step, self-graded
by the prefix-shared logprob judge, one AdamW update per step; ``pipeline.eta = 0`` (the
synchronous trainer) against ``eta >= 1`` (``--etas``: the streaming pipeline) on the
same cores. Each variant runs in a fresh process (the vLLM ones with ``--vllm-python``, one
engine per process) with the same seed.

Long-tailed response lengths. The tiny random model almost never emits its stop token,
so every response would run to ``max_new_tokens``. Instead each prompt gets its own cap
(``Rollout.max_new_tokens_for``): ``cap = lo + (hi - lo) * q^3`` with ``q`` uniform in
[0, 1) from a hash of the prompt id, ``lo = hi / 32``: most responses are short, a few run
to ``hi``; the mean cap is about ``hi / 4``. A cap acts exactly like a stop token at that
position: HF's generate runs a batch until its longest row is done (the rows already
finished ride along as padding, which is the cost of a long tail there), vLLM drops a
finished request from its batch.

Throughput: steps 2 .. N of each run (step 1 includes start-up), wall time on the trainer
thread from the end of step 1 to the end of step N; steps/s and generated (trained-step)
response tokens/s. Per stage: busy seconds (rollout, grading, update) and idle = wall -
busy; the grading share is grading / (rollout + grading + update) busy time.

The simulation (clearly a model, not a measurement) takes per-token stage costs fitted on
the measured runs and projects the source setting (32 prompts x 4 responses x ~11 rubric
items, 2k-token prompts, responses up to 6k tokens, 8 GPUs) for sync, async
(disaggregated, like AReaL / verl fully-async) and async-colocated (rubricrl); see
``simulate``.

Threads. ``--threads`` is the process's torch thread count (default 2, the cores of the
reference machine). The synchronous trainer runs every stage on all of them; the
streaming pipeline splits them between the rollout and the learner (grading and updates
taking turns): ``pipeline.rollout_threads`` (``--rollout-threads``, 0 = half, rounded up)
and the rest, so 2 threads are 1 + 1. ``--behaviour-version`` is the streaming runs'
``pipeline.behaviour_version`` (default ``newest``). On an oversubscribed machine use ``--threads 1``: with 2 OpenMP
threads every op waits for both threads to be scheduled (measured on a 2-core machine at
load average ~20: a tiny-model forward took 3.7 s with 2 threads vs 0.22 s with 1), which
slows the single-threaded synchronous trainer far more than the streaming one. Note also
that on a shared machine the streaming variants, with three runnable threads, get a
larger share of the contended cores than the synchronous one: ratios from a loaded
machine overstate the gain; the load average is recorded per row.

Writes ``bench/results/async.json``, ``async.md`` and ``async.png`` (``--quick`` writes
``async_quick.*``, no plot, all variants in one process). The machine may be shared: the load average (before/after)
and the thread count are recorded with every figure.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VLLM_PYTHON = sys.executable  # the project's environment has vLLM after make test


def length_cap(prompt_id: str, hi: int) -> int:
    """The long-tailed per-prompt cap (module doc): ``lo + (hi - lo) * q^3``."""
    lo = max(1, hi // 32)
    q = (zlib.crc32(prompt_id.encode()) % 10_000) / 10_000
    return int(lo + (hi - lo) * q**3)


# ---------------------------------------------------------------------------------- variants


def run_variant(engine: str, eta: int, args: argparse.Namespace) -> dict:
    """One training run in this process; returns its row."""
    import torch

    torch.set_num_threads(args.threads)
    from rubricrl.config import config_from_dict
    from rubricrl.trainer import Trainer

    load_before = os.getloadavg()
    out = Path(tempfile.mkdtemp(prefix="bench-async-"))
    cfg = config_from_dict(
        {
            "model": {"device": "cpu"},
            "engine": {"backend": engine},
            "data": {"prompts_per_step": args.prompts, "min_items": 11},
            "rollout": {"n": 4, "max_new_tokens": args.max_new_tokens},
            "reward": {"judge": "logprob"},
            "optim": {"lr": 1e-4, "micro_batch_size": 8, "weight_decay": 0.0},
            "pipeline": {"eta": eta, "stream_groups": args.stream_groups, "behaviour_version": args.behaviour_version,
                         "rollout_threads": args.rollout_threads},
            "trainer": {"steps": args.steps, "out_dir": str(out), "progress": False, "plot": False,
                        "save_final": False, "checkpoint_every": 0, "log_every": 10_000},
        }
    ).validate()  # fmt: skip
    trainer = Trainer(cfg)
    trainer.rollout.max_new_tokens_for = lambda p: length_cap(p.prompt_id, args.max_new_tokens)
    t_start = time.perf_counter()
    trainer.start()
    pipe = trainer._pipeline
    records, ends = [], []
    for _ in range(args.steps):
        records.append(trainer.step())
        ends.append(time.perf_counter())
    counts = dict(getattr(pipe, "counts", {}))
    trainer.close()
    trainer.engine.close()
    timed = records[1:]
    wall = ends[-1] - ends[0]
    tokens = sum(r["response_len_mean"] * r["responses"] for r in timed if r["responses"])
    update = sum(r["update_s"] for r in timed)
    if counts:  # streaming: the worker threads' busy time over the whole run, scaled to the window
        share = wall / (ends[-1] - t_start)
        rollout, grading = counts["rollout_busy_s"] * share, counts["grading_busy_s"] * share
    else:
        rollout = sum(r["rollout_s"] for r in timed)
        grading = sum(r["grading_s"] for r in timed)
    busy = rollout + grading + update
    return {
        "engine": engine,
        "eta": eta,
        "mode": "sync" if eta == 0 else "stream",
        "steps_timed": len(timed),
        "wall_s": wall,
        "steps_per_s": len(timed) / wall,
        "tokens_per_s": tokens / wall,
        "generated_tokens": tokens,
        "response_len_mean": tokens / sum(r["responses"] for r in timed),
        "rollout_busy_s": rollout,
        "grading_busy_s": grading,
        "update_busy_s": update,
        "rollout_idle_s": max(0.0, wall - rollout),
        "grading_idle_s": max(0.0, wall - grading),
        "update_idle_s": max(0.0, wall - update),
        "grading_share": grading / busy if busy else None,
        "trainer_wait_s": sum(r["wait_s"] for r in timed),
        "staleness": [r["staleness"] for r in records],
        "staleness_mean": sum(r["staleness_mean"] or 0.0 for r in timed) / len(timed),
        "graded_groups": counts.get("graded_groups"),
        "rollout_graded_groups": counts.get("rollout_graded_groups"),
        "rollout_wait_s": counts.get("rollout_wait_s"),
        "grading_wait_s": counts.get("grading_wait_s"),
        "stage_threads": list(pipe.stage_thread_counts) if counts else [args.threads],
        "stale_dropped_groups": sum(r["stale_dropped_groups"] for r in records),
        "trained_responses": sum(r["trained_responses"] for r in timed),
        "threads": torch.get_num_threads(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "python": sys.executable,
    }


def decode_costs(args: argparse.Namespace) -> dict:
    """HF generate on the tiny model at batch 1 and 16 (fixed length): per-iteration cost
    ``c0`` and per-sequence cost ``c1`` of ``t_iter = c0 + c1 * batch`` (fed to the simulation)."""
    import torch

    torch.set_num_threads(args.threads)
    from rubricrl.engines import HFEngine
    from rubricrl.models import build_tiny_model, load_builtin_tokenizer

    engine = HFEngine(build_tiny_model(seed=0), load_builtin_tokenizer())
    tokens = 16 if args.quick else 64
    engine.generate(["warm"], 1, max_new_tokens=4, seed=0)
    per_iter = {}
    for batch in (1, 16):
        t0 = time.perf_counter()
        engine.generate(["The cat sat on"] * batch, 1, max_new_tokens=tokens, seed=1)
        per_iter[batch] = (time.perf_counter() - t0) / tokens
    c1 = max(0.0, (per_iter[16] - per_iter[1]) / 15)
    return {"c0_s": max(0.0, per_iter[1] - c1), "c1_s": c1, "tokens": tokens, "loadavg": os.getloadavg()}


# -------------------------------------------------------------------------------- simulation


def simulate(
    mode: str,
    *,
    gpus: int = 8,
    prompts: int = 32,
    n: int = 4,
    items: int = 11,
    prompt_len: int = 2048,
    max_len: int = 6144,
    steps: int = 12,
    eta: int = 1,
    c0: float,
    c1: float,
    grade_per_token: float,
    update_per_token: float,
    rollout_gpus: int | None = None,
    seed: int = 0,
) -> dict:
    """SIMULATION (a model, not a measurement) of ``steps`` training steps; returns steps/s.

    Costs (seconds, per GPU): a decode iteration of ``b`` sequences ``c0 + c1 * b``
    (continuous batching: a finished sequence leaves, a waiting one joins); grading a
    response ``grade_per_token * (prompt_len + len + items * 16)`` (prefix-shared: the
    conversation once, ~16 tokens per item); the update ``update_per_token * tokens``
    split evenly over the training GPUs. Response lengths: ``max_len * q^3``-shaped long
    tail (as in the measured runs) per group, so one group's G responses share a cap.

    * ``sync``: all GPUs sample step s, then grade it, then update (colocated, like TRL /
      verl colocated modes): the decode batch drains to the longest response.
    * ``async``: disaggregated: ``rollout_gpus`` sample and self-grade, the rest train;
      the rollout runs up to ``eta`` steps ahead (AReaL-style), groups join the decode
      batch as soon as admitted (weight transfer to the rollout GPUs not charged).
    * ``colocated``: rubricrl's streaming pipeline: every GPU samples, grades and trains;
      groups of up to ``eta + 1`` steps are in flight, a finished group is graded at once
      (grading and the update take the GPU between decode iterations), the update of step
      s runs once its groups are graded.
    """
    rng = random.Random(seed)
    lengths = [[max(16, int(max_len * rng.random() ** 3))] * n for _ in range(prompts * steps)]
    grade_cost = [grade_per_token * (prompt_len + g[0] + items * 16) * n for g in lengths]
    update_cost_tokens = [sum(sum(g) for g in lengths[s * prompts : (s + 1) * prompts]) for s in range(steps)]
    if mode == "sync":
        t = 0.0
        for s in range(steps):
            groups = lengths[s * prompts : (s + 1) * prompts]
            t += _decode_pool(groups, [0.0] * len(groups), gpus, c0, c1)[0]
            t += sum(grade_cost[s * prompts : (s + 1) * prompts]) / gpus
            t += update_per_token * update_cost_tokens[s] / gpus
        return {"mode": mode, "steps_per_s": steps / t, "seconds": t}
    if mode == "async":
        r = rollout_gpus or gpus // 2
        out = _stream_sim(lengths, grade_cost, update_cost_tokens, prompts, steps, r, gpus - r, eta, c0, c1, update_per_token)
        return {"mode": mode, **out, "rollout_gpus": r}
    if mode == "colocated":
        out = _stream_sim(lengths, grade_cost, update_cost_tokens, prompts, steps, gpus, None, eta, c0, c1, update_per_token)
        return {"mode": mode, **out}
    raise ValueError(mode)


def _decode_pool(groups, arrivals, gpus, c0, c1):
    """Continuous batching of ``groups`` (lists of lengths) on ``gpus`` identical GPUs, each
    group on the least-loaded GPU; returns (time the last group finishes, per-group finish times)."""
    per_gpu = [[] for _ in range(gpus)]
    for k, g in sorted(enumerate(groups), key=lambda kg: -sum(kg[1])):
        target = min(range(gpus), key=lambda i: sum(sum(groups[j]) for j in per_gpu[i]))
        per_gpu[target].append(k)
    finish = [0.0] * len(groups)
    end = 0.0
    for gpu in per_gpu:
        if not gpu:
            continue
        t = max(arrivals[k] for k in gpu)
        remaining = {k: max(groups[k]) for k in gpu}
        while remaining:
            b = sum(len(groups[k]) for k in remaining)
            step = min(remaining.values())
            t += step * (c0 + c1 * b)
            for k in [k for k, v in remaining.items() if v == step]:
                finish[k] = t
                del remaining[k]
            for k in remaining:
                remaining[k] -= step
        end = max(end, t)
    return end, finish


def _stream_sim(lengths, grade_cost, update_tokens, prompts, steps, decode_gpus, train_gpus, eta, c0, c1, update_per_token):
    """Event simulation of a streaming pipeline. ``decode_gpus`` GPUs run decode iterations
    (chunks of <= 64 tokens) over their admitted groups (a group goes to the GPU with the
    fewest tokens left, as ``sync`` balances its batch) and, between iterations, grade
    finished groups from one shared queue (any GPU holds the weights; one group per job).
    The update of step s starts once its groups are graded: colocated (``train_gpus=None``)
    on the same GPUs, all at once after each has finished what it was doing; disaggregated
    on ``train_gpus`` separate GPUs (weight transfer not charged: optimistic for that
    design). Step s's groups are admitted when update s - 1 - eta is done (the admission
    rule)."""
    colocated = train_gpus is None
    home: dict[int, int] = {}
    remaining, arrival = {}, {}
    graded_count, graded_at = [0] * steps, [0.0] * steps
    t = [0.0] * decode_gpus
    queue: list[tuple[float, int]] = []  # (ready time, group)
    done_at = [0.0] * steps
    state = {"admitted": 0, "updated": 0, "train_free": 0.0}

    def admit(now):
        while state["admitted"] < steps and state["admitted"] - 1 - eta < state["updated"]:
            s_ = state["admitted"]
            for k in sorted(range(s_ * prompts, (s_ + 1) * prompts), key=lambda k: -lengths[k][0]):
                load = [sum(remaining[j] * len(lengths[j]) for j in remaining if home[j] == i) for i in range(decode_gpus)]
                home[k] = min(range(decode_gpus), key=lambda i: load[i])
                remaining[k], arrival[k] = max(lengths[k]), now
            state["admitted"] += 1

    admit(0.0)
    while state["updated"] < steps:
        u = state["updated"]
        if graded_count[u] == prompts:
            cost = update_per_token * update_tokens[u]
            if colocated:
                end = max(max(t), graded_at[u]) + cost / decode_gpus
                t = [end] * decode_gpus
            else:
                end = max(state["train_free"], graded_at[u]) + cost / train_gpus
                state["train_free"] = end
            done_at[u] = end
            state["updated"] += 1
            admit(end)
            continue
        # of the GPUs with something to do, the one furthest behind acts next (time order)
        busy = [j for j in range(decode_gpus) if queue or any(home[k] == j for k in remaining)]
        if not busy:
            raise RuntimeError("the simulation stalled (no work, no update due)")
        i = min(busy, key=lambda j: t[j])
        mine = [k for k in remaining if home[k] == i]
        live = [k for k in mine if arrival[k] <= t[i]]
        ready = [q for q in queue if q[0] <= t[i]]
        if ready:
            job = min(ready)
            queue.remove(job)
            k = job[1]
            t[i] += grade_cost[k]
            graded_count[k // prompts] += 1
            graded_at[k // prompts] = max(graded_at[k // prompts], t[i])
        elif live:
            b = sum(len(lengths[k]) for k in live)
            chunk = min(min(remaining[k] for k in live), 64)
            t[i] += chunk * (c0 + c1 * b)
            for k in live:
                remaining[k] -= chunk
                if remaining[k] <= 0:
                    del remaining[k]
                    queue.append((t[i], k))
        else:  # idle until its next group arrives or a grading job is ready
            t[i] = min([arrival[k] for k in mine] + [q[0] for q in queue])
    busy_end = done_at[-1]
    return {"steps_per_s": steps / busy_end, "seconds": busy_end}


def projection(rows: list[dict], costs: dict, quick: bool) -> dict:
    """Per-token stage costs from the measured HF sync run, scaled to the source setting."""
    sync = next((r for r in rows if r["engine"] == "hf" and r["eta"] == 0), None)
    if sync is None:
        return {}
    responses = sync["trained_responses"] or 1
    tokens = sync["generated_tokens"] or 1
    # grading cost per (conversation + response + items) token, from the measured run
    graded_tokens = responses * (200 + sync["response_len_mean"] + 11 * 16)
    grade_per_token = sync["grading_busy_s"] / graded_tokens
    update_per_token = sync["update_busy_s"] / tokens
    inputs = {
        "c0_s": costs["c0_s"],
        "c1_s": costs["c1_s"],
        "grade_per_token_s": grade_per_token,
        "update_per_token_s": update_per_token,
    }
    base = dict(c0=costs["c0_s"], c1=costs["c1_s"], grade_per_token=grade_per_token, update_per_token=update_per_token)
    steps = 3 if quick else 8
    shape = {"gpus": 8, "prompts": 32, "n": 4, "items": 11, "prompt_len": 2048, "max_len": 6144, "steps": steps}
    out = {"inputs": inputs, "shape": shape, "measured_costs": {}, "grading_75pct": {}}
    # the same run with grading scaled so that it is 75% of a sync step (the source work's 70-80%)
    probe = simulate("sync", **shape, **base)
    g_only = simulate("sync", **shape, **{**base, "grade_per_token": 0.0})
    grading_s = probe["seconds"] - g_only["seconds"]
    scale = 3 * g_only["seconds"] / grading_s if grading_s > 0 else 1.0  # grading = 3x the rest
    out["measured_costs"]["sync_grading_share"] = grading_s / probe["seconds"]
    for label, costs_ in (("measured_costs", base), ("grading_75pct", {**base, "grade_per_token": grade_per_token * scale})):
        res = {m: simulate(m, **shape, eta=1, **costs_) for m in ("sync", "colocated")}
        res["async"] = max((simulate("async", **shape, eta=1, rollout_gpus=r, **costs_) for r in (2, 4, 6)),
                           key=lambda x: x["steps_per_s"])  # fmt: skip
        for m in ("async", "colocated"):
            res[m]["x_sync"] = res[m]["steps_per_s"] / res["sync"]["steps_per_s"]
        out[label].update(res)
    return out


# ------------------------------------------------------------------------------------ driver


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 prompts, 16 new tokens, 2 steps, HF only, in this process")
    p.add_argument("--out", type=Path, default=RESULTS, help="results directory (default: bench/results)")
    p.add_argument("--engines", nargs="+", default=["hf", "vllm"], choices=["hf", "vllm"])
    p.add_argument("--etas", nargs="+", type=int, default=[0, 1, 2, 4])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=6, help="prompts per step (the builtin set has 6 with >= 11 items)")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--stream-groups", type=int, default=1)
    p.add_argument("--rollout-threads", type=int, default=0, help="pipeline.rollout_threads of the streaming runs (0: auto)")
    p.add_argument("--behaviour-version", default="newest", choices=["newest", "scheduled"], help="pipeline.behaviour_version of the streaming runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vllm-python", default=DEFAULT_VLLM_PYTHON)
    p.add_argument("--resimulate", action="store_true", help="recompute the simulation of an existing results file (--out)")
    p.add_argument("--variant", help=argparse.SUPPRESS)  # ENGINE:ETA or costs, in a child process
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.prompts, args.max_new_tokens, args.engines = 2, 2, 16, ["hf"]
    for name in ("steps", "prompts", "max_new_tokens", "threads", "stream_groups"):
        if getattr(args, name) < 1 or (name == "steps" and args.steps < 2):
            p.error(f"--{name.replace('_', '-')} must be >= {2 if name == 'steps' else 1}")
    if any(e < 0 for e in args.etas):
        p.error("--etas must be >= 0")
    if args.variant:
        row = decode_costs(args) if args.variant == "costs" else run_variant(args.variant.split(":")[0], int(args.variant.split(":")[1]), args)
        print(json.dumps(row))
        return 0

    if args.resimulate:
        path = args.out / "async.json"
        result = json.loads(path.read_text())
        result["simulation"] = projection(result["rows"], result["decode_costs"], False)
        path.write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "async.md").write_text(markdown(result))
        plot(result, args.out / "async.png")
        print(markdown(result))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT))
    passthrough = ["--threads", str(args.threads), "--steps", str(args.steps), "--prompts", str(args.prompts),
                   "--max-new-tokens", str(args.max_new_tokens), "--stream-groups", str(args.stream_groups),
                   "--behaviour-version", args.behaviour_version, "--rollout-threads", str(args.rollout_threads)]  # fmt: skip
    if args.quick:
        passthrough.append("--quick")

    def child(python: str, variant: str) -> dict | None:
        print(f"[bench_async] {variant} ({python}) ...", file=sys.stderr, flush=True)
        out = subprocess.run([python, "-m", "bench.bench_async", "--variant", variant, *passthrough],
                             capture_output=True, text=True, env=env, cwd=ROOT)  # fmt: skip
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"bench_async: variant {variant} failed (exit {out.returncode})")
        return json.loads(out.stdout.strip().splitlines()[-1])

    skipped = {}
    rows = []
    if args.quick:  # one process: the smoke run is about start-up, not figures
        rows = [run_variant("hf", eta, args) for eta in args.etas]
        costs = decode_costs(args)
    for engine in args.engines if not args.quick else []:
        python = sys.executable
        if engine == "vllm":
            if not Path(args.vllm_python).exists():
                skipped["vllm"] = f"{args.vllm_python} not found"
                continue
            python = args.vllm_python
        for eta in args.etas:
            rows.append(child(python, f"{engine}:{eta}"))
    if not args.quick:
        costs = child(sys.executable, "costs")
    for r in rows:
        base = next((b for b in rows if b["engine"] == r["engine"] and b["eta"] == 0), None)
        r["x_sync"] = r["steps_per_s"] / base["steps_per_s"] if base else None
    proj = projection(rows, costs, args.quick)
    import torch

    result = {
        "setting": {k: getattr(args, k) for k in ("steps", "prompts", "max_new_tokens", "threads", "stream_groups", "behaviour_version", "rollout_threads", "etas")},
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
                        "machine": platform.machine(), "loadavg_end": os.getloadavg()},  # fmt: skip
        "skipped": skipped,
        "decode_costs": costs,
        "rows": rows,
        "simulation": proj,
    }
    name = "async_quick" if args.quick else "async"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.out / f"{name}.md").write_text(md)
    print(md)
    if not args.quick:
        plot(result, args.out / f"{name}.png")
    return 0


def markdown(result: dict) -> str:
    s = result["setting"]
    lines = [
        f"## Sync vs streaming async training (CPU, tiny model, {s['threads']} torch threads)",
        "",
        f"Synchronous (eta = 0): every stage on all {s['threads']} threads. Streaming (eta >= 1, "
        f"behaviour_version={s.get('behaviour_version', 'scheduled')}): rollout and learner (grading and updates, "
        "taking turns) on their own share of the threads (rollout / learner: "
        f"{'/'.join(map(str, next((r['stage_threads'] for r in result['rows'] if r['eta'] > 0 and 'stage_threads' in r), ['-'])))}); "
        "'graded on rollout threads': groups the rollout graded while it waited for weights.",
        "",
        f"{s['prompts']} prompts x 4 responses per step, long-tailed caps up to {s['max_new_tokens']} new tokens, "
        f"{s['steps']} steps (step 1 not timed); load average per row (1 min) before -> after.",
        "",
        "| engine | eta | steps/s | x sync | tokens/s | mean len | rollout busy s | grading busy s | update busy s "
        "| rollout idle s | grading idle s | update idle s | grading share | graded on rollout threads "
        "| staleness mean | dropped | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['engine']} | {r['eta']} | {r['steps_per_s']:.3f} | {r['x_sync']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['response_len_mean']:.0f} | {r['rollout_busy_s']:.1f} | {r['grading_busy_s']:.1f} | "
            f"{r['update_busy_s']:.1f} | {r['rollout_idle_s']:.1f} | {r['grading_idle_s']:.1f} | "
            f"{r['update_idle_s']:.1f} | {r['grading_share']:.0%} | {_stolen(r)} | {r['staleness_mean']:.2f} | "
            f"{r['stale_dropped_groups']} | "
            f"{r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f} |"
        )
    for engine, why in result["skipped"].items():
        lines.append(f"\n{engine}: not run ({why}).")
    sim = result["simulation"]
    if sim:
        lines += ["", "### SIMULATION (a model fed by the measured costs, not a measurement)", "",
                  f"Source setting: {json.dumps(sim['shape'])}; inputs: {json.dumps({k: float(f'{v:.3g}') for k, v in sim['inputs'].items()})}.",
                  "", "| costs | sync steps/s | async (disaggregated) x sync | async-colocated x sync |", "|---|---:|---:|---:|"]  # fmt: skip
        for label in ("measured_costs", "grading_75pct"):
            res = sim[label]
            lines.append(
                f"| {label} | {res['sync']['steps_per_s']:.4g} | {res['async']['x_sync']:.2f} "
                f"({res['async']['rollout_gpus']} rollout GPUs) | {res['colocated']['x_sync']:.2f} |"
            )
        lines.append(f"\nSync grading share with the measured costs: {sim['measured_costs']['sync_grading_share']:.0%}. "
                     "AReaL reports 2.77x from asynchrony (disaggregated).")  # fmt: skip
    return "\n".join(lines) + "\n"


def _stolen(row: dict) -> str:
    """Groups graded by the rollout thread while it waited for weights, of all graded."""
    if not row.get("graded_groups"):
        return "-"
    return f"{row['rollout_graded_groups']}/{row['graded_groups']}"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = result["rows"]
    labels = [f"{r['engine']} eta={r['eta']}" for r in rows]
    a.bar(labels, [r["tokens_per_s"] for r in rows], color=["#888" if r["eta"] == 0 else "#3a7" for r in rows])
    a.set_ylabel("generated tokens / s (measured)")
    a.set_title(f"CPU, {result['setting']['threads']} threads, caps <= {result['setting']['max_new_tokens']}")
    a.tick_params(axis="x", rotation=30)
    sim = result["simulation"]
    if sim:
        modes = ["sync", "async", "colocated"]
        for k, label in enumerate(("measured_costs", "grading_75pct")):
            xs = [i + 0.4 * k for i in range(3)]
            b.bar(xs, [sim[label][m]["steps_per_s"] / sim[label]["sync"]["steps_per_s"] for m in modes], width=0.4, label=label)
        b.axhline(2.77, color="r", ls="--", label="AReaL reported 2.77x")
        b.set_xticks([i + 0.2 for i in range(3)], modes)
        b.set_ylabel("x sync (SIMULATION)")
        b.set_title("8 GPUs, 32x4, 2k prompts, <=6k responses")
        b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
