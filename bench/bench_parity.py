"""Parity of rubricrl's loss family with the hosts' own losses: the figures behind the tests.

* verl 0.9.1: each registered ``rubricrl_<name>`` against verl's ``<name>`` (vanilla, gspo,
  cispo, sapo) on one batch, in every ``loss_agg_mode`` and ``global_batch_info`` setting,
  with and without ``rollout_is_weights``: the largest relative loss difference, relative
  grad-norm difference and absolute gradient difference over those settings.
* TRL 1.16: ``GRPOTrainer`` on the tiny model (2 layers, fp32, CPU, SGD, 2 optimizer steps
  of 2 accumulated micro-batches) as shipped, and with rubricrl's fused loss
  (``use_fused_logprobs(trainer, fused_loss=True)``): per loss type, the largest relative
  difference of the logged loss and grad norm over the steps and the largest absolute
  difference of any weight after the steps (SGD with lr 0.05, so a gradient difference
  of g shows as 0.05 g).

``python -m bench.bench_parity`` writes ``bench/results/parity.json`` and ``.md``.
These are correctness figures, not timings; the machine's load does not matter.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

VERL_LOSSES = ("vanilla", "gspo", "cispo", "sapo")
VERL_INFOS = [
    {},
    {"dp_size": 2, "batch_num_tokens": 61, "global_batch_size": 11, "loss_scale_factor": 16},
    {"dp_size": 4, "batch_num_tokens": 97, "global_batch_size": 19},
]
TRL_CASES = {
    "grpo": {"loss_type": "grpo"},
    "dapo": {"loss_type": "dapo"},
    "dr_grpo": {"loss_type": "dr_grpo"},
    "bnpo": {"loss_type": "bnpo"},
    "dapo+kl(bias-corrected)": {"loss_type": "dapo", "beta": 0.04},
    "cispo": {"loss_type": "cispo", "epsilon_high": 1.05},
    "sapo": {"loss_type": "sapo"},
    "gspo (grpo, sequence level)": {"loss_type": "grpo", "importance_sampling_level": "sequence",
                                    "epsilon": 3e-4, "epsilon_high": 4e-4},
    "luspo": {"loss_type": "luspo", "importance_sampling_level": "sequence"},
}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def verl_rows() -> list[dict]:
    from verl.trainer.ppo import core_algos
    from verl.workers.config.actor import ActorConfig

    from rubricrl.integrations import verl as rv

    g = torch.Generator().manual_seed(3)
    b, t = 6, 10
    lp = -torch.rand(b, t, generator=g) * 3
    old = lp + torch.randn(b, t, generator=g) * 0.4
    adv = torch.randn(b, 1, generator=g).expand(b, t).contiguous()
    mask = (torch.rand(b, t, generator=g) > 0.25).float()
    weights = torch.rand(b, t, generator=g) * 2
    rows = []
    for name in VERL_LOSSES:
        worst = {"loss_rel": 0.0, "grad_norm_rel": 0.0, "grad_max_abs": 0.0, "cases": 0}
        for mode in rv.VERL_AGG_MODES:
            for info in VERL_INFOS:
                for w in (None, weights):
                    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                                      clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
                    cfg.global_batch_info.update(info)
                    out = []
                    for fn in (name, f"rubricrl_{name}"):
                        x = lp.clone().requires_grad_()
                        loss, _ = core_algos.get_policy_loss_fn(fn)(old, x, adv, mask, mode, cfg,
                                                                     rollout_is_weights=w)
                        out.append((float(loss), torch.autograd.grad(loss, x)[0]))
                    (want, gw), (got, gg) = out
                    worst["loss_rel"] = max(worst["loss_rel"], _rel(got, want))
                    worst["grad_norm_rel"] = max(worst["grad_norm_rel"], _rel(float(gg.norm()), float(gw.norm())))
                    worst["grad_max_abs"] = max(worst["grad_max_abs"], float((gg - gw).abs().max()))
                    worst["cases"] += 1
        rows.append({"host": "verl 0.9.1", "loss": name, **worst})
    return rows


def trl_rows() -> list[dict]:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from rubricrl.integrations import trl as rt
    from rubricrl.models.tiny import build_tiny_model
    from rubricrl.models.tokenizer import load_builtin_tokenizer

    logging.getLogger("rubricrl.integrations.trl").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="rubricrl-parity-"))
    ckpt = tmp / "tiny"
    build_tiny_model(seed=0, num_hidden_layers=2).save_pretrained(ckpt)
    load_builtin_tokenizer().save_pretrained(ckpt)
    data = Dataset.from_list([{"prompt": f"Question {i}: say something."} for i in range(4)])

    def reward(prompts, completions, **kwargs):
        return [float(len(set(c))) for c in completions]

    def run(case: str, fused: bool):
        options = dict(output_dir=str(tmp / "out"), per_device_train_batch_size=2, num_generations=4,
                       gradient_accumulation_steps=2, steps_per_generation=4, max_completion_length=8, max_steps=2,
                       learning_rate=0.05, optim="sgd", logging_steps=1, report_to="none", use_cpu=True, bf16=False,
                       seed=0, save_strategy="no", disable_tqdm=True, num_iterations=2)
        options.update(TRL_CASES[case])
        trainer = GRPOTrainer(model=str(ckpt), reward_funcs=reward, args=GRPOConfig(**options), train_dataset=data,
                              processing_class=AutoTokenizer.from_pretrained(ckpt))
        if fused:
            rt.use_fused_logprobs(trainer, fused_loss=True)
        trainer.train()
        logs = [h for h in trainer.state.log_history if "grad_norm" in h]
        return logs, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    rows = []
    for case in TRL_CASES:
        (want, w_state), (got, g_state) = run(case, False), run(case, True)
        rows.append({
            "host": "TRL 1.16.0", "loss": case,
            "loss_rel": max(_rel(g["loss"], w["loss"]) for g, w in zip(got, want)),
            "grad_norm_rel": max(_rel(g["grad_norm"], w["grad_norm"]) for g, w in zip(got, want)),
            "weight_max_abs": max(float((g_state[k] - w_state[k]).abs().max()) for k in w_state),
            "loss_trl": [w["loss"] for w in want], "loss_rubricrl": [g["loss"] for g in got],
        })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| host | loss | max rel. loss diff | max rel. grad-norm diff | max abs. gradient diff | max abs. weight diff after 2 SGD steps |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        grad = f"{r['grad_max_abs']:.1e} ({r['cases']} settings)" if "grad_max_abs" in r else "—"
        weight = f"{r['weight_max_abs']:.1e}" if "weight_max_abs" in r else "—"
        lines.append(f"| {r['host']} | {r['loss']} | {r['loss_rel']:.1e} | {r['grad_norm_rel']:.1e} | {grad} | {weight} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="verl,trl", help="comma-separated: verl, trl")
    args = parser.parse_args(argv)
    import trl
    import verl

    import rubricrl

    rows = []
    if "verl" in args.hosts:
        rows += verl_rows()
    if "trl" in args.hosts:
        rows += trl_rows()
    meta = {"torch": torch.__version__, "trl": trl.__version__, "verl": verl.__version__,
            "rubricrl": getattr(rubricrl, "__version__", "?"), "dtype": "float32", "device": "cpu"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parity.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = markdown(rows)
    (RESULTS / "parity.md").write_text(f"Parity with the hosts' own losses ({meta}).\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
