"""Benchmark: actor update time, padded vs packed (padding-free) micro-batches.

One ``ActorUpdater.update`` (forward, backward, AdamW step; ``token-mean`` and
``seq-mean-token-mean``) on 8 responses with long-tailed lengths (16 .. 512 tokens, most
short, see ``RESPONSE_TOKENS``) after prompts of 24 .. 40 tokens, fp32 on the CPU:

* ``padded``: today's layout, prompts left-padded and responses right-padded to the
  micro-batch's longest (``optim.packing=off``);
* ``packed``: the micro-batch's sequences end to end in one row, attention per sequence
  (``optim.packing=on``, ``rubricrl.models.packing``).

Models: ``tiny`` (the built-in 4-layer, hidden 128 Qwen3) and ``qwen-small`` (the same
architecture at 8 layers, hidden 384, 6 query / 2 key-value heads of 64, MLP 1024), both
with the built-in tokenizer's vocabulary. Micro-batches of 8 (the whole batch in one
forward) and of 4.

Timing: one process; each round runs every variant once (interleaved), the median over
rounds after a warm-up round is reported, so drifting load on the shared machine hits the
variants alike. Threads, load averages (before and after), versions and shapes are
recorded with the figures.

    python -m bench.bench_packing                 # -> bench/results/packing.json + .md
    python -m bench.bench_packing --rounds 3 --models tiny --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import harness  # noqa: E402

NAME = "packing"
#: long tail: half the responses under 64 tokens, one at 512
RESPONSE_TOKENS = (16, 24, 32, 48, 64, 128, 256, 512)
PROMPT_TOKENS = (24, 40, 32, 28, 36, 24, 40, 32)
MODELS = {
    "tiny": {},
    "qwen-small": {
        "hidden_size": 384,
        "intermediate_size": 1024,
        "num_hidden_layers": 8,
        "num_attention_heads": 6,
        "num_key_value_heads": 2,
        "head_dim": 64,
    },
}
LOSS_AGGS = ("token-mean", "seq-mean-token-mean")


def build_batch():
    from rubricrl.trainer.update import UpdateBatch

    g = torch.Generator().manual_seed(0)
    batch = UpdateBatch()
    for p, r in zip(PROMPT_TOKENS, RESPONSE_TOKENS):
        batch.add(
            torch.randint(5, 250, (p,), generator=g).tolist(),
            torch.randint(5, 250, (r,), generator=g).tolist(),
            (-torch.rand(r, generator=g) * 3 - 1).tolist(),
            float(torch.randn((), generator=g)),
        )
    return batch


def make_updater(model_name: str, loss_agg: str, micro: int):
    from rubricrl.config import LossConfig, OptimConfig
    from rubricrl.engines import HFEngine
    from rubricrl.models import build_tiny_model, load_builtin_tokenizer
    from rubricrl.trainer.update import ActorUpdater

    engine = HFEngine(build_tiny_model(seed=0, **MODELS[model_name]), load_builtin_tokenizer())
    optim = OptimConfig(lr=1e-6, micro_batch_size=micro, packing="on")
    return ActorUpdater(engine, LossConfig(loss_agg=loss_agg), optim, temperature=1.0, horizon=max(RESPONSE_TOKENS))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--micro", nargs="+", type=int, default=[8, 4])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = build_batch()
    load_before = os.getloadavg()
    rows = []
    for model_name in args.models:
        for loss_agg in LOSS_AGGS:
            for micro in args.micro:
                updater = make_updater(model_name, loss_agg, micro)
                times: dict[str, list[float]] = {"padded": [], "packed": []}
                for round_ in range(args.rounds + 1):
                    for variant in times:
                        updater.packed = variant == "packed"
                        t0 = time.perf_counter()
                        updater.update(batch)
                        if round_ > 0:  # round 0 warms up
                            times[variant].append(time.perf_counter() - t0)
                med = {v: statistics.median(t) for v, t in times.items()}
                padded_tokens = sum(
                    len(rows_) * (max(len(batch.prompt_ids[i]) for i in rows_) + max(len(batch.response_ids[i]) for i in rows_))
                    for rows_ in (list(range(s, min(s + micro, len(batch)))) for s in range(0, len(batch), micro))
                )
                packed_tokens = sum(len(p) + len(r) - 1 for p, r in zip(batch.prompt_ids, batch.response_ids))
                row = {
                    "model": model_name,
                    "params": sum(p.numel() for p in updater.params),
                    "loss_agg": loss_agg,
                    "micro_batch_size": micro,
                    "padded_s": med["padded"],
                    "packed_s": med["packed"],
                    "speedup": med["padded"] / med["packed"],
                    "padded_times_s": times["padded"],
                    "packed_times_s": times["packed"],
                    "padded_tokens": padded_tokens,
                    "packed_tokens": packed_tokens,
                }
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if not k.endswith("times_s")}), file=sys.stderr, flush=True)
    meta = {
        "what": "ActorUpdater.update wall time (forward + backward + AdamW), median over rounds, interleaved",
        "response_tokens": list(RESPONSE_TOKENS),
        "prompt_tokens": list(PROMPT_TOKENS),
        "models": {k: MODELS[k] for k in args.models},
        "dtype": "float32",
        "device": "cpu",
        "rounds": args.rounds,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    lines = [
        "| model | loss_agg | micro | padded tokens | packed tokens | padded (s) | packed (s) | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['loss_agg']} | {r['micro_batch_size']} | {r['padded_tokens']} | {r['packed_tokens']} "
            f"| {r['padded_s']:.3f} | {r['packed_s']:.3f} | {r['speedup']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        path = harness.write_results(NAME, meta, rows)
        env = harness.environment()
        (path.with_suffix(".md")).write_text(
            f"# {NAME}\n\n{meta['what']}; threads {env['threads']}, load {meta['loadavg_before']} -> "
            f"{meta['loadavg_after']}, torch {env['versions'].get('torch')}, transformers "
            f"{env['versions'].get('transformers')}.\n\n{table}\n"
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
