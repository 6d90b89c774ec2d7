"""Padding-free (packed) updates: the packed forward equals running each sequence alone,
and a packed ``ActorUpdater.update`` gives the loss, gradients and updated weights of the
padded one, for every ``loss_agg``, with long-tailed response lengths."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from rubricrl.config import LossConfig, OptimConfig
from rubricrl.engines import HFEngine
from rubricrl.models import build_tiny_model, load_builtin_tokenizer
from rubricrl.models.packing import pack_sequences, packed_hidden_states, packing_unsupported
from rubricrl.trainer.update import ActorUpdater, UpdateBatch

LOSS_AGGS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def _random_seqs(lengths, seed=0, vocab=(5, 250)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(*vocab, (n,), generator=g).tolist() for n in lengths]


def test_pack_sequences_layout_hand_checked():
    ids, pos, cu = pack_sequences([[7, 8, 9], [4], [5, 6]])
    assert ids.tolist() == [[7, 8, 9, 4, 5, 6]]
    assert pos.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert cu.tolist() == [0, 3, 4, 6] and cu.dtype == torch.int32
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        pack_sequences([[1], []])


def test_packed_hidden_states_equal_each_sequence_alone_and_transformers_packing():
    model = build_tiny_model()
    seqs = _random_seqs([3, 17, 1, 40, 9])
    ids, pos, cu = pack_sequences(seqs)
    with torch.no_grad():
        packed = packed_hidden_states(model, ids, pos, cu)[0]
        alone = torch.cat([model.base_model(input_ids=torch.tensor([s]), use_cache=False).last_hidden_state[0] for s in seqs])
        # transformers' own packed-sequence detection (dense block-diagonal mask from position_ids)
        dense = model.base_model(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, dense, rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # restored after the packed forward


def test_packing_unsupported_names_the_reason():
    assert packing_unsupported(build_tiny_model()) is None
    sliding = build_tiny_model(use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert "sliding" in packing_unsupported(sliding)
    with pytest.raises(ValueError, match="cannot run packed sequences: the model has sliding"):
        packed_hidden_states(sliding, *pack_sequences([[1, 2]]))


def _batch(seed=0) -> UpdateBatch:
    """8 responses with long-tailed lengths (1 .. 96 tokens), prompts of 2 .. 11 tokens, one empty response."""
    g = torch.Generator().manual_seed(seed)
    batch = UpdateBatch()
    lengths = [1, 3, 5, 8, 0, 13, 30, 96]
    for i, n in enumerate(lengths):
        prompt = torch.randint(5, 250, (2 + (3 * i) % 10,), generator=g).tolist()
        response = torch.randint(5, 250, (n,), generator=g).tolist()
        old = (-torch.rand(n, generator=g) * 3 - 2).tolist()
        batch.add(prompt, response, old, float(torch.randn((), generator=g)))
    return batch


def _run(packing: str, loss_agg: str, micro: int, kl_coef: float = 0.0):
    torch.manual_seed(0)
    tok = load_builtin_tokenizer()
    engine = HFEngine(build_tiny_model(seed=3), tok)
    ref = HFEngine(build_tiny_model(seed=4), tok) if kl_coef > 0 else None
    loss = LossConfig(loss_agg=loss_agg, kl_coef=kl_coef, entropy_coef=0.01)
    # eps far above most |grad|s makes AdamW's step about lr * m / eps, linear in the gradient:
    # with the default eps a gradient near 0 moves its weight by ~lr whichever its fp32 rounding
    optim = OptimConfig(lr=1e-3, eps=1e-3, micro_batch_size=micro, updates_per_step=2, packing=packing, grad_clip=None)
    updater = ActorUpdater(engine, loss, optim, temperature=0.9, horizon=96, ref_engine=ref)
    assert updater.packed == (packing == "on")
    batch = _batch()
    before = updater.evaluate(batch)
    # gradients of one mini-batch, captured before the optimizer step zeroes them
    grads = []
    step = updater._optimizer_step

    def capture(loss_value):
        grads.append([p.grad.detach().clone() for p in updater.params])
        return step(loss_value)

    updater._optimizer_step = capture
    out = updater.update(batch)
    weights = [p.detach().clone() for p in updater.params]
    return before, out, grads, weights


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_packed_update_equals_padded_update(loss_agg):
    padded = _run("off", loss_agg, micro=3)
    packed = _run("on", loss_agg, micro=3)
    assert math.isclose(padded[0], packed[0], rel_tol=1e-5, abs_tol=1e-6)
    for k in ("loss", "grad_norm", "clipfrac", "approx_kl", "entropy"):
        assert math.isclose(padded[1][k], packed[1][k], rel_tol=1e-4, abs_tol=1e-6), k
    assert packed[1]["optimizer_steps"] == padded[1]["optimizer_steps"] == 2
    assert len(padded[2]) == len(packed[2]) == 2
    for g_pad, g_pack in zip(padded[2], packed[2]):
        for a, b in zip(g_pad, g_pack):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
    for a, b in zip(padded[3], packed[3]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # the update moved the weights (the comparison is not between two untouched models)
    assert any(not torch.equal(a, b) for a, b in zip(padded[3], [p.detach() for p in build_tiny_model(seed=3).parameters()]))


def test_packed_update_with_kl_reference_equals_padded():
    padded = _run("off", "seq-mean-token-mean", micro=4, kl_coef=0.05)
    packed = _run("on", "seq-mean-token-mean", micro=4, kl_coef=0.05)
    assert math.isclose(padded[1]["kl"], packed[1]["kl"], rel_tol=1e-4)
    for a, b in zip(padded[3], packed[3]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_micro_batch_of_empty_responses_only():
    tok = load_builtin_tokenizer()
    engine = HFEngine(build_tiny_model(), tok)
    batch = UpdateBatch()
    batch.add([5, 6], [], [], 1.0)
    batch.add([5, 6, 7], [9, 10], [-1.0, -2.0], -1.0)
    for agg in ("token-mean", "seq-mean-token-mean"):
        results = []
        for packing in ("off", "on"):
            updater = ActorUpdater(
                engine, LossConfig(loss_agg=agg), OptimConfig(micro_batch_size=1, packing=packing), temperature=1.0, horizon=4
            )
            results.append(updater.evaluate(batch))
        assert math.isclose(results[0], results[1], rel_tol=1e-5, abs_tol=1e-7)


def test_packing_option_validation():
    tok = load_builtin_tokenizer()
    engine = HFEngine(build_tiny_model(), tok)
    with pytest.raises(ValueError, match="optim.packing: expected one of"):
        ActorUpdater(engine, LossConfig(), SimpleNamespace(**{**OptimConfig().__dict__, "packing": "yes"}), temperature=1.0, horizon=4)
    sliding = HFEngine(build_tiny_model(use_sliding_window=True, sliding_window=8, max_window_layers=0), tok)
    with pytest.raises(ValueError, match="optim.packing: 'on' but the model has sliding"):
        ActorUpdater(sliding, LossConfig(), OptimConfig(packing="on"), temperature=1.0, horizon=4)
    assert not ActorUpdater(sliding, LossConfig(), OptimConfig(packing="auto"), temperature=1.0, horizon=4).packed
    assert ActorUpdater(engine, LossConfig(), OptimConfig(), temperature=1.0, horizon=4).packed  # auto on Qwen3


def test_micro_batches_by_token_budget_hand_checked():
    from rubricrl.trainer.update import _micro_batches

    batch = _batch()  # prompts of 2 + (3 i) % 10 tokens, responses of 1, 3, 5, 8, 0, 13, 30, 96
    sizes = [len(p) + len(r) for p, r in zip(batch.prompt_ids, batch.response_ids)]
    assert sizes == [3, 8, 13, 19, 4, 20, 40, 99]
    rows = list(range(8))
    assert _micro_batches(batch, rows, 8, None) == [rows]
    assert _micro_batches(batch, rows, 3, None) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    # budget 40: 3+8+13 = 24 (+19 > 40) | 19+4 = 23 (+20 > 40) | 20 (+40 > 40) | 40 | 99 alone (over budget)
    assert _micro_batches(batch, rows, 8, 40) == [[0, 1, 2], [3, 4], [5], [6], [7]]
    assert _micro_batches(batch, rows, 2, 40) == [[0, 1], [2, 3], [4, 5], [6], [7]]


@pytest.mark.parametrize("packing", ["on", "off"])
def test_token_budget_micro_batches_give_the_one_micro_batch_update(packing):
    """Accumulation is exact: cutting by a token budget changes nothing but the cost."""
    results = []
    for micro, budget in ((8, None), (8, 40)):
        torch.manual_seed(0)
        engine = HFEngine(build_tiny_model(seed=3), load_builtin_tokenizer())
        optim = OptimConfig(lr=1e-3, eps=1e-3, micro_batch_size=micro, micro_batch_tokens=budget, packing=packing)
        updater = ActorUpdater(engine, LossConfig(loss_agg="seq-mean-token-sum"), optim, temperature=1.0, horizon=96)
        out = updater.update(_batch())
        results.append((out, [p.detach().clone() for p in updater.params]))
    (one, w_one), (cut, w_cut) = results
    assert math.isclose(one["loss"], cut["loss"], rel_tol=1e-5, abs_tol=1e-7)
    assert math.isclose(one["grad_norm"], cut["grad_norm"], rel_tol=1e-4)
    for a, b in zip(w_one, w_cut):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_micro_batch_tokens_config_validation():
    from rubricrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="optim.micro_batch_tokens"):
        load_config("rubricrl/configs/demo.yaml", ["optim.micro_batch_tokens=0"])
    with pytest.raises(ConfigError, match="optim.packing"):
        load_config("rubricrl/configs/demo.yaml", ["optim.packing=always"])
    assert load_config("rubricrl/configs/demo.yaml", ["optim.micro_batch_tokens=512"]).optim.micro_batch_tokens == 512
