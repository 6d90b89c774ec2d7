"""Data-parallel actor update over ``torch.distributed`` (one trainer rank per process).

Every rank holds the whole :class:`~rubricrl.trainer.update.UpdateBatch` of a step (token
ids and behaviour log-probs: kilobytes to megabytes, put once into the Ray object store)
and computes the rows ``rank, rank + world, ...`` of each mini-batch. The update equals
the single-process one because

* the loss normaliser ``agg_norm`` (valid tokens for ``token-mean``, non-empty responses for
  the seq-mean modes) is the all-reduced sum of the ranks' counts, i.e. the mini-batch's;
* each rank's micro-batch losses are divided by that global normaliser, so the sum of the
  ranks' gradients (one ``all_reduce(SUM)`` of a flat buffer per optimizer step, as DDP
  does with ``no_sync`` over the micro-batches) is the full mini-batch gradient;
* the loss and metrics are all-reduced too, so grad clipping, the non-finite guard and
  AdamW see identical inputs on every rank and the weights stay identical without a
  broadcast (they are broadcast once from rank 0 at start).

Only the order of the fp32 sums differs from one process (gloo and NCCL sum in their own
order), hence the tolerance of the exactness test. This is DDP's data layout (full
replicas); FSDP2 sharding for models that do not fit one device is in docs/distributed.md.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from rubricrl.trainer.update import ActorUpdater

__all__ = ["DataParallelUpdater", "broadcast_parameters"]


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank (in place)."""
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src)


class DataParallelUpdater(ActorUpdater):
    """:class:`ActorUpdater` whose sums run over the default process group.

    Args: those of :class:`ActorUpdater`; ``torch.distributed`` must be initialised.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()

    def _my_rows(self, rows: list[int]) -> list[int]:
        # strided, so that every rank gets rows while the mini-batch has at least `world`
        return rows[self.rank :: self.world]

    def _all_sum(self, values: list[float]) -> list[float]:
        # fp64 on the wire: counts stay exact integers, sums lose nothing to the transport
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def _reduce_grads(self) -> None:
        # One buffer: the gradients (a rank with no rows contributes zeros), then one flag
        # per parameter saying whether a rank had a gradient for it. A parameter no rank
        # reached keeps grad None, as in one process (AdamW then leaves it alone).
        has = [p.grad is not None for p in self.params]
        # summed in fp32 whatever the model's dtype (bf16 sums of many ranks would round)
        dev = self.params[0].device
        grads = [p.grad.reshape(-1).float() if p.grad is not None else torch.zeros(p.numel(), device=dev) for p in self.params]
        flags = torch.tensor(has, dtype=torch.float32, device=dev)
        flat = torch.cat([*grads, flags])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for i, p in enumerate(self.params):
            n = p.numel()
            if float(flat[-len(self.params) + i]) > 0:
                p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
            else:
                p.grad = None
            offset += n

    def _comm_device(self) -> torch.device:
        # NCCL reduces CUDA tensors only; gloo takes CPU tensors
        return self.params[0].device if dist.get_backend() == "nccl" else torch.device("cpu")
