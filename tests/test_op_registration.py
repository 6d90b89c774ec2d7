"""The rubricrl ops as torch.library ops: schemas, fakes, autograd, torch.compile, the one definition of constants.

Every ``torch.ops.rubricrl.*`` op passes ``torch.library.opcheck`` (schema, fake kernel,
autograd registration, AOT dispatch) on small inputs that require grad, in fp32 and
fp64 where the op computes in fp64; the differentiable ones pass ``gradcheck`` in fp64
where their kernels compute in fp64, and the two fused training ops compile with
``fullgraph=True`` and give the eager gradients.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rubricrl.ops as ops
from rubricrl.ops import _codegen, _schemas, constants
from rubricrl.ops._backend import extension_available

ROOT = Path(__file__).resolve().parents[1]
rr = torch.ops.rubricrl
FLOATS = [torch.float32, torch.float64]


def _g(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _opcheck(op, args):
    torch.library.opcheck(op, args)


# --- one definition --------------------------------------------------------------------------


def test_generated_header_is_up_to_date():
    """csrc/rubricrl_defs.h is exactly what the generator writes from constants.py and _schemas.py."""
    assert _codegen.HEADER.read_text() == _codegen.render(), "run: python -m rubricrl.ops._codegen"


def test_registered_schemas_are_the_python_ones():
    """The ops C++ (or Python, without the extension) defined carry the schemas of _schemas.py."""
    for name, schema in _schemas.SCHEMAS.items():
        registered = getattr(rr, name).default._schema
        expected = torch._C.parse_schema(f"rubricrl::{schema}")
        assert str(registered) == str(expected), name


@pytest.mark.skipif(not extension_available(), reason="needs the C++ extension")
def test_cpp_reads_the_shared_constants():
    """The C++ kernel clamps the log-ratio at LOG_RATIO_CLAMP and caps k3 at K3_MAX (constants.py)."""
    c = constants.LOG_RATIO_CLAMP
    lp = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[-(c + 5.0), -(c - 1.0)]], dtype=torch.float64)  # the first log-ratio is clamped
    adv = torch.tensor([-1.0], dtype=torch.float64)
    ref = torch.tensor([[c, 1.0]], dtype=torch.float64)  # k3(20) = e^20 - 21, capped
    loss, g_lp, _, metrics = rr.grpo_loss(lp, old, adv, torch.ones(1, 2), ref, None, None, "vanilla", 0.2, 1e9,
                                          None, 1.0, 1.05, "seq-mean-token-sum", 1.0, "k3", False, 0.0, None, None)
    r = torch.exp(torch.tensor([c, c - 1.0], dtype=torch.float64))
    d = torch.tensor([c, 1.0], dtype=torch.float64)
    k3 = torch.clamp(torch.exp(d) - d - 1.0, max=constants.K3_MAX)
    assert loss.item() == pytest.approx(float((r + k3).sum()), rel=1e-12)
    # d/dlp: 0 outside the clamp (first token; its k3 is capped too), exp terms inside
    assert g_lp[0, 0].item() == 0.0
    assert metrics.shape == (len(constants.GRPO_METRICS),)


# --- opcheck per op ----------------------------------------------------------------------------


def _targets(n, v, ignored=(1,)):
    t = torch.randint(0, v, (n,))
    for i in ignored:
        t[i] = -1
    return t


@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck_token_logprobs(dtype):
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 11, dtype=dtype), _targets(5, 11)
    _opcheck(rr.token_logprobs.default, (_g(logits), targets, 0.7, True))
    _opcheck(rr.token_logprobs.default, (_g(logits), targets, 1.0, False))
    lp, ent, lse = rr.token_logprobs(logits, targets, 0.7, True)
    _opcheck(rr.token_logprobs_backward.default, (torch.randn(5, dtype=lse.dtype), torch.randn(5, dtype=lse.dtype),
                                                  logits, targets, lse, ent, 0.7))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck_fused_linear_logprobs(dtype, with_bias):
    torch.manual_seed(1)
    hidden, weight = torch.randn(6, 4, dtype=dtype), torch.randn(37, 4, dtype=dtype)
    bias = _g(torch.randn(37, dtype=dtype)) if with_bias else None
    targets = _targets(6, 37)
    _opcheck(rr.fused_linear_logprobs.default, (_g(hidden), _g(weight), bias, targets, 0.9, True, 8))
    bias = bias.detach() if bias is not None else None
    lp, ent, lse = rr.fused_linear_logprobs(hidden, weight, bias, targets, 0.9, True, 8)
    g = torch.randn(6, dtype=lse.dtype)
    _opcheck(rr.fused_linear_logprobs_backward.default, (g, g, hidden, weight, bias, targets, lse, ent, 0.9, 8))


def _grpo_inputs(dtype, b=3, t=5):
    torch.manual_seed(2)
    lp = -torch.rand(b, t, dtype=dtype) * 2
    old = lp + 0.3 * torch.randn(b, t, dtype=dtype)
    ref = lp + 0.2 * torch.randn(b, t, dtype=dtype)
    mask = (torch.rand(b, t) > 0.3).float()
    mask[:, 0] = 1
    return lp, old, torch.randn(b, dtype=dtype), mask, ref, torch.rand(b, t, dtype=dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("agg, agg_norm", [("token-mean", None), ("seq-mean-token-sum-norm", 7.0), ("token-sum", None)])
@pytest.mark.parametrize("policy, clip_c, on_policy, with_weights", [
    ("vanilla", 3.0, False, False), ("gspo", 3.0, False, True), ("cispo", None, True, True), ("sapo", None, False, False),
])
def test_opcheck_grpo_loss(dtype, agg, agg_norm, policy, clip_c, on_policy, with_weights):
    lp, old, adv, mask, ref, ent = _grpo_inputs(dtype)
    if agg_norm is not None:
        agg_norm = torch.tensor(agg_norm, dtype=torch.float64)
    weights = torch.rand(lp.shape, dtype=dtype) if with_weights else None
    _opcheck(rr.grpo_loss.default, (_g(lp), None if on_policy else old, adv, mask, ref, _g(ent), weights, policy,
                                    0.2, 0.28, clip_c, 1.0, 1.05, agg, 0.1, "k3", policy == "vanilla", 0.01,
                                    agg_norm, None))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("policy_loss", ["gspo", "gspo_token", "cispo", "sapo"])
def test_opcheck_grpo_loss_family(dtype, policy_loss):
    """The family's options: per-token weights, on-policy (old_logprobs None) and token-sum."""
    lp, old, adv, mask, ref, ent = _grpo_inputs(dtype)
    weights = torch.rand(lp.shape, dtype=dtype) + 0.5
    for old_ in (old, None):
        _opcheck(rr.grpo_loss.default, (_g(lp), old_, adv, mask, ref, _g(ent), weights, policy_loss, 0.2, 0.28, None,
                                        1.0, 1.05, "token-sum", 0.1, "k3", False, 0.01, None, None))


@pytest.mark.parametrize("policy_loss", ["cispo", "sapo"])
def test_opcheck_fused_linear_grpo_loss_family(policy_loss):
    lp, old, adv, mask, ref, _ = _grpo_inputs(torch.float32)
    torch.manual_seed(3)
    hidden, weight = torch.randn(15, 4), torch.randn(29, 4)
    targets = torch.randint(0, 29, (15,))
    weights = torch.rand(lp.shape) + 0.5
    for old_ in (old, None):
        args = [_g(hidden), _g(weight), None, targets, old_, adv, mask, ref, weights, 0.8, policy_loss, 0.2, 0.28,
                None, 1.0, 1.05, "token-sum", 0.05, "k3", True, 0.01, None, None, True, True, True, False, 4]
        # advantages whose loss is > 0: opcheck back-propagates |sum(outputs)|, and the op's eager
        # backward scales its stored gradients, which are also its d_* outputs, in place, so the
        # -1 of a negative loss would flip the eager outputs that opcheck then compares
        if rr.fused_linear_grpo_loss(*args)[0].item() < 0:
            args[5] = -adv
        _opcheck(rr.fused_linear_grpo_loss.default, tuple(args))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_opcheck_fused_linear_grpo_loss(dtype, with_bias):
    lp, old, adv, mask, ref, _ = _grpo_inputs(dtype)
    torch.manual_seed(3)
    hidden, weight = torch.randn(15, 4, dtype=dtype), torch.randn(29, 4, dtype=dtype)
    bias = _g(torch.randn(29, dtype=dtype)) if with_bias else None
    targets = torch.randint(0, 29, (15,))
    for agg_norm in (torch.tensor(9.0, dtype=torch.float64),):
        # opcheck back-propagates sign(loss): the op scales its returned gradient outputs in place
        # by the upstream gradient (to save a [V, H] copy), so the eager outputs it then compares
        # are flipped for a negative loss. CISPO's loss (-c A lp) is positive for A > 0 (lp < 0).
        for policy, old_in, weights, a in (("vanilla", old.float(), None, adv),
                                           ("cispo", None, torch.rand(3, 5), adv.abs() + 0.5),
                                           ("sapo", old.float(), torch.rand(3, 5), adv)):
            _opcheck(rr.fused_linear_grpo_loss.default,
                     (_g(hidden), _g(weight), bias, targets, old_in, a.float(), mask, ref.float(), weights, 0.8,
                      policy, 0.2, 0.28, None, 1.0, 1.05, "seq-mean-token-mean", 0.05, "k2", policy == "vanilla",
                      0.01, agg_norm, None, True, True, True, with_bias, 4))


@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck_group_advantages(dtype):
    scores = torch.tensor([0.5, 1.0, 0.0, 0.25, 2.0, 2.0], dtype=dtype)
    _opcheck(rr.group_advantages.default, (_g(scores), torch.tensor([1, 0, 1, 0, 2, 2]), True, 1e-6))
    out = rr.group_advantages(_g(scores), torch.tensor([1, 0, 1, 0, 2, 2]), False, 0.0)
    assert not out.requires_grad  # advantages are constants of the loss


@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck_rubric_scores(dtype):
    met = torch.tensor([0.9, 0.2, 0.5, 0.7, 0.1], dtype=dtype)
    points = torch.tensor([2.0, 1.0, 3.0, -1.0, 4.0], dtype=dtype)
    offsets = torch.tensor([0, 2, 5])
    _opcheck(rr.rubric_scores.default, (_g(met), points, offsets, True))
    _opcheck(rr.rubric_scores_backward.default, (torch.rand(2), points, offsets))


@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck_verdict_probs(dtype):
    torch.manual_seed(4)
    hidden, weight, bias = torch.randn(4, 6, dtype=dtype), torch.randn(40, 6, dtype=dtype), torch.randn(40, dtype=dtype)
    yes, no = torch.tensor([3, 7]), torch.tensor([11, 20, 30])
    for with_mass in (False, True):
        _opcheck(rr.verdict_probs.default, (_g(hidden), _g(weight), _g(bias), yes, no, 0.8, with_mass, 16))


@pytest.mark.parametrize("dtype", FLOATS)
def test_opcheck_span_mean_prob(dtype):
    torch.manual_seed(5)
    hidden, weight = torch.randn(10, 6, dtype=dtype), torch.randn(40, 6, dtype=dtype)
    targets, span_index = torch.randint(0, 40, (10,)), torch.arange(10) % 3  # no empty span (NaN)
    _opcheck(rr.span_mean_prob.default, (_g(hidden), _g(weight), None, targets, span_index, 3, 0.9, 16))


# --- the ops differentiate on CPU tensors ------------------------------------------------------


def test_gradcheck_fp64_ops():
    """Analytic backwards of the ops that compute in fp64 for fp64 inputs, against finite differences."""
    torch.manual_seed(6)
    f64 = dict(dtype=torch.float64)
    logits, targets = torch.randn(4, 9, **f64, requires_grad=True), _targets(4, 9)
    assert torch.autograd.gradcheck(lambda x: rr.token_logprobs(x, targets, 0.7, True)[:2], (logits,))
    hidden, weight = torch.randn(4, 3, **f64, requires_grad=True), torch.randn(9, 3, **f64, requires_grad=True)
    bias = torch.randn(9, **f64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda h, w, b: rr.fused_linear_logprobs(h, w, b, targets, 0.8, True, 4)[:2], (hidden, weight, bias))
    lp, old, adv, mask, ref, ent = _grpo_inputs(torch.float64)
    lp.requires_grad_(True)
    ent.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, e: rr.grpo_loss(x, old, adv, mask, ref, e, None, "vanilla", 0.2, 0.28, 3.0, 1.0, 1.05,
                                  "token-mean", 0.1, "k3", True, 0.01, None, None)[0], (lp, ent))


def test_fused_grpo_op_gradients_match_autograd_reference():
    """torch.ops.rubricrl.fused_linear_grpo_loss on tensors that require grad vs autograd through the logits."""
    lp0, old, adv, mask, ref, _ = _grpo_inputs(torch.float32)
    torch.manual_seed(7)
    hidden = torch.randn(15, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(29, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 29, (15,))
    loss, *_ = rr.fused_linear_grpo_loss(hidden.float(), weight.float(), None, targets, old, adv, mask, ref, None,
                                         1.0, "vanilla", 0.2, 0.28, None, 1.0, 1.05, "token-mean", 0.0, "k3", False,
                                         0.0, None, None, False, True, True, False, 0)
    (3.0 * loss).backward()  # an upstream gradient != 1 is applied
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logp = torch.log_softmax(hidden @ weight.t(), -1).gather(1, targets[:, None]).view(3, 5)
    want, _ = ops.grpo_loss(logp, old.double(), adv.double(), mask, backend="torch")
    (3.0 * want).backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-4, atol=1e-5)


# --- torch.compile -----------------------------------------------------------------------------


def _train_step(hidden, weight, targets, old, adv, mask, agg_norm):
    lp, ent = ops.fused_linear_logprobs(hidden, weight, targets, return_entropy=True)
    loss, metrics = ops.fused_linear_grpo_loss(hidden, weight, targets, old, adv, mask, loss_agg="token-mean",
                                               agg_norm=agg_norm, compute_entropy=True)
    return loss + 0.01 * (lp * mask).sum() - 0.001 * ent.mean(), metrics["clipfrac"]


def test_fused_ops_compile_fullgraph_with_eager_gradients():
    """Forward and backward of both fused ops in one graph (inductor, CPU), no graph break."""
    torch._dynamo.reset()
    torch.manual_seed(8)
    b, t, h, v = 2, 6, 8, 97
    hidden, weight = torch.randn(b, t, h), torch.randn(v, h) * 0.5
    targets = torch.randint(0, v, (b, t))
    old = -torch.rand(b, t) * 3
    adv, mask = torch.randn(b), torch.ones(b, t)
    mask[1, 4:] = 0
    agg_norm = torch.tensor(11.0)  # a tensor, as a data-parallel global token count would be

    def run(fn):
        hh, ww = _g(hidden), _g(weight)
        out, clipfrac = fn(hh, ww, targets, old, adv, mask, agg_norm)
        out.backward()
        return out.detach(), clipfrac, hh.grad, ww.grad

    want = run(_train_step)
    got = run(torch.compile(_train_step, fullgraph=True, backend="inductor"))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not extension_available(), reason="needs the C++ extension")
def test_importing_the_extension_alone_registers_fakes_and_autograd():
    """A process that imports only rubricrl._C compiles and differentiates the ops (fresh interpreter)."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        import rubricrl._C  # noqa: F401  (nothing else of rubricrl)
        h = torch.randn(5, 4, requires_grad=True)
        w = torch.randn(23, 4, requires_grad=True)
        t = torch.randint(0, 23, (5,))
        f = lambda h, w: torch.ops.rubricrl.fused_linear_logprobs(h, w, None, t, 1.0, True, 0)[0].sum()
        torch.compile(f, fullgraph=True, backend="aot_eager")(h, w).backward()
        g = h.grad.clone()
        h.grad = None
        f(h, w).backward()
        assert torch.allclose(g, h.grad, atol=1e-6), (g, h.grad)
        print("ok")
        """
    )
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# --- renamed chunk options ---------------------------------------------------------------------


def test_chunk_size_keyword_is_deprecated_but_works():
    torch.manual_seed(9)
    hidden, weight, targets = torch.randn(4, 6), torch.randn(50, 6), torch.randint(0, 50, (4,))
    with pytest.warns(DeprecationWarning, match="use vocab_chunk"):
        old = ops.fused_linear_logprobs(hidden, weight, targets, chunk_size=16)
    torch.testing.assert_close(old, ops.fused_linear_logprobs(hidden, weight, targets, vocab_chunk=16))
    with pytest.raises(ValueError, match="vocab_chunk must be a positive number of vocabulary columns"):
        ops.fused_linear_logprobs(hidden, weight, targets, vocab_chunk=0)
    with pytest.raises(ValueError, match="got both"):
        ops.span_mean_prob(hidden, weight, targets, torch.zeros(4, dtype=torch.long), 1, vocab_chunk=8,
                           chunk_size=8)
    mask = torch.ones(1, 4)
    with pytest.warns(DeprecationWarning, match="use token_chunk"):
        old, _ = ops.fused_linear_grpo_loss(hidden[None], weight, targets[None], torch.zeros(1, 4), torch.ones(1),
                                            mask, chunk_size=2)
    new, _ = ops.fused_linear_grpo_loss(hidden[None], weight, targets[None], torch.zeros(1, 4), torch.ones(1), mask,
                                        token_chunk=2)
    torch.testing.assert_close(old, new)


def test_fused_grpo_loss_second_backward_raises_instead_of_scaling_twice():
    """The backward scales the stored gradients in place; backward through the same graph twice is refused."""
    torch.manual_seed(10)
    hidden, weight = torch.randn(1, 4, 6, requires_grad=True), torch.randn(30, 6)
    loss, _ = ops.fused_linear_grpo_loss(hidden, weight, torch.randint(0, 30, (1, 4)), torch.zeros(1, 4),
                                         torch.ones(1), torch.ones(1, 4))
    (2 * loss).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
