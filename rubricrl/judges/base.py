"""The judge interface shared by the trainer, the CLI and the benchmarks.

A judge grades responses against rubric items (docs/algorithms.md §3). The engine it is given
may be the policy itself (self-grading with pi_old) or another model; every
result records the policy version of the weights that produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from rubricrl.data.rubrics import RubricItem


@dataclass
class GradeRequest:
    """One response to grade. Requests with the same ``group_id`` share the conversation
    (the G responses of one prompt), which a judge may exploit for prefix sharing.

    ``response_ids``: the token ids the policy sampled for ``response`` (a final stop token
    included or not), when the response comes from a rollout. The logprob judge's
    ``continue_rollout`` layout grades those ids, so its prompt continues the rollout's exact
    token sequence (a prefix cache holding the rollout then serves it); None: the response
    text is tokenized. Other layouts and judges grade the text.
    """

    conversation: list[dict]
    response: str
    items: list[RubricItem]
    group_id: str = ""
    response_ids: list[int] | None = None


@dataclass
class GradeResult:
    """Per-item verdicts and the response's rubric score.

    ``item_probs``: p(met) per item (logprob judge) or 1.0/0.0 (generate judge); None for a
    failed judgment. ``item_met``: the value that entered the score (soft p, hard 0/1, or a
    Bernoulli sample, per the judge's mode); None where failed. ``score``: docs/algorithms.md §3 score over
    the successful items, None when ``ungraded`` (no successful item with positive points).
    ``verdict_mass``: the share of probability on the verdict tokens (logprob judge only).
    ``item_raw``: the judge's last output text per item (generate judge only).
    ``item_attempts``: judge calls made per item (generate judge only).
    Rule-checked items (an item with a ``check``) have ``item_probs`` = ``item_met`` = 1.0 or
    0.0 exactly, ``verdict_mass`` and ``item_raw`` None, ``item_attempts`` 0.
    """

    item_probs: list[float | None]
    item_met: list[float | None]
    score: float | None
    ungraded: bool
    n_failed: int
    judge_version: int
    verdict_mass: list[float | None] = field(default_factory=list)
    item_raw: list[str | None] = field(default_factory=list)
    item_attempts: list[int] = field(default_factory=list)

    @property
    def item_failed(self) -> list[bool]:
        """Per item: the judgment failed (no usable verdict) and was left out of the score."""
        return [m is None for m in self.item_met]


class Judge(Protocol):
    name: str

    def grade(self, engine, requests: list[GradeRequest]) -> list[GradeResult]:
        """Grades every request with ``engine`` (a :class:`rubricrl.engines.Engine`)."""
        ...
