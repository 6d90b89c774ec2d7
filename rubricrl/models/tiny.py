"""The embedded default policy: a tiny Qwen3-style causal LM built in code.

It exists so that the trainer, the judges and every test run with no download
and in seconds on a CPU. Its weights are random (seeded), so its text is noise;
it exercises the exact code paths of a real checkpoint (GQA attention, RoPE,
RMSNorm, untied output projection, KV cache), not the quality of one.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import GenerationConfig, PreTrainedModel, Qwen3Config, Qwen3ForCausalLM

from rubricrl.models.tokenizer import BOS, EOS, IM_END, PAD, builtin_vocab

__all__ = ["TINY_CONFIG", "build_tiny_model", "tiny_config"]

# The model's vocabulary is the built-in tokenizer's, read from its file so the two
# cannot drift apart when the tokenizer is rebuilt.
_VOCAB_SIZE, _ID = builtin_vocab()

# The defaults of the tiny model. GQA (4 query heads, 2 key/value heads) on purpose,
# so code that handles caches and attention meets the layout real Qwen/Llama models use.
TINY_CONFIG: dict[str, Any] = {
    "vocab_size": _VOCAB_SIZE,
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "initializer_range": 0.02,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    # Untied: lm_head.weight [V, H] is its own parameter, as in larger Qwen3 models,
    # so the fused output-projection ops see a weight distinct from the embedding.
    "tie_word_embeddings": False,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "use_cache": True,
    "pad_token_id": _ID[PAD],
    "bos_token_id": _ID[BOS],
    "eos_token_id": _ID[EOS],
}

_CONFIG_KEYS = frozenset(inspect.signature(Qwen3Config.__init__).parameters) - {"self", "args", "kwargs"}


def tiny_config(**overrides: Any) -> Qwen3Config:
    """Return the ``Qwen3Config`` of the tiny model, with ``overrides`` applied.

    Raises:
        ValueError: an override key that is not a ``Qwen3Config`` field.
    """
    unknown = sorted(set(overrides) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown tiny-model config override(s) {unknown}; valid keys are Qwen3Config fields")
    fields = {**TINY_CONFIG, **overrides}
    config = Qwen3Config(**fields)
    # fp32 weights and attention through torch SDPA (exact enough for the 1e-5 checks).
    config._attn_implementation = "sdpa"
    return config


def build_tiny_model(seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """Build the tiny Qwen3-style causal LM with deterministically seeded weights.

    Args:
        seed: seed of the weight initialisation; the same seed (and overrides) gives
            bitwise-identical fp32 weights. The global torch RNG state is left unchanged.
        **overrides: ``Qwen3Config`` fields replacing the ``TINY_CONFIG`` defaults
            (e.g. ``num_hidden_layers=2``).

    Returns:
        A ``Qwen3ForCausalLM`` in eval mode on the CPU, fp32, whose generation config stops
        on ``<|im_end|>`` (end of a chat turn) or ``<|eos|>`` and pads with ``<|pad|>``.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    config = tiny_config(**overrides)
    # Initialise under a private RNG state: same seed -> same weights, and building a
    # model does not perturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[_ID[IM_END], _ID[EOS]],
        pad_token_id=config.pad_token_id,
    )
    model.eval()
    return model
