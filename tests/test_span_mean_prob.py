"""rubricrl.ops.span_mean_prob on every backend against a float64 reference written here."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rubricrl.ops import extension_available, span_mean_prob

BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(not extension_available(), reason="rubricrl._C not built")),
    pytest.param(
        "triton", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton")
    ),
]
FAST_BACKENDS = ["torch", "cpp"] if extension_available() else ["torch"]


def reference(hidden, weight, targets, span_index, num_spans, temperature=1.0, bias=None):
    """float64 RLPR reward: full logits, softmax, arithmetic mean of p(target) per span."""
    logits = hidden.double() @ weight.double().t()
    if bias is not None:
        logits = logits + bias.double()
    p = torch.softmax(logits / temperature, dim=-1).gather(1, targets[:, None].long()).squeeze(1)
    out = []
    for s in range(num_spans):
        sel = p[span_index == s]
        out.append(sel.mean().item() if sel.numel() else math.nan)
    return torch.tensor(out, dtype=torch.float64)


def close(actual, expected, rtol=1e-5, atol=1e-7):
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol, equal_nan=True)


def _problem(seed, m=37, hidden_size=24, vocab=397, num_spans=6, dtype=torch.float32, with_bias=False, scale=1.5):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(m, hidden_size, generator=gen) * scale).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(dtype)
    bias = torch.randn(vocab, generator=gen).to(dtype) if with_bias else None
    # make the targets likely tokens half of the time, so probabilities are not all tiny
    top = (hidden.float() @ weight.float().t()).argmax(1)
    targets = torch.where(torch.rand(m, generator=gen) < 0.5, top, torch.randint(0, vocab, (m,), generator=gen))
    span_index = torch.randint(0, num_spans - 1, (m,), generator=gen)  # the last span stays empty, unsorted
    return hidden, weight, bias, targets, span_index


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(backend, temperature, with_bias):
    # V = 397 is not a power of two; chunk_size=100 leaves a ragged last chunk of 97
    hidden, weight, bias, targets, span_index = _problem(0, with_bias=with_bias)
    got = span_mean_prob(
        hidden, weight, targets, span_index, 6, temperature=temperature, bias=bias, chunk_size=100, backend=backend
    )
    assert got.shape == (6,) and math.isnan(got[5].item())
    close(got, reference(hidden, weight, targets, span_index, 6, temperature, bias))
    # one chunk holding the whole vocabulary gives the same answer
    close(span_mean_prob(hidden, weight, targets, span_index, 6, temperature=temperature, bias=bias, backend=backend),
          reference(hidden, weight, targets, span_index, 6, temperature, bias))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    hidden, weight, bias, targets, span_index = _problem(1, m=20, dtype=dtype, with_bias=True)
    got = span_mean_prob(hidden, weight, targets, span_index, 6, bias=bias, chunk_size=64, backend=backend)
    close(got, reference(hidden, weight, targets, span_index, 6, 1.0, bias), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_arithmetic_mean_not_geometric(backend):
    # uniform logits over V = 4: p = 1/4 ; and a span mixing p ~ 1 with p ~ 0
    hidden = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    weight = torch.tensor([[50.0, 0.0], [0.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    targets = torch.tensor([1, 3, 0, 1])
    span_index = torch.tensor([0, 0, 1, 1])
    got = span_mean_prob(hidden, weight, targets, span_index, 2, backend=backend)
    close(got, torch.tensor([0.25, 0.5], dtype=torch.float64), rtol=1e-6, atol=1e-7)
    # the geometric mean of the second span would be ~e^-25, far from 0.5


def _large_logit_problem(seed, m=9, vocab=301):
    """Logits of magnitude ~1e4 that fp32 represents and multiplies exactly (integers < 2^24).

    Column 0 of hidden is 100 and column 0 of weight an integer in [-100, 100]; a dozen
    rows share the top offset, so their probabilities are moderate and depend on the
    small remaining dot product.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-1, 2, (m, 6), generator=gen).float()
    hidden[:, 0] = 100.0
    weight = torch.randint(-1, 2, (vocab, 6), generator=gen).float()
    weight[:, 0] = torch.randint(-100, 97, (vocab,), generator=gen).float()
    top = torch.randperm(vocab, generator=gen)[:12]
    weight[top, 0] = 100.0
    targets = top[torch.randint(0, 12, (m,), generator=gen)]
    span_index = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])[:m]
    return hidden, weight, targets, span_index


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_of_magnitude_1e4(backend):
    hidden, weight, targets, span_index = _large_logit_problem(3)
    assert (hidden @ weight.t()).abs().max() > 9_900
    ref = reference(hidden, weight, targets, span_index, 3)
    assert bool(((ref > 1e-3) & (ref < 0.99)).all())
    close(span_mean_prob(hidden, weight, targets, span_index, 3, chunk_size=64, backend=backend), ref)
    # T != 1: the chunked epilogue forms z = l / T before subtracting the max, so z
    # carries a rounding of ~1e-7 * 1e4 / T
    ref = reference(hidden, weight, targets, span_index, 3, 0.6)
    close(span_mean_prob(hidden, weight, targets, span_index, 3, temperature=0.6, backend=backend), ref, rtol=3e-3)


def test_no_gradient_is_recorded():
    hidden, weight, _, targets, span_index = _problem(2, m=8)
    hidden.requires_grad_(True)
    got = span_mean_prob(hidden, weight, targets, span_index, 6)
    assert not got.requires_grad and got.grad_fn is None


def test_empty_input_gives_nan_spans():
    got = span_mean_prob(torch.zeros(0, 4), torch.randn(10, 4), torch.zeros(0, dtype=torch.int64),
                         torch.zeros(0, dtype=torch.int64), 3)
    assert got.shape == (3,) and bool(got.isnan().all())
    assert span_mean_prob(torch.zeros(0, 4), torch.randn(10, 4), torch.zeros(0, dtype=torch.int64),
                          torch.zeros(0, dtype=torch.int64), 0).shape == (0,)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-2, 4),
    temperature=st.floats(0.05, 3.0),
    m=st.integers(1, 12),
    num_spans=st.integers(1, 5),
)
def test_property_span_means_in_unit_interval(seed, log_scale, temperature, m, num_spans):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, 8, generator=gen) * 10.0**log_scale
    weight = torch.randn(37, 8, generator=gen)
    targets = torch.randint(0, 37, (m,), generator=gen)
    span_index = torch.randint(0, num_spans, (m,), generator=gen)
    empty = torch.bincount(span_index, minlength=num_spans) == 0
    for backend in FAST_BACKENDS:
        got = span_mean_prob(hidden, weight, targets, span_index, num_spans, temperature=temperature, backend=backend)
        assert torch.equal(got.isnan(), empty)  # NaN exactly for the empty spans
        assert bool(((got[~empty] >= 0) & (got[~empty] <= 1)).all()), (backend, got)


def test_validation_errors():
    hidden, weight, bias, targets, span_index = _problem(4, m=5, vocab=50, with_bias=True)
    bad = targets.clone()
    bad[3] = 50
    with pytest.raises(ValueError, match=r"targets\[3\] = 50 is outside \[0, V=50\)"):
        span_mean_prob(hidden, weight, bad, span_index, 6)
    bad[3] = -100  # no ignore_index: every position is a span token
    with pytest.raises(ValueError, match=r"targets\[3\] = -100 is outside"):
        span_mean_prob(hidden, weight, bad, span_index, 6)
    bad = span_index.clone()
    bad[2] = 6
    with pytest.raises(ValueError, match=r"span_index\[2\] = 6 is outside \[0, num_spans=6\)"):
        span_mean_prob(hidden, weight, targets, bad, 6)
    with pytest.raises(ValueError, match="num_spans must be an int >= 0"):
        span_mean_prob(hidden, weight, targets, span_index, -1)
    with pytest.raises(ValueError, match=r"hidden must be \[M, H\]"):
        span_mean_prob(hidden[None], weight, targets, span_index, 6)
    with pytest.raises(ValueError, match=r"targets and span_index must be \[M\] = \[5\]"):
        span_mean_prob(hidden, weight, targets[:4], span_index, 6)
    with pytest.raises(ValueError, match="span_index must be an integer tensor"):
        span_mean_prob(hidden, weight, targets, span_index.float(), 6)
    with pytest.raises(ValueError, match=r"bias must be \[V\] = \[50\]"):
        span_mean_prob(hidden, weight, targets, span_index, 6, bias=bias[:3])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        span_mean_prob(hidden, weight, targets, span_index, 6, temperature=-1.0)
    with pytest.raises(ValueError, match="chunk_size must be a positive"):
        span_mean_prob(hidden, weight, targets, span_index, 6, chunk_size=0)


@pytest.mark.skipif(not extension_available(), reason="rubricrl._C not built")
def test_cpp_op_has_a_fake_kernel_for_torch_compile():

    hidden, weight, bias, targets, _ = _problem(5, m=10, vocab=50, with_bias=True)
    span_index = torch.arange(10) % 3  # no empty span: opcheck compares without equal_nan
    torch.library.opcheck(
        torch.ops.rubricrl.span_mean_prob.default, (hidden, weight, bias, targets, span_index, 3, 0.9, 16)
    )

    @torch.compile(backend="aot_eager", fullgraph=True)
    def reward(hidden):
        return torch.ops.rubricrl.span_mean_prob(hidden, weight, None, targets, span_index, 3, 1.0, 0) * 2

    torch.testing.assert_close(reward(hidden), 2 * span_mean_prob(hidden, weight, targets, span_index, 3, backend="cpp"))
