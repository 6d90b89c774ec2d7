"""rubricrl.integrations.trl inside TRL 1.16's own GRPOTrainer, on CPU with the tiny model.

Each parity case trains the same tiny checkpoint for 2 optimizer steps (2 micro-batches
of accumulation each; one generation of 2 groups of 4, shuffled by TRL and split over
the 2 steps, so a step's loss is not 0 by symmetry and step 2 is off-policy) three ways
from the same seed: TRL as shipped, TRL with rubricrl's fused log-probs, and TRL with
rubricrl's fused loss; the logged loss and grad norm of every step must agree within 1e-5
(relative). TRL's own path is the reference. Plain SGD: Adam's first step moves every weight
by ~lr whatever the size of its gradient, so fp32 rounding in near-zero gradients would
make step 2 start from weights that differ by ~lr.
"""

from __future__ import annotations

import ast
import logging
import math
import re
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -r requirements-peers.txt)")
from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from rubricrl.data.builtin import builtin_rubric_prompts  # noqa: E402
from rubricrl.engines import HFEngine  # noqa: E402
from rubricrl.integrations import trl as rt  # noqa: E402
from rubricrl.judges import GradeRequest, make_judge  # noqa: E402
from rubricrl.models.tiny import build_tiny_model  # noqa: E402
from rubricrl.models.tokenizer import load_builtin_tokenizer  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = {"num_hidden_layers": 2}  # two layers keep each 2-step run to seconds


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_model(seed=0, **TINY).save_pretrained(path)
    load_builtin_tokenizer().save_pretrained(path)
    return str(path)


def distinct_chars(prompts, completions, **kwargs):
    """A reward that varies across completions (so advantages are non-zero)."""
    return [float(len(set(c))) for c in completions]


def make_trainer(checkpoint, tmp_path, reward_funcs=distinct_chars, dataset=None, **overrides):
    options = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, num_generations=4,
        gradient_accumulation_steps=2, steps_per_generation=4, max_completion_length=8, max_steps=2, learning_rate=0.05, optim="sgd",
        logging_steps=1, report_to="none", use_cpu=True, bf16=False, seed=0, save_strategy="no",
        disable_tqdm=True,
    )
    options.update(overrides)
    dataset = dataset or Dataset.from_list([{"prompt": f"Question {i}: say something."} for i in range(4)])
    return GRPOTrainer(model=checkpoint, reward_funcs=reward_funcs, args=GRPOConfig(**options),
                       train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(checkpoint))


def train_log(trainer):
    trainer.train()
    return [h for h in trainer.state.log_history if "grad_norm" in h]


CASES = {
    "dapo": {"loss_type": "dapo"},
    "grpo": {"loss_type": "grpo"},
    "dr_grpo": {"loss_type": "dr_grpo"},
    "bnpo": {"loss_type": "bnpo"},
    # two iterations (old log-probs, ratios != 1), the k3 KL to a reference model (without
    # TRL's default bias correction, which falls back), DAPO's clip-higher and TRL's
    # two-sided clip (delta, rubricrl's dual clip)
    "dapo-kl-iter2-delta": {"loss_type": "dapo", "beta": 0.04, "use_bias_correction_kl": False,
                            "num_iterations": 2, "epsilon_high": 0.28, "delta": 1.5},
    # on-policy (one generation per step): TRL has no old log-probs, the ratio is 1; each step
    # sees whole groups of equal length, so the loss is 0 by symmetry: only gradients compare
    "dapo-onpolicy": {"loss_type": "dapo", "steps_per_generation": 2},
    "grpo-onpolicy": {"loss_type": "grpo", "steps_per_generation": 2},
    # the loss family: CISPO (TRL's epsilon_high is the cap), SAPO, GSPO (sequence-level
    # ratio, with two iterations so the ratios differ from 1), LUSPO, the bias-corrected KL
    "cispo-iter2": {"loss_type": "cispo", "epsilon_high": 1.05, "num_iterations": 2},
    "sapo-iter2": {"loss_type": "sapo", "num_iterations": 2},
    "gspo-iter2": {"loss_type": "grpo", "importance_sampling_level": "sequence", "num_iterations": 2,
                   "epsilon": 3e-4, "epsilon_high": 4e-4},
    "luspo-iter2": {"loss_type": "luspo", "importance_sampling_level": "sequence", "num_iterations": 2},
    "dapo-kl-biascorr-iter2": {"loss_type": "dapo", "beta": 0.04, "num_iterations": 2},
}


@pytest.fixture(scope="module")
def trl_logs(checkpoint, tmp_path_factory):
    """TRL's own path, once per case."""
    cache = {}

    def get(case):
        if case not in cache:
            cache[case] = train_log(make_trainer(checkpoint, tmp_path_factory.mktemp(case), **CASES[case]))
        return cache[case]

    return get


def assert_same_steps(got, want, case):
    assert len(got) == len(want) == 2
    for g, w in zip(got, want):
        if "onpolicy" in case:  # 0 by symmetry, up to fp32 rounding of sums of +-A
            assert abs(g["loss"]) < 1e-6 and abs(w["loss"]) < 1e-6
        else:
            assert abs(w["loss"]) > 1e-4  # a loss that is 0 by symmetry would compare nothing
            assert g["loss"] == pytest.approx(w["loss"], rel=1e-5)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5)
        assert g["entropy"] == pytest.approx(w["entropy"], rel=1e-5)
        for key in ("kl", "clip_ratio/region_mean", "clip_ratio/low_min", "clip_ratio/high_max"):
            if key in w:
                assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("fused_loss", [False, True], ids=["fused-logprobs", "fused-loss"])
def test_grpo_trainer_matches_trl(case, fused_loss, checkpoint, tmp_path, trl_logs, caplog):
    trainer = rt.use_fused_logprobs(make_trainer(checkpoint, tmp_path, **CASES[case]), fused_loss=fused_loss)
    assert trainer.model._rubricrl_fused_head
    with caplog.at_level(logging.WARNING, logger="rubricrl.integrations.trl"):
        got = train_log(trainer)
    assert "TRL's own loss" not in caplog.text  # every case here maps onto the fused loss
    assert_same_steps(got, trl_logs(case), case)


def test_unmapped_loss_type_falls_back_to_trl_loss(checkpoint, tmp_path, caplog):
    trainer = rt.use_fused_logprobs(make_trainer(checkpoint, tmp_path, loss_type="vespo"), fused_loss=True)
    with caplog.at_level(logging.WARNING, logger="rubricrl.integrations.trl"):
        got = train_log(trainer)
    assert caplog.text.count("loss_type='vespo' has no fused form") == 1  # logged once, not per step
    want = train_log(make_trainer(checkpoint, tmp_path / "ref", loss_type="vespo"))
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5, abs=1e-9)
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=1e-5)


@pytest.mark.parametrize("overrides, reason", [
    ({"importance_sampling_level": "sequence", "loss_type": "sapo"}, "loss_type='sapo' with importance"),
    ({"loss_type": "cispo", "epsilon_high": 0.2}, "cispo with epsilon_high=0.2 < 1"),
    ({"top_entropy_quantile": 0.5}, "top_entropy_quantile < 1"),
    ({"entropy_coef": 0.01}, "entropy bonus"),
    ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold"),
    ({"beta": 0.04, "importance_sampling_level": "sequence"}, "use_bias_correction_kl at importance"),
])
def test_fallback_reasons(overrides, reason, checkpoint, tmp_path):
    trainer = rt.use_fused_logprobs(make_trainer(checkpoint, tmp_path, **overrides), fused_loss=True)
    assert reason in rt._fallback_reason(trainer, {})


def test_loss_type_table_covers_trl():
    from trl.trainer.grpo_config import GRPOConfig as Config

    help_text = Config.__dataclass_fields__["loss_type"].metadata["help"]
    trl_types = set(re.findall(r"'([a-z_]+)'", help_text.split("Supported values are")[1].split(".")[0]))
    assert trl_types == set(rt.LOSS_TYPES)


def test_use_fused_logprobs_rejects_other_objects():
    with pytest.raises(TypeError, match="expects a trl.GRPOTrainer"):
        rt.use_fused_logprobs(object())


# ---- rubric_reward ------------------------------------------------------------------------


def rubric_rows(n):
    return [{"prompt": p.prompt, "rubric": [item.to_dict() for item in p.rubrics]}
            for p in builtin_rubric_prompts()[:n]]


def test_rubric_reward_grades_with_the_trainer_model(checkpoint, tmp_path):
    rows = rubric_rows(3)
    reward = rt.rubric_reward("rubric")
    trainer = make_trainer(checkpoint, tmp_path, reward_funcs=reward, dataset=Dataset.from_list(rows))
    with pytest.raises(RuntimeError, match="not bound"):
        reward(prompts=[rows[0]["prompt"]], completions=["x"], rubric=[rows[0]["rubric"]])
    reward.bind(trainer)
    model = trainer.model
    model.train()
    model.model.layers[1].eval()
    model.lm_head.weight.requires_grad_(False)
    prompts = [r["prompt"] for r in rows for _ in range(2)]
    completions = [[{"role": "assistant", "content": f"Reply {i}: call a doctor now."}] for i in range(6)]
    rubrics = [r["rubric"] for r in rows for _ in range(2)]
    got = reward(prompts=prompts, completions=completions, rubric=rubrics, trainer_state=None)
    # left as found: mixed train/eval modules, requires_grad, device
    assert model.training and model.model.layers[0].training and not model.model.layers[1].training
    assert not model.lm_head.weight.requires_grad and model.model.embed_tokens.weight.requires_grad
    # the reference: rubricrl's judge on a fresh copy of the same weights
    from rubricrl.data.rubrics import RubricItem

    engine = HFEngine(build_tiny_model(seed=0, **TINY), load_builtin_tokenizer())
    reqs = [GradeRequest(p, c[0]["content"], [RubricItem(**it) for it in r], group_id=str(i // 2))
            for i, (p, c, r) in enumerate(zip(prompts, completions, rubrics))]
    want = [res.score for res in make_judge("logprob").grade(engine, reqs)]
    assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="no column 'rubric'"):
        reward(prompts=prompts[:1], completions=completions[:1], other=[1])
    with pytest.raises(ValueError, match=r"rubric\[0\]\[0\].criterion"):
        reward(prompts=prompts[:1], completions=completions[:1], rubric=[[{"points": 1}]])


def test_rubric_reward_in_training_keeps_train_mode(checkpoint, tmp_path):
    """Self-grading inside TRL's loop: the model stays in train mode (no eval metrics, GA scaling kept)."""
    seen = []

    def probe(prompts, completions, **kwargs):
        seen.append(trainer.model.training)
        return [0.0] * len(prompts)

    trainer = make_trainer(checkpoint, tmp_path, reward_funcs=[rt.rubric_reward("rubric"), probe],
                           dataset=Dataset.from_list(rubric_rows(2)), max_steps=1)
    rt.use_fused_logprobs(trainer, fused_loss=True)
    log = train_log(trainer)
    assert seen and all(seen)
    assert math.isfinite(log[0]["rewards/rubric_reward/mean"])
    assert not any(k.startswith("eval_") for h in trainer.state.log_history for k in h)


# ---- README ---------------------------------------------------------------------------------


def readme_snippet(host: str) -> str:
    m = re.search(rf"<!-- snippet:{host} -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert m, f"README.md has no <!-- snippet:{host} --> python block"
    return m.group(1)


def test_readme_trl_snippet_runs(tmp_path, monkeypatch):
    code = readme_snippet("trl")
    assert len(ast.parse(code).body) <= 10  # statements of user code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md:trl", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1 and trainer.model._rubricrl_fused_head
