"""Samplers that keep the two members of a preference pair together (docs/algorithms.md §5).

The dataset is laid out as consecutive pairs: items ``2i`` and ``2i + 1`` are
the chosen and rejected response of pair i (PaTaRM needs both in one batch to
compute the PAR reward). Pairs are shuffled as units and always emitted as
``2i, 2i + 1`` back to back, so the index stream has pairs at even offsets and
every batch of even size, cut from the start of the stream, holds whole pairs.
"""

from __future__ import annotations

from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler

__all__ = ["PairPreservingSampler", "PairPreservingBatchSampler"]


class PairPreservingSampler(Sampler[int]):
    """Yields dataset indices pair by pair: ``2p, 2p + 1`` for shuffled pairs p.

    Args:
        data_source: the dataset (anything with ``len``) or its length. An odd
            trailing item (index ``len - 1`` when the length is odd) has no partner
            and is never yielded.
        shuffle: shuffle pairs each epoch (otherwise pair order is 0, 1, 2, ...).
        seed: base seed; epoch e uses ``seed + e`` (call :meth:`set_epoch`), so every
            process with the same seed and epoch sees the same order.
        num_samples: indices per epoch (default: all pairs, ``2 * (len // 2)``);
            must be even and at most ``2 * (len // 2)``; the first
            ``num_samples // 2`` shuffled pairs are used.
    """

    def __init__(
        self,
        data_source: Sized | int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_samples: int | None = None,
    ) -> None:
        length = data_source if isinstance(data_source, int) else len(data_source)
        if length < 0:
            raise ValueError(f"data_source length must be >= 0, got {length}")
        self.num_pairs = length // 2
        if num_samples is None:
            num_samples = 2 * self.num_pairs
        if not isinstance(num_samples, int) or num_samples < 0 or num_samples % 2:
            raise ValueError(f"num_samples must be a non-negative even int (whole pairs), got {num_samples!r}")
        if num_samples > 2 * self.num_pairs:
            raise ValueError(f"num_samples={num_samples} exceeds the {2 * self.num_pairs} items in whole pairs")
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use a fresh, reproducible pair order for ``epoch``."""
        self.epoch = int(epoch)

    def pair_order(self) -> list[int]:
        """The pair ids yielded this epoch, in order."""
        n = self.num_samples // 2
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_pairs, generator=g)[:n].tolist()

    def __iter__(self) -> Iterator[int]:
        for p in self.pair_order():
            yield 2 * p
            yield 2 * p + 1

    def __len__(self) -> int:
        return self.num_samples


class PairPreservingBatchSampler(Sampler[list[int]]):
    """Batches of a :class:`PairPreservingSampler` with an even ``batch_size``.

    Every batch, the last included, has an even size and holds whole pairs
    (the stream length is even). ``drop_last`` drops a final batch smaller than
    ``batch_size``.
    """

    def __init__(self, sampler: PairPreservingSampler, batch_size: int, drop_last: bool = False) -> None:
        if not isinstance(sampler, PairPreservingSampler):
            raise ValueError(f"sampler must be a PairPreservingSampler, got {type(sampler).__name__}")
        if not isinstance(batch_size, int) or batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be an even int >= 2, got {batch_size!r}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        batch: list[int] = []
        for idx in self.sampler:
            batch.append(idx)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
