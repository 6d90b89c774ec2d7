"""Scoring on hidden states: the engine operations ``token_logprobs`` and ``verdict_probs``
for engines that expose ``hidden_states`` / ``output_projection`` (``HFEngine``, and the
defaults of ``Engine``).

``verdict_probs`` reads the hidden state at the last token of every judge prompt and turns
it into p(met) with ``rubricrl.ops.verdict_probs``, which reads only the verdict rows of the
output projection (no ``[tokens, vocab]`` logits).

Prefix sharing (``VerdictOptions.share_prefix``, engines with ``forward_with_cache``). The G
responses of a prompt share the instructions + conversation (the request's ``prefix``); the
items of a response share that plus the response (its ``body``). So, for all the requests of
a call together:

1. the distinct prefixes run once, in one (right-padded) forward, with
   ``engine.forward_with_cache``;
2. all the bodies run on top of them, longest first, in batches cut to waste the least
   padding for a fixed per-batch cost (``_length_batches``); each batch continues its
   rows' prefixes selected from the prefix cache, right-padded and masked (the tokens every
   suffix starts with, e.g. ``<criterion points="``, are appended to the bodies here, so
   they too run once per body);
3. all suffixes of a body run packed into that body's row, on the bodies' cache as it is
   (``segment_ids``: each suffix attends to the context and to itself only); the hidden
   state at each suffix's last token is the verdict state. Rows are cut into forwards the
   same way, by packed length. Packing makes no per-(response, item) copy of the context
   cache (copying it per row, then growing it with ``torch.cat`` and repeating GQA heads,
   cost more than the attention itself). On the CPU the engine's split attention
   (``rubricrl.engines.split_attention``) then attends each suffix to the context and to
   itself only, instead of masking out the other suffixes of its row, and each body to the
   prefix and causally to itself.

Padding inside the cache (a short body in a batch of longer ones) is masked, and positions
count real tokens only, so every suffix sees exactly the sequence prefix + body + suffix.
Without sharing each full prompt runs as its own (batched) sequence; both give the same
p(met) (within 1e-4 in fp32, tested). Work: each prefix once, each body once, each suffix
once per body, instead of ``G * K`` full prompts; about 3-5 forwards per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rubricrl.engines.base import VerdictOptions, VerdictRequest
from rubricrl.engines.cache import select_rows
from rubricrl.engines.padding import left_pad
from rubricrl.ops import fused_linear_logprobs, verdict_probs

__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "token_logprobs_from_hidden", "verdict_probs_from_hidden", "verdicts_from_logprobs"]

#: Default bound on one forward pass, in tokens of context (cached + new) summed over its
#: rows. On the CPU, 8192 measured as fast as 4096 and 16384 on the step benchmark and
#: faster than 32768 (bigger padded batches, more memory traffic); GPUs want big batches
#: and have memory for their KV caches.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 1 << 13, "cuda": 1 << 16}


def token_logprobs_from_hidden(
    engine, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], temperature: float
) -> list[list[float]]:
    """``Engine.token_logprobs`` from one forward of the left-padded prompts + right-padded
    responses (``engine.hidden_states``) and ``fused_linear_logprobs`` (vocabulary-chunked,
    never ``[tokens, V]`` logits, fp32 accumulation)."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"prompt_ids has {len(prompt_ids)} rows but response_ids has {len(response_ids)}")
    if not prompt_ids:
        return []
    for name, rows in (("prompt_ids", prompt_ids), ("response_ids", response_ids)):
        empty = next((i for i, r in enumerate(rows) if len(r) == 0), None)
        if empty is not None:
            raise ValueError(f"{name}[{empty}] is empty")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    pad = _pad_id(engine)
    device = engine.device
    ids, mask = left_pad([list(p) for p in prompt_ids], pad)
    batch, prompt_len = ids.shape
    width = max(len(r) for r in response_ids)
    resp = torch.full((batch, width), pad, dtype=torch.long)
    resp_mask = torch.zeros((batch, width), dtype=torch.long)
    for b, row in enumerate(response_ids):
        resp[b, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        resp_mask[b, : len(row)] = 1
    resp, resp_mask = resp.to(device), resp_mask.to(device)
    hidden = engine.hidden_states(
        torch.cat([ids.to(device), resp], dim=1), torch.cat([mask.to(device), resp_mask], dim=1)
    )
    # The hidden state at position p predicts token p + 1: response token k is
    # predicted at prompt_len - 1 + k (left padding puts every prompt's end there).
    predicting = hidden[:, prompt_len - 1 : prompt_len - 1 + width]
    valid = resp_mask.bool()
    weight, bias = engine.output_projection()
    flat = fused_linear_logprobs(predicting[valid], weight, resp[valid], bias=bias, temperature=float(temperature))
    out: list[list[float]] = []
    offset = 0
    for row in response_ids:
        out.append(flat[offset : offset + len(row)].tolist())
        offset += len(row)
    return out


def verdict_probs_from_hidden(
    engine,
    requests: Sequence[VerdictRequest],
    yes_ids: Sequence[int],
    no_ids: Sequence[int],
    temperature: float,
    return_mass: bool,
    options: VerdictOptions,
    *,
    share_prefix: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Engine.verdict_probs`` on hidden states: the verdict-position states (prefix-shared
    through ``engine.forward_with_cache`` when ``share_prefix``, else full prompts through
    ``engine.hidden_states``), then ``rubricrl.ops.verdict_probs``."""
    offsets = [0]
    for req in requests:
        offsets.append(offsets[-1] + len(req.suffixes))
    if offsets[-1] == 0:
        empty = torch.empty(0, dtype=torch.float32)
        return empty, (empty.clone() if return_mass else None)
    device = engine.device
    budget = options.max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS.get(device.type, DEFAULT_MAX_BATCH_TOKENS["cuda"])
    with torch.no_grad():
        if share_prefix:
            hidden = _shared_states(engine, requests, offsets, budget, options.batch_overhead_tokens)
        else:
            pad_rows = device.type != "cpu" if options.pad_unshared is None else options.pad_unshared
            hidden = _unshared_states(engine, requests, budget, pad_rows=pad_rows)
        weight, bias = engine.output_projection()
        out = verdict_probs(
            hidden, weight, list(yes_ids), list(no_ids),
            temperature=temperature, return_mass=return_mass, bias=bias, backend=options.backend,
        )
    p_met, mass = out if return_mass else (out, None)
    return p_met.float().cpu(), (None if mass is None else mass.float().cpu())


def _unshared_states(engine, encoded: Sequence[VerdictRequest], budget: int, *, pad_rows: bool) -> torch.Tensor:
    """Verdict-position hidden states ``[N, H]``, each judge prompt a full sequence.

    Rows are sorted by length and batched up to ``budget`` tokens. With ``pad_rows=False``
    (CPU) a batch holds rows of one length only: an unpadded batch needs no attention
    mask, so attention runs causal (half the work) and skips the mask's cost.
    """
    rows: list[list[int]] = []
    for enc in encoded:
        head = list(enc.prefix) + list(enc.body)
        rows.extend(head + list(suffix) for suffix in enc.suffixes)
    pad = _pad_id(engine)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    out: torch.Tensor | None = None
    start = 0
    while start < len(order):
        width = len(rows[order[start]])
        end = min(len(order), start + max(1, budget // width))
        if not pad_rows:
            end = next((j for j in range(start + 1, end) if len(rows[order[j]]) != width), end)
        batch = order[start:end]
        ids, mask, lengths = _right_pad([rows[i] for i in batch], pad)
        hidden = engine.hidden_states(ids, mask)
        last = hidden[torch.arange(len(batch), device=hidden.device), lengths.to(hidden.device) - 1]
        if out is None:
            out = hidden.new_empty((len(rows), hidden.shape[-1]))
        out[torch.tensor(batch, device=out.device)] = last
        start = end
    assert out is not None
    return out


def _shared_states(engine, encoded: Sequence[VerdictRequest], offsets: list[int], budget: int, overhead: int) -> torch.Tensor:
    """Verdict-position hidden states ``[N, H]`` with each prefix and each response run once.

    All groups go together: their distinct prefixes in one (right-padded) forward, then
    every response of the call, longest first, in batches cut to waste the least padding
    (``_length_batches``), each on the selected rows of the prefix cache; then, per batch,
    every item suffix of a response packed into that response's row.
    """
    device = engine.device
    pad = _pad_id(engine)
    members = [r for r, enc in enumerate(encoded) if enc.suffixes]
    prefix_row: dict[tuple[int, ...], int] = {}
    for r in members:
        prefix_row.setdefault(tuple(encoded[r].prefix), len(prefix_row))
    prefixes = [list(p) for p in prefix_row]
    group = {r: prefix_row[tuple(encoded[r].prefix)] for r in members}
    pids, pmask, _ = _right_pad(prefixes, pad)
    _, prefix_cache = engine.forward_with_cache(
        pids.to(device), attention_mask=None if bool(pmask.all()) else pmask.to(device)
    )
    plen = pids.shape[1]

    # Tokens every item suffix starts with run with the responses (keep >= 1 suffix token
    # per item: the verdict is read at the suffix's last token).
    suffixes = [s for r in members for s in encoded[r].suffixes]
    common = _common_prefix_len(suffixes, cap=min(len(s) for s in suffixes) - 1)
    head = list(suffixes[0][:common])
    responses = {r: list(encoded[r].body) + head for r in members}

    out: torch.Tensor | None = None
    order = sorted(members, key=lambda r: -len(responses[r]))
    for batch in _length_batches([plen + len(responses[r]) for r in order], budget, overhead):
        batch = [order[i] for i in batch]
        ids, resp_mask, _ = _right_pad([responses[r] for r in batch], pad)
        rows_of = torch.tensor([group[r] for r in batch])
        ctx_mask = torch.cat([pmask[rows_of], resp_mask], dim=1)
        _, cache = engine.forward_with_cache(
            ids.to(device), select_rows(prefix_cache, rows_of, len(prefixes)), attention_mask=ctx_mask.to(device)
        )
        packed = [sum(len(s) - common for s in encoded[r].suffixes) for r in batch]
        by_packed = sorted(range(len(batch)), key=lambda b: -packed[b])
        widths = [ctx_mask.shape[1] + packed[b] for b in by_packed]
        for cut in _length_batches(widths, budget, overhead):
            sel = sorted(by_packed[i] for i in cut)
            sfx, seg, ends = _pack([[s[common:] for s in encoded[batch[b]].suffixes] for b in sel], pad)
            part = cache if sel == list(range(len(batch))) else select_rows(cache, torch.tensor(sel), len(batch))
            mask = torch.cat([ctx_mask[sel], (seg >= 0).long()], dim=1)
            hidden, _ = engine.forward_with_cache(
                sfx.to(device), part, attention_mask=mask.to(device), segment_ids=seg.to(device)
            )
            rows_t = torch.tensor([j for j, e in enumerate(ends) for _ in e], device=hidden.device)
            cols_t = torch.tensor([t for e in ends for t in e], device=hidden.device)
            states = hidden[rows_t, cols_t]
            if out is None:
                out = states.new_empty((offsets[-1], states.shape[-1]))
            flat = [offsets[batch[b]] + k for b in sel for k in range(len(encoded[batch[b]].suffixes))]
            out[torch.tensor(flat, device=out.device)] = states
    assert out is not None
    return out


def _length_batches(widths: list[int], budget: int, overhead: int) -> list[list[int]]:
    """Cut rows of non-increasing ``widths`` into contiguous batches (each padded to its first
    row's width, at most ``budget`` tokens) minimising padded tokens + ``overhead`` per batch."""
    n = len(widths)
    best = [float("inf")] * n + [0.0]
    cut = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        rows_max = max(1, budget // widths[i])
        for j in range(i + 1, min(n, i + rows_max) + 1):
            cost = (j - i) * widths[i] + overhead + best[j]
            if cost < best[i]:
                best[i], cut[i] = cost, j
    batches, i = [], 0
    while i < n:
        batches.append(list(range(i, cut[i])))
        i = cut[i]
    return batches


def _pack(groups: list[list[list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Pack each group's sequences into one row: ``(ids [B, T], segment_ids [B, T], ends)``.

    ``segment_ids`` numbers the sequences of a row (-1 = padding); ``ends[b][k]`` is the
    column of the last token of sequence ``k`` of row ``b``.
    """
    width = max(sum(map(len, g)) for g in groups)
    ids = torch.full((len(groups), width), pad, dtype=torch.long)
    seg = torch.full((len(groups), width), -1, dtype=torch.long)
    ends: list[list[int]] = []
    for b, group in enumerate(groups):
        lengths = torch.tensor([len(s) for s in group], dtype=torch.long)
        ids[b, : int(lengths.sum())] = torch.tensor([t for s in group for t in s], dtype=torch.long)
        seg[b, : int(lengths.sum())] = torch.repeat_interleave(torch.arange(len(group)), lengths)
        ends.append((lengths.cumsum(0) - 1).tolist())
    return ids, seg, ends


def _common_prefix_len(rows: list[list[int]], cap: int) -> int:
    first = rows[0]
    n = max(0, min(cap, len(first)))
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return n


def _right_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids [B, T], mask [B, T], lengths [B])``, int64, rows right-padded with ``pad``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    width = int(lengths.max())
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids, mask, lengths


def _pad_id(engine) -> int:
    pad = getattr(engine.tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def verdicts_from_logprobs(logp: torch.Tensor, n_yes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p_met, mass)`` fp32 from ``[N, yes + no]`` log-probs ``log_softmax(logits / T)`` of the
    verdict ids (yes first): ``p_met = sum_yes p / sum_{yes+no} p``, ``mass = sum_{yes+no} p``."""
    lse_all = torch.logsumexp(logp, dim=1)
    p_met = torch.exp(torch.logsumexp(logp[:, :n_yes], dim=1) - lse_all)
    return p_met.float(), torch.exp(lse_all).float()
