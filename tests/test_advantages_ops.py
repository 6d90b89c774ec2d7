"""group_advantages (docs/algorithms.md §2): every backend against a float64 reference; the CUDA source compiles."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # see tests/test_grpo_loss.py: choose the interpreter before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

from rubricrl.ops import BackendUnavailableError, extension_available, group_advantages  # noqa: E402

BACKENDS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not extension_available(), reason="no rubricrl._C")),
            "triton"]
ROOT = Path(__file__).resolve().parents[1]


def ref_advantages(scores, group_index, norm_by_std=True, eps=1e-6):
    """docs/algorithms.md §2 in float64, one group at a time."""
    s = scores.double()
    out = torch.zeros_like(s)
    for gid in group_index.unique():
        sel = group_index == gid
        x = s[sel]
        if x.numel() < 2 or bool((x == x[0]).all()):
            continue  # no baseline, or no signal: A = 0
        a = x - x.mean()
        out[sel] = a / (x.std() + eps) if norm_by_std else a
    return out


def cases():
    g = torch.Generator().manual_seed(0)
    yield "contiguous", torch.rand(12, generator=g), torch.arange(12) // 4
    ids = torch.tensor([5, -3, 5, 1 << 40, -3, 5, 9, 1 << 40, -3, 5])  # arbitrary, interleaved ids
    yield "interleaved", torch.randn(10, generator=g), ids
    yield "lone+equal", torch.tensor([0.3, 1.0, 1.0, 1.0, 0.2, 0.8, 0.7]), torch.tensor([0, 1, 1, 1, 2, 2, 3])
    yield "binary", (torch.rand(64, generator=g) > 0.5).float(), torch.randint(0, 8, (64,), generator=g)
    yield "big-group", torch.randn(300, generator=g), torch.zeros(300, dtype=torch.long)  # > one Triton block


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("norm_by_std", [True, False])
@pytest.mark.parametrize("case", [c[0] for c in cases()])
def test_matches_reference(backend, norm_by_std, case):
    _, scores, ids = next(c for c in cases() if c[0] == case)
    want = ref_advantages(scores, ids, norm_by_std)
    got = group_advantages(scores, ids, norm_by_std=norm_by_std, backend=backend)
    assert got.dtype == torch.float32 and got.shape == scores.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    got64 = group_advantages(scores.double(), ids.int(), norm_by_std=norm_by_std, eps=0.0 if case == "binary" else 1e-6,
                             backend=backend)
    assert got64.dtype == torch.float64
    torch.testing.assert_close(got64, ref_advantages(scores, ids, norm_by_std, 0.0 if case == "binary" else 1e-6),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_signal_groups_are_exactly_zero(backend):
    # 0.1 * 3 / 3 != 0.1 in floating point: the all-equal test must not rely on mean == score
    scores = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.3])
    got = group_advantages(scores, torch.tensor([4, 4, 4, 8, 9]), backend=backend)
    assert (got == 0).all()
    assert group_advantages(torch.empty(0), torch.empty(0, dtype=torch.long), backend=backend).shape == (0,)
    bf = group_advantages(torch.tensor([1.0, 2.0]).bfloat16(), torch.tensor([0, 0]), backend=backend)
    assert bf.dtype == torch.float32 and bf.abs().max() > 0


def test_validation_and_cuda_backend():
    with pytest.raises(ValueError, match=r"scores and group_index must both be \[B\]"):
        group_advantages(torch.rand(4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="group_index must be an integer tensor"):
        group_advantages(torch.rand(4), torch.zeros(4))
    with pytest.raises(ValueError, match="eps must be a real number >= 0, got -1"):
        group_advantages(torch.rand(4), torch.zeros(4, dtype=torch.long), eps=-1)
    with pytest.raises(BackendUnavailableError, match="backend 'cuda' runs on CUDA tensors"):
        group_advantages(torch.rand(4), torch.zeros(4, dtype=torch.long), backend="cuda")


def test_cpp_op_fake_kernel():
    if not extension_available():
        pytest.skip("no rubricrl._C")

    torch.library.opcheck(torch.ops.rubricrl.group_advantages, (torch.rand(6), torch.tensor([1, 0, 1, 0, 2, 2]), True,
                                                                1e-6), test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_cuda_kernel_compiles(tmp_path):
    """The plain-CUDA kernel (no torch headers) compiles for sm_80 and sm_90."""
    cmd = ["nvcc", "-c", "-std=c++17", "-O3", "-gencode", "arch=compute_80,code=sm_80", "-gencode",
           "arch=compute_90,code=sm_90", str(ROOT / "csrc/cuda/advantages.cu"), "-o", str(tmp_path / "adv.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    data=st.lists(st.tuples(st.integers(-3, 3), st.sampled_from([0.0, 0.25, 0.5, 1.0, -2.0, 3.5])), min_size=1,
                  max_size=24),
    norm_by_std=st.booleans(),
)
def test_property_backends_agree_with_reference(data, norm_by_std):
    ids = torch.tensor([d[0] for d in data])
    scores = torch.tensor([d[1] for d in data], dtype=torch.float64)
    want = ref_advantages(scores, ids, norm_by_std)
    for backend in ("torch", "cpp", "triton") if extension_available() else ("torch", "triton"):
        got = group_advantages(scores, ids, norm_by_std=norm_by_std, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
