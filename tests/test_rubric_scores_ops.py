"""rubricrl.ops.rubric_scores on every backend against a float64 reference written here."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rubricrl.ops import extension_available, rubric_scores

BACKENDS = [
    "torch",
    pytest.param("cpp", marks=pytest.mark.skipif(not extension_available(), reason="rubricrl._C not built")),
    pytest.param(
        "triton", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no triton")
    ),
]


def reference(met, points, offsets, clip=True):
    """float64 docs/algorithms.md §3 score per segment, one Python loop per response."""
    met = met.double().tolist()
    points = points.double().tolist()
    out = []
    for r in range(len(offsets) - 1):
        lo, hi = int(offsets[r]), int(offsets[r + 1])
        den = sum(max(p, 0.0) for p in points[lo:hi])
        if den <= 0:
            out.append(math.nan)
            continue
        s = sum(p * m for p, m in zip(points[lo:hi], met[lo:hi])) / den
        out.append(min(max(s, 0.0), 1.0) if clip else s)
    return torch.tensor(out, dtype=torch.float64)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_cases(backend):
    # response 0: 7 + 10 - 6 = 11 of 22 positive points -> 0.5
    # response 1: undesirable behaviour only -> -3/5, clipped to 0
    # response 2: no positive points -> NaN ; response 3: no items -> NaN
    # response 4: everything met -> exactly 1
    met = torch.tensor([True, False, True, True, False, True, True, True, True])
    points = torch.tensor([7.0, 5.0, 10.0, -6.0, 5.0, -3.0, -2.0, 4.0, 1.0])
    offsets = torch.tensor([0, 4, 6, 7, 7, 9])
    got = rubric_scores(met, points, offsets, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (5,)
    assert got[0].item() == 0.5
    assert got[1].item() == 0.0
    assert math.isnan(got[2].item()) and math.isnan(got[3].item())
    assert got[4].item() == 1.0
    raw = rubric_scores(met, points, offsets, clip=False, backend=backend)
    assert raw[1].item() == pytest.approx(-0.6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_soft_verdicts(backend):
    met = torch.tensor([0.5, 0.25, 1.0, 0.0, 0.9, 0.8])
    points = torch.tensor([7.0, 5.0, 10.0, -6.0, 3.0, -8.0])
    offsets = torch.tensor([0, 4, 6])
    got = rubric_scores(met, points, offsets, backend=backend)
    # (3.5 + 1.25 + 10) / 22 ; (2.7 - 6.4) / 3 < 0 -> 0
    close(got, torch.tensor([14.75 / 22, 0.0], dtype=torch.float64))
    close(rubric_scores(met, points, offsets, clip=False, backend=backend), torch.tensor([14.75 / 22, -3.7 / 3], dtype=torch.float64))


def _random_problem(gen, num_responses, dtype, hard):
    lengths = torch.randint(0, 9, (num_responses,), generator=gen)
    lengths[num_responses // 2] = 300  # longer than one Triton tile (128 items)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    n = int(offsets[-1])
    points = (torch.randint(-10, 11, (n,), generator=gen).float() + torch.rand(n, generator=gen)).to(dtype)
    met = torch.rand(n, generator=gen) < 0.6 if hard else torch.rand(n, generator=gen).to(dtype)
    return met, points, offsets


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("hard", [True, False])
def test_random_segments(backend, dtype, hard):
    gen = torch.Generator().manual_seed(3)
    met, points, offsets = _random_problem(gen, 37, dtype, hard)
    for clip in (True, False):
        got = rubric_scores(met, points, offsets, clip=clip, backend=backend)
        close(got, reference(met, points, offsets, clip), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clip", [True, False])
def test_gradient_in_met(backend, clip):
    gen = torch.Generator().manual_seed(5)
    met, points, offsets = _random_problem(gen, 11, torch.float32, hard=False)
    met.requires_grad_(True)
    scores = rubric_scores(met, points, offsets, clip=clip, backend=backend)
    weights = torch.randn(scores.shape, generator=gen)
    finite = ~torch.isnan(scores)
    (scores[finite] * weights[finite]).sum().backward()
    # float64 autograd through the formula itself
    met64 = met.detach().double().requires_grad_(True)
    p = points.double()
    total = torch.zeros((), dtype=torch.float64)
    for r in range(len(offsets) - 1):
        lo, hi = int(offsets[r]), int(offsets[r + 1])
        den = p[lo:hi].clamp_min(0).sum()
        if den > 0:
            s = (p[lo:hi] * met64[lo:hi]).sum() / den
            total = total + weights[r].double() * (s.clamp(0, 1) if clip else s)
    total.backward()
    assert met.grad.dtype == torch.float32
    close(met.grad, met64.grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=8),
    data=st.data(),
)
def test_property_clipped_scores_in_unit_interval(lengths, data):
    n = sum(lengths)
    points = data.draw(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=n, max_size=n))
    met = data.draw(st.lists(st.floats(0, 1, width=32), min_size=n, max_size=n))
    offsets = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)
    met_t, points_t = torch.tensor(met, dtype=torch.float32), torch.tensor(points, dtype=torch.float32)
    expected_nan = reference(met_t, points_t, offsets).isnan()
    for backend in ("torch", "cpp") if extension_available() else ("torch",):
        got = rubric_scores(met_t, points_t, offsets, backend=backend)
        assert torch.equal(got.isnan(), expected_nan)  # NaN exactly where no positive points
        ok = got[~expected_nan]
        assert bool(((ok >= 0) & (ok <= 1)).all())


def test_backends_agree_on_a_large_batch():
    if not extension_available():
        pytest.skip("rubricrl._C not built")
    gen = torch.Generator().manual_seed(9)
    met, points, offsets = _random_problem(gen, 4000, torch.float32, hard=False)
    torch.testing.assert_close(
        rubric_scores(met, points, offsets, backend="cpp"),
        rubric_scores(met, points, offsets, backend="torch"),
        equal_nan=True,
    )


@pytest.mark.parametrize(
    "met, points, offsets, match",
    [
        (torch.tensor([1.0, 0.0]), torch.tensor([1.0]), torch.tensor([0, 1]), r"met and points must both be 1-D \[I\]"),
        (torch.tensor([1, 0]), torch.tensor([1.0, 2.0]), torch.tensor([0, 2]), "met must be a floating tensor"),
        (torch.tensor([1.0, 0.0]), torch.tensor([1, 2]), torch.tensor([0, 2]), "points must be a floating tensor"),
        (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([0.0, 2.0]), "item_offsets must be an integer"),
        (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([[0, 2]]), r"item_offsets must be 1-D \[R\+1\]"),
        (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([1, 2]), r"item_offsets\[0\] must be 0, got 1"),
        (torch.tensor([1.0, 0.0]), torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), r"item_offsets\[-1\] must equal .* I = 2"),
        (
            torch.tensor([1.0, 0.0, 1.0]),
            torch.tensor([1.0, 2.0, 3.0]),
            torch.tensor([0, 2, 1, 3]),
            r"item_offsets\[2\] = 1 < item_offsets\[1\] = 2",
        ),
        (torch.tensor([1.0, 1.5, 0.0]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 3]), r"met\[1\] = 1.5 is outside \[0, 1\]"),
        (torch.tensor([1.0, 0.0, -0.1]), torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 3]), r"met\[2\] = -0.1\d* is outside"),
        (torch.tensor([1.0, math.nan]), torch.tensor([1.0, 2.0]), torch.tensor([0, 2]), r"met\[1\] = nan is outside"),
        (torch.tensor([1.0, 0.0]), torch.tensor([1.0, math.inf]), torch.tensor([0, 2]), r"points\[1\] = inf is not finite"),
    ],
)
def test_validation_errors(met, points, offsets, match):
    with pytest.raises(ValueError, match=match):
        rubric_scores(met, points, offsets, backend="torch")


def test_empty_batch():
    got = rubric_scores(torch.zeros(0), torch.zeros(0), torch.zeros(1, dtype=torch.int64))
    assert got.shape == (0,) and got.dtype == torch.float32


@pytest.mark.skipif(not extension_available(), reason="rubricrl._C not built")
def test_cpp_ops_have_fake_kernels_for_torch_compile():

    # no NaN scores here: opcheck compares eager and traced outputs without equal_nan
    met, points, offsets = torch.rand(7), torch.rand(7) + 0.1, torch.tensor([0, 3, 4, 7])
    torch.library.opcheck(torch.ops.rubricrl.rubric_scores.default, (met, points, offsets, True))
    torch.library.opcheck(torch.ops.rubricrl.rubric_scores_backward.default, (torch.rand(3), points, offsets))

    @torch.compile(backend="aot_eager", fullgraph=True)
    def scores(met, points, offsets):
        return torch.ops.rubricrl.rubric_scores(met, points, offsets, True)[0] * 2

    torch.testing.assert_close(scores(met, points, offsets), 2 * rubric_scores(met, points, offsets, backend="cpp"), equal_nan=True)
