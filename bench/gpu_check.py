"""GPU readiness check: every op on every CUDA backend against a float64 reference, then timings.

    python bench/gpu_check.py              # a CUDA machine: writes bench/results/gpu.json and gpu.md
    python bench/gpu_check.py --dry-run    # no GPU: the same code paths on tiny CPU shapes
    make gpu-check

Sections, in order, each with a share of the time budget (``--budget-s``, default
450 s so sections 1-3 stay under 8 minutes on one H200; section 4 has its own budget):

1. ``correct-small``: each public op of ``rubricrl.ops`` with each CUDA backend
   (``triton`` for all, ``cuda`` too for ``group_advantages``), fp32 and bf16, at
   small odd shapes, outputs and gradients against the op's ``backend="torch"``
   implementation run in float64 on the same inputs (the bf16 inputs upcast).
2. ``correct-qwen``: the same at the shapes of a Qwen output layer (V = 151936;
   N = 2048, H = 896 and N = 8192, H = 4096; the per-token ops at B x T = 16 x 512).
3. ``timing``: forward + backward of fused log-prob + entropy and of the fused
   GRPO loss against Liger-Kernel, TRL's log-prob helpers (when TRL is
   installed) and the bare GEMMs (the floor), timed with CUDA events after a
   warm-up, median of ``--repeats``.
4. ``sglang`` (its own budget, ``--sglang-budget-s``, default 150 s, after the
   others): when ``sglang`` is importable, a real SGLang server is launched on
   the tiny model (saved with ``save_pretrained``) and ``SGLangEngine`` is checked
   against the HF engine on the same weights: behaviour log-prob parity, verdict
   parity on the shipped rubric data, a weight update changing greedy output as
   it changes HF's, and no stale prefix cache after an update. Without sglang
   (or in ``--dry-run``) the section records one ``skipped`` row saying why.
   ``--only-sglang`` runs this section alone.

Ratios are between rows of one run. A global deadline stops the run between
cases and writes what it has (``"partial": true``); results are also written
after every section. Exit status: 0 every check ran and passed, 1 a check
failed, errored or found its backend unavailable, 2 no CUDA device (without
``--dry-run``), 3 the deadline cut the run short (what ran passed). In ``--dry-run`` the
``triton`` backend runs in the Triton interpreter on CPU tensors, timings use
``time.perf_counter`` and Liger's CUDA-only kernels are skipped with a reason:
it exists so CI can test this script's logic (tests/test_gpu_check.py), and its
figures mean nothing.

Only the public API is used: ``rubricrl.ops.<name>(..., backend=...)``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).resolve().parent / "results"
VOCAB = 151936  # Qwen2/2.5/3 output layer
DEFAULT_BUDGET_S = 450.0
# Share of the budget each section may use, counted from the start of the run: a
# section starts no new case after start + share * budget.
# The small section's share is mostly Triton's one-off JIT compiles (per kernel and dtype).
SECTION_END = {"correct-small": 0.35, "correct-qwen": 0.65, "timing": 1.0}
SGLANG_DEFAULT_BUDGET_S = 150.0
# SGLangEngine vs the HF engine on the same fp32 weights (GPU kernels differ in reduction
# order, and TF32 may be on in the server): max |difference| of log-probs and of p(met).
SGLANG_TOLERANCE = {"logprobs": 1e-3, "p_met": 1e-3}
# Relative error ||got - ref|| / ||ref|| allowed against the float64 reference. fp32:
# Triton's tl.dot and cuBLAS may use TF32-class products; bf16: the inputs are exact in
# the reference, so what remains is bf16 GEMM outputs and fp32 accumulation.
TOLERANCE = {"float32": 5e-3, "bfloat16": 3e-2}
# lp - old for the loss cases, chosen at least 0.1 away from the clip edges log(0.8) and
# log(1.28), so a bf16 rounding of lp cannot move a token across a clip boundary and the
# clipped branch (hence the gradient) is the same in the kernel and the reference.
LOG_RATIOS = (-0.6, -0.1, 0.0, 0.1, 0.6)


class Deadline(BaseException):
    """The global deadline passed (raised by SIGALRM or checked between cases).

    A BaseException, so no ``except Exception`` (ours or a library's) swallows it."""


# ------------------------------------------------------------------ the run's state


@dataclass
class Run:
    device: str
    dry_run: bool
    budget_s: float
    repeats: int
    start: float = field(default_factory=time.monotonic)
    checks: list = field(default_factory=list)
    timings: list = field(default_factory=list)
    partial: bool = False

    def left(self, section: str) -> float:
        return self.start + SECTION_END[section] * self.budget_s - time.monotonic()

    def total_left(self) -> float:
        return self.start + self.budget_s - time.monotonic()


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------ op cases
#
# A case builds its inputs and calls one op; `outputs` maps names to tensors. Floating
# inputs listed in `grad_inputs` require grad; the check differentiates
# sum(out * cotangent) over `diff_outputs` and compares those gradients too.


@dataclass
class Case:
    op: str
    name: str
    shape: str
    make: Callable  # (dtype, device, gen) -> dict of tensors / values
    call: Callable  # (inputs, backend) -> dict of output tensors
    backends: tuple = ("triton",)
    grad_inputs: tuple = ()
    diff_outputs: tuple = ()


# Random inputs are drawn on the run's device (a generator there): a 151936 x 4096
# float64 weight drawn on the CPU and copied would cost seconds per case.
def _gen(device: str, seed: int):
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def _randn(gen, shape, device, scale=1.0):
    import torch

    return torch.randn(tuple(shape), generator=gen, dtype=torch.float64, device=gen.device).mul_(scale)


def _randint(gen, high, shape, device):
    import torch

    return torch.randint(0, high, tuple(shape), generator=gen, device=gen.device)


def _log_ratio_offsets(gen, shape, device):
    import torch

    choice = _randint(gen, len(LOG_RATIOS), shape, device)
    return torch.tensor(LOG_RATIOS, dtype=torch.float64, device=gen.device)[choice]


def _linear_inputs(gen, n, h, v, device):
    # Logits with std ~2: a realistic spread (neither uniform nor one-hot).
    return {
        "hidden": _randn(gen, (n, h), device),
        "weight": _randn(gen, (v, h), device, 2.0 / math.sqrt(h)),
        "targets": _randint(gen, v, (n,), device),
    }


def _mask(gen, b, t, device):
    import torch

    lengths = 1 + _randint(gen, t, (b,), device)
    lengths[0] = t  # one full-length response
    return (torch.arange(t, device=gen.device)[None, :] < lengths[:, None]).to(torch.float64)


def cases(n: int, h: int, v: int, b: int, t: int, items: int, small: bool) -> list[Case]:
    """The op cases at one size: ``n`` tokens for the vocabulary ops, ``b x t`` for the loss."""
    import rubricrl.ops as ops
    import torch

    temp = 0.8  # a temperature != 1 exercises the 1/T paths

    def logprob_call(x, backend):
        lp, ent = ops.token_logprobs(x["logits"], x["targets"], temperature=temp, return_entropy=True,
                                     backend=backend)
        return {"logprobs": lp, "entropy": ent}

    def fused_logprob_call(x, backend):
        lp, ent = ops.fused_linear_logprobs(x["hidden"], x["weight"], x["targets"], temperature=temp,
                                            return_entropy=True, backend=backend)
        return {"logprobs": lp, "entropy": ent}

    def make_token_logprobs(dtype, device, gen):
        x = _linear_inputs(gen, n, h, v, device)
        return {"logits": (x["hidden"] @ x["weight"].T), "targets": x["targets"]}

    grpo_opts = [("token-mean", {}),
                 ("seq-mean-token-mean+dualclip+k3", {"loss_agg": "seq-mean-token-mean", "clip_c": 3.0,
                                                      "kl_coef": 0.05, "entropy_coef": 0.01})]
    if not small:
        grpo_opts = grpo_opts[:1]

    def make_grpo(dtype, device, gen):
        lp = -_randn(gen, (b, t), device).abs() * 3
        return {"logprobs": lp, "old": lp - _log_ratio_offsets(gen, (b, t), device),
                "adv": _randn(gen, (b,), device), "mask": _mask(gen, b, t, device),
                "ref": lp + _randn(gen, (b, t), device, 0.3), "entropy": _randn(gen, (b, t), device).abs()}

    def grpo_call(opts):
        def call(x, backend):
            extra = {}
            if opts.get("kl_coef"):
                extra["ref_logprobs"] = x["ref"]
            if opts.get("entropy_coef"):
                extra["entropy"] = x["entropy"]
            loss, metrics = ops.grpo_loss(x["logprobs"], x["old"], x["adv"], x["mask"], backend=backend,
                                          **opts, **extra)
            return {"loss": loss, **{f"metric.{k}": m for k, m in metrics.items()}}
        return call

    def make_fused_grpo(dtype, device, gen):
        x = _linear_inputs(gen, b * t, h, v, device)
        x["hidden"] = x["hidden"].view(b, t, h)
        x["targets"] = x["targets"].view(b, t)
        with torch.no_grad():  # old = the float64 log-probs minus chosen log-ratios (LOG_RATIOS)
            lp = ops.fused_linear_logprobs(x["hidden"].to(dtype).double(), x["weight"].to(dtype).double(),
                                           x["targets"], temperature=temp, backend="torch")
        x.update(old=lp - _log_ratio_offsets(gen, (b, t), device), adv=_randn(gen, (b,), device),
                 mask=_mask(gen, b, t, device))
        return x

    def fused_grpo_call(x, backend):
        loss, metrics = ops.fused_linear_grpo_loss(x["hidden"], x["weight"], x["targets"], x["old"], x["adv"],
                                                   x["mask"], temperature=temp, backend=backend)
        return {"loss": loss, **{f"metric.{k}": m for k, m in metrics.items()}}

    groups = max(3, b // 4)

    def make_adv(dtype, device, gen):
        # `groups` groups of 4 in shuffled order, the first all-equal (advantage 0), and
        # one response alone in the last group (advantage 0: no baseline).
        perm = torch.randperm(4 * groups, generator=gen, device=gen.device)
        idx = torch.cat([perm % groups, torch.tensor([groups], device=gen.device)])
        scores = _randn(gen, (4 * groups + 1,), device)
        scores[idx == 0] = 0.5
        return {"scores": scores, "group_index": idx}

    def make_rubric(dtype, device, gen):
        responses = max(1, items // 8)
        cuts = torch.sort(_randint(gen, items + 1, (responses - 1,), device)).values
        offsets = torch.cat([torch.tensor([0], device=gen.device), cuts, torch.tensor([items], device=gen.device)])
        points = _randn(gen, (items,), device, 5.0).round()
        points[0] = 7.0  # at least one positive point
        met = torch.rand(items, generator=gen, dtype=torch.float64, device=gen.device)
        return {"met": met, "points": points, "item_offsets": offsets}

    def make_verdict(dtype, device, gen):
        x = _linear_inputs(gen, n, h, v, device)
        ids = torch.randperm(v, generator=gen, device=gen.device)[:4]
        return {"hidden": x["hidden"], "weight": x["weight"], "yes": ids[:2], "no": ids[2:]}

    def make_span(dtype, device, gen):
        x = _linear_inputs(gen, n, h, v, device)
        spans = max(2, n // 16)
        x["span_index"] = _randint(gen, spans, (n,), device)
        x["num_spans"] = spans
        return x

    size = f"N={n} H={h} V={v}"
    loss_size = f"B={b} T={t} H={h} V={v}"
    out = [
        Case("token_logprobs", "T=0.8 +entropy", f"N={n} V={v}", make_token_logprobs, logprob_call,
             grad_inputs=("logits",), diff_outputs=("logprobs", "entropy")),
        Case("fused_linear_logprobs", "T=0.8 +entropy", size,
             lambda d, dev, g: _linear_inputs(g, n, h, v, dev), fused_logprob_call,
             grad_inputs=("hidden", "weight"), diff_outputs=("logprobs", "entropy")),
    ]
    out += [Case("grpo_loss", name, f"B={b} T={t}", make_grpo, grpo_call(opts),
                 grad_inputs=("logprobs", "entropy"), diff_outputs=("loss",)) for name, opts in grpo_opts]
    out += [
        Case("fused_linear_grpo_loss", "token-mean T=0.8", loss_size, make_fused_grpo, fused_grpo_call,
             grad_inputs=("hidden", "weight"), diff_outputs=("loss",)),
        Case("group_advantages", "groups of 4, a lone and an equal group", f"B={4 * groups + 1}", make_adv,
             lambda x, be: {"advantages": ops.group_advantages(x["scores"], x["group_index"], backend=be)},
             backends=("triton", "cuda")),
        Case("rubric_scores", "soft verdicts", f"I={items}", make_rubric,
             lambda x, be: {"scores": ops.rubric_scores(x["met"], x["points"], x["item_offsets"], backend=be)},
             grad_inputs=("met",), diff_outputs=("scores",)),
        Case("verdict_probs", "2 yes + 2 no ids, +mass", size, make_verdict,
             lambda x, be: dict(zip(("p_met", "mass"), ops.verdict_probs(
                 x["hidden"], x["weight"], x["yes"], x["no"], temperature=temp, return_mass=True, backend=be))),
             grad_inputs=("hidden", "weight"), diff_outputs=("p_met",)),
        Case("span_mean_prob", f"{max(2, n // 16)} spans", size, make_span,
             lambda x, be: {"span_prob": ops.span_mean_prob(x["hidden"], x["weight"], x["targets"], x["span_index"],
                                                            x["num_spans"], temperature=temp, backend=be)}),
    ]
    return out


# Inputs passed as fp32 whatever the dtype under test: the per-token statistics of the
# loss that a trainer keeps in fp32 (behaviour and reference log-probs, advantages, mask).
_STAT_INPUTS = {"old", "adv", "mask", "ref"}


def _cast(raw: dict, dtype, grad_inputs) -> dict:
    import torch

    x = {}
    for k, v in raw.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            v = v.to(torch.float32 if k in _STAT_INPUTS else dtype)
            if k in grad_inputs:
                v = v.detach().requires_grad_(True)
        x[k] = v
    return x


def _evaluate(case: Case, x: dict, backend: str, seed: int) -> dict:
    """The op's outputs and the gradients of ``sum(out * cotangent)``; the cotangents
    depend only on ``seed`` and the output shapes, so kernel and reference get the same."""
    import torch

    out = case.call(x, backend)
    result = {k: v.detach() for k, v in out.items()}
    if case.grad_inputs:
        wrt = [x[k] for k in case.grad_inputs]
        gen = _gen(str(out[case.diff_outputs[0]].device.type), seed)
        cot = {k: _randn(gen, tuple(out[k].shape), None) for k in case.diff_outputs}
        total = sum((out[k].double() * cot[k]).sum() for k in case.diff_outputs)
        grads = torch.autograd.grad(total, wrt, allow_unused=True)
        for k, g in zip(case.grad_inputs, grads):
            result[f"d_{k}"] = torch.zeros_like(x[k]) if g is None else g
    return result


def compare(got: dict, ref: dict, tol: float) -> tuple[bool, dict, str]:
    """Relative L2 error per output (NaN where the reference is NaN must match)."""
    import torch

    errors, problems = {}, []
    for k, r in ref.items():
        if k not in got:
            problems.append(f"{k} missing")
            continue
        g = got[k].double()
        r = r.double()
        if g.shape != r.shape:
            problems.append(f"{k} shape {tuple(g.shape)} != {tuple(r.shape)}")
            continue
        nan_r, nan_g = torch.isnan(r), torch.isnan(g)
        if not torch.equal(nan_r, nan_g):
            problems.append(f"{k}: NaN at different places")
            continue
        g, r = g[~nan_r], r[~nan_r]
        diff = float(torch.linalg.vector_norm(g - r)) if g.numel() else 0.0
        scale = float(torch.linalg.vector_norm(r)) if r.numel() else 0.0
        rel = diff / max(scale, 1e-12 * max(1, r.numel()) ** 0.5)
        errors[k] = {"rel": rel, "max_abs": float((g - r).abs().max()) if g.numel() else 0.0}
        if not math.isfinite(rel) or rel > tol:
            problems.append(f"{k} rel err {rel:.2e} > {tol:.0e}")
    return not problems, errors, "; ".join(problems)


def check_case(run: Run, section: str, case: Case, dtype_name: str, seed: int) -> None:
    import torch

    dtype = getattr(torch, dtype_name)
    for backend in case.backends:
        row = {"section": section, "op": case.op, "case": case.name, "shape": case.shape, "dtype": dtype_name,
               "backend": backend}
        if run.left(section) <= 0:
            run.partial = True
            row.update(status="skipped", message="section deadline")
            run.checks.append(row)
            continue
        if backend == "cuda" and run.dry_run:
            row.update(status="skipped", message="backend 'cuda' needs CUDA tensors (dry run on CPU)")
            run.checks.append(row)
            continue
        t0 = time.monotonic()
        try:
            row.update(_check_one(run, case, dtype, dtype_name, backend, seed))
        except Deadline:
            run.partial = True
            row.update(status="skipped", message="global deadline (interrupted)")
            run.checks.append(row)
            raise
        except Exception as exc:  # recorded, the run goes on
            name = type(exc).__name__
            status = "unavailable" if name == "BackendUnavailableError" else "error"
            row.update(status=status, message=f"{name}: {exc}"[:500])
        row["seconds"] = round(time.monotonic() - t0, 3)
        run.checks.append(row)
        if run.device == "cuda":
            torch.cuda.empty_cache()


def _check_one(run: Run, case: Case, dtype, dtype_name: str, backend: str, seed: int) -> dict:
    """One (case, dtype, backend) against the float64 reference; its tensors die on return."""
    import torch

    x = _cast(case.make(dtype, run.device, _gen(run.device, seed)), dtype, case.grad_inputs)
    ref_x = {k: (v.detach().double().requires_grad_(v.requires_grad)
                 if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in x.items()}
    ref = _evaluate(case, ref_x, "torch", seed + 1)
    del ref_x
    got = _evaluate(case, x, backend, seed + 1)
    _sync(run.device)
    ok, errors, problem = compare(got, ref, TOLERANCE[dtype_name])
    return {"status": "pass" if ok else "fail", "errors": errors, "tolerance": TOLERANCE[dtype_name],
            "message": problem}


def correctness(run: Run, section: str, sizes: list[dict]) -> None:
    seed = 0
    for size in sizes:
        for case in cases(**size):
            for dtype_name in ("float32", "bfloat16"):
                seed += 10
                check_case(run, section, case, dtype_name, seed)


# ------------------------------------------------------------------ timing


def _timer(run: Run, fn: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call: CUDA events on the GPU, perf_counter on the CPU; one warm-up call."""
    import torch

    fn()
    _sync(run.device)
    times = []
    for _ in range(repeats):
        if run.total_left() <= 0:
            raise Deadline()
        if run.device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def _timing_inputs(run: Run, n: int, h: int, v: int, dtype):
    import torch

    gen = _gen(run.device, 1234)
    b = max(1, n // 512)
    t = n // b
    x = _linear_inputs(gen, n, h, v, run.device)
    return {
        "hidden": x["hidden"].view(b, t, h).to(dtype).requires_grad_(True),
        "weight": x["weight"].to(dtype).requires_grad_(True),
        "targets": x["targets"].view(b, t),
        "old": (-_randn(gen, (b, t), run.device).abs() * 3).float(),
        "adv": _randn(gen, (b,), run.device).float(),
        "mask": torch.ones(b, t, device=run.device),
        "g_lp": _randn(gen, (b, t), run.device).float(),
        "g_ent": _randn(gen, (b, t), run.device, 0.1).float(),
    }


def _zero_grads(x) -> None:
    x["hidden"].grad = None
    x["weight"].grad = None


def logprob_variants(run: Run, x: dict) -> dict[str, Callable | str]:
    """Fused log-prob + entropy, forward + backward of sum(g_lp * lp + g_ent * H)."""
    import torch
    import rubricrl.ops as ops

    h, w, tg = x["hidden"], x["weight"], x["targets"]

    def rubricrl_fused():
        _zero_grads(x)
        lp, ent = ops.fused_linear_logprobs(h, w, tg, return_entropy=True)
        ((lp * x["g_lp"]).sum() + (ent * x["g_ent"]).sum()).backward()

    def naive():
        _zero_grads(x)
        logp = torch.log_softmax((h @ w.T).float(), -1)
        lp = logp.gather(-1, tg[..., None])[..., 0]
        ent = -(logp.exp() * logp).sum(-1)
        ((lp * x["g_lp"]).sum() + (ent * x["g_ent"]).sum()).backward()

    variants: dict[str, Callable | str] = {"rubricrl fused (default backend)": rubricrl_fused,
                                           "naive PyTorch (full logits, autograd)": naive}
    try:
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        chunk = 512  # token rows per chunk, like TRL's per-micro-batch log-prob passes

        def trl():
            _zero_grads(x)
            hf, tf = h.reshape(-1, h.shape[-1]), tg.reshape(-1)
            lps, ents = [], []
            for s in range(0, hf.shape[0], chunk):
                logits = (hf[s:s + chunk] @ w.T).float()
                lps.append(selective_log_softmax(logits, tf[s:s + chunk]))
                ents.append(entropy_from_logits(logits))
            lp, ent = torch.cat(lps).view_as(tg), torch.cat(ents).view_as(tg)
            ((lp * x["g_lp"]).sum() + (ent * x["g_ent"]).sum()).backward()

        variants["TRL selective_log_softmax + entropy_from_logits, 512-row chunks"] = trl
    except ImportError as exc:
        variants["TRL selective_log_softmax + entropy_from_logits"] = f"skipped: TRL not importable ({exc})"
    if run.device == "cuda":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(reduction="sum")

        def liger_flce():
            _zero_grads(x)
            flce(w, h.reshape(-1, h.shape[-1]), tg.reshape(-1)).backward()

        variants["Liger fused linear cross-entropy (log-prob only, no entropy)"] = liger_flce
    else:
        variants["Liger fused linear cross-entropy (log-prob only, no entropy)"] = \
            "skipped: Liger's fused linear cross-entropy runs Triton kernels on CUDA tensors only"
    variants["floor: 4 bare GEMMs (h Wt, h Wt, dl W, dlt h)"] = _gemm_floor(x, 4)
    return variants


def grpo_variants(run: Run, x: dict) -> dict[str, Callable | str]:
    """The clipped GRPO loss (token-mean, eps 0.2/0.28), forward + backward."""
    import torch
    import rubricrl.ops as ops
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    h, w, tg = x["hidden"], x["weight"], x["targets"]

    def rubricrl_fused():
        _zero_grads(x)
        loss, _ = ops.fused_linear_grpo_loss(h, w, tg, x["old"], x["adv"], x["mask"], eps_low=0.2, eps_high=0.28)
        loss.backward()

    def naive():
        _zero_grads(x)
        lp = torch.log_softmax((h @ w.T).float(), -1).gather(-1, tg[..., None])[..., 0]
        ratio = torch.exp(torch.clamp(lp - x["old"], -20, 20))
        a = x["adv"][:, None]
        pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 0.8, 1.28))
        ((pg * x["mask"]).sum() / x["mask"].sum()).backward()

    def liger(compiled):
        fn = LigerFusedLinearGRPOLoss(beta=0.0, compiled=compiled, use_ref_model=False, epsilon_low=0.2,
                                      epsilon_high=0.28, loss_type="dapo")

        def step():
            _zero_grads(x)
            loss, _ = fn(h, w, tg, x["mask"], x["adv"], old_per_token_logps=x["old"])
            loss.backward()
        return step

    variants: dict[str, Callable | str] = {
        "rubricrl fused_linear_grpo_loss (default backend)": rubricrl_fused,
        "naive PyTorch (full logits, autograd)": naive,
        "Liger LigerFusedLinearGRPOLoss (compiled=False)": liger(False),
    }
    # torch.compile takes tens of seconds per shape (in the warm-up call, not timed):
    # only in bf16, the dtype such runs use, and only on CUDA.
    if run.device == "cuda" and x["hidden"].dtype == torch.bfloat16:
        variants["Liger LigerFusedLinearGRPOLoss (compiled=True)"] = liger(True)
    else:
        variants["Liger LigerFusedLinearGRPOLoss (compiled=True)"] = "skipped: compiled variant timed in bf16 on CUDA only"
    variants["floor: 3 bare GEMMs (h Wt, dl W, dlt h)"] = _gemm_floor(x, 3)
    return variants


def _gemm_floor(x: dict, count: int) -> Callable:
    import torch

    h = x["hidden"].detach().reshape(-1, x["hidden"].shape[-1])
    w = x["weight"].detach()

    def floor():
        logits = h @ w.T
        if count == 4:
            logits = h @ w.T
        torch.mm(logits, w)
        torch.mm(logits.T, h)
    return floor


def timing(run: Run, sizes: list[tuple[int, int]], dtypes: tuple[str, ...], vocab: int) -> None:
    import torch

    for n, h in sizes:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            for workload, variants_of in (("logprobs+entropy fwd+bwd", logprob_variants),
                                          ("GRPO loss fwd+bwd", grpo_variants)):
                base = {"workload": workload, "shape": f"N={n} H={h} V={vocab}", "dtype": dtype_name}
                rows = []
                try:
                    x = _timing_inputs(run, n, h, vocab, dtype)
                    variants = variants_of(run, x)
                except Exception as exc:
                    run.timings.append({**base, "variant": "(inputs)", "status": "error",
                                        "message": f"{type(exc).__name__}: {exc}"[:500]})
                    continue
                for name, fn in variants.items():
                    row = {**base, "variant": name}
                    if isinstance(fn, str):
                        row.update(status="skipped", message=fn)
                    elif run.total_left() <= 0:
                        run.partial = True
                        row.update(status="skipped", message="global deadline")
                    else:
                        try:
                            if run.device == "cuda":
                                torch.cuda.synchronize()
                                torch.cuda.reset_peak_memory_stats()
                                base_mem = torch.cuda.memory_allocated()
                            times = _timer(run, fn, run.repeats)
                            row.update(status="ok", median_ms=1e3 * statistics.median(times),
                                       min_ms=1e3 * min(times), runs=len(times))
                            if run.device == "cuda":
                                row["peak_extra_gib"] = (torch.cuda.max_memory_allocated() - base_mem) / 2**30
                        except Deadline:
                            run.partial = True
                            row.update(status="skipped", message="global deadline (interrupted)")
                        except Exception as exc:
                            row.update(status="error", message=f"{type(exc).__name__}: {exc}"[:500])
                    rows.append(row)
                floor = next((r["median_ms"] for r in rows if r["variant"].startswith("floor") and "median_ms" in r),
                             None)
                for r in rows:
                    if floor and "median_ms" in r:
                        r["x_floor"] = r["median_ms"] / floor
                run.timings.extend(rows)
                del x, variants
                if run.device == "cuda":
                    torch.cuda.empty_cache()


# ------------------------------------------------------------------ sglang


def _sglang_row(case: str, status: str, message: str, seconds: float | None = None, **extra) -> dict:
    return {"section": "sglang", "op": "SGLangEngine", "case": case, "shape": "tiny model", "dtype": "float32",
            "backend": "sglang", "status": status, "message": message, "seconds": seconds, **extra}


def sglang_skip_reason(run: Run) -> str | None:
    """Why the SGLang section cannot run here (None: it can)."""
    import importlib.util

    if run.dry_run:
        return "dry run on CPU: an SGLang server needs CUDA"
    if importlib.util.find_spec("sglang") is None:
        return f"sglang is not importable in this Python ({sys.executable}); pip install sglang to run this section"
    return None


def sglang_section(run: Run, budget_s: float, attention_backend: str) -> None:
    """Launch an SGLang server on the tiny model and check ``SGLangEngine`` against ``HFEngine``.

    Every check appends one row; the server is killed (its process group) whatever happens.
    ``budget_s`` bounds the whole section (server start included) through SIGALRM.
    """
    reason = sglang_skip_reason(run)
    if reason is not None:
        run.checks.append(_sglang_row("server", "skipped", reason))
        print(f"gpu_check: sglang section skipped: {reason}", file=sys.stderr)
        return
    import socket
    import subprocess
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-sglang-")
    proc = None
    t0 = time.monotonic()
    try:
        from rubricrl.models import build_tiny_model, load_builtin_tokenizer

        model, tok = build_tiny_model(seed=2), load_builtin_tokenizer()
        import torch

        with torch.no_grad():
            model.lm_head.weight.mul_(8.0)  # varied log-probs (the random tiny model is near uniform)
        served = Path(tmp.name) / "served"
        model.save_pretrained(served)
        tok.save_pretrained(served)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(served), "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--mem-fraction-static", "0.2", "--disable-cuda-graph",
               "--attention-backend", attention_backend, "--sampling-backend", "pytorch", "--random-seed", "0",
               "--log-level", "warning"]
        log = open(Path(tmp.name) / "server.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started = _wait_for_server(url, proc, deadline=t0 + 0.7 * budget_s)
        if started is not None:
            log.flush()
            tail = (Path(tmp.name) / "server.log").read_text()[-1500:]
            run.checks.append(_sglang_row("server", "error", f"{started}; server log tail: {tail}",
                                          time.monotonic() - t0))
            return
        run.checks.append(_sglang_row("server", "pass", f"{' '.join(cmd[1:4])} ... up", time.monotonic() - t0))
        _sglang_checks(run, model, tok, url, Path(tmp.name) / "weights")
    except Deadline:
        run.partial = True
        run.checks.append(_sglang_row("section", "skipped", f"sglang budget of {budget_s:g} s spent"))
    except Exception as exc:  # one row, not a crash: the other sections' results stand
        run.checks.append(_sglang_row("section", "error", f"{type(exc).__name__}: {exc}", time.monotonic() - t0))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # no Deadline may interrupt the server's shutdown
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=15)
            except Exception:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        tmp.cleanup()


def _wait_for_server(url: str, proc, deadline: float) -> str | None:
    """None once ``GET /get_model_info`` answers; else why not (exited, or the deadline)."""
    import urllib.request

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"the server exited with status {proc.returncode} before answering"
        try:
            with urllib.request.urlopen(url + "/get_model_info", timeout=2) as resp:
                if resp.status == 200:
                    return None
        except Exception:
            time.sleep(1.0)
    return "the server did not answer GET /get_model_info before the section's start deadline"


def _sglang_checks(run: Run, model, tok, url: str, weights_dir: Path) -> None:
    import copy

    import torch

    from rubricrl.data.builtin import builtin_meta_eval, builtin_rubric_prompts
    from rubricrl.engines import HFEngine
    from rubricrl.engines.sglang import SGLangEngine
    from rubricrl.judges import GradeRequest, LogprobJudge

    def check(case: str, fn) -> None:
        t = time.monotonic()
        try:
            ok, message, value = fn()
            run.checks.append(_sglang_row(case, "pass" if ok else "fail", message, time.monotonic() - t,
                                          value=value))
        except Deadline:
            raise
        except Exception as exc:
            run.checks.append(_sglang_row(case, "error", f"{type(exc).__name__}: {exc}", time.monotonic() - t))

    engine = SGLangEngine(copy.deepcopy(model), tok, url=url, device="cuda", weights_dir=weights_dir)
    hf = HFEngine(copy.deepcopy(model), tok, device="cuda")
    prompts = ["The cat sat on", [{"role": "user", "content": "How do I fix a slipping bike chain?"}]]
    prompts_r = builtin_rubric_prompts()[:3]
    completions = [row.completion for row in builtin_meta_eval()[:6]]
    requests = [GradeRequest(p.prompt, completions[2 * i + j], p.rubrics, group_id=p.prompt_id)
                for i, p in enumerate(prompts_r) for j in range(2)]
    judge = LogprobJudge(temperature=0.8)

    def logprob_parity():
        samples = [s for row in engine.generate(prompts, 4, max_new_tokens=32, temperature=0.8, seed=0) for s in row]
        ref = hf.token_logprobs([s.prompt_ids for s in samples], [s.response_ids for s in samples], temperature=0.8)
        diff = max(abs(a - b) for s, r in zip(samples, ref) for a, b in zip(s.behaviour_logprobs, r))
        tol = SGLANG_TOLERANCE["logprobs"]
        n = sum(len(s.response_ids) for s in samples)
        return diff <= tol, f"behaviour vs HF teacher-forced log-probs over {n} tokens: max |d| {diff:.2e} (tol {tol:g})", diff

    def verdict_parity():
        got, want = judge.verdict_probs(engine, requests), judge.verdict_probs(hf, requests)
        diff = max((got.p_met - want.p_met).abs().max().item(), (got.mass - want.mass).abs().max().item())
        tol = SGLANG_TOLERANCE["p_met"]
        return diff <= tol, f"p(met) and mass vs the HF judge, {got.p_met.numel()} items: max |d| {diff:.2e} (tol {tol:g})", diff

    def greedy(prompt_ids, steps):
        body = engine.client.post("/generate", {
            "input_ids": prompt_ids, "sampling_params": {"temperature": 0.0, "max_new_tokens": steps, "ignore_eos": True}})
        return list(body["output_ids"])[:steps]

    def hf_greedy(prompt_ids, steps):
        # argmax of full forwards, no stop: what the server does with ignore_eos
        ids = list(prompt_ids)
        with torch.no_grad():
            for _ in range(steps):
                ids.append(int(hf.model(input_ids=torch.tensor([ids], device="cuda")).logits[0, -1].argmax()))
        return ids[len(prompt_ids):]

    prompt_ids = tok("The cat sat on the mat and", add_special_tokens=False).input_ids
    state = {}

    def update_changes_greedy():
        before, hf_before = greedy(prompt_ids, 12), hf_greedy(prompt_ids, 12)
        state["verdicts_before"] = judge.verdict_probs(engine, requests[:2]).p_met
        gen = torch.Generator(device="cpu").manual_seed(3)
        new = {k: v + 0.05 * torch.randn(v.shape, generator=gen).to(v.device) if v.is_floating_point() else v
               for k, v in engine.model.state_dict().items()}
        with torch.no_grad():
            for name, p in engine.model.named_parameters():
                p.copy_(new[name])
        version = engine.bump_version()
        hf.load_weights(new, version)
        after, hf_after = greedy(prompt_ids, 12), hf_greedy(prompt_ids, 12)
        ok = before == hf_before and after == hf_after and before != after and engine.served_version == str(version)
        return ok, (f"greedy before {before} (HF {hf_before}), after {after} (HF {hf_after}); served version "
                    f"{engine.served_version!r}, policy {version}"), None

    def flush_after_update():
        after = judge.verdict_probs(engine, requests[:2]).p_met
        want = judge.verdict_probs(hf, requests[:2]).p_met
        diff = (after - want).abs().max().item()
        moved = (after - state["verdicts_before"]).abs().max().item()
        tol = SGLANG_TOLERANCE["p_met"]
        return diff <= tol and moved > 1e-3, (f"same prompts after the update: max |d| vs HF(new) {diff:.2e} "
                                             f"(tol {tol:g}), moved {moved:.2e} from before (> 1e-3)"), diff

    try:
        check("log-prob parity", logprob_parity)
        check("verdict parity", verdict_parity)
        check("update changes greedy output", update_changes_greedy)
        if "verdicts_before" in state:
            check("no stale prefix cache after update", flush_after_update)
    finally:
        engine.close()


# ------------------------------------------------------------------ output


def environment(run: Run) -> dict:
    import torch

    versions = {}
    for pkg in ("torch", "triton", "liger-kernel", "trl", "rubricrl", "sglang"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env = {"python": platform.python_version(), "platform": platform.platform(), "device": run.device,
           "dry_run": run.dry_run, "versions": versions, "torch_cuda": torch.version.cuda,
           "cpu_threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0],
           "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32, "budget_s": run.budget_s,
           "repeats": run.repeats}
    if run.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                   capability=f"{props.major}.{props.minor}")
    try:
        import rubricrl.ops as ops

        env["extension_built"] = ops.extension_available()
    except Exception as exc:
        env["extension_built"] = f"error: {exc}"
    return env


def _one_line(text: str, limit: int = 160) -> str:
    return " ".join(text.split()).replace("|", "/")[:limit]


def _fmt(value, spec):
    return "—" if value is None else format(value, spec)


def write(run: Run, out: Path, env: dict) -> dict:
    failed = [c for c in run.checks if c["status"] in ("fail", "error", "unavailable")]
    result = {"environment": env, "partial": run.partial, "wall_s": round(time.monotonic() - run.start, 1),
              "summary": {s: sum(c["status"] == s for c in run.checks)
                          for s in ("pass", "fail", "error", "unavailable", "skipped")},
              "checks": run.checks, "timings": run.timings}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# GPU check{' (DRY RUN on CPU: figures mean nothing)' if run.dry_run else ''}", "",
             f"{env.get('gpu', env['device'])}; torch {env['versions']['torch']} (CUDA {env['torch_cuda']}), "
             f"triton {env['versions']['triton']}, liger-kernel {env['versions']['liger-kernel']}, "
             f"trl {env['versions']['trl'] or 'not installed'}; TF32 matmul {env['matmul_allow_tf32']}; "
             f"wall {result['wall_s']} s of a {run.budget_s:g} s budget"
             f"{'; PARTIAL (deadline)' if run.partial else ''}.", "",
             "## Correctness against the float64 PyTorch reference", "",
             f"Relative L2 error per output and gradient; tolerance fp32 {TOLERANCE['float32']:g}, "
             f"bf16 {TOLERANCE['bfloat16']:g}. Summary: "
             + ", ".join(f"{k} {v}" for k, v in result["summary"].items()) + ".", "",
             "| section | op | case | shape | dtype | backend | status | worst output (rel err) | s |",
             "|---|---|---|---|---|---|---|---|---:|"]
    for c in run.checks:
        errs = c.get("errors") or {}
        worst = max(errs.items(), key=lambda kv: kv[1]["rel"], default=None)
        detail = f"{worst[0]} {worst[1]['rel']:.1e}" if worst else ""
        if c.get("message"):
            detail = (detail + "; " if detail else "") + _one_line(c["message"])
        lines.append(f"| {c['section']} | {c['op']} | {c['case']} | {c['shape']} | {c['dtype']} | {c['backend']} | "
                     f"{c['status']} | {detail} | {_fmt(c.get('seconds'), '.2f')} |")
    lines += ["", "## Timing: forward + backward", "",
              f"Median of {run.repeats} after one warm-up call ({'CUDA events' if run.device == 'cuda' else 'perf_counter'});"
              " peak extra memory = max allocated minus allocated before the call.", "",
              "| workload | shape | dtype | variant | median (ms) | × floor | peak extra (GiB) | note |",
              "|---|---|---|---|---:|---:|---:|---|"]
    for r in run.timings:
        lines.append(f"| {r['workload']} | {r['shape']} | {r['dtype']} | {r['variant']} | "
                     f"{_fmt(r.get('median_ms'), '.2f')} | {_fmt(r.get('x_floor'), '.2f')} | "
                     f"{_fmt(r.get('peak_extra_gib'), '.2f')} | {_one_line(r.get('message') or '')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return {"failed": failed, **result}


# ------------------------------------------------------------------ main


def plan(dry_run: bool) -> dict:
    """Shapes per section. The dry run keeps the structure at sizes the interpreter runs fast."""
    if dry_run:
        return {"small": [dict(n=19, h=16, v=211, b=3, t=7, items=13, small=True)],
                "qwen": [dict(n=40, h=24, v=515, b=4, t=10, items=33, small=False)],
                "timing": [(64, 32)], "timing_dtypes": ("float32",), "vocab": 1031}
    return {"small": [dict(n=37, h=64, v=1003, b=5, t=23, items=61, small=True)],
            "qwen": [dict(n=2048, h=896, v=VOCAB, b=16, t=128, items=2048, small=False),
                     dict(n=8192, h=4096, v=VOCAB, b=16, t=512, items=8192, small=False)],
            "timing": [(2048, 896), (8192, 4096)], "timing_dtypes": ("bfloat16", "float32"), "vocab": VOCAB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny CPU shapes, Triton interpreter (tests the script)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="global deadline in seconds")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per variant (median)")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu", help="output path prefix (.json/.md added)")
    parser.add_argument("--skip-timing", action="store_true", help="correctness sections only")
    parser.add_argument("--sglang-budget-s", type=float, default=SGLANG_DEFAULT_BUDGET_S,
                        help="seconds for the sglang section (0: skip it)")
    parser.add_argument("--only-sglang", action="store_true", help="run the sglang section alone")
    parser.add_argument("--sglang-attention-backend", default="torch_native",
                        help="the SGLang server's --attention-backend (default: torch_native, any head size)")
    args = parser.parse_args(argv)
    if args.budget_s < 0 or args.repeats < 1 or args.sglang_budget_s < 0:
        parser.error("--budget-s and --sglang-budget-s must be >= 0 and --repeats >= 1")

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device (torch {torch.__version__}, built with CUDA {torch.version.cuda}, "
              "torch.cuda.is_available() is False). Run it on a CUDA machine, or pass --dry-run for the "
              "CPU smoke mode.", file=sys.stderr)
        return 2
    if args.dry_run and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

    run = Run(device="cpu" if args.dry_run else "cuda", dry_run=args.dry_run, budget_s=args.budget_s,
              repeats=args.repeats)
    env = environment(run)
    shapes = plan(args.dry_run)

    def on_alarm(signum, frame):
        raise Deadline()

    # The hard stop: a case still running at the deadline is interrupted (between
    # Python bytecodes) and the results so far are written.
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(args.budget_s, 0.001))
    try:
        if not args.only_sglang:
            for section, sizes in (("correct-small", shapes["small"]), ("correct-qwen", shapes["qwen"])):
                correctness(run, section, sizes)
                write(run, args.out, env)
            if not args.skip_timing:
                timing(run, shapes["timing"], shapes["timing_dtypes"], shapes["vocab"])
    except Deadline:
        run.partial = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if args.sglang_budget_s > 0:
        write(run, args.out, env)
        # its own deadline: a server start that hangs cannot eat the other sections' time
        signal.setitimer(signal.ITIMER_REAL, args.sglang_budget_s)
        try:
            sglang_section(run, args.sglang_budget_s, args.sglang_attention_backend)
        except Deadline:
            run.partial = True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    result = write(run, args.out, env)
    s = result["summary"]
    print(f"gpu_check: {s['pass']} passed, {len(result['failed'])} failed (fail/error/unavailable), "
          f"{s['skipped']} skipped; {len(run.timings)} timing rows; {result['wall_s']} s"
          f"{' PARTIAL' if run.partial else ''} -> {args.out.with_suffix('.json')}, .md")
    for c in result["failed"]:
        print(f"  {c['status']}: {c['op']} [{c['case']}] {c['shape']} {c['dtype']} {c['backend']}: "
              f"{_one_line(c['message'], 300)}")
    if result["failed"]:
        return 1
    return 3 if run.partial else 0


if __name__ == "__main__":
    sys.exit(main())
