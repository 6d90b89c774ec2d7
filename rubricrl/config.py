"""Training configuration: nested dataclasses, loaded from YAML plus ``--set`` overrides.

A config is a :class:`TrainConfig` with one section per concern (``model``, ``engine``, ``data``,
``rollout``, ``reward``, ``advantages``, ``loss``, ``optim``, ``trainer``, ``pipeline``).
Every field has a default, so a YAML file only lists what it changes::

    cfg = load_config("rubricrl/configs/demo.yaml", ["optim.lr=1e-4", "trainer.steps=20"])

Validation is strict and every error names the key path, in one line:

* unknown keys: ``trainer.stpes: unknown key (did you mean trainer.steps?)``
* wrong types: ``optim.lr: expected float, got 'fast'``
* bad values: ``rollout.n: must be >= 1, got 0``; every float key must be finite
  (``loss.kl_coef: must be a finite number, got inf``)
* devices: ``model.device: 'cuda' but CUDA is not available here ...``
* data files that do not exist: ``data.dataset: '/data/x.jsonl': no such file ...``
* backends: ``loss.backend: expected one of torch, cpp, triton, cuda or null, got 'foo'``
* bad overrides: ``--set trainer.steps: expected KEY=VALUE``

Override values are parsed as YAML scalars (``true``, ``null``, ``3``, ``0.5``), except
for string fields, which take the text as written (``--set model.path=123`` is the
path ``"123"``). Floats accept ``1e-5`` (which PyYAML would otherwise read as a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from rubricrl.ops.constants import IS_MODES, LOSS_AGG_MODES, POLICY_LOSSES

#: ``pipeline.behaviour_version``: which weights sample a step in the streaming pipeline
BEHAVIOUR_VERSIONS = ("newest", "scheduled")

__all__ = [
    "AdvantageConfig",
    "ConfigError",
    "DataConfig",
    "EngineConfig",
    "GuardConfig",
    "LossConfig",
    "MODEL_DTYPES",
    "ModelConfig",
    "OptimConfig",
    "PAIR_REWARD_SOURCES",
    "PairsConfig",
    "PipelineConfig",
    "RLPRConfig",
    "RewardConfig",
    "RolloutConfig",
    "TrainConfig",
    "TrainerConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "default_config_path",
    "device_problem",
    "server_url_problem",
    "load_config",
    "parse_override",
    "save_config",
    "torch_dtype",
]


class ConfigError(ValueError):
    """A configuration problem; ``str(err)`` is one line starting with the key path."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{path}: {self.problem}" if path else self.problem)


# --------------------------------------------------------------------------- sections

#: Model dtypes by name (``model.dtype``, the CLI's ``--dtype``): each is ``torch.<name>``
#: (:func:`torch_dtype`). Names, not torch objects, so that reading a config needs no torch.
MODEL_DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str):
    """The ``torch.dtype`` of a :data:`MODEL_DTYPES` name (``"bfloat16"`` -> ``torch.bfloat16``).

    Raises:
        ValueError: ``name`` is not one of :data:`MODEL_DTYPES`.
    """
    if name not in MODEL_DTYPES:
        raise ValueError(f"expected a model dtype, one of {', '.join(MODEL_DTYPES)}, got {name!r}")
    import torch

    return getattr(torch, name)



@dataclass
class ModelConfig:
    """The policy (which is also its own judge)."""

    path: str | None = None  # a save_pretrained directory; null = the embedded tiny model
    seed: int = 0  # weight seed of the tiny model (ignored for a checkpoint)
    dtype: Literal[MODEL_DTYPES] = "float32"  # one of MODEL_DTYPES
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N


@dataclass
class EngineConfig:
    """Where rollout and self-grading run (the trainer always updates its own torch model)."""

    backend: Literal["hf", "vllm", "sglang"] = "hf"  # hf: transformers; vllm: in-process vLLM (rubricrl[vllm]); sglang: a running SGLang server
    kv_cache_mb: int = 256  # vllm: KV-cache memory of the serving copy, MiB
    sglang_url: str | None = None  # sglang (required there): the server, http://host:port


@dataclass
class DataConfig:
    """Training prompts."""

    dataset: str = "builtin"  # "builtin", "builtin:learning" or a HealthBench-style rubric JSONL path
    prompts_per_step: int = 4
    shuffle: bool = True
    min_items: int = 0  # keep only prompts with at least this many rubric items
    mix_dataset: str = "builtin"  # reward.source=mix: "builtin" or a meta-eval JSONL path
    mix_fraction: float = 0.25  # reward.source=mix: share of each step's prompts that are scoring data


@dataclass
class RolloutConfig:
    """Sampling the G responses per prompt."""

    n: int = 4  # G, responses per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    max_batch_size: int | None = None  # sequences sampled at once (null = all)


@dataclass
class RLPRConfig:
    """RLPR probability reward (reward.source = rlpr)."""

    format_coef: float = 0.1  # fc of docs/algorithms.md §4
    debias: Literal["cached", "per_step", "off"] = "cached"
    std_filter: bool = False
    std_filter_beta: float = 0.5
    std_filter_warmup: int = 3


# ---- preference-pair reward sources (reward.source = patarm | pairwise_judge) ----

#: Reward sources whose data are preference pairs (``data.dataset``: ``builtin:pairs``,
#: ``builtin:pairs-heldout`` or a pair JSONL path; ``builtin`` means ``builtin:pairs``).
PAIR_REWARD_SOURCES = ("patarm", "pairwise_judge")
#: The shipped pair sets (rubricrl/data/builtin/pairs*.jsonl).
PAIR_BUILTINS = ("builtin", "builtin:pairs", "builtin:pairs-heldout")


@dataclass
class PairsConfig:
    """PaTaRM and the RM-R1-style pairwise judge (docs/rlpr_patarm.md)."""

    par_f: Literal["graded", "constant"] = "graded"  # patarm: f of the preference-aware reward
    order_seed: int = 0  # pairwise_judge: seed of the A/B slot of each pair's chosen response


@dataclass
class RewardConfig:
    """Where rewards come from and how the policy grades itself."""

    source: str = "rubric"  # rubric | rlpr | mix | patarm | pairwise_judge (or any registered reward source)
    judge: str = "logprob"  # logprob | generate
    judge_mode: str = "expected"  # logprob judge: expected | threshold | sample
    grading_temperature: float = 1.0  # verdict temperature (1.0 = the rollout temperature, docs/algorithms.md §3)
    share_prefix: bool = True
    # logprob judge prompt layout (docs/judges.md): instructions_first = instructions + conversation,
    # response, item; continue_rollout = the rollout's own prompt + response, then the grading turn
    judge_layout: Literal["instructions_first", "continue_rollout"] = "instructions_first"
    judge_options: dict[str, Any] = field(default_factory=dict)  # more keyword options for make_judge
    ungraded: Literal["exclude", "group_mean"] = "exclude"
    rlpr: RLPRConfig = field(default_factory=RLPRConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)  # reward.source = patarm | pairwise_judge


@dataclass
class AdvantageConfig:
    """Group-relative advantages (docs/algorithms.md §2)."""

    norm_by_std: bool = True
    eps: float = 1e-6
    drop_equal_groups: bool = True  # leave groups whose scores are all equal out of the update


@dataclass
class LossConfig:
    """The GRPO loss family (docs/algorithms.md §1, §1b)."""

    policy_loss: Literal[POLICY_LOSSES] = "vanilla"  # vanilla | gspo | gspo_token | cispo | sapo
    eps_low: float = 0.2
    eps_high: float = 0.28
    clip_c: float | None = None  # dual clip (> 1), null = off
    tau_pos: float = 1.0  # sapo: gate temperature where A > 0
    tau_neg: float = 1.05  # sapo: gate temperature where A <= 0
    loss_agg: Literal[LOSS_AGG_MODES] = "token-mean"
    # the proximal policy of the decoupled loss: "behaviour" (old = the sampler's log-probs, no
    # correction) or "recompute" (old = the weights before the update, one no-grad forward per
    # micro-batch; the policy term is weighted by pi_old / pi_behaviour per is_mode)
    proximal: Literal["behaviour", "recompute"] = "behaviour"
    is_mode: Literal[IS_MODES] = "token_truncate"
    is_max: float | None = 2.0
    is_min: float | None = None
    kl_coef: float = 0.0  # > 0 keeps a frozen copy of the initial policy as the reference
    kl_type: Literal["k1", "k2", "k3"] = "k3"
    kl_bias_correction: bool = False  # KL times the token ratio (TRL's use_bias_correction_kl)
    entropy_coef: float = 0.0
    chunk_size: int | None = None  # token rows per chunk of fused_linear_grpo_loss (null = its default)
    backend: str | None = None  # force an op backend (torch | cpp | triton | cuda)


@dataclass
class OptimConfig:
    """AdamW and the shape of an update."""

    lr: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0  # max global grad norm, null = off
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps
    micro_batch_size: int = 4  # sequences per forward/backward (gradient accumulation)
    updates_per_step: int = 1  # optimizer steps per training step (the batch is split into this many)
    epochs: int = 1  # passes over the batch per training step
    # padding-free micro-batches (sequences packed in one row, docs/trainer.md): auto = where the
    # model supports it, on = required (error otherwise), off = padded micro-batches
    packing: Literal["auto", "on", "off"] = "auto"
    # also close a micro-batch before its sequences (prompt + response tokens) pass this many;
    # a longer sequence runs alone (null = micro_batch_size only)
    micro_batch_tokens: int | None = None


@dataclass
class TrainerConfig:
    """The loop, logging and checkpoints."""

    steps: int = 10
    seed: int = 0
    checkpoint_every: int = 0  # save every k steps (0 = only at the end)
    save_final: bool = True
    out_dir: str = "runs/rubricrl"
    log_every: int = 1  # print a metrics line every k steps (metrics.jsonl gets every step)
    progress: bool = True  # rich progress bar
    plot: bool = True  # metrics.png at the end
    # stop the run (one-line error, exit 1) after this many consecutive optimizer steps
    # skipped for a non-finite loss, gradient or weight
    max_nonfinite_steps: int = 3


@dataclass
class PipelineConfig:
    """Asynchrony between rollout and grading/update (docs/algorithms.md §7)."""

    eta: int = 0  # staleness bound: step s is sampled with weights of version >= max(0, s - 1 - eta)
    # stream: rollout, grading and update on three threads, each group graded as soon as it is
    # sampled (rubricrl/pipeline/stream.py); batch: whole batches sampled ahead (overlap below);
    # auto: stream when eta >= 1, batch (the synchronous trainer) at eta = 0
    mode: Literal["auto", "batch", "stream"] = "auto"
    # stream: groups per generate call on engines without continuous batching (HF)
    stream_groups: int = 1
    # stream: the weights that sample a step, switched when the rollout is drained: newest
    # (the newest published, every step they admit in one continuous batch) or scheduled
    # (exactly version max(0, s - 1 - eta): reproducible, resumes bitwise)
    behaviour_version: Literal[BEHAVIOUR_VERSIONS] = "newest"
    # stream: torch threads of the rollout thread (0: half of the process's, rounded up);
    # grading and updates take turns on the rest (at least 1)
    rollout_threads: int = 0
    # batch mode: thread: sample ahead on a producer thread with a weight snapshot; inline:
    # same schedule, no overlap; auto: thread when eta > 0
    overlap: Literal["auto", "thread", "inline"] = "auto"


@dataclass
class GuardConfig:
    """Gold-judge drift guard (docs/trainer.md, "Drift guard"); off while ``every`` is 0.

    Every ``every`` steps the current policy answers held-out prompts and both the self-judge
    and a fixed gold judge grade the answers; a warning is logged when, over the last
    ``window`` evaluations, the self-judge's reward rises while the gold judge's falls.
    """

    every: int = 0  # evaluate every k steps (0 = off)
    # the gold judge: frozen_init (reward.judge on a frozen copy of the initial policy),
    # rules (rule-checked items only), checkpoint:PATH (reward.judge on another checkpoint)
    # or a registered judge name (on the frozen initial policy, options judge_options)
    judge: str = "frozen_init"
    judge_options: dict[str, Any] = field(default_factory=dict)
    prompts: int = 4  # held-out prompts, taken out of data.dataset (seeded) unless dataset is set
    dataset: str | None = None  # a rubric JSONL of held-out prompts (nothing is taken from the training data)
    samples: int = 4  # responses per held-out prompt
    max_new_tokens: int | None = None  # null = rollout.max_new_tokens
    window: int = 5  # evaluations in the trend test
    min_self_rise: float = 0.05  # the self-judge's fitted rise over the window must reach this ...
    min_gold_fall: float = 0.05  # ... while the gold judge's fitted change is at most minus this


@dataclass
class DistributedConfig:
    """Running the trainer on a Ray cluster (docs/distributed.md); ``none`` = one process."""

    backend: Literal["none", "ray"] = "none"
    address: str | None = None  # Ray cluster to join (null: $RAY_ADDRESS if set, else start a local one)
    local_cpus: int | None = None  # CPUs of a started local cluster (null: all of the machine's)
    engine_workers: int = 1  # Ray actors that sample and self-grade (each holds an engine)
    trainer_ranks: int = 1  # data-parallel torch.distributed ranks of the update (Ray actors)
    engine_num_cpus: float = 1.0  # Ray resources of one engine worker
    engine_num_gpus: float = 0.0
    trainer_num_cpus: float = 1.0  # Ray resources of one trainer rank
    trainer_num_gpus: float = 0.0
    placement: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # placement-group strategy
    max_restarts: int = 3  # restarts of a dead engine worker by Ray (its groups are re-sampled)
    timeout_s: float = 300.0  # placement, process-group set-up and collective timeout


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    advantages: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> TrainConfig:
        """Check value ranges and cross-field rules; raise :class:`ConfigError`; return self."""
        _validate(self)
        return self


# --------------------------------------------------------------------------- loading


def default_config_path() -> Path:
    """The shipped demo config (``rubricrl/configs/demo.yaml``)."""
    from importlib import resources

    return Path(str(resources.files("rubricrl.configs") / "demo.yaml"))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (default: the shipped demo), apply ``KEY=VALUE`` overrides, validate.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key, wrong type or bad value.
    """
    path = default_config_path() if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError("", f"cannot read config {str(path)!r}: {err.strerror or err}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError("", f"{path}: invalid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{path}: expected a mapping of sections at the top level, got {_kind(raw)}")
    raw = apply_overrides(raw, overrides)
    return config_from_dict(raw).validate()


def parse_override(text: str) -> tuple[str, str]:
    """Split ``a.b=value`` into ``("a.b", "value")``; raise ConfigError on bad syntax."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set {text}", "expected KEY=VALUE (e.g. --set optim.lr=1e-5)")
    key, value = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p or not p.replace("_", "").replace("-", "").isalnum() for p in parts):
        raise ConfigError(f"--set {text}", "expected KEY=VALUE with a dotted key such as optim.lr")
    return key, value


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with every ``KEY=VALUE`` override applied (checked later)."""
    out = _deep_copy(raw)
    for text in overrides:
        key, value_text = parse_override(text)
        parts = key.split(".")
        value = _parse_override_value(parts, value_text)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(parts[: depth + 1]), f"is not a section, cannot set {key}")
            node = child
        node[parts[-1]] = value
    return out


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build a :class:`TrainConfig` from nested mappings (missing keys keep their defaults).

    Raises:
        ConfigError: unknown key or wrong type, naming the key path.
    """
    return _build(TrainConfig, raw, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain dict (YAML/JSON-ready) of a config or section."""
    return dataclasses.asdict(config)


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write ``config`` as YAML that :func:`load_config` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False), encoding="utf-8")


# --------------------------------------------------------------------------- typing


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix or "config", f"expected a mapping, got {_kind(raw)}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            guess = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{guess[0]}?)" if guess else ""
            raise ConfigError(path, f"unknown key{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (converted where lossless)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, path)
        raise TypeError(f"unsupported annotation {tp}")  # pragma: no cover - schema bug
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
        if value not in choices or isinstance(value, bool):
            raise ConfigError(path, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected bool (true or false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(path, f"expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(path, f"expected float, got {value!r}")
        number = None
        if isinstance(value, (int, float)):
            number = value
        elif isinstance(value, str):
            try:
                number = float(value)  # PyYAML reads "1e-5" (no dot) as a string
            except ValueError:
                pass
        if number is None:
            raise ConfigError(path, f"expected float, got {value!r}")
        try:
            number = float(number)
        except OverflowError:  # an int too large for a float
            number = math.inf
        # No config value means anything as nan or +-inf; they only turn weights into NaN later.
        if not math.isfinite(number):
            raise ConfigError(path, f"must be a finite number, got {str(value):.40}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected str, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {value!r}")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    raise TypeError(f"unsupported annotation {tp}")  # pragma: no cover - schema bug


def _field_type(parts: Sequence[str]) -> Any:
    """The annotation at a dotted path, or None when the path is not a (known) field."""
    tp: Any = TrainConfig
    for part in parts:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = _hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _is_str_field(tp: Any) -> bool:
    if tp is str:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return str in typing.get_args(tp)
    return False


def _parse_override_value(parts: Sequence[str], text: str) -> Any:
    tp = _field_type(parts)
    stripped = text.strip()
    if tp is not None and _is_str_field(tp) and stripped not in ("null", "~", "Null", "NULL"):
        return stripped  # a path or name stays the text as written
    try:
        return yaml.safe_load(text) if stripped else ""
    except yaml.YAMLError:
        return stripped


def _deep_copy(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.40}"


# --------------------------------------------------------------------------- validation


def _check(cond: bool, path: str, problem: str) -> None:
    if not cond:
        raise ConfigError(path, problem)


def pipeline_streams(cfg: TrainConfig) -> bool:
    """Whether ``cfg`` runs the streaming pipeline (``pipeline.mode``, auto: ``eta >= 1``)."""
    return cfg.pipeline.mode == "stream" or (cfg.pipeline.mode == "auto" and cfg.pipeline.eta >= 1)


def _validate(cfg: TrainConfig) -> None:
    def at_least(path: str, value: float, low: float) -> None:
        _check(value >= low, path, f"must be >= {low}, got {value}")

    def finite_positive(path: str, value: float) -> None:
        _check(math.isfinite(value) and value > 0, path, f"must be a finite number > 0, got {value}")

    at_least("model.seed", cfg.model.seed, 0)
    at_least("engine.kv_cache_mb", cfg.engine.kv_cache_mb, 1)
    thread = cfg.pipeline.overlap == "thread" or (cfg.pipeline.overlap == "auto" and cfg.pipeline.eta > 0)
    _check(
        cfg.engine.backend not in ("vllm", "sglang") or not thread or pipeline_streams(cfg),
        "pipeline.overlap",
        f"engine.backend={cfg.engine.backend} cannot sample on a producer thread (one serving copy); "
        "set pipeline.overlap=inline",
    )
    if cfg.engine.backend == "sglang":
        problem = server_url_problem(cfg.engine.sglang_url)
        _check(problem is None, "engine.sglang_url", f"engine.backend=sglang needs it: it {problem}")
    else:
        _check(
            cfg.engine.sglang_url is None,
            "engine.sglang_url",
            f"applies to engine.backend=sglang only (engine.backend is {cfg.engine.backend}); remove it",
        )
    problem = device_problem(cfg.model.device)
    _check(problem is None, "model.device", problem or "")
    at_least("data.prompts_per_step", cfg.data.prompts_per_step, 1)
    if cfg.reward.source in PAIR_REWARD_SOURCES:
        _check_data_file("data.dataset", cfg.data.dataset, PAIR_BUILTINS)
        _check(
            cfg.reward.source != "patarm" or cfg.data.prompts_per_step % 2 == 0,
            "data.prompts_per_step",
            f"must be even for reward.source=patarm (a pair's two judge prompts train in one step), "
            f"got {cfg.data.prompts_per_step}",
        )
        at_least("reward.pairs.order_seed", cfg.reward.pairs.order_seed, 0)
    else:
        _check_data_file("data.dataset", cfg.data.dataset, ("builtin", "builtin:learning"))
    at_least("data.min_items", cfg.data.min_items, 0)
    _check(0.0 <= cfg.data.mix_fraction <= 1.0, "data.mix_fraction", f"must lie in [0, 1], got {cfg.data.mix_fraction}")
    at_least("rollout.n", cfg.rollout.n, 1)
    at_least("rollout.max_new_tokens", cfg.rollout.max_new_tokens, 1)
    finite_positive("rollout.temperature", cfg.rollout.temperature)
    _check(0.0 < cfg.rollout.top_p <= 1.0, "rollout.top_p", f"must lie in (0, 1], got {cfg.rollout.top_p}")
    if cfg.rollout.max_batch_size is not None:
        at_least("rollout.max_batch_size", cfg.rollout.max_batch_size, 1)

    from rubricrl.rewards.registry import reward_source_names  # below the config: no pipeline import

    names = reward_source_names()
    _check(cfg.reward.source in names, "reward.source", f"expected one of {', '.join(names)}, got {cfg.reward.source!r}")
    if cfg.reward.source == "mix":  # the only reward source that reads data.mix_dataset
        _check_data_file("data.mix_dataset", cfg.data.mix_dataset)
    _check(bool(cfg.reward.judge), "reward.judge", "must be a judge name such as logprob or generate")
    if cfg.reward.judge == "logprob":
        modes = ("expected", "threshold", "sample")
        _check(
            cfg.reward.judge_mode in modes,
            "reward.judge_mode",
            f"expected one of {', '.join(modes)} for the logprob judge, got {cfg.reward.judge_mode!r}",
        )
    _check(
        cfg.reward.judge_layout == "instructions_first" or cfg.reward.judge == "logprob",
        "reward.judge_layout",
        f"{cfg.reward.judge_layout!r} is for reward.judge=logprob only, got reward.judge={cfg.reward.judge!r}",
    )
    finite_positive("reward.grading_temperature", cfg.reward.grading_temperature)
    for key, value in cfg.reward.judge_options.items():  # untyped, so not checked by _coerce
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"reward.judge_options.{key}", f"must be a finite number, got {value}")
    rl = cfg.reward.rlpr
    _check(0.0 <= rl.format_coef <= 1.0, "reward.rlpr.format_coef", f"must lie in [0, 1], got {rl.format_coef}")
    at_least("reward.rlpr.std_filter_beta", rl.std_filter_beta, 0.0)
    at_least("reward.rlpr.std_filter_warmup", rl.std_filter_warmup, 1)

    finite_positive("advantages.eps", cfg.advantages.eps)

    loss = cfg.loss
    _check(0.0 <= loss.eps_low <= 1.0, "loss.eps_low", f"must lie in [0, 1], got {loss.eps_low}")
    at_least("loss.eps_high", loss.eps_high, 0.0)
    if loss.clip_c is not None:
        _check(loss.clip_c > 1.0, "loss.clip_c", f"must be > 1 (3.0 is typical) or null, got {loss.clip_c}")
    at_least("loss.kl_coef", loss.kl_coef, 0.0)
    _check_loss_options(loss)
    if loss.chunk_size is not None:
        at_least("loss.chunk_size", loss.chunk_size, 1)
    if loss.backend is not None:
        problem = _backend_problem(loss.backend, cfg.model.device)
        _check(problem is None, "loss.backend", problem or "")

    opt = cfg.optim
    finite_positive("optim.lr", opt.lr)
    _check(len(opt.betas) == 2, "optim.betas", f"expected two numbers [beta1, beta2], got {opt.betas}")
    for i, b in enumerate(opt.betas):
        _check(0.0 <= b < 1.0, f"optim.betas[{i}]", f"must lie in [0, 1), got {b}")
    finite_positive("optim.eps", opt.eps)
    at_least("optim.weight_decay", opt.weight_decay, 0.0)
    if opt.grad_clip is not None:
        finite_positive("optim.grad_clip", opt.grad_clip)
    at_least("optim.warmup_steps", opt.warmup_steps, 0)
    at_least("optim.micro_batch_size", opt.micro_batch_size, 1)
    at_least("optim.updates_per_step", opt.updates_per_step, 1)
    at_least("optim.epochs", opt.epochs, 1)
    if opt.micro_batch_tokens is not None:
        at_least("optim.micro_batch_tokens", opt.micro_batch_tokens, 1)

    tr = cfg.trainer
    at_least("trainer.steps", tr.steps, 0)
    at_least("trainer.seed", tr.seed, 0)
    at_least("trainer.checkpoint_every", tr.checkpoint_every, 0)
    at_least("trainer.log_every", tr.log_every, 1)
    at_least("trainer.max_nonfinite_steps", tr.max_nonfinite_steps, 1)
    _check(bool(tr.out_dir), "trainer.out_dir", "must be a directory path")
    at_least("pipeline.eta", cfg.pipeline.eta, 0)
    at_least("pipeline.stream_groups", cfg.pipeline.stream_groups, 1)
    at_least("pipeline.rollout_threads", cfg.pipeline.rollout_threads, 0)
    _validate_guard(cfg)
    _validate_distributed(cfg)


def _validate_guard(cfg: TrainConfig) -> None:
    """The ``guard`` block (what needs the registries or the data is checked when the trainer builds it)."""
    g = cfg.guard
    _check(g.every >= 0, "guard.every", f"must be >= 0 (0 = off), got {g.every}")
    if g.every == 0:
        return
    _check(g.prompts >= 1, "guard.prompts", f"must be >= 1, got {g.prompts}")
    _check(g.samples >= 1, "guard.samples", f"must be >= 1, got {g.samples}")
    if g.max_new_tokens is not None:
        _check(g.max_new_tokens >= 1, "guard.max_new_tokens", f"must be >= 1 or null, got {g.max_new_tokens}")
    _check(g.window >= 3, "guard.window", f"must be >= 3 (a trend needs at least 3 evaluations), got {g.window}")
    _check(g.min_self_rise >= 0, "guard.min_self_rise", f"must be >= 0, got {g.min_self_rise}")
    _check(g.min_gold_fall >= 0, "guard.min_gold_fall", f"must be >= 0, got {g.min_gold_fall}")
    _check(bool(g.judge.strip()), "guard.judge", "expected frozen_init, rules, checkpoint:PATH or a judge name, got an empty string")
    if g.judge.startswith("checkpoint:"):
        where = g.judge[len("checkpoint:") :]
        _check(bool(where), "guard.judge", "checkpoint: needs a path (checkpoint:PATH)")
        _check(Path(where).is_dir(), "guard.judge", f"{where!r}: no such directory (a save_pretrained directory or a rubricrl run/checkpoint)")
    if g.dataset is not None:
        _check_data_file("guard.dataset", g.dataset, ("builtin", "builtin:learning"))
    for key, value in g.judge_options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"guard.judge_options.{key}", f"must be a finite number, got {value}")


def _validate_distributed(cfg: TrainConfig) -> None:
    d = cfg.distributed
    for name in ("engine_workers", "trainer_ranks"):
        _check(getattr(d, name) >= 1, f"distributed.{name}", f"must be >= 1, got {getattr(d, name)}")
    for name in ("engine_num_cpus", "engine_num_gpus", "trainer_num_cpus", "trainer_num_gpus"):
        value = getattr(d, name)
        _check(math.isfinite(value) and value >= 0, f"distributed.{name}", f"must be a finite number >= 0, got {value}")
    for actor in ("engine", "trainer"):  # Ray cannot place an actor that asks for nothing in a bundle
        cpus, gpus = getattr(d, f"{actor}_num_cpus"), getattr(d, f"{actor}_num_gpus")
        _check(cpus + gpus > 0, f"distributed.{actor}_num_cpus", f"{actor} actors need CPUs or GPUs: num_cpus and num_gpus are both 0")
    if d.local_cpus is not None:
        _check(d.local_cpus >= 1, "distributed.local_cpus", f"must be >= 1 or null, got {d.local_cpus}")
    _check(d.max_restarts >= 0, "distributed.max_restarts", f"must be >= 0, got {d.max_restarts}")
    _check(math.isfinite(d.timeout_s) and d.timeout_s > 0, "distributed.timeout_s", f"must be a finite number > 0, got {d.timeout_s}")
    if d.backend != "ray":
        return
    # what the Ray backend does not do (yet): each is a one-line error, not a silent change
    _check(
        cfg.reward.source in ("rubric", "mix"),
        "reward.source",
        f"distributed.backend=ray grades on the engine workers group by group: rubric or mix; {cfg.reward.source!r} "
        "keeps run-wide state (rlpr's std filter and debias cache), run it with distributed.backend=none",
    )
    _check(cfg.pipeline.eta == 0, "pipeline.eta", f"distributed.backend=ray samples on-policy (eta = 0), got {cfg.pipeline.eta}")
    _check(cfg.guard.every == 0, "guard.every", "the drift guard runs in one process: not with distributed.backend=ray")


def server_url_problem(url: object) -> str | None:
    """None when ``url`` is a usable server base URL (``http(s)://host[:port][/prefix]``), else
    why not (``engine.sglang_url``, ``--sglang-url``, ``SGLangEngine``)."""
    import urllib.parse

    if not isinstance(url, str) or not url.strip():
        return f"must be the URL of a running SGLang server (http://host:port), got {url!r}"
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:30000, got {url!r}"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return f"has a bad port: {url!r}"
    if parts.query or parts.fragment:
        return f"must not have a query or fragment: {url!r}"
    return None


def device_problem(name: str) -> str | None:
    """Why ``name`` is not a usable torch device here (None when it is).

    Accepted: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` and ``cuda:N``;
    ``cuda`` needs a CUDA device (and ``cuda:N`` at least N + 1 of them).
    """
    cuda_index = name[5:] if name.startswith("cuda:") else None
    if name not in ("auto", "cpu", "cuda") and not (cuda_index is not None and cuda_index.isdigit()):
        return f"expected auto, cpu, cuda or cuda:N, got {name!r}"
    if name in ("auto", "cpu"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"{name!r} but CUDA is not available here (torch {torch.__version__}); use cpu or auto"
    count = torch.cuda.device_count()
    if cuda_index is not None and int(cuda_index) >= count:
        return f"{name!r} but there are only {count} CUDA device(s) (cuda:0 .. cuda:{count - 1})"
    return None


def _check_loss_options(loss: LossConfig) -> None:
    """The ops' own validation of the loss options (one definition), as ConfigErrors naming the key."""
    from rubricrl.ops._options import grpo_options
    from rubricrl.ops.importance import check_is_options

    try:
        grpo_options(loss.eps_low, loss.eps_high, loss.clip_c, loss.loss_agg, loss.kl_coef, loss.kl_type,
                     loss.entropy_coef, None, None, loss.policy_loss, loss.tau_pos, loss.tau_neg,
                     loss.kl_bias_correction)
        check_is_options(loss.is_mode, loss.is_max, loss.is_min)
    except ValueError as exc:
        key = str(exc).split()[0]
        raise ConfigError(f"loss.{key}", str(exc)) from None


def _check_data_file(path: str, value: str, builtins: tuple[str, ...] = ("builtin",)) -> None:
    """A data key is one of ``builtins`` or names a readable file (checked now, not after a step)."""
    if value in builtins:
        return
    names = " or ".join(repr(b) for b in builtins)
    _check(bool(value), path, f"expected {names} or a JSONL file path, got an empty string")
    file = Path(value)  # exactly what the loader will open
    _check(file.exists(), path, f"{value!r}: no such file (use {names} or a JSONL file path)")
    _check(file.is_file(), path, f"{value!r}: not a file (expected a JSONL file)")


def _backend_problem(name: str, device: str) -> str | None:
    """Why ``loss.backend`` cannot be forced with ``model.device`` (None when nothing is known
    against it before the first step).

    Checked here: the name, and what a backend needs whatever the op: ``cpp`` CPU tensors
    and an importable C++ extension, ``cuda`` CUDA tensors, ``triton`` the triton package.
    Whether one op has a kernel for a backend is the op's own (first-step) error.
    """
    import importlib.util

    from rubricrl.ops._backend import BACKENDS, extension_available

    if name not in BACKENDS:
        return f"expected one of {', '.join(BACKENDS)} or null, got {name!r}"
    on_cuda = device.startswith("cuda") or (device == "auto" and _cuda_available())
    where = f"model.device={device!r} places the model on {'cuda' if on_cuda else 'cpu'}"
    if name == "cpp" and on_cuda:
        return f"'cpp' runs on CPU tensors, but {where}"
    if name == "cpp" and not extension_available():
        return "'cpp' but the C++ extension rubricrl._C does not import (build it, or use torch)"
    if name == "cuda" and not on_cuda:
        return f"'cuda' runs on CUDA tensors, but {where}"
    if name == "triton" and importlib.util.find_spec("triton") is None:
        return "'triton' but the triton package is not installed"
    return None


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
