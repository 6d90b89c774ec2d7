"""token_logprobs / fused_linear_logprobs: every backend against a float64 reference."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rubricrl.ops as ops
from rubricrl.ops import BackendUnavailableError
from tests.conftest import backend_params
from tests.reference import linear_logprobs, logprobs_from_logits

# tolerances on log-probs/entropies per input dtype (fp32 accumulation in every case)
TOL = {torch.float32: 2e-4, torch.bfloat16: 2e-3, torch.float16: 2e-3, torch.float64: 1e-9}


def _inputs(shape, H, V, dtype, scale=1.0, bias=False):
    hidden = (torch.randn(*shape, H) * scale).to(dtype)
    weight = (torch.randn(V, H) / math.sqrt(H)).to(dtype)
    b = torch.randn(V).to(dtype) if bias else None
    targets = torch.randint(0, V, shape)
    return hidden, weight, b, targets


def _grads_reference(hidden, weight, bias, targets, temperature, g_lp, g_ent):
    """float64 autograd through the materialised reference, from the (rounded) low-precision inputs."""
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight) + ((bias,) if bias is not None else ())]
    lp, ent = linear_logprobs(leaves[0], leaves[1], targets, leaves[2] if bias is not None else None, temperature)
    (lp * g_lp + ent * g_ent).sum().backward()
    return lp.detach(), ent.detach(), [l.grad for l in leaves]


def _rel_err(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_fused_forward_and_grads_match_reference(backend, dtype, with_bias):
    small = backend == "triton"  # the interpreter is slow: keep its shapes small
    shape, H, V, chunk = ((2, 5), 12, 301, 97) if small else ((3, 11), 24, 997, 250)
    hidden, weight, bias, targets = _inputs(shape, H, V, dtype, scale=2.0, bias=with_bias)
    targets[0, 1] = -100
    temperature = 0.7
    g_lp, g_ent = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    ref_lp, ref_ent, ref_grads = _grads_reference(hidden, weight, bias, targets, temperature, g_lp, g_ent)

    leaves = [t.detach().clone().requires_grad_() for t in (hidden, weight) + ((bias,) if with_bias else ())]
    lp, ent = ops.fused_linear_logprobs(
        leaves[0], leaves[1], targets, bias=leaves[2] if with_bias else None, temperature=temperature,
        return_entropy=True, chunk_size=chunk, backend=backend,
    )
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32 and lp.shape == shape
    tol = TOL[dtype]
    torch.testing.assert_close(lp.double(), ref_lp, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(ent.double(), ref_ent, atol=tol * 10, rtol=tol)
    assert lp[0, 1] == 0 and ent[0, 1] == 0

    (lp.double() * g_lp + ent.double() * g_ent).sum().backward()
    for leaf, ref in zip(leaves, ref_grads):
        assert leaf.grad.dtype == dtype
        assert _rel_err(leaf.grad, ref) < (5e-3 if dtype != torch.float32 else 1e-4)
    # the ignored token's hidden state receives no gradient
    assert leaves[0].grad[0, 1].abs().max() == 0


@pytest.mark.parametrize("backend", backend_params())
def test_masked_vocabulary_tail(backend):
    """A bias of -inf on the last entries (a padded vocabulary): those entries get probability 0
    and zero gradients, including vocabulary chunks that hold nothing but -inf, and the entropy
    and its gradient stay finite (no 0 * -inf)."""
    shape, H, V, chunk = (2, 5), 12, 301, 64  # the chunks [256, 301) and part of [192, 256) are masked
    hidden, weight, bias, targets = _inputs(shape, H, V, torch.float32, scale=2.0, bias=True)
    bias[200:] = float("-inf")
    targets = targets % 200
    g_lp, g_ent = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    logp = torch.log_softmax((leaves[0] @ leaves[1].t() + leaves[2]) / 0.7, -1)
    ref_lp = logp.gather(-1, targets[..., None])[..., 0]
    ref_ent = -(logp.exp() * logp.masked_fill(torch.isinf(logp), 0)).sum(-1)
    ref_grads = torch.autograd.grad((ref_lp * g_lp + ref_ent * g_ent).sum(), leaves[:2])

    x = [t.detach().clone().requires_grad_() for t in (hidden, weight)]
    lp, ent = ops.fused_linear_logprobs(x[0], x[1], targets, bias=bias, temperature=0.7, return_entropy=True,
                                        chunk_size=chunk, backend=backend)
    torch.testing.assert_close(lp.double(), ref_lp.detach(), atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(ent.double(), ref_ent.detach(), atol=2e-4, rtol=2e-4)
    (lp.double() * g_lp + ent.double() * g_ent).sum().backward()
    for leaf, ref in zip(x, ref_grads):
        assert torch.isfinite(leaf.grad).all()
        assert _rel_err(leaf.grad, ref) < 1e-4
    assert (x[1].grad[200:] == 0).all()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("magnitude", [1.0, 1e2, 1e4], ids=lambda m: f"mag{m:g}")
def test_token_logprobs_large_logits(backend, magnitude):
    N, V = (6, 203) if backend == "triton" else (40, 1003)
    logits = (torch.randn(N, V, dtype=torch.float64) * magnitude).float()
    targets = torch.randint(0, V, (N,))
    # make some targets the argmax so log-probs near 0 are covered, others deep in the tail
    targets[::3] = logits[::3].argmax(-1)
    temperature = 1.3
    ref_lp, ref_ent = logprobs_from_logits(logits.double(), targets, temperature)
    x = logits.clone().requires_grad_()
    lp, ent = ops.token_logprobs(x, targets, temperature=temperature, return_entropy=True, backend=backend)
    # fp32 logits of magnitude M carry absolute rounding ~M * 6e-8 into every log-prob
    atol = 1e-4 + magnitude * 3e-7
    torch.testing.assert_close(lp.double(), ref_lp, atol=atol, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, atol=atol, rtol=1e-4)

    g_lp, g_ent = torch.randn(N, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    (lp.double() * g_lp + ent.double() * g_ent).sum().backward()
    xr = logits.double().requires_grad_()
    rl, re = logprobs_from_logits(xr, targets, temperature)
    (rl * g_lp + re * g_ent).sum().backward()
    # d entropy / d logits scales with |z|: compare relative to the largest gradient
    assert _rel_err(x.grad, xr.grad) < 1e-4 + magnitude * 1e-7


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gradcheck_float64(backend):
    N, H, V = 6, 5, 53
    hidden = torch.randn(N, H, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(V, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    targets[2] = -100

    def fused(h, w, b):
        return ops.fused_linear_logprobs(h, w, targets, bias=b, temperature=0.8, return_entropy=True,
                                         chunk_size=20, backend=backend)

    assert torch.autograd.gradcheck(fused, (hidden, weight, bias))
    logits = torch.randn(N, V, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: ops.token_logprobs(x, targets, temperature=1.7, return_entropy=True, backend=backend), (logits,)
    )


@pytest.mark.parametrize("backend", backend_params())
def test_custom_ignore_index_inside_vocab(backend):
    # ignore_index may be a valid token id: those positions are still ignored
    N, H, V = 8, 6, 70
    hidden, weight, _, targets = _inputs((N,), H, V, torch.float32)
    targets[[1, 4]] = 5
    lp = ops.fused_linear_logprobs(hidden, weight, targets, ignore_index=5, backend=backend)
    ref, _ = linear_logprobs(hidden, weight, targets, ignore_index=5)
    torch.testing.assert_close(lp.double(), ref, atol=1e-5, rtol=1e-5)
    assert lp[1] == 0 and lp[4] == 0


@pytest.mark.parametrize("backend", backend_params())
def test_nan_in_one_token_stays_in_that_token(backend):
    N, H, V = 7, 8, 130
    hidden, weight, _, targets = _inputs((N,), H, V, torch.float32)
    clean_lp, clean_ent = ops.fused_linear_logprobs(hidden, weight, targets, return_entropy=True, chunk_size=64,
                                                    backend=backend)
    dirty = hidden.clone()
    dirty[3, 2] = float("nan")
    lp, ent = ops.fused_linear_logprobs(dirty, weight, targets, return_entropy=True, chunk_size=64, backend=backend)
    assert torch.isnan(lp[3]) and torch.isnan(ent[3])
    keep = torch.arange(N) != 3
    torch.testing.assert_close(lp[keep], clean_lp[keep])
    torch.testing.assert_close(ent[keep], clean_ent[keep])

    logits = torch.randn(N, V)
    logits[5, 17] = float("nan")
    lp2 = ops.token_logprobs(logits, targets, backend=backend)
    assert torch.isnan(lp2[5]) and torch.isfinite(lp2[torch.arange(N) != 5]).all()


def test_no_gradient_requested_for_entropy_only_path():
    # only the entropy output feeds the loss: the log-prob gradient is treated as zero
    N, H, V = 5, 4, 33
    hidden, weight, _, targets = _inputs((N,), H, V, torch.float64)
    h = hidden.clone().requires_grad_()
    _, ent = ops.fused_linear_logprobs(h, weight, targets, return_entropy=True, backend="cpp")
    ent.sum().backward()
    hr = hidden.clone().requires_grad_()
    _, er = linear_logprobs(hr, weight, targets)
    er.sum().backward()
    torch.testing.assert_close(h.grad, hr.grad)


class TestValidation:
    def setup_method(self):
        self.hidden, self.weight, _, self.targets = _inputs((2, 3), 4, 11, torch.float32)

    def test_mismatched_leading_dims(self):
        with pytest.raises(ValueError, match=r"targets must have hidden's leading dims.*\(2, 3, 4\).*\(3, 2\)"):
            ops.fused_linear_logprobs(self.hidden, self.weight, self.targets.reshape(3, 2))
        with pytest.raises(ValueError, match=r"logits .* targets .*\(2, 3, 11\).*\(6,\)"):
            ops.token_logprobs(torch.randn(2, 3, 11), self.targets.reshape(6))

    def test_hidden_size_mismatch(self):
        with pytest.raises(ValueError, match=r"disagree on H.*\(2, 3, 4\).*\(11, 5\)"):
            ops.fused_linear_logprobs(self.hidden, torch.randn(11, 5), self.targets)

    def test_target_out_of_range_names_position(self):
        t = self.targets.clone()
        t[1, 2] = 11
        with pytest.raises(ValueError, match=r"targets\[1, 2\] = 11 is outside \[0, 11\)"):
            ops.fused_linear_logprobs(self.hidden, self.weight, t)
        t[1, 2] = -3
        with pytest.raises(ValueError, match=r"targets\[1, 2\] = -3"):
            ops.token_logprobs(torch.randn(2, 3, 11), t)

    def test_non_floating_inputs(self):
        with pytest.raises(ValueError, match="hidden must be a floating tensor"):
            ops.fused_linear_logprobs(self.hidden.long(), self.weight, self.targets)
        with pytest.raises(ValueError, match="logits must be a floating tensor"):
            ops.token_logprobs(torch.ones(2, 3, 11, dtype=torch.int32), self.targets)
        with pytest.raises(ValueError, match="targets must be an integer tensor"):
            ops.fused_linear_logprobs(self.hidden, self.weight, self.targets.float())

    @pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
    def test_bad_temperature(self, temperature):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ops.fused_linear_logprobs(self.hidden, self.weight, self.targets, temperature=temperature)

    def test_weight_not_2d(self):
        with pytest.raises(ValueError, match=r"weight must be 2-D \[V, H\], got shape \(11, 4, 1\)"):
            ops.fused_linear_logprobs(self.hidden, self.weight[..., None], self.targets)

    def test_bias_shape(self):
        with pytest.raises(ValueError, match=r"bias must be \[V\] = \[11\], got \(10,\)"):
            ops.fused_linear_logprobs(self.hidden, self.weight, self.targets, bias=torch.zeros(10))

    def test_unknown_and_unavailable_backend(self, monkeypatch):
        with pytest.raises(ValueError, match=r"backend='cudnn' is not one of"):
            ops.fused_linear_logprobs(self.hidden, self.weight, self.targets, backend="cudnn")
        with pytest.raises(BackendUnavailableError, match="has no CUDA C\\+\\+ kernel"):
            ops.fused_linear_logprobs(self.hidden, self.weight, self.targets, backend="cuda")
        monkeypatch.setenv("RUBRICRL_BACKEND", "fast")
        with pytest.raises(ValueError, match=r"RUBRICRL_BACKEND='fast'"):
            ops.token_logprobs(torch.randn(2, 3, 11), self.targets)


def test_env_var_forces_backend(monkeypatch):
    from rubricrl.ops import _backend

    monkeypatch.setenv("RUBRICRL_BACKEND", "torch")
    assert _backend.resolve("token_logprobs", torch.device("cpu")) == "torch"
    monkeypatch.delenv("RUBRICRL_BACKEND")
    expected = "cpp" if ops.extension_available() else "torch"
    assert _backend.resolve("token_logprobs", torch.device("cpu")) == expected
    assert _backend.resolve("token_logprobs", torch.device("cpu"), "torch") == "torch"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 40),
    h=st.integers(1, 33),
    v=st.integers(2, 700),
    chunk=st.one_of(st.none(), st.integers(1, 300)),
    temperature=st.floats(0.05, 5.0),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    backend=st.sampled_from(["torch", "cpp"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_fused_matches_reference(n, h, v, chunk, temperature, dtype, backend, seed):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = torch.randn(v, h, generator=g).to(dtype)
    targets = torch.randint(0, v, (n,), generator=g)
    lp, ent = ops.fused_linear_logprobs(hidden, weight, targets, temperature=temperature, return_entropy=True,
                                        chunk_size=chunk, backend=backend)
    ref_lp, ref_ent = linear_logprobs(hidden, weight, targets, temperature=temperature)
    scale = 1.0 + ref_lp.abs().max().item()
    assert (lp.double() - ref_lp).abs().max().item() <= 5e-5 * scale * (1 + h)
    assert (ent.double() - ref_ent).abs().max().item() <= 5e-5 * scale * (1 + h)
    assert (ent >= -1e-4).all() and (ent.double() <= math.log(v) + 1e-3).all()


@pytest.mark.skipif(not ops.extension_available(), reason="needs the C++ extension (fake kernels)")
def test_torch_compile_matches_eager():
    N, H, V = 16, 8, 257
    hidden, weight, _, targets = _inputs((N,), H, V, torch.float32)

    def loss_fn(h, w):
        lp, ent = ops.fused_linear_logprobs(h, w, targets, return_entropy=True, chunk_size=100, backend="cpp")
        return (lp * 0.5 + ent).sum()

    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    eager = loss_fn(h1, w1)
    eager.backward()
    compiled_fn = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    compiled = compiled_fn(h2, w2)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(h2.grad, h1.grad)
    torch.testing.assert_close(w2.grad, w1.grad)


def test_triton_on_cpu_after_a_compiler_mode_import_says_why(tmp_path):
    """A process that imported triton without the interpreter cannot run Triton on CPU tensors."""
    import subprocess
    import sys

    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import triton, torch, rubricrl.ops as ops\n"
        "try:\n"
        "    ops.token_logprobs(torch.randn(2, 5), torch.tensor([1, 2]), backend='triton')\n"
        "except ops.BackendUnavailableError as e:\n"
        "    print('UNAVAILABLE', e)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "UNAVAILABLE" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr
