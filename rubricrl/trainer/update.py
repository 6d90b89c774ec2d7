"""The actor update: clipped GRPO loss on the policy's hidden states, AdamW, grad clipping.

Layout of a micro-batch (the one the engine used for the behaviour log-probs): prompts
left-padded to a common width ``P``, responses right-padded to ``R``, so the hidden state
at column ``P - 1 + t`` predicts response token ``t`` for every row. The fused op takes
those ``[m, R, H]`` states and the ``lm_head`` weight and never builds ``[m, R, V]`` logits.

Gradient accumulation is exact: every micro-batch's loss is normalised by the whole
mini-batch's ``agg_norm`` (valid tokens for ``token-mean``, non-empty responses for the
seq-mean modes), so the accumulated gradient equals the full-batch gradient.
``seq-mean-token-sum-norm`` uses ``horizon = rollout.max_new_tokens``, a constant, so no
micro-batch is normalised by its own padded length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rubricrl.engines import Engine
from rubricrl.ops import fused_linear_grpo_loss, fused_linear_logprobs

__all__ = ["ActorUpdater", "UpdateBatch"]

# Means over the valid tokens of a micro-batch (weighted by tokens when combined) ...
_TOKEN_METRICS = ("clipfrac", "clipfrac_lower", "approx_kl")
# ... and metrics aggregated like the loss (with the mini-batch's agg_norm: summed over micro-batches).
_AGG_METRICS = ("entropy", "kl")
_METRICS = _TOKEN_METRICS + _AGG_METRICS


@dataclass
class UpdateBatch:
    """Responses that enter the update, with their behaviour log-probs and advantages."""

    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    old_logprobs: list[list[float]] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)

    def add(self, prompt_ids: list[int], response_ids: list[int], old_logprobs: list[float], advantage: float) -> None:
        if len(response_ids) != len(old_logprobs):
            raise ValueError(f"{len(response_ids)} response tokens but {len(old_logprobs)} behaviour log-probs")
        self.prompt_ids.append(list(prompt_ids))
        self.response_ids.append(list(response_ids))
        self.old_logprobs.append(list(old_logprobs))
        self.advantages.append(float(advantage))


def _collate(batch: UpdateBatch, rows: list[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor | int]:
    P = max(len(batch.prompt_ids[i]) for i in rows)
    R = max(len(batch.response_ids[i]) for i in rows)
    m = len(rows)
    ids = torch.full((m, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((m, P + R), dtype=torch.long)
    old = torch.zeros((m, R), dtype=torch.float32)
    for k, i in enumerate(rows):
        p, r = batch.prompt_ids[i], batch.response_ids[i]
        ids[k, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        ids[k, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[k, P - len(p) : P + len(r)] = 1
        old[k, : len(r)] = torch.tensor(batch.old_logprobs[i], dtype=torch.float32)
    return {
        "input_ids": ids.to(device),
        "attention_mask": attn.to(device),
        "prompt_width": P,
        "targets": ids[:, P:].to(device),
        "mask": attn[:, P:].to(device=device, dtype=torch.float32),
        "old_logprobs": old.to(device),
        "advantages": torch.tensor([batch.advantages[i] for i in rows], dtype=torch.float32, device=device),
    }


def _split(rows: list[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(rows)))
    size = math.ceil(len(rows) / parts)
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class ActorUpdater:
    """Owns the optimizer and runs the actor update of a training step.

    Args:
        engine: the policy engine; its model is updated in place.
        loss: ``LossConfig``; optim: ``OptimConfig``; temperature: the rollout temperature
            (the log-probs of the loss are of ``softmax(logits / T)``, like the behaviour ones).
        horizon: ``seq-mean-token-sum-norm`` constant (``rollout.max_new_tokens``).
        ref_engine: frozen reference policy, needed when ``loss.kl_coef > 0``.
    """

    def __init__(self, engine: Engine, loss, optim, *, temperature: float, horizon: int, ref_engine: Engine | None = None):
        self.engine = engine
        self.loss_cfg = loss
        self.optim_cfg = optim
        self.temperature = temperature
        self.horizon = horizon
        self.ref_engine = ref_engine
        if loss.kl_coef > 0 and ref_engine is None:
            raise ValueError("loss.kl_coef > 0 needs a reference engine")
        self.params = [p for p in engine.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.optimizer_steps = 0

    # ---- loss ------------------------------------------------------------------------

    def _agg_norm(self, batch: UpdateBatch, rows: list[int]) -> float:
        if self.loss_cfg.loss_agg == "token-mean":
            return float(sum(len(batch.response_ids[i]) for i in rows))
        return float(sum(1 for i in rows if batch.response_ids[i]))

    def _micro_loss(self, mb: dict, agg_norm: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        engine = self.engine
        P = mb["prompt_width"]
        R = mb["targets"].shape[1]
        hidden = engine.hidden_states(mb["input_ids"], mb["attention_mask"])[:, P - 1 : P - 1 + R]
        weight, bias = engine.output_projection()
        ref = None
        c = self.loss_cfg
        if c.kl_coef > 0:
            with torch.no_grad():
                ref_hidden = self.ref_engine.hidden_states(mb["input_ids"], mb["attention_mask"])[:, P - 1 : P - 1 + R]
                ref_w, ref_b = self.ref_engine.output_projection()
                ref = fused_linear_logprobs(ref_hidden, ref_w, mb["targets"], bias=ref_b, temperature=self.temperature)
        return fused_linear_grpo_loss(
            hidden,
            weight,
            mb["targets"],
            mb["old_logprobs"],
            mb["advantages"],
            mb["mask"],
            bias=bias,
            temperature=self.temperature,
            eps_low=c.eps_low,
            eps_high=c.eps_high,
            clip_c=c.clip_c,
            loss_agg=c.loss_agg,
            ref_logprobs=ref,
            kl_coef=c.kl_coef,
            kl_type=c.kl_type,
            entropy_coef=c.entropy_coef,
            compute_entropy=True,
            agg_norm=agg_norm,
            horizon=self.horizon,
            token_chunk=c.chunk_size,
            backend=c.backend,
        )

    def _lr(self) -> float:
        warm = self.optim_cfg.warmup_steps
        scale = min(1.0, (self.optimizer_steps + 1) / warm) if warm > 0 else 1.0
        return self.optim_cfg.lr * scale

    # ---- public ----------------------------------------------------------------------

    def update(self, batch: UpdateBatch) -> dict[str, float]:
        """``optim.epochs`` passes over ``batch``, each split into ``optim.updates_per_step``
        mini-batches (one optimizer step each) of micro-batches (gradient accumulation).

        Returns mean ``loss`` per optimizer step, token-weighted ``clipfrac``,
        ``clipfrac_lower``, ``approx_kl``, ``entropy``, mean pre-clip ``grad_norm``, ``lr``
        and ``optimizer_steps`` (0 and None metrics for an empty batch).
        """
        out: dict[str, float] = {k: None for k in (*_TOKEN_METRICS, "entropy", "loss", "grad_norm", "lr")}  # type: ignore[misc]
        out["optimizer_steps"] = 0
        if len(batch) == 0:
            return out
        o = self.optim_cfg
        device = self.engine.device if hasattr(self.engine, "device") else torch.device("cpu")
        pad = self.engine.tokenizer.pad_token_id
        sums = {k: 0.0 for k in _TOKEN_METRICS}
        agg: dict[str, list[float]] = {k: [] for k in _AGG_METRICS}
        tokens = 0.0
        losses, norms = [], []
        for _ in range(o.epochs):
            for mini in _split(list(range(len(batch))), o.updates_per_step):
                norm = self._agg_norm(batch, mini)
                self.optimizer.zero_grad(set_to_none=True)
                total = 0.0
                mini_agg: dict[str, float] = {}
                for start in range(0, len(mini), o.micro_batch_size):
                    rows = mini[start : start + o.micro_batch_size]
                    mb = _collate(batch, rows, pad, device)
                    loss, metrics = self._micro_loss(mb, norm)
                    loss.backward()
                    total += float(loss.detach())
                    n_tok = float(mb["mask"].sum())
                    tokens += n_tok
                    for k in _TOKEN_METRICS:
                        sums[k] += float(metrics[k]) * n_tok
                    for k in _AGG_METRICS:
                        if k in metrics:
                            mini_agg[k] = mini_agg.get(k, 0.0) + float(metrics[k])
                for k, v in mini_agg.items():
                    agg[k].append(v)
                if o.grad_clip is not None:
                    grad_norm = torch.nn.utils.clip_grad_norm_(self.params, o.grad_clip)
                else:
                    grad_norm = torch.linalg.vector_norm(
                        torch.stack([p.grad.norm() for p in self.params if p.grad is not None])
                    )
                lr = self._lr()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                self.optimizer_steps += 1
                losses.append(total)
                norms.append(float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        for k in _TOKEN_METRICS:
            out[k] = sums[k] / tokens if tokens else None
        for k in _AGG_METRICS:
            out[k] = sum(agg[k]) / len(agg[k]) if agg[k] else None
        out["loss"] = sum(losses) / len(losses)
        out["grad_norm"] = sum(norms) / len(norms)
        out["lr"] = self._lr() if not losses else lr
        out["optimizer_steps"] = len(losses)
        return out

    @torch.no_grad()
    def evaluate(self, batch: UpdateBatch) -> float:
        """The loss of ``batch`` under the current weights (no update), as ``update`` aggregates it."""
        if len(batch) == 0:
            return 0.0
        device = self.engine.device if hasattr(self.engine, "device") else torch.device("cpu")
        rows = list(range(len(batch)))
        norm = self._agg_norm(batch, rows)
        total = 0.0
        for start in range(0, len(rows), self.optim_cfg.micro_batch_size):
            mb = _collate(batch, rows[start : start + self.optim_cfg.micro_batch_size], self.engine.tokenizer.pad_token_id, device)
            total += float(self._micro_loss(mb, norm)[0])
        return total
