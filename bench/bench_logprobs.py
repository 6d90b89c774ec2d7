"""Fused token log-probs + entropy, forward and backward, against naive PyTorch and the GEMM floor.

    python -m bench.bench_logprobs               # all variants, each in a fresh process
    python -m bench.bench_logprobs --tokens 256  # smaller, quicker

Shape (default): N=2048 tokens, H=896, V=151936 (a Qwen2.5-0.5B output layer), fp32.
Variants:
  naive        logits = h @ W.T, log_softmax, gather, entropy; autograd backward
  fused_cpp    rubricrl.ops.fused_linear_logprobs(backend="cpp")
  fused_torch  the same op, backend="torch" (the chunked plain-PyTorch implementation)
  gemm_floor   the four bare GEMMs a memory-saving op cannot avoid: h·Wᵀ (forward),
               h·Wᵀ again (backward recomputation), dlogits·W and dlogitsᵀ·h
Each step computes (lp * g_lp + ent * g_ent).sum() and its gradients w.r.t. hidden and weight.
"""

from __future__ import annotations

import json

import torch

from bench import harness
from rubricrl.ops import fused_linear_logprobs

VARIANTS = ["naive", "fused_cpp", "fused_torch", "gemm_floor"]


def _setup(variant: str, n: int, h: int, v: int, chunk: int | None):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, h, generator=g).requires_grad_()
    weight = (torch.randn(v, h, generator=g) * h**-0.5).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    g_lp, g_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)

    if variant == "gemm_floor":
        hd, wd = hidden.detach(), weight.detach()
        cols = chunk or max(64, (1 << 23) // n)

        def step():
            # chunked like the fused op so the floor has the same working-set size
            d_h = torch.zeros_like(hd)
            d_w = torch.empty_like(wd)
            buf = torch.empty(n * cols)
            for v0 in range(0, v, cols):
                c = min(cols, v - v0)
                out = buf[: n * c].view(n, c)
                w = wd[v0 : v0 + c]
                torch.mm(hd, w.t(), out=out)  # forward
                torch.mm(hd, w.t(), out=out)  # backward recomputation
                d_h.addmm_(out, w)
                torch.mm(out.t(), hd, out=d_w[v0 : v0 + c])

        return step

    def step():
        hidden.grad = weight.grad = None
        if variant == "naive":
            logp = torch.log_softmax(hidden @ weight.t(), dim=-1)
            lp = logp.gather(1, targets[:, None]).squeeze(1)
            ent = -(logp.exp() * logp).sum(-1)
        else:
            backend = {"fused_cpp": "cpp", "fused_torch": "torch"}[variant]
            lp, ent = fused_linear_logprobs(
                hidden, weight, targets, return_entropy=True, vocab_chunk=chunk, backend=backend
            )
        (lp * g_lp + ent * g_ent).sum().backward()

    return step


def main(argv=None) -> None:
    p = harness.common_parser(__doc__)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--vocab", type=int, default=151936)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = dict(n=args.tokens, h=args.hidden, v=args.vocab, chunk=args.chunk_size)
    if args.variant:
        row = harness.run_variant(lambda: _setup(args.variant, **shape), args.repeats, args.warmup)
        print(json.dumps({"variant": args.variant, **row}))
        return
    extra = ["--tokens", str(args.tokens), "--hidden", str(args.hidden), "--vocab", str(args.vocab),
             "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.chunk_size:
        extra += ["--chunk-size", str(args.chunk_size)]
    rows = harness.drive("bench.bench_logprobs", "logprobs", args.variants.split(","), extra, args.threads)
    n, h, v = args.tokens, args.hidden, args.vocab
    unavoidable = 4 * (v * h + n * h + 2 * n)  # d_weight + d_hidden + two fp32 outputs
    meta = {"shape": {"N": n, "H": h, "V": v}, "dtype": "fp32", "unavoidable_bytes": unavoidable,
            "repeats": args.repeats, "warmup": args.warmup}
    for r in rows:
        r["x_unavoidable_memory"] = round(r["peak_extra_bytes"] / unavoidable, 2)
    path = harness.write_results("logprobs", meta, rows)
    print(harness.markdown_table(rows, "gemm_floor", [("x_unavoidable_memory", "× unavoidable bytes")]))
    print(f"\nunavoidable bytes: {unavoidable / 1e9:.3f} GB; results in {path}")


if __name__ == "__main__":
    main()
