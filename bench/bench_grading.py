"""Benchmark: grading time per prompt, generative judge vs logprob judge (unshared / prefix-shared).

The source paper's shape: one prompt, G = 4 responses, K = 11 rubric items, i.e. 44
judgments per prompt. Responses are 128-256 tokens; the shared prefix (judge
instructions + conversation) is at least 4x the longest item suffix. CPU, the embedded
tiny model (fp32), ``torch.set_num_threads(2)``.

Variants:

* ``generate``: :class:`~rubricrl.judges.GenerateJudge`, the 44 judge prompts sampled in
  one batch; every judgment generates at least 64 tokens (``min_new_tokens=64``, up to the
  judge's default ``max_new_tokens=128``). The engine is ``HFEngine`` with
  ``min_new_tokens`` passed through to ``model.generate`` (a benchmark-only subclass), so it
  also pays ``HFEngine``'s teacher-forced behaviour-log-prob pass, as a generative judge on
  this engine does. The random tiny model writes noise that never parses, so
  ``max_attempts=1`` keeps the cost at one round (a real judge would retry failures).
* ``logprob-unshared``: :class:`~rubricrl.judges.LogprobJudge` with ``share_prefix=False``:
  44 full judge prompts, batched.
* ``logprob-shared``: the same judge with prefix sharing (prefix once, each response once,
  44 short item suffixes on the cached context).

Timing: one process, the same engine; each round runs every variant once (interleaved),
and the median over rounds after a warm-up round is reported, so drifting load on a
shared machine hits all variants alike. ``--threads 2 1`` also reports one thread: with
other jobs on the 2 CPUs, two OpenMP threads stall at every parallel op's barrier, which
slows the many mid-sized ops of a prefill far more than a decode step's small ones.

    python -m bench.bench_grading                       # -> bench/results/grading.json + .md
    python -m bench.bench_grading --threads 2 1 --repeats 3
    python -m bench.bench_grading --variant logprob-shared --no-write
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402

NAME = "grading"
VARIANTS = {
    "generate": "GenerateJudge: 44 prompts sampled in one batch, 64-128 new tokens each",
    "logprob-unshared": "LogprobJudge(share_prefix=False): 44 full judge prompts, batched",
    "logprob-shared": "LogprobJudge(share_prefix=True): prefix once, each response once, 44 item suffixes",
}
RESPONSE_TOKENS = (128, 171, 213, 256)
NUM_ITEMS = 11
MIN_NEW_TOKENS = 64


def build_inputs():
    """(engine factory, requests, shape dict) of one benchmark prompt."""
    from rubricrl.data.builtin import builtin_meta_eval, builtin_rubric_prompts
    from rubricrl.data.rubrics import RubricItem
    from rubricrl.judges import GradeRequest, LogprobJudge
    from rubricrl.models import load_builtin_tokenizer

    tokenizer = load_builtin_tokenizer()
    enc = LogprobJudge().prompt_encoder(tokenizer)
    # The built-in prompt with >= 11 items whose longest item suffix is shortest.
    candidates = [p for p in builtin_rubric_prompts() if len(p.rubrics) >= NUM_ITEMS]
    prompt = min(candidates, key=lambda p: max(len(enc.suffix_ids(i)) for i in p.rubrics[:NUM_ITEMS]))
    items = [RubricItem(i.criterion, i.points, i.tags) for i in prompt.rubrics[:NUM_ITEMS]]
    longest_suffix = max(len(enc.suffix_ids(i)) for i in items)
    # A system turn, sentence by sentence, until the prefix is >= 4x the longest item suffix.
    sentences = [
        "You are a careful, friendly assistant.",
        "Answer the user's question accurately and safely.",
        "Explain your reasons in plain language and keep the answer short enough to read quickly.",
        "Do not invent facts, and say so when you are not sure.",
        "When a question touches on health, money or the law, say when a professional should be consulted.",
        "Prefer concrete steps over general advice.",
    ]
    system = ""
    for sentence in sentences * 4:
        conversation = [{"role": "system", "content": system}, *prompt.prompt] if system else list(prompt.prompt)
        if len(enc.prefix_ids(conversation)) >= 4 * longest_suffix:
            break
        system = f"{system} {sentence}".strip()
    # Responses: n tokens of real completions (decoded from a token slice; re-encoding the
    # text can merge across the cut, so the recorded response_tokens may differ by one or two).
    text = " ".join(r.completion for r in builtin_meta_eval())
    # (longer than the model's context, hence verbose=False: it is only sliced)
    text_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    responses = [tokenizer.decode(text_ids[i * 300 : i * 300 + n]).strip() for i, n in enumerate(RESPONSE_TOKENS)]
    requests = [GradeRequest(conversation, r, items, group_id=prompt.prompt_id) for r in responses]
    shape = {
        "prompt_id": prompt.prompt_id,
        "responses": len(responses),
        "items_per_response": len(items),
        "judgments": len(responses) * len(items),
        "response_tokens": [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in responses],
        "prefix_tokens": len(enc.prefix_ids(conversation)),
        "response_part_tokens": [len(enc.response_ids(r)) for r in responses],
        "item_suffix_tokens": [len(enc.suffix_ids(i)) for i in items],
    }
    shape["logprob_prompt_tokens_max"] = (
        shape["prefix_tokens"] + max(shape["response_part_tokens"]) + max(shape["item_suffix_tokens"])
    )
    assert shape["prefix_tokens"] >= 4 * max(shape["item_suffix_tokens"]), shape
    return requests, shape


def _bench_engine_class():
    """``HFEngine`` whose ``generate`` also takes ``min_new_tokens`` (benchmark only)."""
    from rubricrl.engines import HFEngine

    class MinTokensEngine(HFEngine):
        min_new_tokens = 0
        generated: list[int] = []

        def generate(self, prompts, n, *, max_new_tokens, temperature=1.0, top_p=1.0, seed=None, min_new_tokens=0):
            self.min_new_tokens = min_new_tokens
            return super().generate(prompts, n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)

        def _generate_batch(self, rows, config, temperature, version):  # HFEngine's per-batch sampler
            config.min_new_tokens = self.min_new_tokens or None
            samples = super()._generate_batch(rows, config, temperature, version)
            self.generated.extend(len(s.response_ids) for s in samples)
            return samples

    return MinTokensEngine


def make_judges():
    from rubricrl.judges import GenerateJudge, LogprobJudge

    return {
        "generate": GenerateJudge(min_new_tokens=MIN_NEW_TOKENS, max_attempts=1, seed=0),
        "logprob-unshared": LogprobJudge(share_prefix=False),
        "logprob-shared": LogprobJudge(share_prefix=True),
    }


def make_engine():
    from rubricrl.models import build_tiny_model, load_builtin_tokenizer

    # The generative judge's prompts (its request is longer) plus 128 new tokens run past
    # the tiny model's nominal 2048 positions; RoPE has no hard limit, so only the nominal
    # maximum is raised (same weights, same outputs) to keep transformers from warning.
    tokenizer = load_builtin_tokenizer()
    tokenizer.model_max_length = 4096
    return _bench_engine_class()(build_tiny_model(seed=0, max_position_embeddings=4096), tokenizer)


def measure(threads: int, repeats: int, warmup: int, variants: list[str]) -> list[dict]:
    """Time every variant in this process, interleaved: each round runs all variants once.

    On a shared machine the load drifts over minutes; interleaving exposes every variant to
    the same drift, so their ratios stay meaningful even when absolute times move.
    """
    import torch

    torch.set_num_threads(threads)
    requests, _ = build_inputs()
    engine = make_engine()
    judges = make_judges()
    times: dict[str, list[float]] = {v: [] for v in variants}
    loads = []
    with torch.no_grad():
        for round_ in range(warmup + repeats):
            for variant in variants:
                engine.generated.clear()
                start = time.perf_counter()
                results = judges[variant].grade(engine, requests)
                elapsed = time.perf_counter() - start
                assert len(results) == len(requests)
                if round_ >= warmup:
                    times[variant].append(elapsed)
                    if engine.generated:
                        generated = list(engine.generated)
            loads.append(os.getloadavg()[0])
            print(f"[{NAME}] {threads} threads, round {round_ + 1}/{warmup + repeats}: "
                  + ", ".join(f"{v} {times[v][-1]:.2f}s" for v in variants if times[v] and round_ >= warmup),
                  file=sys.stderr, flush=True)
    rows = []
    for variant in variants:
        row = {
            "variant": variant,
            "description": VARIANTS[variant],
            "threads": threads,
            "times_s": times[variant],
            "median_s": statistics.median(times[variant]),
            "min_s": min(times[variant]),
            "loadavg_1m_per_round": loads,
        }
        if variant == "generate":
            row["generated_tokens_per_item_mean"] = statistics.mean(generated)
            row["generated_tokens_per_item_min"] = min(generated)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    import argparse

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="thread counts to run (first = headline)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="only these variants")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write bench/results")
    args = parser.parse_args(argv)
    variants = args.variant or list(VARIANTS)

    _, shape = build_inputs()
    runs = []
    for threads in args.threads:
        load_before = os.getloadavg()[0]
        rows = measure(threads, args.repeats, args.warmup, variants)
        by_name = {r["variant"]: r for r in rows}
        for r in rows:
            r["per_judgment_ms"] = 1000 * r["median_s"] / shape["judgments"]
        ratios = {}
        if {"generate", "logprob-shared"} <= by_name.keys():
            ratios["generate_over_shared"] = by_name["generate"]["median_s"] / by_name["logprob-shared"]["median_s"]
        if {"logprob-unshared", "logprob-shared"} <= by_name.keys():
            ratios["unshared_over_shared"] = by_name["logprob-unshared"]["median_s"] / by_name["logprob-shared"]["median_s"]
        runs.append({"threads": threads, "rows": rows, "ratios": ratios, "loadavg_1m_before": load_before,
                     "loadavg_1m_after": os.getloadavg()[0]})

    from rubricrl.models import TINY_CONFIG

    meta = {
        "shape": shape,
        "model": f"embedded tiny Qwen3-style model (4 layers, hidden 128, vocab {TINY_CONFIG['vocab_size']}), fp32, CPU",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timing": "one process; each round runs every variant once (interleaved); median over rounds after warm-up",
        "torch": torch.__version__,
        "min_new_tokens": MIN_NEW_TOKENS,
        "cpus": os.cpu_count(),
    }
    table = _markdown(runs, shape, args)
    print(table)
    if not args.no_write:
        harness.RESULTS.mkdir(exist_ok=True)
        path = harness.RESULTS / f"{NAME}.json"
        path.write_text(json.dumps({"meta": meta, "environment": harness.environment(), "runs": runs}, indent=2) + "\n")
        (harness.RESULTS / f"{NAME}.md").write_text(table + "\n")
        print(f"wrote {path}", file=sys.stderr)


def _markdown(runs, shape, args) -> str:
    import torch

    lines = [
        f"Grading one prompt: {shape['responses']} responses x {shape['items_per_response']} items = "
        f"{shape['judgments']} judgments; prefix {shape['prefix_tokens']} tokens, responses "
        f"{min(shape['response_tokens'])}-{max(shape['response_tokens'])} tokens, item suffixes "
        f"{min(shape['item_suffix_tokens'])}-{max(shape['item_suffix_tokens'])} tokens. Tiny model, fp32, CPU, "
        f"torch {torch.__version__}, median of {args.repeats} interleaved rounds after {args.warmup} warm-up, "
        f"{os.cpu_count()} CPUs shared with other jobs.",
    ]
    for run in runs:
        shared = next((r["median_s"] for r in run["rows"] if r["variant"] == "logprob-shared"), None)
        lines += [
            "",
            f"**{run['threads']} thread(s)** (load average, 1 min: {run['loadavg_1m_before']:.1f} before, "
            f"{run['loadavg_1m_after']:.1f} after)",
            "",
            "| judge | median per prompt (s) | min (s) | per judgment (ms) | x prefix-shared time | generated tokens/item |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in run["rows"]:
            gen = (
                f"{r['generated_tokens_per_item_mean']:.0f} (min {r['generated_tokens_per_item_min']})"
                if "generated_tokens_per_item_mean" in r
                else ""
            )
            ratio = f"{r['median_s'] / shared:.1f}" if shared else ""
            lines.append(
                f"| {r['variant']} | {r['median_s']:.2f} | {r['min_s']:.2f} | {r['per_judgment_ms']:.1f} | {ratio} | {gen} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
