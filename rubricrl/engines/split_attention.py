"""Attention over a cached context split in two parts, merged by log-sum-exp (CPU).

``HFEngine.forward_with_cache`` runs new tokens on top of a KV cache: right-padded
responses on a shared prompt, or packed item suffixes on those responses. Given as one
``[T, past + T]`` masked attention, torch's CPU kernel computes every query against every
key, also the ones the mask removes: the later responses tokens' keys for a causal query,
and every other suffix of a packed row. Here each query attends to

1. the context (the ``past`` cached tokens; its padding holes masked with a ``[B, 1, 1, past]``
   bias shared by all queries of a row), one unmasked-shape attention with the GQA groups
   folded into the query axis (no repeated key/value heads);
2. its own sequence among the new tokens, causally: the whole row (right-padded new
   tokens) or, for packed segments, each segment gathered into its own causal row;

and the two partial results are merged exactly with their log-sum-exps
(``o = o1 * e^(l1 - l) + o2 * e^(l2 - l)``, ``l = logaddexp(l1, l2)``). Same result as the
masked attention (within fp32 rounding), about half the attention work on the judge's shapes.

Used through a ``SplitAttention`` given as the model's attention mask (transformers
passes a ``{layer type: mask}`` dict straight to the layers) while ``split_attention``
has switched the model's attention implementation to ``"rubricrl_split"``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import AttentionInterface

__all__ = ["NAME", "SplitAttention", "split_attention", "split_attention_forward", "supports_split_attention"]

NAME = "rubricrl_split"
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


@dataclass
class SplitAttention:
    """How the new tokens of one ``forward_with_cache`` call attend.

    Attributes:
        past: cached context tokens (the first ``past`` keys of every layer).
        context_bias: additive ``[B, 1, 1, past]`` mask of the context (``-inf`` at padding
            holes), or None when every context token is real.
        gather: None: each row's new tokens form one causal sequence (right padding:
            a real query never reaches a padding key). Else ``[S, L]`` indices into the
            flattened ``[B * T]`` new tokens, one causal sequence per row (right-padded
            with any index: only later, unread positions see it), and ``scatter`` ``[B * T]``
            the index of each new token in the flattened ``[S * L]`` gathered layout.
    """

    past: int
    context_bias: torch.Tensor | None = None
    gather: torch.Tensor | None = None
    scatter: torch.Tensor | None = None


def supports_split_attention(model: torch.nn.Module, device: torch.device) -> bool:
    """True where the split path applies: CPU, the flash CPU kernel, full attention only."""
    if device.type != "cpu" or _FLASH_CPU is None:
        return False
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if config._attn_implementation not in ("sdpa", NAME):
        return False
    layer_types = getattr(config, "layer_types", None)
    if not layer_types or any(t != "full_attention" for t in layer_types):
        return False
    return not getattr(config, "use_sliding_window", False)


@contextlib.contextmanager
def split_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run the model's attention through ``split_attention_forward`` inside the block."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    saved = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = saved


def _partial(query, key, value, bias, causal: bool, scale: float):
    out, lse = _FLASH_CPU(query, key, value, 0.0, causal, attn_mask=bias, scale=scale)
    return out, lse


def split_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: SplitAttention,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention output ``[B, T, heads, head_dim]`` (the layout transformers' sdpa returns),
    in ``query``'s dtype (fp32, bf16 or fp16; merged in fp32)."""
    if not isinstance(attention_mask, SplitAttention):
        raise TypeError("the rubricrl_split attention needs a SplitAttention mask (see HFEngine.forward_with_cache)")
    spec = attention_mask
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    group = heads // kv_heads
    scale = dim**-0.5 if scaling is None else float(scaling)
    past = spec.past

    # 1. the context: every query of a row against the same keys, GQA groups folded into queries
    ctx_out, ctx_lse = _partial(
        query.reshape(batch, kv_heads, group * length, dim),
        key[:, :, :past],
        value[:, :, :past],
        spec.context_bias,
        False,
        scale,
    )
    ctx_out = ctx_out.reshape(batch, heads, length, dim)
    ctx_lse = ctx_lse.reshape(batch, heads, length)

    # 2. the new tokens, causal within each sequence
    new_k = key[:, :, past:]
    new_v = value[:, :, past:]
    if spec.gather is None:
        if group > 1:
            new_k, new_v = new_k.repeat_interleave(group, dim=1), new_v.repeat_interleave(group, dim=1)
        own_out, own_lse = _partial(query, new_k, new_v, None, True, scale)
    else:
        seqs, width = spec.gather.shape
        flat = spec.gather.reshape(-1)

        def gathered(x: torch.Tensor) -> torch.Tensor:  # [B, h, T, D] -> [S, h, L, D]
            h = x.shape[1]
            return x.transpose(1, 2).reshape(batch * length, h, dim)[flat].view(seqs, width, h, dim).transpose(1, 2)

        q_s, k_s, v_s = gathered(query), gathered(new_k), gathered(new_v)
        if group > 1:
            k_s, v_s = k_s.repeat_interleave(group, dim=1), v_s.repeat_interleave(group, dim=1)
        out_s, lse_s = _partial(q_s, k_s, v_s, None, True, scale)
        back = spec.scatter
        own_out = out_s.transpose(1, 2).reshape(seqs * width, heads, dim)[back].view(batch, length, heads, dim)
        own_lse = lse_s.transpose(1, 2).reshape(seqs * width, heads)[back].view(batch, length, heads)
        own_out, own_lse = own_out.transpose(1, 2), own_lse.transpose(1, 2)

    # 3. exact merge of the two softmax partitions. The kernel returns the log-sum-exps in
    # fp32 whatever the input dtype; merge in fp32 too (bf16/fp16 partial outputs would lose
    # the weights' precision) and return the model's dtype, which its output projection expects.
    lse = torch.logaddexp(ctx_lse, own_lse)
    w_ctx = torch.exp(ctx_lse - lse).unsqueeze(-1)
    w_own = torch.exp(own_lse - lse).unsqueeze(-1)
    out = ctx_out.float() * w_ctx + own_out.float() * w_own
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, split_attention_forward)
