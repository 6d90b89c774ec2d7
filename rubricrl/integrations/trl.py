"""rubricrl inside TRL's ``GRPOTrainer`` (TRL 1.16): fused log-probs, fused loss, rubric reward.

::

    trainer = GRPOTrainer(model=..., reward_funcs=rubric_reward("rubric"), args=GRPOConfig(...),
                          train_dataset=ds)
    use_fused_logprobs(trainer)   # or fused_loss=True; also binds rubric_reward to the trainer
    trainer.train()

**Log-probs.** TRL 1.16 gives the policy (and the reference model) a "fused LM head":
``model(..., labels=labels, fused_lm_head=True)`` returns per-token log-probs and
entropies from its chunked log-prob function. :func:`use_fused_logprobs` replaces that
head on the trainer's models with :func:`rubricrl.ops.fused_linear_logprobs` (valid
positions only, entropies where TRL asks for them). Everything after the log-probs is
TRL's own code, so every ``loss_type`` and option keeps working. Models whose head TRL
scales or soft-caps (``final_logit_softcapping``, ``logit_scale``...) or MoE models
that return router logits keep TRL's head (logged once). The head runs with autocast
off, in the parameters' dtype with fp32 accumulation, and returns fp32 values.

**Fused loss** (``fused_loss=True``). Where TRL's configuration maps onto
:func:`rubricrl.ops.fused_linear_grpo_loss` (see :data:`LOSS_TYPES` and
:func:`_policy_options`), the policy loss (and the k3 KL to the reference) is computed
from the hidden states in one fused pass, which also produces the gradients:

* ``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``, ``luspo``: the clipped loss (``vanilla``; with
  ``importance_sampling_level="sequence"``, ``gspo``: 4 GEMMs instead of 3); TRL's
  ``delta`` is the dual clip ``clip_c``;
* ``cispo``: ``policy_loss="cispo"`` with no lower clip and TRL's ``epsilon_high`` as the cap;
* ``sapo``: ``policy_loss="sapo"`` with TRL's two temperatures;
* vLLM importance-sampling correction: TRL's ``importance_sampling_ratio`` as the per-token
  ``weights``; ``use_bias_correction_kl``: ``kl_bias_correction``;
* TRL without old log-probs (one iteration, one generation per step): ``old_logprobs=None``.

Everything else (``vespo``; ``cispo``/``sapo`` at sequence level; the off-policy mask;
the high-entropy token mask; the entropy bonus; the KL bias correction at sequence level;
MoE aux loss; multimodal inputs) falls back to TRL's own loss on the fused log-probs,
logged once per reason. The fused loss adds one no-grad log-prob pass per micro-batch
for the metrics TRL logs (entropy, kl, clip ratios), computed from it as TRL does.

**Reward.** :func:`rubric_reward` returns a TRL reward function grading each
completion against its row's rubric with the trainer's current model (the prefix-shared
log-prob judge by default); the model's train/eval mode, ``requires_grad`` and device
are restored after grading.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from rubricrl.ops import fused_linear_grpo_loss, fused_linear_logprobs

from . import _grading

__all__ = ["LOSS_TYPES", "RubricReward", "rubric_reward", "use_fused_logprobs"]

logger = logging.getLogger(__name__)

IGNORE = -100  # TRL's label for positions that are not scored


# ---- TRL loss_type -> rubricrl fused loss aggregation --------------------------------------


def _grpo(trainer, mask, inputs, ga):
    # mean over each completion, then over all B completions (empty ones count as 0)
    return {"loss_agg": "seq-mean-token-mean", "agg_norm": float(mask.shape[0] * ga)}


def _bnpo(trainer, mask, inputs, ga):
    return {"loss_agg": "token-mean", "agg_norm": mask.sum().clamp(min=1.0).float() * ga}


def _dr_grpo(trainer, mask, inputs, ga):
    return {"loss_agg": "token-mean", "agg_norm": float(mask.shape[0] * trainer.max_completion_length * ga)}


def _dapo(trainer, mask, inputs, ga):
    # TRL: num_items_in_batch spans the generation batch; rescaled to one accumulation window
    norm = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
    if trainer.model.training:
        norm = norm * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
    return {"loss_agg": "token-mean", "agg_norm": norm.float()}


def _luspo(trainer, mask, inputs, ga):
    # sum over each completion, then mean over the B completions
    return {"loss_agg": "seq-mean-token-sum", "agg_norm": float(mask.shape[0] * ga)}


#: TRL ``loss_type`` -> the fused loss's aggregation (``loss_agg``, ``agg_norm``; ``ga`` is
#: the gradient-accumulation divisor TRL applies). ``None``: TRL's own loss (on the fused
#: log-probs): VESPO's gamma weights are a sequence-level function the ops do not have.
LOSS_TYPES: dict[str, Callable[..., dict[str, Any]] | None] = {
    "grpo": _grpo,
    "bnpo": _bnpo,
    "dr_grpo": _dr_grpo,
    "dapo": _dapo,
    "cispo": _dapo,
    "sapo": _grpo,
    "luspo": _luspo,
    "vespo": None,
}


def _policy_options(trainer) -> dict[str, Any] | str:
    """TRL's loss type and importance-sampling level -> the fused loss's policy options, or
    the reason there is no fused form."""
    args, level = trainer.args, trainer.importance_sampling_level
    if trainer.loss_type == "cispo":
        if level != "token":
            return f"loss_type='cispo' with importance_sampling_level={level!r}"
        if trainer.epsilon_high < 1.0:  # TRL's cap on the ratio; below 1 it also caps ratio 1
            return f"cispo with epsilon_high={trainer.epsilon_high} < 1"
        return {"policy_loss": "cispo", "eps_low": 1.0, "eps_high": trainer.epsilon_high - 1.0}
    if trainer.loss_type == "sapo":
        if level != "token":
            return f"loss_type='sapo' with importance_sampling_level={level!r}"
        return {"policy_loss": "sapo", "tau_pos": args.sapo_temperature_pos, "tau_neg": args.sapo_temperature_neg}
    if not 0.0 <= trainer.epsilon_low < 1.0 or trainer.epsilon_high < 0.0:
        return f"epsilon={trainer.epsilon_low} outside [0, 1)"
    if args.delta is not None and not args.delta > 1.0:
        return f"delta={args.delta} <= 1"
    return {"policy_loss": "gspo" if level == "sequence" else "vanilla", "eps_low": trainer.epsilon_low,
            "eps_high": trainer.epsilon_high, "clip_c": args.delta}

_MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                    "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def _fallback_reason(trainer, inputs) -> str | None:
    """Why TRL's own loss must run for this batch (None: the fused loss computes it exactly)."""
    args = trainer.args
    if LOSS_TYPES.get(trainer.loss_type) is None:
        return f"loss_type={trainer.loss_type!r} has no fused form"
    policy = _policy_options(trainer)
    if isinstance(policy, str):
        return policy
    if trainer.off_policy_mask_threshold is not None:
        return "off_policy_mask_threshold"
    if trainer.top_entropy_quantile < 1.0:
        return "top_entropy_quantile < 1"
    if trainer._entropy_bonus_enabled:
        return "the entropy bonus (aggregated apart from the policy loss)"
    if trainer.beta != 0.0 and args.use_bias_correction_kl and policy["policy_loss"] == "gspo":
        return "use_bias_correction_kl at importance_sampling_level='sequence'"
    if trainer.aux_loss_enabled:
        return "the MoE aux loss"
    if any(inputs.get(k) is not None for k in _MULTIMODAL_KEYS):
        return "multimodal inputs"
    if not getattr(trainer.model, "_rubricrl_fused_head", False):
        return "the model keeps TRL's LM head"
    return None


# ---- the fused head -------------------------------------------------------------------------


def _head_unsupported(model) -> str | None:
    cfg = model.config.get_text_config()
    if getattr(cfg, "final_logit_softcapping", None) is not None:
        return "final_logit_softcapping"
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        value = getattr(cfg, name, None)
        if value is not None and value != 1.0:
            return name
    if getattr(cfg, "output_router_logits", False):
        return "router logits (MoE aux loss)"
    return None


def _patch_head(model, temperature: float, cast_fp32: bool, entropy: bool) -> bool:
    """Replace TRL's fused LM head on ``model`` with rubricrl's; False when it must stay TRL's."""
    reason = _head_unsupported(model)
    if reason is not None:
        logger.warning("rubricrl: %s keeps TRL's LM head (%s)", type(model).__name__, reason)
        return False
    from trl.trainer.utils import FusedCausalLMOutput

    trl_forward = model.forward  # TRL's patched forward: the unfused path goes through it unchanged

    @functools.wraps(type(model).forward)  # generate() checks its kwargs against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None,
                rubricrl_head=None, **kwargs):
        if not fused_lm_head:
            return trl_forward(*args, fused_lm_head=False, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        head = self.get_output_embeddings()
        weight, bias = head.weight, head.bias
        hidden, labels = hidden.to(weight.device), labels.to(weight.device)
        if cast_fp32:
            hidden = hidden.float()
        elif hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)
        # the op accumulates in fp32 itself; autocast must not re-cast its GEMMs
        no_autocast = torch.autocast(hidden.device.type, enabled=False) if torch.is_autocast_enabled(
            hidden.device.type) else nullcontext()
        with no_autocast:
            if rubricrl_head is not None:
                return rubricrl_head(hidden, weight, bias, labels)
            mask = labels != IGNORE
            out = fused_linear_logprobs(hidden[mask], weight, labels[mask], bias=bias, temperature=temperature,
                                        return_entropy=entropy)
        lp, ent = out if entropy else (out, None)
        # masked_scatter keeps an all-masked batch connected to the graph (a zero gradient, not an error)
        log_probs = lp.new_zeros(mask.shape).masked_scatter(mask, lp)
        entropies = None if ent is None else ent.new_zeros(mask.shape).masked_scatter(mask, ent)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropies,
                                   label_mask=mask)

    model.forward = types.MethodType(forward, model)
    model._rubricrl_fused_head = True
    return True


# ---- the fused loss -------------------------------------------------------------------------


def _fused_compute_loss(trainer, trl_compute_loss, model, inputs):
    reason = _fallback_reason(trainer, inputs)
    if reason is not None:
        if reason not in trainer._rubricrl_fallbacks:
            trainer._rubricrl_fallbacks.add(reason)
            logger.warning("rubricrl: TRL's own loss (on rubricrl's log-probs) for %s", reason)
        return trl_compute_loss(model, inputs)

    prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    keep = completion_ids.size(1)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE)
    labels[:, :-keep] = IGNORE
    mode = "train" if trainer.model.training else "eval"
    ga = trainer.current_gradient_accumulation_steps if mode == "train" else 1
    advantages = inputs["advantages"]
    ref = inputs.get("ref_per_token_logps") if trainer.beta != 0.0 else None
    old = inputs.get("old_per_token_logps")
    options = {**LOSS_TYPES[trainer.loss_type](trainer, mask, inputs, ga), **_policy_options(trainer)}
    kl_bias = trainer.beta != 0.0 and trainer.args.use_bias_correction_kl
    weights = None
    if trainer.use_vllm and trainer.vllm_importance_sampling_correction:  # TRL's ratio, (B, T) or (B, 1)
        weights = inputs["importance_sampling_ratio"].expand_as(mask)

    def head(hidden, weight, bias, _labels):
        hidden = hidden[:, -keep:]
        with torch.no_grad():  # current log-probs and entropies, for TRL's metrics
            lp_now, ent = fused_linear_logprobs(hidden, weight, completion_ids, bias=bias,
                                                temperature=trainer.temperature, return_entropy=True)
        loss, _ = fused_linear_grpo_loss(
            hidden, weight, completion_ids, old, advantages, mask, bias=bias, temperature=trainer.temperature,
            ref_logprobs=ref, kl_coef=trainer.beta, kl_type="k3", kl_bias_correction=kl_bias, weights=weights,
            **options,
        )
        return loss, lp_now, ent

    with trainer.accelerator.autocast():
        loss, lp_now, ent = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                                  fused_lm_head=True, rubricrl_head=head)
    _log_metrics(trainer, mode, mask, advantages, lp_now, lp_now if old is None else old, ent, ref)
    return loss


def _log_metrics(trainer, mode, mask, advantages, lp, old, ent, ref) -> None:
    """TRL's logged metrics for the mapped loss types, from the detached log-probs."""
    from trl.trainer.utils import nanmax, nanmin

    metrics = trainer._metrics[mode]
    mask = mask.float()
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)

    def global_mean(x):  # a [B, 1] value is one per sequence (sequence-level ratio), as TRL
        if x.shape[1] == 1:
            local = torch.stack([x.sum(), torch.tensor(float(x.shape[0]), device=x.device)])
        else:
            local = torch.stack([(x * mask).sum(), mask.sum()])
        totals = trainer.accelerator.reduce(local, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

    def seq_mean(x):
        return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

    log_ratio = lp - old
    if trainer.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    if ref is not None:
        d = ref - lp
        kl = torch.exp(d) - d - 1
        metrics["kl"].append(global_mean(kl * ratio if trainer.args.use_bias_correction_kl else kl))
    metrics["entropy"].append(global_mean(ent))
    if trainer.loss_type == "cispo":
        metrics["cispo_clip_ratio"].append(global_mean(((ratio > trainer.epsilon_high) & (adv > 0)).float()))
    if trainer.loss_type in ("cispo", "sapo"):
        return
    low = ((ratio < 1 - trainer.epsilon_low) & (adv < 0)).float()
    high = ((ratio > 1 + trainer.epsilon_high) & (adv > 0)).float()
    metrics["clip_ratio/low_mean"].append(global_mean(low))
    metrics["clip_ratio/high_mean"].append(global_mean(high))
    metrics["clip_ratio/region_mean"].append(global_mean(torch.maximum(low, high)))
    metrics["clip_ratio/low_min"].append(nanmin(trainer.accelerator.gather(seq_mean(low))).item())
    metrics["clip_ratio/high_max"].append(nanmax(trainer.accelerator.gather(seq_mean(high))).item())


# ---- public -----------------------------------------------------------------------------------


def use_fused_logprobs(trainer, *, fused_loss: bool = False):
    """Make a TRL ``GRPOTrainer`` compute log-probs (and optionally its loss) with rubricrl's kernels.

    Call after constructing the trainer and before ``train()``.

    Args:
        trainer: a ``trl.GRPOTrainer`` (1.16).
        fused_loss: also compute the loss with :func:`rubricrl.ops.fused_linear_grpo_loss`
            where the configuration maps onto it (see the module docstring); TRL's own loss
            otherwise.

    Every unbound :class:`RubricReward` in ``trainer.reward_funcs`` is bound to the trainer.

    Returns:
        The trainer (patched in place).
    """
    from trl import GRPOTrainer

    if not isinstance(trainer, GRPOTrainer):
        raise TypeError(f"use_fused_logprobs expects a trl.GRPOTrainer, got {type(trainer).__name__}")
    if getattr(trainer, "_rubricrl_patched", False):
        return trainer
    model = trainer.model
    if hasattr(model, "get_base_model"):  # PEFT: TRL patched the base model's forward
        model = model.get_base_model()
    cast = bool(trainer.args.cast_lm_head_to_fp32)
    _patch_head(model, trainer.temperature, cast, entropy=True)
    if trainer.ref_model is not None:
        _patch_head(trainer.ref_model, trainer.temperature, cast, entropy=False)
    if fused_loss:
        trainer._rubricrl_fallbacks = set()
        trl_compute_loss = trainer._compute_loss
        trainer._compute_loss = types.MethodType(
            lambda self, model, inputs: _fused_compute_loss(self, trl_compute_loss, model, inputs), trainer)
    for func in trainer.reward_funcs:
        if isinstance(func, RubricReward) and func._trainer is None:
            func.bind(trainer)
    trainer._rubricrl_patched = True
    return trainer


class RubricReward:
    """A TRL reward function: the rubric score of each completion, graded by the trainer's model.

    TRL calls it as ``reward(prompts=..., completions=..., completion_ids=..., **columns)``;
    the dataset column ``rubric_column`` holds each row's rubric (a list of
    ``{"criterion", "points", "tags"}`` dicts, or that list as JSON). Returns one score
    per completion, ``None`` (NaN in TRL) where no item could be graded.
    """

    def __init__(self, rubric_column: str = "rubric", judge=None) -> None:
        self.rubric_column = rubric_column
        self.judge = judge or _grading.default_judge()
        self.__name__ = "rubric_reward"  # TRL logs rewards under the function's name
        self._trainer = None

    def bind(self, trainer) -> RubricReward:
        """Grade with ``trainer``'s current model and its tokenizer (self-grading)."""
        self._trainer = trainer
        return self

    def __call__(self, prompts, completions, **kwargs) -> list[float | None]:
        if self._trainer is None:
            raise RuntimeError("rubric_reward is not bound to a trainer: call use_fused_logprobs(trainer) or "
                               "reward.bind(trainer) before train()")
        if self.rubric_column not in kwargs:
            columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric",
                                                            "completion_ids", "environments"))
            raise ValueError(f"rubric_reward: the dataset has no column {self.rubric_column!r}; columns: {columns}")
        rubrics = kwargs[self.rubric_column]
        trainer = self._trainer
        model = trainer.accelerator.unwrap_model(trainer.model)
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        rows = [
            (_grading.as_conversation(p, f"prompts[{i}]"), _grading.as_response(c, f"completions[{i}]"),
             _grading.parse_rubric(r, f"{self.rubric_column}[{i}]"))
            for i, (p, c, r) in enumerate(zip(prompts, completions, rubrics, strict=True))
        ]
        return _grading.grade_rows(model, trainer.processing_class, self.judge, *zip(*rows)) if rows else []


def rubric_reward(rubric_column: str = "rubric", judge=None) -> RubricReward:
    """A :class:`RubricReward`: pass it in ``reward_funcs``, then :func:`use_fused_logprobs` or
    ``.bind(trainer)`` binds it to the trainer's model."""
    return RubricReward(rubric_column, judge)
