"""Benchmark: the logprob judge's two prompt layouts, ``instructions_first`` vs ``continue_rollout``.

1. A self-grading step: ``--prompts`` built-in rubric prompts (6-12 items each), G = 4
   responses each sampled by the policy (the tiny model, ``--max-new-tokens``, T = 1), then
   graded by ``LogprobJudge`` (prefix-shared, HFEngine) in each layout. Per layout:

   * ``tokens_full``: tokens of every (response, item) prompt run on its own;
   * ``tokens_shared``: tokens a prefix-shared grader runs: each distinct token prefix of
     the judge prompts once (the nodes of their prefix trie: the group's prefix once, each
     body once, each item suffix once per response), padding not counted;
   * ``tokens_after_rollout``: tokens a prefix-shared grader runs when it also holds the
     rollout's KV (a prefix cache with the rollouts in it, as vLLM's automatic prefix
     caching): the trie nodes not in the rollouts' own trie (prompt ids + sampled response
     ids). The requests carry the sampled ids (``GradeRequest.response_ids``, as the
     trainer's do), which the ``continue_rollout`` layout grades; ``text_ids_match`` is the
     share of responses whose sampled ids are the tokenizer's encoding of their text (what a
     judge given only the text would match: low for the random tiny model's noise);
   * ``grade_s``: wall time of ``judge.grade`` on the HF engine (interleaved rounds, median).
     The HF engine runs the shared prefix / bodies / suffixes itself; it does not reuse the
     rollout's generate cache, so on it ``tokens_shared`` is what is paid.

2. Meta-evaluation: MF1 of each layout on the built-in meta-eval rows
   (``rubricrl.judges.run_meta_eval``, expected mode, verdict = p >= 0.5), and the share of
   rows where the two layouts' verdicts agree. The tiny model has random weights: its MF1
   measures nothing about grading quality, only that both layouts run end to end; run with
   ``--model PATH`` (a real checkpoint) for a meaningful comparison.

    python -m bench.bench_judge_layout                  # -> bench/results/judge_layout.json + .md
    python -m bench.bench_judge_layout --rounds 1 --prompts 2 --no-write
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

NAME = "judge_layout"
LAYOUTS = ("instructions_first", "continue_rollout")
G = 4


class _Trie:
    """Distinct token-sequence prefixes: ``add(ids)`` returns the nodes (prefixes) it created."""

    def __init__(self) -> None:
        self.children: dict[tuple[int, int], int] = {}

    def add(self, ids: list[int], seen: _Trie | None = None) -> tuple[int, int]:
        """Insert ``ids``; return (new nodes, new nodes also absent from ``seen``)."""
        node = seen_node = 0
        new = new_unseen = 0
        for t in ids:
            key = (node, t)
            child = self.children.get(key)
            if seen_node is not None:
                seen_node = seen.children.get((seen_node, t)) if seen is not None else None
            if child is None:
                child = self.children[key] = len(self.children) + 1
                new += 1
                new_unseen += seen_node is None
            node = child
        return new, new_unseen


def token_counts(encoder, requests, samples) -> dict[str, float]:
    """Token counts of grading ``requests`` (one per sample, same order) with ``encoder``.

    A prefix-shared grader runs each distinct token prefix of the judge prompts once
    (``tokens_shared``: nodes of their prefix trie); one that also holds the rollouts' KV
    runs only those not in the rollouts' trie (``tokens_after_rollout``)."""
    rollouts = _Trie()
    for sample in samples:
        rollouts.add(list(sample.prompt_ids) + list(sample.response_ids))
    judged = _Trie()
    full = shared = after = ids_match = 0
    for req, sample in zip(requests, samples):
        head = encoder.prefix_ids(req.conversation) + encoder.response_ids(req.response, req.response_ids)
        for item in req.items:
            ids = head + encoder.suffix_ids(item)
            full += len(ids)
            new, unseen = judged.add(ids, rollouts)
            shared += new
            after += unseen
        ids_match += encoder.tokenizer(sample.response_text, add_special_tokens=False)["input_ids"] == [
            t for t in sample.response_ids if t not in encoder.tokenizer.all_special_ids
        ]
    return {
        "tokens_full": full,
        "tokens_shared": shared,
        "tokens_after_rollout": after,
        "text_ids_match": ids_match / len(samples),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after one warm-up round")
    ap.add_argument("--prompts", type=int, default=4, help="rubric prompts in the step (G = 4 responses each)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--model", default=None, help="model path (default: the built-in tiny model)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from rubricrl.data.builtin import builtin_meta_eval, builtin_rubric_prompts
    from rubricrl.engines import HFEngine
    from rubricrl.judges import GradeRequest, LogprobJudge, run_meta_eval

    load_before = os.getloadavg()
    engine = HFEngine.from_path(args.model)
    prompts = builtin_rubric_prompts()[: args.prompts]
    groups = engine.generate(
        [p.prompt for p in prompts], G,
        max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0,
    )
    samples, requests = [], []
    for p, group in zip(prompts, groups):
        for s in group:
            samples.append(s)
            # as the trainer grades: with the sampled ids (the continue_rollout layout uses them)
            requests.append(GradeRequest(p.prompt, s.response_text, p.rubrics, group_id=p.prompt_id, response_ids=s.response_ids))
    judges = {layout: LogprobJudge(layout=layout, temperature=1.0) for layout in LAYOUTS}
    step: dict[str, dict] = {}
    times: dict[str, list[float]] = {layout: [] for layout in LAYOUTS}
    for round_ in range(args.rounds + 1):
        for layout, judge in judges.items():
            t0 = time.perf_counter()
            judge.grade(engine, requests)
            if round_ > 0:
                times[layout].append(time.perf_counter() - t0)
    for layout, judge in judges.items():
        step[layout] = token_counts(judge.prompt_encoder(engine.tokenizer), requests, samples)
        step[layout]["grade_s"] = statistics.median(times[layout])
        step[layout]["grade_times_s"] = times[layout]
    shape = {
        "prompts": len(prompts),
        "responses": len(samples),
        "judgments": sum(len(r.items) for r in requests),
        "response_tokens": [len(s.response_ids) for s in samples],
        "prompt_tokens": [len(g[0].prompt_ids) for g in groups],
    }

    rows = builtin_meta_eval()
    meta_eval = {}
    for layout, judge in judges.items():
        t0 = time.perf_counter()
        result = run_meta_eval(judge, engine, rows, return_verdicts=True)
        result["time_s"] = time.perf_counter() - t0
        meta_eval[layout] = result
    a, b = (meta_eval[layout]["verdicts"] for layout in LAYOUTS)
    agreement = sum(x == y for x, y in zip(a, b)) / len(rows)

    table = [
        "| layout | tokens (full prompts) | tokens (prefix-shared, HF) | tokens after the rollout's KV | text re-tokenizes to sampled ids | grade time (s) | meta-eval MF1 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for layout in LAYOUTS:
        s = step[layout]
        table.append(
            f"| {layout} | {s['tokens_full']} | {s['tokens_shared']} | {s['tokens_after_rollout']} "
            f"| {s['text_ids_match']:.2f} | {s['grade_s']:.3f} | {meta_eval[layout]['mf1']:.3f} |"
        )
    text = "\n".join(table) + f"\n\nverdict agreement between the layouts on {len(rows)} meta-eval rows: {agreement:.3f}\n"
    print(text)
    env = harness.environment()
    meta = {
        "what": "LogprobJudge prompt layouts: tokens per self-grading step, grading time (HFEngine), meta-eval MF1",
        "model": args.model or "built-in tiny model (random weights)",
        "dtype": "float32",
        "device": "cpu",
        "step_shape": shape,
        "rounds": args.rounds,
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
    }
    out_rows = [
        {"layout": layout, **step[layout], "meta_eval_mf1": meta_eval[layout]["mf1"],
         "meta_eval_f1_met": meta_eval[layout]["f1_met"], "meta_eval_f1_not_met": meta_eval[layout]["f1_not_met"],
         "meta_eval_time_s": meta_eval[layout]["time_s"], "meta_eval_verdicts": meta_eval[layout]["verdicts"]}
        for layout in LAYOUTS
    ]
    meta["verdict_agreement"] = agreement
    if not args.no_write:
        path = harness.write_results(NAME, meta, out_rows)
        path.with_suffix(".md").write_text(
            f"# {NAME}\n\n{meta['what']}. Model: {meta['model']}; threads {env['threads']}; load "
            f"{[round(x, 2) for x in meta['loadavg_before']]} -> {[round(x, 2) for x in meta['loadavg_after']]}; "
            f"torch {env['versions'].get('torch')}, transformers {env['versions'].get('transformers')}; step: "
            f"{shape['prompts']} prompts x {G} responses, {shape['judgments']} judgments.\n\n{text}"
        )
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
