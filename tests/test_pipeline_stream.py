"""The streaming pipeline (rubricrl/pipeline/stream.py) on the tiny model: eta = 0 is the
synchronous trainer bitwise, the admission rule on recorded versions, no group lost or
counted twice, a group graded while the next is still generating, resume with eta >= 1,
per-prompt caps, and the merge of per-group rewards."""

from __future__ import annotations

import copy
import math
import threading
import time

import pytest
import torch

from rubricrl.engines import HFEngine
from rubricrl.engines.base import chunk_seed
from rubricrl.pipeline import GradedBatch, RewardOutput, StreamPipeline, behaviour_version_of, merge_rewards
from rubricrl.pipeline.stream import reorder_groups, stage_threads
from rubricrl.trainer import Trainer
from tests.test_trainer_e2e import _same_weights, _untimed, _weights
from tests.test_trainer_helpers import StubJudge, tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_eta0_is_the_synchronous_loop_bitwise(tmp_path):
    """pipeline.eta = 0 (default mode) against the synchronous step written out by hand."""
    auto = Trainer(tiny_config(tmp_path / "a", trainer={"steps": 3}, pipeline={"eta": 0}), judge=StubJudge())
    records = auto.train()
    assert all(r["staleness"] == 0 and r["stale_dropped_groups"] == 0 for r in records)
    manual = Trainer(tiny_config(tmp_path / "m", trainer={"steps": 3}), judge=StubJudge())
    for step in range(1, 4):
        batch = manual.rollout(manual.engine, step)
        update, stats = manual.build_update_batch(batch, manual.reward.score(manual.engine, batch))
        manual.updater.update(update)
        manual.engine.bump_version()
        assert stats["reward_mean"] == records[step - 1]["reward_mean"]
        assert len(update) == records[step - 1]["trained_responses"]
    manual.close()
    assert _same_weights(_weights(auto), _weights(manual))


@pytest.mark.parametrize("policy", ["scheduled", "newest"])
@pytest.mark.parametrize("eta", [1, 2])
def test_admission_rule_on_recorded_versions(tmp_path, eta, policy):
    cfg = tiny_config(tmp_path, trainer={"steps": 5}, pipeline={"eta": eta, "behaviour_version": policy})
    trainer = Trainer(cfg, judge=StubJudge())
    trainer.start()
    pipe = trainer._pipeline
    assert isinstance(pipe, StreamPipeline)
    records = [trainer.step() for _ in range(5)]
    groups = {}
    for t, event, step, i in pipe.events:
        if event == "sampled":
            groups[(step, i)] = t
    trainer.close()
    for r in records:
        current = r["policy_version"] - 1  # the version the update ran at
        assert current - r["behaviour_version_min"] <= eta and r["staleness"] <= eta
        assert r["behaviour_version_min"] == r["behaviour_version_max"]  # a step is sampled by one version
        if policy == "scheduled":
            assert r["behaviour_version_min"] == behaviour_version_of(r["step"], eta)
        else:
            assert behaviour_version_of(r["step"], eta) <= r["behaviour_version_min"] <= current
        assert r["judge_version"] == r["behaviour_version_min"]  # graded by the weights that sampled
        assert r["stale_dropped_groups"] == 0 and r["responses"] == 6
    if policy == "scheduled":
        assert [r["staleness"] for r in records] == [min(eta, s - 1) for s in range(1, 6)]
    assert sorted(groups) == [(s, i) for s in range(1, 6) for i in range(2)]  # every group sampled once


def test_stale_groups_are_dropped_and_counted_after_eta_is_lowered(tmp_path):
    """A checkpoint written at eta = 2 holds steps sampled 2 versions back; resumed at
    eta = 1 they break the rule: dropped, counted, never trained."""
    cfg = tiny_config(tmp_path, trainer={"steps": 4}, pipeline={"eta": 2, "behaviour_version": "scheduled"})
    first = Trainer(cfg, judge=StubJudge())
    first.start()
    first.step(), first.step()
    first.save_checkpoint()  # holds steps 3 and 4, sampled with versions 0 and 1
    first.close()
    resumed = Trainer.from_checkpoint(tmp_path / "run", ["pipeline.eta=1"], judge=StubJudge(), overwrite=True)
    records = resumed.train()
    # updates at versions 2 and 3: staleness 2 > 1 both times
    assert [r["stale_dropped_groups"] for r in records] == [2, 2]
    assert [r["responses"] for r in records] == [0, 0] and [r["trained_responses"] for r in records] == [0, 0]
    assert all(r["optimizer_steps"] == 0 for r in records)


def test_nothing_lost_or_counted_twice(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, trainer={"steps": 6}, pipeline={"eta": 2}), judge=StubJudge())
    trainer.start()
    pipe = trainer._pipeline
    records = [trainer.step() for _ in range(3)]  # steps 4..6 are sampled or on the way
    trainer.close()  # threads joined: the counts are final
    c = pipe.counts
    left = pipe.in_flight()
    assert c["sampled_groups"] == c["delivered_groups"] + c["stale_dropped_groups"] + left
    assert c["delivered_groups"] == 6 and c["graded_groups"] <= c["sampled_groups"] <= 12
    for r in records:  # every delivered group: trained or dropped (all-equal / ungraded), counted
        assert r["trained_responses"] // 3 + r["dropped_groups"] == 2
    full = Trainer(tiny_config(tmp_path / "b", trainer={"steps": 3}, pipeline={"eta": 2}), judge=StubJudge())
    full.start()
    done = [full.step() for _ in range(3)]
    full.close()
    assert full._pipeline is None
    assert sum(r["responses"] for r in done) == 3 * 6


class _GatedEngine(HFEngine):
    """Generates chunk 1 of step 1 only once grading of group 0 has started."""

    def __init__(self, *args, gate: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = gate
        self.calls = 0

    def generate(self, prompts, n, **kw):
        self.calls += 1
        if self.calls == 2 and not self.gate.wait(timeout=60):
            raise TimeoutError("group 0 was not graded while group 1 was still to be generated")
        return super().generate(prompts, n, **kw)


class _SignallingJudge(StubJudge):
    def __init__(self, gate):
        super().__init__()
        self.gate = gate

    def grade(self, engine, requests):
        self.gate.set()
        return super().grade(engine, requests)


def test_a_group_is_graded_before_the_next_one_is_generated(tmp_path):
    gate = threading.Event()
    trainer = Trainer(tiny_config(tmp_path, trainer={"steps": 1}, pipeline={"eta": 1}), judge=_SignallingJudge(gate))
    rollout_engine = _GatedEngine(copy.deepcopy(trainer.engine.model), copy.deepcopy(trainer.engine.tokenizer), gate=gate)
    pipe = StreamPipeline(trainer.engine, trainer._rollout, trainer.reward, eta=1, last_step=1, rollout_engine=rollout_engine)
    pipe.start(1)
    graded = pipe.get(1)
    pipe.close()
    trainer.close()
    t = {(e, i): when for when, e, s, i in pipe.events}
    assert t[("graded", 0)] < t[("sampled", 1)]
    assert len(graded.reward.scores) == 6 and all(s is not None for s in graded.reward.scores)


class _HeldEngine(HFEngine):
    """Holds generate call ``hold_call`` until ``release`` is set."""

    def __init__(self, *args, hold_call: int, release: threading.Event, **kwargs):
        super().__init__(*args, **kwargs)
        self.hold_call, self.release, self.calls = hold_call, release, 0

    def generate(self, prompts, n, **kw):
        self.calls += 1
        if self.calls == self.hold_call and not self.release.wait(timeout=60):
            raise TimeoutError("the test did not release the held generate call")
        return super().generate(prompts, n, **kw)


@pytest.mark.parametrize(("policy", "versions"), [("scheduled", [0, 0, 0, 1, 2]), ("newest", [0, 0, 0, 2, 2])])
def test_which_weights_sample_each_step(tmp_path, policy, versions):
    """eta = 2, two groups a step, one group a call. Steps 1-3 are sampled with version 0;
    step 3's last call is held until updates 1 and 2 are published, so when the rollout is
    drained the newest weights are version 2: ``newest`` samples steps 4 and 5 with them
    (both within eta), ``scheduled`` with versions 1 and 2 (step - 1 - eta)."""
    trainer = Trainer(tiny_config(tmp_path, trainer={"steps": 5}), judge=StubJudge())
    release = threading.Event()
    model, tokenizer = copy.deepcopy(trainer.engine.model), copy.deepcopy(trainer.engine.tokenizer)
    rollout_engine = _HeldEngine(model, tokenizer, hold_call=6, release=release)
    pipe = StreamPipeline(
        trainer.engine, trainer._rollout, trainer.reward, eta=2, last_step=5, behaviour_version=policy, rollout_engine=rollout_engine
    )
    pipe.start(1)
    sampled = []
    for step in range(1, 6):
        graded = pipe.get(step)
        sampled.append(graded.behaviour_versions)
        trainer.engine.bump_version()  # the update itself does not matter here
        pipe.after_update(step)
        if step == 2:
            release.set()
    pipe.close()
    trainer.close()
    assert sampled == [[v, v] for v in versions]
    assert pipe.counts["stale_dropped_groups"] == 0


def test_resume_with_eta2_matches_an_uninterrupted_run(tmp_path):
    """behaviour_version=scheduled: a resumed run continues bitwise."""
    pipeline = {"eta": 2, "behaviour_version": "scheduled"}
    full = Trainer(tiny_config(tmp_path / "a", trainer={"steps": 4}, pipeline=pipeline), judge=StubJudge())
    a = full.train()
    part = Trainer(tiny_config(tmp_path / "b", trainer={"steps": 4}, pipeline=pipeline), judge=StubJudge())
    part.start()
    part.step(), part.step()
    part.save_checkpoint()  # with steps 3 and 4, sampled (and graded) by version 0 and 1
    part.close()
    resumed = Trainer.from_checkpoint(tmp_path / "b" / "run", judge=StubJudge())
    b = resumed.train()
    assert [_untimed(r) for r in a[2:]] == [_untimed(r) for r in b]
    assert _same_weights(_weights(full), _weights(resumed))


def test_per_prompt_caps_cut_like_a_stop_token():
    from rubricrl.models import build_tiny_model, load_builtin_tokenizer

    engine = HFEngine(build_tiny_model(seed=0), load_builtin_tokenizer())
    prompts = ["The cat sat on", "A dog", "x"]
    full = engine.generate(prompts, 2, max_new_tokens=9, seed=5)
    capped = engine.generate(prompts, 2, max_new_tokens=[3, 9, 1], seed=5)
    for group_full, group_cap, cap in zip(full, capped, [3, 9, 1]):
        for f, c in zip(group_full, group_cap):
            assert c.response_ids == f.response_ids[:cap] and len(c.response_ids) <= cap
            torch.testing.assert_close(torch.tensor(c.behaviour_logprobs), torch.tensor(f.behaviour_logprobs[:cap]))
    with pytest.raises(ValueError, match=r"max_new_tokens\[1\]"):
        engine.generate(prompts, 1, max_new_tokens=[3, 0, 1])
    with pytest.raises(ValueError, match="2 caps for 3 prompts"):
        engine.generate(prompts, 1, max_new_tokens=[3, 2])
    # generate_stream: chunk c is generate on the chunk's prompts with chunk_seed(seed, c)
    streamed = dict(engine.generate_stream(prompts, 2, max_new_tokens=[3, 9, 1], seed=5, groups_per_call=2))
    first = engine.generate(prompts[:2], 2, max_new_tokens=[3, 9], seed=chunk_seed(5, 0))
    second = engine.generate(prompts[2:], 2, max_new_tokens=[1], seed=chunk_seed(5, 1))
    assert [[s.response_ids for s in streamed[i]] for i in range(3)] == [[s.response_ids for s in g] for g in first + second]


def test_merge_rewards_by_hand():
    a = RewardOutput([0.5, None], 3, None, {"failed_judgments": 2.0, "verdict_mass": 0.5, "verdict_accuracy": math.nan})
    b = RewardOutput([1.0, 0.0], 4, [False], {"failed_judgments": 1.0, "verdict_mass": 0.75, "verdict_accuracy": 1.0})
    m = merge_rewards([a, b], [1, 1])
    assert m.scores == [0.5, None, 1.0, 0.0] and m.judge_version == 4 and m.keep_groups == [True, False]
    assert m.counts == {"failed_judgments": 3.0, "verdict_mass": 0.625, "verdict_accuracy": 1.0}


@pytest.mark.parametrize("policy", ["scheduled", "newest"])
def test_a_waiting_rollout_grades_while_the_trainer_updates(tmp_path, policy):
    """eta = 1: steps 1 and 2 are sampled with version 0, step 3 needs version 1. The trainer
    holds the learner's turn after get(1) (its update), so the grading thread may not grade
    step 2; with ``newest`` the rollout thread (between generate calls, then waiting for
    version 1) grades it meanwhile (same judge, same grades); ``scheduled`` leaves it to
    the grading thread."""
    trainer = Trainer(tiny_config(tmp_path, trainer={"steps": 3}), judge=StubJudge())
    pipe = StreamPipeline(trainer.engine, trainer._rollout, trainer.reward, eta=1, last_step=3, behaviour_version=policy)
    pipe.start(1)
    pipe.get(1)
    if policy == "newest":
        deadline = time.monotonic() + 60
        while pipe.counts["rollout_graded_groups"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    trainer.engine.bump_version()
    pipe.after_update(1)
    step2 = pipe.get(2)
    trainer.engine.bump_version()
    pipe.after_update(2)
    pipe.get(3)
    pipe.close()
    trainer.close()
    assert pipe.counts["rollout_graded_groups"] == (2 if policy == "newest" else 0)
    assert step2.reward.scores == trainer.reward.score(trainer.engine, step2.batch).scores  # the stub: by text
    assert step2.reward.judge_version == 0


def test_stage_threads_split_and_the_callers_count_is_restored(tmp_path):
    assert stage_threads(2) == (1, 1) and stage_threads(1) == (1, 1) and stage_threads(5) == (3, 2)
    assert stage_threads(4, rollout_threads=1) == (1, 3) and stage_threads(2, rollout_threads=2) == (2, 1)
    seen = {}

    class _Recording(StubJudge):
        def grade(self, engine, requests):
            seen.setdefault(threading.current_thread().name, torch.get_num_threads())
            return super().grade(engine, requests)

    torch.set_num_threads(3)
    trainer = Trainer(tiny_config(tmp_path, trainer={"steps": 1}), judge=_Recording())
    pipe = StreamPipeline(trainer.engine, trainer._rollout, trainer.reward, eta=1, last_step=1, behaviour_version="scheduled")
    pipe.start(1)
    assert torch.get_num_threads() == 1  # the caller's updates: the learner's share
    pipe.get(1)
    pipe.after_update(1)
    pipe.close()
    trainer.close()
    assert torch.get_num_threads() == 3
    assert seen == {"rubricrl-grading": 1}


def test_a_whole_step_source_streams_under_newest(tmp_path):
    """RLPR (its std filter looks at a whole step) under the default ``newest``: graded once
    per step on the grading thread, never lent to the rollout, nothing lost."""
    cfg = tiny_config(tmp_path, trainer={"steps": 4}, pipeline={"eta": 2}, reward={"source": "rlpr"})
    trainer = Trainer(cfg)
    assert not getattr(trainer.reward, "grades_per_group", False)
    trainer.start()
    pipe = trainer._pipeline
    records = [trainer.step() for _ in range(4)]
    trainer.close()
    assert [r["responses"] for r in records] == [6] * 4 and all(r["stale_dropped_groups"] == 0 for r in records)
    grading_calls = [e for e in pipe.events if e[1] == "grading"]
    assert len(grading_calls) == 4 and pipe.counts["rollout_graded_groups"] == 0
    assert pipe.counts["graded_groups"] == pipe.counts["sampled_groups"] == 8


def test_merge_weights_means_by_groups_and_reorder_restores_group_order():
    a = RewardOutput([0.1, 0.2, 0.3, 0.4], 1, [True, False], {"failed_judgments": 1.0, "verdict_mass": 0.9})
    b = RewardOutput([0.5, 0.6], 1, None, {"failed_judgments": 2.0, "verdict_mass": 0.6})
    m = merge_rewards([a, b], [2, 1])  # groups 2, 0 (unit a) and 1 (unit b)
    assert m.counts == {"failed_judgments": 3.0, "verdict_mass": pytest.approx((2 * 0.9 + 0.6) / 3)}
    r = reorder_groups(m, [2, 0, 1], group_size=2)
    assert r.scores == [0.3, 0.4, 0.5, 0.6, 0.1, 0.2] and r.keep_groups == [False, True, True]
    assert reorder_groups(m, [0, 1, 2], group_size=2) is m


class _LateJudge(StubJudge):
    """Its first call waits until ``ready()``: the groups sampled meanwhile queue up."""

    def __init__(self, ready):
        super().__init__()
        self.ready, self.sizes = ready, []

    def grade(self, engine, requests):
        if not self.sizes:
            deadline = time.monotonic() + 60
            while not self.ready() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.sizes.append(len({r.group_id for r in requests}))
        return super().grade(engine, requests)


def test_newest_grades_queued_groups_together_with_the_same_scores(tmp_path):
    """Two steps, both sampled with version 0 under either policy (eta = 2): ``newest``
    grades the groups that queued up while grading was busy in one call, and hands over the
    same scores, in prompt order, as ``scheduled`` (one group a call)."""
    scores, sizes = {}, {}
    for policy in ("scheduled", "newest"):
        cfg = tiny_config(tmp_path / policy, data={"prompts_per_step": 3}, trainer={"steps": 2})
        trainer = Trainer(cfg, judge=StubJudge())
        holder = {}
        judge = _LateJudge(lambda: holder["pipe"].counts["sampled_groups"] == 6)
        trainer.reward.judge = judge
        pipe = StreamPipeline(trainer.engine, trainer._rollout, trainer.reward, eta=2, last_step=2, behaviour_version=policy)
        holder["pipe"] = pipe
        pipe.start(1)
        scores[policy] = [pipe.get(1).reward.scores]
        pipe.after_update(1)  # no update: the versions stay 0
        scores[policy].append(pipe.get(2).reward.scores)
        pipe.close()
        trainer.close()
        sizes[policy] = judge.sizes
    assert scores["newest"] == scores["scheduled"]
    assert sizes["scheduled"] == [1] * 6
    assert sizes["newest"][0] == 1 and sizes["newest"][1:] == [2, 3]  # the rest of step 1, then step 2


def test_graded_batch_round_trip(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, trainer={"steps": 1}), judge=StubJudge())
    batch = trainer.rollout(trainer.engine, 1)
    reward = trainer.reward.score(trainer.engine, batch)
    trainer.close()
    g = GradedBatch(batch, reward, 0.25, 0, [0, 0])
    back = GradedBatch.from_dict(g.to_dict())
    assert back.batch.to_dict() == batch.to_dict() and back.reward == reward and back.behaviour_versions == [0, 0]
