"""Per-response rubric score (docs/algorithms.md §3) against hand-computed cases."""

from __future__ import annotations

import random

import pytest

from rubricrl.data import RubricItem
from rubricrl.rewards.rubric_score import score_response


def items(*points: float) -> list[RubricItem]:
    return [RubricItem(f"criterion {i}", float(p)) for i, p in enumerate(points)]


def test_mixed_points_hand_computed():
    # (7*1 + 5*0 + 10*1 - 6*1) / (7 + 5 + 10) = 11 / 22
    result = score_response(items(7, 5, 10, -6), [True, False, True, True])
    assert result.score == pytest.approx(0.5)
    assert result.raw == pytest.approx(11.0) and result.max_points == pytest.approx(22.0)
    assert not result.ungraded and result.n_failed == 0 and result.n_graded == 4


def test_negative_items_met_clip_to_zero():
    result = score_response(items(4, -5, -3), [False, True, True])
    assert result.score == 0.0 and result.raw == pytest.approx(-8.0)
    assert score_response(items(4, -5, -3), [False, True, True], clip=False).score == pytest.approx(-2.0)


def test_all_met_positive_items_score_one():
    assert score_response(items(3, 2, -4), [True, True, False]).score == pytest.approx(1.0)


def test_soft_verdicts_give_expected_score():
    # Expected value before clipping: (7*0.8 + 5*0.5 + 10*0.1 - 6*0.25) / 22 = 7.6 / 22
    result = score_response(items(7, 5, 10, -6), [0.8, 0.5, 0.1, 0.25])
    assert result.score == pytest.approx(7.6 / 22)


def test_soft_verdicts_match_monte_carlo_mean_when_unclipped():
    rng = random.Random(1)
    pts = items(7, 5, 10, -2)
    probs = [0.9, 0.3, 0.6, 0.2]
    draws = [score_response(pts, [rng.random() < p for p in probs], clip=False).score for _ in range(20000)]
    assert sum(draws) / len(draws) == pytest.approx(score_response(pts, probs, clip=False).score, abs=0.01)


def test_failed_items_are_excluded_from_both_sums():
    # Item 2 (10 points) failed: (7 - 6) / (7 + 5)
    result = score_response(items(7, 5, 10, -6), [True, False, None, True])
    assert result.score == pytest.approx(1 / 12)
    assert result.n_failed == 1 and result.n_graded == 3 and result.max_points == pytest.approx(12.0)


def test_ungraded_when_no_positive_item_succeeded():
    result = score_response(items(7, 5, -6), [None, None, True])
    assert result.ungraded and result.score is None and result.n_failed == 2
    all_failed = score_response(items(7, 5), [None, None])
    assert all_failed.ungraded and all_failed.score is None and all_failed.n_failed == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 rubric items but 1 verdicts"):
        score_response(items(1, 2), [True])
    with pytest.raises(ValueError, match=r"verdicts\[1\] = 1.5"):
        score_response(items(1, 2), [True, 1.5])
    with pytest.raises(ValueError, match=r"verdicts\[0\]"):
        score_response(items(1), ["true"])
    with pytest.raises(ValueError):
        score_response(items(1), [float("nan")])
