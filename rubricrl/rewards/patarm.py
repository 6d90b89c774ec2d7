"""PaTaRM: preference-aware reward for a pointwise generative judge (docs/algorithms.md §5).

A judge writes ``<think>…</think><generate_rubrics>…</generate_rubrics>
<eval>…</eval><answer>S</answer>`` with S a number in [0, 10]. It is trained
with RL from *pairwise* data: for a pair (chosen c, rejected r) it produces n
judgments of each, and each judgment is rewarded for landing on the right side
of the other response's mean score (PAR), plus a format penalty.

Conventions:

* **Unparseable judgments.** A judgment whose format is not fully valid (tags
  missing/out of order, or the score not a number in [0, 10]) has
  ``score=None``; in a tensor it is NaN. It is left out of the means ``m_c``,
  ``m_r``, its PAR reward is 0 and it gets the format penalty (−1.5 or −1.0).
  If every judgment of one side is unparseable, that side's mean is undefined
  and every judgment of the *other* side gets PAR reward 0 (there is nothing to
  compare with), while keeping its format reward.
* **Strict inequalities.** ``[s_c > m_r]`` and ``δ > 0``: a tie earns nothing;
  the graded ``f`` gives 1.2 for ``0 < δ ≤ 2`` (δ = 2 included) and 1.4 above.
* **Tolerance.** Scores are decimals written by the judge, and float rounding
  must not decide a reward (``4.4 - 2.4 == 2.0000000000000004``), so
  differences within ``DELTA_TOL = 1e-9`` of 0 count as ties and within it of
  2 count as δ = 2.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

__all__ = [
    "JUDGE_SECTIONS",
    "SCORE_MIN",
    "SCORE_MAX",
    "FORMAT_PENALTY_TAGS",
    "FORMAT_PENALTY_SCORE",
    "DELTA_TOL",
    "Judgment",
    "parse_judgment",
    "format_reward",
    "par_rewards",
    "patarm_rewards",
    "vote",
]

JUDGE_SECTIONS = ("think", "generate_rubrics", "eval", "answer")
SCORE_MIN, SCORE_MAX = 0.0, 10.0
FORMAT_PENALTY_TAGS = -1.5
FORMAT_PENALTY_SCORE = -1.0
DELTA_TOL = 1e-9

# A plain decimal number, nothing else (the prompt asks for the number alone).
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True)
class Judgment:
    """A parsed judge output.

    Attributes:
        score: the score in [0, 10] when ``tags_ok and score_ok``, else None.
        tags_ok: every section's opening and closing tag appears exactly once,
            and the eight tags are in the order think, generate_rubrics, eval, answer.
        score_ok: the ``<answer>`` content (stripped) is exactly one finite number
            in [0, 10]. Evaluated whenever one ``<answer>…</answer>`` pair exists,
            even if other tags are wrong (for diagnostics).
        sections: stripped content of each section whose tags appear exactly once,
            opening before closing (keys from :data:`JUDGE_SECTIONS`).
    """

    score: float | None
    tags_ok: bool
    score_ok: bool
    sections: dict[str, str] = field(default_factory=dict)


def _tag_positions(text: str, name: str) -> tuple[int, int] | None:
    """(start of the opening tag, start of the closing tag) if each occurs exactly once, in order."""
    open_tag, close_tag = f"<{name}>", f"</{name}>"
    if text.count(open_tag) != 1 or text.count(close_tag) != 1:
        return None
    start, end = text.index(open_tag), text.index(close_tag)
    return (start, end) if start < end else None


def _parse_score(content: str) -> float | None:
    content = content.strip()
    if not _NUMBER.fullmatch(content):
        return None
    value = float(content)
    return value if SCORE_MIN <= value <= SCORE_MAX else None


def parse_judgment(text: str) -> Judgment:
    """Parse one judge output (see :class:`Judgment` for what each field means).

    Duplicated tags make the output ambiguous, so they count as malformed
    (``tags_ok=False``), as does text such as a quoted ``<answer>`` inside
    ``<think>``.
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    sections: dict[str, str] = {}
    spans: list[tuple[int, int] | None] = []
    for name in JUDGE_SECTIONS:
        pos = _tag_positions(text, name)
        spans.append(pos)
        if pos is not None:
            sections[name] = text[pos[0] + len(name) + 2 : pos[1]].strip()
    tags_ok = all(p is not None for p in spans) and all(
        a[1] < b[0] for a, b in zip(spans, spans[1:])  # type: ignore[index]
    )
    value = _parse_score(sections["answer"]) if "answer" in sections else None
    score_ok = value is not None
    return Judgment(score=value if tags_ok and score_ok else None, tags_ok=tags_ok, score_ok=score_ok, sections=sections)


def format_reward(judgment: Judgment) -> float:
    """−1.5 if tags are missing or out of order, else −1.0 if the score is not a
    number in [0, 10], else 0.0."""
    if not judgment.tags_ok:
        return FORMAT_PENALTY_TAGS
    if not judgment.score_ok:
        return FORMAT_PENALTY_SCORE
    return 0.0


# --------------------------------------------------------------------------- PAR


def _graded(delta: Tensor) -> Tensor:
    return torch.where(delta > 2.0 + DELTA_TOL, torch.full_like(delta, 1.4), torch.full_like(delta, 1.2))


def _constant(delta: Tensor) -> Tensor:
    return torch.full_like(delta, 1.3)


_F = {"graded": _graded, "constant": _constant}


def _as_scores(scores: Tensor | Sequence[float | None], name: str) -> Tensor:
    """1-D float64 tensor with NaN for unparseable (None) scores."""
    if isinstance(scores, Tensor):
        t = scores.detach().to("cpu", torch.float64)
    else:
        t = torch.tensor([math.nan if s is None else float(s) for s in scores], dtype=torch.float64)
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    finite = t[~torch.isnan(t)]
    if bool(((finite < SCORE_MIN) | (finite > SCORE_MAX)).any()):
        raise ValueError(f"{name} must lie in [{SCORE_MIN}, {SCORE_MAX}] (or be NaN/None), got {t.tolist()}")
    return t


def par_rewards(
    chosen_scores: Tensor | Sequence[float | None],
    rejected_scores: Tensor | Sequence[float | None],
    f: Literal["graded", "constant"] | Callable[[Tensor], Tensor] = "graded",
) -> tuple[Tensor, Tensor]:
    """Preference-aware rewards for the judgments of one (chosen, rejected) pair.

    ``R(c_i) = [s_c[i] > m_r] * f(s_c[i] - m_r)``,
    ``R(r_j) = [s_r[j] < m_c] * f(m_c - s_r[j])``.

    Args:
        chosen_scores: ``[n]`` scores of the judgments of the chosen response;
            NaN (or None in a list) marks an unparseable judgment.
        rejected_scores: ``[n']`` likewise for the rejected response (n' may differ).
        f: ``"graded"`` (1.2 for 0 < δ ≤ 2, 1.4 for δ > 2), ``"constant"`` (1.3 for
            δ > 0), or a callable mapping a positive δ tensor (float64) to rewards.

    Returns:
        ``(FloatTensor[n], FloatTensor[n'])`` fp32 PAR rewards (0 for unparseable
        judgments and for ties). Computed in float64; differences are compared
        with the tolerance ``DELTA_TOL`` (see the module docstring).
    """
    if isinstance(f, str):
        if f not in _F:
            raise ValueError(f"f must be 'graded', 'constant' or a callable, got {f!r}")
        fn = _F[f]
    elif callable(f):
        fn = f
    else:
        raise ValueError(f"f must be 'graded', 'constant' or a callable, got {f!r}")
    s_c = _as_scores(chosen_scores, "chosen_scores")
    s_r = _as_scores(rejected_scores, "rejected_scores")

    def side(scores: Tensor, other: Tensor, sign: float) -> Tensor:
        valid_other = other[~torch.isnan(other)]
        out = torch.zeros_like(scores)
        if valid_other.numel() == 0:
            return out  # the other side's mean is undefined: nothing to compare with
        # sign=+1 for chosen (s - m_r), -1 for rejected (m_c - s); NaN > 0 is False.
        delta = sign * (scores - valid_other.mean())
        win = delta > DELTA_TOL
        if bool(win.any()):
            out[win] = fn(delta[win]).to(torch.float64)
        return out

    return side(s_c, s_r, 1.0).float(), side(s_r, s_c, -1.0).float()


def patarm_rewards(
    chosen_texts: Sequence[str],
    rejected_texts: Sequence[str],
    f: Literal["graded", "constant"] | Callable[[Tensor], Tensor] = "graded",
) -> tuple[Tensor, Tensor]:
    """Total reward ``R_PAR + R_format`` per judgment text of one pair.

    Returns ``(FloatTensor[n], FloatTensor[n'])``.
    """
    chosen = [parse_judgment(t) for t in chosen_texts]
    rejected = [parse_judgment(t) for t in rejected_texts]
    par_c, par_r = par_rewards([j.score for j in chosen], [j.score for j in rejected], f)
    fmt_c = torch.tensor([format_reward(j) for j in chosen], dtype=torch.float32)
    fmt_r = torch.tensor([format_reward(j) for j in rejected], dtype=torch.float32)
    return par_c + fmt_c, par_r + fmt_r


# --------------------------------------------------------------------------- voting


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even (round(6.5) == 6); scores want 6.5 -> 7.
    return math.floor(x + 0.5)


def vote(scores: Sequence[float | None], method: Literal["mean", "majority"] = "mean") -> float | None:
    """Aggregate k judgment scores of one response (inference-time scaling).

    None/NaN scores (unparseable judgments) abstain; if all abstain, returns None.

    * ``"mean"``: arithmetic mean of the valid scores.
    * ``"majority"``: the most frequent of the scores rounded half-up to integers.
      Ties between equally frequent values go to the value closest to the mean of
      the valid (unrounded) scores, and if still tied to the lower value (the
      conservative choice for a reward).
    """
    if method not in ("mean", "majority"):
        raise ValueError(f"method must be 'mean' or 'majority', got {method!r}")
    valid = [float(s) for s in scores if s is not None and not math.isnan(float(s))]
    if not valid:
        return None
    mean = math.fsum(valid) / len(valid)
    if method == "mean":
        return mean
    counts = Counter(_round_half_up(s) for s in valid)
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    return float(min(tied, key=lambda v: (abs(v - mean), v)))
