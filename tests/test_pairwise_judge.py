"""reward.source=pairwise_judge (RM-R1 style): answer parsing, the recorded and balanced
A/B order, rewards against hand-computed cases, and end-to-end trainer steps."""

from __future__ import annotations

import re

import pytest
import torch

from rubricrl.data.pairs import PreferencePair
from rubricrl.engines import Sample
from rubricrl.pipeline.rewards import PairwiseJudgeReward, load_pairs
from rubricrl.pipeline.rollout import RolloutBatch
from rubricrl.rewards.pairwise import assign_positions, build_pairwise_prompt, pairwise_reward, parse_pairwise
from rubricrl.trainer import Trainer
from tests.test_trainer_helpers import tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def verdict(answer: str) -> str:
    return f"<rubric>be short</rubric><eval>A is short, B is long</eval><answer>{answer}</answer>"


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, choice",
    [
        (verdict("A"), "A"),
        (verdict(" B\n"), "B"),
        (verdict("[[A]]"), "A"),
        (verdict("[[B]]"), "B"),
        ("preamble " + verdict("B") + " trailing", "B"),
        (verdict("a"), None),  # lower case is not a slot name
        (verdict("A or B"), None),
        (verdict("AB"), None),
        (verdict("Response A"), None),
        (verdict("[A]"), None),
        (verdict(""), None),
        ("<rubric>r</rubric><answer>A</answer>", None),  # eval missing
        ("<eval>e</eval><rubric>r</rubric><answer>A</answer>", None),  # out of order
        ("<rubric>r</rubric><eval>e <answer>B</answer></eval><answer>A</answer>", None),  # duplicated answer
        ("<rubric>r</rubric><eval>e</eval><answer>A", None),  # unclosed
        ("", None),
    ],
)
def test_parse_pairwise(text, choice):
    j = parse_pairwise(text)
    assert j.choice == choice
    if choice is not None:
        assert j.tags_ok and j.sections["rubric"] == "be short"


def test_parse_rejects_non_strings_and_reward_checks_the_slot():
    with pytest.raises(ValueError, match="text must be a str"):
        parse_pairwise(None)
    assert pairwise_reward(parse_pairwise(verdict("B")), "B") == 1.0
    assert pairwise_reward(parse_pairwise(verdict("B")), "A") == 0.0
    assert pairwise_reward(parse_pairwise("junk"), "A") == 0.0
    with pytest.raises(ValueError, match="chosen_position must be 'A' or 'B'"):
        pairwise_reward(parse_pairwise(verdict("A")), "C")


# --------------------------------------------------------------------------- order


@pytest.mark.parametrize("n", [1, 2, 7, 72])
def test_positions_are_balanced_seeded_and_independent_of_file_order(n):
    keys = [f"k{i:03d}" for i in range(n)]
    pos = assign_positions(keys, seed=3)
    assert pos.count("A") == (n + 1) // 2 and pos.count("B") == n // 2
    assert pos == assign_positions(keys, seed=3)
    # the slot of a pair depends on its key and the seed, not on where the pair sits in the file
    rev = assign_positions(keys[::-1], seed=3)
    assert dict(zip(keys[::-1], rev)) == dict(zip(keys, pos))
    if n >= 7:
        assert pos != assign_positions(keys, seed=4)
        assert pos != ["A"] * ((n + 1) // 2) + ["B"] * (n // 2)  # shuffled, not blocked
    with pytest.raises(ValueError, match="unique"):
        assign_positions(["x", "x"], 0)


def test_prompts_record_the_slot_and_show_the_chosen_response_there():
    pairs = load_pairs("builtin:pairs")
    source = PairwiseJudgeReward(pairs, order_seed=5)
    (pool, _), = source.pools()
    assert len(pool) == len(pairs)
    by_id = {p.pair_id: p for p in pairs}
    for prompt in pool:
        pair_id, slot = prompt.prompt_id.rsplit("/", 1)
        assert slot == ("A" if prompt.label else "B") and prompt.kind == "pairwise"
        pair = by_id[pair_id]
        text = prompt.messages[0]["content"]
        got_a = re.search(r"<response_A>\n(.*?)\n</response_A>", text, re.S).group(1)
        got_b = re.search(r"<response_B>\n(.*?)\n</response_B>", text, re.S).group(1)
        assert (got_a, got_b) == ((pair.chosen, pair.rejected) if slot == "A" else (pair.rejected, pair.chosen))
        assert pair.prompt[0]["content"] in text
    labels = [p.label for p in pool]
    assert labels.count(True) == labels.count(False) == 36
    other = PairwiseJudgeReward(pairs, order_seed=6).pools()[0][0]
    assert [p.label for p in other] != labels


def _batch(prompts, texts):
    samples = [[Sample([1], [2], t, [-0.5], True, 0) for t in group] for group in texts]
    return RolloutBatch(1, prompts, samples, 0, 0.0)


class _Engine:
    policy_version = 0


def test_rewards_match_a_hand_computed_case():
    pairs = [PreferencePair(f"p{i}", [{"role": "user", "content": "q"}], f"c{i}", f"r{i}") for i in range(2)]
    source = PairwiseJudgeReward(pairs, order_seed=0)
    pool = source.pools()[0][0]
    a_first = [p for p in pool if p.label][0]
    b_first = [p for p in pool if not p.label][0]
    texts = [
        [verdict("A"), verdict("B"), "no format"],  # chosen is A: 1, 0, 0 (unparsable)
        [verdict("A"), verdict("[[B]]"), verdict("B")],  # chosen is B: 0, 1, 1
    ]
    out = source.score(_Engine(), _batch([a_first, b_first], texts))
    assert out.scores == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert out.counts["unparsed_judgments"] == 1
    assert out.counts["pairwise_accuracy"] == pytest.approx(3 / 6)
    assert out.counts["chosen_in_a"] == 0.5 and out.counts["answered_a"] == pytest.approx(2 / 6)


def test_a_position_biased_judge_scores_chance_over_the_data_set():
    """Always naming A (or B) earns exactly half the pairs, because the chosen slot is balanced."""
    source = PairwiseJudgeReward(load_pairs("builtin:pairs"), order_seed=11)
    pool = source.pools()[0][0]
    for letter in "AB":
        out = source.score(_Engine(), _batch(pool, [[verdict(letter)] for _ in pool]))
        assert sum(out.scores) / len(out.scores) == 0.5


def _scripted(engine):
    """Make the samples read as verdicts alternating A, B, A, ... (the random tiny model
    writes no valid format; the trainer must see rewards that differ within a group)."""
    original = engine.generate
    counter = iter(range(10**6))

    def generate(prompts, n, **kwargs):
        out = original(prompts, n, **kwargs)
        for group in out:
            for sample in group:
                sample.response_text = verdict("AB"[next(counter) % 2])
        return out

    engine.generate = generate
    return engine


def test_trainer_steps(tmp_path):
    config = tiny_config(
        tmp_path,
        reward={"source": "pairwise_judge", "pairs": {"order_seed": 2}},
        data={"dataset": "builtin:pairs", "prompts_per_step": 3},
        rollout={"n": 2, "max_new_tokens": 4},
    )
    trainer = Trainer(config)
    _scripted(trainer.engine)
    records = trainer.train()
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        # each group has one A and one B verdict: exactly one is right, so reward 0.5, all kept
        assert r["reward_mean"] == 0.5 and r["pairwise_accuracy"] == 0.5 and r["unparsed_judgments"] == 0
        assert r["dropped_groups"] == 0 and r["trained_responses"] == 6 and r["optimizer_steps"] == 1


def test_trainer_with_the_tiny_model_as_is(tmp_path):
    config = tiny_config(
        tmp_path, reward={"source": "pairwise_judge"}, data={"dataset": "builtin"}, rollout={"n": 2, "max_new_tokens": 4}
    )
    trainer = Trainer(config)
    record = trainer.step()
    trainer.close()
    assert record["reward_mean"] == 0.0 and record["unparsed_judgments"] == 4 and record["dropped_groups"] == 2


def test_prompt_template_lists_the_sections_in_order():
    text = build_pairwise_prompt("P", "X", "Y")
    assert text.index("<rubric>") < text.index("<eval>") < text.index("<answer>")
    assert "<response_A>\nX\n</response_A>" in text and "<response_B>\nY\n</response_B>" in text
