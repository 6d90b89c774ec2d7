"""A trainer rank: one data-parallel replica of the policy and its optimizer (a Ray actor).

Rank 0 hands out the weights (to the engine workers, through the Ray object store) and
the checkpoint state; every rank runs the update of the whole batch's share it owns
(:mod:`rubricrl.distributed.dp_updater`). The model is always a torch (``hf``) model: the
engine workers' backend (``engine.backend``) is for sampling only.
"""

from __future__ import annotations

import copy
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rubricrl.config import config_from_dict, torch_dtype
from rubricrl.engines.factory import make_engine
from rubricrl.trainer.update import UpdateBatch

__all__ = ["TrainerRank"]


class TrainerRank:
    """Actor body (wrapped with ``ray.remote`` by :mod:`rubricrl.distributed.ranks`).

    Args:
        raw_config: ``config_to_dict`` of the run's config.
        rank, world: this rank and the number of ranks.
        num_threads: torch threads (the actor's CPUs).
    """

    def __init__(self, raw_config: dict[str, Any], rank: int, world: int, num_threads: int) -> None:
        from rubricrl.trainer.trainer import resolve_device, seed_everything

        torch.set_num_threads(num_threads)
        self.config = config_from_dict(raw_config).validate()
        self.rank, self.world = rank, world
        seed_everything(self.config.trainer.seed)
        m = self.config.model
        # on a GPU actor Ray sets CUDA_VISIBLE_DEVICES to its GPU, so "auto" finds cuda:0
        self.engine = make_engine("hf", m.path, seed=m.seed, dtype=torch_dtype(m.dtype), device=resolve_device(m.device))
        self.updater = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free TCP port, for the process group's rendezvous (rank 0)."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def setup(self, host: str, port: int, timeout_s: float) -> None:
        """Join the process group (NCCL on CUDA, gloo on CPU), take rank 0's weights, build
        the optimizer (after the broadcast: fp32 masters copy the common weights)."""
        from rubricrl.distributed.dp_updater import DataParallelUpdater, broadcast_parameters
        from rubricrl.engines import HFEngine

        backend = "nccl" if self.engine.device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://{host}:{port}", rank=self.rank, world_size=self.world, timeout=timedelta(seconds=timeout_s)
        )
        broadcast_parameters(self.engine.model)
        c = self.config
        ref_engine = None
        if c.loss.kl_coef > 0:  # the frozen reference: the initial (broadcast) weights, as in one process
            ref_engine = HFEngine(copy.deepcopy(self.engine.model).requires_grad_(False), self.engine.tokenizer)
        self.updater = DataParallelUpdater(
            self.engine, c.loss, c.optim, temperature=c.rollout.temperature, horizon=c.rollout.max_new_tokens, ref_engine=ref_engine
        )

    def ping(self) -> int:
        return self.rank

    def update(self, batch: UpdateBatch) -> dict[str, Any]:
        """The actor update of one step; returns the metrics and the optimizer counters."""
        out = self.updater.update(batch)
        self.engine.bump_version()
        return {"metrics": out, **self.counters()}

    def counters(self) -> dict[str, Any]:
        u = self.updater
        return {"optimizer_steps": u.optimizer_steps, "nonfinite_streak": u.nonfinite_streak, "last_nonfinite": u.last_nonfinite}

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict on the CPU (the engine workers' ``load_weights`` input)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.engine.model.state_dict().items()}

    def optimizer_state(self) -> dict[str, Any]:
        return self.updater.state_dict()

    def load(self, parts: tuple[dict[str, torch.Tensor] | None, int | None, dict | None, int | None]) -> None:
        """Restore what a checkpoint holds: ``(model_state, version, optimizer_state,
        optimizer_steps)``, each None to keep the current one."""
        model_state, version, optimizer_state, optimizer_steps = parts
        if model_state is not None:
            self.engine.load_weights(model_state, version)
        if optimizer_state is not None:
            self.updater.load_state_dict(optimizer_state)
        if optimizer_steps is not None:
            self.updater.optimizer_steps = optimizer_steps

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
