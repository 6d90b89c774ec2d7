"""Benchmark: fused linear + GRPO loss, forward + backward, on the CPU.

Shapes (defaults): 4 x 512 tokens, H = 896, V = 151936 (Qwen2.5-0.5B's lm_head),
fp32, token-mean, eps 0.2 / 0.28, every token valid. Variants:

* ``naive``: full logits + log_softmax + gather + the loss in PyTorch, autograd;
* ``liger`` / ``liger_compiled``: Liger-Kernel's ``LigerFusedLinearGRPOLoss``
  (``compiled=False`` / ``True``; the compile happens in the warm-up, not timed);
* ``rubricrl_cpp`` (and ``rubricrl_cpp_cNNN``: token chunk of NNN rows):
  ``rubricrl.ops.fused_linear_grpo_loss`` with the C++ backend;
* ``floor``: the three GEMMs alone (h W^T, dl W, dl^T h) at full size into
  preallocated outputs: what any exact method must at least do.

Time: median of ``--repeats`` runs after one warm-up, wall clock and process CPU
time (all threads; less sensitive to other processes on a shared machine, and
on an idle one about threads x wall). Memory: peak RSS above the
RSS once the inputs exist, in a fresh process per variant (the kernel's peak-RSS
counter is reset through /proc/self/clear_refs after the inputs are made).

    python bench/bench_grpo.py                    # every variant, each in a subprocess;
                                                  # writes bench/results/grpo.json and grpo.md
    python bench/bench_grpo.py --variant liger    # one variant in this process, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

VARIANTS = ["floor", "rubricrl_cpp", "rubricrl_cpp_c256", "liger", "liger_compiled", "naive"]


# ---------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_kib() -> int:
    try:
        return _status_kib("VmHWM")
    except (OSError, KeyError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- inputs and variants


def make_inputs(b, t, h, v, seed=0):
    from rubricrl.ops import fused_linear_logprobs

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.02
    targets = torch.randint(0, v, (b, t), generator=g)
    with torch.no_grad():  # behaviour log-probs near the current ones: ratios on both sides of the clip
        lp = fused_linear_logprobs(hidden, weight, targets)
    old = lp + 0.1 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, generator=g)
    mask = torch.ones(b, t)
    return dict(hidden=hidden.requires_grad_(), weight=weight.requires_grad_(), targets=targets, old=old, adv=adv,
                mask=mask)


def naive_step(x, eps_low=0.2, eps_high=0.28):
    hidden, weight = x["hidden"], x["weight"]
    logits = hidden @ weight.t()
    lp = torch.log_softmax(logits.float(), -1).gather(-1, x["targets"][..., None])[..., 0]
    ratio = torch.exp(torch.clamp(lp - x["old"], -20, 20))
    a = x["adv"][:, None]
    pg = torch.maximum(-a * ratio, -a * torch.clamp(ratio, 1 - eps_low, 1 + eps_high))
    loss = (pg * x["mask"]).sum() / x["mask"].sum()
    loss.backward()
    return loss


def make_step(variant, x):
    if variant == "naive":
        return lambda: naive_step(x)
    if variant.startswith("liger"):
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        fn = LigerFusedLinearGRPOLoss(beta=0.0, compiled=variant == "liger_compiled", use_ref_model=False,
                                      epsilon_low=0.2, epsilon_high=0.28, loss_type="dapo")

        def liger():
            loss, _ = fn(x["hidden"], x["weight"], x["targets"], x["mask"], x["adv"], old_per_token_logps=x["old"])
            loss.backward()
            return loss

        return liger
    if variant.startswith("rubricrl_cpp"):
        from rubricrl.ops import fused_linear_grpo_loss

        chunk = int(variant.split("_c")[-1]) if "_c" in variant[len("rubricrl_cpp"):] else None

        def rubricrl():
            loss, _ = fused_linear_grpo_loss(x["hidden"], x["weight"], x["targets"], x["old"], x["adv"], x["mask"],
                                             eps_low=0.2, eps_high=0.28, token_chunk=chunk, backend="cpp")
            loss.backward()
            return loss

        return rubricrl
    if variant == "floor":
        h = x["hidden"].detach().reshape(-1, x["hidden"].shape[-1])
        w = x["weight"].detach()
        logits = torch.empty(h.shape[0], w.shape[0])
        d_hidden = torch.empty_like(h)
        d_weight = torch.empty_like(w)

        def floor():
            torch.mm(h, w.t(), out=logits)  # GEMM 1: logits
            torch.mm(logits, w, out=d_hidden)  # GEMM 2: d hidden (logits stand in for d logits)
            torch.mm(logits.t(), h, out=d_weight)  # GEMM 3: d weight
            return logits[0, 0]

        return floor
    raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")


def run_variant(variant, args):
    torch.manual_seed(0)
    x = make_inputs(args.batch, args.seq, args.hidden, args.vocab)
    step = make_step(variant, x)
    base_kib = _status_kib("VmRSS")
    exact_reset = reset_peak_rss()
    times, cpu_times, loss = [], [], None
    for i in range(args.repeats + 1):
        x["hidden"].grad = None
        x["weight"].grad = None
        c0, t0 = time.process_time(), time.perf_counter()
        loss = step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i > 0:  # the first run is the warm-up (and Liger's compile)
            times.append(dt)
            cpu_times.append(dc)
    peak = peak_rss_kib()
    return dict(
        variant=variant,
        median_s=statistics.median(times),
        times_s=times,
        median_cpu_s=statistics.median(cpu_times),
        cpu_times_s=cpu_times,
        peak_extra_mib=(peak - base_kib) / 1024,
        peak_exact=exact_reset,
        loss=float(loss.detach()) if variant != "floor" else None,
        threads=torch.get_num_threads(),
    )


# ---------------------------------------------------------------- driver


def versions():
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("liger_kernel", "verl", "triton"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def markdown(results, meta):
    floor = next((r for r in results if r["variant"] == "floor" and "error" not in r), None)
    lines = [
        f"Fused linear + GRPO loss, forward + backward, {meta['shape']}, fp32, token-mean, eps 0.2/0.28; "
        f"{meta['threads']} threads on {meta['cpu']}; torch {meta['versions']['torch']}, "
        f"liger-kernel {meta['versions']['liger_kernel']}; load average before/after "
        f"{meta['load_before']} / {meta['load_after']}.",
        "",
        "| variant | median wall (s) | x floor | wall runs (s) | median CPU (s) | x floor (CPU) "
        "| peak extra memory (MiB) | loss |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error'][:80]} | | | | | | |")
            continue
        ratio = f"{r['median_s'] / floor['median_s']:.2f}" if floor else ""
        cpu_ratio = f"{r['median_cpu_s'] / floor['median_cpu_s']:.2f}" if floor else ""
        runs = ", ".join(f"{t:.2f}" for t in r["times_s"])
        loss = f"{r['loss']:.6f}" if r["loss"] is not None else ""
        lines.append(f"| {r['variant']} | {r['median_s']:.2f} | {ratio} | {runs} | {r['median_cpu_s']:.2f} | "
                     f"{cpu_ratio} | {r['peak_extra_mib']:.0f} | {loss} |")
    return "\n".join(lines) + "\n"


def drive(args):
    results = []
    load_before = [round(v, 2) for v in os.getloadavg()]
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--repeats", str(args.repeats), "--batch",
               str(args.batch), "--seq", str(args.seq), "--hidden", str(args.hidden), "--vocab", str(args.vocab)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            result = dict(variant=variant, error=(proc.stderr.strip().splitlines() or ["no output"])[-1])
        result["load_after"] = [round(v, 2) for v in os.getloadavg()]
        print(json.dumps(result), flush=True)
        results.append(result)
    meta = dict(
        shape=f"{args.batch}x{args.seq} tokens, H={args.hidden}, V={args.vocab}",
        threads=os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())),
        cpu=platform.processor() or platform.machine(),
        versions=versions(),
        load_before=load_before,
        load_after=[round(v, 2) for v in os.getloadavg()],
        repeats=args.repeats,
    )
    try:
        with open("/proc/cpuinfo") as f:
            meta["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "grpo.json").write_text(json.dumps(dict(meta=meta, results=results), indent=2) + "\n")
    table = markdown(results, meta)
    (out_dir / "grpo.md").write_text(table)
    print(table)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", help="run one variant in this process and print its JSON result")
    p.add_argument("--variants", nargs="+", default=VARIANTS, help="driver mode: the variants to run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151936)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args)), flush=True)
    else:
        drive(args)


if __name__ == "__main__":
    main()
