"""Pairwise generative judge (RM-R1 style): rubrics first, then which response is better.

The judge sees a prompt and two responses, A and B, and writes::

    <rubric>…</rubric><eval>…</eval><answer>A</answer>

(its own rubrics for this prompt, its evaluation of both responses against them, and the
better response's letter; ``[[A]]`` is accepted as well, as RM-R1 writes it). Trained with
a verifiable reward: 1 when the letter names the chosen response of the pair, else 0.
An output whose format is not valid (tags missing, repeated or out of order, or the answer
not exactly one letter) is *unparsable*: it earns 0 (the policy's own output is wrong; this
is not a failed judgment) and is counted.

The position of the chosen response is drawn per pair with a seed
(:func:`assign_positions`) and recorded, so a judge that always names the same slot
scores 50% on average rather than 100% or 0%.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "PAIRWISE_SECTIONS",
    "POSITIONS",
    "PairwiseJudgment",
    "assign_positions",
    "build_pairwise_prompt",
    "conversation_text",
    "pairwise_reward",
    "parse_pairwise",
]

PAIRWISE_SECTIONS = ("rubric", "eval", "answer")
POSITIONS = ("A", "B")

# "A", "B", "[[A]]" or "[[B]]", nothing else (surrounding whitespace aside).
_CHOICE = re.compile(r"(?:\[\[([AB])\]\]|([AB]))")


def conversation_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The conversation as plain text for a judge prompt: ``[role]\\ncontent`` per turn."""
    if not messages:
        raise ValueError("judge prompt: the conversation is empty")
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


_TEMPLATE = """You compare two AI assistant responses to the same user prompt and decide which is better.

<prompt>
{prompt}
</prompt>

<response_A>
{a}
</response_A>

<response_B>
{b}
</response_B>

Steps:
1. In <{s0}></{s0}>, write the rubrics that decide quality for this prompt (what a good response must do).
2. In <{s1}></{s1}>, check both responses against your rubrics, briefly.
3. In <{s2}></{s2}>, write only the letter of the better response: A or B.

Write the three sections once each, in this order: <{s0}>, <{s1}>, <{s2}>."""


def build_pairwise_prompt(prompt: str, response_a: str, response_b: str) -> str:
    """The judge prompt for one pair in a given order (apply the judge's chat template to it)."""
    s0, s1, s2 = PAIRWISE_SECTIONS
    return _TEMPLATE.format(prompt=prompt, a=response_a, b=response_b, s0=s0, s1=s1, s2=s2)


@dataclass(frozen=True)
class PairwiseJudgment:
    """A parsed pairwise judgment.

    Attributes:
        choice: ``"A"`` or ``"B"`` when the format is valid, else None (unparsable).
        tags_ok: each section's opening and closing tag appears exactly once, in the
            order rubric, eval, answer.
        sections: stripped content of each section whose tags appear exactly once, in order.
    """

    choice: str | None
    tags_ok: bool
    sections: dict[str, str] = field(default_factory=dict)


def parse_pairwise(text: str) -> PairwiseJudgment:
    """Parse one pairwise judge output (see :class:`PairwiseJudgment`)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    sections: dict[str, str] = {}
    spans = []
    for name in PAIRWISE_SECTIONS:
        open_tag, close_tag = f"<{name}>", f"</{name}>"
        span = None
        if text.count(open_tag) == 1 and text.count(close_tag) == 1:
            start, end = text.index(open_tag), text.index(close_tag)
            if start < end:
                span = (start, end)
                sections[name] = text[start + len(open_tag) : end].strip()
        spans.append(span)
    tags_ok = all(s is not None for s in spans) and all(a[1] < b[0] for a, b in zip(spans, spans[1:]))  # type: ignore[index]
    choice = None
    if tags_ok:
        m = _CHOICE.fullmatch(sections["answer"])
        if m is not None:
            choice = m.group(1) or m.group(2)
    return PairwiseJudgment(choice, tags_ok, sections)


def pairwise_reward(judgment: PairwiseJudgment, chosen_position: str) -> float:
    """1.0 when the judgment names ``chosen_position`` (``"A"`` or ``"B"``), else 0.0
    (a wrong letter or an unparsable output)."""
    if chosen_position not in POSITIONS:
        raise ValueError(f"chosen_position must be 'A' or 'B', got {chosen_position!r}")
    return 1.0 if judgment.choice == chosen_position else 0.0


def assign_positions(keys: Sequence[str], seed: int) -> list[str]:
    """The slot (``"A"`` or ``"B"``) of the chosen response for each pair, drawn with ``seed``.

    Balanced: ``ceil(n / 2)`` pairs get ``"A"`` and ``floor(n / 2)`` get ``"B"``, in an order
    shuffled by ``random.Random(seed)`` over the pairs sorted by key, so the draw does not
    depend on file order and a position-biased judge cannot score above chance overall.
    """
    n = len(keys)
    if len(set(keys)) != n:
        raise ValueError("assign_positions: keys must be unique")
    slots = ["A"] * ((n + 1) // 2) + ["B"] * (n // 2)
    random.Random(seed).shuffle(slots)
    by_key = dict(zip(sorted(keys), slots))
    return [by_key[k] for k in keys]
