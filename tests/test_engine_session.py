"""``ChunkedSession`` (the default ``Engine.open_session``, HFEngine): batches submitted at
different times are generated chunk by chunk in submission order, each batch with exactly
the samples ``generate_stream`` gives for it alone; bad input is refused by name."""

from __future__ import annotations

import pytest
import torch

from rubricrl.engines import HFEngine
from rubricrl.engines.session import ChunkedSession
from rubricrl.models import build_tiny_model, load_builtin_tokenizer

PROMPTS = ["The cat sat on", "A dog", "x"]


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    return HFEngine(build_tiny_model(seed=0), load_builtin_tokenizer())


def _ids(groups):
    return [[s.response_ids for s in g] for g in groups]


def test_two_batches_match_generate_stream_alone(engine):
    caps = [6, 2, 4]
    alone = {
        "a": dict(engine.generate_stream(PROMPTS, 2, max_new_tokens=caps, seed=3, groups_per_call=2)),
        "b": dict(engine.generate_stream(PROMPTS[:2], 1, max_new_tokens=5, seed=4, groups_per_call=2)),
    }
    session = engine.open_session(groups_per_call=2)
    assert isinstance(session, ChunkedSession)
    session.submit("a", PROMPTS, 2, max_new_tokens=caps, seed=3)
    assert session.in_flight() == 3
    first = session.poll()  # chunk 0 of batch a: prompts 0 and 1
    assert [(k, i) for k, i, _ in first] == [("a", 0), ("a", 1)] and session.in_flight() == 1
    session.submit("b", PROMPTS[:2], 1, max_new_tokens=5, seed=4)
    rest = []
    while session.in_flight():
        rest += session.poll()
    assert [(k, i) for k, i, _ in rest] == [("a", 2), ("b", 0), ("b", 1)]
    got = {(k, i): g for k, i, g in first + rest}
    for (key, i), group in got.items():
        assert _ids([group]) == _ids([alone[key][i]])
        assert all(len(s.response_ids) <= (caps[i] if key == "a" else 5) for s in group)
    assert session.poll() == []


def test_bad_input_is_refused_by_name(engine):
    with pytest.raises(ValueError, match="groups_per_call"):
        engine.open_session(groups_per_call=0)
    with engine.open_session() as session:
        session.submit(1, PROMPTS, 1, max_new_tokens=2, seed=0)
        with pytest.raises(ValueError, match="already in flight"):
            session.submit(1, PROMPTS, 1, max_new_tokens=2)
        with pytest.raises(ValueError, match=r"max_new_tokens\[1\]"):
            session.submit(2, PROMPTS, 1, max_new_tokens=[2, 0, 1])
        with pytest.raises(ValueError, match="max_new_tokens: 2 caps for 3 prompts"):
            session.submit(3, PROMPTS, 1, max_new_tokens=[2, 2])
    assert session.in_flight() == 0  # closed: nothing left in flight
