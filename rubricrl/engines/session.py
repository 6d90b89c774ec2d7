"""Generation sessions: requests of several batches in flight on one engine at once.

``Engine.generate_stream`` samples one batch of prompts and hands over each prompt's group
as it finishes. A streaming pipeline wants more: while the long tail of step ``s`` is still
decoding, the prompts of step ``s + 1`` should already fill the slots the finished
responses left (continuous batching *across* batches), as long as both may be sampled by
the weights being served. A :class:`GenerationSession` is that: ``submit`` adds a batch
(tagged with a key, e.g. its training step) at any time, ``poll`` advances the engine and
returns the groups finished since, from whichever batch they came.

Two implementations:

* :class:`ChunkedSession` (the default of ``Engine.open_session``, used by ``HFEngine``):
  each submitted batch is cut into chunks of ``groups_per_call`` prompts, chunk ``c``
  seeded ``chunk_seed(seed, c)``; ``poll`` runs one ``generate`` call on the oldest chunk.
  Chunks never span batches, so every sample is the same as ``generate_stream`` gives for
  that batch alone.
* ``VLLMEngine``'s session: every request goes into vLLM's scheduler when submitted;
  ``poll`` runs one engine step (one decode iteration of every running request).

The caller must not change the engine's weights while ``in_flight() > 0`` (a sample is
sampled by one weight version, recorded in ``Sample.policy_version``).
"""

from __future__ import annotations

import abc
from collections import deque
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rubricrl.engines.base import Engine, MaxNewTokens, Prompt, Sample

__all__ = ["ChunkedSession", "FinishedGroup", "GenerationSession"]

#: (key of the batch, prompt index within the batch, the prompt's ``n`` samples)
FinishedGroup = tuple[Hashable, int, list["Sample"]]


class GenerationSession(abc.ABC):
    """Batches of sampling requests in flight on one engine; see the module doc."""

    @abc.abstractmethod
    def submit(
        self,
        key: Hashable,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: MaxNewTokens,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> None:
        """Add a batch: ``n`` samples of every prompt (arguments as ``Engine.generate``).
        ``key`` names the batch in what ``poll`` returns; it must not be in flight already."""

    @abc.abstractmethod
    def poll(self) -> list[FinishedGroup]:
        """Advance the engine (one generate call, or one scheduler step) and return the groups
        finished since the last call, in finishing order (possibly none)."""

    @abc.abstractmethod
    def in_flight(self) -> int:
        """Groups submitted and not yet returned by ``poll``."""

    def close(self) -> None:
        """Drop whatever is still in flight (an engine with a scheduler aborts the requests)."""

    def __enter__(self) -> GenerationSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ChunkedSession(GenerationSession):
    """``generate`` calls on chunks of ``groups_per_call`` prompts, oldest chunk first.

    Args:
        engine: any engine (its ``generate`` does the work).
        groups_per_call: prompts per ``generate`` call (>= 1); a batch's last chunk may be
            smaller.
    """

    def __init__(self, engine: Engine, groups_per_call: int = 1) -> None:
        self.engine = engine
        from rubricrl.engines.base import check_int

        check_int(groups_per_call, "groups_per_call", minimum=1)
        self.groups_per_call = groups_per_call
        # (key, first prompt index, prompts, caps, n, temperature, top_p, chunk seed)
        self._chunks: deque[tuple[Hashable, int, list[Prompt], list[int], int, float, float, int | None]] = deque()
        self._keys: dict[Hashable, int] = {}  # key -> groups not yet returned

    def submit(
        self,
        key: Hashable,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: MaxNewTokens,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> None:
        from rubricrl.engines.base import check_sampling_args, chunk_seed, per_prompt_caps

        check_sampling_args(n, 1, temperature, top_p, seed)
        caps = per_prompt_caps(max_new_tokens, len(prompts))
        if key in self._keys:
            raise ValueError(f"batch {key!r} is already in flight")
        if not prompts:
            return
        self._keys[key] = len(prompts)
        for c, start in enumerate(range(0, len(prompts), self.groups_per_call)):
            end = min(start + self.groups_per_call, len(prompts))
            sub_seed = None if seed is None else chunk_seed(seed, c)
            self._chunks.append((key, start, list(prompts[start:end]), caps[start:end], n, temperature, top_p, sub_seed))

    def poll(self) -> list[FinishedGroup]:
        if not self._chunks:
            return []
        key, start, prompts, caps, n, temperature, top_p, seed = self._chunks[0]
        groups = self.engine.generate(prompts, n, max_new_tokens=caps, temperature=temperature, top_p=top_p, seed=seed)
        self._chunks.popleft()  # only once generated: a failed call leaves the chunk in flight
        self._keys[key] -= len(groups)
        if not self._keys[key]:
            del self._keys[key]
        return [(key, start + i, group) for i, group in enumerate(groups)]

    def in_flight(self) -> int:
        return sum(self._keys.values())

    def close(self) -> None:
        self._chunks.clear()
        self._keys.clear()
