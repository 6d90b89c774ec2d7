"""Log-prob + entropy forward and backward: rubricrl against the heads TRL and verl use on CPU.

    python -m bench.bench_hosts                       # both shapes, 1 and 2 threads
    python -m bench.bench_hosts --shapes small --threads-list 2

Shapes: ``small`` N=1024, H=512, V=32768; ``qwen`` N=2048, H=896, V=151936 (a
Qwen2.5-0.5B output layer). fp32 inputs. Variants, each in a fresh process:
  rubricrl      rubricrl.ops.fused_linear_logprobs(return_entropy=True) (default backend: C++)
  trl_chunked   TRL 1.16's ChunkedLogProbFunction (what its GRPOTrainer's fused LM head calls;
                its torch path on CPU), outputs ("log_probs", "entropy")
  verl_torch    verl 0.9.1's FusedLinearForPPO(impl_backend="torch") (its "torch" fused
                backend; the "triton" one, linear_cross_entropy, needs CUDA/NVTX)
  naive         logits = h @ W.T, log_softmax, gather, entropy; autograd backward
Each step computes (lp * g_lp + ent * g_ent).sum() and its gradients w.r.t. hidden and weight.
Results: bench/results/hosts.{json,md}.
"""

from __future__ import annotations

import json
import os

import torch

from bench import harness

VARIANTS = ["rubricrl", "trl_chunked", "verl_torch", "naive"]
SHAPES = {"small": (1024, 512, 32768), "qwen": (2048, 896, 151936)}
PEERS = ("torch", "trl", "verl", "transformers")


def _head(variant: str):
    """variant -> f(hidden, weight, targets) -> (log_probs [N], entropy [N])."""
    if variant == "rubricrl":
        from rubricrl.ops import fused_linear_logprobs

        return lambda h, w, y: fused_linear_logprobs(h, w, y, return_entropy=True)
    if variant == "trl_chunked":
        from trl.kernels import ChunkedLogProbFunction
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

        def trl_head(h, w, y):
            out = ChunkedLogProbFunction.apply(h, w, None, y, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0,
                                               ("log_probs", "entropy"))
            return out[0], out[1]

        return trl_head
    if variant == "verl_torch":
        from verl.utils.experimental.torch_functional import FusedLinearForPPO

        head = FusedLinearForPPO(impl_backend="torch")
        return lambda h, w, y: head(h, w, y, 1.0)
    if variant == "naive":
        def naive(h, w, y):
            logp = torch.log_softmax(h @ w.t(), dim=-1)
            return logp.gather(1, y[:, None]).squeeze(1), -(logp.exp() * logp).sum(-1)

        return naive
    raise SystemExit(f"unknown variant {variant!r}; choose from {VARIANTS}")


def _setup(variant: str, n: int, h: int, v: int):
    head = _head(variant)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * h**-0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)

    def step():
        hidden.grad = weight.grad = None
        lp, ent = head(hidden, weight, targets)
        (lp * g_lp + ent * g_ent).sum().backward()

    return step


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    return {pkg: md.version(pkg) for pkg in PEERS}


def main(argv=None) -> None:
    p = harness.common_parser(__doc__)
    p.add_argument("--shape", choices=sorted(SHAPES), help="(with --variant) the shape to run")
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--threads-list", default="1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--qwen-repeats", type=int, default=1, help="timed steps at the qwen shape (tens of s each)")
    p.add_argument("--qwen-threads-list", default=None, help="thread counts at the qwen shape (default: --threads-list)")
    p.set_defaults(repeats=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.variant:
        n, h, v = SHAPES[args.shape]
        row = harness.run_variant(lambda: _setup(args.variant, n, h, v), args.repeats, args.warmup)
        print(json.dumps({"variant": args.variant, **row}))
        return
    meta = {"dtype": "fp32", "repeats": args.repeats, "qwen_repeats": args.qwen_repeats, "warmup": args.warmup,
            "peer_versions": _versions(), "loadavg_before": os.getloadavg(),
            "step": "(lp * g_lp + ent * g_ent).sum().backward(), grads to hidden and weight"}
    rows, tables = [], []
    for shape in args.shapes.split(","):
        n, h, v = SHAPES[shape]
        threads_list = (args.qwen_threads_list if shape == "qwen" and args.qwen_threads_list else args.threads_list)
        for threads in (int(t) for t in threads_list.split(",")):
            repeats = args.qwen_repeats if shape == "qwen" else args.repeats
            extra = ["--shape", shape, "--repeats", str(repeats), "--warmup", str(args.warmup)]
            part = harness.drive("bench.bench_hosts", "hosts", args.variants.split(","), extra, threads)
            for r in part:
                r.update(shape=shape, N=n, H=h, V=v, threads=threads, loadavg_after=os.getloadavg())
            rows += part
            tables.append(f"**{shape}** N={n}, H={h}, V={v}, fp32, {threads} thread(s), {repeats} timed step(s)\n\n"
                          + harness.markdown_table(part, "rubricrl", []))
            _write(meta, rows, tables, args.warmup)  # after every block: a long run keeps what it measured


def _write(meta: dict, rows: list[dict], tables: list[str], warmup: int) -> None:
    path = harness.write_results("hosts", meta, rows)
    versions = ", ".join(f"{k} {v}" for k, v in meta["peer_versions"].items())
    now = os.getloadavg()
    md = (f"# Log-prob + entropy forward+backward: rubricrl vs TRL / verl heads (CPU)\n\n"
          f"Versions: {versions}. Load average (1/5/15 min) at the start: "
          f"{' / '.join(f'{x:.1f}' for x in meta['loadavg_before'])}, at the last block: "
          f"{' / '.join(f'{x:.1f}' for x in now)} (other jobs on the machine raise it above the thread count). "
          f"Median of the timed steps after {warmup} warm-up step(s); peak extra memory = VmHWM over the RSS "
          f"once the inputs exist.\n\n" + "\n\n".join(tables) + "\n")
    (path.parent / "hosts.md").write_text(md)
    print(md, flush=True)


if __name__ == "__main__":
    main()
