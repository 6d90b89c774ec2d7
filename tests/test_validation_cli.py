"""Bad input stops early with one line naming the key / file:line / field, exit 2 (issue #10).

Config keys, data files, ``grade`` / ``meta-eval`` / ``train`` on the command line, model
directories and the ops' shape checks. "Early" is checked where it matters: the model
must not be loaded before an error that needs no model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import torch

from rubricrl.cli import main
from rubricrl.config import ConfigError, TrainConfig, device_problem, load_config
from rubricrl.data.jsonl import DataError, iter_jsonl_objects, write_jsonl
from rubricrl.data.rubrics import load_meta_eval_jsonl, load_rubric_jsonl

ROOT = Path(__file__).resolve().parents[1]

ROW = {
    "prompt_id": "p1",
    "prompt": [{"role": "user", "content": "How do I boil an egg?"}],
    "rubrics": [{"criterion": "Gives a time", "points": 5}, {"criterion": "Is rude", "points": -2}],
    "response": "Boil it for 8 minutes.",
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write(path: Path, *rows: dict) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Make loading any model fail the test: the error under test must come first."""
    from rubricrl.engines import HFEngine

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input error was reported")

    monkeypatch.setattr(HFEngine, "from_path", refuse)


# --------------------------------------------------------------------------- config


def _float_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every config key whose annotation holds a float (float, float | None, list[float])."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            keys += _float_keys(tp, path + ".")
            continue
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
        if float in args:
            keys.append(path)
        elif typing.get_origin(tp) is list and typing.get_args(tp) == (float,):
            keys.append(path + "[1]")
    return keys


FLOAT_KEYS = _float_keys()


def test_float_keys_are_found():
    # The schema walk must see the keys the issue names, or the next test proves nothing.
    assert {"loss.kl_coef", "optim.weight_decay", "loss.entropy_coef", "optim.betas[1]", "loss.clip_c"} <= set(FLOAT_KEYS)
    assert len(FLOAT_KEYS) >= 17  # the schema has 17 today; new float keys are covered automatically


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", ".inf", ".nan", "1e999"])
def test_every_float_key_rejects_non_finite(key, bad):
    if key.endswith("[1]"):  # a list of floats: put the bad value in the second slot
        override = f"{key[:-3]}=[0.9, {bad}]"
    else:
        override = f"{key}={bad}"
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert err.value.path == key
    assert str(err.value).startswith(f"{key}: must be a finite number")


def test_non_finite_judge_option_is_named():
    with pytest.raises(ConfigError, match=r"^reward\.judge_options\.temperature: must be a finite number, got nan"):
        load_config(None, ["reward.judge_options={temperature: .nan}"])
    assert load_config(None, ["reward.judge_options={max_batch_tokens: 4096}"]).reward.judge_options == {"max_batch_tokens": 4096}


def test_non_finite_in_yaml_file_and_huge_int(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("loss:\n  kl_coef: .inf\n")
    with pytest.raises(ConfigError, match=r"^loss\.kl_coef: must be a finite number"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"^optim\.lr: must be a finite number"):
        load_config(None, ["optim.lr=" + "9" * 400])  # an int beyond the float range


def test_device_strings(monkeypatch):
    for good in ("auto", "cpu"):
        assert device_problem(good) is None
    for bad in ("foo", "gpu", "cuda:", "cuda:x", "CPU", ""):
        assert "expected auto, cpu, cuda or cuda:N" in device_problem(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "CUDA is not available" in device_problem("cuda")
    assert "CUDA is not available" in device_problem("cuda:0")
    with pytest.raises(ConfigError, match=r"^model\.device: 'cuda' but CUDA is not available"):
        load_config(None, ["model.device=cuda"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert device_problem("cuda") is None and device_problem("cuda:0") is None
    assert "only 1 CUDA device" in device_problem("cuda:1")


def test_data_files_are_checked_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.dataset: '/nonexistent/x\.jsonl': no such file"):
        load_config(None, ["data.dataset=/nonexistent/x.jsonl"])
    with pytest.raises(ConfigError, match=r"^data\.dataset: .*not a file"):
        load_config(None, [f"data.dataset={tmp_path}"])
    # mix_dataset is only read by reward.source=mix, and only then checked.
    load_config(None, ["data.mix_dataset=/nonexistent.jsonl"])
    with pytest.raises(ConfigError, match=r"^data\.mix_dataset: '/nonexistent\.jsonl': no such file"):
        load_config(None, ["reward.source=mix", "data.mix_dataset=/nonexistent.jsonl"])
    ok = _write(tmp_path / "ok.jsonl", ROW)
    assert load_config(None, [f"data.dataset={ok}"]).data.dataset == str(ok)


def test_loss_backend_is_checked_in_the_config(monkeypatch):
    with pytest.raises(ConfigError, match=r"^loss\.backend: expected one of torch, cpp, triton, cuda or null, got 'foo'"):
        load_config(None, ["loss.backend=foo"])
    assert load_config(None, ["loss.backend=torch"]).loss.backend == "torch"
    assert load_config(None, ["loss.backend=null"]).loss.backend is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("auto", "cpu"):
        with pytest.raises(ConfigError, match=rf"^loss\.backend: 'cuda' runs on CUDA tensors, but model\.device='{device}' places the model on cpu"):
            load_config(None, ["loss.backend=cuda", f"model.device={device}"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"^loss\.backend: 'cpp' runs on CPU tensors, but model\.device='auto' places the model on cuda"):
        load_config(None, ["loss.backend=cpp"])
    assert load_config(None, ["loss.backend=cuda", "model.device=cuda:0"]).loss.backend == "cuda"


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.kl_coef=inf", "loss.kl_coef: must be a finite number, got inf"),
        ("optim.weight_decay=inf", "optim.weight_decay: must be a finite number, got inf"),
        ("loss.entropy_coef=nan", "loss.entropy_coef: must be a finite number, got nan"),
        ("model.device=foo", "model.device: expected auto, cpu, cuda or cuda:N, got 'foo'"),
        ("data.dataset=/nonexistent", "data.dataset: '/nonexistent': no such file"),
        ("loss.backend=foo", "loss.backend: expected one of"),
    ],
)
def test_train_config_errors_exit_2_before_the_model_loads(override, message, tmp_path, capsys, no_model_load):
    assert main(["train", "--out", str(tmp_path / "run"), "--set", override]) == 2
    line = _error_line(capsys)
    assert line.startswith("rubricrl train: error: ") and message in line
    assert not (tmp_path / "run").exists()


def test_train_prompts_per_step_beyond_the_dataset_exits_2(tmp_path, capsys):
    data = _write(tmp_path / "d.jsonl", *({**ROW, "prompt_id": f"p{i}"} for i in range(3)))
    argv = ["train", "--out", str(tmp_path / "run"), "--set", f"data.dataset={data}", "--set", "data.prompts_per_step=7"]
    assert main([*argv, "--set", "trainer.steps=1"]) == 2
    line = _error_line(capsys)
    assert "data.prompts_per_step=7" in line and "only 3" in line and "<= 3" in line


def test_prompt_schedule_refuses_more_than_a_pool_holds():
    from rubricrl.pipeline.data import PromptSchedule, TrainPrompt

    pool = [TrainPrompt(f"p{i}", [{"role": "user", "content": str(i)}]) for i in range(5)]
    schedule = PromptSchedule([(pool, 1.0)], 5, seed=0)
    assert sorted(p.prompt_id for p in schedule.prompts_for(1)) == [f"p{i}" for i in range(5)]  # no repeats
    with pytest.raises(ValueError, match=r"data\.prompts_per_step=6: .* only 5"):
        PromptSchedule([(pool, 1.0)], 6, seed=0)
    # Two pools: 0.5 * 8 = 4 from the first (5 prompts: fine), 4 from the second (2: too many).
    # The suggested bound is the largest that fits every pool: 4 takes 2 + 2.
    with pytest.raises(ValueError, match=r"4 prompts from pool 1 .* only 2, .* use data\.prompts_per_step <= 4$"):
        PromptSchedule([(pool, 0.5), (pool[:2], 0.5)], 8, seed=0)
    assert PromptSchedule([(pool, 0.5), (pool[:2], 0.5)], 4, seed=0).counts == [2, 2]


# --------------------------------------------------------------------------- data files


def _raw_row(points_json: str) -> str:
    return (
        '{"prompt_id": "p2", "prompt": [{"role": "user", "content": "hi"}], '
        f'"rubrics": [{{"criterion": "c", "points": {points_json}}}], "response": "ok"}}\n'
    )


@pytest.mark.parametrize("digits", [400, 4300, 5000, 100_000])
def test_huge_integer_points_name_the_field(tmp_path, digits):
    path = tmp_path / "big.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + _raw_row("9" * digits))
    with pytest.raises(DataError) as err:
        load_rubric_jsonl(path)
    assert err.value.line == 2 and err.value.field == "rubrics[0].points"
    assert f"{path}:2: field 'rubrics[0].points': integer with {digits} digits is out of range" == str(err.value)


def test_huge_integer_anywhere_is_named(tmp_path):
    path = tmp_path / "big.jsonl"
    path.write_text('{"extra": {"n": [1, -' + "7" * 6000 + "]}}\n")
    with pytest.raises(DataError, match=r":1: field 'extra\.n\[1\]': integer with 6000 digits"):
        list(iter_jsonl_objects(path))


def test_large_but_representable_points_still_load(tmp_path):
    path = tmp_path / "ok.jsonl"
    path.write_text(_raw_row("1" + "0" * 300))  # 1e300 fits a float
    (prompt,) = load_rubric_jsonl(path)
    assert prompt.rubrics[0].points == 1e300


@pytest.mark.parametrize(
    "field, mutate",
    [
        ("prompt[0].content", lambda r: r["prompt"][0].update(content="a\ud800b")),
        ("rubrics[1].criterion", lambda r: r["rubrics"][1].update(criterion="\udfff")),
        ("response", lambda r: r.update(response="x" * 10 + "\udc80")),
        ("prompt_id", lambda r: r.update(prompt_id="p\ud83d")),
        ("rubrics[0].tags[0]", lambda r: r["rubrics"][0].update(tags=["\ud800"])),
    ],
)
def test_lone_surrogate_is_rejected_at_load(tmp_path, field, mutate):
    row = json.loads(json.dumps(ROW))
    mutate(row)
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(row) + "\n")  # json.dumps escapes it as \udXXX
    for load in (load_rubric_jsonl, lambda p: list(iter_jsonl_objects(p))):
        with pytest.raises(DataError) as err:
            load(path)
        assert err.value.line == 2 and err.value.field == field
        assert f":2: field '{field}': lone surrogate \\u" in str(err.value)
        str(err.value).encode("utf-8")  # the message itself is printable


def test_surrogate_pairs_are_fine(tmp_path):
    row = {**ROW, "response": "emoji \U0001F600"}
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(row) + "\n")  # ensure_ascii: written as the pair \ud83d\ude00
    assert "\\ud83d\\ude00" in path.read_text()
    assert list(iter_jsonl_objects(path))[0][1]["response"] == "emoji \U0001F600"


def test_surrogate_in_meta_eval_row(tmp_path):
    row = {"prompt": [{"role": "user", "content": "q"}], "completion": "\ud800", "rubric": "r",
           "binary_labels": [True], "category": "c"}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=r":1: field 'completion': lone surrogate"):
        load_meta_eval_jsonl(path)


def test_json_array_file_is_reported_as_not_jsonl(tmp_path):
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps([ROW, ROW], indent=2))
    compact = tmp_path / "compact.json"
    compact.write_text(json.dumps([ROW, ROW]) + "\n")
    obj = tmp_path / "obj.json"
    obj.write_text(json.dumps(ROW, indent=2))
    for path, words in ((pretty, "JSON array"), (compact, "JSON array"), (obj, "pretty-printed JSON")):
        with pytest.raises(DataError) as err:
            load_rubric_jsonl(path)
        assert err.value.line == 1
        assert words in str(err.value) and "must be JSONL: one JSON object per line" in str(err.value)
    # A torn line later in a file is plain invalid JSON, with no JSONL lecture.
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(ROW) + "\n[1,\n")
    with pytest.raises(DataError) as err:
        load_rubric_jsonl(torn)
    assert err.value.line == 2 and "invalid JSON" in str(err.value) and "JSONL" not in str(err.value)


# --------------------------------------------------------------------------- write_jsonl


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_write_jsonl_respects_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        target = tmp_path / "out.jsonl"
        assert write_jsonl(target, [{"a": 1}]) == 1
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what open(path, "w") gives under the same umask
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask
    assert [json.loads(line) for line in target.read_text().splitlines()] == [{"a": 1}]


def test_write_jsonl_errors_name_the_target_not_a_temp_file(tmp_path):
    folder = tmp_path / "a_dir"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as err:
        write_jsonl(folder, [{"a": 1}])
    assert err.value.filename == str(folder) and ".tmp" not in str(err.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as err:
        write_jsonl(blocker / "out.jsonl", [{"a": 1}])
    assert err.value.filename == str(blocker / "out.jsonl") and ".tmp" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "file"]  # no temp file left behind
    assert list(folder.iterdir()) == []


# --------------------------------------------------------------------------- grade / meta-eval


def test_grade_bad_inputs_exit_2_before_the_model_loads(tmp_path, capsys, no_model_load):
    ok = _write(tmp_path / "ok.jsonl", ROW)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    cases = [
        ([str(empty), "--out", str(tmp_path / "o.jsonl")], f"{empty}: no rows to grade"),
        ([str(ok), "--out", str(tmp_path / "missing" / "o.jsonl")], "folder '" + str(tmp_path / "missing") + "' does not exist"),
        ([str(ok), "--out", str(tmp_path)], f"--out {tmp_path}: is a directory"),
        ([str(ok), "--out", str(blocker / "o.jsonl")], f"folder '{blocker}' is not a directory"),
        ([str(ok), "--out", str(ok)], "--out must differ from INPUT"),
        ([str(ok), "--out", str(tmp_path / "o.jsonl"), "--device", "foo"], "--device: expected auto, cpu, cuda or cuda:N"),
    ]
    for argv, message in cases:
        assert main(["grade", *argv, "--no-progress"]) == 2, argv
        line = _error_line(capsys)
        assert line.startswith("rubricrl: error: ") and message in line, (argv, line)
        assert ".tmp" not in line
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders: the permission check cannot fail")
def test_grade_unwritable_out_folder(tmp_path, capsys, no_model_load):
    ok = _write(tmp_path / "ok.jsonl", ROW)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["grade", str(ok), "--out", str(locked / "o.jsonl")]) == 2
    finally:
        locked.chmod(0o755)
    assert f"folder '{locked}' is not writable" in _error_line(capsys)


def test_grade_and_meta_eval_empty_inputs_agree(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["grade", str(empty), "--out", str(tmp_path / "o.jsonl")]) == 2
    grade_line = _error_line(capsys)
    assert main(["meta-eval", str(empty)]) == 2
    meta_line = _error_line(capsys)
    assert grade_line == f"rubricrl: error: {empty}: no rows to grade (the file has no JSON object lines)"
    assert meta_line == f"rubricrl: error: {empty}: no meta-evaluation rows (the file has no JSON object lines)"


def test_grade_prompt_longer_than_the_context_is_an_error(tmp_path, capsys):
    from rubricrl.models.tiny import build_tiny_model

    context = build_tiny_model().config.max_position_embeddings
    short = {**ROW, "prompt_id": "short"}
    long = {**ROW, "prompt_id": "too-long", "prompt": [{"role": "user", "content": "word " * context}]}
    path = _write(tmp_path / "in.jsonl", short, long)
    out = tmp_path / "o.jsonl"
    for judge in (["--judge", "logprob"], ["--judge", "generate", "--max-new-tokens", "4"]):
        assert main(["grade", str(path), "--out", str(out), "--no-progress", *judge]) == 2
        line = _error_line(capsys)
        assert f"{path}:2: prompt_id 'too-long': the longest judge prompt is " in line
        n = int(line.split("the longest judge prompt is ")[1].split()[0])
        assert n > context and f"more than the model's context of {context}" in line
    assert not out.exists()


def test_generate_judge_counts_its_new_tokens_against_the_context(tmp_path, capsys):
    """A prompt that fits, but not with the judge's new tokens on top, is refused too."""
    from rubricrl.cli._common import judge_prompt_tokens
    from rubricrl.data.rubrics import RubricItem
    from rubricrl.engines import HFEngine
    from rubricrl.judges import make_judge

    engine = HFEngine.from_path(None)
    items = [RubricItem("Gives a time", 5.0)]
    small = make_judge("generate", max_new_tokens=4)
    big = make_judge("generate", max_new_tokens=400)
    conv = ROW["prompt"]
    assert judge_prompt_tokens(big, engine, conv, ["ok"], items) - judge_prompt_tokens(small, engine, conv, ["ok"], items) == 396
    # The logprob judge's count is its three segments, as the judge itself tokenizes them.
    lp = make_judge("logprob")
    enc = lp.prompt_encoder(engine.tokenizer)
    expected = len(enc.prefix_ids(conv)) + len(enc.response_ids("ok")) + len(enc.suffix_ids(items[0]))
    assert judge_prompt_tokens(lp, engine, conv, ["ok"], items) == expected


def test_meta_eval_row_longer_than_the_context_is_an_error(tmp_path, capsys):
    row = {"prompt": [{"role": "user", "content": "q"}], "completion": "word " * 3000, "rubric": "r",
           "binary_labels": [True], "category": "c"}
    path = _write(tmp_path / "m.jsonl", {**row, "completion": "short"}, row)
    assert main(["meta-eval", str(path), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert f"{path}: row 2: the longest judge prompt is" in line and "context of 2048" in line


def test_grade_output_mode_follows_the_umask(tmp_path):
    path = _write(tmp_path / "in.jsonl", ROW)
    out = tmp_path / "o.jsonl"
    old = os.umask(0o022)
    try:
        assert main(["grade", str(path), "--out", str(out), "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert json.loads(out.read_text())["prompt_id"] == "p1"


# --------------------------------------------------------------------------- model directories


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from rubricrl.models.loading import load_policy

    folder = tmp_path_factory.mktemp("model") / "tiny"
    model, tokenizer = load_policy(None)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file()
    return folder


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_names_the_file(saved_model, tmp_path, damage):
    from rubricrl.models.loading import load_policy

    folder = _copy_model(saved_model, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a safetensors file" * 4)
    with pytest.raises(ValueError) as err:
        load_policy(folder)
    message = str(err.value)
    assert f"cannot read {weights} (corrupt or truncated? SafetensorError" in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_pytorch_bin_names_the_file(saved_model, tmp_path, damage):
    from safetensors.torch import load_file

    from rubricrl.models.loading import load_policy

    folder = _copy_model(saved_model, tmp_path / "m")
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    weights = folder / "pytorch_model.bin"
    torch.save(state, weights)
    model, _ = load_policy(folder)  # intact: loads
    assert sum(p.numel() for p in model.parameters()) > 0
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"garbage" * 10)
    with pytest.raises(ValueError) as err:
        load_policy(folder)
    assert f"cannot read {weights} (corrupt or truncated?" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_model_exits_2(saved_model, tmp_path, capsys):
    folder = _copy_model(saved_model, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    data = _write(tmp_path / "in.jsonl", ROW)
    runs = [
        ["grade", str(data), "--out", str(tmp_path / "o.jsonl"), "--model", str(folder), "--no-progress"],
        ["train", "--out", str(tmp_path / "run"), "--model", str(folder)],
    ]
    for argv in runs:
        assert main(argv) == 2
        assert f"cannot read {folder / 'model.safetensors'} (corrupt or truncated?" in _error_line(capsys)


def test_real_entry_point_exit_codes(tmp_path):
    """Through ``python -m rubricrl.cli``, as a user meets it: exit 2, one line, no traceback."""
    big = tmp_path / "big.jsonl"
    big.write_text(_raw_row("9" * 5000))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cases = [
        (["grade", str(big), "--out", str(tmp_path / "o.jsonl")], f"{big}:1: field 'rubrics[0].points': integer with 5000 digits"),
        (["train", "--out", str(tmp_path / "r"), "--set", "loss.kl_coef=inf"], "loss.kl_coef: must be a finite number"),
    ]
    for argv, message in cases:
        proc = subprocess.run([sys.executable, "-m", "rubricrl.cli", *argv], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (argv, proc.stderr)


def test_surrogate_in_the_training_data_exits_2(tmp_path, capsys):
    # (The trainer builds the engine before it reads the data, so the model does load first.)
    sur = tmp_path / "sur.jsonl"
    sur.write_text(json.dumps(ROW).replace("How do", "How \\ud800 do") + "\n")
    assert main(["train", "--out", str(tmp_path / "r"), "--set", f"data.dataset={sur}", "--set", "model.device=cpu"]) == 2
    assert f"{sur}:1: field 'prompt[0].content': lone surrogate" in _error_line(capsys)


# --------------------------------------------------------------------------- ops


def test_zero_hidden_size_is_named():
    from rubricrl.ops import fused_linear_grpo_loss, fused_linear_logprobs, span_mean_prob, verdict_probs

    hidden, weight = torch.randn(1, 3, 0), torch.randn(5, 0)
    targets = torch.tensor([[1, 2, 3]])
    calls = [
        lambda: fused_linear_logprobs(hidden, weight, targets),
        lambda: fused_linear_grpo_loss(hidden, weight, targets, torch.zeros(1, 3), torch.ones(1), torch.ones(1, 3)),
        lambda: verdict_probs(hidden[0], weight, [1], [2]),
        lambda: span_mean_prob(hidden[0], weight, targets[0], torch.zeros(3, dtype=torch.long), 1),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"weight \[V, H\] must have V >= 1 and H >= 1, got shape \(5, 0\): H \(hidden size\) is 0"):
            call()
    with pytest.raises(ValueError, match=r"got shape \(0, 4\): V \(vocabulary size\) is 0"):
        fused_linear_logprobs(torch.randn(3, 4), torch.randn(0, 4), torch.tensor([0, 0, 0]))


def test_finite_values_still_pass():
    """The checks above are not over-eager: a normal config and data file load unchanged."""
    cfg = load_config(None, ["loss.kl_coef=0.05", "optim.weight_decay=0.0", "loss.clip_c=3", "model.device=cpu"])
    assert cfg.loss.kl_coef == 0.05 and cfg.loss.clip_c == 3.0 and math.isfinite(cfg.optim.lr)
