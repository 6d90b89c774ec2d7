"""RLPR: probability reward without a verifier (docs/algorithms.md §4).

The reward for a response is how likely the policy finds the *reference* answer
after the response's own reasoning:

    r      = mean_{t in y*} p(y*_t | prompt, reasoning, <answer>, y*_<t)   (at temperature T)
    r'     = the same mean with no reasoning (prompt followed by the answer)
    r_hat  = clip(r - r', 0, 1)           (0 for a malformed response)
    reward = (1 - fc) * r_hat + fc * format_ok

This module holds the data side (building the substituted sequences and
packing them for a fused op), a plain-PyTorch reference of the span mean
probability, the reward combination, the debias cache and the std filter
(adaptive curriculum). The fused GPU/CPU op lives in ``rubricrl.ops.span_mean_prob``;
:func:`span_mean_prob_reference` is the definition of truth it is tested against.

Conventions (read these before wiring a trainer):

* **Shift.** Hidden state / logits at position ``t`` predict token ``t + 1``.
  :class:`SubstitutedSequence` carries both ``answer_token_mask`` (over tokens:
  True where ``input_ids[t]`` is a reference token) and ``target_mask`` (over
  positions: True where the *target* ``input_ids[t + 1]`` is a reference token,
  i.e. ``target_mask[t] == answer_token_mask[t + 1]``). :func:`pack_spans`
  flattens the latter into ``span_positions``.
* **Which tokens count.** Only the tokens of ``y*`` itself: not the
  ``<answer>``/``</answer>`` tags, not the spaces around ``y*``, not eos. The tags
  are near-deterministic after a correct format and would inflate every reward
  by the same amount; the mean over ``y*`` is what docs/algorithms.md §4 and the source use.
* **Tokenisation.** Segments (prompt, reasoning, answer prefix, reference,
  answer suffix, eos) are tokenised *separately* and their ids concatenated, so
  the reference is always the ids of ``tokenizer(reference)`` alone. Tokenising
  the whole string at once would let a BPE merge across the boundary (e.g.
  ``" 42"`` vs ``"42"``) and give ``r`` and ``r'`` different reference tokens,
  which would make ``r - r'`` compare different events.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Literal, Sequence

import torch
from torch import Tensor

__all__ = [
    "THINK_OPEN",
    "THINK_CLOSE",
    "ANSWER_OPEN",
    "ANSWER_CLOSE",
    "check_format",
    "SubstitutedSequence",
    "build_substituted",
    "build_debias_sequence",
    "RLPRInputs",
    "build_rlpr_inputs",
    "pack_spans",
    "span_mean_prob_reference",
    "rlpr_reward",
    "DebiasCache",
    "StdFilter",
]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
_FORMAT_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# The wrapper written around the reference: docs/algorithms.md §4 writes `<answer> y* </answer>`.
DEFAULT_ANSWER_PREFIX = ANSWER_OPEN + " "
DEFAULT_ANSWER_SUFFIX = " " + ANSWER_CLOSE


# --------------------------------------------------------------------------- format


def check_format(response: str) -> bool:
    """True iff ``response`` has exactly one ``<think>``, ``</think>``, ``<answer>``,
    ``</answer>``, in that order.

    Text before ``<think>``, between ``</think>`` and ``<answer>`` and after
    ``</answer>`` is allowed (docs/algorithms.md §4 constrains only the tags). If the chat
    template pre-fills ``<think>`` in the prompt, prepend it to the response
    before calling this.
    """
    if not isinstance(response, str):
        raise ValueError(f"response must be a str, got {type(response).__name__}")
    if any(response.count(tag) != 1 for tag in _FORMAT_TAGS):
        return False
    positions = [response.index(tag) for tag in _FORMAT_TAGS]
    # `</think>` contains no `<think>` substring and vice versa, so positions are unambiguous.
    return all(a < b for a, b in zip(positions, positions[1:]))


# --------------------------------------------------------------------------- sequences


@dataclass(frozen=True)
class SubstitutedSequence:
    """One sequence to score with the policy, with its reference span marked.

    Attributes:
        input_ids: ``list[int]`` of length L, the full sequence (prompt included).
        answer_token_mask: ``list[bool]`` of length L; True where ``input_ids[t]``
            is a token of the reference answer y*.
        target_mask: ``list[bool]`` of length L; True where the hidden state at
            ``t`` predicts a reference token, i.e. ``target_mask[t] ==
            answer_token_mask[t + 1]`` and ``target_mask[L - 1]`` is False.
        ref_start: index in ``input_ids`` of the first reference token.
        num_ref_tokens: number of reference tokens (>= 1).
    """

    input_ids: list[int]
    answer_token_mask: list[bool]
    target_mask: list[bool]
    ref_start: int
    num_ref_tokens: int

    @property
    def predict_positions(self) -> list[int]:
        """Positions whose hidden state predicts a reference token (``ref_start - 1`` ...)."""
        return list(range(self.ref_start - 1, self.ref_start - 1 + self.num_ref_tokens))

    @property
    def ref_ids(self) -> list[int]:
        """The reference answer's token ids."""
        return self.input_ids[self.ref_start : self.ref_start + self.num_ref_tokens]


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` alone, without BOS/EOS or other template tokens."""
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def _eos_ids(tokenizer: Any, add_eos: bool) -> list[int]:
    if not add_eos:
        return []
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("tokenizer.eos_token_id is None; set it or pass add_eos=False")
    return [int(eos)]


def _assemble(
    tokenizer: Any,
    head_ids: list[int],
    reference: str,
    answer_prefix: str,
    answer_suffix: str,
    add_eos: bool,
) -> SubstitutedSequence:
    """``head_ids + enc(answer_prefix) + enc(reference) + enc(answer_suffix) + [eos]``."""
    ref_ids = _encode(tokenizer, reference)
    if not ref_ids:
        raise ValueError(f"reference={reference!r} tokenises to no tokens; there is nothing to score")
    head = head_ids + _encode(tokenizer, answer_prefix)
    if not head:
        # Position -1 does not exist: the first reference token would have no predictor.
        raise ValueError("prompt_ids and answer_prefix are both empty; the first reference token has no context")
    tail = _encode(tokenizer, answer_suffix) + _eos_ids(tokenizer, add_eos)
    input_ids = head + ref_ids + tail
    ref_start, n = len(head), len(ref_ids)
    answer_token_mask = [ref_start <= t < ref_start + n for t in range(len(input_ids))]
    target_mask = answer_token_mask[1:] + [False]
    return SubstitutedSequence(input_ids, answer_token_mask, target_mask, ref_start, n)


def _check_prompt_ids(prompt_ids: Sequence[int]) -> list[int]:
    if isinstance(prompt_ids, Tensor):
        prompt_ids = prompt_ids.tolist()
    try:
        ids = [operator.index(i) for i in prompt_ids]
    except TypeError:
        raise ValueError(f"prompt_ids must be a sequence of ints, got {list(prompt_ids)[:8]}") from None
    if any(i < 0 for i in ids):
        raise ValueError(f"prompt_ids must be non-negative, got {ids[:8]}")
    return ids


def build_substituted(
    tokenizer: Any,
    prompt_ids: Sequence[int],
    response: str,
    reference: str,
    *,
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    answer_suffix: str = DEFAULT_ANSWER_SUFFIX,
    add_eos: bool = True,
) -> SubstitutedSequence | None:
    """The sequence for ``r``: prompt, the response's reasoning up to and including
    ``</think>``, then ``<answer> {reference} </answer>`` and eos.

    Args:
        tokenizer: a Hugging Face tokenizer (``encode(text, add_special_tokens=False)``
            and ``eos_token_id`` are used).
        prompt_ids: the prompt's token ids as fed to the policy (chat template applied).
        response: the sampled response text.
        reference: the reference answer y*.
        answer_prefix / answer_suffix: the text written around y*; tokenised
            separately from y* (see the module docstring).
        add_eos: append ``tokenizer.eos_token_id``.

    Returns:
        A :class:`SubstitutedSequence`, or None if ``response`` fails
        :func:`check_format` (the caller gives it r = 0 and counts it).

    The reasoning is re-tokenised from text; with a tokenizer whose decode/encode
    round-trip is lossless this reproduces the sampled context up to BPE merges.
    """
    prompt_ids = _check_prompt_ids(prompt_ids)
    if not check_format(response):
        return None
    cut = response.index(THINK_CLOSE) + len(THINK_CLOSE)
    head = prompt_ids + _encode(tokenizer, response[:cut])
    return _assemble(tokenizer, head, reference, answer_prefix, answer_suffix, add_eos)


def build_debias_sequence(
    tokenizer: Any,
    prompt_ids: Sequence[int],
    reference: str,
    *,
    answer_prefix: str = DEFAULT_ANSWER_PREFIX,
    answer_suffix: str = DEFAULT_ANSWER_SUFFIX,
    add_eos: bool = True,
) -> SubstitutedSequence:
    """The sequence for ``r'``: the prompt followed directly by
    ``<answer> {reference} </answer>`` + eos (no reasoning).

    The answer is built exactly as in :func:`build_substituted`, so the reference
    tokens (and the wrapper around them) are identical and ``r - r'`` measures
    only what the reasoning adds.
    """
    prompt_ids = _check_prompt_ids(prompt_ids)
    return _assemble(tokenizer, prompt_ids, reference, answer_prefix, answer_suffix, add_eos)


@dataclass(frozen=True)
class RLPRInputs:
    """Substituted sequences for a batch of responses, malformed ones left out.

    Attributes:
        sequences: one :class:`SubstitutedSequence` per well-formed response, in order.
        valid_index: ``LongTensor[M]``, the response index of each sequence.
        format_ok: ``BoolTensor[B]``, :func:`check_format` per response.
        num_malformed: ``B - M``, for logging.
    """

    sequences: list[SubstitutedSequence]
    valid_index: Tensor
    format_ok: Tensor
    num_malformed: int


def build_rlpr_inputs(
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    responses: Sequence[str],
    references: Sequence[str],
    **kwargs: Any,
) -> RLPRInputs:
    """:func:`build_substituted` over a batch of B responses (``prompt_ids[i]``
    and ``references[i]`` belong to ``responses[i]``); ``kwargs`` go to it.

    Score ``sequences`` (e.g. via :func:`pack_spans`), scatter the result into a
    ``[B]`` tensor at ``valid_index`` (anything, e.g. 0, elsewhere), and pass it
    with ``format_ok`` to :func:`rlpr_reward`, which zeroes malformed rows.
    """
    if not (len(prompt_ids) == len(responses) == len(references)):
        raise ValueError(
            f"prompt_ids, responses, references must have equal lengths, got "
            f"{len(prompt_ids)}, {len(responses)}, {len(references)}"
        )
    sequences, valid, ok = [], [], []
    for i, (p, resp, ref) in enumerate(zip(prompt_ids, responses, references)):
        seq = build_substituted(tokenizer, p, resp, ref, **kwargs)
        ok.append(seq is not None)
        if seq is not None:
            sequences.append(seq)
            valid.append(i)
    return RLPRInputs(
        sequences=sequences,
        valid_index=torch.tensor(valid, dtype=torch.long),
        format_ok=torch.tensor(ok, dtype=torch.bool),
        num_malformed=len(ok) - len(valid),
    )


# --------------------------------------------------------------------------- packing


def pack_spans(
    sequences: Sequence[SubstitutedSequence],
    *,
    pad_token_id: int = 0,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Tensor]:
    """Right-pad a batch and flatten its reference spans for a fused op.

    Returns a dict of CPU tensors (move them with ``.to(device)``):

    * ``input_ids``      ``LongTensor[B, T]``, right-padded with ``pad_token_id``.
    * ``attention_mask`` ``LongTensor[B, T]``, 1 on real tokens.
    * ``span_positions`` ``LongTensor[N]``, *flat* indices ``b * T + t`` into
      ``hidden.reshape(B * T, H)`` of the hidden states that predict a reference
      token (``t`` = position of the reference token minus one).
    * ``span_targets``   ``LongTensor[N]``, the reference token each of those predicts.
    * ``span_index``     ``LongTensor[N]``, which sequence (span) each entry belongs to;
      non-decreasing, since spans are laid out sequence by sequence.
    * ``span_offsets``   ``LongTensor[B + 1]``, CSR offsets: span b is
      ``[span_offsets[b], span_offsets[b + 1])`` of the flattened arrays.
    * ``span_lengths``   ``LongTensor[B]``, tokens per span.

    A fused op then computes ``hidden[span_positions] @ W.T / T`` →
    ``softmax[span_targets]`` → mean per ``span_index``; see
    :func:`span_mean_prob_reference`.
    """
    if len(sequences) == 0:
        raise ValueError("sequences is empty")
    if any(not isinstance(s, SubstitutedSequence) for s in sequences):
        raise ValueError("sequences must all be SubstitutedSequence (filter out malformed responses first)")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1, got {pad_to_multiple_of}")
    batch = len(sequences)
    length = max(len(s.input_ids) for s in sequences)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    positions, targets, index, lengths = [], [], [], []
    for b, seq in enumerate(sequences):
        n_tok = len(seq.input_ids)
        input_ids[b, :n_tok] = torch.tensor(seq.input_ids, dtype=torch.long)
        attention_mask[b, :n_tok] = 1
        pos = seq.predict_positions
        positions.extend(b * length + t for t in pos)
        targets.extend(seq.input_ids[t + 1] for t in pos)
        index.extend([b] * len(pos))
        lengths.append(len(pos))
    span_lengths = torch.tensor(lengths, dtype=torch.long)
    span_offsets = torch.zeros(batch + 1, dtype=torch.long)
    span_offsets[1:] = torch.cumsum(span_lengths, 0)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "span_positions": torch.tensor(positions, dtype=torch.long),
        "span_targets": torch.tensor(targets, dtype=torch.long),
        "span_index": torch.tensor(index, dtype=torch.long),
        "span_offsets": span_offsets,
        "span_lengths": span_lengths,
    }


# --------------------------------------------------------------------------- reference op


def span_mean_prob_reference(
    hidden_or_logits: Tensor,
    span_positions: Tensor,
    span_targets: Tensor,
    span_index: Tensor,
    num_spans: int,
    *,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Mean token probability per span, plain PyTorch (the definition of truth).

    ``out[s] = mean_{k : span_index[k] == s} softmax(z_k / T)[span_targets[k]]``
    with ``z_k`` the logits of flat row ``span_positions[k]``. This is the
    arithmetic mean of p_t (RLPR), not the geometric mean exp(mean log p_t).

    Args:
        hidden_or_logits: ``[B, T, D]`` or ``[B*T, D]``; logits (D = V) when
            ``weight`` is None, otherwise hidden states (D = H). fp32/bf16/fp16.
        span_positions: ``LongTensor[N]``, flat row indices into ``[B*T]``.
        span_targets: ``LongTensor[N]``, target token ids in ``[0, V)``.
        span_index: ``LongTensor[N]``, span id of each entry in ``[0, num_spans)``.
        num_spans: number of spans S (usually B).
        weight: ``[V, H]`` output projection; logits = hidden @ weight.T (+ bias).
        bias: ``[V]`` or None.
        temperature: T > 0; logits are divided by T before the softmax.

    Returns:
        ``FloatTensor[S]`` (fp32). A span with no entries gets NaN (0/0): it has
        no defined reward, and NaN makes a caller that forgot to drop it fail loudly
        (:func:`rlpr_reward` rejects NaN for well-formed responses).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if num_spans < 0:
        raise ValueError(f"num_spans must be >= 0, got {num_spans}")
    n = span_positions.numel()
    if span_targets.numel() != n or span_index.numel() != n:
        raise ValueError(
            f"span_positions, span_targets, span_index must have equal numel, got "
            f"{n}, {span_targets.numel()}, {span_index.numel()}"
        )
    if n and (int(span_index.min()) < 0 or int(span_index.max()) >= num_spans):
        raise ValueError(f"span_index values must lie in [0, {num_spans}), got [{int(span_index.min())}, {int(span_index.max())}]")
    rows = hidden_or_logits.reshape(-1, hidden_or_logits.shape[-1])[span_positions.long()].float()
    logits = rows if weight is None else rows @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    probs = logp.gather(1, span_targets.long().view(-1, 1)).squeeze(1).exp()
    sums = torch.zeros(num_spans, dtype=torch.float32, device=probs.device).index_add_(0, span_index.long(), probs)
    counts = torch.bincount(span_index.long(), minlength=num_spans).to(torch.float32)
    return sums / counts  # 0 / 0 = NaN for an empty span


# --------------------------------------------------------------------------- reward


def rlpr_reward(r: Tensor, r_debias: Tensor, format_ok: Tensor, fc: float = 0.1) -> Tensor:
    """Combine the probability reward with debiasing and the format reward.

    ``r_hat = clip(r - r_debias, 0, 1)``, ``r_hat = 0`` where ``format_ok`` is False,
    ``reward = (1 - fc) * r_hat + fc * format_ok``.

    Args:
        r: ``FloatTensor[B]``, span mean probability with reasoning; ignored (may be
            NaN or anything) where ``format_ok`` is False.
        r_debias: ``FloatTensor[B]``, the same without reasoning (r').
        format_ok: ``BoolTensor[B]``.
        fc: format coefficient in [0, 1] (default 0.1, docs/algorithms.md §4).

    Returns:
        ``FloatTensor[B]`` (fp32) in [0, 1].
    """
    if r.dim() != 1 or r_debias.shape != r.shape or format_ok.shape != r.shape:
        raise ValueError(
            f"r, r_debias, format_ok must be 1-D of one shape, got {tuple(r.shape)}, "
            f"{tuple(r_debias.shape)}, {tuple(format_ok.shape)}"
        )
    if not 0.0 <= fc <= 1.0:
        raise ValueError(f"fc must lie in [0, 1], got {fc}")
    ok = format_ok.to(torch.bool)
    diff = r.float() - r_debias.float()
    bad = ok & ~torch.isfinite(diff)
    if bool(bad.any()):
        raise ValueError(f"r or r_debias is not finite for well-formed responses at indices {bad.nonzero().flatten().tolist()}")
    r_hat = torch.where(ok, diff.clamp(0.0, 1.0), torch.zeros_like(diff))
    return (1.0 - fc) * r_hat + fc * ok.float()


# --------------------------------------------------------------------------- debias cache


class DebiasCache:
    """Caches r' (the no-reasoning probability) per prompt.

    Modes:
        * ``"cached"`` (default, as in the source: r' is computed once per prompt,
          by the initial policy): key ``(prompt_id, "fixed")``.
        * ``"per_step"``: key ``(prompt_id, policy_version)``; r' is recomputed when
          the policy version changes. Storing a value under a version different
          from the last stored one evicts every other version's entries (they
          are stale), so memory stays one step's worth.

    Within a batch each prompt appears G times; :meth:`get_or_compute` computes it
    once.
    """

    FIXED = "fixed"

    def __init__(self, mode: Literal["cached", "per_step"] = "cached") -> None:
        if mode not in ("cached", "per_step"):
            raise ValueError(f"mode must be 'cached' or 'per_step', got {mode!r}")
        self.mode = mode
        self._values: dict[tuple[Hashable, Hashable], float] = {}
        self._latest_version: Hashable | None = None

    def key(self, prompt_id: Hashable, policy_version: Hashable | None = None) -> tuple[Hashable, Hashable]:
        """The cache key for ``prompt_id`` under this mode."""
        if self.mode == "cached":
            return (prompt_id, self.FIXED)
        if policy_version is None:
            raise ValueError("policy_version=None is not allowed in mode='per_step'")
        return (prompt_id, policy_version)

    def get(self, prompt_id: Hashable, policy_version: Hashable | None = None) -> float | None:
        return self._values.get(self.key(prompt_id, policy_version))

    def put(self, prompt_id: Hashable, value: float, policy_version: Hashable | None = None) -> None:
        key = self.key(prompt_id, policy_version)
        if self.mode == "per_step" and policy_version != self._latest_version:
            # A new version: older r' values are stale and never read again.
            self._values = {k: v for k, v in self._values.items() if k[1] == policy_version}
            self._latest_version = policy_version
        self._values[key] = float(value)

    def missing(self, prompt_ids: Sequence[Hashable], policy_version: Hashable | None = None) -> list[Hashable]:
        """Distinct prompt ids (first-seen order) with no cached value."""
        seen: dict[Hashable, None] = {}
        for pid in prompt_ids:
            if pid not in seen and self.key(pid, policy_version) not in self._values:
                seen[pid] = None
        return list(seen)

    def get_or_compute(
        self,
        prompt_ids: Sequence[Hashable],
        compute: Callable[[list[Hashable]], Sequence[float] | Tensor],
        policy_version: Hashable | None = None,
    ) -> Tensor:
        """r' for each entry of ``prompt_ids`` (repeats allowed) as ``FloatTensor[B]``.

        ``compute(ids)`` receives the distinct missing ids and returns one value each.
        """
        todo = self.missing(prompt_ids, policy_version)
        if todo:
            values = compute(todo)
            values = values.tolist() if isinstance(values, Tensor) else list(values)
            if len(values) != len(todo):
                raise ValueError(f"compute returned {len(values)} values for {len(todo)} prompt ids")
            for pid, v in zip(todo, values):
                self.put(pid, v, policy_version)
        return torch.tensor([self._values[self.key(p, policy_version)] for p in prompt_ids], dtype=torch.float32)

    def __len__(self) -> int:
        return len(self._values)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "values": dict(self._values), "latest_version": self._latest_version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"state mode {state['mode']!r} does not match this cache's mode {self.mode!r}")
        self._values = dict(state["values"])
        self._latest_version = state["latest_version"]


# --------------------------------------------------------------------------- std filter


class StdFilter:
    """EMA standard-deviation filter (RLPR's adaptive curriculum).

    Per step, ``sigma[p]`` = unbiased std (as ``torch.std``, divisor G - 1) of
    prompt p's G rewards. Prompts with ``sigma >= beta * ema`` are kept.

    Schedule:
        * Warm-up (the first ``warmup_steps`` calls): every prompt is kept; at the
          end ``ema`` = the mean over those steps of ``mean_p(sigma)``.
        * After: select with the current ``ema`` (from *past* steps only), *then*
          update ``ema <- ema_rate * ema + (1 - ema_rate) * mean_p(sigma)`` with
          this step's mean over all P prompts (kept or not). Selecting before
          updating keeps a step's threshold independent of its own rewards, as in
          the source implementation.

    sigma is computed in float64 so that checkpoint round-trips are bit-exact.
    """

    def __init__(self, beta: float = 0.5, ema_rate: float = 0.99, warmup_steps: int = 3) -> None:
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= ema_rate < 1.0:
            raise ValueError(f"ema_rate must lie in [0, 1), got {ema_rate}")
        if not (isinstance(warmup_steps, int) and warmup_steps >= 1):
            raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
        self.beta = float(beta)
        self.ema_rate = float(ema_rate)
        self.warmup_steps = warmup_steps
        self.step = 0
        self.ema: float | None = None
        self._warmup_sum = 0.0
        self.last_stats: dict[str, float] = {}

    @property
    def threshold(self) -> float | None:
        """The sigma threshold the next post-warm-up step will use (None during warm-up)."""
        return None if self.ema is None else self.beta * self.ema

    def update_and_select(self, group_rewards: Tensor) -> Tensor:
        """Args: ``group_rewards`` ``FloatTensor[P, G]`` (G >= 2, finite).
        Returns: ``BoolTensor[P]``, True = keep the prompt."""
        if group_rewards.dim() != 2 or group_rewards.shape[0] < 1 or group_rewards.shape[1] < 2:
            raise ValueError(f"group_rewards must be [P >= 1, G >= 2], got shape {tuple(group_rewards.shape)}")
        if not bool(torch.isfinite(group_rewards).all()):
            raise ValueError("group_rewards contains NaN or inf")
        sigma = group_rewards.detach().to("cpu", torch.float64).std(dim=1)
        step_mean = float(sigma.mean())
        if self.ema is None:
            keep = torch.ones_like(sigma, dtype=torch.bool)
            threshold = float("nan")
            self._warmup_sum += step_mean
            if self.step + 1 == self.warmup_steps:
                self.ema = self._warmup_sum / self.warmup_steps
        else:
            threshold = self.beta * self.ema
            keep = sigma >= threshold
            self.ema = self.ema_rate * self.ema + (1.0 - self.ema_rate) * step_mean
        self.step += 1
        self.last_stats = {
            "std_filter/mean_std": step_mean,
            "std_filter/threshold": threshold,
            "std_filter/kept_frac": float(keep.double().mean()),
            "std_filter/ema": math.nan if self.ema is None else self.ema,
        }
        return keep

    def state_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "ema_rate": self.ema_rate,
            "warmup_steps": self.warmup_steps,
            "step": self.step,
            "ema": self.ema,
            "warmup_sum": self._warmup_sum,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore every field, hyper-parameters included, so later selections are identical."""
        self.beta = float(state["beta"])
        self.ema_rate = float(state["ema_rate"])
        self.warmup_steps = int(state["warmup_steps"])
        self.step = int(state["step"])
        self.ema = None if state["ema"] is None else float(state["ema"])
        self._warmup_sum = float(state["warmup_sum"])
