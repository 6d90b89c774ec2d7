"""grpo_loss (docs/algorithms.md §1): every backend against a float64 reference, gradcheck, validation."""

from __future__ import annotations

import math
import os

import pytest
import torch

# Triton chooses interpreter or compiler when a jit function is decorated, triton.language's
# own helpers (tl.zeros, tl.sum) included, i.e. when triton is first imported. verl and
# liger-kernel import triton, so on a machine without a GPU the interpreter is chosen here,
# before any of them (the other GRPO test files import this one first).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rubricrl.ops import extension_available, grpo_loss  # noqa: E402

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not extension_available(), reason="no rubricrl._C")),
            "triton"]
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


# ---------------------------------------------------------------- float64 reference, written from docs/algorithms.md §1


def ref_agg(x, mask, mode, agg_norm=None, horizon=None):
    """The aggregation (docs/algorithms.md §1) of a token matrix x [B, T] under mask (float64)."""
    x = torch.where(mask > 0, x, torch.zeros_like(x))
    if mode == "token-sum":
        return x.sum() / (agg_norm if agg_norm is not None else 1.0)
    if mode == "token-mean":
        n = agg_norm if agg_norm is not None else mask.sum()
        return x.sum() / n if float(n) > 0 else x.sum() * 0
    if mode == "token-sum":
        return x.sum() / (agg_norm if agg_norm is not None else 1.0)
    counts = mask.sum(1)
    nonempty = counts > 0
    s = agg_norm if agg_norm is not None else nonempty.sum()
    if float(s) == 0:
        return x.sum() * 0
    per = x.sum(1) / counts.clamp(min=1) if mode == "seq-mean-token-mean" else x.sum(1)
    loss = per[nonempty].sum() / s
    if mode == "seq-mean-token-sum-norm":
        loss = loss / (horizon if horizon is not None else mask.shape[1])
    return loss


def ref_kl(lp, ref, kl_type):
    d = torch.clamp(ref - lp, -20, 20)
    if kl_type == "k1":
        return -d
    if kl_type == "k2":
        return 0.5 * d * d
    return torch.clamp(torch.exp(d) - d - 1, max=10)


def ref_grpo(lp, old, adv, mask, *, eps_low=0.2, eps_high=0.28, clip_c=None, loss_agg="token-mean",
             ref_logprobs=None, kl_coef=0.0, kl_type="k3", entropy=None, entropy_coef=0.0, agg_norm=None,
             horizon=None):
    """-> (loss, metrics) in float64; differentiable in lp and entropy."""
    m = mask.double()
    a = adv.double()
    a = a[:, None].expand_as(lp) if a.dim() == 1 else a
    old = old.double()
    ratio = torch.exp(torch.clamp(lp - old, -20, 20))
    pg1 = -a * ratio
    pg2 = -a * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    pg = torch.maximum(pg1, pg2)
    lower = torch.zeros_like(m, dtype=torch.bool)
    if clip_c is not None:
        lower = (a < 0) & (pg > -a * clip_c)
        pg = torch.where(a < 0, torch.minimum(pg, -a * clip_c), pg)
    x = pg
    valid = m > 0
    nv = max(float(m.sum()), 1.0)
    metrics = {
        "clipfrac": ((pg2 > pg1) & valid).sum() / nv,
        "clipfrac_lower": (lower & valid).sum() / nv,
        "approx_kl": torch.where(valid, old - lp, torch.zeros_like(lp)).sum() / nv,
    }
    if ref_logprobs is not None:
        k = ref_kl(lp, ref_logprobs.double(), kl_type)
        x = x + kl_coef * k
        metrics["kl"] = ref_agg(k, m, loss_agg, agg_norm, horizon)
    if entropy is not None:
        x = x - entropy_coef * entropy
        metrics["entropy"] = ref_agg(entropy, m, loss_agg, agg_norm, horizon)
    return ref_agg(x, m, loss_agg, agg_norm, horizon), metrics


# ---------------------------------------------------------------- data


def make_batch(b=4, t=7, seed=0, per_token_adv=False, empty_row=True):
    """Log-probs with both clip sides, dual-clip tokens, |lp - old| > 20 and k3 > 10 cases, an empty row."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    old = lp + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.8
    old[0, 1] = lp[0, 1] + 25.0  # log-ratio clamped (no gradient through the ratio)
    old[1, 2] = lp[1, 2] - 25.0
    old[2, 0] = lp[2, 0] - 2.0  # ratio e^2 > clip_c: dual clip where A < 0
    adv = torch.randn(b, t, generator=g, dtype=torch.float64) if per_token_adv else \
        torch.tensor([0.7, -1.3, -0.4, 1.1, -0.9, 0.5][:b], dtype=torch.float64)
    mask = (torch.rand(b, t, generator=g) > 0.25).double()
    mask[:, 0] = 1.0
    mask[0, 1] = mask[1, 2] = 1.0
    if empty_row:
        mask[b - 1] = 0.0
    ref = lp + torch.randn(b, t, generator=g, dtype=torch.float64) * 1.5
    ref[3 % b, 3] = lp[3 % b, 3] + 22.0  # |ref - lp| > 20: clamped, and k3 capped at 10
    ent = torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    return lp, old, adv, mask, ref, ent


CONFIGS = {
    "plain": dict(),
    "dual": dict(clip_c=3.0),
    "k1": dict(kl="k1", kl_coef=0.1),
    "k2": dict(kl="k2", kl_coef=0.05),
    "k3+dual": dict(kl="k3", kl_coef=0.2, clip_c=2.5),
    "entropy": dict(entropy_coef=0.01),
    "kl-metric-only": dict(kl="k3", kl_coef=0.0),
    "norms": dict(agg_norm=11.0, horizon=9, eps_low=0.1, eps_high=0.4),
    "token-adv": dict(per_token_adv=True, clip_c=3.0),
}


def split_config(cfg, lp, old, adv, mask, ref, ent):
    """-> kwargs for grpo_loss / ref_grpo and whether entropy is passed."""
    cfg = dict(cfg)
    cfg.pop("per_token_adv", None)
    kw = {}
    if "kl" in cfg:
        kw.update(ref_logprobs=ref, kl_coef=cfg.pop("kl_coef"), kl_type=cfg.pop("kl"))
    if "entropy_coef" in cfg:
        kw.update(entropy=ent, entropy_coef=cfg.pop("entropy_coef"))
    kw.update(cfg)
    return kw


def assert_close(actual, expected, rtol=1e-5, atol=1e-6, what=""):
    torch.testing.assert_close(actual.double(), expected.double().detach(), rtol=rtol, atol=atol, msg=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_float64_reference(backend, mode, name):
    cfg = CONFIGS[name]
    lp64, old, adv, mask, ref, ent64 = make_batch(per_token_adv=cfg.get("per_token_adv", False))
    kw = split_config(cfg, lp64, old, adv, mask, ref, ent64)
    # the op runs on fp32 inputs (the usual case); the reference on the same values in float64
    lp = lp64.float().requires_grad_()
    lp_ref = lp.detach().double().requires_grad_()
    kw32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ent = None
    if "entropy" in kw:
        ent = kw32["entropy"].requires_grad_()
        kw32["entropy"] = ent
        ent_ref = ent.detach().double().requires_grad_()
        kw["entropy"] = ent_ref
    loss, metrics = grpo_loss(lp, old.float(), adv.float(), mask.float(), loss_agg=mode, backend=backend, **kw32)
    want, want_metrics = ref_grpo(lp_ref, old, adv, mask, loss_agg=mode, **kw)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert_close(loss, want, what="loss")
    assert set(metrics) == set(want_metrics)
    for k, v in metrics.items():
        assert v.dtype == torch.float32 and v.shape == ()
        assert_close(v, want_metrics[k], what=k)
    inputs = [lp] + ([ent] if ent is not None else [])
    ref_inputs = [lp_ref] + ([kw["entropy"]] if ent is not None else [])
    grads = torch.autograd.grad(loss, inputs)
    want_grads = torch.autograd.grad(want, ref_inputs, allow_unused=True)
    for g, w in zip(grads, want_grads):
        assert g.dtype == torch.float32
        assert_close(g, w if w is not None else torch.zeros_like(g), what="grad")


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=BACKENDS[1].marks)])
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_float64(backend, mode):
    lp, old, adv, mask, ref, ent = make_batch(b=3, t=5, seed=3)
    kw = dict(clip_c=3.0, ref_logprobs=ref, kl_coef=0.1, kl_type="k3", entropy_coef=0.02, loss_agg=mode,
              backend=backend)

    def f(lp_, ent_):
        return grpo_loss(lp_, old, adv, mask, entropy=ent_, **kw)[0]

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(), ent.clone().requires_grad_()))
    loss = f(lp, ent)
    assert loss.dtype == torch.float64
    assert_close(loss, ref_grpo(lp, old, adv, mask, **{k: v for k, v in kw.items() if k != "backend"},
                                entropy=ent)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_no_valid_token_gives_zero_loss_and_grads(backend, mode):
    lp, old, adv, mask, ref, ent = make_batch()
    lp = lp.float().requires_grad_()
    ent = ent.float().requires_grad_()
    loss, metrics = grpo_loss(lp, old.float(), adv.float(), torch.zeros_like(mask), loss_agg=mode,
                              ref_logprobs=ref.float(), kl_coef=0.1, entropy=ent, entropy_coef=0.1, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in metrics.values())
    assert torch.count_nonzero(lp.grad) == 0 and torch.count_nonzero(ent.grad) == 0
    # an empty batch too
    e = torch.empty(0, 5)
    loss, metrics = grpo_loss(e, e, torch.empty(0), e, loss_agg=mode, backend=backend)
    assert loss.item() == 0.0 and not any(torch.isnan(v) for v in metrics.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_tokens_are_ignored_even_if_nan(backend):
    lp, old, adv, mask, _, _ = make_batch()
    lp = lp.float()
    poisoned = torch.where(mask > 0, lp, torch.full_like(lp, math.nan)).requires_grad_()
    loss, metrics = grpo_loss(poisoned, old.float(), adv.float(), mask.bool(), clip_c=3.0, backend=backend)
    clean, _ = grpo_loss(lp, old.float(), adv.float(), mask.long(), clip_c=3.0, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert_close(loss, clean, rtol=1e-6, atol=0)
    assert torch.isfinite(poisoned.grad).all() and (poisoned.grad[mask == 0] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_advantage_shapes_and_dtypes(backend):
    lp, old, adv, mask, _, _ = make_batch()
    per_row, _ = grpo_loss(lp.float(), old.float(), adv.float(), mask, backend=backend)
    col, _ = grpo_loss(lp.float(), old.float(), adv.float()[:, None], mask, backend=backend)
    full, _ = grpo_loss(lp.float(), old.float(), adv.float()[:, None].expand_as(lp).contiguous(), mask,
                        backend=backend)
    assert_close(col, per_row, rtol=0, atol=0)
    assert_close(full, per_row, rtol=1e-6, atol=1e-7)
    x = lp.bfloat16().requires_grad_()
    loss, _ = grpo_loss(x, old.bfloat16(), adv.bfloat16(), mask, backend=backend)
    loss.backward()
    assert loss.dtype == torch.float32 and x.grad.dtype == torch.bfloat16


def test_upstream_gradient_scales():
    lp, old, adv, mask, _, _ = make_batch()
    lp = lp.float().requires_grad_()
    loss, _ = grpo_loss(lp, old.float(), adv.float(), mask)
    (g1,) = torch.autograd.grad(loss, lp)
    loss, _ = grpo_loss(lp, old.float(), adv.float(), mask)
    (g3,) = torch.autograd.grad(-3 * loss, lp)
    assert_close(g3, -3 * g1, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eps_low=1.5), "eps_low must be in \\[0, 1\\], got 1.5"),
        (dict(eps_low=-0.1), "eps_low must be in \\[0, 1\\], got -0.1"),
        (dict(eps_high=-0.5), "eps_high must be >= 0, got -0.5"),
        (dict(clip_c=1.0), "clip_c .* must be > 1, got 1.0"),
        (dict(loss_agg="sum"), "loss_agg must be one of .* got 'sum'"),
        (dict(kl_type="k4", ref_logprobs=True), "kl_type must be one of .* got 'k4'"),
        (dict(kl_coef=0.1), "kl_coef=0.1 > 0 needs ref_logprobs"),
        (dict(entropy_coef=0.1), "entropy_coef=0.1 needs the per-token entropy"),
        (dict(agg_norm=0.0), "agg_norm must be > 0, got 0.0"),
        (dict(horizon=0), "horizon must be a positive int, got 0"),
        (dict(backend="cuda"), "cannot use backend 'cuda'"),
    ],
)
def test_validation_errors(kwargs, match):
    lp, old, adv, mask, ref, _ = make_batch()
    if kwargs.get("ref_logprobs") is True:
        kwargs["ref_logprobs"] = ref
    with pytest.raises((ValueError, RuntimeError), match=match):
        grpo_loss(lp, old, adv, mask, **kwargs)


def test_shape_and_mask_errors():
    lp, old, adv, mask, _, _ = make_batch()
    with pytest.raises(ValueError, match=r"advantages must have shape \[4\] or \[4, 7\], got \[4, 6\]"):
        grpo_loss(lp, old, torch.zeros(4, 6), mask)
    with pytest.raises(ValueError, match=r"advantages must have shape .* got \[3\]"):
        grpo_loss(lp, old, torch.zeros(3), mask)
    with pytest.raises(ValueError, match=r"old_logprobs must have shape \[4, 7\], got \[4, 6\]"):
        grpo_loss(lp, old[:, :6], adv, mask)
    bad = mask.clone()
    bad[1, 3] = 0.5
    with pytest.raises(ValueError, match=r"mask must hold only 0 and 1, got mask\[1, 3\] = 0.5"):
        grpo_loss(lp, old, adv, bad)
    bad = mask.long()
    bad[2, 2] = 2
    with pytest.raises(ValueError, match=r"mask\[2, 2\] = 2"):
        grpo_loss(lp, old, adv, bad)
    with pytest.raises(ValueError, match=r"logprobs must be \[B, T\]"):
        grpo_loss(lp[0], old[0], adv, mask[0])


def test_cpp_op_fake_kernels():
    if not extension_available():
        pytest.skip("no rubricrl._C")

    lp, old, adv, mask, ref, ent = make_batch()
    args = (lp.float(), old.float(), adv.float(), mask.float(), ref.float(), ent.float(), None, "vanilla", 0.2, 0.28,
            3.0, 1.0, 1.05, "seq-mean-token-mean", 0.1, "k3", False, 0.01, None, None)
    torch.library.opcheck(torch.ops.rubricrl.grpo_loss, args, test_utils=("test_schema", "test_faketensor"))
