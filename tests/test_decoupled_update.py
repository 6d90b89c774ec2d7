"""loss.proximal=recompute (decoupled PPO in the trainer, docs/algorithms.md §1b).

* synchronous (eta = 0): the weights before the update are the weights that sampled, so
  the recomputed proximal log-probs equal the behaviour ones up to fp32 and the run equals
  the default one (old = behaviour);
* streaming (eta = 1): the behaviour policy is one version old; the proximal policy is the
  current one, so the first epoch's ratio is 1 (approx_kl ~ 0) while the importance weight
  pi_old / pi_behaviour departs from 1, which the default run cannot see.
"""

from __future__ import annotations

import math

import pytest
import torch

from rubricrl.trainer import Trainer
from tests.test_trainer_helpers import tiny_config


def _run(tmp_path, name, **sections):
    # Adam's eps 1e-3: with the default, a weight whose gradient is ~0 moves by ~lr whichever
    # way fp32 rounding tips it, turning 1e-7 differences of the loss into ~lr differences
    sections.setdefault("optim", {"lr": 1e-3, "micro_batch_size": 4, "weight_decay": 0.0, "eps": 1e-3})
    config = tiny_config(tmp_path / name, trainer={"steps": 3, "out_dir": str(tmp_path / name / "run"),
                                                    "progress": False, "plot": False, "log_every": 1000},
                         **sections)
    trainer = Trainer(config)
    records = trainer.train()
    weights = {k: v.detach().clone() for k, v in trainer.engine.model.state_dict().items()}
    trainer.close()
    return records, weights


def test_recompute_equals_behaviour_when_synchronous(tmp_path):
    base, w_base = _run(tmp_path, "behaviour")
    prox, w_prox = _run(tmp_path, "recompute", loss={"proximal": "recompute"})
    for a, b in zip(base, prox):
        assert b["is_weight_mean"] == pytest.approx(1.0, abs=1e-5)
        assert b["is_clipped_frac"] == 0.0
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)
        assert a["is_weight_mean"] is None  # no correction, no metric
    for k in w_base:
        torch.testing.assert_close(w_prox[k], w_base[k], rtol=1e-4, atol=1e-6)


def test_recompute_sees_the_staleness_of_the_stream(tmp_path):
    pipeline = {"eta": 1}
    base, _ = _run(tmp_path, "behaviour", pipeline=pipeline)
    prox, _ = _run(tmp_path, "recompute", pipeline=pipeline, loss={"proximal": "recompute"})
    stale = [r for r in prox if r["staleness"] == 1]
    assert stale, "eta = 1 gives stale steps after the first"
    for r in stale:
        assert abs(r["approx_kl"]) < 1e-5  # old = the current weights: the first epoch's ratio is 1
        assert math.isfinite(r["is_weight_mean"]) and abs(r["is_weight_mean"] - 1.0) > 1e-5
    stale_base = [r for r in base if r["staleness"] == 1]
    assert any(abs(r["approx_kl"]) > 1e-6 for r in stale_base)  # old = behaviour: the staleness shows here


@pytest.mark.parametrize("policy_loss", ["vanilla", "gspo", "gspo_token", "cispo", "sapo"])
def test_every_policy_loss_trains_packed_and_padded(tmp_path, policy_loss):
    """The trainer runs each policy loss in both layouts (GSPO's response-level ratio needs
    rows, so packed token-mean keeps rows for it) and the two layouts agree."""
    loss = {"policy_loss": policy_loss, "proximal": "recompute", "is_mode": "sequence_truncate"}
    runs = {}
    for packing in ("on", "off"):
        optim = {"lr": 1e-3, "micro_batch_size": 4, "weight_decay": 0.0, "eps": 1e-3, "packing": packing}
        runs[packing], _ = _run(tmp_path, f"{policy_loss}-{packing}", loss=loss, optim=optim)
    for a, b in zip(runs["on"], runs["off"]):
        assert math.isfinite(a["loss"]) and a["is_weight_mean"] is not None
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-6)
