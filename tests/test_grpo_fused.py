"""fused_linear_grpo_loss: vs the unfused ops, vs a float64 reference, and vs Liger-Kernel."""

from __future__ import annotations

import pytest
import torch

from rubricrl.ops import extension_available, fused_linear_grpo_loss, fused_linear_logprobs, grpo_loss
from tests.test_grpo_loss import BACKENDS, MODES, assert_close, ref_grpo

B, T, H, V = 3, 6, 16, 40


def make_inputs(seed=0, bias=True, empty_row=False, vocab=V):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(vocab, H, generator=g) * 0.4
    b = torch.randn(vocab, generator=g) * 0.5 if bias else None
    targets = torch.randint(0, vocab, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    if empty_row:
        mask[1] = 0.0
    with torch.no_grad():
        lp = torch.log_softmax((hidden @ weight.t() + (b if bias else 0)) / 0.8, -1)
        lp = lp.gather(-1, targets[..., None])[..., 0]
    old = lp + torch.randn(B, T, generator=g) * 0.5  # ratios on both sides of the clip range
    ref = lp + torch.randn(B, T, generator=g) * 0.7
    adv = torch.tensor([1.2, -0.8, -1.5])
    targets = torch.where(mask > 0, targets, torch.full_like(targets, -100))  # never read where masked
    return hidden, weight, b, targets, old, adv, mask, ref


OPTIONS = {
    "dapo": dict(),
    "everything": dict(clip_c=3.0, ref_logprobs=True, kl_coef=0.1, kl_type="k3", entropy_coef=0.02,
                       loss_agg="seq-mean-token-mean"),
    "k2-sum-norm": dict(ref_logprobs=True, kl_coef=0.05, kl_type="k2", loss_agg="seq-mean-token-sum-norm",
                        horizon=10),
    "entropy-metric": dict(compute_entropy=True, agg_norm=7.0),
}


def leaves(hidden, weight, b):
    return [t.clone().requires_grad_() for t in (hidden, weight)] + ([b.clone().requires_grad_()] if b is not None
                                                                    else [])


def options(name, ref):
    kw = dict(OPTIONS[name])
    if kw.get("ref_logprobs"):
        kw["ref_logprobs"] = ref
    return kw


def unfused(h, w, b, targets, old, adv, mask, temperature, backend, **kw):
    entropy_coef = kw.pop("entropy_coef", 0.0)
    compute_entropy = kw.pop("compute_entropy", False)
    lp, ent = fused_linear_logprobs(h, w, targets, bias=b, temperature=temperature, return_entropy=True,
                                    backend=backend)
    extra = dict(entropy=ent, entropy_coef=entropy_coef) if entropy_coef or compute_entropy else {}
    return grpo_loss(lp, old, adv, mask, backend=backend, **extra, **kw)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_fused_equals_unfused(backend, name):
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs(empty_row=name != "dapo")
    kw = options(name, ref)
    x = leaves(hidden, weight, b)
    loss, metrics = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask, bias=x[2], temperature=0.8,
                                           chunk_size=4, backend=backend, **kw)
    grads = torch.autograd.grad(loss, x)
    y = leaves(hidden, weight, b)
    want, want_metrics = unfused(y[0], y[1], y[2], targets, old, adv, mask, 0.8, backend, **kw)
    want_grads = torch.autograd.grad(want, y)
    assert_close(loss, want, what="loss")
    assert set(metrics) == set(want_metrics)
    for k in want_metrics:
        assert_close(metrics[k], want_metrics[k], what=k)
    for g, w, t in zip(grads, want_grads, x):
        assert g.dtype == t.dtype and g.shape == t.shape
        assert_close(g, w, what="grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES)
def test_fused_matches_float64_reference(backend, mode):
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs(seed=1, empty_row=True)
    kw = dict(clip_c=3.0, ref_logprobs=ref, kl_coef=0.1, kl_type="k3", entropy_coef=0.01, loss_agg=mode)
    x = leaves(hidden, weight, b)
    loss, metrics = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask, bias=x[2], temperature=0.8,
                                           backend=backend, **kw)
    grads = torch.autograd.grad(loss, x)
    y = [t.detach().double().requires_grad_() for t in x]
    logp = torch.log_softmax((y[0] @ y[1].t() + y[2]) / 0.8, -1)
    lp = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    ent = -(logp.exp() * logp).sum(-1)
    want, want_metrics = ref_grpo(lp, old, adv, mask, entropy=ent, **kw)
    want_grads = torch.autograd.grad(want, y)
    assert_close(loss, want, what="loss")
    for k, v in want_metrics.items():
        assert_close(metrics[k], v, what=k)
    for g, w in zip(grads, want_grads):
        assert_close(g, w, rtol=1e-4, atol=1e-6, what="grad")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vocab", [40, 64])  # a partial and no partial vector at the end of a row
def test_chunk_sizes_agree(backend, vocab):
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs(seed=2, bias=False, vocab=vocab)
    results = []
    for chunk in (1, 5, None):
        x = leaves(hidden, weight, None)
        loss, _ = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask, chunk_size=chunk, backend=backend)
        results.append((loss, *torch.autograd.grad(loss, x)))
    y = leaves(hidden, weight, None)
    want, _ = unfused(y[0], y[1], None, targets, old, adv, mask, 1.0, backend)
    results.append((want, *torch.autograd.grad(want, y)))
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert_close(a, c, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entropy_coef", [0.0, 0.05])  # d logits as a scaled exp / recomputed densely
def test_wide_masked_vocab_against_float64(backend, entropy_coef):
    """V = 600 spans several vocabulary parts of the C++ epilogue (256 rows each) with a partial
    last one; the bias masks the last 100 entries with -inf (a padded vocabulary), which leaves
    the whole last part at -inf; logits reach |z| ~ 60; chunks of 1, 7, 20 and the default."""
    g = torch.Generator().manual_seed(11)
    vocab = 600
    hidden = torch.randn(B, T, H, generator=g) * 3
    weight = torch.randn(vocab, H, generator=g)
    bias = torch.randn(vocab, generator=g)
    bias[500:] = float("-inf")
    targets = torch.randint(0, 500, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    with torch.no_grad():
        lp = torch.log_softmax((hidden @ weight.t() + bias) / 0.7, -1).gather(-1, targets[..., None])[..., 0]
    old = lp + torch.randn(B, T, generator=g) * 0.3
    adv = torch.tensor([1.0, -0.5, 2.0])
    y = [hidden.double().requires_grad_(), weight.double().requires_grad_()]
    logp = torch.log_softmax((y[0] @ y[1].t() + bias.double()) / 0.7, -1)
    ent = -(logp.exp() * logp.masked_fill(torch.isinf(logp), 0)).sum(-1)
    want, _ = ref_grpo(logp.gather(-1, targets[..., None])[..., 0], old, adv, mask, entropy=ent,
                       entropy_coef=entropy_coef)
    want_grads = torch.autograd.grad(want, y)
    for chunk in (1, 7, 20, None):
        x = [hidden.clone().requires_grad_(), weight.clone().requires_grad_(), bias.clone().requires_grad_()]
        loss, metrics = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask, bias=x[2], temperature=0.7,
                                               entropy_coef=entropy_coef, compute_entropy=True, chunk_size=chunk,
                                               backend=backend)
        grads = torch.autograd.grad(loss, x)
        assert_close(loss, want, rtol=1e-4, what=f"loss, chunk {chunk}")
        assert torch.isfinite(grads[2]).all() and (grads[2][500:] == 0).all()
        for got, exp in zip(grads, want_grads):
            assert_close(got, exp, rtol=1e-4, atol=1e-5, what=f"grad, chunk {chunk}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_valid_token_and_no_grad(backend):
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs()
    x = leaves(hidden, weight, b)
    loss, metrics = fused_linear_grpo_loss(x[0], x[1], targets.clamp(min=0), old, adv, torch.zeros_like(mask),
                                           bias=x[2], backend=backend, ref_logprobs=ref, kl_coef=0.1,
                                           entropy_coef=0.1, loss_agg="seq-mean-token-mean")
    grads = torch.autograd.grad(loss, x)
    assert loss.item() == 0.0 and all(v.item() == 0.0 for v in metrics.values())
    assert all(torch.count_nonzero(g) == 0 for g in grads)
    with torch.no_grad():
        loss_ng, _ = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask, bias=x[2], backend=backend)
    loss, _ = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask, bias=x[2], backend=backend)
    assert_close(loss_ng, loss, rtol=1e-6, atol=0)
    assert loss_ng.grad_fn is None


def test_upstream_gradient_flat_hidden_and_bf16():
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs()
    x = leaves(hidden, weight, None)
    loss, _ = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask)
    g1 = torch.autograd.grad(loss, x)
    loss, _ = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask)
    g2 = torch.autograd.grad(2.5 * loss, x)
    for a, c in zip(g1, g2):
        assert_close(c, 2.5 * a, rtol=1e-6, atol=0)
    # [N, H] hidden with per-token tensors [N] (token-mean only)
    flat = x[0].detach().reshape(B * T, H).requires_grad_()
    loss_flat, _ = fused_linear_grpo_loss(flat, x[1], targets.reshape(-1), old.reshape(-1),
                                          adv[:, None].expand(B, T).reshape(-1), mask.reshape(-1))
    assert_close(loss_flat, loss / 2.5 * 2.5, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="needs responses"):
        fused_linear_grpo_loss(flat, x[1], targets.reshape(-1), old.reshape(-1), adv[:, None].expand(B, T).reshape(-1),
                               mask.reshape(-1), loss_agg="seq-mean-token-sum")
    hb, wb = hidden.bfloat16().requires_grad_(), weight.bfloat16().requires_grad_()
    loss_b, _ = fused_linear_grpo_loss(hb, wb, targets, old, adv, mask)
    loss_b.backward()
    assert loss_b.dtype == torch.float32 and hb.grad.dtype == wb.grad.dtype == torch.bfloat16


def test_fused_validation():
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs()
    bad = targets.clone()
    bad[0, 0] = V
    with pytest.raises(ValueError, match=rf"targets\[0, 0\] = {V} is outside \[0, {V}\) at a valid token"):
        fused_linear_grpo_loss(hidden, weight, bad, old, adv, mask)
    with pytest.raises(ValueError, match="chunk_size must be a positive number of token rows"):
        fused_linear_grpo_loss(hidden, weight, targets, old, adv, mask, chunk_size=0)
    with pytest.raises(ValueError, match=r"advantages must have shape \[3\] or \[3, 6\], got \[2\]"):
        fused_linear_grpo_loss(hidden, weight, targets, old, adv[:2], mask)
    with pytest.raises(ValueError, match="clip_c"):
        fused_linear_grpo_loss(hidden, weight, targets, old, adv, mask, clip_c=0.5)


def test_cpp_op_fake_kernel():
    if not extension_available():
        pytest.skip("no rubricrl._C")

    hidden, weight, b, targets, old, adv, mask, ref = make_inputs()
    args = (hidden.reshape(-1, H), weight, b, targets.reshape(-1).clamp(min=0), old, adv, mask, ref, None, 1.0,
            "vanilla", 0.2, 0.28, None, 1.0, 1.05, "token-mean", 0.1, "k3", False, 0.0, None, None, True, True, True,
            True, 4)
    torch.library.opcheck(torch.ops.rubricrl.fused_linear_grpo_loss, args, test_utils=("test_schema", "test_faketensor"))


# ---------------------------------------------------------------- Liger-Kernel cross-check

LIGER_MODES = [  # (Liger loss_type, rubricrl loss_agg): equal when no response is empty (see docs/grpo.md)
    ("dapo", "token-mean"),
    ("bnpo", "token-mean"),
    ("grpo", "seq-mean-token-mean"),
    ("dr_grpo", "seq-mean-token-sum-norm"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss_type, loss_agg", LIGER_MODES)
def test_matches_liger(backend, loss_type, loss_agg):
    chunked = pytest.importorskip("liger_kernel.chunked_loss", reason="liger-kernel is not installed")
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs(seed=4)
    targets = targets.clamp(min=0)  # Liger reads the targets of masked tokens too
    liger = chunked.LigerFusedLinearGRPOLoss(
        beta=0.0, compiled=False, use_ref_model=False, chunk_size=1, epsilon_low=0.2, epsilon_high=0.28,
        loss_type=loss_type, max_completion_length=T, temperature=0.8,
    )
    x = leaves(hidden, weight, b)
    want, want_metrics = liger(x[0], x[1], targets, mask, adv, bias=x[2], old_per_token_logps=old)
    want_grads = torch.autograd.grad(want, x)
    y = leaves(hidden, weight, b)
    loss, metrics = fused_linear_grpo_loss(y[0], y[1], targets, old, adv, mask, bias=y[2], temperature=0.8,
                                           loss_agg=loss_agg, backend=backend)
    grads = torch.autograd.grad(loss, y)
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(metrics["clipfrac"], want_metrics[-1], rtol=1e-5, atol=1e-7)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_weight_or_hidden(backend):
    hidden, weight, b, targets, old, adv, mask, ref = make_inputs(seed=6)
    x = leaves(hidden, weight, b)
    loss, _ = fused_linear_grpo_loss(x[0], x[1], targets, old, adv, mask, bias=x[2], backend=backend)
    full = torch.autograd.grad(loss, x)
    h = hidden.clone().requires_grad_()
    loss, _ = fused_linear_grpo_loss(h, weight, targets, old, adv, mask, bias=b, backend=backend)  # frozen lm_head
    (dh,) = torch.autograd.grad(loss, [h])
    assert_close(dh, full[0], rtol=1e-6, atol=1e-8)
    w = weight.clone().requires_grad_()
    loss, _ = fused_linear_grpo_loss(hidden, w, targets, old, adv, mask, bias=b, backend=backend)
    (dw,) = torch.autograd.grad(loss, [w])
    assert_close(dw, full[1], rtol=1e-6, atol=1e-8)


@pytest.mark.skipif(not extension_available(), reason="no rubricrl._C")
def test_cpp_loss_and_metrics_do_not_depend_on_thread_count():
    """The C++ epilogue sums over fixed vocabulary parts merged in order and the loss terms in
    token order: the loss and metrics are bitwise equal for 1 and 2 threads (V = 600: 3 parts)."""
    g = torch.Generator().manual_seed(5)
    hidden, weight = torch.randn(B, T, H, generator=g), torch.randn(600, H, generator=g)
    targets = torch.randint(0, 600, (B, T), generator=g)
    old = torch.randn(B, T, generator=g) - 6.0
    adv, mask = torch.tensor([1.0, -1.0, 0.5]), torch.ones(B, T)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            loss, metrics = fused_linear_grpo_loss(hidden, weight, targets, old, adv, mask, compute_entropy=True,
                                                   chunk_size=7, backend="cpp")
            results.append((loss, metrics))
    finally:
        torch.set_num_threads(before)
    (l1, m1), (l2, m2) = results
    assert torch.equal(l1, l2)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
