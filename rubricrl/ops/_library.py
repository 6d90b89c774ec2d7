"""Registers the rubricrl ops with torch.library: one op per public function, registered here once.

Each op ``torch.ops.rubricrl.<name>`` has one schema (:mod:`rubricrl.ops._schemas`) and

* a CPU kernel: the C++ of csrc/cpu (registered by the extension), or, when the
  extension is not built, the plain-PyTorch implementation (``rubricrl.ops._torch``),
  which is also the reference every kernel is tested against;
* a CUDA kernel: the Triton kernels of ``rubricrl.ops._triton`` (imported on the first CUDA
  call), or the CUDA C++ kernel where the extension has one (group_advantages);
* a fake kernel (shapes and dtypes only), so torch.compile traces through it;
* an autograd formula (``torch.library.register_autograd``) where the op has a gradient.
  The analytic backward runs as the op ``<name>_backward``; ``fused_linear_grpo_loss``
  computes its gradients in the forward and its backward only scales them.

Loading the extension imports this module (csrc/module.cpp), so ``import rubricrl._C``
alone gives complete ops. Without the extension, ``rubricrl.ops`` imports it and it
defines the ops itself. The Python API (``rubricrl.ops.<name>``) validates its inputs
and calls the op; a forced ``backend=`` that is not the device's own kernel runs that
backend's implementation under the same autograd formula (:func:`call`).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from . import _schemas
from ._options import GrpoOptions

NAMESPACE = "rubricrl"

# Defined from Python only when the extension did not define the ops.
_LIB: torch.library.Library | None = None


def _qualname(name: str) -> str:
    return f"{NAMESPACE}::{name}"


def _defined_by_extension() -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(_qualname("token_logprobs"), "")
    except RuntimeError:
        return False
    return True


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation/output dtype of the ops: fp64 for fp64 inputs (gradcheck), else fp32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --- the backends' implementations, as functions of the schemas' arguments ---------------------


def _empty(like: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return like.new_empty(0, dtype=dtype)


def _grpo_opts(policy_loss, eps_low, eps_high, clip_c, tau_pos, tau_neg, loss_agg, kl_coef, kl_type,
               kl_bias_correction, entropy_coef, agg_norm, horizon):
    """The schema's option arguments (policy_loss .. horizon, in schema order) as GrpoOptions."""
    return GrpoOptions(eps_low, eps_high, clip_c, loss_agg, kl_coef, kl_type, entropy_coef, agg_norm, horizon,
                       policy_loss, tau_pos, tau_neg, kl_bias_correction)


def python_impls(load: Callable[[str], object]) -> dict[str, Callable]:
    """The schema-level functions of a Python backend whose modules ``load(family)`` returns
    (``rubricrl.ops._torch.<family>`` or ``rubricrl.ops._triton.<family>``)."""

    def token_logprobs(logits, targets, temperature, with_entropy):
        return tuple(load("logprobs").token_fwd(logits, targets, temperature, with_entropy))

    def token_logprobs_backward(g_lp, g_ent, logits, targets, lse, entropy, temperature):
        return load("logprobs").token_bwd(g_lp, g_ent, logits, targets, lse, entropy, temperature)

    def fused_linear_logprobs(hidden, weight, bias, targets, temperature, with_entropy, vocab_chunk):
        return tuple(load("logprobs").linear_fwd(hidden, weight, bias, targets, temperature, with_entropy,
                                                 vocab_chunk or None))

    def fused_linear_logprobs_backward(g_lp, g_ent, hidden, weight, bias, targets, lse, entropy, temperature,
                                       vocab_chunk):
        d_hidden, d_weight, d_bias = load("logprobs").linear_bwd(
            g_lp, g_ent, hidden, weight, bias, targets, lse, entropy, temperature, vocab_chunk or None)
        return d_hidden, d_weight, d_bias if d_bias is not None else _empty(hidden, _compute_dtype(hidden))

    def grpo_loss(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, *options):
        loss, g_lp, g_ent, metrics = load("grpo").loss_fwd(logprobs, old_logprobs, advantages, mask,
                                                           ref_logprobs, entropy, weights, _grpo_opts(*options))
        return loss, g_lp, g_ent if g_ent is not None else _empty(g_lp, g_lp.dtype), metrics

    def fused_linear_grpo_loss(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs,
                               weights, temperature, *rest):
        *options, with_entropy, need_d_hidden, need_d_weight, need_d_bias, token_chunk = rest
        needs = (need_d_hidden, need_d_weight, need_d_bias and bias is not None)
        loss, metrics, *grads = load("grpo").linear_fwd(
            hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs, weights, temperature,
            _grpo_opts(*options), with_entropy, needs, token_chunk or None)
        return (loss, metrics, *(g if g is not None else _empty(hidden) for g in grads))

    def group_advantages(scores, group_index, norm_by_std, eps):
        return load("advantages").group_advantages(scores, group_index, norm_by_std, eps)

    def rubric_scores(met, points, item_offsets, clip):
        scores, raw, den = load("rubric").rubric_fwd(met, points, item_offsets, clip)
        # an op's outputs never alias each other (without the clip, scores is raw)
        return scores if scores is not raw else raw.clone(), raw, den

    def rubric_scores_backward(coef, points, item_offsets):
        return load("rubric").rubric_bwd(coef, points, item_offsets)

    def verdict_probs(hidden, weight, bias, yes_ids, no_ids, temperature, with_mass, vocab_chunk):
        return tuple(load("verdict").verdict_fwd(hidden, weight, bias, yes_ids, no_ids, temperature, with_mass,
                                                 vocab_chunk or None))

    def span_mean_prob(hidden, weight, bias, targets, span_index, num_spans, temperature, vocab_chunk):
        return load("span").span_fwd(hidden, weight, bias, targets, span_index, num_spans, temperature,
                                     vocab_chunk or None)

    impls = dict(locals())
    del impls["load"]
    return impls


def _torch_module(family: str):
    return importlib.import_module(f"rubricrl.ops._torch.{family}")


def _triton_module(family: str, on_cpu: bool = False):
    from . import _backend  # here, not at import: _backend imports the extension, which imports this module

    return importlib.import_module(f"{_backend.triton_kernels(on_cpu=on_cpu).__name__}.{family}")


TORCH_IMPLS = python_impls(_torch_module)
TRITON_IMPLS = python_impls(_triton_module)  # CUDA tensors (compiled Triton)
TRITON_CPU_IMPLS = python_impls(lambda family: _triton_module(family, on_cpu=True))  # the interpreter


# --- fake kernels: output shapes and dtypes, no data ----------------------------------------


def _fake_token_logprobs(logits, targets, temperature, with_entropy):
    n, dtype = logits.shape[0], _compute_dtype(logits)
    return tuple(logits.new_empty(n, dtype=dtype) for _ in range(3))


def _fake_token_logprobs_backward(g_lp, g_ent, logits, targets, lse, entropy, temperature):
    return torch.empty_like(logits)


def _fake_fused_linear_logprobs(hidden, weight, bias, targets, temperature, with_entropy, vocab_chunk):
    n, dtype = hidden.shape[0], _compute_dtype(hidden)
    return tuple(hidden.new_empty(n, dtype=dtype) for _ in range(3))


def _fake_fused_linear_logprobs_backward(g_lp, g_ent, hidden, weight, bias, targets, lse, entropy, temperature,
                                         vocab_chunk):
    d_bias = torch.empty_like(bias) if bias is not None else _empty(hidden, _compute_dtype(hidden))
    return torch.empty_like(hidden), torch.empty_like(weight), d_bias


def _fake_grpo_loss(logprobs, old_logprobs, advantages, mask, ref_logprobs, entropy, weights, *options):
    dtype = _compute_dtype(logprobs)
    g_ent = logprobs.new_empty(logprobs.shape if entropy is not None else (0,), dtype=dtype)
    return (logprobs.new_empty((), dtype=dtype), logprobs.new_empty(logprobs.shape, dtype=dtype), g_ent,
            logprobs.new_empty(len(_constants().GRPO_METRICS), dtype=torch.float32))


def _fake_fused_linear_grpo_loss(hidden, weight, bias, targets, old_logprobs, advantages, mask, ref_logprobs,
                                 weights, temperature, *rest):
    *_, need_d_hidden, need_d_weight, need_d_bias, _token_chunk = rest
    d_hidden = torch.empty_like(hidden) if need_d_hidden else _empty(hidden)
    d_weight = torch.empty_like(weight) if need_d_weight else _empty(hidden)
    d_bias = torch.empty_like(bias) if (need_d_bias and bias is not None) else _empty(hidden)
    metrics = hidden.new_empty(len(_constants().GRPO_METRICS), dtype=torch.float32)
    return hidden.new_empty((), dtype=torch.float32), metrics, d_hidden, d_weight, d_bias


def _fake_group_advantages(scores, group_index, norm_by_std, eps):
    return scores.new_empty(scores.shape, dtype=_compute_dtype(scores))


def _fake_rubric_scores(met, points, item_offsets, clip):
    r = item_offsets.shape[0] - 1
    return tuple(points.new_empty(r, dtype=torch.float32) for _ in range(3))


def _fake_rubric_scores_backward(coef, points, item_offsets):
    return points.new_empty(points.shape, dtype=torch.float32)


def _fake_verdict_probs(hidden, weight, bias, yes_ids, no_ids, temperature, with_mass, vocab_chunk):
    n = hidden.shape[0]
    return hidden.new_empty(n, dtype=torch.float32), hidden.new_empty(n if with_mass else 0, dtype=torch.float32)


def _fake_span_mean_prob(hidden, weight, bias, targets, span_index, num_spans, temperature, vocab_chunk):
    return hidden.new_empty(num_spans, dtype=torch.float32)


def _constants():
    from . import constants

    return constants


# --- autograd formulas ----------------------------------------------------------------------
# Each op's formula is a (setup_context, backward) pair; ``backward`` takes the backend's
# backward implementation as ``bwd`` (the ``*_backward`` op by default), so a forced backend
# (:class:`_Forced`) runs the same formula with its own kernels.


def _setup_token_logprobs(ctx, inputs, output):
    logits, targets, temperature, with_entropy = inputs
    _, entropy, lse = output
    ctx.save_for_backward(logits, targets, lse, entropy)
    ctx.temperature, ctx.with_entropy = temperature, with_entropy
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward_token_logprobs(ctx, g_lp, g_ent, _g_lse, bwd=None):
    logits, targets, lse, entropy = ctx.saved_tensors
    g_ent = g_ent if ctx.with_entropy else None
    if g_lp is None and g_ent is None:
        return None, None, None, None
    g_lp = g_lp if g_lp is not None else torch.zeros_like(lse)
    bwd = bwd or torch.ops.rubricrl.token_logprobs_backward
    return bwd(g_lp, g_ent, logits, targets, lse, entropy, ctx.temperature), None, None, None


def _setup_fused_linear_logprobs(ctx, inputs, output):
    hidden, weight, bias, targets, temperature, with_entropy, vocab_chunk = inputs
    _, entropy, lse = output
    ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
    ctx.config = (temperature, with_entropy, vocab_chunk)
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward_fused_linear_logprobs(ctx, g_lp, g_ent, _g_lse, bwd=None):
    hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
    temperature, with_entropy, vocab_chunk = ctx.config
    g_ent = g_ent if with_entropy else None
    if g_lp is None and g_ent is None:
        return (None,) * 7
    g_lp = g_lp if g_lp is not None else torch.zeros_like(lse)
    bwd = bwd or torch.ops.rubricrl.fused_linear_logprobs_backward
    d_hidden, d_weight, d_bias = bwd(g_lp, g_ent, hidden, weight, bias, targets, lse, entropy, temperature,
                                     vocab_chunk)
    return d_hidden, d_weight, d_bias if bias is not None else None, None, None, None, None


def _setup_grpo_loss(ctx, inputs, output):
    logprobs, entropy = inputs[0], inputs[5]
    _, g_lp, g_ent, metrics = output
    ctx.save_for_backward(g_lp, g_ent)
    ctx.dtypes = (logprobs.dtype, entropy.dtype if entropy is not None else None)
    ctx.mark_non_differentiable(g_lp, g_ent, metrics)


def _backward_grpo_loss(ctx, g_loss, _g_glp, _g_gent, _g_metrics, bwd=None):
    # the loss is sum(w * x(lp, ent)): its gradients were computed in the forward
    g_lp, g_ent = ctx.saved_tensors
    lp_dtype, ent_dtype = ctx.dtypes
    d_lp = (g_lp * g_loss).to(lp_dtype)
    d_ent = (g_ent * g_loss).to(ent_dtype) if ent_dtype is not None else None
    return (d_lp, None, None, None, None, d_ent) + (None,) * 14


def _setup_fused_linear_grpo_loss(ctx, inputs, output):
    bias, need = inputs[2], inputs[24:27]
    _, metrics, d_hidden, d_weight, d_bias = output
    ctx.save_for_backward(d_hidden, d_weight, d_bias)
    ctx.has = (need[0], need[1], need[2] and bias is not None)
    # Not marked non-differentiable: that would keep references to them on the node for as long
    # as the graph lives (a second d weight alive during the next step when a caller keeps the
    # loss). Saved tensors are released after the backward; their own gradients arrive as None.
    ctx.mark_non_differentiable(metrics)
    ctx.set_materialize_grads(False)


def _backward_fused_linear_grpo_loss(ctx, g_loss, _g_metrics, _g_dh, _g_dw, _g_db, bwd=None):
    if g_loss is None:
        return (None,) * 28
    # The stored gradients are those of the loss itself: scale them by the upstream gradient, a
    # tensor op with no host read, so the backward traces into one graph under torch.compile.
    # Eagerly on plain tensors, in place: d weight is [V, H] and a copy would add that much to
    # the peak memory. The tensors are the op's gradient outputs, which the Python API drops; a
    # second backward through the same graph (retain_graph) raises instead of scaling twice
    # (their version changed). Traced (fake/functional tensors) or on tensor subclasses: a copy.
    grads = []
    for g, has in zip(ctx.saved_tensors, ctx.has):
        if has:
            scale = g_loss.to(g.dtype)
            g = g.mul_(scale) if type(g) is torch.Tensor and type(scale) is torch.Tensor else g * scale
        grads.append(g if has else None)
    return (*grads,) + (None,) * 25


def _setup_rubric_scores(ctx, inputs, output):
    met, points, item_offsets, clip = inputs
    _, raw, den = output
    ctx.save_for_backward(points, item_offsets, raw, den)
    ctx.clip, ctx.met_dtype = clip, met.dtype
    ctx.mark_non_differentiable(raw, den)


def _backward_rubric_scores(ctx, g_scores, _g_raw, _g_den, bwd=None):
    points, offsets, raw, den = ctx.saved_tensors
    # d score_r / d met_i = p_i / den_r where the clip is inactive (torch.clamp's convention:
    # the bounds themselves pass the gradient). A response without positive points has an
    # undefined (NaN) score and sends no gradient.
    inside = (raw >= 0) & (raw <= 1) if ctx.clip else torch.ones_like(raw, dtype=torch.bool)
    ok = inside & (den > 0)
    coef = torch.where(ok, g_scores.float() / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    bwd = bwd or torch.ops.rubricrl.rubric_scores_backward
    return bwd(coef.contiguous(), points, offsets).to(ctx.met_dtype), None, None, None


def _setup_verdict_probs(ctx, inputs, output):
    hidden, weight, bias, yes_ids, no_ids, temperature, with_mass, vocab_chunk = inputs
    p_met, mass = output
    ctx.save_for_backward(hidden, weight, bias, yes_ids, no_ids, p_met)
    ctx.temperature = temperature
    ctx.needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
    ctx.mark_non_differentiable(mass)
    ctx.set_materialize_grads(False)


def _backward_verdict_probs(ctx, g_p, _g_mass, bwd=None):
    """Gradient of p(met) only (the mass is a diagnostic and is not differentiated).

    The backward is ``K = Ky + Kn`` columns wide for any backend, so it is written once
    with torch ops: with q = softmax(z) over yes ∪ no and q^Y over yes only,
    ``dp/dz_j = p * (1[j in yes] q^Y_j - q_j)`` and ``dz/dlogit = 1/T``.
    """
    from . import _chunked

    hidden, weight, bias, yes_ids, no_ids, p_met = ctx.saved_tensors
    if g_p is None:
        return (None,) * 8
    inv_t = 1.0 / ctx.temperature
    ids = torch.cat([yes_ids, no_ids])
    k_yes = yes_ids.shape[0]
    h32 = hidden.float()
    w_v = weight.index_select(0, ids).float()
    z = _chunked.gathered_logits(h32, weight, bias, ids) * inv_t
    q_all = torch.softmax(z, dim=-1)
    q_yes = torch.nn.functional.pad(torch.softmax(z[:, :k_yes], dim=-1), (0, ids.shape[0] - k_yes))
    d_logits = (g_p.float() * p_met)[:, None] * (q_yes - q_all) * inv_t  # [N, K]
    # rows without upstream gradient contribute exactly 0, even with NaN/Inf hidden states
    # (0 * NaN would otherwise reach every verdict row of d weight): see _chunked.zero_rows
    silent = g_p == 0
    d_logits = d_logits.masked_fill(silent[:, None], 0)
    h32 = _chunked.zero_rows(h32, silent)
    d_hidden = d_weight = d_bias = None
    if ctx.needs[0]:
        d_hidden = (d_logits @ w_v).to(hidden.dtype)
    if ctx.needs[1]:
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        d_weight.index_add_(0, ids, d_logits.t() @ h32)
        d_weight = d_weight.to(weight.dtype)
    if ctx.needs[2]:
        d_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        d_bias.index_add_(0, ids, d_logits.sum(0))
        d_bias = d_bias.to(bias.dtype)
    return (d_hidden, d_weight, d_bias) + (None,) * 5


def _setup_constant(ctx, inputs, output):
    """Ops whose outputs are constants of the loss (advantages, rewards): no gradient flows."""
    outputs = output if isinstance(output, tuple) else (output,)
    ctx.mark_non_differentiable(*outputs)


def _backward_none(ctx, *grads, bwd=None):
    raise RuntimeError("this rubricrl op has no gradient")


def _setup_backward_op(ctx, inputs, output):
    pass


def _backward_twice(ctx, *grads, bwd=None):
    raise RuntimeError("rubricrl's analytic backward ops are not differentiable (no double backward)")


AUTOGRAD: dict[str, tuple[Callable, Callable]] = {
    "token_logprobs": (_setup_token_logprobs, _backward_token_logprobs),
    "fused_linear_logprobs": (_setup_fused_linear_logprobs, _backward_fused_linear_logprobs),
    "grpo_loss": (_setup_grpo_loss, _backward_grpo_loss),
    "fused_linear_grpo_loss": (_setup_fused_linear_grpo_loss, _backward_fused_linear_grpo_loss),
    "rubric_scores": (_setup_rubric_scores, _backward_rubric_scores),
    "verdict_probs": (_setup_verdict_probs, _backward_verdict_probs),
    "group_advantages": (_setup_constant, _backward_none),
    "span_mean_prob": (_setup_constant, _backward_none),
    "token_logprobs_backward": (_setup_backward_op, _backward_twice),
    "fused_linear_logprobs_backward": (_setup_backward_op, _backward_twice),
    "rubric_scores_backward": (_setup_backward_op, _backward_twice),
}
BACKWARD_OP = {
    "token_logprobs": "token_logprobs_backward",
    "fused_linear_logprobs": "fused_linear_logprobs_backward",
    "rubric_scores": "rubric_scores_backward",
}
FAKES = {name: globals()[f"_fake_{name}"] for name in _schemas.SCHEMAS}


# --- registration -----------------------------------------------------------------------------


def _cuda_kernel(name: str) -> Callable:
    def kernel(*args):
        return TRITON_IMPLS[name](*args)

    kernel.__name__ = f"{name}_triton"
    return kernel


def _register() -> None:
    global _LIB
    if not _defined_by_extension():
        # No extension: define the ops here, with the PyTorch implementation as the CPU kernel.
        _LIB = torch.library.Library(NAMESPACE, "DEF")  # noqa: TOR901 (kept alive by the module)
        for name, schema in _schemas.SCHEMAS.items():
            _LIB.define(schema)
            _LIB.impl(name, TORCH_IMPLS[name], "CPU")
    for name in _schemas.SCHEMAS:
        qualname = _qualname(name)
        torch.library.register_fake(qualname, FAKES[name])
        setup, backward = AUTOGRAD[name]
        torch.library.register_autograd(qualname, backward, setup_context=setup)
        if not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CUDA"):
            torch.library.register_kernel(qualname, "cuda", _cuda_kernel(name))


_register()


# --- calls ------------------------------------------------------------------------------------


class _Forced(torch.autograd.Function):
    """Runs op ``name`` with a forced Python backend's kernels under the op's autograd formula."""

    @staticmethod
    def forward(ctx, name, impls, *args):
        output = impls[name](*args)
        setup, _ = AUTOGRAD[name]
        setup(ctx, args, output)
        ctx.name, ctx.impls = name, impls
        return output

    @staticmethod
    def backward(ctx, *grads):
        _, backward = AUTOGRAD[ctx.name]
        bwd_name = BACKWARD_OP.get(ctx.name)
        grads_in = backward(ctx, *grads, bwd=ctx.impls[bwd_name] if bwd_name else None)
        return (None, None, *grads_in)


def call(name: str, backend: str, device: torch.device, *args):
    """Runs op ``name`` on ``args`` (its schema's arguments) with the resolved ``backend``.

    The device's own kernel (C++ on CPU, Triton or CUDA C++ on GPU, PyTorch without the
    extension) is the op itself, ``torch.ops.rubricrl.<name>``; another backend forced for
    tests and benchmarks (``torch``, or ``triton`` on CPU tensors, i.e. the interpreter)
    runs its implementation under the same autograd formula.
    """
    from . import _backend

    if backend == _backend.native(device, name):
        return getattr(torch.ops.rubricrl, name)(*args)
    if backend == "torch":
        impls = TORCH_IMPLS
    elif backend == "triton":
        impls = TRITON_CPU_IMPLS if device.type == "cpu" else TRITON_IMPLS
    else:  # pragma: no cover - resolve() only returns the native backend or a Python one
        raise AssertionError(f"{name}: backend {backend!r} on {device} is not a forced Python backend")
    if torch.is_grad_enabled():
        return _Forced.apply(name, impls, *args)
    return impls[name](*args)
