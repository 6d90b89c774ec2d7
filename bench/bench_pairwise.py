"""Pairwise accuracy of the tiny model as a grader, before and after RL on preference pairs.

For each pair reward source (``patarm``: pointwise 0-10 judgments rewarded with PaTaRM's
preference-aware reward; ``pairwise_judge``: RM-R1-style "which is better, A or B",
rewarded 1 when right) this

1. builds the embedded tiny model (random weights);
2. optionally teaches it the output *format* with a short supervised warm-up whose answers
   are drawn at random (``--sft-steps``; the answers carry no preference, so any accuracy
   above chance later comes from RL). The random model never writes the tags by itself,
   so without it every reward is the same and RL has nothing to learn from (as with
   PaTaRM's and RM-R1's own SFT-then-RL recipes, which start from a model that knows the
   format);
3. measures pairwise accuracy on the 24 held-out pairs (``builtin:pairs-heldout``, never
   trained on) -- "before";
4. trains with ``rubricrl``'s ``Trainer`` on ``builtin:pairs`` for ``--minutes`` of wall time;
5. measures again -- "after".

Pairwise accuracy, two ways:

* **log-prob** (exact, fast; the headline): the judge prompt, then the format scaffold
  up to ``<answer>``, teacher-forced; the next-token distribution over the answer tokens.
  pairwise_judge: the share of judgments (each held-out pair in both orders, so 48) whose
  more likely letter is the chosen slot. patarm: the expected score ``sum_d d * p(d)``
  over the digits 0-9 of each response; the share of pairs with chosen > rejected
  (ties, |diff| <= 1e-6, counted apart).
* **sampled**: ``--eval-samples`` judgments per held-out prompt at T = 1 with the
  rollout's token budget, parsed exactly as in training; the parse rate, and the share of
  right letters (pairwise_judge) or of pairs whose mean chosen score is higher (patarm).

Writes ``bench/results/pairwise.json`` (every figure, per-step training metrics, threads,
load average, versions) and ``bench/results/pairwise.png``.

    python -m bench.bench_pairwise                         # both sources, 4 minutes of RL each
    python -m bench.bench_pairwise --sources patarm --minutes 1 --sft-steps 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.harness import RESULTS, environment

SOURCES = ("patarm", "pairwise_judge")
# What a judgment looks like up to the answer (the reasoning sections filled with "x"), the
# answer tokens the log-prob evaluation compares, and the text after the answer.
SCAFFOLD = {
    "pairwise_judge": ("<rubric>x</rubric><eval>x</eval><answer>", list("AB"), "</answer>"),
    "patarm": ("<think>x</think><generate_rubrics>x</generate_rubrics><eval>x</eval><answer>", [str(d) for d in range(10)], "</answer>"),
}
TIE_TOL = 1e-6


def _engine(seed: int):
    from rubricrl.engines.factory import make_engine

    return make_engine("hf", None, seed=seed, device="cpu")


def _heldout(source: str):
    """pairwise_judge: [(messages, chosen slot)] with each pair in both orders;
    patarm: [(chosen messages, rejected messages)]."""
    from rubricrl.pipeline.rewards import load_pairs
    from rubricrl.rewards.pairwise import build_pairwise_prompt, conversation_text
    from rubricrl.rewards.patarm_prompts import build_pointwise_prompt

    out = []
    for pair in load_pairs("builtin:pairs-heldout"):
        conv = conversation_text(pair.prompt)
        if source == "pairwise_judge":
            out.append(([{"role": "user", "content": build_pairwise_prompt(conv, pair.chosen, pair.rejected)}], "A"))
            out.append(([{"role": "user", "content": build_pairwise_prompt(conv, pair.rejected, pair.chosen)}], "B"))
        else:
            out.append(tuple([{"role": "user", "content": build_pointwise_prompt(conv, r, pair.task)}] for r in (pair.chosen, pair.rejected)))
    return out


def _answer_ids(tok, prefix: str, candidates: list[str]) -> list[int]:
    """The token id of each candidate right after ``prefix`` (each must be one token there)."""
    base = tok(prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for c in candidates:
        full = tok(prefix + c, add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise RuntimeError(f"{c!r} is not one token after {prefix!r}")
        ids.append(full[-1])
    return ids


@torch.no_grad()
def answer_probs(engine, prompts: list, source: str, batch_size: int = 8) -> torch.Tensor:
    """``[N, K]`` probabilities of the K answer tokens (renormalised over them) after each
    prompt plus the scaffold, teacher-forced."""
    from rubricrl.engines.prompts import encode_prompts

    tok = engine.tokenizer
    prefix, candidates, _ = SCAFFOLD[source]
    cand = torch.tensor(_answer_ids(tok, prefix, candidates))
    scaffold = tok(prefix, add_special_tokens=False)["input_ids"]
    rows = [ids + scaffold for ids in encode_prompts(tok, prompts)]
    weight, bias = engine.output_projection()
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        T = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), T), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for i, r in enumerate(chunk):  # left-padded: the last position is every row's last token
            ids[i, T - len(r) :] = torch.tensor(r)
            mask[i, T - len(r) :] = 1
        hidden = engine.hidden_states(ids.to(engine.device), mask.to(engine.device))[:, -1].float()
        logits = hidden @ weight.float().T + (0 if bias is None else bias.float())
        out.append(torch.softmax(logits[:, cand.to(logits.device)], dim=-1).cpu())
    return torch.cat(out)


def logprob_accuracy(engine, source: str) -> dict:
    items = _heldout(source)
    if source == "pairwise_judge":
        probs = answer_probs(engine, [m for m, _ in items], source)
        right = [float(probs[i, "AB".index(slot)] > probs[i, 1 - "AB".index(slot)]) for i, (_, slot) in enumerate(items)]
        p_right = [float(probs[i, "AB".index(slot)]) for i, (_, slot) in enumerate(items)]
        return {
            "judgments": len(items),
            "accuracy": statistics.fmean(right),
            "mean_p_right": statistics.fmean(p_right),
            "share_a": statistics.fmean(float(probs[i, 0] > probs[i, 1]) for i in range(len(items))),
        }
    probs = answer_probs(engine, [m for pair in items for m in pair], source)
    expected = (probs * torch.arange(10, dtype=probs.dtype)).sum(-1).view(-1, 2)
    diff = expected[:, 0] - expected[:, 1]
    return {
        "pairs": len(items),
        "accuracy": float((diff > TIE_TOL).double().mean()),
        "ties": int((diff.abs() <= TIE_TOL).sum()),
        "mean_score_gap": float(diff.mean()),
        "mean_score": float(expected.mean()),
    }


def sampled_accuracy(engine, source: str, samples: int, max_new_tokens: int, seed: int) -> dict:
    from rubricrl.rewards.pairwise import parse_pairwise
    from rubricrl.rewards.patarm import parse_judgment, vote

    items = _heldout(source)
    if source == "pairwise_judge":
        out = engine.generate([m for m, _ in items], samples, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
        choices = [[parse_pairwise(s.response_text).choice for s in group] for group in out]
        flat = [(c, slot) for group, (_, slot) in zip(choices, items) for c in group]
        return {
            "judgments": len(flat),
            "parse_rate": statistics.fmean(c is not None for c, _ in flat),
            "accuracy": statistics.fmean(c == slot for c, slot in flat),
        }
    out = engine.generate([m for pair in items for m in pair], samples, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    scores = [[parse_judgment(s.response_text).score for s in group] for group in out]
    means = [(vote(scores[2 * i]), vote(scores[2 * i + 1])) for i in range(len(items))]
    judged = [(c, r) for c, r in means if c is not None and r is not None]
    return {
        "pairs": len(items),
        "parse_rate": statistics.fmean(s is not None for group in scores for s in group),
        "judged_pairs": len(judged),
        # share of ALL held-out pairs judged right (a pair without valid scores on both sides counts as wrong)
        "accuracy": sum(c - r > TIE_TOL for c, r in judged) / len(items),
    }


def format_sft(engine, source: str, steps: int, lr: float, seed: int, batch_size: int = 8) -> list[float]:
    """Supervised warm-up on the format alone: train prompts, targets = scaffold + a
    *random* answer + ``</answer>`` + end of turn. Returns the loss per step."""
    from rubricrl.config import load_config
    from rubricrl.engines.prompts import encode_prompts
    from rubricrl.models.tokenizer import IM_END
    from rubricrl.pipeline.rewards import make_reward_source

    if steps <= 0:
        return []
    tok = engine.tokenizer
    prefix, candidates, suffix = SCAFFOLD[source]
    config = load_config(None, [f"reward.source={source}", "data.dataset=builtin:pairs", "model.device=cpu"])
    pool = make_reward_source(source, config).pools()[0][0]  # the training prompts RL will see
    prompt_ids = encode_prompts(tok, [p.messages for p in pool])
    end = tok.convert_tokens_to_ids(IM_END)
    rng = random.Random(seed)
    model = engine.model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        rows, labels = [], []
        for k in rng.sample(range(len(pool)), batch_size):
            target = tok(prefix + rng.choice(candidates) + suffix, add_special_tokens=False)["input_ids"] + [end]
            rows.append(prompt_ids[k] + target)
            labels.append([-100] * len(prompt_ids[k]) + target)
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
        lab = torch.full((len(rows), T), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, (r, l) in enumerate(zip(rows, labels)):
            ids[i, : len(r)], lab[i, : len(l)], mask[i, : len(r)] = torch.tensor(r), torch.tensor(l), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def run_source(source: str, args) -> dict:
    from rubricrl.config import load_config
    from rubricrl.trainer import Trainer

    torch.manual_seed(args.seed)
    engine = _engine(args.seed)
    tok = engine.tokenizer
    prefix, _, suffix = SCAFFOLD[source]
    max_new = len(tok(prefix + "10" + suffix, add_special_tokens=False)["input_ids"]) + args.slack_tokens
    result: dict = {"source": source, "max_new_tokens": max_new}
    result["random_model"] = {"logprob": logprob_accuracy(engine, source)}
    t0 = time.perf_counter()
    result["sft_losses"] = format_sft(engine, source, args.sft_steps, args.sft_lr, args.seed, args.sft_batch)
    result["sft_seconds"] = time.perf_counter() - t0
    result["before"] = {
        "logprob": logprob_accuracy(engine, source),
        "sampled": sampled_accuracy(engine, source, args.eval_samples, max_new, args.seed + 1),
    }
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(
            None,
            [
                f"reward.source={source}",
                "data.dataset=builtin:pairs",
                f"data.prompts_per_step={args.prompts_per_step}",
                f"rollout.n={args.n}",
                f"rollout.max_new_tokens={max_new}",
                f"optim.lr={args.lr}",
                "optim.weight_decay=0.0",
                f"optim.micro_batch_size={args.prompts_per_step * args.n}",
                "model.device=cpu",
                f"trainer.seed={args.seed}",
                "trainer.steps=100000",
                "trainer.checkpoint_every=0",
                "trainer.save_final=false",
                "trainer.progress=false",
                "trainer.plot=false",
                f"trainer.out_dir={tmp}",
            ],
        )
        trainer = Trainer(config, engine=engine)
        records = []
        t0 = time.perf_counter()
        try:
            while time.perf_counter() - t0 < args.minutes * 60:
                records.append(trainer.step())
        finally:
            trainer.close()
        result["rl_seconds"] = time.perf_counter() - t0
    keys = ("step", "reward_mean", "reward_std", "unparsed_judgments", "pair_accuracy", "pairwise_accuracy", "answered_a",
            "dropped_groups", "trained_responses", "step_s")  # fmt: skip
    result["steps"] = [{k: r.get(k) for k in keys if k in r} for r in records]
    result["after"] = {
        "logprob": logprob_accuracy(engine, source),
        "sampled": sampled_accuracy(engine, source, args.eval_samples, max_new, args.seed + 1),
    }
    rewards = [r["reward_mean"] for r in records if r["reward_mean"] is not None]
    k = min(10, len(rewards) // 2) or 1
    result["reward_first_mean"] = statistics.fmean(rewards[:k]) if rewards else None
    result["reward_last_mean"] = statistics.fmean(rewards[-k:]) if rewards else None
    result["reward_window"] = k
    return result


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.5 * len(results), 7), squeeze=False)
    for col, res in enumerate(results):
        steps = [r["step"] for r in res["steps"]]
        axes[0][col].plot(steps, [r["reward_mean"] for r in res["steps"]], lw=1)
        axes[0][col].set_title(f"{res['source']}: training reward per step")
        axes[0][col].set_xlabel("step")
        labels = ["random", "before RL", "after RL"]
        lp = [res["random_model"]["logprob"]["accuracy"], res["before"]["logprob"]["accuracy"], res["after"]["logprob"]["accuracy"]]
        sm = [float("nan"), res["before"]["sampled"]["accuracy"], res["after"]["sampled"]["accuracy"]]
        x = range(len(labels))
        axes[1][col].bar([i - 0.2 for i in x], lp, width=0.4, label="log-prob")
        axes[1][col].bar([i + 0.2 for i in x], sm, width=0.4, label="sampled")
        axes[1][col].axhline(0.5, color="grey", ls="--", lw=1)
        axes[1][col].set_xticks(list(x), labels)
        axes[1][col].set_ylim(0, 1)
        axes[1][col].set_title("held-out pairwise accuracy")
        axes[1][col].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--minutes", type=float, default=4.0, help="wall time of RL per source")
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n", type=int, default=4, help="rollout.n (judgments per prompt)")
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--slack-tokens", type=int, default=4, help="rollout tokens beyond the scaffolded answer")
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "pairwise.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {**environment(), "loadavg_start": os.getloadavg()}
    results = []
    for source in args.sources:
        res = run_source(source, args)
        res["loadavg_end"] = os.getloadavg()
        results.append(res)
        b, a = res["before"], res["after"]
        print(
            f"{source}: {len(res['steps'])} RL steps in {res['rl_seconds']:.0f} s; held-out accuracy (log-prob) "
            f"{b['logprob']['accuracy']:.3f} -> {a['logprob']['accuracy']:.3f}, (sampled) {b['sampled']['accuracy']:.3f} -> "
            f"{a['sampled']['accuracy']:.3f}, parse rate {b['sampled']['parse_rate']:.2f} -> {a['sampled']['parse_rate']:.2f}; "
            f"reward first/last {res['reward_window']} steps {res['reward_first_mean']} -> {res['reward_last_mean']}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, "args": vars(args), "model": "embedded tiny model (random weights, seed --seed), float32, cpu", "results": results}
    out.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    _plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
