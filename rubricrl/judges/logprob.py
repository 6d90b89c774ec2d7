"""``LogprobJudge``: p(met) from the verdict token's probability, prefix-shared (docs/algorithms.md §3).

The judge prompt ends right before the verdict token; with ``z`` the logits there at the
grading temperature T, ``p(met) = sum_yes e^z / sum_{yes+no} e^z``. The judge encodes every
(response, item) as a ``VerdictRequest`` (prefix = instructions + conversation, body = the
response, one suffix per item) and asks the engine for ``verdict_probs``: how the shared
prefixes are reused is the engine's business (``HFEngine``: a prefix-shared KV cache and
``rubricrl.ops.verdict_probs`` on hidden states, see ``rubricrl.engines.scoring``;
``VLLMEngine``: verdict-token log-probs with automatic prefix caching). ``share_prefix=False``
asks for every full prompt to run on its own; both give the same p(met) (within 1e-4 in
fp32, tested).

``layout`` picks the prompt layout (``rubricrl.rewards.judge_prompts``): ``instructions_first``
(instructions + conversation shared by the group, the response, the item) or
``continue_rollout`` (the rollout's own prompt shared by the group, the response and the
grading instructions, the item), whose prefix + response are the tokens the rollout already
ran, so a prefix cache that holds the rollout (vLLM's) serves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rubricrl.engines.base import VerdictOptions, VerdictRequest
from rubricrl.judges._common import (
    check_positive_float,
    check_positive_int,
    check_requests,
    results_from_verdicts,
)
from rubricrl.judges.base import GradeRequest, GradeResult
from rubricrl.judges.encoding import JudgePromptEncoder, VerdictIds, verdict_token_ids
from rubricrl.judges.rules import grade_with_rules
from rubricrl.rewards.judge_prompts import JUDGE_LAYOUTS

__all__ = ["MODES", "LogprobJudge", "VerdictProbs", "verdicts_from_probs"]

#: How p(met) becomes the value that enters the score.
MODES = ("expected", "threshold", "sample")

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


class LogprobJudge:
    """docs/algorithms.md §3 ``logprob`` judge.

    Args:
        mode: ``expected`` (soft score, default), ``threshold`` (met = p >= 0.5) or
            ``sample`` (met ~ Bernoulli(p)).
        temperature: grading temperature T of the verdict softmax. Default 0.6, the usual
            choice; the source paper found T = 1.0 (the rollout temperature) matched the
            rollout best.
        share_prefix: let the engine run the conversation prefix once per group and each
            response once (``HFEngine``: its KV cache; ``VLLMEngine``: its prefix cache, always);
            ``False`` asks for every (response, item) prompt as a full sequence.
        seed: seed of the private generator for ``sample`` mode (the draws continue across
            ``grade`` calls); ``None`` draws from the global torch RNG.
        chat_template: wrap prompts in the tokenizer's chat template; ``None`` = when it has one.
        record_mass: also compute the verdict mass (one more pass over the vocabulary rows,
            the format diagnostic of docs/algorithms.md §3).
        max_batch_tokens: ``HFEngine``: bound on one forward pass, rows x context tokens
            (cached + new); ``None``: 8192 on CPU, 65536 on GPU.
        yes_words, no_words: verdict words (default ``judge_prompts.verdict_words()``).
        backend: ``HFEngine``: forwarded to ``rubricrl.ops.verdict_probs`` (``None`` = automatic).
        layout: ``instructions_first`` (default) or ``continue_rollout`` (module docstring;
            needs a chat template, checked when the judge first meets a tokenizer).
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
        layout: str = "instructions_first",
    ) -> None:
        if layout not in JUDGE_LAYOUTS:
            raise ValueError(f"layout must be one of {list(JUDGE_LAYOUTS)}, got {layout!r}")
        self.layout = layout
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
            f"seed={self.seed}, layout={self.layout!r})"
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
        queries = [
            VerdictRequest(
                encoder.prefix_ids(req.conversation),
                encoder.response_ids(req.response, req.response_ids),
                [encoder.suffix_ids(item) for item in req.items],
            )
            for req in requests
        ]
        offsets = [0]
        for q in queries:
            offsets.append(offsets[-1] + len(q.suffixes))
        offsets_t = torch.tensor(offsets, dtype=torch.long)
        if offsets[-1] == 0:
            empty = torch.empty(0, dtype=torch.float32)
            return VerdictProbs(empty, empty.clone(), offsets_t)
        options = VerdictOptions(
            share_prefix=self.share_prefix,
            max_batch_tokens=self.max_batch_tokens,
            batch_overhead_tokens=self.batch_overhead_tokens,
            pad_unshared=self.pad_unshared,
            backend=self.backend,
        )
        p_met, mass = engine.verdict_probs(
            queries, list(ids.yes), list(ids.no),
            temperature=self.temperature, return_mass=self.record_mass, options=options,
        )
        if p_met.shape != (offsets[-1],):
            raise RuntimeError(f"{type(engine).__name__}.verdict_probs returned {list(p_met.shape)} for {offsets[-1]} items")
        mass = torch.empty(0) if mass is None else mass
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
            encoder = JudgePromptEncoder(tokenizer, chat_template=self.chat_template, layout=self.layout)
            entry = (tokenizer, encoder, verdict_token_ids(tokenizer, self.yes_words, self.no_words))
            self._encoders[id(tokenizer)] = entry
        return entry[1], entry[2]
