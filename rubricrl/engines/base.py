"""The engine interface: what the trainer and the judges need from a policy.

An ``Engine`` owns a causal LM and its tokenizer. Self-grading and rollout use operations
only, so any engine (``HFEngine``, ``VLLMEngine``) can sample and grade:

- ``generate``: sampling with behaviour log-probs (``Sample``); ``generate_stream``: the
  same, handing over each prompt's group of responses as soon as it is finished;
  ``open_session``: batches submitted at any time, in flight together (``session.py``);
- ``token_logprobs``: ``log_softmax(logits / T)`` of given response tokens (teacher-forced);
- ``verdict_probs``: p(met) (and the verdict mass) of the token that follows each
  ``VerdictRequest`` (prefix + body + suffix), requests sharing prefixes; how the shared
  prefixes are reused (a KV cache, an automatic prefix cache) is the engine's business;
- ``load_weights(state_dict, version)`` / ``bump_version()``: new weights, a new version,
  recorded in every sample and judgment;
- ``device``: where its tensors live.

The trainer also needs the torch model it updates: ``model``, ``hidden_states`` and
``output_projection`` (the fused loss ops work on hidden states and the LM head, never on
``[tokens, vocab]`` logits). An engine that serves a separate copy (vLLM) keeps the
trainer's model here and syncs its serving copy on ``bump_version`` / ``load_weights``.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from rubricrl.engines.session import GenerationSession

__all__ = [
    "ChatMessages",
    "Engine",
    "Prompt",
    "Sample",
    "ServedEngine",
    "VerdictOptions",
    "VerdictRequest",
    "check_int",
    "check_sampling_args",
    "chunk_seed",
    "per_prompt_caps",
]

#: ``max_new_tokens`` of ``Engine.generate``: one cap for every prompt, or one per prompt.
MaxNewTokens = int | Sequence[int]

ChatMessages = Sequence[Mapping[str, Any]]
# A prompt is either chat messages ([{"role": ..., "content": ...}, ...]), rendered with the
# tokenizer's chat template plus the generation prompt, or raw text, tokenized as is.
Prompt = ChatMessages | str


@dataclass
class Sample:
    """One sampled response.

    Attributes:
        prompt_ids: token ids of the prompt, no padding.
        response_ids: sampled token ids, no padding. A finished response ends with its stop
            token (eos / end of turn), which is kept because the policy chose it and the
            trainer must learn that choice. An "empty" response is ``[stop_id]``.
        response_text: ``response_ids`` decoded without the final stop token and with
            special tokens skipped ("" for an empty response).
        behaviour_logprobs: one fp32 value per response token: ``log_softmax(logits / T)`` of
            the sampled token under the weights that sampled it, at sampling temperature ``T``
            (not renormalised by ``top_p``, so it matches what the trainer computes).
        finished: the response ended with a stop token (else it hit ``max_new_tokens``).
        policy_version: the engine's policy version when the response was sampled.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    response_text: str
    behaviour_logprobs: list[float]
    finished: bool
    policy_version: int


@dataclass(frozen=True)
class VerdictRequest:
    """Score the next token after ``prefix + body + suffix``, for every suffix.

    A judge request: ``prefix`` (instructions + conversation) is shared by the G responses of a
    prompt, ``body`` (the response) by the rubric items of one response, each of ``suffixes``
    (one rubric item, ending right before the verdict token) is scored once. All token ids.
    """

    prefix: Sequence[int]
    body: Sequence[int]
    suffixes: Sequence[Sequence[int]]


@dataclass(frozen=True)
class VerdictOptions:
    """How an engine may batch ``verdict_probs`` (hints; an engine ignores what it cannot use).

    Attributes:
        share_prefix: reuse the shared prefix and body instead of running every full prompt
            (``HFEngine``: its KV cache; ``VLLMEngine`` always shares through its prefix cache).
        max_batch_tokens: bound on one forward (rows x context tokens); None = the engine's default.
        batch_overhead_tokens: the cost of one more batch, in padded tokens, when cutting batches.
        pad_unshared: ``share_prefix=False``: batch rows of different lengths with padding
            (None: on GPUs only).
        backend: the ``rubricrl.ops.verdict_probs`` backend for engines that use it (None = automatic).
    """

    share_prefix: bool = True
    max_batch_tokens: int | None = None
    batch_overhead_tokens: int = 128
    pad_unshared: bool | None = None
    backend: str | None = None


class Engine(abc.ABC):
    """Abstract policy engine. Subclasses implement the abstract methods.

    The policy version starts at the value given to ``__init__`` and only moves forward:
    ``load_weights(state_dict, version)`` sets it, ``bump_version()`` increments it after the
    trainer updated ``model`` in place.
    """

    def __init__(self, *, policy_version: int = 0) -> None:
        _check_version(policy_version, "policy_version")
        self._policy_version = policy_version

    @classmethod
    def from_path(
        cls,
        model_path: str | Path | None = None,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> Engine:
        """``cls(*load_policy(model_path, seed=seed, dtype=dtype), device=device, **kwargs)``, for
        engines built from a model and its tokenizer (``HFEngine``, ``VLLMEngine``).

        ``model_path=None`` gives the embedded tiny model; this is what ``--model PATH`` maps to.
        """
        from rubricrl.models.loading import load_policy

        model, tokenizer = load_policy(model_path, seed=seed, dtype=dtype)
        return cls(model, tokenizer, device=device, **kwargs)  # type: ignore[call-arg]

    # ---- identity -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def model(self) -> PreTrainedModel:
        """The policy model; a trainer may update its parameters in place, then ``bump_version()``."""

    @property
    @abc.abstractmethod
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer (left padding, pad token set)."""

    @property
    def device(self) -> torch.device:
        """Where the engine's (trainer-side) tensors live: the output projection's device."""
        return self.output_projection()[0].device

    @property
    def policy_version(self) -> int:
        """Version of the weights now held; recorded in every ``Sample``."""
        return self._policy_version

    def bump_version(self) -> int:
        """Mark the weights as changed (after an in-place update); return the new version."""
        self._policy_version += 1
        return self._policy_version

    def _check_new_version(self, version: int) -> None:
        """Raise ValueError unless ``version`` is an int >= the current policy version."""
        _check_version(version, "version")
        if version < self._policy_version:
            raise ValueError(f"version {version} is older than the current policy version {self._policy_version}")

    def _set_version(self, version: int) -> None:
        self._check_new_version(version)
        self._policy_version = version

    @abc.abstractmethod
    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy ``state_dict`` (all parameters of ``model``) into the model; set the version to ``version``."""

    # ---- sampling -------------------------------------------------------------------

    @abc.abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: MaxNewTokens,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """Sample ``n`` responses for every prompt; ``result[i][j]`` is sample ``j`` of prompt ``i``.

        ``max_new_tokens`` is one cap for all prompts or a sequence of one cap per prompt
        (a response is cut at its prompt's cap exactly as if the cap were its own)."""

    def generate_stream(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: MaxNewTokens,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        groups_per_call: int = 1,
    ) -> Iterator[tuple[int, list[Sample]]]:
        """Sample ``n`` responses for every prompt and yield ``(prompt index, its n samples)``
        as each group is finished, in finishing order: one batch on a session of its own
        (:meth:`open_session`).

        On an engine without continuous batching (``HFEngine``) that is ``generate`` on
        consecutive chunks of ``groups_per_call`` prompts, chunk ``c`` with
        ``seed=chunk_seed(seed, c)`` and the chunk's caps, so a chunk stops at its own
        longest response instead of the whole batch's, and the result is a pure function of
        ``(prompts, n, caps, seed, groups_per_call)``. The samples carry the policy version
        of the weights at the start of their chunk.
        """
        with self.open_session(groups_per_call) as session:
            session.submit(0, prompts, n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
            while session.in_flight():
                for _, i, group in session.poll():
                    yield i, group

    def open_session(self, groups_per_call: int = 1) -> GenerationSession:
        """A :class:`~rubricrl.engines.session.GenerationSession`: batches submitted at any
        time, groups handed over as they finish. This default runs ``generate`` on chunks of
        ``groups_per_call`` prompts; engines with a scheduler (vLLM) keep every submitted
        request in one continuous batch."""
        from rubricrl.engines.session import ChunkedSession

        return ChunkedSession(self, groups_per_call)

    # ---- forward passes for trainers and judges ---------------------------------------

    @abc.abstractmethod
    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (the input of the output projection).

        Args:
            input_ids: LongTensor ``[B, T]``, left or right padded.
            attention_mask: ``[B, T]``, 1 for tokens and 0 for padding.

        Returns:
            ``[B, T, H]`` in the model's dtype; ``logits = hidden @ weight.T (+ bias)``.
            Gradients flow when grad mode is on (the caller chooses with ``torch.no_grad``).
        """

    @abc.abstractmethod
    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight [V, H], bias [V] or None)`` of the output projection (the live parameters)."""

    def token_logprobs(
        self,
        prompt_ids: Sequence[Sequence[int]],
        response_ids: Sequence[Sequence[int]],
        *,
        temperature: float = 1.0,
    ) -> list[list[float]]:
        """``log_softmax(logits / T)`` of every response token after its prompt, teacher-forced.

        Args:
            prompt_ids: per row, the prompt token ids (non-empty).
            response_ids: per row, the response token ids (non-empty).
            temperature: ``T`` (> 0).

        Returns:
            per row, one Python float (computed in fp32) per response token: the definition of
            ``Sample.behaviour_logprobs`` and of the trainer's ``lp``. This default runs
            ``hidden_states`` on the left-padded rows and ``rubricrl.ops.fused_linear_logprobs``.
        """
        from rubricrl.engines.scoring import token_logprobs_from_hidden

        return token_logprobs_from_hidden(self, prompt_ids, response_ids, temperature)

    def verdict_probs(
        self,
        requests: Sequence[VerdictRequest],
        yes_ids: Sequence[int],
        no_ids: Sequence[int],
        *,
        temperature: float,
        return_mass: bool = True,
        options: VerdictOptions | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Verdict probabilities of the token after every (request, suffix).

        With ``l`` the next-token logits and ``z = l / temperature``:
        ``p_met = sum_yes e^z / sum_{yes+no} e^z``, ``mass = sum_{yes+no} softmax(z)``.

        Returns:
            ``(p_met [N], mass [N] or None)``, fp32 on the CPU, ``N = sum(len(r.suffixes))``,
            in request order then suffix order. This default runs every full prompt through
            ``hidden_states`` (no prefix sharing) and ``rubricrl.ops.verdict_probs``.
        """
        from rubricrl.engines.scoring import verdict_probs_from_hidden

        options = options or VerdictOptions()
        return verdict_probs_from_hidden(
            self, requests, yes_ids, no_ids, temperature, return_mass, options, share_prefix=False
        )

    def snapshot(self) -> Engine:
        """A second engine with a copy of the weights, at the same policy version, for a
        producer thread (``pipeline.overlap``). Engines that cannot copy themselves raise."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot copy itself for pipeline.overlap; pass snapshot_factory="
        )

    def close(self) -> None:
        """Release what the engine holds beyond its Python objects (a serving engine's
        worker, memory). Idempotent; the default holds nothing."""


def _check_version(version: object, name: str) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"{name} must be a non-negative int, got {version!r}")


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk`` of a ``generate_stream`` call seeded ``seed``."""
    return (seed * 1_000_003 + 7919 * (chunk + 1)) % (2**31 - 1)


def per_prompt_caps(max_new_tokens: object, num_prompts: int) -> list[int]:
    """``max_new_tokens`` of ``generate`` as one cap per prompt; ValueError naming a bad one."""
    if isinstance(max_new_tokens, Sequence) and not isinstance(max_new_tokens, (str, bytes)):
        caps = list(max_new_tokens)
        if len(caps) != num_prompts:
            raise ValueError(f"max_new_tokens: {len(caps)} caps for {num_prompts} prompts")
        for i, cap in enumerate(caps):
            check_int(cap, f"max_new_tokens[{i}]", minimum=1)
        return caps
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    return [max_new_tokens] * num_prompts  # type: ignore[list-item]


def check_sampling_args(n: object, max_new_tokens: object, temperature: object, top_p: object, seed: object) -> None:
    """Raise ValueError naming the first bad argument of ``Engine.generate`` (``max_new_tokens``
    an int here; per-prompt caps are checked by :func:`per_prompt_caps`)."""
    check_int(n, "n", minimum=1)
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None:
        check_int(seed, "seed", minimum=0)


def check_int(value: object, name: str, *, minimum: int) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


class ServedEngine(Engine):
    """An engine whose sampling and grading run on a serving copy (vLLM, SGLang) while the
    trainer's model lives in an :class:`~rubricrl.engines.hf.HFEngine` (``self._trainer``);
    ``self._stop_ids`` holds the stop-token ids. Identity comes from the trainer's engine."""

    _trainer: Engine
    _stop_ids: list[int]
    _closed: bool  # set by close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"this {type(self).__name__} is closed")

    def __enter__(self) -> ServedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> PreTrainedModel:
        """The trainer's model; after updating it in place call ``bump_version()`` (syncs the serving copy)."""
        return self._trainer.model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._trainer.tokenizer

    @property
    def device(self) -> torch.device:
        return self._trainer.device

    @property
    def stop_token_ids(self) -> list[int]:
        return list(self._stop_ids)

    # forward passes run on the trainer's model

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The trainer's model: see ``HFEngine.hidden_states``."""
        return self._trainer.hidden_states(input_ids, attention_mask)

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The trainer's LM head: see ``HFEngine.output_projection``."""
        return self._trainer.output_projection()
