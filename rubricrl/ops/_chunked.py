"""The vocabulary-chunked GEMM loop in Python, shared by the ``torch`` and ``triton`` backends.

The ``cpp`` backend has the same loop in C++ (csrc/cpu/linear_chunks.cpp) so
C++ callers get whole ops. Here the GEMMs are ``torch.mm`` (MKL/OpenBLAS on the
CPU, cuBLAS on the GPU) and an *epilogue* object does the row-wise softmax work
on each ``[N, cols]`` fp32 logits block; see :class:`Epilogue`.

Chunking runs over the vocabulary: each chunk's rows of ``d_weight`` are
written exactly once and only the small ``d_hidden [N, H]`` accumulates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Protocol

import torch

from .constants import DEFAULT_TOKEN_CHUNK_ELEMS, DEFAULT_VOCAB_CHUNK_ELEMS, MIN_VOCAB_CHUNK_COLS, TOKEN_CHUNK_ALIGN


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (so gradcheck can run)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def chunk_columns(n: int, vocab: int, chunk_size: int | None) -> int:
    """Vocabulary columns per chunk (mirrors ``vocab_chunk_columns`` in C++)."""
    cols = chunk_size if chunk_size else DEFAULT_VOCAB_CHUNK_ELEMS // max(n, 1)
    return min(max(cols, MIN_VOCAB_CHUNK_COLS), vocab)


@dataclass
class LseState:
    """Online log-sum-exp state per row; fp32 ``[N]`` each (see softmax_epilogue.h)."""

    m: torch.Tensor
    s: torch.Tensor
    a: torch.Tensor | None
    z_tgt: torch.Tensor

    @classmethod
    def empty(cls, n: int, with_entropy: bool, device: torch.device, dtype=torch.float32) -> "LseState":
        f32 = dict(dtype=dtype, device=device)
        return cls(
            m=torch.full((n,), -math.inf, **f32),
            s=torch.zeros(n, **f32),
            a=torch.zeros(n, **f32) if with_entropy else None,
            z_tgt=torch.zeros(n, **f32),
        )

    def finish(self, targets: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (logprobs, entropy, lse), fp32 ``[N]``; ignored rows (target outside [0, V)) read 0."""
        log_s = torch.log(self.s)
        lse = self.m + log_s
        valid = (targets >= 0) & (targets < vocab)
        zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
        logprobs = torch.where(valid, self.z_tgt - lse, zero)
        if self.a is None:
            entropy = torch.zeros_like(lse)
        else:
            entropy = torch.where(valid, log_s - self.a / self.s, zero)
        return logprobs, entropy, lse


class Epilogue(Protocol):
    def update(self, x: torch.Tensor, v0: int, targets: torch.Tensor, inv_t: float, st: LseState) -> None:
        """Folds the logits block ``x [n, cols]`` (compute dtype) (columns v0..) into ``st`` in place."""

    def grad(
        self,
        x: torch.Tensor,
        v0: int,
        targets: torch.Tensor,
        inv_t: float,
        lse: torch.Tensor,
        entropy: torch.Tensor,
        g_lp: torch.Tensor,
        g_ent: torch.Tensor | None,
    ) -> None:
        """Overwrites ``x`` with d loss/d logits (loss = sum g_lp*logp + g_ent*H)."""


def masked_grad(grad: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
    """Upstream gradient in the compute dtype, zero on ignored rows so they receive no gradient."""
    valid = (targets >= 0) & (targets < vocab)
    g = grad.to(compute_dtype(grad))
    return torch.where(valid, g, torch.zeros((), dtype=g.dtype, device=grad.device)).contiguous()


def zero_rows(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of ``hidden [N, H]`` with the rows where ``rows [N]`` (bool) is True set to exactly 0.

    Why: the epilogues write exact 0 into the d logits rows of ignored tokens (and of rows
    without upstream gradient), but the GEMM ``d_weight = d_logits^T @ hidden`` still adds
    ``0 * hidden`` for them, and ``0 * NaN = NaN`` would reach every row of ``d_weight``.
    Zeroed rows also give finite logits (the bias) to the epilogues. One ``[N, H]`` pass,
    next to ``N H V`` GEMM work, and no host sync (so it stays asynchronous on the GPU).
    """
    return hidden.masked_fill(rows[:, None], 0)


def _logit_chunks(
    hidden32: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, cols: int
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    n, vocab = hidden32.shape[0], weight.shape[0]
    buffer = torch.empty(n * cols, dtype=hidden32.dtype, device=hidden32.device)
    for v0 in range(0, vocab, cols):
        c = min(cols, vocab - v0)
        logits = buffer[: n * c].view(n, c)
        w = weight[v0 : v0 + c].to(hidden32.dtype)
        if bias is not None:
            torch.addmm(bias[v0 : v0 + c].to(hidden32.dtype), hidden32, w.t(), out=logits)
        else:
            torch.mm(hidden32, w.t(), out=logits)
        yield v0, logits, w


def gathered_logits(hidden, weight, bias, ids):
    """fp32 ``[N, K]`` raw logits of the token ids ``ids [K]`` only: the rows of ``weight``
    (and ``bias``) are gathered first, so the GEMM is ``[N, H] x [H, K]``, not ``[N, H] x [H, V]``."""
    w = weight.index_select(0, ids).float()
    if bias is not None:
        return torch.addmm(bias.index_select(0, ids).float(), hidden.float(), w.t())
    return hidden.float() @ w.t()


def linear_fwd(epi: Epilogue, hidden, weight, bias, targets, temperature, with_entropy, chunk_size):
    """hidden [N,H], weight [V,H], bias [V]|None, targets int64 [N] -> (logprobs, entropy, lse) fp32 [N]."""
    hidden32 = hidden.to(compute_dtype(hidden)).contiguous()
    n, vocab = hidden.shape[0], weight.shape[0]
    st = LseState.empty(n, with_entropy, hidden.device, hidden32.dtype)
    inv_t = 1.0 / temperature
    for v0, logits, _ in _logit_chunks(hidden32, weight, bias, chunk_columns(n, vocab, chunk_size)):
        epi.update(logits, v0, targets, inv_t, st)
    return st.finish(targets, vocab)


def linear_lse(epi: Epilogue, hidden, weight, bias, targets, temperature, chunk_size):
    """Forward only, for reward ops: the full-vocabulary normaliser of ``z = (hidden @ weight.T + bias) / T``
    and, where ``targets`` (int64 ``[N]``, or None for none) is in [0, V), log p(target).

    Returns ``(m, log_s, logprob)``, fp32 ``[N]`` each, with ``lse = m + log_s`` kept as
    two numbers: at ``|z| ~ 1e4`` one fp32 lse is only good to ~5e-4, while ``z - m`` is
    exact for nearby logits, so ``logprob = (z_t - m) - log_s`` and ratios of
    normalisers (``exp(m1 - m2 + log_s1 - log_s2)``) keep full relative precision.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    if targets is None:
        targets = torch.full((n,), -1, dtype=torch.int64, device=hidden.device)
    st = LseState.empty(n, False, hidden.device)
    inv_t = 1.0 / temperature
    for v0, logits, _ in _logit_chunks(hidden.float().contiguous(), weight, bias, chunk_columns(n, vocab, chunk_size)):
        epi.update(logits, v0, targets, inv_t, st)
    log_s = torch.log(st.s)
    valid = (targets >= 0) & (targets < vocab)
    logprob = torch.where(valid, (st.z_tgt - st.m) - log_s, torch.zeros((), device=hidden.device))
    return st.m, log_s, logprob


def linear_bwd(epi: Epilogue, g_lp, g_ent, hidden, weight, bias, targets, lse, entropy, temperature, chunk_size):
    """-> (d_hidden [N,H], d_weight [V,H], d_bias [V]|None) in the inputs' dtypes."""
    hidden32 = hidden.to(compute_dtype(hidden)).contiguous()
    n, vocab = hidden.shape[0], weight.shape[0]
    g_lp = masked_grad(g_lp, targets, vocab)
    g_ent = masked_grad(g_ent, targets, vocab) if g_ent is not None else None
    # rows without upstream gradient (ignored tokens among them) contribute exactly 0,
    # whatever their hidden state holds (NaN, Inf): see zero_rows
    silent = g_lp == 0 if g_ent is None else (g_lp == 0) & (g_ent == 0)
    hidden32 = zero_rows(hidden32, silent)
    d_hidden = torch.zeros_like(hidden32)
    d_weight = torch.empty_like(weight)
    d_bias = torch.empty(vocab, dtype=hidden32.dtype, device=hidden.device) if bias is not None else None
    inv_t = 1.0 / temperature
    for v0, logits, w in _logit_chunks(hidden32, weight, bias, chunk_columns(n, vocab, chunk_size)):
        c = logits.shape[1]
        epi.grad(logits, v0, targets, inv_t, lse, entropy, g_lp, g_ent)
        d_hidden.addmm_(logits, w)
        d_weight[v0 : v0 + c] = logits.t() @ hidden32
        if d_bias is not None:
            d_bias[v0 : v0 + c] = logits.sum(0)
    return (
        d_hidden.to(hidden.dtype),
        d_weight,
        d_bias.to(bias.dtype) if d_bias is not None else None,
    )


def token_fwd(epi: Epilogue, logits, targets, temperature, with_entropy):
    """logits [N,V] -> (logprobs, entropy, lse) fp32 [N] (one block: the whole vocabulary)."""
    x = logits.to(compute_dtype(logits)).contiguous()
    st = LseState.empty(x.shape[0], with_entropy, x.device, x.dtype)
    epi.update(x, 0, targets, 1.0 / temperature, st)
    return st.finish(targets, x.shape[1])


def token_bwd(epi: Epilogue, g_lp, g_ent, logits, targets, lse, entropy, temperature):
    """-> d logits [N,V] in the logits' dtype."""
    vocab = logits.shape[1]
    g_lp = masked_grad(g_lp, targets, vocab)
    g_ent = masked_grad(g_ent, targets, vocab) if g_ent is not None else None
    dx = logits.to(compute_dtype(logits), copy=True).contiguous()
    epi.grad(dx, 0, targets, 1.0 / temperature, lse, entropy, g_lp, g_ent)
    return dx.to(logits.dtype)


# --- token-chunked loop (fused linear + per-token loss, forward and backward in one pass) ---


def token_chunk_rows(n: int, vocab: int, chunk_size: int | None) -> int:
    """Token rows per chunk (mirrors ``token_chunk_rows`` in csrc/cpu/grpo.cpp): the caller's
    ``chunk_size``, else what keeps ``[rows, V]`` fp32 near the default budget, a multiple of TOKEN_CHUNK_ALIGN."""
    align = TOKEN_CHUNK_ALIGN
    rows = chunk_size if chunk_size else max(align, DEFAULT_TOKEN_CHUNK_ELEMS // max(vocab, 1) // align * align)
    return max(1, min(rows, n))


def linear_token_chunks(epi: Epilogue, hidden, weight, bias, targets, temperature, with_entropy, coef_fn,
                        needs, chunk_size):
    """Fused linear + a per-token loss of the log-probs, its backward done inside the forward.

    Chunks run over *tokens* with whole vocabulary rows, so each chunk's log-sum-exp
    is complete after one GEMM. For rows ``[n0, n1)``: logits (GEMM 1), then log-probs
    and entropies from the epilogue, then ``coef_fn(n0, n1, logprobs, entropy) ->
    (g_lp, g_ent | None)``, the loss's derivatives w.r.t. those rows' log-probs and
    entropies (``coef_fn`` accumulates the loss itself); the epilogue overwrites the
    logits with d logits, and d hidden rows = dl @ W (GEMM 2), d weight += dl^T @ h (GEMM 3).

    Args:
        hidden ``[N, H]``, weight ``[V, H]``, bias ``[V]`` or None; targets int64 ``[N]``
        (outside ``[0, V)``: ignored row, log-prob 0, no gradient); needs: flags
        ``(d_hidden, d_weight, d_bias)``; chunk_size: token rows per chunk or None.

    Returns:
        ``(d_hidden, d_weight, d_bias)`` in the inputs' dtypes, None where not needed.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    # ignored rows (masked tokens) become exact zeros before GEMM 1: whatever their hidden
    # state holds (NaN, Inf) reaches neither d weight (GEMM 3) nor any other output
    hidden32 = zero_rows(hidden.float(), (targets < 0) | (targets >= vocab)).contiguous()
    weight32 = weight.float().contiguous()
    bias32 = bias.float() if bias is not None else None
    f32 = dict(dtype=torch.float32, device=hidden.device)
    d_hidden = torch.zeros_like(hidden32) if needs[0] else None
    d_weight = torch.zeros(weight.shape, **f32) if needs[1] else None
    d_bias = torch.zeros(vocab, **f32) if needs[2] else None
    rows = token_chunk_rows(n, vocab, chunk_size)
    buffer = torch.empty(rows * vocab, **f32) if n > 0 else None
    inv_t = 1.0 / temperature
    for n0 in range(0, n, rows):
        n1 = min(n0 + rows, n)
        x = buffer[: (n1 - n0) * vocab].view(n1 - n0, vocab)
        h = hidden32[n0:n1]
        if bias32 is not None:
            torch.addmm(bias32, h, weight32.t(), out=x)
        else:
            torch.mm(h, weight32.t(), out=x)
        tgt = targets[n0:n1]
        st = LseState.empty(n1 - n0, with_entropy, hidden.device)
        epi.update(x, 0, tgt, inv_t, st)
        logprobs, entropy, lse = st.finish(tgt, vocab)
        g_lp, g_ent = coef_fn(n0, n1, logprobs, entropy)
        if not any(needs):
            continue
        g_lp = masked_grad(g_lp, tgt, vocab)
        g_ent = masked_grad(g_ent, tgt, vocab) if g_ent is not None else None
        epi.grad(x, 0, tgt, inv_t, lse, entropy, g_lp, g_ent)
        if d_hidden is not None:
            torch.mm(x, weight32, out=d_hidden[n0:n1])
        if d_weight is not None:
            d_weight.addmm_(x.t(), h)
        if d_bias is not None:
            d_bias += x.sum(0)
    return (
        d_hidden.to(hidden.dtype) if d_hidden is not None else None,
        d_weight.to(weight.dtype) if d_weight is not None else None,
        d_bias.to(bias.dtype) if d_bias is not None else None,
    )


def logprob_ops(epi: Epilogue):
    """The four log-prob entry points of a backend, bound to its epilogue.

    Returns ``(token_fwd, token_bwd, linear_fwd, linear_bwd)`` with the signatures the
    autograd Functions in :mod:`rubricrl.ops.logprobs` call (see the functions above).
    """

    def token_fwd_(logits, targets, temperature, with_entropy):
        return token_fwd(epi, logits, targets, temperature, with_entropy)

    def token_bwd_(g_lp, g_ent, logits, targets, lse, entropy, temperature):
        return token_bwd(epi, g_lp, g_ent, logits, targets, lse, entropy, temperature)

    def linear_fwd_(hidden, weight, bias, targets, temperature, with_entropy, chunk_size):
        return linear_fwd(epi, hidden, weight, bias, targets, temperature, with_entropy, chunk_size)

    def linear_bwd_(g_lp, g_ent, hidden, weight, bias, targets, lse, entropy, temperature, chunk_size):
        return linear_bwd(epi, g_lp, g_ent, hidden, weight, bias, targets, lse, entropy, temperature, chunk_size)

    return token_fwd_, token_bwd_, linear_fwd_, linear_bwd_
