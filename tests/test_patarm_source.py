"""reward.source=patarm: rewards against hand-computed cases, pairs kept together by the
schedule and through the trainer's batches, and 1-2 end-to-end trainer steps."""

from __future__ import annotations

import json

import pytest
import torch

from rubricrl.data.pairs import PreferencePair
from rubricrl.engines import Sample
from rubricrl.pipeline.data import PromptPairs, PromptSchedule, TrainPrompt
from rubricrl.pipeline.rewards import PatarmReward, load_pairs, make_reward_source
from rubricrl.pipeline.rollout import RolloutBatch
from rubricrl.rewards.patarm_prompts import PRIMARY_RUBRICS
from rubricrl.trainer import Trainer
from tests.test_trainer_helpers import tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def judgment(score: str) -> str:
    return f"<think>t</think><generate_rubrics>r</generate_rubrics><eval>e</eval><answer>{score}</answer>"


def _pairs(n: int) -> list[PreferencePair]:
    return [
        PreferencePair(f"p{i}", [{"role": "user", "content": f"q{i}"}], f"good {i}", f"bad {i}", "instruction_following")
        for i in range(n)
    ]


def _batch(prompts: list[TrainPrompt], texts: list[list[str]], step: int = 1) -> RolloutBatch:
    samples = [[Sample([1], [2], t, [-0.5], True, 0) for t in group] for group in texts]
    return RolloutBatch(step, prompts, samples, 0, 0.0)


class _Engine:
    policy_version = 0


def test_pool_is_pairs_of_pointwise_judge_prompts():
    source = PatarmReward(_pairs(3))
    (pool, share), = source.pools()
    assert isinstance(pool, PromptPairs) and share == 1.0 and len(pool) == 6
    for i in range(3):
        c, r = pool[2 * i], pool[2 * i + 1]
        assert (c.prompt_id, r.prompt_id) == (f"p{i}/chosen", f"p{i}/rejected")
        assert (c.label, r.label, c.kind) == (True, False, "pointwise")
        # the chosen prompt shows the chosen response, with the task's primary rubrics
        assert f"<response>\ngood {i}\n</response>" in c.messages[0]["content"]
        assert f"<response>\nbad {i}\n</response>" in r.messages[0]["content"]
        assert PRIMARY_RUBRICS["instruction_following"][0].question in c.messages[0]["content"]


def test_rewards_match_a_hand_computed_case():
    source = PatarmReward(_pairs(2))
    pool = source.pools()[0][0]
    # the batch holds pair 1 then pair 0, rejected before chosen: order must not matter
    prompts = [pool[3], pool[2], pool[1], pool[0]]
    texts = [
        [judgment("3"), "no tags at all"],  # p1 rejected: 3, unparsable (-1.5)
        [judgment("8"), judgment("4")],  # p1 chosen: 8, 4
        [judgment("5"), judgment("11")],  # p0 rejected: 5, score out of range (-1.0)
        [judgment("5"), judgment("7.5")],  # p0 chosen: 5, 7.5
    ]
    out = source.score(_Engine(), _batch(prompts, texts))
    # p1: m_r = 3 (the unparsable one left out), m_c = 6.
    #   chosen 8: d = 5 > 2 -> 1.4; chosen 4: d = 1 -> 1.2
    #   rejected 3: m_c - 3 = 3 > 2 -> 1.4; unparsable: 0 + (-1.5)
    # p0: m_r = 5 (11 is invalid), m_c = 6.25.
    #   chosen 5: tie with m_r -> 0; chosen 7.5: d = 2.5 -> 1.4
    #   rejected 5: 6.25 - 5 = 1.25 -> 1.2; rejected 11: 0 + (-1.0)
    expected = [1.4, -1.5, 1.4, 1.2, 1.2, -1.0, 0.0, 1.4]
    assert out.scores == pytest.approx(expected, abs=1e-6)
    assert out.counts["unparsed_judgments"] == 2
    assert out.counts["judged_pairs"] == 2 and out.counts["pair_accuracy"] == 1.0 and out.counts["pair_ties"] == 0


def test_constant_f_and_pair_accuracy_with_ties():
    source = PatarmReward(_pairs(2), f="constant")
    pool = source.pools()[0][0]
    texts = [[judgment("6")], [judgment("6")], [judgment("2")], [judgment("4")]]
    out = source.score(_Engine(), _batch(list(pool), texts))
    # p0: a tie (0, 0); p1: chosen 2 < rejected 4 -> both wrong side (0, 0)
    assert out.scores == [0.0, 0.0, 0.0, 0.0]
    assert out.counts["pair_accuracy"] == 0.0 and out.counts["pair_ties"] == 1
    texts = [[judgment("9")], [judgment("1")], ["x"], ["y"]]
    out = source.score(_Engine(), _batch(list(pool), texts))
    assert out.scores == pytest.approx([1.3, 1.3, -1.5, -1.5])
    assert out.counts["judged_pairs"] == 1 and out.counts["pair_accuracy"] == 1.0


def test_a_split_pair_is_an_error():
    source = PatarmReward(_pairs(2))
    pool = source.pools()[0][0]
    with pytest.raises(RuntimeError, match=r"pair 'p1' has no rejected prompt in step 3"):
        source.score(_Engine(), _batch([pool[0], pool[1], pool[2]], [["a"], ["b"], ["c"]], step=3))


@pytest.mark.parametrize("per_step", [2, 4, 6])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_schedule_keeps_pairs_together_across_epochs(per_step, seed):
    source = PatarmReward(_pairs(5))  # 10 prompts: steps straddle epoch boundaries
    schedule = PromptSchedule(source.pools(), per_step, seed=seed)
    seen = []
    for step in range(1, 16):
        prompts = schedule.prompts_for(step)
        assert len(prompts) == per_step
        for k in range(0, per_step, 2):
            c, r = prompts[k], prompts[k + 1]
            assert c.prompt_id.split("/")[0] == r.prompt_id.split("/")[0] and (c.label, r.label) == (True, False)
        seen += [p.prompt_id for p in prompts]
    # every epoch covers every pair once: the first 10 prompts are all ten, shuffled by pair
    assert sorted(seen[:10]) == sorted(p.prompt_id for p in source.pools()[0][0])
    assert schedule.prompts_for(3) == PromptSchedule(source.pools(), per_step, seed=seed).prompts_for(3)


def test_schedule_refuses_an_odd_count_of_a_pair_pool():
    source = PatarmReward(_pairs(3))
    with pytest.raises(ValueError, match=r"data.prompts_per_step=3: .* pool of pairs .* even"):
        PromptSchedule(source.pools(), 3, seed=0)


# --------------------------------------------------------------------------- trainer


class _Recording(PatarmReward):
    """PatarmReward that records each step's prompt ids (what the trainer batched)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []
        self.outputs = []

    def score(self, engine, batch):
        self.batches.append([p.prompt_id for p in batch.prompts])
        out = super().score(engine, batch)
        self.outputs.append(out)
        return out


def _scripted(engine):
    """Make the engine's samples read as judgments with varying scores: the tiny random
    model never writes the format, and the trainer must see rewards that differ."""
    original = engine.generate
    counter = iter(range(10**6))

    def generate(prompts, n, **kwargs):
        out = original(prompts, n, **kwargs)
        for group in out:
            for sample in group:
                sample.response_text = judgment(str(next(counter) % 11))
        return out

    engine.generate = generate
    return engine


def test_trainer_steps_keep_pairs_and_update(tmp_path):
    config = tiny_config(
        tmp_path,
        reward={"source": "patarm"},
        data={"dataset": "builtin:pairs", "prompts_per_step": 4},
        rollout={"n": 3, "max_new_tokens": 4},
    )
    source = _Recording(load_pairs(config.data.dataset))
    trainer = Trainer(config, reward_source=source)
    _scripted(trainer.engine)
    records = trainer.train()
    assert [r["step"] for r in records] == [1, 2]
    for ids in source.batches:
        assert len(ids) == 4
        for k in (0, 2):
            assert ids[k].rsplit("/", 1)[0] == ids[k + 1].rsplit("/", 1)[0]
            assert (ids[k].endswith("/chosen"), ids[k + 1].endswith("/rejected")) == (True, True)
    for record, out in zip(records, source.outputs):
        # the trainer logs PaTaRM's scores as they are (no clamp to [0, 1]) and trains on them
        assert record["reward_mean"] == pytest.approx(sum(out.scores) / len(out.scores))
        assert record["pair_accuracy"] == out.counts["pair_accuracy"]
        assert record["trained_responses"] > 0 and record["optimizer_steps"] == 1
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and "unparsed_judgments" in lines[0]


def test_trainer_with_the_tiny_model_as_is(tmp_path):
    """Unscripted: the random tiny model writes no valid judgment, so every response gets the
    tag penalty, every group is all-equal and dropped, and the step still completes."""
    config = tiny_config(
        tmp_path, reward={"source": "patarm"}, data={"dataset": "builtin", "prompts_per_step": 2}, rollout={"n": 2, "max_new_tokens": 4}
    )
    assert isinstance(make_reward_source("patarm", config), PatarmReward)
    trainer = Trainer(config)
    record = trainer.step()
    trainer.close()
    assert record["reward_mean"] == -1.5 and record["unparsed_judgments"] == 4
    assert record["dropped_groups"] == 2 and record["trained_responses"] == 0
