"""The GRPO loss family (docs/algorithms.md §1b): GSPO, GSPO-token, CISPO, SAPO, on-policy,
per-token weights, token-sum, bias-corrected KL and the behaviour/proximal importance
correction, on every backend, against a float64 reference written with autograd from the
formulas (as the peers write them), plus gradcheck."""

from __future__ import annotations

import pytest
import torch

from tests.test_grpo_loss import BACKENDS, assert_close, make_batch, ref_kl  # noqa: I001 (sets TRITON_INTERPRET)
from tests.reference import linear_logprobs

from rubricrl.ops import extension_available, fused_linear_grpo_loss, grpo_loss
from rubricrl.ops.importance import behaviour_weights

POLICY_LOSSES = ["vanilla", "gspo", "gspo_token", "cispo", "sapo"]
AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum"]


# ---------------------------------------------------------------- float64 reference (autograd)


def ref_is_weights(old, behav, mask, mode, is_max, is_min):
    """pi_old / pi_behav per token or per response, truncated or masked (TRL's and verl's definition)."""
    diff = (old - behav) * mask
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    lo = is_min if is_min is not None else 0.0
    hi = is_max if is_max is not None else float("inf")
    if mode.endswith("truncate"):
        w = torch.clamp(ratio, min=lo, max=hi)
    else:
        w = ratio * ((ratio >= lo) & (ratio <= hi))
    return (w * mask).expand_as(mask)


def ref_aggregate(x, m, mode, agg_norm=None, horizon=None):
    x = x * m
    if mode == "token-mean":
        return x.sum() / (agg_norm if agg_norm is not None else m.sum().clamp(min=1))
    if mode == "token-sum":
        return x.sum() / (agg_norm if agg_norm is not None else 1.0)
    n = m.sum(-1)
    per = x.sum(-1) / n.clamp(min=1) if mode == "seq-mean-token-mean" else x.sum(-1)
    loss = per.sum() / (agg_norm if agg_norm is not None else (n > 0).sum().clamp(min=1))
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (horizon if horizon is not None else m.shape[1])
    return loss


def ref_family(lp, old, adv, mask, *, policy_loss="vanilla", eps_low=0.2, eps_high=0.28, clip_c=None,
               loss_agg="token-mean", ref_logprobs=None, kl_coef=0.0, kl_type="k3", entropy=None,
               entropy_coef=0.0, agg_norm=None, horizon=None, tau_pos=1.0, tau_neg=1.05,
               kl_bias_correction=False, weights=None, behaviour_logprobs=None, is_mode="token_truncate",
               is_max=2.0, is_min=None):
    """The loss in float64 with autograd doing the derivatives."""
    m = mask.double()
    a = adv.double()
    a = a[:, None].expand_as(lp) if a.dim() == 1 else a
    old_ = lp.detach() if old is None else old.double()
    log_ratio = lp - old_
    tok_ratio = torch.exp(torch.clamp(log_ratio, -20, 20))
    if policy_loss in ("gspo", "gspo_token"):
        seq = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
        if policy_loss == "gspo":
            ratio = torch.exp(torch.clamp(seq, -20, 20)).expand_as(lp)
        else:
            # verl's form: the clamp applies to the whole log-ratio (no gradient where it binds)
            ratio = torch.exp(torch.clamp(seq.detach() + lp - lp.detach(), -20, 20))
    else:
        ratio = tok_ratio
    if policy_loss == "cispo":
        pg = -torch.clamp(ratio, 1 - eps_low, 1 + eps_high).detach() * a * lp
    elif policy_loss == "sapo":
        tau = torch.where(a > 0, torch.full_like(a, tau_pos), torch.full_like(a, tau_neg))
        pg = -a * torch.sigmoid(tau * (ratio - 1)) * 4 / tau
    else:
        pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - eps_low, 1 + eps_high))
        if clip_c is not None:
            pg = torch.where(a < 0, torch.minimum(pg, -a * clip_c), pg)
    w = torch.ones_like(m) if weights is None else weights.double()
    if behaviour_logprobs is not None:
        w = w * ref_is_weights(old_, behaviour_logprobs.double(), m, is_mode, is_max, is_min)
    x = pg * w
    if ref_logprobs is not None:
        k = ref_kl(lp, ref_logprobs.double(), kl_type)
        if kl_bias_correction:
            k = k * tok_ratio
        x = x + kl_coef * k
    if entropy is not None:
        x = x - entropy_coef * entropy
    return ref_aggregate(x, m, loss_agg, agg_norm, horizon)


# ---------------------------------------------------------------- data


def family_batch(seed=0, per_token_adv=False):
    """make_batch without the |log-ratio| > 20 tokens (GSPO's mean would put whole responses
    at the clamp), plus per-token weights and behaviour log-probs."""
    lp, old, adv, mask, ref, ent = make_batch(seed=seed, per_token_adv=per_token_adv)
    g = torch.Generator().manual_seed(100 + seed)
    old = lp + torch.randn(lp.shape, generator=g, dtype=torch.float64) * 0.3
    weights = torch.rand(lp.shape, generator=g, dtype=torch.float64) + 0.5
    behav = old + torch.randn(lp.shape, generator=g, dtype=torch.float64) * 0.4
    return lp, old, adv, mask, ref, ent, weights, behav


CASES = {
    "plain": dict(),
    "dual+k3": dict(clip_c=3.0, kl=0.1),
    "weights+entropy": dict(weights=True, entropy_coef=0.01),
    "on-policy": dict(on_policy=True, kl=0.05),
    "is-token-truncate": dict(behav="token_truncate", is_max=1.5),
    "is-token-mask": dict(behav="token_mask", is_max=1.3, is_min=0.7),
    "is-seq-truncate": dict(behav="sequence_truncate", is_max=2.0, weights=True),
    "is-seq-mask": dict(behav="sequence_mask", is_max=3.0, is_min=0.2),
    "kl-bias": dict(kl=0.1, kl_bias_correction=True),
    "norms": dict(agg_norm=7.0, horizon=9, eps_low=1.0, eps_high=2.0),
    "token-adv": dict(per_token_adv=True),
}


def case_kwargs(policy_loss, case, lp, old, ref, ent, weights, behav):
    """-> (old or None, kwargs) for grpo_loss and ref_family."""
    c = dict(CASES[case])
    c.pop("per_token_adv", None)
    if c.pop("on_policy", False):
        old = None
    kw = dict(policy_loss=policy_loss)
    if "kl" in c:
        kw.update(ref_logprobs=ref, kl_coef=c.pop("kl"), kl_type="k3")
    if c.pop("weights", False):
        kw["weights"] = weights
    if "behav" in c:
        kw.update(behaviour_logprobs=behav, is_mode=c.pop("behav"))
    if "entropy_coef" in c:
        kw.update(entropy=ent, entropy_coef=c.pop("entropy_coef"))
    kw.update(c)
    return old, kw


def _applies(policy_loss, case):
    """dual clip is not an option of cispo/sapo, nor the KL bias correction of GSPO (both
    rejected by validation, tested below)."""
    c = CASES[case]
    return not (("clip_c" in c and policy_loss in ("cispo", "sapo"))
                or (c.get("kl_bias_correction") and policy_loss in ("gspo", "gspo_token")))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy_loss, case", [(p, c) for p in POLICY_LOSSES for c in CASES if _applies(p, c)])
def test_grpo_loss_family_matches_float64_reference(backend, policy_loss, case):
    lp, old, adv, mask, ref, ent, weights, behav = family_batch(per_token_adv=CASES[case].get("per_token_adv", False))
    old, kw = case_kwargs(policy_loss, case, lp, old, ref, ent, weights, behav)
    for agg in ("token-mean", "seq-mean-token-mean", "token-sum"):
        x = lp.clone().requires_grad_(True)
        e = ent.clone().requires_grad_(True) if "entropy" in kw else None
        kw_e = {**kw, "entropy": e} if e is not None else kw
        expected = ref_family(x, old, adv, mask, loss_agg=agg, **kw_e)
        exp_grads = torch.autograd.grad(expected, [x] + ([e] if e is not None else []))
        y = lp.float().clone().requires_grad_(True)
        ye = ent.float().clone().requires_grad_(True) if e is not None else None
        kw_y = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        if ye is not None:
            kw_y["entropy"] = ye
        loss, metrics = grpo_loss(y, old.float() if old is not None else None, adv.float(), mask, loss_agg=agg,
                                  backend=backend, **kw_y)
        grads = torch.autograd.grad(loss, [y] + ([ye] if ye is not None else []))
        what = f"{policy_loss}/{case}/{agg}"
        assert_close(loss, expected, what=what + " loss")
        for got, want in zip(grads, exp_grads):
            assert_close(got, want, what=what + " grad")
        if "behaviour_logprobs" in kw:
            assert {"is_weight_mean", "is_clipped_frac"} <= set(metrics)


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=BACKENDS[1].marks)])
@pytest.mark.parametrize("policy_loss", ["vanilla", "gspo", "sapo"])
def test_family_gradcheck_float64(backend, policy_loss):
    """Finite differences of the loss's value: the losses whose gradient is the true derivative
    (gspo_token and cispo stop gradients on purpose; the autograd reference above covers them)."""
    lp, old, adv, mask, ref, ent, weights, behav = family_batch(seed=3)
    kw = dict(policy_loss=policy_loss, ref_logprobs=ref, kl_coef=0.1, entropy=None, weights=weights,
              behaviour_logprobs=behav, is_mode="token_truncate", is_max=1.5, loss_agg="seq-mean-token-mean")

    def f(x, e):
        return grpo_loss(x, old, adv, mask, backend=backend, **{**kw, "entropy": e}, entropy_coef=0.02)[0]

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True), ent.clone().requires_grad_(True)))


def test_on_policy_is_ratio_one_with_gradient():
    """old=None: loss = -A on every token (ratio 1), gradient -A * w as with old = lp.detach()."""
    lp, _, adv, mask, *_ = family_batch()
    x = lp.clone().requires_grad_(True)
    loss, metrics = grpo_loss(x, None, adv, mask, backend="torch")
    m = mask.double()
    expected = -(adv[:, None] * m).sum() / m.sum()
    assert_close(loss, expected)
    (g,) = torch.autograd.grad(loss, x)
    assert_close(g, -adv[:, None].expand_as(m) * m / m.sum())
    assert float(metrics["approx_kl"]) == 0.0 and float(metrics["clipfrac"]) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_family_metrics_hand_computed(backend):
    """One response, A = +1, token ratios 0.5, 1, 1.5, 1.1 (clip range [0.8, 1.28]): PPO clips
    only 1.5 (A > 0 clips above); CISPO's clip changes 0.5 and 1.5; SAPO clips nothing; GSPO
    clips on the response ratio (0.5 * 1.5 * 1.1)^(1/4) = 0.953: nothing. On-policy: 0."""
    ratios = torch.tensor([[0.5, 1.0, 1.5, 1.1]], dtype=torch.float64)
    lp = torch.zeros_like(ratios)
    old = -torch.log(ratios)
    adv, mask = torch.ones(1, dtype=torch.float64), torch.ones_like(ratios)
    approx_kl = float(old.mean())
    expected = {"vanilla": 0.25, "cispo": 0.5, "sapo": 0.0, "gspo": 0.0, "gspo_token": 0.0}
    for pl, clipfrac in expected.items():
        _, m = grpo_loss(lp, old, adv, mask, policy_loss=pl, backend=backend)
        assert float(m["clipfrac"]) == pytest.approx(clipfrac), pl
        assert float(m["approx_kl"]) == pytest.approx(approx_kl, rel=1e-6), pl
        _, m = grpo_loss(lp, None, adv, mask, policy_loss=pl, backend=backend)
        assert float(m["clipfrac"]) == 0.0 and float(m["approx_kl"]) == 0.0, pl


def test_gspo_equals_gspo_token_with_response_constant_advantages_and_weights():
    """With one advantage per response and no per-token weights the two GSPO forms coincide
    (the reason verl's token form can stand for GSPO); with per-token weights they differ."""
    lp, old, adv, mask, *_ = family_batch(seed=5)
    out = {}
    for pl in ("gspo", "gspo_token"):
        for w in (None, torch.rand(lp.shape, dtype=torch.float64) + 0.5):
            x = lp.clone().requires_grad_(True)
            loss, _ = grpo_loss(x, old, adv, mask, policy_loss=pl, weights=w, loss_agg="seq-mean-token-mean",
                                backend="torch")
            out[pl, w is None] = (loss, torch.autograd.grad(loss, x)[0])
    torch.testing.assert_close(out["gspo", True][1], out["gspo_token", True][1])
    assert not torch.allclose(out["gspo", False][1], out["gspo_token", False][1])


def test_behaviour_weights_hand_computed():
    old = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    behav = torch.tensor([[-1.5, -1.0, -0.5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    w, stats = behaviour_weights(old, behav, mask, "token_truncate", is_max=1.5, is_min=None)
    torch.testing.assert_close(w, torch.tensor([[1.5, torch.exp(torch.tensor(-1.0)).item(), 0.0]],
                                               dtype=torch.float64))
    assert float(stats["is_clipped_frac"]) == 0.5
    w, _ = behaviour_weights(old, behav, mask, "sequence_mask", is_max=1.0, is_min=0.5)
    # exp(0.5 - 1.0) = 0.6065 is inside [0.5, 1]: kept on both valid tokens
    torch.testing.assert_close(w, torch.tensor([[0.60653066, 0.60653066, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(policy_loss="ppo"), "policy_loss must be one of"),
    (dict(policy_loss="cispo", clip_c=3.0), "clip_c"),
    (dict(policy_loss="sapo", tau_neg=0.0), "tau_neg"),
    (dict(policy_loss="gspo", kl_bias_correction=True, kl_coef=0.1), "kl_bias_correction"),
    (dict(is_mode="sequence"), "is_mode must be one of"),
    (dict(is_mode="token_mask", is_max=0.5, is_min=2.0), "is_min"),
    (dict(old_none=True), "behaviour_logprobs needs old_logprobs"),
    (dict(weights_shape=True), "weights must have shape"),
])
def test_family_validation(kwargs, match):
    lp, old, adv, mask, ref, ent, weights, behav = family_batch()
    kwargs = dict(kwargs)
    if kwargs.pop("old_none", False):
        old = None
    if kwargs.pop("weights_shape", False):
        kwargs["weights"] = weights[:, :3]
    kwargs.setdefault("behaviour_logprobs", behav)
    kwargs.setdefault("ref_logprobs", ref)
    with pytest.raises(ValueError, match=match):
        grpo_loss(lp, old, adv, mask, backend="torch", **kwargs)


def test_masked_weights_and_behaviour_are_never_read():
    lp, old, adv, mask, ref, ent, weights, behav = family_batch()
    weights = torch.where(mask > 0, weights, torch.full_like(weights, float("nan")))
    behav = torch.where(mask > 0, behav, torch.full_like(behav, float("nan")))
    for pl in POLICY_LOSSES:
        loss, metrics = grpo_loss(lp, old, adv, mask, policy_loss=pl, weights=weights, behaviour_logprobs=behav,
                                  is_mode="sequence_truncate", backend="torch")
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values()), pl


# ---------------------------------------------------------------- fused with the output projection


def linear_batch(seed=0, b=3, t=6, h=16, v=40):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64) * 0.5
    weight = torch.randn(v, h, generator=g, dtype=torch.float64) * 0.3
    targets = torch.randint(0, v, (b, t), generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.2).double()
    mask[:, 0] = 1
    lp0, _ = linear_logprobs(hidden, weight, targets)
    old = lp0 + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    behav = old + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    ref = lp0 + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(b, generator=g, dtype=torch.float64)
    weights = torch.rand(b, t, generator=g, dtype=torch.float64) + 0.5
    return hidden, weight, targets, mask, old, behav, ref, adv, weights


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy_loss", POLICY_LOSSES)
@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean", "token-sum"])
def test_fused_linear_family_matches_float64_reference(backend, policy_loss, loss_agg):
    hidden, weight, targets, mask, old, behav, ref, adv, weights = linear_batch()
    kw = dict(policy_loss=policy_loss, loss_agg=loss_agg, ref_logprobs=ref, kl_coef=0.05, weights=weights,
              behaviour_logprobs=behav, is_mode="token_mask", is_max=1.6, is_min=0.6, entropy_coef=0.01)
    h64, w64 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, ent = linear_logprobs(h64, w64, targets, temperature=0.9)
    expected = ref_family(lp, old, adv, mask, entropy=ent, **kw)
    exp_dh, exp_dw = torch.autograd.grad(expected, [h64, w64])
    h32, w32 = hidden.float().requires_grad_(True), weight.float().requires_grad_(True)
    kw32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    loss, _ = fused_linear_grpo_loss(h32, w32, targets, old.float(), adv.float(), mask, temperature=0.9,
                                     backend=backend, **kw32)
    dh, dw = torch.autograd.grad(loss, [h32, w32])
    what = f"{backend}/{policy_loss}/{loss_agg}"
    assert_close(loss, expected, rtol=1e-4, atol=1e-5, what=what + " loss")
    assert_close(dh, exp_dh, rtol=1e-4, atol=1e-5, what=what + " d hidden")
    assert_close(dw, exp_dw, rtol=1e-4, atol=1e-5, what=what + " d weight")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_linear_on_policy(backend):
    hidden, weight, targets, mask, _, _, _, adv, _ = linear_batch(seed=2)
    h64, w64 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, _ = linear_logprobs(h64, w64, targets)
    expected = ref_family(lp, None, adv, mask, loss_agg="seq-mean-token-mean")
    exp_dw = torch.autograd.grad(expected, [w64])[0]
    w32 = weight.float().requires_grad_(True)
    loss, _ = fused_linear_grpo_loss(hidden.float(), w32, targets, None, adv.float(), mask,
                                     loss_agg="seq-mean-token-mean", backend=backend)
    assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    assert_close(torch.autograd.grad(loss, [w32])[0], exp_dw, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not extension_available(), reason="no rubricrl._C")
def test_cpp_op_rejects_sequence_level_loss():
    """The fused op itself is token-local; the Python API composes GSPO (tested above)."""
    hidden, weight, targets, mask, old, _, _, adv, _ = linear_batch()
    with pytest.raises(RuntimeError, match="sequence-level"):
        torch.ops.rubricrl.fused_linear_grpo_loss(
            hidden.float().reshape(-1, hidden.shape[-1]), weight.float(), None, targets.reshape(-1), old.float(),
            adv.float(), mask.float(), None, None, 1.0, "gspo", 0.2, 0.28, None, 1.0, 1.05, "token-mean", 0.0, "k3",
            False, 0.0, None, None, False, True, True, False, 0)
