"""PaTaRM: judgment parsing, format reward, PAR rewards, voting (docs/algorithms.md §5)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rubricrl.rewards.patarm import (
    Judgment,
    format_reward,
    par_rewards,
    parse_judgment,
    patarm_rewards,
    vote,
)

FAST = settings(max_examples=80, deadline=None)


def judge(score: str = "7.5", order: tuple[str, ...] = ("think", "generate_rubrics", "eval", "answer")) -> str:
    body = {"think": "hmm", "generate_rubrics": "1. Brevity", "eval": "good", "answer": score}
    return "\n".join(f"<{k}>{body[k]}</{k}>" for k in order)


# --------------------------------------------------------------------------- parsing / format


def test_parse_valid_judgment() -> None:
    j = parse_judgment("preamble " + judge(" 7.5 "))
    assert j == Judgment(
        score=7.5,
        tags_ok=True,
        score_ok=True,
        sections={"think": "hmm", "generate_rubrics": "1. Brevity", "eval": "good", "answer": "7.5"},
    )
    assert format_reward(j) == 0.0


@pytest.mark.parametrize(
    "text, reward, score",
    [
        (judge("0"), 0.0, 0.0),
        (judge("10"), 0.0, 10.0),
        (judge("10.0"), 0.0, 10.0),
        (judge(".5"), 0.0, 0.5),
        (judge("10.01"), -1.0, None),  # out of range
        (judge("-1"), -1.0, None),
        (judge("seven"), -1.0, None),
        (judge("7/10"), -1.0, None),  # the number alone is required
        (judge("Score: 7"), -1.0, None),
        (judge("1e1"), -1.0, None),  # plain decimals only
        (judge("nan"), -1.0, None),
        (judge(""), -1.0, None),
        (judge(order=("think", "generate_rubrics", "answer")), -1.5, None),  # eval missing
        (judge(order=("think", "eval", "generate_rubrics", "answer")), -1.5, None),  # out of order
        (judge(order=("generate_rubrics", "think", "eval", "answer")), -1.5, None),
        (judge("11", order=("think", "answer")), -1.5, None),  # tags checked first
        (judge() + "<answer>3</answer>", -1.5, None),  # duplicated section
        ("<think>a<generate_rubrics>b</think></generate_rubrics><eval>c</eval><answer>5</answer>", -1.5, None),
        ("<think>a</think><generate_rubrics>b</generate_rubrics><eval>c</eval><answer>5", -1.5, None),
        ("just a 7", -1.5, None),
    ],
)
def test_format_reward_cases(text: str, reward: float, score: float | None) -> None:
    j = parse_judgment(text)
    assert format_reward(j) == reward
    assert j.score == score


def test_score_ok_reported_even_with_bad_tags() -> None:
    j = parse_judgment(judge("6", order=("think", "answer")))
    assert not j.tags_ok and j.score_ok and j.score is None
    assert j.sections == {"think": "hmm", "answer": "6"}


def test_parse_rejects_non_str() -> None:
    with pytest.raises(ValueError, match="text"):
        parse_judgment(b"<think>")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- PAR


def test_par_graded_hand_computed() -> None:
    # m_r = 5; m_c = mean(8, 6, 5) = 19/3 (the unparseable chosen judgment is left out)
    rc, rr = par_rewards(torch.tensor([8.0, 6.0, 5.0, math.nan]), torch.tensor([4.0, 6.0, 3.0, 7.0]))
    # chosen deltas 3, 1, 0 (tie: nothing), NaN -> 1.4, 1.2, 0, 0
    torch.testing.assert_close(rc, torch.tensor([1.4, 1.2, 0.0, 0.0]))
    # rejected deltas m_c - s: 2.33, 0.33, 3.33, -0.67 -> 1.4, 1.2, 1.4, 0
    torch.testing.assert_close(rr, torch.tensor([1.4, 1.2, 1.4, 0.0]))
    assert rc.dtype == rr.dtype == torch.float32


def test_par_constant_hand_computed() -> None:
    rc, rr = par_rewards([8.0, 6.0, 5.0, None], [4.0, 6.0, 3.0, 7.0], f="constant")
    torch.testing.assert_close(rc, torch.tensor([1.3, 1.3, 0.0, 0.0]))
    torch.testing.assert_close(rr, torch.tensor([1.3, 1.3, 1.3, 0.0]))


@pytest.mark.parametrize(
    "chosen, rejected, want_c, want_r",
    [
        ([7.0], [5.0], 1.2, 1.2),  # delta = 2 exactly: graded 1.2 on both sides
        ([7.0], [4.0, 6.0], 1.2, None),  # m_r = 5, delta = 2
        ([4.4], [2.4], 1.2, 1.2),  # 4.4 - 2.4 = 2.0000000000000004 in floats, still delta = 2
        ([7.01], [5.0], 1.4, 1.4),
        ([5.0], [5.0], 0.0, 0.0),  # tie
        ([7.3], [7.1, 7.5], 0.0, None),  # m_r = 7.3 up to rounding: a tie
        ([3.0], [5.0], 0.0, 0.0),  # judge prefers the rejected response
        ([0.0], [10.0], 0.0, 0.0),
        ([10.0], [0.0], 1.4, 1.4),
    ],
)
def test_par_boundaries(chosen: list[float], rejected: list[float], want_c: float, want_r: float | None) -> None:
    rc, rr = par_rewards(chosen, rejected, f="graded")
    assert float(rc[0]) == pytest.approx(want_c)
    if want_r is not None:
        assert float(rr[0]) == pytest.approx(want_r)


def test_par_one_side_all_unparseable() -> None:
    rc, rr = par_rewards([None, None], [3.0, 4.0])
    assert rc.tolist() == [0.0, 0.0] and rr.tolist() == [0.0, 0.0]


def test_par_callable_and_errors() -> None:
    rc, rr = par_rewards([9.0, 6.0], [5.0], f=lambda d: d / 10)
    torch.testing.assert_close(rc, torch.tensor([0.4, 0.1]))
    torch.testing.assert_close(rr, torch.tensor([0.25]))
    with pytest.raises(ValueError, match="f must be"):
        par_rewards([1.0], [2.0], f="linear")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chosen_scores"):
        par_rewards([11.0], [2.0])
    with pytest.raises(ValueError, match="rejected_scores"):
        par_rewards([1.0], torch.zeros(2, 2))


def test_patarm_rewards_adds_format() -> None:
    chosen = [judge("8"), judge("6"), judge("9", order=("think", "answer"))]
    rejected = [judge("4"), judge("eleven")]
    rc, rr = patarm_rewards(chosen, rejected)
    # m_r = 4 (the invalid one is left out), m_c = 7: chosen 8 -> 1.4, 6 -> 1.2, bad tags -> -1.5
    torch.testing.assert_close(rc, torch.tensor([1.4, 1.2, -1.5]))
    # rejected 4 -> delta 3 -> 1.4; invalid score -> 0 + (-1.0)
    torch.testing.assert_close(rr, torch.tensor([1.4, -1.0]))


_score = st.one_of(st.none(), st.integers(0, 100).map(lambda x: x / 10))


@FAST
@given(st.lists(_score, min_size=1, max_size=8), st.lists(_score, min_size=1, max_size=8), st.sampled_from(["graded", "constant"]))
def test_par_properties(chosen: list[float | None], rejected: list[float | None], f: str) -> None:
    rc, rr = par_rewards(chosen, rejected, f=f)  # type: ignore[arg-type]
    allowed = {0.0, 1.2, 1.4} if f == "graded" else {0.0, 1.3}
    assert {round(v, 4) for v in rc.tolist() + rr.tolist()} <= allowed
    valid_c = [s for s in chosen if s is not None]
    valid_r = [s for s in rejected if s is not None]
    for s, r in zip(chosen, rc.tolist()):
        if s is None or not valid_r:
            assert r == 0.0
        else:
            m_r = math.fsum(valid_r) / len(valid_r)
            assert (r > 0) == (s - m_r > 1e-9)
    for s, r in zip(rejected, rr.tolist()):
        if s is None or not valid_c:
            assert r == 0.0
        else:
            assert (r > 0) == (math.fsum(valid_c) / len(valid_c) - s > 1e-9)


@FAST
@given(st.lists(st.sampled_from([judge("3"), judge("9.5"), judge("x"), judge(order=("answer",)), "junk"]), min_size=1, max_size=5), st.lists(st.sampled_from([judge("0"), judge("5"), judge("12")]), min_size=1, max_size=5))
def test_total_reward_range(chosen: list[str], rejected: list[str]) -> None:
    rc, rr = patarm_rewards(chosen, rejected)
    both = torch.cat([rc, rr])
    assert bool(((both >= -1.5) & (both <= 1.4 + 1e-6)).all())


# --------------------------------------------------------------------------- vote


@pytest.mark.parametrize(
    "scores, method, want",
    [
        ([7.0, 8.0, None, 9.0], "mean", 8.0),
        ([7.0, 7.4, 8.0, 8.6, None], "majority", 7.0),  # rounded 7, 7, 8, 9
        ([6.5, 6.5, 7.0], "majority", 7.0),  # half rounds up (Python's round would give 6)
        ([6.0, 8.0], "majority", 6.0),  # tie, equally close to the mean 7: lower wins
        ([6.0, 8.0, 9.0], "majority", 8.0),  # three-way tie: closest to the mean 7.67
        ([2.0, 2.0, 9.0, 9.0, 8.0], "majority", 9.0),  # tie 2 vs 9: mean 6 is closer to 9
        ([5.0, float("nan")], "mean", 5.0),
        ([None, None], "mean", None),
        ([], "majority", None),
    ],
)
def test_vote(scores: list[float | None], method: str, want: float | None) -> None:
    got = vote(scores, method)  # type: ignore[arg-type]
    assert got == (None if want is None else pytest.approx(want))


def test_vote_bad_method() -> None:
    with pytest.raises(ValueError, match="method"):
        vote([1.0], "median")  # type: ignore[arg-type]


@FAST
@given(st.lists(_score, max_size=9), st.sampled_from(["mean", "majority"]))
def test_vote_range(scores: list[float | None], method: str) -> None:
    got = vote(scores, method)  # type: ignore[arg-type]
    if all(s is None for s in scores):
        assert got is None
    else:
        assert got is not None and 0.0 <= got <= 10.0
        if method == "majority":
            assert got == int(got)
