"""rubricrl.integrations.verl against verl 0.9.1 itself, on CPU.

* the registered ``rubricrl_<name>`` against verl's ``<name>`` (vanilla, gspo, cispo, sapo):
  every loss_agg_mode, with and without ``global_batch_info`` and ``rollout_is_weights``,
  loss, gradient and metrics;
* ``linear_cross_entropy`` against a float64 reference, and inside verl's own
  fused-kernel forward (``patch_forward_with_backends``), where verl's kernel fails on CPU;
* ``compute_score`` / ``compute_score_batch`` on the shipped rubric data, called the way
  verl's reward loader calls a custom reward function.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

core_algos = pytest.importorskip(
    "verl.trainer.ppo.core_algos", reason="verl is not importable (pip install --no-deps verl==0.9.1 and its peers)"
)
from verl.workers.config.actor import ActorConfig  # noqa: E402

from rubricrl.data.builtin import builtin_rubric_prompts  # noqa: E402
from rubricrl.integrations import verl as rv  # noqa: E402
from rubricrl.models.tiny import build_tiny_model  # noqa: E402
from rubricrl.models.tokenizer import load_builtin_tokenizer  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"

GLOBAL_INFOS = [
    {},
    {"dp_size": 2, "batch_num_tokens": 61, "global_batch_size": 11, "loss_scale_factor": 16},
    {"dp_size": 4, "batch_num_tokens": torch.tensor(97), "global_batch_size": 19},
    {"dp_size": 1, "batch_num_tokens": 40, "global_batch_size": 7, "loss_scale_factor": 12.5},
]


def actor_config(info: dict) -> ActorConfig:
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                      clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    cfg.global_batch_info.update(info)
    return cfg


def batch(seed: int, b: int = 6, t: int = 10):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=g) * 3
    old = lp + torch.randn(b, t, generator=g) * 0.4  # ratios well outside the clip range too
    adv = torch.randn(b, t, generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.25).float()
    mask[2] = 0  # an empty response
    weights = torch.rand(b, t, generator=g) * 2  # truncated IS weights lie in [0, cap]
    return lp, old, adv, mask, weights


LOSS_NAMES = ["vanilla", "gspo", "cispo", "sapo"]


def test_registered_names():
    for name in LOSS_NAMES:
        assert f"rubricrl_{name}" in core_algos.POLICY_LOSS_REGISTRY
        assert core_algos.get_policy_loss_fn(f"rubricrl_{name}").__name__ == f"rubricrl_{name}"


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("mode", rv.VERL_AGG_MODES)
@pytest.mark.parametrize("info", GLOBAL_INFOS, ids=["no-info", "dp2", "dp4-tensor", "float-scale"])
@pytest.mark.parametrize("with_is", [False, True], ids=["no-is", "is-weights"])
def test_rubricrl_loss_equals_verl_loss(name, mode, info, with_is):
    lp, old, adv, mask, weights = batch(seed=3)
    if name in ("gspo", "sapo"):  # one advantage per response, as GRPO gives (GSPO's ratio is per response)
        adv = adv[:, :1].expand_as(adv).contiguous()
    weights = weights if with_is else None
    cfg = actor_config(info)
    x = lp.clone().requires_grad_()
    want, want_m = core_algos.get_policy_loss_fn(name)(old, x, adv, mask, mode, cfg, rollout_is_weights=weights)
    (want_grad,) = torch.autograd.grad(want, x)
    y = lp.clone().requires_grad_()
    got, got_m = core_algos.get_policy_loss_fn(f"rubricrl_{name}")(old, y, adv, mask, mode, cfg,
                                                                    rollout_is_weights=weights)
    (grad,) = torch.autograd.grad(got, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-8)
    assert set(got_m) == set(want_m)
    for key in want_m:  # |lp - old| < 20 and every weight > 0: the metrics agree too
        assert got_m[key] == pytest.approx(want_m[key], rel=1e-5, abs=1e-7), key


def test_missing_global_info_raises_like_verl():
    lp, old, adv, mask, _ = batch(seed=4)
    cfg = actor_config({"dp_size": 2})
    for mode, key in [("token-mean", "batch_num_tokens"), ("seq-mean-token-mean", "global_batch_size")]:
        with pytest.raises(ValueError, match="required"):
            core_algos.get_policy_loss_fn("vanilla")(old, lp, adv, mask, mode, cfg)
        with pytest.raises(ValueError, match=key):
            core_algos.get_policy_loss_fn("rubricrl_vanilla")(old, lp, adv, mask, mode, cfg)


def test_bad_inputs_are_named():
    lp, old, adv, mask, weights = batch(seed=5)
    cfg = actor_config({})
    with pytest.raises(ValueError, match="rollout_is_weights must have"):
        rv.policy_loss("vanilla", old, lp, adv, mask, "token-mean", cfg, weights[:, :3])
    with pytest.raises(ValueError, match="loss_agg_mode must be one of"):
        rv.policy_loss("vanilla", old, lp, adv, mask, "seq-sum", cfg)
    with pytest.raises(NotImplementedError, match="'clip_cov' has no rubricrl implementation"):
        rv.policy_loss("clip_cov", old, lp, adv, mask, "token-mean", cfg)


# ---- linear_cross_entropy -----------------------------------------------------------------


def reference_logprobs(hidden, weight, labels, temperature):
    logits = (hidden.double() @ weight.double().T) / temperature
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    return lp.reshape(-1), ent.reshape(-1)


@pytest.mark.parametrize("shape", [(3, 7), (21,)], ids=["BTH", "NH"])
def test_linear_cross_entropy_matches_float64(shape):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(*shape, 32, generator=g, requires_grad=True)
    weight = (torch.randn(300, 32, generator=g) * 0.3).requires_grad_()
    labels = torch.randint(0, 300, shape, generator=g)
    lp, ent = rv.linear_cross_entropy(hidden, weight, labels, 0.7)
    assert lp.shape == ent.shape == (labels.numel(),) and lp.dtype == ent.dtype == torch.float32
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    want_lp, want_ent = reference_logprobs(h64, w64, labels, 0.7)
    torch.testing.assert_close(lp.double(), want_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent.double(), want_ent, rtol=1e-5, atol=1e-5)
    cot_lp, cot_ent = torch.randn_like(lp), torch.randn_like(ent)
    gh, gw = torch.autograd.grad((lp * cot_lp).sum() + (ent * cot_ent).sum(), (hidden, weight))
    wh, ww = torch.autograd.grad((want_lp * cot_lp.double()).sum() + (want_ent * cot_ent.double()).sum(), (h64, w64))
    torch.testing.assert_close(gh.double(), wh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw.double(), ww, rtol=1e-4, atol=1e-5)


def test_linear_cross_entropy_rejects_what_it_cannot_do():
    h, w, y = torch.randn(4, 8), torch.randn(16, 8), torch.randint(0, 16, (4,))
    with pytest.raises(NotImplementedError, match="reduction='mean'"):
        rv.linear_cross_entropy(h, w, y, 1.0, "mean")


@pytest.fixture
def verl_patched_model():
    """The tiny model with verl's fused-kernel forward (triton backend); the class is restored after."""
    from verl.models.transformers.monkey_patch import patch_forward_with_backends

    model = build_tiny_model(seed=0)
    cls = type(model)
    saved = cls.forward
    try:
        patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="triton")
        yield model
    finally:
        cls.forward = saved


def test_verl_fused_forward_runs_on_cpu_with_rubricrl_head(verl_patched_model):
    model = verl_patched_model
    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with pytest.raises(Exception, match="NVTX"):  # verl's own kernel on a CPU build of torch
        model(input_ids=ids, return_dict=True, temperature=1.0)
    with rv.use_fused_head():
        out = model(input_ids=ids, return_dict=True, temperature=0.8)
        out.log_probs.sum().backward()
    hidden = model.model(input_ids=ids).last_hidden_state
    want_lp, want_ent = reference_logprobs(hidden, model.lm_head.weight, torch.roll(ids, -1, -1), 0.8)
    torch.testing.assert_close(out.log_probs.double().reshape(-1), want_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.entropy.double().reshape(-1), want_ent, rtol=1e-5, atol=1e-5)
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    from verl.utils.kernel import linear_cross_entropy as module  # restored after the block

    assert module.linear_cross_entropy is not rv.linear_cross_entropy


# ---- rubric reward ------------------------------------------------------------------------


def verl_rows(n: int):
    prompts = builtin_rubric_prompts()[:n]
    return [
        ("rubric", f"Answer {i}: call emergency services now.", [item.to_dict() for item in p.rubrics],
         {"prompt": p.prompt, "index": i})
        for i, p in enumerate(prompts)
    ]


def reference_scores(rows):
    """The same grading done directly with rubricrl's judge on the tiny model."""
    from rubricrl.engines import HFEngine
    from rubricrl.judges import GradeRequest, make_judge
    from rubricrl.data.rubrics import RubricItem

    engine = HFEngine(build_tiny_model(seed=0), load_builtin_tokenizer())
    reqs = [GradeRequest(extra["prompt"], text, [RubricItem(**it) for it in rubric], group_id=str(i))
            for i, (_, text, rubric, extra) in enumerate(rows)]
    return [r.score for r in make_judge("logprob").grade(engine, reqs)]


def test_compute_score_batch_as_verl_calls_it():
    from verl.trainer.ppo.reward import _call_with_kwargs  # how get_custom_reward_fn wraps a custom function

    rows = verl_rows(3)
    rv._GRADER.clear()
    out = _call_with_kwargs(rv.compute_score_batch, {"model_path": None},
                            data_sources=[r[0] for r in rows], solution_strs=[r[1] for r in rows],
                            ground_truths=[r[2] for r in rows], extra_infos=[r[3] for r in rows])
    want = reference_scores(rows)
    assert [o["rubric_ungraded"] for o in out] == [0.0, 0.0, 0.0]
    assert [o["score"] for o in out] == pytest.approx(want, abs=1e-6)
    single = _call_with_kwargs(rv.compute_score, {}, data_source=rows[1][0], solution_str=rows[1][1],
                               ground_truth=rows[1][2], extra_info=rows[1][3])
    assert single["score"] == pytest.approx(want[1], abs=1e-6)


def test_compute_score_with_a_live_model_restores_it():
    model = build_tiny_model(seed=0).train()
    model.model.layers[0].eval()  # a mixed-mode model comes back mixed
    model.lm_head.weight.requires_grad_(False)
    rv.set_grader(model, load_builtin_tokenizer())
    try:
        rows = verl_rows(2)
        out = rv.compute_score_batch(*map(list, zip(*rows)))
    finally:
        rv._GRADER.clear()
    assert [o["score"] for o in out] == pytest.approx(reference_scores(rows), abs=1e-6)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    assert not model.lm_head.weight.requires_grad and model.model.embed_tokens.weight.requires_grad


def test_compute_score_names_bad_rows():
    rows = verl_rows(1)
    with pytest.raises(ValueError, match=r"row 0: extra_info must be a dict"):
        rv.compute_score("rubric", "text", rows[0][2], None)
    with pytest.raises(ValueError, match=r"row 0.ground_truth\[1\].points"):
        bad = [dict(rows[0][2][0]), {"criterion": "x", "points": True}]
        rv.compute_score("rubric", "text", bad, rows[0][3])


def readme_snippet(host: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- snippet:{host} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README.md has no <!-- snippet:{host} --> python block"
    return m.group(1)


def test_readme_verl_snippet_runs(verl_patched_model, monkeypatch):
    code = readme_snippet("verl")
    assert len([line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]) <= 10
    namespace: dict = {}
    exec(compile(code, "README.md:verl", "exec"), namespace)
    assert "rubricrl_vanilla" in core_algos.POLICY_LOSS_REGISTRY
