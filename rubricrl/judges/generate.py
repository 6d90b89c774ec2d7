"""``GenerateJudge``: HealthBench-style generative grading (docs/algorithms.md §3, judge mode ``generate``).

For each (response, item) the judge writes a short explanation and a JSON object
``{"explanation": ..., "criteria_met": true|false}`` (prompt:
:func:`rubricrl.rewards.judge_prompts.generate_judge_prompt`), parsed tolerantly by
:func:`rubricrl.rewards.judge_parse.parse_verdict`.

Batching: all judgments of a ``grade`` call are sampled together, one ``engine.generate``
call per round (in chunks of ``batch_size`` prompts when set). Judgments whose output does
not parse go into the next round, up to ``max_attempts`` rounds, so retries are batched
too. The outputs of each judgment are then replayed through
:func:`~rubricrl.rewards.judge_parse.grade_with_retries`, which defines the accounting: a
judgment that never parses is recorded as failed (``item_probs``/``item_met`` None), is
left out of the score, and a response with no successful positive-points item is
ungraded (``score`` None), never scored 0.
"""

from __future__ import annotations

import inspect

from rubricrl.judges._common import check_positive_float, check_positive_int, check_requests
from rubricrl.judges.base import GradeRequest, GradeResult
from rubricrl.judges.rules import grade_with_rules
from rubricrl.rewards.judge_parse import GradeOutcome, grade_with_retries, parse_verdict
from rubricrl.rewards.judge_prompts import generate_judge_prompt
from rubricrl.rewards.rubric_score import score_response

__all__ = ["GenerateJudge"]


class GenerateJudge:
    """Generative rubric judge with bounded, batched retries.

    Args:
        temperature: sampling temperature of the judge (> 0). Default 0.6.
        max_new_tokens: most tokens per judgment (default 128).
        min_new_tokens: least tokens per judgment (default 0: stop when the judge stops);
            needs an engine whose ``generate`` accepts ``min_new_tokens`` (used by the benchmark).
        max_attempts: judge calls per (response, item) before it is recorded as failed (>= 1).
        top_p: nucleus mass of the judge's sampling.
        seed: ``None`` samples from the engine's global RNG; an int makes ``grade``
            deterministic (round ``a`` uses seed ``seed + a``).
        batch_size: most judge prompts per ``engine.generate`` call (None = all at once).
        chat: send the prompt as one user turn of chat messages (the engine applies the chat
            template); ``None`` = when the engine's tokenizer has a chat template, else raw text.

    After ``grade``, :attr:`last_outcomes` holds one
    :class:`~rubricrl.rewards.judge_parse.GradeOutcome` per (request, item) (raw text,
    attempts, failed), for inspection (judge items only: rule-checked items never reach
    the engine).
    """

    name = "generate"

    def __init__(
        self,
        *,
        temperature: float = 0.6,
        max_new_tokens: int = 128,
        min_new_tokens: int = 0,
        max_attempts: int = 3,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_size: int | None = None,
        chat: bool | None = None,
    ) -> None:
        self.temperature = check_positive_float(temperature, "temperature")
        self.max_new_tokens = check_positive_int(max_new_tokens, "max_new_tokens")
        self.min_new_tokens = check_positive_int(min_new_tokens, "min_new_tokens", minimum=0)
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({min_new_tokens}) exceeds max_new_tokens ({max_new_tokens})")
        self.max_attempts = check_positive_int(max_attempts, "max_attempts")
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.top_p = float(top_p)
        if seed is not None:
            check_positive_int(seed, "seed", minimum=0)
        self.seed = seed
        self.batch_size = None if batch_size is None else check_positive_int(batch_size, "batch_size")
        self.chat = chat
        self.last_outcomes: list[list[GradeOutcome]] = []

    def __repr__(self) -> str:
        return (
            f"GenerateJudge(temperature={self.temperature}, max_new_tokens={self.max_new_tokens}, "
            f"max_attempts={self.max_attempts}, seed={self.seed})"
        )

    def grade(self, engine, requests: list[GradeRequest]) -> list[GradeResult]:
        """Grade every request; see :class:`rubricrl.judges.base.Judge`. Rule-checked items
        are graded by their checks (``rubricrl.judges.rules``), the others by the engine."""
        requests = check_requests(requests)
        return grade_with_rules(engine, requests, lambda judged: self._grade_judge_items(engine, judged))

    def _grade_judge_items(self, engine, requests: list[GradeRequest]) -> list[GradeResult]:
        version = engine.policy_version
        use_chat = self._use_chat(engine)
        pairs = [(r, k) for r, req in enumerate(requests) for k in range(len(req.items))]
        prompts = []
        for r, k in pairs:
            req = requests[r]
            text = generate_judge_prompt(req.conversation, req.response, req.items[k])
            prompts.append([{"role": "user", "content": text}] if use_chat else text)

        # Batched rounds: every judgment still without a parsable verdict is sampled again.
        outputs: list[list[str]] = [[] for _ in pairs]
        pending = list(range(len(pairs)))
        for attempt in range(self.max_attempts):
            if not pending:
                break
            texts = self._generate(engine, [prompts[i] for i in pending], attempt)
            for i, text in zip(pending, texts):
                outputs[i].append(text)
            pending = [i for i in pending if parse_verdict(outputs[i][-1]) is None]

        # Replay each judgment's outputs through grade_with_retries (the accounting rules).
        outcomes = [grade_with_retries(iter(out).__next__, self.max_attempts) for out in outputs]
        per_request: list[list[GradeOutcome]] = [[] for _ in requests]
        for (r, _), outcome in zip(pairs, outcomes):
            per_request[r].append(outcome)
        self.last_outcomes = per_request

        results = []
        for req, judged in zip(requests, per_request):
            verdicts = [None if o.failed else bool(o.met) for o in judged]
            scored = score_response(req.items, verdicts)
            values = [None if v is None else (1.0 if v else 0.0) for v in verdicts]
            results.append(
                GradeResult(
                    item_probs=list(values),
                    item_met=list(values),
                    score=scored.score,
                    ungraded=scored.ungraded,
                    n_failed=scored.n_failed,
                    judge_version=version,
                    item_raw=[o.raw for o in judged],
                    item_attempts=[o.attempts for o in judged],
                )
            )
        return results

    # ---- internals -------------------------------------------------------------------

    def _use_chat(self, engine) -> bool:
        if self.chat is not None:
            return bool(self.chat)
        tokenizer = getattr(engine, "tokenizer", None)
        return getattr(tokenizer, "chat_template", None) is not None

    def _generate(self, engine, prompts: list, attempt: int) -> list[str]:
        kwargs: dict = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p}
        if self.min_new_tokens:
            if "min_new_tokens" not in inspect.signature(engine.generate).parameters:
                raise ValueError(
                    f"min_new_tokens={self.min_new_tokens} needs an engine whose generate() accepts "
                    f"min_new_tokens; {type(engine).__name__}.generate does not"
                )
            kwargs["min_new_tokens"] = self.min_new_tokens
        size = self.batch_size or max(1, len(prompts))
        texts: list[str] = []
        for chunk, start in enumerate(range(0, len(prompts), size)):
            seed = None if self.seed is None else self.seed + attempt * 100_003 + chunk
            samples = engine.generate(prompts[start : start + size], 1, seed=seed, **kwargs)
            if len(samples) != len(prompts[start : start + size]):
                raise RuntimeError(f"engine.generate returned {len(samples)} results for {size} prompts")
            texts.extend(s[0].response_text for s in samples)
        return texts
