"""rubricrl inside verl: policy losses, the fused log-prob+entropy head, a rubric reward.

Importing this module (verl must be importable) registers, with verl's
``register_policy_loss``, one loss per entry of :data:`LOSSES` under verl's name
prefixed ``rubricrl_``: ``rubricrl_vanilla``, ``rubricrl_gspo``, ``rubricrl_cispo``,
``rubricrl_sapo``. Select one with
``actor_rollout_ref.actor.policy_loss.loss_mode=rubricrl_vanilla`` and make every
worker import this module, e.g. ``VERL_USE_EXTERNAL_MODULES=rubricrl.integrations.verl``.

Each registered loss equals verl's loss of the same name in every ``loss_agg_mode``
(``token-mean``, ``token-sum``, ``seq-mean-token-sum``, ``seq-mean-token-mean``,
``seq-mean-token-sum-norm``), with ``config.global_batch_info`` (``dp_size``,
``batch_num_tokens``, ``global_batch_size``, ``loss_scale_factor``) and
``rollout_is_weights``, computed by :func:`rubricrl.ops.grpo_loss`:

* verl's ``gspo`` is GSPO-token (``policy_loss="gspo_token"``: the response's ratio with
  each token's gradient); ``cispo`` and ``sapo`` (``tau_pos``, ``tau_neg``; verl always
  aggregates it ``seq-mean-token-mean``) map one to one; ``vanilla`` adds the dual clip;
* ``rollout_is_weights`` are the ops' per-token ``weights`` (they multiply the policy term);
* ``token-sum`` is ``token-sum`` with the normaliser ``1 / dp_size``; the other modes
  take ``batch_num_tokens / dp_size`` or ``global_batch_size / dp_size`` as the
  normaliser and ``loss_scale_factor`` as the horizon.

Where the values differ from verl's (never at ordinary inputs): ``actor/ppo_kl`` is the
mean of ``old - lp`` unclamped (verl clamps ``|lp - old|`` to 20 first), and GSPO's
response log-ratio is clamped to ``[-20, 20]`` where verl clamps the token form at 10.

:func:`linear_cross_entropy` has the contract of verl's
``verl.utils.kernel.linear_cross_entropy.linear_cross_entropy`` and
:func:`use_fused_head` puts it in its place, so verl's ``use_fused_kernels`` forward
(``fused_kernels_backend=triton``) runs on CPU too. :func:`compute_score` and
:func:`compute_score_batch` grade a response against the row's rubric.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from rubricrl.ops import fused_linear_logprobs, grpo_loss

from . import _grading

__all__ = [
    "LOSSES",
    "VERL_AGG_MODES",
    "compute_score",
    "compute_score_batch",
    "linear_cross_entropy",
    "policy_loss",
    "register_losses",
    "set_grader",
    "use_fused_head",
]

#: verl 0.9.1's ``agg_loss`` modes, all supported.
VERL_AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

PREFIX = "rubricrl_"


def _clip_range(config) -> dict[str, Any]:
    """verl's clip ratios -> grpo_loss's ``eps_low``, ``eps_high``."""
    clip = config.clip_ratio
    low = config.clip_ratio_low if config.clip_ratio_low is not None else clip
    high = config.clip_ratio_high if config.clip_ratio_high is not None else clip
    return {"eps_low": low, "eps_high": high}


#: verl loss name -> grpo_loss options read from the actor config (``loss_agg_mode`` in
#: the options overrides the caller's, as verl's sapo does).
LOSSES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "vanilla": lambda c: {**_clip_range(c), "clip_c": c.get("clip_ratio_c", 3.0)},  # verl always dual-clips
    "gspo": lambda c: {**_clip_range(c), "policy_loss": "gspo_token"},
    "cispo": lambda c: {**_clip_range(c), "policy_loss": "cispo"},
    "sapo": lambda c: {"policy_loss": "sapo", "tau_pos": c.tau_pos, "tau_neg": c.tau_neg,
                       "loss_agg_mode": "seq-mean-token-mean"},
}


def _aggregation(mode: str, mask: torch.Tensor, info: dict) -> dict[str, Any]:
    """verl's ``loss_agg_mode`` + ``global_batch_info`` -> grpo_loss's ``loss_agg``, ``agg_norm``, ``horizon``."""
    if mode not in VERL_AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {VERL_AGG_MODES}, got {mode!r}")
    dp = info.get("dp_size") or 1
    if mode == "token-sum":  # verl: sum * dp_size
        return {"loss_agg": "token-sum", "agg_norm": 1.0 / dp}
    if mode == "token-mean":
        tokens = info.get("batch_num_tokens")
        if tokens is None and dp > 1:
            raise ValueError("global_batch_info['batch_num_tokens'] is required for token-mean when dp_size > 1")
        return {"loss_agg": "token-mean", "agg_norm": None if tokens is None else tokens / dp}
    size = info.get("global_batch_size")
    if size is None and dp > 1:
        raise ValueError(f"global_batch_info['global_batch_size'] is required for {mode} when dp_size > 1")
    norm = None if size is None else size / dp
    if mode != "seq-mean-token-sum-norm":
        return {"loss_agg": mode, "agg_norm": norm}
    scale = info.get("loss_scale_factor")
    if scale is None:  # verl's default: the padded response length
        scale = mask.shape[-1]
    if isinstance(scale, numbers.Integral) and not isinstance(scale, bool) and scale > 0:
        return {"loss_agg": mode, "agg_norm": norm, "horizon": int(scale)}
    # a non-integer scale folds into the normaliser of seq-mean-token-sum
    if norm is None:
        norm = (mask.sum(-1) > 0).sum().to(torch.float32)
    return {"loss_agg": "seq-mean-token-sum", "agg_norm": norm * float(scale)}


def policy_loss(
    name: str,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config=None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """verl's loss ``name`` computed by :func:`rubricrl.ops.grpo_loss` (verl's ``PolicyLossFn`` contract).

    Args:
        name: a key of :data:`LOSSES` (verl's name, no prefix).
        old_log_prob, log_prob, advantages, response_mask: ``[B, T]`` as verl passes them.
        loss_agg_mode: one of :data:`VERL_AGG_MODES`.
        config: verl's actor config (``clip_ratio*``, ``global_batch_info``).
        rollout_is_weights: optional ``[B, T]`` importance weights of the policy term.

    Returns:
        ``(loss, metrics)`` with verl's metric keys ``actor/pg_clipfrac``, ``actor/ppo_kl``,
        ``actor/pg_clipfrac_lower`` (floats).
    """
    if name not in LOSSES:
        raise NotImplementedError(
            f"verl loss {name!r} has no rubricrl implementation yet; available: {sorted(LOSSES)}"
        )
    if config is None:
        raise ValueError(f"{PREFIX}{name} needs verl's actor config (clip_ratio, global_batch_info)")
    options = LOSSES[name](config)
    loss_agg_mode = options.pop("loss_agg_mode", loss_agg_mode)
    options.update(_aggregation(loss_agg_mode, response_mask, dict(getattr(config, "global_batch_info", None) or {})))
    if rollout_is_weights is not None and tuple(rollout_is_weights.shape) != tuple(log_prob.shape):
        raise ValueError(
            f"rollout_is_weights must have log_prob's shape {list(log_prob.shape)}, got {list(rollout_is_weights.shape)}"
        )
    loss, metrics = grpo_loss(log_prob, old_log_prob, advantages, response_mask, weights=rollout_is_weights,
                              **options)
    return loss, {
        "actor/pg_clipfrac": metrics["clipfrac"].item(),
        "actor/ppo_kl": metrics["approx_kl"].item(),
        "actor/pg_clipfrac_lower": metrics["clipfrac_lower"].item(),
    }


def _registered(name: str) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    def loss_fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="token-mean", config=None,
                rollout_is_weights=None):
        return policy_loss(name, old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                           rollout_is_weights)

    loss_fn.__name__ = f"{PREFIX}{name}"
    loss_fn.__doc__ = f"verl's {name!r} policy loss, computed by rubricrl.ops.grpo_loss."
    return loss_fn


def register_losses() -> list[str]:
    """Register every :data:`LOSSES` entry with verl as ``rubricrl_<name>``; returns the names."""
    from verl.trainer.ppo.core_algos import register_policy_loss

    names = []
    for name in LOSSES:
        register_policy_loss(PREFIX + name)(_registered(name))
        names.append(PREFIX + name)
    return names


# ---- the fused log-prob + entropy head ---------------------------------------------------


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "none",
    dist_process_group=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl's ``linear_cross_entropy`` contract, by :func:`rubricrl.ops.fused_linear_logprobs`.

    Args:
        hidden: ``[..., H]`` (verl passes ``[B, T, H]`` or ``[N, H]``).
        weight: ``[V, H]`` lm_head weight.
        labels: integer ``[...]`` = ``hidden.shape[:-1]``; ``-100`` gives 0 and no gradient.
        temperature: logits are divided by it.
        reduction: only ``"none"`` (what verl's forward passes).
        dist_process_group: must be None (no vocabulary-parallel head).

    Returns:
        ``(log_probs, entropy)``, fp32, flattened to ``[N]`` like verl's kernel.
        Gradients flow to hidden and weight.
    """
    if reduction != "none":
        raise NotImplementedError(f"linear_cross_entropy: reduction={reduction!r}; only 'none' is implemented")
    if dist_process_group is not None:
        raise NotImplementedError("linear_cross_entropy: a vocabulary-parallel head (dist_process_group) is not supported")
    log_probs, entropy = fused_linear_logprobs(hidden, weight, labels, temperature=float(temperature),
                                               return_entropy=True)
    return log_probs.reshape(-1), entropy.reshape(-1)


@contextlib.contextmanager
def use_fused_head() -> Iterator[None]:
    """Within the block, verl's fused-kernel forward uses :func:`linear_cross_entropy`.

    verl's ``forward_with_triton_backend`` imports
    ``verl.utils.kernel.linear_cross_entropy.linear_cross_entropy`` when called, so
    replacing that module attribute is the hook; patch the model with verl's own
    ``patch_forward_with_backends(model, use_fused_kernels=True, fused_kernels_backend="triton")``.
    Restores verl's function on exit.
    """
    from verl.utils.kernel import linear_cross_entropy as module

    saved = module.linear_cross_entropy
    module.linear_cross_entropy = linear_cross_entropy
    try:
        yield
    finally:
        module.linear_cross_entropy = saved


# ---- rubric reward ----------------------------------------------------------------------

_GRADER: dict[str, Any] = {}


def set_grader(model, tokenizer, judge=None) -> None:
    """Grade with this live ``model`` (e.g. the policy, for self-grading) in this process.

    Without it, :func:`compute_score` loads the model at its ``model_path`` keyword once
    per process (``None``: rubricrl's embedded tiny model).
    """
    _GRADER.clear()
    _GRADER.update(model=model, tokenizer=tokenizer, judge=judge or _grading.default_judge())


def _grader(model_path: str | None) -> tuple[Any, Any, Any]:
    if "model" in _GRADER:
        return _GRADER["model"], _GRADER["tokenizer"], _GRADER["judge"]
    key = f"path:{model_path}"
    if key not in _GRADER:
        from rubricrl.models.loading import load_policy

        model, tokenizer = load_policy(model_path)
        _GRADER[key] = (model, tokenizer, _grading.default_judge())
    return _GRADER[key]


def _row(solution_str: Any, ground_truth: Any, extra_info: Any, where: str):
    if not isinstance(extra_info, dict) or "prompt" not in extra_info:
        raise ValueError(f"{where}: extra_info must be a dict with the conversation under 'prompt'")
    return (
        _grading.as_conversation(extra_info["prompt"], f"{where}.extra_info['prompt']"),
        _grading.as_response(solution_str, f"{where}.solution_str"),
        _grading.parse_rubric(ground_truth, f"{where}.ground_truth"),
    )


def compute_score_batch(
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[dict],
    *,
    model_path: str | None = None,
    **kwargs: Any,
) -> list[dict[str, float]]:
    """verl's batched ``compute_score`` (``reward_manager=batch``): one rubric score per response.

    ``ground_truths[i]`` is the row's rubric (list of ``{"criterion", "points", "tags"}``
    or that list as JSON); ``extra_infos[i]["prompt"]`` its conversation (text or chat
    messages). Returns ``{"score": s, "rubric_ungraded": 0.0}`` per response, or
    ``{"score": 0.0, "rubric_ungraded": 1.0}`` where no item could be graded (verl
    needs a number; the flag keeps those rows visible in its metrics).
    """
    n = len(solution_strs)
    if not len(data_sources) == len(ground_truths) == len(extra_infos) == n:
        raise ValueError(
            f"data_sources, solution_strs, ground_truths, extra_infos must have the same length: "
            f"{len(data_sources)}, {n}, {len(ground_truths)}, {len(extra_infos)}"
        )
    rows = [_row(solution_strs[i], ground_truths[i], extra_infos[i], f"row {i}") for i in range(n)]
    model, tokenizer, judge = _grader(model_path)
    scores = _grading.grade_rows(model, tokenizer, judge, *zip(*rows)) if rows else []
    return [
        {"score": 0.0, "rubric_ungraded": 1.0} if s is None else {"score": float(s), "rubric_ungraded": 0.0}
        for s in scores
    ]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict | None = None,
    *,
    model_path: str | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """verl's per-response ``compute_score`` (``reward_manager=naive``); see :func:`compute_score_batch`."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info],
                               model_path=model_path)[0]


register_losses()
