"""The trainer on Ray (``distributed.backend=ray``), on a local 2-CPU Ray cluster started
once for the module: engine workers and trainer ranks as actors (0.5 CPU each).

* exactness: a 2-step CLI run with 1 engine worker and 2 data-parallel trainer ranks, and
  a 1-rank run (the engine-fault test's), give the weights (after every step) of the single-process trainer, within
  fp32 reduction-order tolerance; the sampled batches are the same (same rewards, same
  trained responses);
* faults: an engine worker killed mid-step (``ray.kill``) is restarted by Ray and its groups
  are re-sampled, counted once (the run equals the uninterrupted one); a trainer rank
  killed mid-step stops the run with a one-line error naming the checkpoint, which resumes
  to the uninterrupted run's weights.
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml

ray = pytest.importorskip("ray", reason="ray is not installed (requirements-peers.txt pins it; make test installs it)")

from rubricrl.cli import main  # noqa: E402
from rubricrl.config import config_from_dict, config_to_dict  # noqa: E402
from rubricrl.distributed import TrainerRankError  # noqa: E402
from rubricrl.distributed.ray_trainer import RayTrainer  # noqa: E402
from rubricrl.trainer import MetricsLog, Trainer  # noqa: E402

#: the run every test trains: 3 prompts x 3 responses, 2 optimizer steps of 2-row micro-batches
#: per training step, so the two ranks get unequal shares of a mini-batch
SETTINGS = {
    "model": {"device": "cpu"},
    "data": {"prompts_per_step": 3},
    "rollout": {"n": 3, "max_new_tokens": 8},
    "optim": {"lr": 1e-3, "eps": 1e-4, "micro_batch_size": 2, "updates_per_step": 2},
    "trainer": {"steps": 2, "checkpoint_every": 1, "progress": False, "plot": False, "log_every": 1000},
}
#: the Ray side: 1 engine worker, 2 trainer ranks, half a CPU each (3 actors on 2 CPUs)
RAY = {"backend": "ray", "engine_workers": 1, "trainer_ranks": 2, "engine_num_cpus": 0.5, "trainer_num_cpus": 0.5}

# Two ranks sum their shares of a gradient in another order than one process: the
# weights after a step differ by fp32 rounding (measured: 8e-8). AdamW passes a rounding
# difference of a gradient component of size ~eps on nearly whole (its first step is
# lr * g / (|g| + eps)); eps = 1e-4 instead of 1e-8 keeps such components in the linear
# regime, so the bound is tight: 0.1% of one step (lr = 1e-3). One rank is bitwise the
# single process (same rows, same order, same single thread: see `one_thread`).
ATOL = 1e-6
# Step 2 samples and grades with step 1's weights (equal within ATOL); a group whose scores
# nearly tie has a tiny std, and dividing by it (advantages.norm_by_std) turns those
# differences into visible ones. 1% of a step.
ATOL_STEP2 = 1e-5


def config(out, **sections):
    raw = {k: dict(v) for k, v in SETTINGS.items()}
    raw["trainer"]["out_dir"] = str(out)
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw).validate()


def sets(section: str, values: dict) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{section}.{k}={v}")]


def weights(run, step):
    return torch.load(run / "checkpoints" / f"step_{step:06d}" / "model.pt", weights_only=True)


def assert_same_weights(run, reference, step, atol=ATOL):
    got, want = weights(run, step), weights(reference, step)
    assert got.keys() == want.keys()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert worst <= atol, f"step {step}: weights differ by {worst:.3g} (> {atol})"


def same_batches(run, reference, steps):
    """The same responses were sampled and trained on (counts equal), with the same scores
    and loss (within fp32 noise: from step 2 on, the weights that grade differ within ATOL)."""
    got, want = MetricsLog(run / "metrics.jsonl").read(), MetricsLog(reference / "metrics.jsonl").read()
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    for g, w in zip(got, want[:steps]):
        for key in ("responses", "trained_responses", "trained_tokens", "dropped_groups", "policy_version"):
            assert g[key] == w[key], (g["step"], key, g[key], w[key])
        # the same responses, graded by weights equal within ATOL: equal scores within fp32 noise
        for key in ("reward_mean", "reward_std", "loss"):
            assert math.isclose(g[key], w[key], rel_tol=1e-3, abs_tol=1e-5), (g["step"], key, g[key], w[key])
    return got


@pytest.fixture(scope="module", autouse=True)
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The single-process reference runs with one torch thread, as the half-CPU actors do:
    another thread count may sum the matmuls in another order, and the 1-rank run is
    compared bit for bit."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The single-process trainer's 2-step run, a checkpoint after each step."""
    out = tmp_path_factory.mktemp("single") / "run"
    trainer = Trainer(config(out))
    trainer.train()
    return out


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory):
    """``rubricrl train --config C --set distributed...``: 1 engine worker, 2 trainer ranks,
    2 steps; C is the reference's config (SETTINGS) as YAML, so only the backend differs."""
    tmp = tmp_path_factory.mktemp("ray2")
    out = tmp / "run"
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(config(out))), encoding="utf-8")
    assert main(["train", "--config", str(path), *sets("distributed", RAY)]) == 0
    return out


def test_cli_two_ranks_equal_single_process(ray_run, reference):
    out = ray_run
    records = same_batches(out, reference, 2)
    assert_same_weights(out, reference, 1)
    assert_same_weights(out, reference, 2, atol=ATOL_STEP2)
    # the update moved the weights by far more than the tolerance: the comparison can fail
    moved = max((weights(out, 2)[k] - weights(out, 1)[k]).abs().max().item() for k in weights(out, 1))
    assert moved > 50 * ATOL
    assert all(r["resampled_groups"] == 0 and r["engine_restarts"] == 0 for r in records)
    assert all(r["sample_version"] == r["step"] - 1 for r in records)  # on-policy: synced before each step


def test_engine_worker_killed_mid_step_is_restarted_and_resampled(tmp_path, reference):
    killed = []

    def kill_worker(stage, step, fleet):
        if stage == "rollout" and step == 2 and not killed:
            killed.append(step)
            ray.kill(fleet.actors[0], no_restart=False)  # Ray restarts it (max_restarts)

    out = tmp_path / "kill-engine"
    trainer = RayTrainer(config(out, distributed={**RAY, "trainer_ranks": 1}), fault_hook=kill_worker)
    trainer.train()
    assert killed == [2]
    records = same_batches(out, reference, 2)
    # step 2's three groups were lost with the worker and sampled again, once each
    assert [r["resampled_groups"] for r in records] == [0, 3]
    assert [r["engine_restarts"] for r in records] == [0, 1]
    assert records[1]["responses"] == 3 * 3
    # one trainer rank: bitwise the single-process weights after each step (step 1 had no fault)
    assert_same_weights(out, reference, 1, atol=0.0)
    assert_same_weights(out, reference, 2, atol=0.0)


def test_trainer_rank_killed_stops_with_resumable_checkpoint(tmp_path, reference, ray_run):
    def kill_rank(stage, step, trainer):
        if stage == "update" and step == 2:
            ray.kill(trainer.ranks.actors[1], no_restart=True)

    out = tmp_path / "kill-rank"
    trainer = RayTrainer(config(out, distributed=RAY), fault_hook=kill_rank)
    with pytest.raises(TrainerRankError) as err:
        trainer.train()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("step 2: trainer rank 1 died")
    assert "resume from step_000001 with: rubricrl train --resume" in message
    assert trainer.ranks is None and trainer.fleet is None  # the actors are gone
    assert not (out / "checkpoints" / "step_000002").exists()
    assert [r["step"] for r in MetricsLog(out / "metrics.jsonl").read()] == [1]

    # step 1 was the uninterrupted Ray run's step 1 (same config, same 2 ranks) ...
    assert_same_weights(out, ray_run, 1, atol=0.0)
    resumed = RayTrainer.from_checkpoint(out)
    assert resumed.step_count == 1
    resumed.train()
    # ... and the resumed step 2 is its step 2, bit for bit (the same sums in the same order)
    same_batches(out, ray_run, 2)
    assert_same_weights(out, ray_run, 2, atol=0.0)


def test_cli_refusals_are_one_line(tmp_path, capsys):
    base = ["train", "--out", str(tmp_path / "r"), "--set", "model.device=cpu", *sets("distributed", RAY)]
    assert main([*base, "--set", "reward.source=rlpr"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "reward.source" in err and "distributed.backend=ray" in err
    assert main([*base, "--set", "pipeline.eta=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pipeline.eta" in err
    # more GPUs than the cluster has: refused when placing, before any actor starts
    assert main([*base, "--set", "distributed.trainer_num_gpus=1", "--set", "distributed.timeout_s=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot place" in err and "distributed.trainer_num_*" in err


def test_chunks_and_seeds():
    from rubricrl.distributed.engine_worker import chunk_seed, split_groups
    from rubricrl.pipeline.rollout import rollout_seed

    assert split_groups(5, 2) == [range(0, 3), range(3, 5)]
    assert split_groups(1, 3) == [range(0, 1), range(1, 1), range(1, 1)]
    assert [list(r) for r in split_groups(4, 1)] == [[0, 1, 2, 3]]
    # one worker samples with the single-process seed; other chunks with other seeds
    assert chunk_seed(7, 3, 0) == rollout_seed(7, 3)
    assert len({chunk_seed(7, 3, c) for c in range(8)}) == 8


def test_merge_rewards_by_hand():
    from rubricrl.distributed.engines import merge_rewards
    from rubricrl.pipeline import RewardOutput

    a = RewardOutput([0.5, None], 3, None, {"failed_judgments": 1.0, "verdict_mass": 0.9, "verdict_accuracy": math.nan})
    b = RewardOutput([1.0, 0.0, 0.25, 0.75], 4, None, {"failed_judgments": 2.0, "verdict_mass": 0.6, "verdict_accuracy": 0.5})
    out = merge_rewards([(a, 1), (b, 2)])  # 1 and 2 groups
    assert out.scores == [0.5, None, 1.0, 0.0, 0.25, 0.75]
    assert out.judge_version == 4 and out.keep_groups is None
    assert out.counts["failed_judgments"] == 3.0
    assert out.counts["verdict_mass"] == pytest.approx((0.9 * 1 + 0.6 * 2) / 3)
    assert out.counts["verdict_accuracy"] == 0.5  # the NaN chunk had no verdict prompt
    kept = merge_rewards([(RewardOutput([1.0, 0.0], 1, [False], {}), 1), (b, 2)])
    assert kept.keep_groups == [False, True, True]
