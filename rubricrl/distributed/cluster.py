"""Joining or starting a Ray cluster, and placing the run's actors with a placement group.

One placement group holds a bundle per engine worker, then one per trainer rank (the
resources of ``distributed.engine_num_*`` and ``distributed.trainer_num_*``); ``PACK``
keeps them on as few nodes as possible (trainer ranks that share a node reduce over
shared memory / NVLink), ``SPREAD`` and the ``STRICT_`` variants are Ray's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rubricrl.distributed.errors import DistributedError

__all__ = ["Placement", "actor_options", "connect", "place", "threads_for"]


def connect(address: str | None, local_cpus: int | None) -> bool:
    """Join the cluster at ``address`` (else ``$RAY_ADDRESS``), else start a local one with
    ``local_cpus`` CPUs (None: all); reuse a connection this process already has.

    Returns:
        True when this call started Ray (the caller shuts it down when done).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, include_dashboard=False)
    else:
        ray.init(num_cpus=local_cpus, include_dashboard=False)
    return True


def _bundle(num_cpus: float, num_gpus: float) -> dict[str, float]:
    # Ray refuses zero-valued resources in a bundle
    bundle = {"CPU": num_cpus, "GPU": num_gpus}
    return {k: v for k, v in bundle.items() if v > 0}


@dataclass
class Placement:
    """The placement group and which bundle each actor takes."""

    group: PlacementGroup
    worker_bundles: list[int]
    rank_bundles: list[int]

    def remove(self) -> None:
        remove_placement_group(self.group)


def place(
    engine_workers: int,
    trainer_ranks: int,
    *,
    engine_resources: tuple[float, float],
    trainer_resources: tuple[float, float],
    strategy: str,
    timeout_s: float,
) -> Placement:
    """Reserve the bundles of ``engine_workers`` workers and ``trainer_ranks`` ranks.

    Args:
        engine_resources, trainer_resources: ``(num_cpus, num_gpus)`` of one actor.

    Raises:
        DistributedError: the cluster cannot place them within ``timeout_s`` (one line with
            what was asked and what the cluster has).
    """
    bundles = [_bundle(*engine_resources)] * engine_workers + [_bundle(*trainer_resources)] * trainer_ranks
    group = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        need = {k: sum(b.get(k, 0.0) for b in bundles) for k in ("CPU", "GPU")}
        have = {k: ray.cluster_resources().get(k, 0.0) for k in ("CPU", "GPU")}
        raise DistributedError(
            f"the Ray cluster cannot place {engine_workers} engine worker(s) x {engine_resources} and {trainer_ranks} "
            f"trainer rank(s) x {trainer_resources} (num_cpus, num_gpus) with {strategy} within {timeout_s:g} s: needs "
            f"{need['CPU']:g} CPU / {need['GPU']:g} GPU, the cluster has {have['CPU']:g} / {have['GPU']:g} "
            "(distributed.engine_num_*, distributed.trainer_num_*)"
        )
    return Placement(group, list(range(engine_workers)), list(range(engine_workers, engine_workers + trainer_ranks)))


def actor_options(placement: Placement, bundle: int, num_cpus: float, num_gpus: float, **extra: Any) -> dict[str, Any]:
    """``ActorClass.options(**...)`` placing an actor on ``bundle`` with those resources."""
    return {
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(placement.group, placement_group_bundle_index=bundle),
        **extra,
    }


def threads_for(num_cpus: float) -> int:
    """Torch threads of an actor with ``num_cpus`` CPUs (at least one)."""
    return max(1, int(num_cpus))
