"""rubricrl.ops.verdict_probs on every backend against a float64 reference written here."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rubricrl.ops import extension_available, verdict_probs

BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(not extension_available(), reason="rubricrl._C not built")),
    pytest.param(
        "triton", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton")
    ),
]
FAST_BACKENDS = ["torch", "cpp"] if extension_available() else ["torch"]


def reference(hidden, weight, yes, no, temperature=1.0, bias=None):
    """float64 (p_met, mass) from the full logits: docs/algorithms.md §3 literally."""
    logits = hidden.double() @ weight.double().t()
    if bias is not None:
        logits = logits + bias.double()
    z = logits / temperature
    yes, no = torch.as_tensor(yes), torch.as_tensor(no)
    both = torch.cat([yes, no])
    lse_yes = torch.logsumexp(z[..., yes], -1)
    lse_both = torch.logsumexp(z[..., both], -1)
    return torch.exp(lse_yes - lse_both), torch.exp(lse_both - torch.logsumexp(z, -1))


def close(actual, expected, rtol=1e-5, atol=1e-6):
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol)


def _problem(seed, lead=(7,), hidden_size=24, vocab=397, dtype=torch.float32, with_bias=False, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(*lead, hidden_size, generator=gen) * scale).to(dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) / hidden_size**0.5).to(dtype)
    bias = torch.randn(vocab, generator=gen).to(dtype) if with_bias else None
    return hidden, weight, bias


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 0.6])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_reference(backend, temperature, with_bias):
    # V = 397 is not a power of two; chunk_size=100 leaves a ragged last chunk of 97
    hidden, weight, bias = _problem(0, lead=(2, 5), with_bias=with_bias, scale=3.0)
    yes, no = torch.tensor([3, 250, 396]), torch.tensor([0, 17])
    p_met, mass = verdict_probs(
        hidden, weight, yes, no, temperature=temperature, return_mass=True, bias=bias, chunk_size=100, backend=backend
    )
    assert p_met.shape == mass.shape == (2, 5)
    ref_p, ref_mass = reference(hidden, weight, yes, no, temperature, bias)
    close(p_met, ref_p)
    close(mass, ref_mass)
    close(verdict_probs(hidden, weight, yes, no, temperature=temperature, bias=bias, backend=backend), ref_p)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(backend, dtype):
    hidden, weight, bias = _problem(1, lead=(6,), dtype=dtype, with_bias=True, scale=2.0)
    yes, no = [5], [9, 100]
    p_met, mass = verdict_probs(hidden, weight, yes, no, return_mass=True, bias=bias, chunk_size=64, backend=backend)
    ref_p, ref_mass = reference(hidden, weight, yes, no, 1.0, bias)  # from the same rounded inputs
    close(p_met, ref_p, rtol=1e-4, atol=1e-6)
    close(mass, ref_mass, rtol=1e-4, atol=1e-6)


def _large_logit_problem(seed, n=5, vocab=301):
    """Logits of magnitude ~1e4 that fp32 represents and multiplies exactly (integers < 2^24).

    Column 0 of hidden is 100 and column 0 of weight an integer in [-100, 100], so each
    logit is that product (up to 1e4) plus a small integer dot product; the verdict rows
    and three other rows get the largest offset, so p_met and the mass are far from 0 and 1.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randint(-1, 2, (n, 6), generator=gen).float()
    hidden[:, 0] = 100.0
    weight = torch.randint(-1, 2, (vocab, 6), generator=gen).float()
    weight[:, 0] = torch.randint(-100, 97, (vocab,), generator=gen).float()
    yes, no = torch.tensor([7, 123]), torch.tensor([300, 42])
    weight[torch.cat([yes, no]), 0] = 100.0
    weight[[1, 2, 3], 0] = 100.0  # close competitors outside the verdict set
    return hidden, weight, yes, no


@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_of_magnitude_1e4(backend):
    hidden, weight, yes, no = _large_logit_problem(2)
    assert (hidden @ weight.t()).abs().max() > 9_900
    p_met, mass = verdict_probs(hidden, weight, yes, no, return_mass=True, chunk_size=64, backend=backend)
    ref_p, ref_mass = reference(hidden, weight, yes, no)
    assert int(((ref_p > 1e-3) & (ref_p < 0.999)).sum()) >= 3 and bool((ref_mass < 0.999).all())
    close(p_met, ref_p)
    close(mass, ref_mass)
    # at T != 1 p_met stays exact (differences are scaled); the mass shares the
    # chunked epilogue's rounding of l/T (about 1e-7 * 1e4 / T in z)
    p_met, mass = verdict_probs(hidden, weight, yes, no, temperature=0.6, return_mass=True, backend=backend)
    ref_p, ref_mass = reference(hidden, weight, yes, no, 0.6)
    close(p_met, ref_p)
    close(mass, ref_mass, rtol=3e-3, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_match_float64_autograd(backend):
    hidden, weight, bias = _problem(4, lead=(3, 2), hidden_size=8, vocab=50, with_bias=True, scale=2.0)
    yes, no = torch.tensor([1, 4]), torch.tensor([30, 49, 7])
    h, w, b = (t.clone().requires_grad_(True) for t in (hidden, weight, bias))
    g = torch.randn(3, 2, generator=torch.Generator().manual_seed(1))
    (verdict_probs(h, w, yes, no, temperature=0.7, bias=b, backend=backend) * g).sum().backward()
    h64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (hidden, weight, bias))
    (reference(h64, w64, yes, no, 0.7, b64)[0] * g.double()).sum().backward()
    for ours, ref in ((h, h64), (w, w64), (b, b64)):
        assert ours.grad.dtype == torch.float32
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-6)


def test_gradient_in_bf16_keeps_dtype():
    hidden, weight, _ = _problem(5, dtype=torch.bfloat16)
    hidden.requires_grad_(True)
    verdict_probs(hidden, weight, [0], [1], backend="torch").sum().backward()
    assert hidden.grad.dtype == torch.bfloat16 and bool(hidden.grad.float().abs().sum() > 0)


def test_mass_is_not_differentiated_and_single_vector_works():
    hidden, weight, _ = _problem(6, lead=())
    hidden.requires_grad_(True)
    p_met, mass = verdict_probs(hidden, weight, [3], [4], return_mass=True)
    assert p_met.shape == () and mass.shape == ()
    assert p_met.requires_grad and not mass.requires_grad


def test_only_verdict_rows_enter_p_met():
    # p_met must not depend on any other row of the output projection
    hidden, weight, _ = _problem(7)
    yes, no = [10, 11], [12]
    before = verdict_probs(hidden, weight, yes, no, backend="torch")
    weight2 = weight.clone()
    weight2[:10] *= 50.0
    torch.testing.assert_close(verdict_probs(hidden, weight2, yes, no, backend="torch"), before)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-2, 4),
    temperature=st.floats(0.05, 3.0),
    ky=st.integers(1, 3),
    kn=st.integers(1, 3),
)
def test_property_probabilities_in_unit_interval(seed, log_scale, temperature, ky, kn):
    hidden, weight, _ = _problem(seed, lead=(4,), hidden_size=8, vocab=37, scale=10.0**log_scale)
    ids = torch.randperm(37, generator=torch.Generator().manual_seed(seed))[: ky + kn]
    for backend in FAST_BACKENDS:
        p_met, mass = verdict_probs(
            hidden, weight, ids[:ky], ids[ky:], temperature=temperature, return_mass=True, backend=backend
        )
        for name, t in (("p_met", p_met), ("mass", mass)):
            assert bool(((t >= 0) & (t <= 1)).all()), (name, backend, t)


@pytest.mark.parametrize(
    "yes, no, match",
    [
        ([1, 2], [2, 3], r"yes_ids and no_ids overlap: token id\(s\) \[2\]"),
        ([1, 1], [3], r"yes_ids repeats token id\(s\) \[1\]"),
        ([1], [3, 3], r"no_ids repeats token id\(s\) \[3\]"),
        ([1, 50], [3], r"yes_ids\[1\] = 50 is outside \[0, 50\)"),
        ([1], [-1], r"no_ids\[0\] = -1 is outside \[0, 50\)"),
        ([], [3], "yes_ids must be a non-empty 1-D"),
        ([1], torch.tensor([[3]]), "no_ids must be a non-empty 1-D"),
        (torch.tensor([1.0]), [3], "yes_ids must be an integer tensor"),
    ],
)
def test_id_validation(yes, no, match):
    hidden, weight, _ = _problem(8, vocab=50)
    with pytest.raises(ValueError, match=match):
        verdict_probs(hidden, weight, yes, no, backend="torch")


def test_shape_validation():
    hidden, weight, bias = _problem(9, vocab=50, with_bias=True)
    with pytest.raises(ValueError, match="disagree on H"):
        verdict_probs(hidden[:, :5], weight, [1], [2])
    with pytest.raises(ValueError, match=r"weight must be 2-D \[V, H\]"):
        verdict_probs(hidden, weight[None], [1], [2])
    with pytest.raises(ValueError, match=r"bias must be \[V\] = \[50\]"):
        verdict_probs(hidden, weight, [1], [2], bias=bias[:10])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        verdict_probs(hidden, weight, [1], [2], temperature=0.0)
    with pytest.raises(ValueError, match="hidden must be a floating tensor"):
        verdict_probs(hidden.long(), weight, [1], [2])


@pytest.mark.skipif(not extension_available(), reason="rubricrl._C not built")
def test_cpp_op_has_a_fake_kernel_for_torch_compile():

    hidden, weight, bias = _problem(10, vocab=50, with_bias=True)
    yes, no = torch.tensor([1, 2]), torch.tensor([7])
    for with_mass in (True, False):
        torch.library.opcheck(
            torch.ops.rubricrl.verdict_probs.default, (hidden, weight, bias, yes, no, 0.8, with_mass, 16)
        )

    @torch.compile(backend="aot_eager", fullgraph=True)
    def both(hidden):
        p_met, mass = torch.ops.rubricrl.verdict_probs(hidden, weight, None, yes, no, 1.0, True, 0)
        return p_met + mass

    p_met, mass = verdict_probs(hidden, weight, yes, no, return_mass=True, backend="cpp")
    torch.testing.assert_close(both(hidden), p_met + mass)
