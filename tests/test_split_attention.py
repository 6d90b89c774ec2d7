"""Split attention (context and new tokens attended separately, merged by log-sum-exp)
against a plain masked attention and against separate unpadded forwards."""

from __future__ import annotations

import pytest
import torch

from rubricrl.engines import HFEngine, expand_cache
from rubricrl.engines.hf import _segment_split
from rubricrl.engines.split_attention import SplitAttention, split_attention_forward, supports_split_attention

ATOL = 1e-5


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.from_path(None, seed=5)


def _ids(engine: HFEngine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False)


def _full(engine: HFEngine, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return engine.model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]


def _reference_attention(query, key, value, allowed, scale):
    """Plain softmax attention; ``allowed`` [B, T, K] bool, GQA by repeating key/value heads."""
    group = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(group, 1), value.repeat_interleave(group, 1)
    scores = (query @ key.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return (torch.softmax(scores, -1) @ value).transpose(1, 2)


@pytest.mark.parametrize("packed", [False, True], ids=["causal-rows", "packed-segments"])
def test_split_attention_forward_matches_masked_attention(packed):
    torch.manual_seed(0)
    batch, heads, kv_heads, past, length, dim = 3, 4, 2, 7, 9, 8
    q = torch.randn(batch, heads, length, dim)
    k, v = torch.randn(batch, kv_heads, past + length, dim), torch.randn(batch, kv_heads, past + length, dim)
    context = torch.ones(batch, past, dtype=torch.long)
    context[1, 2:4] = 0  # holes in the cached context
    context[2, -1] = 0
    steps = torch.arange(length)
    if packed:
        seg = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 1, 1, -1, -1, -1], [0, 0, 0, 0, 0, 0, 0, 0, -1]])
        mask = torch.cat([context, (seg >= 0).long()], dim=1)
        spec, _ = _segment_split(mask, seg, past, torch.float32)
        own = (seg[:, :, None] == seg[:, None, :]) & (steps[:, None] >= steps[None, :])
    else:
        lengths = torch.tensor([9, 5, 1])
        spec = SplitAttention(past, torch.zeros(batch, 1, 1, past).masked_fill(~context.bool()[:, None, None], float("-inf")))
        own = (steps[:, None] >= steps[None, :]).expand(batch, length, length)
        seg = torch.where(steps[None] < lengths[:, None], 0, -1)
    allowed = torch.cat([context.bool()[:, None, :].expand(batch, length, past), own], dim=2)
    got, _ = split_attention_forward(None, q, k, v, spec, scaling=dim**-0.5)
    ref = _reference_attention(q, k, v, allowed, dim**-0.5)
    real = seg >= 0  # padding queries are unread; only real ones must match
    torch.testing.assert_close(got[real], ref[real], atol=1e-6, rtol=0)
    assert torch.isfinite(got).all()


def test_segment_split_falls_back_when_a_segment_is_split():
    seg = torch.tensor([[0, 0, 1, 0, -1]])
    mask = torch.cat([torch.ones(1, 3, dtype=torch.long), (seg >= 0).long()], dim=1)
    spec, positions = _segment_split(mask, seg, 3, torch.float32)
    assert spec is None
    assert positions.tolist() == [[3, 4, 3, 3, 0]]


def test_supported_on_the_tiny_cpu_model(engine):
    assert supports_split_attention(engine.model, torch.device("cpu"))
    assert not supports_split_attention(engine.model, torch.device("meta"))


@pytest.mark.parametrize("split", [True, False], ids=["split", "masked"])
def test_right_padded_responses_then_packed_suffixes_equal_separate_forwards(engine, split):
    """The judge's two cached forwards (right-padded responses on an expanded prefix, then
    packed suffixes on their cache), with and without the split path, against plain
    unpadded forwards of prefix + response (+ suffix)."""
    engine.split_attention = split
    try:
        prefix = _ids(engine, "instructions and a conversation shared by every response")
        responses = [_ids(engine, "a long response, longer than the others"), _ids(engine, "short"), _ids(engine, "mid size one")]
        suffixes = [[_ids(engine, "item one?"), _ids(engine, "the second item")], [_ids(engine, "x")], [_ids(engine, "q"), _ids(engine, "r s"), _ids(engine, "t")]]
        pad = engine.tokenizer.pad_token_id
        width = max(map(len, responses))
        ids = torch.full((3, width), pad)
        resp_mask = torch.zeros((3, width), dtype=torch.long)
        for b, r in enumerate(responses):
            ids[b, : len(r)] = torch.tensor(r)
            resp_mask[b, : len(r)] = 1
        packed = max(sum(map(len, s)) for s in suffixes) + 1
        sfx = torch.full((3, packed), pad)
        seg = torch.full((3, packed), -1)
        for b, row in enumerate(suffixes):
            flat = [t for s in row for t in s]
            sfx[b, : len(flat)] = torch.tensor(flat)
            seg[b, : len(flat)] = torch.tensor([k for k, s in enumerate(row) for _ in s])
        with torch.no_grad():
            _, prefix_cache = engine.forward_with_cache(torch.tensor([prefix]))
            ctx_mask = torch.cat([torch.ones(3, len(prefix), dtype=torch.long), resp_mask], dim=1)
            hidden, cache = engine.forward_with_cache(ids, expand_cache(prefix_cache, 3), attention_mask=ctx_mask)
            packed_hidden, _ = engine.forward_with_cache(
                sfx, cache, attention_mask=torch.cat([ctx_mask, (seg >= 0).long()], dim=1), segment_ids=seg
            )
        assert torch.isfinite(packed_hidden).all()
        for b, r in enumerate(responses):
            torch.testing.assert_close(hidden[b, : len(r)], _full(engine, prefix + r)[-len(r) :], atol=ATOL, rtol=0)
            col = 0
            for s in suffixes[b]:
                ref = _full(engine, prefix + r + s)[-len(s) :]
                torch.testing.assert_close(packed_hidden[b, col : col + len(s)], ref, atol=ATOL, rtol=0)
                col += len(s)
    finally:
        engine.split_attention = None
