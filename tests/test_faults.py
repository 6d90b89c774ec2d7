"""Fault injection: ``rubricrl train`` killed (SIGKILL) at named and at random points,
interrupted (SIGINT), run three times at once on one directory, and resumed from
damaged checkpoints. A killed-and-resumed run must end bitwise equal (weights, optimizer
state, metrics but timings) to an uninterrupted run.

Each run is a forked child of this process (the imports are done once, here) calling the
CLI's ``main``; the kills at named points come from the trainer's test hook
(``RUBRICRL_FAULT_KILL``, rubricrl/trainer/faults.py), the random ones from a timer here.
``RUBRICRL_FAULT_CHAINS=N`` runs N kill chains instead of the default.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

import rubricrl.judges  # noqa: F401  (imported before forking, so children start at once)
import rubricrl.pipeline  # noqa: F401
import rubricrl.trainer  # noqa: F401
from rubricrl.cli import main
from rubricrl.trainer.checkpoint import list_checkpoints
from rubricrl.trainer.faults import ENV, POINTS
from rubricrl.trainer.rundir import LOCK_NAME, RunDir
from tests.test_trainer_e2e import TIMING
from tests.test_trainer_helpers import TINY_CLI_SETS

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

BASE = TINY_CLI_SETS

#: Two runs: eta 0 with a checkpoint every step, and eta 1 (the streaming pipeline, its
#: reproducible ``scheduled`` versions) with a checkpoint every 2 steps (pending batches in
#: the checkpoint; metrics cut back on resume).
CONFIGS = {
    "sync": {"steps": 3, "every": 1, "args": ["--set", "trainer.seed=0"]},
    "eta1": {
        "steps": 4,
        "every": 2,
        "args": ["--set", "trainer.seed=1", "--set", "pipeline.eta=1", "--set", "pipeline.overlap=thread",
                 "--set", "pipeline.behaviour_version=scheduled"],
    },
}
CHILD_TIMEOUT_S = 300


def _config_args(name: str) -> list[str]:
    c = CONFIGS[name]
    return [*BASE, *c["args"], "--set", f"trainer.steps={c['steps']}", "--set", f"trainer.checkpoint_every={c['every']}"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- running the CLI in a child ------------------------------------------------------


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Fork a child that runs ``rubricrl <argv>`` with its stdout/stderr in ``log``; its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:  # the child: never return into pytest
        os.environ.pop(ENV, None)
        os.environ.update(env or {})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        fh = open(log, "w", buffering=1, encoding="utf-8")
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        sys.stdout = sys.stderr = fh
        code = main(argv)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
        finally:
            os._exit(code)


def wait(pid: int, timeout: float = CHILD_TIMEOUT_S) -> tuple[str, int]:
    """``("exit", status)`` or ``("signal", signum)`` of a child."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"child {pid} ran longer than {timeout}s")
        time.sleep(0.02)
    if os.WIFSIGNALED(status):
        return "signal", os.WTERMSIG(status)
    return "exit", os.WEXITSTATUS(status)


def run(argv: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[str, int]:
    return wait(spawn(argv, log, env))


# ---- comparing runs --------------------------------------------------------------------


def final_state(run_dir: Path, steps: int) -> dict:
    ckpt = run_dir / "checkpoints" / f"step_{steps:06d}"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        "model": torch.load(ckpt / "model.pt", weights_only=True),
        "optimizer": torch.load(ckpt / "optimizer.pt", weights_only=True),
        "metrics": [{k: v for k, v in r.items() if k not in TIMING} for r in records],
    }


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def same_run(a: dict, b: dict) -> bool:
    return _equal(a["model"], b["model"]) and _equal(a["optimizer"], b["optimizer"]) and a["metrics"] == b["metrics"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs of each config: final state and wall time."""
    root = tmp_path_factory.mktemp("reference")
    out = {}
    for name, c in CONFIGS.items():
        t0 = time.monotonic()
        assert run(["train", "--out", str(root / name), *_config_args(name)], root / f"{name}.log") == ("exit", 0)
        state = final_state(root / name, c["steps"])
        assert [r["step"] for r in state["metrics"]] == list(range(1, c["steps"] + 1))
        assert sum(r["trained_responses"] for r in state["metrics"]) > 0  # the weights do change
        out[name] = {"state": state, "seconds": time.monotonic() - t0}
    return out


# ---- kill chains -------------------------------------------------------------------------


def _resume_step(run_dir: Path) -> int:
    ckpts = list_checkpoints(run_dir / "checkpoints")
    return int(ckpts[-1].name.split("_")[1]) if ckpts else 0


def _reachable(point: str, name: str, done: int) -> int:
    """How many times a run of config ``name`` resumed after step ``done`` reaches ``point``."""
    c = CONFIGS[name]
    left = c["steps"] - done
    if point in ("checkpoint", "latest"):
        return sum(1 for s in range(done + 1, c["steps"] + 1) if s % c["every"] == 0 or s == c["steps"])
    if point == "rollout" and "pipeline.eta=1" in c["args"] and done > 0:
        return left - 1  # the next step's batch was sampled before the checkpoint and is restored
    return left


def kill_chain(seed: int, root: Path, reference: dict, counts: dict) -> None:
    """Run one config to the end through 1-3 kills chosen by ``seed``; compare with the
    uninterrupted run."""
    rng = random.Random(seed)
    name = rng.choice(sorted(CONFIGS))
    c = CONFIGS[name]
    run_dir = root / f"chain{seed}"
    kills = rng.randint(1, 3)
    for attempt in range(kills + 1):
        log = root / f"chain{seed}-{attempt}.log"
        done = _resume_step(run_dir) if attempt else 0
        if attempt and done == c["steps"]:  # killed after its final checkpoint: the run is complete
            assert run(["train", "--resume", str(run_dir)], log) == ("exit", 2)
            assert "nothing to train" in log.read_text()
            break
        env, timer = None, None
        if attempt < kills:
            if rng.random() < 0.25:  # a random moment instead of a named point
                timer = rng.uniform(0.05, 1.0) * reference[name]["seconds"]
            else:
                point, n = rng.choice([(p, n) for p in POINTS for n in range(1, _reachable(p, name, done) + 1)])
                env = {ENV: f"{point}:{n}"}
        if attempt == 0:
            argv = ["train", "--out", str(run_dir), *_config_args(name)]
        elif done == 0:  # killed before the first checkpoint: nothing to resume, start over
            assert run(["train", "--resume", str(run_dir)], log.with_suffix(".resume")) == ("exit", 2)
            argv = ["train", "--out", str(run_dir), "--overwrite", *_config_args(name)]
        else:
            argv = ["train", "--resume", str(run_dir)]
            counts["resumed"] += 1
        pid = spawn(argv, log, env)
        if timer is not None:
            time.sleep(timer)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        outcome = wait(pid)
        if outcome == ("signal", signal.SIGKILL):
            counts["killed"] += 1
            counts["timer_kills" if timer is not None else "named_kills"] += 1
            # the kernel dropped the dead run's lock: the directory can be claimed at once
            assert (run_dir / LOCK_NAME).exists()
            RunDir.claim(run_dir, mode="resume").release()
            continue
        assert outcome == ("exit", 0), (argv, env, outcome, log.read_text()[-2000:])
        assert env is None, f"{env} was reachable but the run finished: {log.read_text()[-500:]}"
        break
    identical = same_run(final_state(run_dir, c["steps"]), reference[name]["state"])
    counts["identical" if identical else "different"] += 1
    assert identical, f"chain {seed} ({name}) differs from the uninterrupted run"


def test_killed_runs_resume_bitwise_equal(reference, tmp_path, record_property):
    chains = int(os.environ.get("RUBRICRL_FAULT_CHAINS", "8"))
    counts = dict.fromkeys(("chains", "killed", "named_kills", "timer_kills", "resumed", "identical", "different"), 0)
    for seed in range(chains):
        counts["chains"] += 1
        kill_chain(seed, tmp_path, reference, counts)
    print(f"\nfault injection: {counts}")
    record_property("fault_counts", json.dumps(counts))
    assert counts["identical"] == chains and counts["named_kills"] >= chains // 2


# ---- concurrent writers, SIGINT ----------------------------------------------------------


def test_three_writers_on_one_directory_give_one_run(reference, tmp_path):
    run_dir = tmp_path / "shared"
    pids = [spawn(["train", "--out", str(run_dir), *_config_args("sync")], tmp_path / f"w{i}.log") for i in range(3)]
    outcomes = [wait(pid) for pid in pids]
    assert sorted(outcomes) == [("exit", 0), ("exit", 2), ("exit", 2)], outcomes
    for i, outcome in enumerate(outcomes):
        text = (tmp_path / f"w{i}.log").read_text()
        assert "Traceback" not in text
        if outcome == ("exit", 2):
            lines = text.strip().splitlines()
            assert len(lines) == 1 and str(run_dir) in lines[0]
            assert "in use by another run (pid" in lines[0] or "already holds a run" in lines[0], lines[0]
    # the winner's run is exactly the uninterrupted one: nothing interleaved
    assert same_run(final_state(run_dir, 3), reference["sync"]["state"])


def _wait_for(predicate, pid: int, timeout: float = CHILD_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the run never reached the point to interrupt")
        time.sleep(0.01)


def test_ctrl_c_exits_130_in_one_line_and_the_run_resumes(reference, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "a.log"
    pid = spawn(["train", "--out", str(run_dir), *_config_args("sync")], log)
    _wait_for(lambda: (run_dir / "checkpoints" / "step_000001").is_dir(), pid)
    os.kill(pid, signal.SIGINT)
    outcome = wait(pid)
    text = log.read_text()
    if outcome == ("exit", 0):
        pytest.skip("the run finished before the interrupt arrived")  # not seen on a 2-core machine
    assert outcome == ("exit", 130) and "Traceback" not in text, text
    (line,) = [ln for ln in text.splitlines() if "interrupted" in ln]
    assert line.startswith("rubricrl train: interrupted after step ") and f"--resume {run_dir}" in line
    assert run(["train", "--resume", str(run_dir)], tmp_path / "b.log") == ("exit", 0)
    assert same_run(final_state(run_dir, 3), reference["sync"]["state"])


def test_ctrl_c_before_the_first_checkpoint_then_start_over(reference, tmp_path):
    """The everyday path: nothing to resume, a plain rerun is refused, --overwrite starts clean."""
    run_dir = tmp_path / "run"
    args = _config_args("sync") + ["--set", "trainer.checkpoint_every=0"]  # only the final checkpoint
    pid = spawn(["train", "--out", str(run_dir), *args], tmp_path / "a.log")
    metrics = run_dir / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, pid)
    os.kill(pid, signal.SIGINT)
    outcome = wait(pid)
    if outcome == ("exit", 0):
        pytest.skip("the run finished before the interrupt arrived")
    text = (tmp_path / "a.log").read_text()
    assert outcome == ("exit", 130) and "Traceback" not in text and "no checkpoint was written" in text, text
    assert run(["train", "--resume", str(run_dir)], tmp_path / "b.log") == ("exit", 2)
    assert "stopped before its first checkpoint" in (tmp_path / "b.log").read_text()
    assert run(["train", "--out", str(run_dir), *args], tmp_path / "c.log") == ("exit", 2)
    assert "--overwrite" in (tmp_path / "c.log").read_text()
    assert run(["train", "--out", str(run_dir), "--overwrite", *args], tmp_path / "d.log") == ("exit", 0)
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3]
    assert same_run(final_state(run_dir, 3), reference["sync"]["state"])


# ---- damaged checkpoints -----------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(0)
    for _ in range(64):
        data[rng.randrange(len(data) // 4, len(data))] ^= 0xFF
    path.write_bytes(bytes(data[:64]) + b"\x00" * 64 + bytes(data[128:]))


DAMAGE = {
    "truncated": _truncate,
    "corrupt": _garbage,
    "empty": lambda p: p.write_bytes(b""),
    "missing": lambda p: p.unlink(),
    "not_a_checkpoint": lambda p: torch.save({"hello": "world"}, p),
}


@pytest.fixture(scope="module")
def two_step_run(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("two_step")
    args = _config_args("sync") + ["--set", "trainer.steps=2"]
    assert run(["train", "--out", str(root / "run"), *args], root / "log") == ("exit", 0)
    return root / "run"


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("name", ["model.pt", "optimizer.pt", "state.pt"])
def test_damaged_checkpoint_file_is_named_and_exits_2(two_step_run, tmp_path, capsys, name, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(two_step_run, run_dir)
    target = run_dir / "checkpoints" / "step_000002" / name
    DAMAGE[damage](target)
    before = (run_dir / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(run_dir), "--set", "trainer.steps=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rubricrl train: error: ") and str(target) in err, err
    assert (run_dir / "metrics.jsonl").read_bytes() == before  # nothing touched


def test_a_checkpoint_of_another_model_is_named(two_step_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(two_step_run, run_dir)
    target = run_dir / "checkpoints" / "step_000002" / "model.pt"
    weights = torch.load(target, weights_only=True)
    weights["lm_head.weight"] = weights["lm_head.weight"][:, :7].clone()
    torch.save(weights, target)
    assert main(["train", "--resume", str(run_dir), "--set", "trainer.steps=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(target) in err and "lm_head.weight" in err, err
