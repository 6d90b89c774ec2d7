"""The trainer ranks of a run, driven from the driver: start, update, weights, checkpoint state.

Ranks are not restarted by Ray (``max_restarts=0``): a rank that dies leaves its peers in
a collective and the optimizer state of the step half applied, so the run stops
(:class:`RankDied`; the trainer turns it into a one-line
:class:`~rubricrl.distributed.errors.TrainerRankError` naming the checkpoint to resume).
"""

from __future__ import annotations

from typing import Any

import ray

from rubricrl.distributed.cluster import Placement, actor_options, threads_for
from rubricrl.distributed.trainer_rank import TrainerRank
from rubricrl.trainer.update import UpdateBatch

__all__ = ["RankDied", "RankGroup"]

_RemoteRank = ray.remote(max_restarts=0, max_task_retries=0)(TrainerRank)


class RankDied(Exception):
    """``rank`` died (or failed) during a call; ``cause`` is one line."""

    def __init__(self, rank: int, cause: str) -> None:
        super().__init__(f"trainer rank {rank}: {cause}")
        self.rank, self.cause = rank, cause


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


class RankGroup:
    """``trainer_ranks`` :class:`TrainerRank` actors in a process group.

    Args:
        raw_config: ``config_to_dict`` of the run's config.
        placement: bundles ``placement.rank_bundles``, one per rank.
    """

    def __init__(self, raw_config: dict[str, Any], placement: Placement, num_cpus: float, num_gpus: float, timeout_s: float) -> None:
        world = len(placement.rank_bundles)
        self.actors = [
            _RemoteRank.options(**actor_options(placement, b, num_cpus, num_gpus)).remote(raw_config, r, world, threads_for(num_cpus))
            for r, b in enumerate(placement.rank_bundles)
        ]
        self.timeout_s = timeout_s
        host, port = self._get([self.actors[0].address.remote()])[0]
        self._get([a.setup.remote(host, port, timeout_s) for a in self.actors])

    # ---- calls with failure detection ------------------------------------------------

    def _get(self, refs: list[ray.ObjectRef]) -> list[Any]:
        """Results of one call per rank (``refs[i]`` from rank i, or from rank 0 alone);
        the first failure raises :class:`RankDied` naming the rank that died."""
        index = {r: i for i, r in enumerate(refs)}
        left = list(refs)
        while left:
            ready, left = ray.wait(left, num_returns=1)
            try:
                ray.get(ready[0])
            except Exception as err:  # noqa: BLE001 - any failure of a rank stops the run
                raise self._diagnose(index[ready[0]], err) from None
        return ray.get(list(refs))

    def _diagnose(self, failed: int, err: BaseException) -> RankDied:
        # A peer's death often surfaces first as a collective error on a live rank: name
        # the dead rank when there is one.
        for r, actor in enumerate(self.actors):
            try:
                ray.get(actor.ping.remote(), timeout=10)
            except Exception as ping_err:  # noqa: BLE001
                return RankDied(r, _first_line(ping_err))
        return RankDied(failed, _first_line(err))

    # ---- what the trainer asks -------------------------------------------------------

    def update(self, batch: UpdateBatch) -> dict[str, Any]:
        """Run the update on every rank (the batch goes into the object store once);
        rank 0's result (every rank has the same)."""
        ref = ray.put(batch)
        return self._get([a.update.remote(ref) for a in self.actors])[0]

    def weights_ref(self) -> ray.ObjectRef:
        """Rank 0's weights as an object-store reference (the driver never copies them)."""
        ref = self.actors[0].weights.remote()
        self._get([ref])  # fail here, not on every engine worker, if rank 0 is gone
        return ref

    def weights(self) -> dict[str, Any]:
        return self._get([self.actors[0].weights.remote()])[0]

    def optimizer_state(self) -> dict[str, Any]:
        return self._get([self.actors[0].optimizer_state.remote()])[0]

    def load(self, model_state=None, version=None, optimizer_state=None, optimizer_steps=None) -> None:
        ref = ray.put((model_state, version, optimizer_state, optimizer_steps))
        self._get([a.load.remote(ref) for a in self.actors])

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
