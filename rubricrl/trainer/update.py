"""The actor update: clipped GRPO loss on the policy's hidden states, AdamW, grad clipping.

Layout of a micro-batch (the one the engine used for the behaviour log-probs): prompts
left-padded to a common width ``P``, responses right-padded to ``R``, so the hidden state
at column ``P - 1 + t`` predicts response token ``t`` for every row. The fused op takes
those ``[m, R, H]`` states and the ``lm_head`` weight and never builds ``[m, R, V]`` logits.

Precision. Parameters that are not fp32 (a bf16 or fp16 model) get fp32 master copies:
the forward and backward run in the model's dtype, the gradients are copied to the masters
in fp32, and AdamW (its moments too) works on the masters, whose rounded values are then
written back into the model. Updates far below one bf16 ulp of a weight add up in the
masters instead of being rounded away, and AdamW's ``eps`` (1e-8, zero in fp16) and second
moments (squares of small gradients, which underflow in fp16) stay meaningful. The masters
are part of ``state_dict()`` (the checkpoint), so a resumed low-precision run continues
from the same fp32 values. fp16 gets no loss scaling: gradient components below fp16's
smallest subnormal (~6e-8) flush to zero, and an overflow is a skipped step (below); bf16
has fp32's range and is the reduced precision to train in.

Non-finite guard. Before an optimizer step is applied, the mini-batch's loss, its gradient
norm (NaN or Inf in any gradient makes it non-finite) and the weights the step would
produce (a trial step of the same optimizer on copies, one parameter at a time, including
the rounding into the model's dtype) must be finite. Otherwise the step is skipped: weights,
masters and optimizer state stay untouched and the step is counted (``nonfinite_skipped``);
``nonfinite_streak`` counts consecutive skips across calls, for the trainer's stop rule
(``trainer.max_nonfinite_steps``).

Gradient accumulation is exact: every micro-batch's loss is normalised by the whole
mini-batch's ``agg_norm`` (valid tokens for ``token-mean``, non-empty responses for the
seq-mean modes), so the accumulated gradient equals the full-batch gradient.
``seq-mean-token-sum-norm`` uses ``horizon = rollout.max_new_tokens``, a constant, so no
micro-batch is normalised by its own padded length. Data-parallel ranks
(``rubricrl.distributed.dp_updater``) extend this across processes through three hooks:
each rank computes its rows of a mini-batch, ``agg_norm`` is summed over the ranks, and
so are the gradients before the optimizer step.

Packed (padding-free) micro-batches (``optim.packing``, see ``rubricrl.models.packing``).
Instead of the padded ``[m, P + R]`` layout, the micro-batch's sequences (prompt + response
without its last token, whose hidden state predicts nothing) run end to end in one row of
``N = sum(P_i + R_i - 1)`` tokens, positions restarting per sequence and attention causal
within each sequence. Only the response positions are gathered from the ``[1, N, H]``
states for the loss: flattened ``[M, H]`` (``M`` = response tokens) with per-token
advantages for ``token-mean``; ``[m, R, H]`` rows (gathered, padding positions masked, which
the cpp backend skips) for the seq-mean modes, whose aggregation is per response. Same loss,
gradients and updated weights as the padded layout (within fp32 rounding; tested for every
``loss_agg``). ``auto`` packs when the policy (and reference) model supports it
(``rubricrl.models.packing.packing_unsupported``); ``on`` requires it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch

from rubricrl.engines import Engine
from rubricrl.engines.padding import left_pad, right_pad
from rubricrl.models.packing import pack_sequences, packed_hidden_states, packing_unsupported
from rubricrl.ops import fused_linear_grpo_loss, fused_linear_logprobs
from rubricrl.ops.constants import SEQUENCE_POLICY_LOSSES

__all__ = ["PACKING_MODES", "ActorUpdater", "NonFiniteUpdateError", "UpdateBatch"]

#: ``optim.packing``: auto (pack where the model supports it), on (require it), off (pad).
PACKING_MODES = ("auto", "on", "off")

log = logging.getLogger(__name__)


class NonFiniteUpdateError(RuntimeError):
    """Too many consecutive optimizer steps were skipped for a non-finite loss, gradient or weight."""

# Means over the valid tokens of a micro-batch (weighted by tokens when combined) ...
_TOKEN_METRICS = ("clipfrac", "clipfrac_lower", "approx_kl", "is_weight_mean", "is_clipped_frac")
# ... and metrics aggregated like the loss (with the mini-batch's agg_norm: summed over micro-batches).
_AGG_METRICS = ("entropy", "kl")
_METRICS = _TOKEN_METRICS + _AGG_METRICS


@dataclass
class UpdateBatch:
    """Responses that enter the update, with their log-probs and advantages.

    ``old_logprobs`` are the proximal policy's (the ratio's denominator and the clip's
    centre); ``behaviour_logprobs`` those of the weights that sampled the response (recorded
    by the engine). They are equal (``add`` without ``behaviour_logprobs=``) until a proximal
    policy other than the behaviour one is computed (bounded-staleness pipelines).
    """

    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    old_logprobs: list[list[float]] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    behaviour_logprobs: list[list[float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)

    def add(
        self,
        prompt_ids: list[int],
        response_ids: list[int],
        old_logprobs: list[float],
        advantage: float,
        *,
        behaviour_logprobs: list[float] | None = None,
    ) -> None:
        if len(response_ids) != len(old_logprobs):
            raise ValueError(f"{len(response_ids)} response tokens but {len(old_logprobs)} old log-probs")
        behaviour = old_logprobs if behaviour_logprobs is None else behaviour_logprobs
        if len(response_ids) != len(behaviour):
            raise ValueError(f"{len(response_ids)} response tokens but {len(behaviour)} behaviour log-probs")
        self.prompt_ids.append(list(prompt_ids))
        self.response_ids.append(list(response_ids))
        self.old_logprobs.append(list(old_logprobs))
        self.behaviour_logprobs.append(list(behaviour))
        self.advantages.append(float(advantage))


def _behaviour(batch: UpdateBatch) -> list[list[float]]:
    """The behaviour log-probs per row; a batch filled field by field (not with ``add``) may
    lack them: then behaviour = old."""
    return batch.behaviour_logprobs if len(batch.behaviour_logprobs) == len(batch) else batch.old_logprobs


def _collate(batch: UpdateBatch, rows: list[int], pad_id: int, device: torch.device) -> dict[str, torch.Tensor | int]:
    # prompts left-padded to P, responses right-padded to R: [pad.. prompt | response ..pad]
    prompt_ids, prompt_mask = left_pad([batch.prompt_ids[i] for i in rows], pad_id)
    response_ids, response_mask = right_pad([batch.response_ids[i] for i in rows], pad_id)
    old, _ = right_pad([batch.old_logprobs[i] for i in rows], 0.0, dtype=torch.float32)
    source = _behaviour(batch)
    behaviour, _ = right_pad([source[i] for i in rows], 0.0, dtype=torch.float32)
    P = prompt_ids.shape[1]
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    attn = torch.cat([prompt_mask, response_mask], dim=1)
    return {
        "input_ids": ids.to(device),
        "attention_mask": attn.to(device),
        "prompt_width": P,
        "targets": response_ids.to(device),
        "mask": response_mask.to(device=device, dtype=torch.float32),
        "old_logprobs": old.to(device),
        "behaviour_logprobs": behaviour.to(device),
        "advantages": torch.tensor([batch.advantages[i] for i in rows], dtype=torch.float32, device=device),
    }


def _collate_packed(
    batch: UpdateBatch, rows: list[int], device: torch.device, flat: bool
) -> dict[str, torch.Tensor | int]:
    """The micro-batch ``rows`` as one packed row (see the module docstring).

    ``index``: positions in the packed row of the hidden states that predict the response
    tokens, ``[M]`` when ``flat`` (token-mean; ``advantages`` then ``[M]`` too) else
    ``[m, R]`` (padding positions point at 0 and are masked out)."""
    sequences, index_rows = [], []
    start = 0
    for i in rows:
        prompt, response = batch.prompt_ids[i], batch.response_ids[i]
        if not prompt:
            raise ValueError(f"update batch row {i}: empty prompt (no hidden state predicts its first response token)")
        if response:
            sequences.append(prompt + response[:-1])
            first = start + len(prompt) - 1  # the prompt's last token predicts response token 0
            index_rows.append(list(range(first, first + len(response))))
            start += len(sequences[-1])
        else:
            index_rows.append([])
    behaviour = _behaviour(batch)
    out: dict[str, torch.Tensor | int] = {}
    if sequences:
        ids, positions, cu = pack_sequences(sequences)
        out.update(input_ids=ids.to(device), position_ids=positions.to(device), cu_seqlens=cu.to(device))
    adv = [batch.advantages[i] for i in rows]
    if flat:
        out["index"] = torch.tensor([j for r in index_rows for j in r], dtype=torch.long, device=device)
        out["targets"] = torch.tensor([t for i in rows for t in batch.response_ids[i]], dtype=torch.long, device=device)
        out["old_logprobs"] = torch.tensor([x for i in rows for x in batch.old_logprobs[i]], dtype=torch.float32, device=device)
        out["behaviour_logprobs"] = torch.tensor([x for i in rows for x in behaviour[i]], dtype=torch.float32, device=device)
        out["mask"] = torch.ones(out["targets"].shape, dtype=torch.float32, device=device)
        out["advantages"] = torch.tensor(
            [a for a, r in zip(adv, index_rows) for _ in r], dtype=torch.float32, device=device
        )
        return out
    index, _ = right_pad(index_rows, 0)
    response_ids, response_mask = right_pad([batch.response_ids[i] for i in rows], 0)
    old, _ = right_pad([batch.old_logprobs[i] for i in rows], 0.0, dtype=torch.float32)
    behaviour_rows, _ = right_pad([behaviour[i] for i in rows], 0.0, dtype=torch.float32)
    out.update(
        index=index.to(device),
        targets=response_ids.to(device),
        old_logprobs=old.to(device),
        behaviour_logprobs=behaviour_rows.to(device),
        mask=response_mask.to(device=device, dtype=torch.float32),
        advantages=torch.tensor(adv, dtype=torch.float32, device=device),
    )
    return out


def _micro_batches(batch: UpdateBatch, rows: list[int], size: int, tokens: int | None) -> list[list[int]]:
    """Consecutive micro-batches of ``rows``: at most ``size`` sequences and, when ``tokens``
    is set, at most ``tokens`` prompt + response tokens (a longer sequence runs alone)."""
    out: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in rows:
        n = len(batch.prompt_ids[i]) + len(batch.response_ids[i])
        if current and (len(current) >= size or (tokens is not None and used + n > tokens)):
            out.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        out.append(current)
    return out


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

    ``optim.packing`` (``auto`` when ``optim`` has no such field) picks the packed or the
    padded micro-batch layout (module docstring); ``self.packed`` says which. Micro-batches
    hold ``optim.micro_batch_size`` sequences, fewer where ``optim.micro_batch_tokens``
    (prompt + response tokens) would be passed.

    Raises:
        ValueError: a non-finite ``optim.lr``, ``optim.eps``, ``optim.weight_decay``,
            ``optim.betas`` or ``optim.grad_clip`` (every step would be skipped);
            ``optim.packing`` not in :data:`PACKING_MODES`, or ``on`` for a model that
            cannot run packed.
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
        for name in ("lr", "eps", "weight_decay", "grad_clip"):
            value = getattr(optim, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"optim.{name}: must be a finite number, got {value}")
        if not all(math.isfinite(b) for b in optim.betas):
            raise ValueError(f"optim.betas: must be finite numbers, got {list(optim.betas)}")
        mode = getattr(optim, "packing", "auto")
        if mode not in PACKING_MODES:
            raise ValueError(f"optim.packing: expected one of {list(PACKING_MODES)}, got {mode!r}")
        models = [engine.model] + ([ref_engine.model] if loss.kl_coef > 0 else [])
        why_not = next((r for r in map(packing_unsupported, models) if r is not None), None)
        if mode == "on" and why_not is not None:
            raise ValueError(f"optim.packing: 'on' but {why_not}")
        #: whether micro-batches run packed (padding-free) rather than padded
        self.packed = mode == "on" or (mode == "auto" and why_not is None)
        #: the model's trainable parameters (the ones the loss differentiates)
        self.params = [p for p in engine.model.parameters() if p.requires_grad]
        #: fp32 copies of the non-fp32 parameters (None for an fp32 model); the optimizer's params
        self.master_params: list[torch.Tensor] | None = None
        if any(p.dtype != torch.float32 for p in self.params):
            self.master_params = [p.detach().float().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(
            self._optimized(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay
        )
        self.optimizer_steps = 0
        #: optimizer steps skipped in a row (non-finite loss, gradient or weight), across calls
        self.nonfinite_streak = 0
        #: why the last skipped step was skipped, e.g. "loss = nan" (None before any skip)
        self.last_nonfinite: str | None = None

    def _optimized(self) -> list[torch.Tensor]:
        """The tensors the optimizer steps: the fp32 masters, or the parameters themselves."""
        return self.master_params if self.master_params is not None else self.params

    # ---- state (checkpoints) ---------------------------------------------------------

    def state_dict(self) -> dict:
        """``{"optimizer", "master_params" (fp32 list or None), "nonfinite_streak"}``."""
        masters = None if self.master_params is None else [m.detach().clone() for m in self.master_params]
        return {"optimizer": self.optimizer.state_dict(), "master_params": masters, "nonfinite_streak": self.nonfinite_streak}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output, or a bare optimizer state dict (older checkpoints),
        after the model's weights are loaded (masters missing from ``state`` are taken from them)."""
        if "optimizer" not in state:  # a plain optimizer state dict
            state = {"optimizer": state, "master_params": None, "nonfinite_streak": 0}
        self.optimizer.load_state_dict(state["optimizer"])
        self.nonfinite_streak = int(state.get("nonfinite_streak", 0))
        if self.master_params is not None:
            saved = state.get("master_params")
            with torch.no_grad():
                for i, (m, p) in enumerate(zip(self.master_params, self.params)):
                    m.copy_(saved[i] if saved is not None else p)

    # ---- loss ------------------------------------------------------------------------

    def _collate(self, batch: UpdateBatch, rows: list[int], pad_id: int, device: torch.device) -> dict:
        if self.packed:
            # flat [M] tokens for token-mean, unless the policy loss (GSPO) or the importance
            # weight is per response, which needs rows
            c = self.loss_cfg
            per_response = c.policy_loss in SEQUENCE_POLICY_LOSSES or (
                c.proximal == "recompute" and c.is_mode.startswith("sequence"))
            flat = c.loss_agg == "token-mean" and not per_response
            return _collate_packed(batch, rows, device, flat=flat)
        return _collate(batch, rows, pad_id, device)

    def _micro_batches(self, batch: UpdateBatch, rows: list[int]) -> list[list[int]]:
        o = self.optim_cfg
        return _micro_batches(batch, rows, o.micro_batch_size, getattr(o, "micro_batch_tokens", None))

    def _agg_norm(self, batch: UpdateBatch, rows: list[int]) -> float:
        """The loss's normaliser for ``rows``: additive over row sets (ranks sum it), except
        token-sum's, which is 1 whatever the rows (so ranks do not sum it)."""
        if self.loss_cfg.loss_agg == "token-sum":
            return 1.0
        if self.loss_cfg.loss_agg == "token-mean":
            return float(sum(len(batch.response_ids[i]) for i in rows))
        return float(sum(1 for i in rows if batch.response_ids[i]))

    def _response_hidden(self, engine: Engine, mb: dict) -> torch.Tensor:
        """Hidden states that predict the response tokens: ``[m, R, H]`` (padded layout,
        packed seq-mean) or ``[M, H]`` (packed token-mean)."""
        if "index" not in mb:
            P = mb["prompt_width"]
            R = mb["targets"].shape[1]
            return engine.hidden_states(mb["input_ids"], mb["attention_mask"])[:, P - 1 : P - 1 + R]
        weight = engine.output_projection()[0]
        if "input_ids" not in mb:  # every response of the micro-batch is empty
            return weight.new_zeros((*mb["index"].shape, weight.shape[1]))
        packed = packed_hidden_states(engine.model, mb["input_ids"], mb["position_ids"], mb["cu_seqlens"])[0]
        return packed[mb["index"]]

    def _micro_loss(self, mb: dict, agg_norm: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        engine = self.engine
        hidden = self._response_hidden(engine, mb)
        weight, bias = engine.output_projection()
        ref = None
        c = self.loss_cfg
        if c.kl_coef > 0:
            with torch.no_grad():
                ref_hidden = self._response_hidden(self.ref_engine, mb)
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
            policy_loss=c.policy_loss,
            eps_low=c.eps_low,
            eps_high=c.eps_high,
            clip_c=c.clip_c,
            tau_pos=c.tau_pos,
            tau_neg=c.tau_neg,
            loss_agg=c.loss_agg,
            ref_logprobs=ref,
            kl_coef=c.kl_coef,
            kl_type=c.kl_type,
            kl_bias_correction=c.kl_bias_correction,
            is_mode=c.is_mode,
            is_max=c.is_max,
            is_min=c.is_min,
            entropy_coef=c.entropy_coef,
            compute_entropy=True,
            agg_norm=agg_norm,
            horizon=self.horizon,
            token_chunk=c.chunk_size,
            backend=c.backend,
            **self._decoupled_kwargs(mb),
        )

    def _decoupled_kwargs(self, mb: dict) -> dict[str, torch.Tensor]:
        """THE place where the behaviour log-probs reach the loss (decoupled off-policy
        correction, docs/algorithms.md §1b: ``old_logprobs`` = the proximal policy,
        ``behaviour_logprobs`` = the weights that sampled, weighted by ``loss.is_mode``).
        With ``loss.proximal=behaviour`` nothing: the loss takes ``old = behaviour``."""
        if self.loss_cfg.proximal != "recompute":
            return {}
        return {"behaviour_logprobs": mb["behaviour_logprobs"]}

    def _proximal_logprobs(self, batch: UpdateBatch, device: torch.device, pad: int) -> UpdateBatch:
        """``loss.proximal=recompute``: the proximal policy is the weights before this update
        (AReaL's decoupled PPO): their log-probs of every response, one no-grad forward per
        micro-batch, become ``old_logprobs``; the engine's stay ``behaviour_logprobs``."""
        if self.loss_cfg.proximal != "recompute" or len(batch) == 0:
            return batch
        old = [list(lp) for lp in batch.old_logprobs]
        weight, bias = self.engine.output_projection()
        with torch.no_grad():
            for chunk in self._micro_batches(batch, self._my_rows(list(range(len(batch))))):
                mb = self._collate(batch, chunk, pad, device)
                lp = fused_linear_logprobs(self._response_hidden(self.engine, mb), weight, mb["targets"], bias=bias,
                                           temperature=self.temperature)
                lengths = [len(batch.response_ids[i]) for i in chunk]
                if lp.dim() == 1:  # packed token-mean: the micro-batch's response tokens end to end
                    per_row = torch.split(lp, lengths)
                else:
                    per_row = [lp[j, :n] for j, n in enumerate(lengths)]
                for i, values in zip(chunk, per_row):
                    old[i] = values.tolist()
        return dataclasses.replace(batch, old_logprobs=old, behaviour_logprobs=[list(b) for b in _behaviour(batch)])

    def _lr(self) -> float:
        warm = self.optim_cfg.warmup_steps
        scale = min(1.0, (self.optimizer_steps + 1) / warm) if warm > 0 else 1.0
        return self.optim_cfg.lr * scale

    # ---- the guarded optimizer step --------------------------------------------------

    def _sync_masters(self) -> None:
        """Re-copy a master whose rounding no longer equals its parameter (weights loaded
        into the engine from outside, e.g. ``engine.load_weights``)."""
        if self.master_params is None:
            return
        with torch.no_grad():
            for m, p in zip(self.master_params, self.params):
                if not torch.equal(m.to(p.dtype), p):
                    m.copy_(p)

    def _grad_norm(self) -> torch.Tensor:
        """Copy the gradients to the masters (fp32), clip them (``optim.grad_clip``); return
        the pre-clip global norm, non-finite when any gradient holds NaN or Inf."""
        if self.master_params is not None:
            for m, p in zip(self.master_params, self.params):
                m.grad = None if p.grad is None else p.grad.detach().float()
        tensors = [t for t in self._optimized() if t.grad is not None]
        if not tensors:
            return torch.zeros(())
        if self.optim_cfg.grad_clip is not None:
            # a non-finite norm scales the gradients by NaN: harmless, the step is then skipped
            return torch.nn.utils.clip_grad_norm_(tensors, self.optim_cfg.grad_clip)
        return torch.nn.utils.get_total_norm([t.grad for t in tensors])

    def _trial_is_finite(self) -> bool:
        """Whether the optimizer's next step gives finite weights (after rounding to the
        model's dtype too), found by running it on copies of one tensor (and its state) at a
        time: the live weights and state are not touched, and it is the optimizer's own step."""
        opt = self.optimizer
        model_dtype = {id(t): p.dtype for t, p in zip(self._optimized(), self.params)}
        for group in opt.param_groups:
            hyper = {k: v for k, v in group.items() if k != "params"}
            for t in group["params"]:
                if t.grad is None:
                    continue
                copy = t.detach().clone().requires_grad_(True)
                copy.grad = t.grad
                trial = type(opt)([copy], lr=group["lr"])
                trial.param_groups[0].update(hyper)
                trial.state[copy] = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state.get(t, {}).items()}
                trial.step()
                result = copy.detach().to(model_dtype.get(id(t), copy.dtype))
                if not bool(torch.isfinite(result).all()):
                    return False
        return True

    def _optimizer_step(self, loss: float) -> tuple[bool, float, float]:
        """Apply one optimizer step on the accumulated gradients unless the loss, the gradients
        or the resulting weights are non-finite; return ``(applied, pre-clip grad norm, lr)``."""
        grad_norm = float(self._grad_norm())
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        reason = None
        if not math.isfinite(loss):
            reason = f"loss = {loss}"
        elif not math.isfinite(grad_norm):
            reason = f"gradient norm = {grad_norm}"
        elif not self._trial_is_finite():
            reason = "the step would make a weight non-finite"
        if reason is not None:
            self.nonfinite_streak += 1
            self.last_nonfinite = reason
            log.warning("optimizer step skipped: %s (%d in a row)", reason, self.nonfinite_streak)
            return False, grad_norm, lr
        self.optimizer.step()
        if self.master_params is not None:
            with torch.no_grad():
                for m, p in zip(self.master_params, self.params):
                    p.copy_(m)
        self.optimizer_steps += 1
        self.nonfinite_streak = 0
        return True, grad_norm, lr

    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None

    # ---- data-parallel hooks ---------------------------------------------------------
    # One process computes every row and reduces nothing; rubricrl.distributed's
    # DataParallelUpdater overrides these three so that each rank computes its share of a
    # mini-batch and the sums (agg_norm, loss, metrics, gradients) are global.

    def _my_rows(self, rows: list[int]) -> list[int]:
        """The rows of a mini-batch this process computes (all of them)."""
        return rows

    def _all_sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the processes of the update (here: one)."""
        return values

    def _reduce_grads(self) -> None:
        """Sum the accumulated gradients over the processes of the update (here: one)."""

    # ---- public ----------------------------------------------------------------------

    def update(self, batch: UpdateBatch) -> dict[str, float]:
        """``optim.epochs`` passes over ``batch``, each split into ``optim.updates_per_step``
        mini-batches (one optimizer step each) of micro-batches (gradient accumulation).

        Returns mean ``loss`` and mean pre-clip ``grad_norm`` per attempted optimizer step
        (NaN when one of them was), token-weighted ``clipfrac``, ``clipfrac_lower``,
        ``approx_kl``, ``entropy``, ``lr``, ``optimizer_steps`` (applied) and
        ``nonfinite_skipped`` (skipped by the non-finite guard); 0 and None metrics for an
        empty batch.
        """
        out: dict[str, float] = {k: None for k in (*_TOKEN_METRICS, "entropy", "loss", "grad_norm", "lr")}  # type: ignore[misc]
        out["optimizer_steps"] = 0
        out["nonfinite_skipped"] = 0
        if len(batch) == 0:
            return out
        o = self.optim_cfg
        device = self.engine.device if hasattr(self.engine, "device") else torch.device("cpu")
        pad = self.engine.tokenizer.pad_token_id
        self._sync_masters()
        batch = self._proximal_logprobs(batch, device, pad)
        sums = {k: 0.0 for k in _TOKEN_METRICS}
        agg: dict[str, list[float]] = {k: [] for k in _AGG_METRICS}
        tokens = 0.0
        losses, norms = [], []
        applied = skipped = 0
        lr = self._lr()
        for _ in range(o.epochs):
            for mini in _split(list(range(len(batch))), o.updates_per_step):
                mine = self._my_rows(mini)
                norm = 1.0 if self.loss_cfg.loss_agg == "token-sum" else self._all_sum([self._agg_norm(batch, mine)])[0]
                self._zero_grad()
                total = 0.0
                mini_agg: dict[str, float] = {}
                for rows in self._micro_batches(batch, mine):
                    mb = self._collate(batch, rows, pad, device)
                    loss, metrics = self._micro_loss(mb, norm)
                    loss.backward()
                    total += float(loss.detach())
                    n_tok = float(mb["mask"].sum())
                    tokens += n_tok
                    for k in _TOKEN_METRICS:
                        if k in metrics:  # is_*: with the decoupled correction only
                            sums[k] += float(metrics[k]) * n_tok
                    for k in _AGG_METRICS:
                        if k in metrics:
                            mini_agg[k] = mini_agg.get(k, 0.0) + float(metrics[k])
                self._reduce_grads()
                # [loss, then per metric its sum and whether a micro-batch reported it]
                summed = self._all_sum(
                    [total, *(mini_agg.get(k, 0.0) for k in _AGG_METRICS), *(float(k in mini_agg) for k in _AGG_METRICS)]
                )
                total = summed[0]
                for i, k in enumerate(_AGG_METRICS):
                    if summed[1 + len(_AGG_METRICS) + i] > 0:
                        agg[k].append(summed[1 + i])
                ok, grad_norm, lr = self._optimizer_step(total)
                applied += ok
                skipped += not ok
                losses.append(total)
                norms.append(grad_norm)
        self._zero_grad()
        tokens, *token_sums = self._all_sum([tokens, *(sums[k] for k in _TOKEN_METRICS)])
        sums = dict(zip(_TOKEN_METRICS, token_sums))
        for k in _TOKEN_METRICS:
            out[k] = sums[k] / tokens if tokens else None
        if self.loss_cfg.proximal != "recompute":  # no importance correction, no is_* metrics
            out["is_weight_mean"] = out["is_clipped_frac"] = None
        for k in _AGG_METRICS:
            out[k] = sum(agg[k]) / len(agg[k]) if agg[k] else None
        out["loss"] = sum(losses) / len(losses)
        out["grad_norm"] = sum(norms) / len(norms)
        out["lr"] = lr
        out["optimizer_steps"] = applied
        out["nonfinite_skipped"] = skipped
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
        for micro in self._micro_batches(batch, rows):
            mb = self._collate(batch, micro, self.engine.tokenizer.pad_token_id, device)
            total += float(self._micro_loss(mb, norm)[0])
        return total
