"""The engine interface: what the trainer and the judges need from a policy.

An ``Engine`` owns a causal LM and its tokenizer and offers
- sampling with behaviour log-probs (``generate`` -> ``Sample``),
- the final-norm hidden states and the output projection, so callers can compute
  log-probs or verdict probabilities with the fused ops of ``rubricrl.ops``
  without materialising ``[tokens, vocab]`` logits,
- a prefix-cached forward (``forward_with_cache``) so a judge computes a shared prompt
  prefix once and continues it many times (see ``rubricrl.engines.cache.expand_cache``),
- a policy version that tags every sample with the weights that produced it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from transformers import Cache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["ChatMessages", "Engine", "Prompt", "Sample"]

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


class Engine(abc.ABC):
    """Abstract policy engine. Subclasses implement the abstract methods.

    The policy version starts at the value given to ``__init__`` and only moves forward:
    ``load_weights(state_dict, version)`` sets it, ``bump_version()`` increments it after the
    trainer updated ``model`` in place.
    """

    def __init__(self, *, policy_version: int = 0) -> None:
        _check_version(policy_version, "policy_version")
        self._policy_version = policy_version

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
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """Sample ``n`` responses for every prompt; ``result[i][j]`` is sample ``j`` of prompt ``i``."""

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

    @abc.abstractmethod
    def forward_with_cache(
        self,
        input_ids: torch.Tensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Forward ``input_ids [B, T]`` after the tokens held in ``past_key_values``.

        Args:
            input_ids: LongTensor ``[B, T]`` of new tokens.
            past_key_values: a ``DynamicCache`` with batch size ``B`` holding a prefix, or None.
                It is extended in place; use ``expand_cache`` to continue one prefix several times.
            attention_mask: ``[B, past + T]`` covering prefix and new tokens (1 = token,
                0 = padding); None means no padding.
            segment_ids: ``[B, T]`` int64 or None. Packs several continuations of the cached
                prefix into one row: each run of equal ids ``>= 0`` (contiguous) is its own
                sequence after the prefix, attending to the prefix and to itself only, its
                positions starting right after the prefix; ``-1`` marks padding. The new-token
                part of ``attention_mask`` must then be ``segment_ids >= 0``. The cache keeps
                the packed tokens: continue it only with ``segment_ids`` again, or not at all.

        Returns:
            ``(hidden [B, T, H], cache)``: final-norm hidden states of the new tokens and the
            cache now holding prefix + new tokens.
        """


def _check_version(version: object, name: str) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ValueError(f"{name} must be a non-negative int, got {version!r}")
