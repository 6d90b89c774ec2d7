"""``LogprobJudge``: p(met) from one forward pass per (response, item), prefix-shared (SPEC §3).

The judge prompt ends right before the verdict token. The hidden state at its last
position gives ``p(met) = sum_yes e^{l/T} / sum_{yes+no} e^{l/T}`` through
``rubricrl.ops.verdict_probs``, which reads only the verdict rows of the output
projection (no ``[tokens, vocab]`` logits).

Prefix sharing (``share_prefix=True``, the default). The G responses of a prompt share
the instructions + conversation; the items of a response share that plus the response.
So, for all the requests of a ``grade`` call together:

1. the distinct prefixes run once, in one (right-padded) forward, with
   ``engine.forward_with_cache``;
2. all the responses run on top of them, longest first, in batches cut to waste the least
   padding for a fixed per-batch cost (``_length_batches``); each batch continues its
   rows' prefixes selected from the prefix cache, right-padded and masked (the tokens every
   item suffix starts with, e.g. ``<criterion points="``, are appended to the responses
   here, so they too run once per response);
3. all item suffixes of a response run packed into that response's row, on the responses'
   cache as it is (``segment_ids``: each suffix attends to the context and to itself
   only); the hidden state at each suffix's last token is the verdict state. Rows are cut
   into forwards the same way, by packed length. Packing makes no per-(response, item) copy
   of the context cache (copying it per row, then growing it with ``torch.cat`` and
   repeating GQA heads, cost more than the attention itself). On the CPU the engine's split
   attention (``rubricrl.engines.split_attention``) then attends each suffix to the context
   and to itself only, instead of masking out the other suffixes of its row, and each
   response to the prefix and causally to itself.

Padding inside the cache (a short response in a batch of longer ones) is masked, and
positions count real tokens only, so every suffix sees exactly the sequence
prefix + response + suffix. ``share_prefix=False`` runs each full judge prompt as its
own (batched) sequence; both give the same p(met) (within 1e-4 in fp32, tested).

Work: each prefix once, each response once, each item suffix once per response, instead
of ``G * K`` full prompts; about 3-5 forwards per ``grade`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from rubricrl.engines.cache import expand_cache
from rubricrl.judges._common import (
    check_positive_float,
    check_positive_int,
    check_requests,
    results_from_verdicts,
)
from rubricrl.ops import verdict_probs
from rubricrl.judges.base import GradeRequest, GradeResult
from rubricrl.judges.encoding import JudgePromptEncoder, VerdictIds, verdict_token_ids
from rubricrl.judges.rules import grade_with_rules

__all__ = ["MODES", "LogprobJudge", "VerdictProbs", "verdicts_from_probs"]

#: How p(met) becomes the value that enters the score.
MODES = ("expected", "threshold", "sample")

#: Default bound on one forward pass, in tokens of context (cached + new) summed over its
#: rows. On the CPU, 8192 measured as fast as 4096 and 16384 on the step benchmark and
#: faster than 32768 (bigger padded batches, more memory traffic); GPUs want big batches
#: and have memory for their KV caches.
DEFAULT_MAX_BATCH_TOKENS = {"cpu": 1 << 13, "cuda": 1 << 16}


def verdicts_from_probs(p_met: torch.Tensor, mode: str, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """The per-item ``met`` value of each mode, fp32, same shape as ``p_met``.

    - ``expected``: ``p`` itself (a soft verdict; the score is the expected score before clipping);
    - ``threshold``: ``1.0`` where ``p >= 0.5`` else ``0.0``;
    - ``sample``: a Bernoulli(``p``) draw from ``generator`` (the global RNG when None),
      like a generative verdict sampled at the grading temperature.
    """
    p = p_met.float()
    if mode == "expected":
        return p.clone()
    if mode == "threshold":
        return (p >= 0.5).float()
    if mode == "sample":
        return torch.bernoulli(p.clamp(0.0, 1.0), generator=generator)
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@dataclass
class VerdictProbs:
    """Flattened per-(request, item) verdict probabilities of one ``grade`` call.

    ``p_met`` and ``mass`` are fp32 ``[N]`` on the CPU, ``offsets`` int64 ``[R+1]``: request
    ``r`` owns entries ``offsets[r]:offsets[r+1]`` (its items in order). ``mass`` is the share
    of the full softmax (at the grading temperature) on the verdict tokens, or empty when
    not recorded.
    """

    p_met: torch.Tensor
    mass: torch.Tensor
    offsets: torch.Tensor


@dataclass
class _Encoded:
    prefix: list[int]
    response: list[int]
    suffixes: list[list[int]]


class LogprobJudge:
    """SPEC §3 ``logprob`` judge.

    Args:
        mode: ``expected`` (soft score, default), ``threshold`` (met = p >= 0.5) or
            ``sample`` (met ~ Bernoulli(p)).
        temperature: grading temperature T of the verdict softmax. Default 0.6, the usual
            choice; the source paper found T = 1.0 (the rollout temperature) matched the
            rollout best.
        share_prefix: run the conversation prefix once per group and each response once
            (KV cache); ``False`` runs every (response, item) prompt as a full sequence.
        seed: seed of the private generator for ``sample`` mode (the draws continue across
            ``grade`` calls); ``None`` draws from the global torch RNG.
        chat_template: wrap prompts in the tokenizer's chat template; ``None`` = when it has one.
        record_mass: also compute the verdict mass (one more pass over the vocabulary rows,
            the format diagnostic of SPEC §3).
        max_batch_tokens: bound on one forward pass: rows x context tokens (cached + new);
            ``None``: 8192 on CPU, 65536 on GPU.
        yes_words, no_words: verdict words (default ``judge_prompts.verdict_words()``).
        backend: forwarded to ``verdict_probs`` (``None`` = automatic).
    """

    name = "logprob"

    def __init__(
        self,
        *,
        mode: str = "expected",
        temperature: float = 0.6,
        share_prefix: bool = True,
        seed: int | None = None,
        chat_template: bool | None = None,
        record_mass: bool = True,
        max_batch_tokens: int | None = None,
        yes_words: Sequence[str] | None = None,
        no_words: Sequence[str] | None = None,
        backend: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.temperature = check_positive_float(temperature, "temperature")
        self.share_prefix = bool(share_prefix)
        if seed is not None:
            check_positive_int(seed, "seed", minimum=0)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.chat_template = chat_template
        self.record_mass = bool(record_mass)
        if max_batch_tokens is not None:
            check_positive_int(max_batch_tokens, "max_batch_tokens")
        self.max_batch_tokens = max_batch_tokens
        #: ``share_prefix=True``: the cost of one more response batch (its forwards' fixed
        #: overhead), in padded tokens, when responses are cut into batches.
        self.batch_overhead_tokens = 128
        #: ``share_prefix=False`` only: batch rows of different lengths with padding. None:
        #: on GPUs only (on CPUs unpadded batches, which need no attention mask, are faster).
        self.pad_unshared: bool | None = None
        self.yes_words = None if yes_words is None else list(yes_words)
        self.no_words = None if no_words is None else list(no_words)
        self.backend = backend
        self._encoders: dict[int, tuple[object, JudgePromptEncoder, VerdictIds]] = {}

    def __repr__(self) -> str:
        return (
            f"LogprobJudge(mode={self.mode!r}, temperature={self.temperature}, share_prefix={self.share_prefix}, "
            f"seed={self.seed})"
        )

    # ---- public --------------------------------------------------------------------

    def grade(self, engine, requests: list[GradeRequest]) -> list[GradeResult]:
        """Grade every request; see :class:`rubricrl.judges.base.Judge`. Rule-checked items
        are graded by their checks (``rubricrl.judges.rules``), the others by the engine."""
        requests = check_requests(requests)
        return grade_with_rules(engine, requests, lambda judged: self._grade_judge_items(engine, judged))

    def _grade_judge_items(self, engine, requests: list[GradeRequest]) -> list[GradeResult]:
        version = engine.policy_version
        probs = self.verdict_probs(engine, requests)
        met = verdicts_from_probs(probs.p_met, self.mode, generator=self._generator)
        p_list, met_list, mass_list = probs.p_met.tolist(), met.tolist(), probs.mass.tolist()
        bounds = probs.offsets.tolist()
        spans = [range(bounds[r], bounds[r + 1]) for r in range(len(requests))]
        return results_from_verdicts(
            requests,
            [[p_list[i] for i in span] for span in spans],
            [[met_list[i] for i in span] for span in spans],
            version,
            [[mass_list[i] for i in span] for span in spans] if self.record_mass else None,
        )

    def verdict_probs(self, engine, requests: list[GradeRequest]) -> VerdictProbs:
        """p(met) (and the verdict mass) of every (request, item), without applying the mode.

        Every item is read from the model here, rule-checked or not (``grade`` sends only
        the judge items)."""
        requests = check_requests(requests)
        encoder, ids = self._encoder(engine.tokenizer)
        encoded = [
            _Encoded(
                encoder.prefix_ids(req.conversation),
                encoder.response_ids(req.response),
                [encoder.suffix_ids(item) for item in req.items],
            )
            for req in requests
        ]
        offsets = [0]
        for enc in encoded:
            offsets.append(offsets[-1] + len(enc.suffixes))
        total = offsets[-1]
        offsets_t = torch.tensor(offsets, dtype=torch.long)
        if total == 0:
            empty = torch.empty(0, dtype=torch.float32)
            return VerdictProbs(empty, empty.clone(), offsets_t)

        device = _device(engine)
        budget = self.max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS.get(device.type, DEFAULT_MAX_BATCH_TOKENS["cuda"])
        with torch.no_grad():
            if self.share_prefix:
                hidden = self._shared_states(engine, encoded, offsets, budget)
            else:
                pad_rows = device.type != "cpu" if self.pad_unshared is None else self.pad_unshared
                hidden = self._unshared_states(engine, encoded, budget, pad_rows=pad_rows)
            weight, bias = engine.output_projection()
            out = verdict_probs(
                hidden,
                weight,
                list(ids.yes),
                list(ids.no),
                temperature=self.temperature,
                return_mass=self.record_mass,
                bias=bias,
                backend=self.backend,
            )
        p_met, mass = out if self.record_mass else (out, torch.empty(0))
        return VerdictProbs(p_met.float().cpu(), mass.float().cpu(), offsets_t)

    def verdict_ids(self, tokenizer) -> VerdictIds:
        """The YES / NO token ids this judge reads with ``tokenizer``."""
        return self._encoder(tokenizer)[1]

    def prompt_encoder(self, tokenizer) -> JudgePromptEncoder:
        """The encoder that turns requests into (prefix, response, suffix) token ids."""
        return self._encoder(tokenizer)[0]

    # ---- internals -------------------------------------------------------------------

    def _encoder(self, tokenizer) -> tuple[JudgePromptEncoder, VerdictIds]:
        entry = self._encoders.get(id(tokenizer))
        if entry is None or entry[0] is not tokenizer:
            encoder = JudgePromptEncoder(tokenizer, chat_template=self.chat_template)
            entry = (tokenizer, encoder, verdict_token_ids(tokenizer, self.yes_words, self.no_words))
            self._encoders[id(tokenizer)] = entry
        return entry[1], entry[2]

    def _unshared_states(self, engine, encoded: list[_Encoded], budget: int, *, pad_rows: bool) -> torch.Tensor:
        """Verdict-position hidden states ``[N, H]``, each judge prompt a full sequence.

        Rows are sorted by length and batched up to ``budget`` tokens. With ``pad_rows=False``
        (CPU) a batch holds rows of one length only: an unpadded batch needs no attention
        mask, so attention runs causal (half the work) and skips the mask's cost.
        """
        rows: list[list[int]] = []
        for enc in encoded:
            head = enc.prefix + enc.response
            rows.extend(head + suffix for suffix in enc.suffixes)
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

    def _shared_states(self, engine, encoded: list[_Encoded], offsets: list[int], budget: int) -> torch.Tensor:
        """Verdict-position hidden states ``[N, H]`` with each prefix and each response run once.

        All groups go together: their distinct prefixes in one (right-padded) forward, then
        every response of the call, longest first, in batches cut to waste the least padding
        (``_length_batches``), each on the selected rows of the prefix cache; then, per batch,
        every item suffix of a response packed into that response's row.
        """
        device = _device(engine)
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
        head = suffixes[0][:common]
        responses = {r: encoded[r].response + head for r in members}

        out: torch.Tensor | None = None
        order = sorted(members, key=lambda r: -len(responses[r]))
        for batch in _length_batches([plen + len(responses[r]) for r in order], budget, self.batch_overhead_tokens):
            batch = [order[i] for i in batch]
            ids, resp_mask, _ = _right_pad([responses[r] for r in batch], pad)
            rows_of = torch.tensor([group[r] for r in batch])
            ctx_mask = torch.cat([pmask[rows_of], resp_mask], dim=1)
            _, cache = engine.forward_with_cache(
                ids.to(device), _select_rows(prefix_cache, rows_of, len(prefixes)), attention_mask=ctx_mask.to(device)
            )
            packed = [sum(len(s) - common for s in encoded[r].suffixes) for r in batch]
            by_packed = sorted(range(len(batch)), key=lambda b: -packed[b])
            widths = [ctx_mask.shape[1] + packed[b] for b in by_packed]
            for cut in _length_batches(widths, budget, self.batch_overhead_tokens):
                sel = sorted(by_packed[i] for i in cut)
                sfx, seg, ends = _pack([[s[common:] for s in encoded[batch[b]].suffixes] for b in sel], pad)
                part = cache if sel == list(range(len(batch))) else _select_rows(cache, torch.tensor(sel), len(batch))
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


def _select_rows(cache: DynamicCache, rows: torch.Tensor, batch: int) -> DynamicCache:
    """A new cache whose entry ``j`` is entry ``rows[j]`` of ``cache`` (which is left unchanged)."""
    n = rows.numel()
    if n % batch == 0 and torch.equal(rows, torch.arange(batch).repeat_interleave(n // batch)):
        return expand_cache(cache, n // batch)  # the common case: every item of every response
    out = expand_cache(cache, 1)
    out.batch_select_indices(rows.to(_cache_device(cache)))
    return out


def _cache_device(cache: DynamicCache) -> torch.device:
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if keys is not None:
            return keys.device
    return torch.device("cpu")


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


def _device(engine) -> torch.device:
    device = getattr(engine, "device", None)
    if isinstance(device, torch.device):
        return device
    weight, _ = engine.output_projection()
    return weight.device
