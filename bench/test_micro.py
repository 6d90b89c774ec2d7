"""Micro-benchmarks of the ops, forward + backward, at a few small shapes (pytest-benchmark).

    pytest bench/ --benchmark-only                      # all 20: 1.5 min wall, 28 s CPU (2 threads)
    pytest bench/ --benchmark-only -k fused_linear      # one op
    pytest bench/ --benchmark-only --benchmark-json=out.json

Each benchmark is one op on CPU tensors with the C++ kernels (``cpp``) or the
plain-PyTorch implementation (``torch``), so the two can be compared row by row;
pytest-benchmark reports min/median/IQR over its rounds. ``extra_info`` records
the shape, dtype, backend, threads and versions with every figure. These measure
time only: the fresh-process scripts beside this file (``bench_*.py``, ``make
bench``) measure peak memory and the large Qwen-sized shapes, and
``gpu_check.py`` covers the GPU. ``pytest -q tests`` does not collect this file.
"""

from __future__ import annotations

import os

import pytest
import torch

import rubricrl.ops as ops

BACKENDS = ["cpp", "torch"]
# (N tokens, H hidden, V vocabulary): a toy layer and a small-model output layer.
LINEAR_SHAPES = [(256, 128, 8192), (256, 256, 32000)]


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cpp" and not ops.extension_available():
        pytest.skip("the C++ extension rubricrl._C is not built")
    return request.param


def _info(benchmark, backend: str, **shape) -> None:
    benchmark.extra_info.update(backend=backend, dtype="float32", threads=torch.get_num_threads(),
                                torch=torch.__version__, omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
                                **shape)


def _linear(n: int, h: int, v: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).requires_grad_(True)
    weight = (torch.randn(v, h, generator=g) * (2.0 / h**0.5)).requires_grad_(True)
    targets = torch.randint(0, v, (n,), generator=g)
    return hidden, weight, targets, g


@pytest.mark.parametrize("n,h,v", LINEAR_SHAPES)
def test_fused_linear_logprobs_fwd_bwd(benchmark, backend, n, h, v):
    hidden, weight, targets, g = _linear(n, h, v)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)

    def step():
        hidden.grad = weight.grad = None
        lp, ent = ops.fused_linear_logprobs(hidden, weight, targets, return_entropy=True, backend=backend)
        ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()

    _info(benchmark, backend, N=n, H=h, V=v)
    benchmark(step)
    assert torch.isfinite(hidden.grad).all() and torch.isfinite(weight.grad).all()


@pytest.mark.parametrize("n,h,v", LINEAR_SHAPES)
def test_fused_linear_grpo_loss_fwd_bwd(benchmark, backend, n, h, v):
    hidden, weight, targets, g = _linear(n, h, v)
    b = 4
    hidden3 = hidden.detach().view(b, n // b, h).requires_grad_(True)
    targets = targets.view(b, n // b)
    with torch.no_grad():
        lp = ops.fused_linear_logprobs(hidden3, weight, targets, backend="torch")
    old = lp + 0.1 * torch.randn(lp.shape, generator=g)
    adv = torch.randn(b, generator=g)
    mask = torch.ones(b, n // b)

    def step():
        hidden3.grad = weight.grad = None
        loss, _ = ops.fused_linear_grpo_loss(hidden3, weight, targets, old, adv, mask, backend=backend)
        loss.backward()

    _info(benchmark, backend, B=b, T=n // b, H=h, V=v)
    benchmark(step)
    assert torch.isfinite(hidden3.grad).all() and torch.isfinite(weight.grad).all()


def test_token_logprobs_fwd_bwd(benchmark, backend):
    n, v = 256, 32000
    g = torch.Generator().manual_seed(0)
    logits = (2 * torch.randn(n, v, generator=g)).requires_grad_(True)
    targets = torch.randint(0, v, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)

    def step():
        logits.grad = None
        lp, ent = ops.token_logprobs(logits, targets, return_entropy=True, backend=backend)
        ((lp * g_lp).sum() + (ent * g_ent).sum()).backward()

    _info(benchmark, backend, N=n, V=v)
    benchmark(step)


def test_grpo_loss_fwd_bwd(benchmark, backend):
    b, t = 16, 512
    g = torch.Generator().manual_seed(0)
    lp = (-3 * torch.rand(b, t, generator=g)).requires_grad_(True)
    old = lp.detach() + 0.2 * torch.randn(b, t, generator=g)
    ref = lp.detach() + 0.2 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)
    mask = (torch.rand(b, t, generator=g) < 0.9).float()

    def step():
        lp.grad = None
        loss, _ = ops.grpo_loss(lp, old, adv, mask, clip_c=3.0, ref_logprobs=ref, kl_coef=0.01, backend=backend)
        loss.backward()

    _info(benchmark, backend, B=b, T=t, options="token-mean, dual clip 3, k3 KL 0.01")
    benchmark(step)


def test_group_advantages(benchmark, backend):
    b = 4096
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(b, generator=g)
    groups = torch.randperm(b, generator=g) // 8  # groups of 8, shuffled

    _info(benchmark, backend, B=b, group_size=8)
    benchmark(lambda: ops.group_advantages(scores, groups, backend=backend))


def test_rubric_scores_fwd_bwd(benchmark, backend):
    responses, per = 2048, 8
    g = torch.Generator().manual_seed(0)
    met = torch.rand(responses * per, generator=g).requires_grad_(True)
    points = torch.randint(-5, 11, (responses * per,), generator=g).float()
    points[::per] = 10.0  # every response has a positive item
    offsets = torch.arange(0, responses * per + 1, per)

    def step():
        met.grad = None
        ops.rubric_scores(met, points, offsets, backend=backend).sum().backward()

    _info(benchmark, backend, responses=responses, items_per_response=per)
    benchmark(step)


def test_verdict_probs_fwd_bwd(benchmark, backend):
    hidden, weight, _, g = _linear(256, 256, 32000)
    yes, no = torch.tensor([11, 12]), torch.tensor([21, 22])

    def step():
        hidden.grad = weight.grad = None
        p, mass = ops.verdict_probs(hidden, weight, yes, no, return_mass=True, backend=backend)
        p.sum().backward()

    _info(benchmark, backend, N=256, H=256, V=32000, ids="2 yes + 2 no, with the mass pass")
    benchmark(step)


def test_span_mean_prob(benchmark, backend):
    hidden, weight, targets, g = _linear(512, 256, 32000)
    hidden, weight = hidden.detach(), weight.detach()
    span_index = torch.arange(512) // 64

    _info(benchmark, backend, N=512, H=256, V=32000, spans=8)
    benchmark(lambda: ops.span_mean_prob(hidden, weight, targets, span_index, 8, backend=backend))
