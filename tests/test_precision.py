"""Reduced precision (bf16, fp16) end to end on the CPU: the split attention, ``rubricrl
grade``, ``rubricrl meta-eval`` and a training step with the real (logprob) judge, and the
fp32 master weights of the update.

Tolerances on p(met) against the fp32 model (tiny model, T = 0.6): bf16 keeps 8 mantissa
bits (unit roundoff 2^-9 ~ 2e-3), fp16 11 (2^-12 ~ 2.4e-4 ... 4.9e-4); through 2 layers,
the final norm and the verdict logits the measured worst case on the 181 items of the
example file was 1.2e-3 (bf16) and 2.0e-4 (fp16). The bounds below are 8-10x that.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from rubricrl.cli.grade import build_example_rows, main_grade
from rubricrl.cli.meta_eval import main_meta_eval
from rubricrl.data.builtin import builtin_meta_eval
from rubricrl.engines import HFEngine
from rubricrl.engines.split_attention import SplitAttention, split_attention_forward
from rubricrl.judges import LogprobJudge
from rubricrl.judges.meta_eval import meta_eval_requests
from rubricrl.trainer import Trainer
from tests.test_split_attention import _reference_attention
from tests.test_trainer_helpers import StubJudge, tiny_config

#: max |p_met(dtype) - p_met(fp32)|
P_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}
#: max |attention(dtype) - float64 reference on the same rounded inputs|, outputs of size ~1
ATTN_TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}
LOW = [torch.bfloat16, torch.float16]
IDS = ["bf16", "fp16"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", LOW, ids=IDS)
@pytest.mark.parametrize("packed", [False, True], ids=["causal-rows", "packed-segments"])
def test_split_attention_keeps_the_input_dtype(dtype, packed):
    """The merge of the two partial attentions (whose log-sum-exps the kernel returns in
    fp32) must hand the model its own dtype back: the next projection is in that dtype."""
    from rubricrl.engines.hf import _segment_split

    torch.manual_seed(1)
    batch, heads, kv_heads, past, length, dim = 2, 4, 2, 5, 6, 8
    q = torch.randn(batch, heads, length, dim).to(dtype)
    k = torch.randn(batch, kv_heads, past + length, dim).to(dtype)
    v = torch.randn(batch, kv_heads, past + length, dim).to(dtype)
    context = torch.ones(batch, past, dtype=torch.long)
    context[1, 1:3] = 0
    steps = torch.arange(length)
    if packed:
        seg = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 1, -1, -1]])
        spec, _ = _segment_split(torch.cat([context, (seg >= 0).long()], dim=1), seg, past, dtype)
        own = (seg[:, :, None] == seg[:, None, :]) & (steps[:, None] >= steps[None, :])
        real = seg >= 0
    else:
        bias = torch.zeros(batch, 1, 1, past, dtype=dtype).masked_fill(~context.bool()[:, None, None], float("-inf"))
        spec = SplitAttention(past, bias)
        own = (steps[:, None] >= steps[None, :]).expand(batch, length, length)
        real = torch.ones(batch, length, dtype=torch.bool)
    got, _ = split_attention_forward(None, q, k, v, spec, scaling=dim**-0.5)
    assert got.dtype == dtype
    allowed = torch.cat([context.bool()[:, None, :].expand(batch, length, past), own], dim=2)
    ref = _reference_attention(q.double(), k.double(), v.double(), allowed, dim**-0.5)
    torch.testing.assert_close(got[real].double(), ref[real], atol=ATTN_TOL[dtype], rtol=0)


def _example(tmp_path, rows=3):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in build_example_rows(rows)))
    return path


def _p_met(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return torch.tensor([it["p_met"] for r in rows for g in r["grades"] for it in g["items"]], dtype=torch.float64)


@pytest.mark.parametrize("share", [True, False], ids=["shared", "unshared"])
def test_grade_cli_in_reduced_precision_matches_fp32(tmp_path, share):
    """``rubricrl grade --dtype bfloat16/float16`` grades every item (no failure), with
    p(met) within the stated tolerance of the fp32 model's."""
    src = _example(tmp_path)
    extra = [] if share else ["--no-share-prefix"]
    p = {}
    for name in ("float32", "bfloat16", "float16"):
        out = tmp_path / f"{name}.jsonl"
        assert main_grade([str(src), "--out", str(out), "--dtype", name, "--no-progress", *extra]) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(g["n_failed"] == 0 and not g["ungraded"] for r in rows for g in r["grades"])
        p[name] = _p_met(out)
    assert p["float32"].numel() >= 10
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        err = float((p[name] - p["float32"]).abs().max())
        assert err <= P_TOL[dtype], (name, err)
        assert not torch.equal(p[name], p["float32"])  # the reduced-precision model really ran


@pytest.mark.parametrize("dtype", LOW, ids=IDS)
def test_meta_eval_in_reduced_precision(dtype, capsys):
    """``rubricrl meta-eval --dtype ...`` judges every row; the p(met) of its requests are
    within the tolerance of the fp32 ones."""
    limit = 8
    name = str(dtype).removeprefix("torch.")
    assert main_meta_eval(["--json", "--limit", str(limit), "--dtype", name, "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = builtin_meta_eval()[:limit]
    assert result["n_failed"] == 0 and result["n_items"] == limit
    assert result["n_pairs"] == sum(len(r.binary_labels) for r in rows)
    assert result["tp"] + result["fp"] + result["fn"] + result["tn"] == result["n_pairs"]

    requests = meta_eval_requests(rows)
    judge = LogprobJudge(temperature=0.6)
    ref = judge.verdict_probs(HFEngine.from_path(None), requests).p_met.double()
    got = judge.verdict_probs(HFEngine.from_path(None, dtype=dtype), requests).p_met.double()
    assert float((got - ref).abs().max()) <= P_TOL[dtype]


def _finite_model(trainer) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in trainer.engine.model.state_dict().values() if t.is_floating_point())


@pytest.mark.parametrize(
    "dtype, share_prefix",
    [("bfloat16", True), ("float16", False)],
    ids=["bf16-shared", "fp16-unshared"],
)
def test_train_step_in_reduced_precision_with_the_logprob_judge(tmp_path, dtype, share_prefix):
    """The docs' ``--set model.dtype=bfloat16`` and the issue's fp16 case: every item graded
    by the model itself, one optimizer step applied, weights finite and still in ``dtype``,
    fp32 masters that round to them, and a finite checkpoint."""
    cfg = tiny_config(
        tmp_path,
        model={"device": "cpu", "dtype": dtype},
        reward={"share_prefix": share_prefix},
        trainer={"steps": 1},
        optim={"lr": 1e-3, "micro_batch_size": 8},
    )
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.engine.model.state_dict().items()}
    (r,) = trainer.train()
    assert r["judge_errors"] == 0 and r["failed_judgments"] == 0 and r["ungraded"] == 0
    assert r["judged_items"] > 0
    assert r["trained_responses"] > 0 and r["optimizer_steps"] == 1 and r["nonfinite_skipped"] == 0
    assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    after = trainer.engine.model.state_dict()
    assert all(after[k].dtype == getattr(torch, dtype) for k in after if after[k].is_floating_point())
    assert _finite_model(trainer)
    changed = sum(int((before[k] != after[k]).sum()) for k in before)
    assert changed > 0.5 * sum(t.numel() for t in before.values())  # lr 1e-3 moves most weights
    upd = trainer.updater
    assert upd.master_params is not None and all(m.dtype == torch.float32 for m in upd.master_params)
    assert all(torch.equal(m.to(p.dtype), p) for m, p in zip(upd.master_params, upd.params))
    saved = torch.load(trainer.last_checkpoint / "model.pt", weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in saved.values() if t.is_floating_point())


def test_bf16_masters_keep_updates_below_one_ulp(tmp_path):
    """With lr = 1e-6, AdamW's first step moves each weight by ~1e-6, far below half a bf16
    ulp of the tiny model's weights (~1e-4 at |w| ~ 0.02): the bf16 weights stay put, but the
    fp32 masters move by lr, so repeated steps add up instead of being rounded away."""
    cfg = tiny_config(tmp_path, model={"device": "cpu", "dtype": "bfloat16"}, trainer={"steps": 1}, optim={"lr": 1e-6})
    trainer = Trainer(cfg, judge=StubJudge())
    upd = trainer.updater
    start = [m.clone() for m in upd.master_params]
    bf16_start = [p.detach().clone() for p in upd.params]
    (r,) = trainer.train()
    assert r["optimizer_steps"] == 1
    moved = torch.cat([(m - s).abs().flatten() for m, s in zip(upd.master_params, start)])
    size = torch.cat([s.abs().flatten() for s in start])
    assert int((moved > 0).sum()) > 0.5 * moved.numel()
    # Adam's first step is lr * g / (|g| + eps) <= lr, ~lr wherever |g| >> eps; measured as a
    # difference of fp32 values, within one fp32 ulp of the weight
    assert bool((moved <= 1e-6 + 2 * torch.finfo(torch.float32).eps * size).all())
    assert float(moved[moved > 0].median()) > 0.5e-6
    # ... while the bf16 weights themselves barely move (only those below ~3e-4 in size)
    bf16_moved = sum(int((p != b).sum()) for p, b in zip(upd.params, bf16_start))
    assert bf16_moved < 0.05 * moved.numel()
    assert all(torch.equal(m.to(p.dtype), p) for m, p in zip(upd.master_params, upd.params))


def test_masters_survive_a_checkpoint(tmp_path):
    """The fp32 masters go into the checkpoint: a resumed bf16 run continues from the same
    fp32 values, not from the rounded bf16 weights."""
    cfg = tiny_config(tmp_path, model={"device": "cpu", "dtype": "bfloat16"}, trainer={"steps": 1}, optim={"lr": 1e-6})
    trainer = Trainer(cfg, judge=StubJudge())
    trainer.train()
    masters = [m.clone() for m in trainer.updater.master_params]
    assert any(not torch.equal(m, p.float()) for m, p in zip(masters, trainer.updater.params))
    resumed = Trainer.from_checkpoint(trainer.last_checkpoint, ["trainer.steps=2"], judge=StubJudge())
    assert all(torch.equal(a, b) for a, b in zip(masters, resumed.updater.master_params))
    opt_a, opt_b = trainer.updater.optimizer.state_dict(), resumed.updater.optimizer.state_dict()
    assert opt_a["state"].keys() == opt_b["state"].keys()
    assert all(
        torch.equal(opt_a["state"][i][k], opt_b["state"][i][k]) for i in opt_a["state"] for k in opt_a["state"][i]
    )


def test_a_bare_optimizer_state_from_an_older_checkpoint_still_loads(tmp_path):
    """Checkpoints written before the masters hold a plain AdamW state dict: it loads, and
    the masters are taken from the (already loaded) model weights."""
    cfg = tiny_config(tmp_path, model={"device": "cpu", "dtype": "bfloat16"}, trainer={"steps": 1}, optim={"lr": 1e-6})
    trainer = Trainer(cfg, judge=StubJudge())
    trainer.train()
    upd = trainer.updater
    old_style = upd.optimizer.state_dict()
    upd.nonfinite_streak = 2
    upd.load_state_dict(old_style)
    assert upd.nonfinite_streak == 0
    assert all(torch.equal(m, p.float()) for m, p in zip(upd.master_params, upd.params))
    assert upd.optimizer.state_dict()["state"].keys() == old_style["state"].keys()
