"""Masked and ignored tokens have no effect at all, on every op and every CPU backend.

Property: fill every per-token input at the masked / ignored positions (hidden states,
logits, old and reference log-probs, advantages, entropies, targets that are not read)
with NaN, +-Inf or huge values; the op's values and every gradient must be bitwise
those of the same call with benign values there, the masked rows' gradients exactly 0,
and both must match a float64 reference computed without the masked positions.
The Triton backend runs under its interpreter, so it gets fewer and smaller examples.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rubricrl.ops import (
    extension_available,
    fused_linear_grpo_loss,
    fused_linear_logprobs,
    grpo_loss,
    rubric_scores,
    span_mean_prob,
    token_logprobs,
    verdict_probs,
)
from rubricrl.ops.grpo import LOSS_AGG_MODES
from tests.reference import linear_logprobs, logprobs_from_logits
from tests.test_grpo_loss import ref_grpo

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not extension_available(), reason="no rubricrl._C")),
            "triton"]
EXAMPLES = {"torch": 25, "cpp": 25, "triton": 10}  # the interpreter runs one Python program per row
POISON = (math.nan, math.inf, -math.inf, 1e30, -1e30, 3e38)

# The Triton interpreter runs kernels in numpy, which warns about NaN/Inf arithmetic on the
# poisoned rows that the kernels then discard: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")


def run_property(check, backend):
    """Runs ``check(data, backend)`` as a hypothesis property with the backend's example budget."""
    prop = given(st.data())(lambda data: check(data, backend))
    settings(max_examples=EXAMPLES[backend], deadline=None, derandomize=True,
             suppress_health_check=[HealthCheck.too_slow])(prop)()


def poisoned(data, t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` whose entries at ``where`` (a bool mask of t's leading dims) hold POISON values:
    one value everywhere, or a mix drawn per entry."""
    out = t.clone()
    k = out[where].numel()
    if k == 0:
        return out
    if data.draw(st.booleans(), label="one poison value"):
        vals = torch.full((k,), data.draw(st.sampled_from(POISON), label="poison"))
    else:
        g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="poison seed"))
        vals = torch.tensor(POISON)[torch.randint(len(POISON), (k,), generator=g)]
    out[where] = vals.to(out.dtype).reshape(out[where].shape)
    return out


def same(actual, expected, what):
    """Bitwise equal (NaN == NaN), or both None."""
    assert (actual is None) == (expected is None), what
    if actual is not None:
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True, msg=lambda m: f"{what}: {m}")


def zero_at(grad, rows, what):
    assert torch.equal(grad[rows], torch.zeros_like(grad[rows])), f"{what} is not exactly 0 at masked rows"


def close(actual, expected, what, tol=1e-4):
    scale = 1.0 + expected.abs().max().item() if expected.numel() else 1.0
    err = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    assert err <= tol * scale, f"{what}: max error {err:.3g} vs float64 reference (scale {scale:.3g})"


def grads(outputs, inputs, grad_outputs=None):
    inputs = [t for t in inputs if t is not None]
    return list(torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True))


def draw_shape(data, backend):
    small = backend == "triton"
    b = data.draw(st.integers(1, 2 if small else 3), label="B")
    t = data.draw(st.integers(1, 4 if small else 6), label="T")
    h = data.draw(st.integers(1, 4 if small else 8), label="H")
    v = data.draw(st.integers(2, 12 if small else 40), label="V")
    return b, t, h, v


def seeded(data):
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))


def projection(data, g, v, h, dtype=torch.float32):
    weight = (torch.randn(v, h, generator=g) / math.sqrt(h)).to(dtype).requires_grad_()
    bias = torch.randn(v, generator=g).to(dtype).requires_grad_() if data.draw(st.booleans(), label="bias") else None
    return weight, bias


def draw_dtype(data, backend):
    """fp32, or bf16 inputs (cast to fp32 inside the ops) on the compiled backends."""
    if backend == "triton":
        return torch.float32
    return data.draw(st.sampled_from([torch.float32, torch.bfloat16]), label="dtype")


TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # vs float64 of the same (rounded) inputs


def leaf(t):
    return t.detach().clone().requires_grad_() if t is not None else None


# ---------------------------------------------------------------- GRPO


def grpo_options(data, has_ref):
    kw = dict(
        loss_agg=data.draw(st.sampled_from(LOSS_AGG_MODES), label="loss_agg"),
        clip_c=data.draw(st.sampled_from([None, 3.0]), label="clip_c"),
    )
    if has_ref:
        kw.update(kl_coef=data.draw(st.sampled_from([0.0, 0.1]), label="kl_coef"),
                  kl_type=data.draw(st.sampled_from(["k1", "k2", "k3"]), label="kl_type"))
    return kw


def grpo_tokens(data, g, b, t):
    """-> mask [B, T], benign old/ref log-probs, advantages ([B] or [B, T]) and their poisoned copies."""
    mask = torch.rand(b, t, generator=g) < data.draw(st.sampled_from([0.0, 0.3, 0.7, 1.0]), label="p(valid)")
    old = torch.randn(b, t, generator=g) - 2.0
    ref = torch.randn(b, t, generator=g) - 2.0 if data.draw(st.booleans(), label="ref") else None
    per_token = data.draw(st.booleans(), label="per-token advantages")
    adv = torch.randn(b, t, generator=g) if per_token else torch.randn(b, generator=g)
    adv_masked = ~mask if per_token else ~mask.any(1)  # [B] advantages: responses without a valid token
    bad = dict(old=poisoned(data, old, ~mask), adv=poisoned(data, adv, adv_masked),
               ref=poisoned(data, ref, ~mask) if ref is not None else None)
    return mask, dict(old=old, adv=adv, ref=ref), bad


def check_fused_grpo(data, backend):
    b, t, h, v = draw_shape(data, backend)
    g = seeded(data)
    dtype = draw_dtype(data, backend)
    hidden = torch.randn(b, t, h, generator=g).to(dtype)
    weight, bias = projection(data, g, v, h, dtype)
    targets = torch.randint(0, v, (b, t), generator=g)
    mask, good, bad = grpo_tokens(data, g, b, t)
    bad_targets = targets.clone()
    bad_targets[~mask] = data.draw(st.sampled_from([-1, -100, v, v + 7, 2**40]), label="masked target")
    kw = grpo_options(data, good["ref"] is not None)
    kw.update(
        entropy_coef=data.draw(st.sampled_from([0.0, 0.01]), label="entropy_coef"),
        compute_entropy=data.draw(st.booleans(), label="compute_entropy"),
        temperature=data.draw(st.sampled_from([1.0, 0.7]), label="temperature"),
        token_chunk=data.draw(st.sampled_from([None, 1, 2, 3, 5]), label="token_chunk"),
        backend=backend,
    )
    runs = []
    for hid, tgt, tok in ((hidden, targets, good), (poisoned(data, hidden, ~mask), bad_targets, bad)):
        hid, w, bi = leaf(hid), leaf(weight), leaf(bias)
        loss, metrics = fused_linear_grpo_loss(hid, w, tgt, tok["old"], tok["adv"], mask, bias=bi,
                                               ref_logprobs=tok["ref"], **kw)
        runs.append((loss, metrics, grads(loss, [hid, w, bi])))
    (loss0, met0, g0), (loss1, met1, g1) = runs
    same(loss1, loss0, "loss")
    assert met1.keys() == met0.keys()
    for k in met0:
        same(met1[k], met0[k], f"metric {k}")
    for name, a, e in zip(("d_hidden", "d_weight", "d_bias"), g1, g0):
        same(a, e, name)
        assert torch.isfinite(a).all(), f"{name} is not finite"
    zero_at(g1[0], ~mask, "d_hidden")

    # float64 reference on the benign inputs, masked rows left out of the loss by the mask alone
    h64, w64 = hidden.double().requires_grad_(), weight.detach().double().requires_grad_()
    b64 = bias.detach().double().requires_grad_() if bias is not None else None
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    lp, ent = linear_logprobs(h64, w64, safe, b64, kw["temperature"])
    with_ent = kw["compute_entropy"] or kw["entropy_coef"] != 0.0
    ref_kw = {k: kw[k] for k in ("loss_agg", "clip_c", "kl_coef", "kl_type", "entropy_coef") if k in kw}
    ref_loss, ref_met = ref_grpo(lp, good["old"], good["adv"], mask, ref_logprobs=good["ref"],
                                 entropy=ent if with_ent else None, **ref_kw)
    close(loss1, ref_loss, "loss", TOL[dtype])
    for k in ("approx_kl", "entropy", "kl"):
        if k in ref_met:
            close(met1[k], ref_met[k], f"metric {k}", TOL[dtype])
    for name, a, e in zip(("d_hidden", "d_weight", "d_bias"), g1, grads(ref_loss, [h64, w64, b64])):
        close(a, e, name, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_linear_grpo_loss_ignores_masked_tokens(backend):
    run_property(check_fused_grpo, backend)


def check_grpo_loss(data, backend):
    b, t, _, _ = draw_shape(data, backend)
    g = seeded(data)
    lp = torch.randn(b, t, generator=g) - 2.0
    ent = torch.rand(b, t, generator=g) * 3.0 if data.draw(st.booleans(), label="entropy") else None
    mask, good, bad = grpo_tokens(data, g, b, t)
    kw = grpo_options(data, good["ref"] is not None)
    if ent is not None:
        kw["entropy_coef"] = data.draw(st.sampled_from([0.0, 0.01]), label="entropy_coef")
    runs = []
    for lp_in, ent_in, tok in ((lp, ent, good), (poisoned(data, lp, ~mask),
                                                 poisoned(data, ent, ~mask) if ent is not None else None, bad)):
        lp_in, ent_in = leaf(lp_in), leaf(ent_in)
        loss, metrics = grpo_loss(lp_in, tok["old"], tok["adv"], mask, ref_logprobs=tok["ref"], entropy=ent_in,
                                  backend=backend, **kw)
        runs.append((loss, metrics, grads(loss, [lp_in, ent_in])))
    (loss0, met0, g0), (loss1, met1, g1) = runs
    same(loss1, loss0, "loss")
    for k in met0:
        same(met1[k], met0[k], f"metric {k}")
    for name, a, e in zip(("d_logprobs", "d_entropy"), g1, g0):
        same(a, e, name)
        zero_at(a, ~mask, name)
    lp64 = lp.double().requires_grad_()
    ref_loss, _ = ref_grpo(lp64, good["old"], good["adv"], mask, ref_logprobs=good["ref"],
                           entropy=ent.double() if ent is not None else None, **kw)
    close(loss1, ref_loss, "loss")
    close(g1[0], grads(ref_loss, [lp64])[0], "d_logprobs")


@pytest.mark.parametrize("backend", BACKENDS)
def test_grpo_loss_ignores_masked_tokens(backend):
    run_property(check_grpo_loss, backend)


# ---------------------------------------------------------------- log-probs


def ignored_targets(data, g, shape, v):
    """-> (targets with ignore_index at ignored positions, ignored bool mask, ignore_index)."""
    ignore_index = data.draw(st.sampled_from([-100, -1, v + 3]), label="ignore_index")
    ignored = torch.rand(shape, generator=g) < data.draw(st.sampled_from([0.0, 0.4, 1.0]), label="p(ignored)")
    targets = torch.randint(0, v, shape, generator=g)
    return torch.where(ignored, torch.full_like(targets, ignore_index), targets), ignored, ignore_index


def upstream(data, g, shape, ignored):
    """Upstream gradient: benign values, and a poisoned copy (never read at ignored positions)."""
    good = torch.randn(shape, generator=g)
    return good, poisoned(data, good, ignored)


def check_fused_logprobs(data, backend):
    b, t, h, v = draw_shape(data, backend)
    g = seeded(data)
    dtype = draw_dtype(data, backend)
    hidden = torch.randn(b, t, h, generator=g).to(dtype)
    weight, bias = projection(data, g, v, h, dtype)
    targets, ignored, ignore_index = ignored_targets(data, g, (b, t), v)
    # also tokens whose log-prob is simply unused (no upstream gradient): their rows must not
    # reach d weight either, whatever their hidden state holds
    unused = ~ignored & (torch.rand(b, t, generator=g) < 0.3)
    with_ent = data.draw(st.booleans(), label="entropy")
    g_lp, g_lp_bad = upstream(data, g, (b, t), ignored)
    g_ent, g_ent_bad = upstream(data, g, (b, t), ignored)
    g_lp[unused] = g_lp_bad[unused] = 0.0
    g_ent[unused] = g_ent_bad[unused] = 0.0
    kw = dict(bias=None, ignore_index=ignore_index, return_entropy=True, backend=backend,
              temperature=data.draw(st.sampled_from([1.0, 0.7]), label="temperature"),
              vocab_chunk=data.draw(st.sampled_from([None, 1, 3, 7]), label="vocab_chunk"))
    runs = []
    for hid, glp, gent in ((hidden, g_lp, g_ent), (poisoned(data, hidden, ignored | unused), g_lp_bad, g_ent_bad)):
        hid, w, bi = leaf(hid), leaf(weight), leaf(bias)
        lp, ent = fused_linear_logprobs(hid, w, targets, **{**kw, "bias": bi})
        outs, gouts = ([lp, ent], [glp, gent]) if with_ent else ([lp], [glp])
        runs.append((lp, ent, grads(outs, [hid, w, bi], gouts)))
    (lp0, ent0, g0), (lp1, ent1, g1) = runs
    used = ~unused  # unused rows hold the poison's own (meaningless) log-probs
    same(lp1[used], lp0[used], "log-probs")
    same(ent1[used], ent0[used], "entropies")
    assert torch.equal(lp1[ignored], torch.zeros_like(lp1[ignored])), "ignored log-probs must read 0"
    assert torch.equal(ent1[ignored], torch.zeros_like(ent1[ignored])), "ignored entropies must read 0"
    for name, a, e in zip(("d_hidden", "d_weight", "d_bias"), g1, g0):
        same(a, e, name)
        assert torch.isfinite(a).all(), f"{name} is not finite"
    zero_at(g1[0], ignored | unused, "d_hidden")

    h64, w64 = hidden.double().requires_grad_(), weight.detach().double().requires_grad_()
    b64 = bias.detach().double().requires_grad_() if bias is not None else None
    rlp, rent = linear_logprobs(h64, w64, targets, b64, kw["temperature"], ignore_index)
    close(lp1[used], rlp[used], "log-probs", TOL[dtype])
    total = (rlp * g_lp).sum() + ((rent * g_ent).sum() if with_ent else 0.0)
    for name, a, e in zip(("d_hidden", "d_weight", "d_bias"), g1, grads(total, [h64, w64, b64])):
        close(a, e, name, TOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_linear_logprobs_ignores_ignored_tokens(backend):
    run_property(check_fused_logprobs, backend)


def check_token_logprobs(data, backend):
    b, t, _, v = draw_shape(data, backend)
    g = seeded(data)
    logits = torch.randn(b, t, v, generator=g) * 3.0
    targets, ignored, ignore_index = ignored_targets(data, g, (b, t), v)
    g_lp, g_lp_bad = upstream(data, g, (b, t), ignored)
    g_ent, g_ent_bad = upstream(data, g, (b, t), ignored)
    kw = dict(ignore_index=ignore_index, return_entropy=True, backend=backend,
              temperature=data.draw(st.sampled_from([1.0, 0.7]), label="temperature"))
    runs = []
    for x, glp, gent in ((logits, g_lp, g_ent), (poisoned(data, logits, ignored), g_lp_bad, g_ent_bad)):
        x = leaf(x)
        lp, ent = token_logprobs(x, targets, **kw)
        runs.append((lp, ent, grads([lp, ent], [x], [glp, gent])[0]))
    (lp0, ent0, d0), (lp1, ent1, d1) = runs
    same(lp1, lp0, "log-probs")
    same(ent1, ent0, "entropies")
    assert torch.equal(lp1[ignored], torch.zeros_like(lp1[ignored])), "ignored log-probs must read 0"
    same(d1, d0, "d_logits")
    zero_at(d1, ignored, "d_logits")
    x64 = logits.double().requires_grad_()
    rlp, rent = logprobs_from_logits(x64, targets, kw["temperature"], ignore_index)
    close(lp1, rlp, "log-probs")
    close(d1, grads((rlp * g_lp).sum() + (rent * g_ent).sum(), [x64])[0], "d_logits")


@pytest.mark.parametrize("backend", BACKENDS)
def test_token_logprobs_ignores_ignored_tokens(backend):
    run_property(check_token_logprobs, backend)


# ---------------------------------------------------------------- reward ops


def check_verdict(data, backend):
    _, n, h, v = draw_shape(data, backend)
    v = max(v, 3)
    g = seeded(data)
    hidden = torch.randn(n, h, generator=g)
    weight, bias = projection(data, g, v, h)
    perm = torch.randperm(v, generator=g)
    k_yes = data.draw(st.integers(1, v - 2), label="Ky")
    yes, no = perm[:k_yes], perm[k_yes:v - data.draw(st.integers(0, v - k_yes - 1), label="cut")]
    unused = torch.rand(n, generator=g) < 0.4  # rows whose p(met) gets no upstream gradient
    g_p = torch.randn(n, generator=g).masked_fill(unused, 0.0)
    chunk = data.draw(st.sampled_from([None, 2, 5]), label="vocab_chunk")
    runs = []
    for hid in (hidden, poisoned(data, hidden, unused)):
        hid, w, bi = leaf(hid), leaf(weight), leaf(bias)
        p, mass = verdict_probs(hid, w, yes, no, bias=bi, return_mass=True, backend=backend, vocab_chunk=chunk)
        runs.append((p, mass, grads([p], [hid, w, bi], [g_p])))
    (p0, m0, g0), (p1, m1, g1) = runs
    same(p1[~unused], p0[~unused], "p_met")
    same(m1[~unused], m0[~unused], "verdict mass")
    for name, a, e in zip(("d_hidden", "d_weight", "d_bias"), g1, g0):
        same(a, e, name)
        assert torch.isfinite(a).all(), f"{name} is not finite"
    zero_at(g1[0], unused, "d_hidden")
    z = hidden.double() @ weight.detach().double().T + (bias.detach().double() if bias is not None else 0.0)
    close(p1[~unused], torch.softmax(z[:, torch.cat([yes, no])], -1)[:, :k_yes].sum(-1)[~unused], "p_met")


@pytest.mark.parametrize("backend", BACKENDS)
def test_verdict_probs_unused_rows_do_not_leak(backend):
    run_property(check_verdict, backend)


def check_span(data, backend):
    _, m, h, v = draw_shape(data, backend)
    g = seeded(data)
    num_spans = data.draw(st.integers(1, 4), label="S")
    hidden = torch.randn(m, h, generator=g)
    weight, bias = projection(data, g, v, h)
    weight, bias = weight.detach(), bias.detach() if bias is not None else None
    targets = torch.randint(0, v, (m,), generator=g)
    span = torch.randint(0, num_spans, (m,), generator=g)
    bad_span = data.draw(st.integers(0, num_spans - 1), label="poisoned span")
    rows = span == bad_span
    chunk = data.draw(st.sampled_from([None, 2, 5]), label="vocab_chunk")
    out0 = span_mean_prob(hidden, weight, targets, span, num_spans, bias=bias, vocab_chunk=chunk, backend=backend)
    out1 = span_mean_prob(poisoned(data, hidden, rows), weight, targets, span, num_spans, bias=bias,
                          vocab_chunk=chunk, backend=backend)
    others = torch.arange(num_spans) != bad_span
    same(out1[others], out0[others], "other spans")
    z = hidden.double() @ weight.double().T + (bias.double() if bias is not None else 0.0)
    p = torch.softmax(z, -1).gather(1, targets[:, None]).squeeze(1)
    ref = torch.zeros(num_spans, dtype=torch.float64).index_add_(0, span, p)
    ref = ref / torch.zeros(num_spans, dtype=torch.float64).index_add_(0, span, torch.ones_like(p))  # empty: NaN
    assert torch.equal(out1[others].isnan(), ref[others].isnan()), "only empty spans read NaN"
    defined = others & ~ref.isnan()
    close(out1[defined], ref[defined], "span means")


@pytest.mark.parametrize("backend", BACKENDS)
def test_span_mean_prob_spans_are_independent(backend):
    run_property(check_span, backend)


def check_rubric(data, backend):
    g = seeded(data)
    counts = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=5), label="items per response")
    offsets = torch.tensor([0] + counts).cumsum(0)
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    met = torch.rand(int(offsets[-1]), generator=g)
    points = torch.randn(met.shape, generator=g) * 3.0
    clip = data.draw(st.booleans(), label="clip")
    # a response without positive points has an undefined score (NaN); the upstream gradient
    # there is never read: NaN in it changes nothing, and its items get exactly 0
    runs = []
    for poison in (False, True):
        met_in = leaf(met)
        scores = rubric_scores(met_in, points, offsets, clip=clip, backend=backend)
        undefined = scores.isnan()
        g_s = torch.randn(len(counts), generator=torch.Generator().manual_seed(7)).masked_fill(undefined, 0.0)
        if poison:
            g_s = poisoned(data, g_s, undefined)
        runs.append((scores, grads([scores], [met_in], [g_s])[0], g_s))
    (s0, d0, g_s), (s1, d1, _) = runs
    same(s1, s0, "scores")
    same(d1, d0, "d_met")
    zero_at(d1, undefined[owner], "d_met")
    p = points.double()
    den = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, owner, p.clamp_min(0))
    raw = torch.zeros_like(den).index_add_(0, owner, p * met.double()) / den
    live = (den > 0) & (((raw >= 0) & (raw <= 1)) if clip else True)
    close(d1, torch.where(live, g_s.double() / den, 0.0)[owner] * p, "d_met")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rubric_scores_undefined_scores_do_not_leak(backend):
    run_property(check_rubric, backend)
