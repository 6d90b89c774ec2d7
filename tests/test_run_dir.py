"""A run directory holds one run: ``--resume`` writes where it reads, a used directory is
refused without ``--overwrite``, a second writer is refused; torn metrics, NaN metrics,
bad ``--out`` / ``trainer.steps``; ``rubricrl export`` round trip. In-process CLI runs
(the killed / concurrent processes are in test_faults.py)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from rubricrl.cli import main
from rubricrl.cli.grade import main_grade
from rubricrl.models import load_policy
from rubricrl.trainer import MetricsLog, RunDir, RunDirError, Trainer, plot_metrics
from rubricrl.trainer.metrics import summary_line
from tests.test_trainer_helpers import TINY_CLI_SETS, StubJudge, tiny_config

COMMON = [*TINY_CLI_SETS, "--set", "trainer.checkpoint_every=1"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A 2-step run with a checkpoint after each step."""
    run = tmp_path_factory.mktemp("base") / "run"
    assert main(["train", "--out", str(run), *COMMON, "--set", "trainer.steps=2"]) == 0
    return run


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _digest(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}


def _one_error_line(capsys, prefix: str = "rubricrl train: error: ") -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(prefix), err
    return err.strip()


# ---- --resume DIR reads and writes DIR --------------------------------------------------


def test_resuming_a_copy_writes_the_copy_not_the_original(base_run, tmp_path, monkeypatch, capsys):
    """The reported case: a run made with a relative --out, copied, and the copy resumed
    (from another working directory too) must leave the original untouched."""
    monkeypatch.chdir(tmp_path)
    Path("runs").mkdir()
    _copy(base_run, Path("runs/A"))
    _copy(Path("runs/A"), Path("runs/B"))
    original = _digest(Path("runs/A"))
    assert main(["train", "--resume", "runs/B", "--set", "trainer.steps=3"]) == 0
    assert "metrics: runs/B/metrics.jsonl" in capsys.readouterr().err
    assert _digest(Path("runs/A")) == original
    assert _steps(Path("runs/B")) == [1, 2, 3]
    assert (Path("runs/B/checkpoints/latest")).read_text().strip() == "step_000003"
    # the saved config names no directory: the run directory is wherever the run is
    saved = (Path("runs/B/checkpoints/step_000003/config.yaml")).read_text()
    assert "out_dir: ." in saved
    # from another folder, through a checkpoint directory: still the copy's run directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", "../runs/B/checkpoints/step_000003", "--set", "trainer.steps=4"]) == 0
    assert _steps(tmp_path / "runs/B") == [1, 2, 3, 4] and list(elsewhere.iterdir()) == []
    assert _digest(tmp_path / "runs/A") == original


def test_resume_is_bitwise_the_uninterrupted_run(base_run, tmp_path):
    full = tmp_path / "full"
    assert main(["train", "--out", str(full), *COMMON, "--set", "trainer.steps=3"]) == 0
    resumed = _copy(base_run, tmp_path / "resumed")
    assert main(["train", "--resume", str(resumed), "--set", "trainer.steps=3"]) == 0
    a = torch.load(full / "checkpoints/step_000003/model.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints/step_000003/model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refusals(base_run, tmp_path, capsys):
    run = _copy(base_run, tmp_path / "run")
    before = _digest(run)
    # nothing to train: trainer.steps not past the checkpoint's step
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_error_line(capsys)
    assert "at step 2 and trainer.steps is 2: nothing to train" in line
    # --out (or trainer.out_dir) cannot move a resumed run
    assert main(["train", "--resume", str(run), "--out", str(tmp_path / "x"), "--set", "trainer.steps=3"]) == 2
    assert "--out cannot move it" in _one_error_line(capsys)
    assert main(["train", "--resume", str(run), "--set", f"trainer.out_dir={tmp_path / 'x'}", "--set", "trainer.steps=3"]) == 2
    assert "trainer.out_dir (--out) cannot change" in _one_error_line(capsys)
    # an older checkpoint while newer ones exist: refused, they would be replaced
    assert main(["train", "--resume", str(run / "checkpoints/step_000001"), "--set", "trainer.steps=2"]) == 2
    assert "checkpoints after step 1 (step_000002)" in _one_error_line(capsys)
    # a checkpoint outside a run directory: there is no run to continue
    loose = _copy(run / "checkpoints/step_000002", tmp_path / "loose")
    assert main(["train", "--resume", str(loose), "--set", "trainer.steps=3"]) == 2
    assert "not a checkpoint inside a run directory" in _one_error_line(capsys)
    # nothing there
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "no such directory" in _one_error_line(capsys)
    assert not (tmp_path / "x").exists() and _digest(run) == before


def test_resume_an_older_checkpoint_with_overwrite_replays_the_run(base_run, tmp_path):
    run = _copy(base_run, tmp_path / "run")
    step2 = torch.load(run / "checkpoints/step_000002/model.pt", weights_only=True)
    assert main(["train", "--resume", str(run / "checkpoints/step_000001"), "--overwrite", "--set", "trainer.steps=2"]) == 0
    again = torch.load(run / "checkpoints/step_000002/model.pt", weights_only=True)
    assert all(torch.equal(step2[k], again[k]) for k in step2)  # deterministic replay of step 2
    assert _steps(run) == [1, 2]


# ---- one run per directory ---------------------------------------------------------------


def test_a_used_directory_is_refused_and_overwrite_starts_over(base_run, tmp_path, capsys):
    run = _copy(base_run, tmp_path / "run")
    before = _digest(run)
    assert main(["train", "--out", str(run), *COMMON, "--set", "trainer.steps=3"]) == 2
    line = _one_error_line(capsys)
    assert f"{run} already holds a run" in line and f"--resume {run}" in line and "--overwrite" in line
    assert _digest(run) == before
    assert main(["train", "--out", str(run), "--overwrite", *COMMON, "--set", "trainer.steps=3"]) == 0
    assert _steps(run) == [1, 2, 3]  # not [1, 2, 1, 2, 3]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000001", "step_000002", "step_000003"]


def test_overwrite_never_deletes_files_a_run_does_not_write(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["train", "--out", str(folder), "--overwrite", *COMMON, "--set", "trainer.steps=1"]) == 2
    assert "not a rubricrl run's (notes.txt)" in _one_error_line(capsys)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_out_that_is_a_file_exits_2(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["train", "--out", str(target), *COMMON]) == 2
    assert f"{target} is a file, not a directory" in _one_error_line(capsys)
    assert main(["train", "--out", str(target / "sub"), *COMMON]) == 2
    assert "a parent is a file" in _one_error_line(capsys)
    assert target.read_text() == "x"


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path):
    cfg = tiny_config(tmp_path)
    first = Trainer(cfg, judge=StubJudge())
    with pytest.raises(RunDirError, match=r"is in use by another run \(pid \d+"):
        Trainer(cfg, judge=StubJudge())
    with pytest.raises(RunDirError, match="in use"):
        RunDir.claim(tmp_path / "run", mode="resume")
    first.train()  # closes: the lock is released
    run = RunDir.claim(tmp_path / "run", mode="resume")
    run.release()
    with pytest.raises(RunDirError, match="already holds a run"):
        Trainer(cfg, judge=StubJudge())
    resumed = Trainer.from_checkpoint(tmp_path / "run", ["trainer.steps=3"], judge=StubJudge())
    assert resumed.step_count == 2 and [r["step"] for r in resumed.train()] == [3]


# ---- metrics.jsonl -----------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(base_run, tmp_path, caplog):
    run = _copy(base_run, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    with metrics.open("a") as fh:
        fh.write('{"step": 3, "policy_version": 3, "rew')  # a write cut short by a kill
    with caplog.at_level(logging.WARNING, logger="rubricrl.trainer.metrics"):
        assert main(["train", "--resume", str(run), "--set", "trainer.steps=3"]) == 0
    assert f"{metrics}:3: dropped a torn last line" in caplog.text
    assert _steps(run) == [1, 2, 3]


def test_a_bad_metrics_line_before_the_last_exits_2_naming_it(base_run, tmp_path, capsys):
    run = _copy(base_run, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{oops", *lines[1:]]) + "\n")
    assert main(["train", "--resume", str(run), "--set", "trainer.steps=3"]) == 2
    assert f"{metrics}:1: not a JSON line" in _one_error_line(capsys)


def test_non_finite_metrics_are_strings_and_read_back_as_floats(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append({"step": 1, "loss": float("nan"), "grad_norm": float("inf"), "kl": float("-inf"), "clipfrac": None})
    log.append({"step": 2, "loss": 0.5, "grad_norm": 1.0, "kl": None, "clipfrac": 0.25})
    first = json.loads(log.path.read_text().splitlines()[0])  # standard JSON: no NaN literals
    assert first == {"step": 1, "loss": "nan", "grad_norm": "inf", "kl": "-inf", "clipfrac": None}
    records = log.read()
    assert math.isnan(records[0]["loss"]) and records[0]["grad_norm"] == math.inf and records[0]["kl"] == -math.inf
    assert records[0]["clipfrac"] is None
    assert records[1] == {"step": 2, "loss": 0.5, "grad_norm": 1.0, "kl": None, "clipfrac": 0.25}
    log.truncate_after(1)  # a resume rewrites the file: the strings survive
    assert json.loads(log.path.read_text()) == first
    assert "nan" in summary_line({**records[0], "approx_kl": float("nan")})
    assert plot_metrics(log.read() + records[1:], tmp_path / "m.png").stat().st_size > 0


# ---- rubricrl export -----------------------------------------------------------------------


def test_export_round_trip(base_run, tmp_path, capsys):
    out = tmp_path / "exported"
    assert main(["export", str(base_run), "--out", str(out)]) == 0
    assert f"exported {base_run / 'checkpoints' / 'step_000002'}" in capsys.readouterr().out
    model, tokenizer = load_policy(out)
    saved = torch.load(base_run / "checkpoints/step_000002/model.pt", weights_only=True)
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert tokenizer("hello world")["input_ids"] == load_policy(None)[1]("hello world")["input_ids"]
    # train and grade load it
    assert main(["train", "--model", str(out), "--out", str(tmp_path / "again"), *COMMON, "--set", "trainer.steps=1"]) == 0
    example = tmp_path / "example.jsonl"
    assert main_grade(["--example", str(example)]) == 0
    row = json.loads(example.read_text().splitlines()[0])
    row["responses"], row["rubrics"] = row["responses"][:1], [r for r in row["rubrics"] if r["points"] > 0][:2]
    small = tmp_path / "small.jsonl"
    small.write_text(json.dumps(row) + "\n")
    assert main_grade([str(small), "--model", str(out), "--out", str(tmp_path / "graded.jsonl"), "--no-progress"]) == 0
    assert len((tmp_path / "graded.jsonl").read_text().splitlines()) == 1
    # refusals: a used --out, no checkpoint
    capsys.readouterr()
    assert main(["export", str(base_run), "--out", str(out)]) == 2
    assert "exists and is not empty" in _one_error_line(capsys, "rubricrl export: error: ")
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "no such directory" in _one_error_line(capsys, "rubricrl export: error: ")
