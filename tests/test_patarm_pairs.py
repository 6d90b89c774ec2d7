"""Preference-pair files: validation with file:line errors, the shipped rule-checked pairs,
and the config / CLI checks of the pair reward sources (exit 2 before the model is built)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rubricrl.cli import main
from rubricrl.config import ConfigError, load_config
from rubricrl.data.builtin import PAIR_DATASETS, builtin_pairs
from rubricrl.data.builtin import make_pairs
from rubricrl.data.jsonl import DataError
from rubricrl.data.pairs import load_pair_jsonl

GOOD = {
    "pair_id": "p1",
    "prompt": [{"role": "user", "content": "Say hi in one word."}],
    "chosen": "Hi.",
    "rejected": "Hello there, how are you doing today?",
}


def _write(path: Path, *rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def _without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


def test_a_good_file_loads(tmp_path):
    path = _write(tmp_path / "p.jsonl", GOOD, "", {**GOOD, "pair_id": "p2", "task": "math", "extra": 1})
    pairs = load_pair_jsonl(path)
    assert [p.pair_id for p in pairs] == ["p1", "p2"]
    assert pairs[0].task == "chat" and pairs[1].task == "math"
    assert pairs[0].chosen == "Hi." and pairs[0].prompt == GOOD["prompt"]


@pytest.mark.parametrize(
    "row, line_field, words",
    [
        (_without("chosen"), "chosen", "missing"),
        (_without("rejected"), "rejected", "missing"),
        (_without("pair_id"), "pair_id", "missing"),
        (_without("prompt"), "prompt", "missing"),
        ({**GOOD, "rejected": "  Hi.\n"}, "rejected", "identical to 'chosen'"),
        ({**GOOD, "chosen": 3}, "chosen", "expected a string, got number 3"),
        ({**GOOD, "rejected": ["no"]}, "rejected", "expected a string"),
        ({**GOOD, "chosen": "   "}, "chosen", "empty string"),
        ({**GOOD, "prompt": "hi"}, "prompt", "expected a list"),
        ({**GOOD, "prompt": [{"role": "robot", "content": "x"}]}, "prompt[0].role", "not one of"),
        ({**GOOD, "task": "poetry"}, "task", "expected one of chat, math"),
        ({**GOOD, "task": None}, "task", "expected one of"),
        ({**GOOD, "rubrics": {"criterion": "x"}}, "rubrics", "expected a list"),
        ({**GOOD, "rubrics": [{"criterion": "x", "points": 1, "check": {"type": "regex"}}]}, "rubrics[0].check.pattern", "missing"),
        ({**GOOD, "pair_id": 7}, "pair_id", "expected a string"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, row, line_field, words):
    path = _write(tmp_path / "bad.jsonl", {**GOOD, "pair_id": "ok"}, row)
    with pytest.raises(DataError) as info:
        load_pair_jsonl(path)
    err = info.value
    assert str(err).startswith(f"{path}:2: field {line_field!r}: "), str(err)
    assert words in str(err) and err.line == 2 and err.field == line_field
    assert "\n" not in str(err)


def test_duplicate_ids_invalid_json_and_empty_files(tmp_path):
    path = _write(tmp_path / "dup.jsonl", GOOD, GOOD)
    with pytest.raises(DataError, match=r"dup\.jsonl:2: duplicate pair_id 'p1' \(first on line 1\)"):
        load_pair_jsonl(path)
    path = _write(tmp_path / "json.jsonl", GOOD, "{not json")
    with pytest.raises(DataError, match=r"json\.jsonl:2: invalid JSON"):
        load_pair_jsonl(path)
    path = _write(tmp_path / "empty.jsonl", "")
    with pytest.raises(DataError, match=r"empty\.jsonl:1: no pairs"):
        load_pair_jsonl(path)


# --------------------------------------------------------------------------- shipped pairs


def test_shipped_pairs_are_what_the_script_writes(tmp_path):
    assert make_pairs.main(["--check"]) == 0
    assert make_pairs.main(["--out-dir", str(tmp_path)]) == 0
    for name in PAIR_DATASETS.values():
        shipped = (Path(make_pairs.__file__).parent / name).read_text(encoding="utf-8")
        assert (tmp_path / name).read_text(encoding="utf-8") == shipped
    (tmp_path / make_pairs.TRAIN_FILE).write_text("", encoding="utf-8")
    assert make_pairs.main(["--check", "--out-dir", str(tmp_path)]) == 1


def test_shipped_preferences_are_exact_and_the_split_is_disjoint():
    train, heldout = builtin_pairs("builtin:pairs"), builtin_pairs("builtin:pairs-heldout")
    assert (len(train), len(heldout)) == (72, make_pairs.HELDOUT)
    for pair in train + heldout:
        assert pair.rubrics and all(item.check is not None for item in pair.rubrics)
        # the chosen response meets every rule-checked criterion, the rejected one fails one
        assert all(item.check.evaluate(pair.chosen) for item in pair.rubrics), pair.pair_id
        assert not all(item.check.evaluate(pair.rejected) for item in pair.rubrics), pair.pair_id
    assert not {p.pair_id for p in train} & {p.pair_id for p in heldout}
    assert not {(p.prompt[0]["content"], p.chosen) for p in train} & {(p.prompt[0]["content"], p.chosen) for p in heldout}
    kinds = {p.rubrics[0].tags[0] for p in heldout}
    assert len(kinds) >= 4  # the held-out pairs cover most instruction kinds
    with pytest.raises(ValueError, match="no shipped pair set 'builtin:nope'"):
        builtin_pairs("builtin:nope")


# --------------------------------------------------------------------------- config and CLI


def test_config_checks_the_pair_sources():
    cfg = load_config(None, ["reward.source=patarm", "data.dataset=builtin:pairs", "data.prompts_per_step=4"])
    assert cfg.reward.pairs.par_f == "graded" and cfg.reward.pairs.order_seed == 0
    with pytest.raises(ConfigError, match=r"^data.prompts_per_step: must be even for reward.source=patarm"):
        load_config(None, ["reward.source=patarm", "data.prompts_per_step=3"])
    # the pairwise judge trains one prompt per pair: any count
    load_config(None, ["reward.source=pairwise_judge", "data.prompts_per_step=3"])
    with pytest.raises(ConfigError, match=r"^reward.pairs.par_f: expected one of graded, constant"):
        load_config(None, ["reward.source=patarm", "reward.pairs.par_f=steep"])
    with pytest.raises(ConfigError, match=r"^data.dataset: 'builtin:learning': no such file"):
        load_config(None, ["reward.source=pairwise_judge", "data.dataset=builtin:learning"])
    with pytest.raises(ConfigError, match=r"^data.dataset: 'builtin:pairs': no such file"):
        load_config(None, ["reward.source=rubric", "data.dataset=builtin:pairs"])


@pytest.mark.parametrize("source", ["patarm", "pairwise_judge"])
def test_cli_exits_2_on_a_bad_pair_file_before_the_model(tmp_path, capsys, monkeypatch, source):
    import rubricrl.trainer.trainer as trainer_module

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built before the data error was reported")

    monkeypatch.setattr(trainer_module, "make_engine", refuse)
    bad = _write(tmp_path / "pairs.jsonl", GOOD, {**GOOD, "pair_id": "p2", "rejected": "Hi."})
    code = main(
        ["train", "--set", f"reward.source={source}", "--set", f"data.dataset={bad}", "--set", "model.device=cpu",
         "--out", str(tmp_path / "run")]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and f"{bad}:2: field 'rejected': identical to 'chosen'" in err[0], err


def test_the_shipped_pairs_config_loads_for_both_sources():
    from rubricrl.configs import __file__ as configs_init

    path = Path(configs_init).parent / "pairs.yaml"
    cfg = load_config(path)
    assert (cfg.reward.source, cfg.data.dataset, cfg.data.prompts_per_step % 2) == ("patarm", "builtin:pairs", 0)
    assert load_config(path, ["reward.source=pairwise_judge"]).reward.source == "pairwise_judge"
