"""Step time of the trainer in one process vs on Ray with 1 and 2 trainer ranks (CPU).

    python -m bench.bench_ray            # 4 prompts x 4 responses x 32 tokens, 1 warm-up + 3 measured steps
    python -m bench.bench_ray --quick    # 2 x 2 x 8 tokens, 1 + 2 steps (a smoke run, minutes)

Each variant runs in a fresh process (``python -m bench.bench_ray --variant NAME``):

* ``single1`` / ``single``: ``Trainer`` (``distributed.backend=none``) with 1 / ``--threads``
  torch threads;
* ``ray1`` / ``ray2``: ``RayTrainer`` on a local Ray cluster of ``--threads`` CPUs, 1 engine
  worker and 1 or 2 trainer ranks; the CPUs are split evenly between the actors (a rank
  or worker with less than one CPU gets one torch thread: on 2 CPUs the three actors of
  ``ray2`` share them).

Measured per variant: ``build_s`` (construction: for Ray also ``ray.init``, the placement
group, the actors' start with their imports and models, the process group and the first
weight sync), the median over the measured steps of rollout / grading / update / step
seconds, and for Ray the overheads: ``weight_sync_s`` (rank 0's state dict through the
object store into every worker, per step), the pickled size and pickle + unpickle time
of a step's samples (``RolloutBatch``, what a worker returns) and of its ``UpdateBatch``
(what every rank receives), and the weights' bytes. The machine's threads and
``os.getloadavg()`` before and after every variant are recorded: on a shared machine the
load of other processes makes these figures noisy.

Writes ``bench/results/ray.json`` and ``bench/results/ray.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import harness

VARIANTS = ("single1", "single", "ray1", "ray2")
STEP_KEYS = ("rollout_s", "grading_s", "update_s", "step_s")


def shapes(quick: bool) -> dict:
    return {"prompts_per_step": 2, "n": 2, "max_new_tokens": 8, "steps": 2} if quick else {
        "prompts_per_step": 4, "n": 4, "max_new_tokens": 32, "steps": 3}


def make_config(variant: str, out: Path, threads: int, quick: bool):
    from rubricrl.config import config_from_dict

    s = shapes(quick)
    raw = {
        "model": {"device": "cpu"},
        "data": {"prompts_per_step": s["prompts_per_step"]},
        "rollout": {"n": s["n"], "max_new_tokens": s["max_new_tokens"]},
        "optim": {"lr": 1e-4, "micro_batch_size": 4},
        "trainer": {"steps": s["steps"] + 1, "out_dir": str(out), "progress": False, "plot": False, "save_final": False},
    }
    if variant != "single":
        ranks = int(variant[-1])
        share = threads / (1 + ranks)  # the cluster's CPUs split evenly between the actors
        raw["distributed"] = {
            "backend": "ray",
            "local_cpus": threads,
            "engine_workers": 1,
            "trainer_ranks": ranks,
            "engine_num_cpus": share,
            "trainer_num_cpus": share,
        }
    return config_from_dict(raw).validate()


def pickled(obj) -> tuple[int, float]:
    """(bytes, seconds to pickle and unpickle) of ``obj``, as Ray serialises it (pickle 5)."""
    t0 = time.perf_counter()
    data = pickle.dumps(obj, protocol=5)
    pickle.loads(data)
    return len(data), time.perf_counter() - t0


def run_variant(variant: str, threads: int, quick: bool) -> dict:
    # single1: one torch thread, as every actor of ray1 / ray2 has on 2 CPUs; on a machine
    # whose other processes keep the cores busy, OpenMP threads that wait for each other at
    # every parallel region make a multi-threaded process far slower than one thread
    if variant == "single1":
        variant, threads_used = "single", 1
    else:
        threads_used = threads
    torch.set_num_threads(threads_used)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(variant, Path(tmp) / "run", threads, quick)
        name = "single1" if threads_used != threads else variant
        t0 = time.perf_counter()
        if variant == "single":
            from rubricrl.trainer import Trainer

            trainer = Trainer(cfg)
        else:
            from rubricrl.distributed.ray_trainer import RayTrainer

            trainer = RayTrainer(cfg)
        build_s = time.perf_counter() - t0
        extra: dict = {}
        if variant != "single":
            batches = []
            sample = trainer.fleet.sample

            def keep(step, prompts):  # the driver's copy of each step's samples, to size them
                batches.append(sample(step, prompts))
                return batches[-1]

            trainer.fleet.sample = keep
            updates = []
            update = trainer.updater.update

            def keep_update(batch):
                updates.append(batch)
                return update(batch)

            trainer.updater.update = keep_update
            fleet = trainer.fleet  # close() drops it; its sync_seconds: [initial, after step 1, ...]
        records = trainer.train()
        if variant == "ray1":  # object-store bandwidth, for weights far larger than the tiny model's
            extra = object_store_transfer(64 << 20)
        measured = records[1:]  # the first step warms up
        row = {
            "variant": name,
            "build_s": build_s,
            **{f"{k}_median": statistics.median(r[k] for r in measured) for k in STEP_KEYS},
            "steps_measured": len(measured),
        }
        if variant != "single":
            rb, rt = pickled(batches[-1])
            ub, ut = pickled(updates[-1])
            row.update(
                weight_sync_s_median=statistics.median(fleet.sync_seconds[2:]),  # after the measured steps
                samples_bytes=rb,
                samples_pickle_s=rt,
                update_batch_bytes=ub,
                update_batch_pickle_s=ut,
                weights_bytes=weights_bytes(cfg),
                ray_init_s=trainer.timings["ray_init_s"],
                actor_start_s=trainer.timings["actor_start_s"],
            )
    row.update(extra)
    row.update(threads=threads, torch_threads=torch.get_num_threads(), loadavg_before=load_before, loadavg_after=os.getloadavg())
    return row


def object_store_transfer(nbytes: int) -> dict:
    """Seconds to ``ray.put`` a state dict of ``nbytes`` (fp32, 8 tensors) and to have a task
    on the cluster read it (what a worker's ``load_weights`` does): the per-byte cost of the
    weight sync, which the tiny model's few MB cannot show."""
    import ray

    @ray.remote(num_cpus=0)
    def read(state):
        return sum(float(t[0]) for t in state.values())

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)  # the trainer shut its cluster down
    try:
        state = {f"w{i}": torch.ones(nbytes // 32) for i in range(8)}
        ray.get(read.remote({"w": torch.ones(1)}))  # a warm worker
        t0 = time.perf_counter()
        ref = ray.put(state)
        put_s = time.perf_counter() - t0
        ray.get(read.remote(ref))
        total_s = time.perf_counter() - t0
    finally:
        ray.shutdown()
    return {"transfer_bytes": nbytes, "transfer_put_s": put_s, "transfer_total_s": total_s}


def weights_bytes(cfg) -> int:
    from rubricrl.models.loading import load_policy

    model, _ = load_policy(cfg.model.path, seed=cfg.model.seed)
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=VARIANTS, help="run one variant in this process and print a JSON line")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--threads", type=int, default=2, help="torch threads (single) / CPUs of the local Ray cluster")
    p.add_argument("--quick", action="store_true", help="smaller steps, 2 measured")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.threads, args.quick)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    rows = []
    for variant in args.variants:
        print(f"[ray] running {variant} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, "-m", "bench.bench_ray", "--variant", variant, "--threads", str(args.threads)]
        out = subprocess.run([*cmd, *(["--quick"] if args.quick else [])], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-4000:])
            raise SystemExit(f"variant {variant} failed (exit {out.returncode})")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import ray

    meta = {"shapes": shapes(args.quick), "quick": args.quick, "threads": args.threads, "ray": ray.__version__, "model": "tiny (built in code)", "dtype": "float32"}
    path = harness.write_results("ray", meta, rows)
    md = table(rows, meta)
    (harness.RESULTS / "ray.md").write_text(md + "\n")
    print(md)
    print(f"wrote {path}", file=sys.stderr)


def table(rows: list[dict], meta: dict) -> str:
    def f(v, digits=3):
        return "" if v is None else f"{v:.{digits}f}"

    lines = [
        f"shapes {meta['shapes']}, {meta['threads']} CPUs/threads, ray {meta['ray']}, fp32 CPU",
        "",
        "| variant | build (s) | ray.init / actors (s) | step (s) | rollout (s) | grading (s) | update (s) | weight sync (s) "
        "| samples (KB, pickle s) | update batch (KB, pickle s) | load 1m before/after |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ray_cols = (
            f"{f(r.get('weight_sync_s_median'))} | {r['samples_bytes'] / 1e3:.1f}, {f(r['samples_pickle_s'], 4)} | "
            f"{r['update_batch_bytes'] / 1e3:.1f}, {f(r['update_batch_pickle_s'], 4)}"
            if "samples_bytes" in r
            else " | | "  # the single process has none of these
        )
        lines.append(
            f"| {r['variant']} | {f(r['build_s'], 1)} | {f(r.get('ray_init_s'), 1)} / {f(r.get('actor_start_s'), 1)} | {f(r['step_s_median'])} | {f(r['rollout_s_median'])} | "
            f"{f(r['grading_s_median'])} | {f(r['update_s_median'])} | {ray_cols} | "
            f"{r['loadavg_before'][0]:.1f} / {r['loadavg_after'][0]:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
