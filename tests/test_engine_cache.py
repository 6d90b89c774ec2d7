"""HFEngine forward passes: hidden states, output projection, prefix-cached forwards."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from rubricrl.engines import HFEngine, expand_cache

ATOL = 1e-5


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.from_path(None, seed=11)


def _ids(engine: HFEngine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False)


def _full(engine: HFEngine, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded single-sequence reference: (last hidden [T, H], logits [T, V]) from the model itself."""
    with torch.no_grad():
        x = torch.tensor([ids])
        hidden = engine.model.model(input_ids=x).last_hidden_state[0]
        logits = engine.model(input_ids=x).logits[0]
    return hidden, logits


def test_hidden_states_of_padded_batch_match_unpadded_forward(engine):
    texts = ["short", "a somewhat longer prompt, é", "mid length"]
    rows = [_ids(engine, t) for t in texts]
    width = max(map(len, rows))
    pad = engine.tokenizer.pad_token_id
    for side in ("left", "right"):
        ids = torch.full((3, width), pad)
        mask = torch.zeros((3, width), dtype=torch.long)
        for b, row in enumerate(rows):
            sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[b, sl] = torch.tensor(row)
            mask[b, sl] = 1
        with torch.no_grad():
            hidden = engine.hidden_states(ids, mask)
        weight, bias = engine.output_projection()
        assert hidden.shape == (3, width, engine.model.config.hidden_size)
        assert bias is None and weight.shape == (engine.model.config.vocab_size, engine.model.config.hidden_size)
        for b, row in enumerate(rows):
            ref_hidden, ref_logits = _full(engine, row)
            got = hidden[b][mask[b].bool()]
            torch.testing.assert_close(got, ref_hidden, atol=ATOL, rtol=0)
            torch.testing.assert_close(got @ weight.T, ref_logits, atol=ATOL, rtol=0)


def test_output_projection_is_the_live_lm_head(engine):
    weight, _ = engine.output_projection()
    assert weight is engine.model.lm_head.weight


def test_prefix_cache_then_expanded_continuations_equal_full_forward(engine):
    prefix = _ids(engine, "<|im_start|>system\nJudge the answer.<|im_end|>\n")
    conts = [_ids(engine, t) for t in ("item one", "the 2nd rubric item ✓", "3")]
    with torch.no_grad():
        _, prefix_cache = engine.forward_with_cache(torch.tensor([prefix]))
        assert prefix_cache.get_seq_length() == len(prefix)
        width = max(map(len, conts))
        pad = engine.tokenizer.pad_token_id
        ids = torch.full((len(conts), width), pad)
        mask = torch.zeros((len(conts), len(prefix) + width), dtype=torch.long)
        mask[:, : len(prefix)] = 1
        for b, c in enumerate(conts):  # right padded: padding after the real tokens
            ids[b, : len(c)] = torch.tensor(c)
            mask[b, len(prefix) : len(prefix) + len(c)] = 1
        results = []
        for _ in range(2):  # the prefix cache can be expanded and reused
            hidden, cache = engine.forward_with_cache(ids, expand_cache(prefix_cache, len(conts)), attention_mask=mask)
            assert cache.get_seq_length() == len(prefix) + width
            results.append(hidden)
        assert prefix_cache.get_seq_length() == len(prefix)
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0)
    weight, _ = engine.output_projection()
    for b, c in enumerate(conts):
        ref_hidden, ref_logits = _full(engine, prefix + c)
        torch.testing.assert_close(results[0][b, : len(c)], ref_hidden[len(prefix) :], atol=ATOL, rtol=0)
        torch.testing.assert_close(results[0][b, : len(c)] @ weight.T, ref_logits[len(prefix) :], atol=ATOL, rtol=0)


def test_unmasked_chained_forward_equals_full_forward(engine):
    ids = _ids(engine, "prefix part|continuation part, ünïcode")
    cut = 12
    with torch.no_grad():
        h1, cache = engine.forward_with_cache(torch.tensor([ids[:cut]]))
        h2, cache = engine.forward_with_cache(torch.tensor([ids[cut:]]), cache)
    ref_hidden, _ = _full(engine, ids)
    torch.testing.assert_close(torch.cat([h1[0], h2[0]]), ref_hidden, atol=ATOL, rtol=0)


def _left_padded(engine, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of ``rows`` left-padded to the longest."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), engine.tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    return ids, mask


def test_left_padded_prefix_batch_with_mask(engine):
    prefixes = [_ids(engine, "a long shared prefix for row zero"), _ids(engine, "short one")]
    conts = [_ids(engine, "xyz"), _ids(engine, "uvw")]
    pids, pmask = _left_padded(engine, prefixes)
    with torch.no_grad():
        _, cache = engine.forward_with_cache(pids, attention_mask=pmask)
        mask = torch.cat([pmask, torch.ones((2, 3), dtype=torch.long)], dim=1)
        hidden, _ = engine.forward_with_cache(torch.tensor(conts), cache, attention_mask=mask)
    for b in range(2):
        ref_hidden, _ = _full(engine, prefixes[b] + conts[b])
        torch.testing.assert_close(hidden[b], ref_hidden[-3:], atol=ATOL, rtol=0)


def test_packed_segments_equal_separate_continuations(engine):
    """Several continuations packed into one row (segment_ids) on a left-padded cached prefix
    give each continuation's states of a plain forward of prefix + continuation."""
    prefixes = [_ids(engine, "a long shared prefix for row zero"), _ids(engine, "short one")]
    conts = [[_ids(engine, "first item of row zero"), _ids(engine, "x")], [_ids(engine, "only item here")]]
    pids, pmask = _left_padded(engine, prefixes)
    pad = engine.tokenizer.pad_token_id
    packed = max(sum(map(len, row)) for row in conts)
    ids = torch.full((2, packed + 2), pad)  # +2: every row ends with padding
    seg = torch.full((2, packed + 2), -1)
    for b, row in enumerate(conts):
        flat = [t for c in row for t in c]
        ids[b, : len(flat)] = torch.tensor(flat)
        seg[b, : len(flat)] = torch.tensor([k for k, c in enumerate(row) for _ in c])
    with torch.no_grad():
        _, cache = engine.forward_with_cache(pids, attention_mask=pmask)
        mask = torch.cat([pmask, (seg >= 0).long()], dim=1)
        with pytest.raises(ValueError, match="segment_ids >= 0"):
            engine.forward_with_cache(
                ids, expand_cache(cache, 1), attention_mask=torch.ones_like(mask), segment_ids=seg
            )
        hidden, _ = engine.forward_with_cache(ids, cache, attention_mask=mask, segment_ids=seg)
    assert torch.isfinite(hidden).all()  # padding queries too: NaN there would leak into real rows
    for b, row in enumerate(conts):
        col = 0
        for c in row:
            ref_hidden, _ = _full(engine, prefixes[b] + c)
            torch.testing.assert_close(hidden[b, col : col + len(c)], ref_hidden[-len(c) :], atol=ATOL, rtol=0)
            col += len(c)


def test_expand_cache_layout_and_original_untouched(engine):
    with torch.no_grad():
        rows = [[_ids(engine, c)[0] for c in word] for word in ("abcd", "wxyz")]  # one token per letter
        _, cache = engine.forward_with_cache(torch.tensor(rows))
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    expanded = expand_cache(cache, 3)
    for (k, v), layer in zip(before, expanded.layers):
        assert torch.equal(layer.keys, k.repeat_interleave(3, dim=0))
        assert torch.equal(layer.values, v.repeat_interleave(3, dim=0))
    with torch.no_grad():
        engine.forward_with_cache(torch.tensor([_ids(engine, "e")] * 6), expanded)
    for (k, v), layer in zip(before, cache.layers):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)
    with pytest.raises(ValueError, match="repeats"):
        expand_cache(cache, 0)
    with pytest.raises(ValueError, match="DynamicCache"):
        expand_cache(object(), 2)  # type: ignore[arg-type]


def test_forward_with_cache_argument_errors(engine):
    with torch.no_grad():
        _, cache = engine.forward_with_cache(torch.tensor([_ids(engine, "abc")]))
        with pytest.raises(ValueError, match="batch size"):
            engine.forward_with_cache(torch.tensor([[1, 2], [3, 4]]), expand_cache(cache, 1))
        with pytest.raises(ValueError, match="attention_mask"):
            engine.forward_with_cache(torch.tensor([[1, 2]]), expand_cache(cache, 1), attention_mask=torch.ones(1, 2))
        with pytest.raises(ValueError, match="input_ids"):
            engine.forward_with_cache(torch.tensor([1, 2]))
        with pytest.raises(ValueError, match="attention_mask"):
            engine.hidden_states(torch.tensor([[1, 2]]), torch.ones(1, 3))
    assert isinstance(cache, DynamicCache)
