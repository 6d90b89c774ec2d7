"""Cross-check against verl's core_algos: policy loss in every loss_agg mode, KL estimators, GRPO advantages.

verl's compute_policy_loss_vanilla always applies the dual clip (clip_ratio_c), so
rubricrl runs with clip_c=3.0 here. verl gives a lone response A = S (mean 0,
std 1); rubricrl gives 0 (docs/algorithms.md §2): tested as a difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rubricrl.ops import group_advantages, grpo_loss
from tests.test_grpo_loss import BACKENDS, MODES, make_batch

core_algos = pytest.importorskip(
    "verl.trainer.ppo.core_algos", reason="verl is not importable (pip install --no-deps verl==0.9.1 and its peers)"
)
from verl.workers.config.actor import ActorConfig  # noqa: E402


def verl_config():
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                       clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_policy_loss_matches_verl(backend, mode, per_token_adv):
    lp, old, adv, mask, _, _ = make_batch(b=5, t=9, seed=7, per_token_adv=per_token_adv)
    lp, old, adv, mask = lp.float(), old.float(), adv.float(), mask.float()
    adv_tok = adv if adv.dim() == 2 else adv[:, None].expand_as(lp)
    x = lp.clone().requires_grad_()
    want, want_metrics = core_algos.compute_policy_loss_vanilla(old, x, adv_tok, mask, mode, verl_config())
    (want_grad,) = torch.autograd.grad(want, x)
    y = lp.clone().requires_grad_()
    loss, metrics = grpo_loss(y, old, adv, mask, eps_low=0.2, eps_high=0.28, clip_c=3.0, loss_agg=mode,
                              backend=backend)
    (grad,) = torch.autograd.grad(loss, y)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
    assert metrics["clipfrac"].item() == pytest.approx(want_metrics["actor/pg_clipfrac"], abs=1e-6)
    assert metrics["clipfrac_lower"].item() == pytest.approx(want_metrics["actor/pg_clipfrac_lower"], abs=1e-6)
    # verl's ppo_kl is the mean of the *clamped* old - lp; the batch has two |lp - old| = 25 tokens
    clamped = torch.where(mask > 0, (old - lp).clamp(-20, 20), torch.zeros_like(lp)).sum() / mask.sum()
    assert want_metrics["actor/ppo_kl"] == pytest.approx(clamped.item(), rel=1e-5)
    approx = torch.where(mask > 0, old - lp, torch.zeros_like(lp)).sum() / mask.sum()
    torch.testing.assert_close(metrics["approx_kl"], approx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kl_type, verl_name", [("k1", "k1"), ("k2", "k2"), ("k3", "low_var_kl")])
@pytest.mark.parametrize("mode", MODES)
def test_kl_matches_verl(kl_type, verl_name, mode):
    lp, old, adv, mask, ref, _ = make_batch(b=4, t=8, seed=11)
    lp, old, adv, mask, ref = lp.float(), old.float(), adv.float(), mask.float(), ref.float()
    if kl_type != "k3":  # verl clamps only k3's log-ratio; keep |ref - lp| <= 20 for k1 and k2
        ref = lp + (ref - lp).clamp(-20, 20)
    x = lp.clone().requires_grad_()
    kld = core_algos.kl_penalty(x, ref, verl_name)
    want = core_algos.agg_loss(kld, mask, mode)
    (want_grad,) = torch.autograd.grad(want, x)
    y = lp.clone().requires_grad_()
    # with advantages 0 the policy term vanishes: the loss is kl_coef * agg(kl)
    loss, metrics = grpo_loss(y, old, torch.zeros_like(adv), mask, ref_logprobs=ref, kl_coef=1.0, kl_type=kl_type,
                              loss_agg=mode)
    (grad,) = torch.autograd.grad(loss, y)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["kl"], want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)


def verl_advantages(scores, index, norm_by_std):
    b, t = scores.shape[0], 4
    rewards = torch.zeros(b, t)
    rewards[:, -1] = scores
    adv, _ = core_algos.compute_grpo_outcome_advantage(rewards, torch.ones(b, t), np.asarray(index),
                                                       norm_adv_by_std_in_grpo=norm_by_std)
    return adv[:, 0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_by_std", [True, False])
def test_advantages_match_verl(backend, norm_by_std):
    g = torch.Generator().manual_seed(5)
    # mixed groups, an all-equal group (verl: (s - mean) / (0 + eps) = 0 exactly), shuffled ids
    scores = torch.cat([torch.rand(6, generator=g), torch.full((4,), 0.5), torch.tensor([0.0, 1.0, 1.0, 0.0]),
                        torch.rand(5, generator=g)])
    index = [3] * 6 + [11] * 4 + [-2] * 4 + [7] * 5
    perm = torch.randperm(len(index), generator=g)
    scores, index = scores[perm], [index[i] for i in perm]
    want = verl_advantages(scores, index, norm_by_std)
    got = group_advantages(scores, torch.tensor(index), norm_by_std=norm_by_std, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    equal = torch.tensor(index) == 11
    assert (got[equal] == 0).all() and (want[equal] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_group_of_one_differs_from_verl(backend):
    scores = torch.tensor([0.9, 0.2, 0.4, 0.7])
    index = [0, 1, 1, 2]  # groups 0 and 2 have one response each
    want = verl_advantages(scores, index, True)
    got = group_advantages(scores, torch.tensor(index), backend=backend)
    lone = torch.tensor([True, False, False, True])
    torch.testing.assert_close(want[lone], scores[lone])  # verl: mean 0, std 1 -> A = S
    assert (got[lone] == 0).all()  # rubricrl (docs/algorithms.md §2): no baseline -> A = 0
    torch.testing.assert_close(got[~lone], want[~lone], rtol=1e-5, atol=1e-6)
