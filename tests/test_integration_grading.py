"""Grading on a caller's model hands it back as found (HFEngine.borrowed); no host library needed."""

from __future__ import annotations

import pytest
import torch

from rubricrl.data.builtin import builtin_rubric_prompts
from rubricrl.engines import HFEngine
from rubricrl.integrations import _grading
from rubricrl.models.tiny import build_tiny_model
from rubricrl.models.tokenizer import load_builtin_tokenizer


def trainer_like_model():
    """Train mode with one submodule in eval mode and one frozen parameter, as trainers leave models."""
    model = build_tiny_model(seed=0, num_hidden_layers=2).train()
    model.model.layers[1].eval()
    model.model.embed_tokens.weight.requires_grad_(False)
    return model


def state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.device for p in model.parameters()])


def test_borrowed_engine_restores_mode_and_grads():
    model = trainer_like_model()
    before = state(model)
    with HFEngine.borrowed(model, load_builtin_tokenizer()) as engine:
        assert not model.training  # the engine grades in eval mode
        assert engine.model is model
    assert state(model) == before


def test_borrowed_engine_restores_on_error():
    model = trainer_like_model()
    before = state(model)
    with pytest.raises(RuntimeError, match="boom"):
        with HFEngine.borrowed(model, load_builtin_tokenizer()):
            raise RuntimeError("boom")
    assert state(model) == before


def test_grade_rows_matches_a_plain_engine_and_restores():
    model = trainer_like_model()
    before = state(model)
    prompt = builtin_rubric_prompts()[0]
    rows = ([prompt.prompt] * 2, ["Call emergency services now.", "Lie down and rest."], [prompt.rubrics] * 2)
    got = _grading.grade_rows(model, load_builtin_tokenizer(), _grading.default_judge(), *rows)
    assert state(model) == before
    from rubricrl.judges import GradeRequest

    reference = HFEngine(build_tiny_model(seed=0, num_hidden_layers=2), load_builtin_tokenizer())
    reqs = [GradeRequest(c, r, i, group_id="p") for c, r, i in zip(*rows)]
    want = [res.score for res in _grading.default_judge().grade(reference, reqs)]
    assert got == pytest.approx(want, abs=1e-6)
    assert all(s is not None and torch.isfinite(torch.tensor(s)) for s in got)


@pytest.mark.parametrize("value, match", [
    ("not json", r"rubric\[0\]: not a JSON list"),
    ([], r"non-empty list"),
    ([{"criterion": "", "points": 1}], r"rubric\[0\]\[0\].criterion"),
    ([{"criterion": "c", "points": float("nan")}], r"rubric\[0\]\[0\].points"),
    ([{"criterion": "c", "points": 1, "tags": "x"}], r"rubric\[0\]\[0\].tags"),
])
def test_parse_rubric_names_the_bad_field(value, match):
    with pytest.raises(ValueError, match=match):
        _grading.parse_rubric(value, "rubric[0]")


def test_parse_rubric_accepts_json_and_items():
    items = builtin_rubric_prompts()[0].rubrics
    import json

    assert _grading.parse_rubric(json.dumps([i.to_dict() for i in items]), "r") == items
    assert _grading.parse_rubric(items, "r") == items
