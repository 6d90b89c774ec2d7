"""The non-finite guard of the update: a NaN/Inf loss, gradient or resulting weight skips
the optimizer step with weights and optimizer state untouched, the skip is counted, and
``trainer.max_nonfinite_steps`` consecutive skips stop the run with the last good
checkpoint intact. NaN is injected at run time (a forward hook on the model's final norm,
a gradient hook, an optimizer setting no config allows), not through the config."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rubricrl.cli import main
from rubricrl.config import ConfigError
from rubricrl.trainer import NonFiniteUpdateError, Trainer
from rubricrl.trainer.update import ActorUpdater
from tests.test_trainer_helpers import StubJudge, tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.engine.model.state_dict().items()}


def _optimizer_state(trainer) -> dict:
    state = trainer.updater.optimizer.state_dict()["state"]
    return {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()} for i, s in state.items()}


def _same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not _same(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _nan_forward_when(trainer, active):
    """Make the final norm's output NaN in the update's (grad-enabled) forwards while
    ``active()``; rollout and grading run without grad and stay finite."""

    def hook(module, args, output):
        if torch.is_grad_enabled() and active():
            return output * float("nan")
        return None

    return trainer.engine.model.base_model.norm.register_forward_hook(hook)


def test_nan_loss_skips_the_step_and_a_good_step_resets_the_streak(tmp_path):
    cfg = tiny_config(tmp_path, trainer={"steps": 3, "max_nonfinite_steps": 2})
    trainer = Trainer(cfg, judge=StubJudge())
    _nan_forward_when(trainer, lambda: trainer.step_count == 1)  # during step 2 only
    trainer.start()
    first = trainer.step()
    assert first["optimizer_steps"] == 1 and first["nonfinite_skipped"] == 0
    weights, opt = _weights(trainer), _optimizer_state(trainer)
    assert opt  # AdamW moments exist after the first step: "untouched" is checked on them
    second = trainer.step()
    assert second["optimizer_steps"] == 0 and second["nonfinite_skipped"] == 1
    assert math.isnan(second["loss"])
    assert trainer.updater.nonfinite_streak == 1 and trainer.updater.last_nonfinite == "loss = nan"
    assert _same(weights, _weights(trainer)) and _same(opt, _optimizer_state(trainer))
    assert trainer.updater.optimizer_steps == 1
    third = trainer.step()  # finite again: applied, streak reset, no stop
    trainer.close()
    assert third["optimizer_steps"] == 1 and third["nonfinite_skipped"] == 0
    assert trainer.updater.nonfinite_streak == 0
    assert not _same(weights, _weights(trainer))


@pytest.mark.parametrize("grad_clip", [1.0, None], ids=["clipped", "unclipped"])
def test_nan_gradient_with_a_finite_loss_is_skipped(tmp_path, grad_clip):
    """NaN in one parameter's gradient only: the loss is finite, the global norm is not
    (with and without ``clip_grad_norm_``); nothing is applied to any parameter."""
    cfg = tiny_config(tmp_path, trainer={"steps": 1}, optim={"grad_clip": grad_clip})
    trainer = Trainer(cfg, judge=StubJudge())
    name, param = next((n, p) for n, p in trainer.engine.model.named_parameters() if n.endswith("mlp.down_proj.weight"))
    param.register_hook(lambda g: g.masked_fill(torch.arange(g.numel()).view_as(g) == 7, float("nan")))
    before = _weights(trainer)
    (r,) = trainer.train()
    assert math.isfinite(r["loss"]) and math.isnan(r["grad_norm"])
    assert r["optimizer_steps"] == 0 and r["nonfinite_skipped"] == 1
    assert trainer.updater.last_nonfinite.startswith("gradient norm")
    assert _same(before, _weights(trainer)) and trainer.updater.optimizer.state_dict()["state"] == {}


def test_a_step_that_would_make_a_weight_non_finite_is_skipped(tmp_path):
    """Finite loss and gradients, but the optimizer's step gives Inf/NaN (weight decay set
    to Inf behind the config's back): the trial step sees it, nothing is applied."""
    cfg = tiny_config(tmp_path, trainer={"steps": 2})
    trainer = Trainer(cfg, judge=StubJudge())
    trainer.start()
    trainer.step()
    weights, opt = _weights(trainer), _optimizer_state(trainer)
    trainer.updater.optimizer.param_groups[0]["weight_decay"] = float("inf")
    r = trainer.step()
    trainer.close()
    assert math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])
    assert r["optimizer_steps"] == 0 and r["nonfinite_skipped"] == 1
    assert trainer.updater.last_nonfinite == "the step would make a weight non-finite"
    assert _same(weights, _weights(trainer)) and _same(opt, _optimizer_state(trainer))


def test_fp16_overflow_of_the_rounded_weights_is_skipped(tmp_path):
    """fp16 model, lr = 1e6: the fp32 masters would stay finite (|w| ~ 1e6) but the fp16
    weights they round to would be Inf (fp16 max 65504): skipped, masters untouched."""
    cfg = tiny_config(tmp_path, model={"device": "cpu", "dtype": "float16"}, trainer={"steps": 1}, optim={"lr": 1e6})
    trainer = Trainer(cfg, judge=StubJudge())
    masters = [m.clone() for m in trainer.updater.master_params]
    before = _weights(trainer)
    (r,) = trainer.train()
    assert r["optimizer_steps"] == 0 and r["nonfinite_skipped"] == 1
    assert trainer.updater.last_nonfinite == "the step would make a weight non-finite"
    assert _same(before, _weights(trainer))
    assert all(torch.equal(a, b) for a, b in zip(masters, trainer.updater.master_params))


def test_consecutive_skips_stop_the_run_keeping_the_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, trainer={"steps": 6, "checkpoint_every": 1, "max_nonfinite_steps": 2})
    trainer = Trainer(cfg, judge=StubJudge())
    good: dict[str, torch.Tensor] = {}

    def active() -> bool:
        if trainer.step_count == 1 and not good:
            good.update(_weights(trainer))  # the weights after the last applied step
        return trainer.step_count >= 1

    _nan_forward_when(trainer, active)
    with pytest.raises(NonFiniteUpdateError) as err:
        trainer.train()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("step 3: 2 optimizer steps in a row skipped") and "max_nonfinite_steps = 2" in message
    assert "step_000002" in message  # the last good checkpoint, named
    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["nonfinite_skipped"] for m in metrics] == [0, 1, 1]
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_000001", "step_000002"]
    assert (ckpts / "latest").read_text().strip() == "step_000002"
    saved = torch.load(ckpts / "step_000002" / "model.pt", weights_only=True)
    assert _same(saved, good) and all(bool(torch.isfinite(t).all()) for t in saved.values() if t.is_floating_point())


def test_cli_stops_with_one_line_and_a_nonzero_exit(tmp_path, capsys, monkeypatch):
    """A model whose update forward is NaN (patched in) through ``rubricrl train``: exit 1,
    one ``error:`` line, no traceback, no checkpoint of NaN weights. (RLPR rewards: no judge
    to run; equal-score groups kept so that every step has an update to skip.)"""
    real = ActorUpdater._micro_loss

    def nan_loss(self, mb, agg_norm):
        loss, metrics = real(self, mb, agg_norm)
        return loss * float("nan"), metrics

    monkeypatch.setattr(ActorUpdater, "_micro_loss", nan_loss)
    out = tmp_path / "run"
    args = [
        "train", "--out", str(out),
        "--set", "reward.source=rlpr", "--set", "advantages.drop_equal_groups=false", "--set", "model.device=cpu",
        "--set", "data.prompts_per_step=2", "--set", "rollout.n=2", "--set", "rollout.max_new_tokens=6",
        "--set", "trainer.progress=false", "--set", "trainer.plot=false",
        "--set", "trainer.steps=4", "--set", "trainer.checkpoint_every=1", "--set", "trainer.max_nonfinite_steps=2",
    ]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rubricrl train: error: step 2: 2 optimizer steps in a row skipped")
    assert "Traceback" not in "\n".join(err)
    saved = torch.load(out / "checkpoints" / "step_000001" / "model.pt", weights_only=True)
    assert all(bool(torch.isfinite(t).all()) for t in saved.values() if t.is_floating_point())
    assert not (out / "checkpoints" / "step_000002").exists()


def test_non_finite_optimizer_settings_are_refused_up_front(tmp_path, capsys):
    """``optim.weight_decay=inf`` used to save all-NaN weights; it now never reaches a step
    (refused by the config or, at the latest, by the updater), exit 2 with one line."""
    args = ["train", "--out", str(tmp_path / "run"), "--set", "model.device=cpu", "--set", "optim.weight_decay=inf"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.weight_decay" in err[0] and "rubricrl train: error:" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_updater_refuses_non_finite_hyperparameters(tmp_path):
    cfg = tiny_config(tmp_path)
    trainer = Trainer(cfg, judge=StubJudge())
    for key, value in (("lr", float("nan")), ("eps", float("inf")), ("grad_clip", float("inf"))):
        optim = type(cfg.optim)(**{**vars(cfg.optim), key: value})
        with pytest.raises(ValueError, match=f"optim.{key}: must be a finite number"):
            ActorUpdater(trainer.engine, cfg.loss, optim, temperature=1.0, horizon=8)


def test_max_nonfinite_steps_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="trainer.max_nonfinite_steps"):
        tiny_config(tmp_path, trainer={"max_nonfinite_steps": 0})
