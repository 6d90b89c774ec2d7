"""The drift guard's parts without training: the trend test against hand-computed series and
numpy's least-squares fit, the held-out split, the rule-only judge, the config block, the
metrics columns, the console line and the plot's reward panel."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rubricrl.config import ConfigError, load_config
from rubricrl.data.rubrics import RubricItem
from rubricrl.judges import GradeRequest
from rubricrl.judges.rules import RuleJudge
from rubricrl.pipeline.data import TrainPrompt
from rubricrl.rewards.rule_checks import parse_check
from rubricrl.trainer.drift import GUARD_KEYS, drift_test, fitted_change, split_held_out
from rubricrl.trainer.metrics import METRIC_KEYS, reward_panel, summary_line

# ---- the trend test -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "change"),
    [
        ([0.0, 1.0, 2.0, 3.0, 4.0], 4.0),  # a line: its own change
        ([1.0, 3.0, 2.0], 1.0),  # x mean 1, y mean 2: sxy = 1, sxx = 2, slope 0.5, x 2
        ([0.5, 0.5, 0.5, 0.5], 0.0),
        ([0.9, 0.1], -0.8),  # two points: their difference
        ([0.2, 0.4, 0.1, 0.3, 0.5], 0.2),  # y mean 0.3: sxy = -2*-.1 - 1*.1 + 0 + 0 + 2*.2 = 0.5, sxx = 10: 0.05 x 4
    ],
)
def test_fitted_change_hand_computed(values, change):
    assert fitted_change(values) == pytest.approx(change, abs=1e-12)


def test_fitted_change_is_numpys_least_squares_slope():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 8, 13):
        y = rng.normal(size=n)
        slope = np.polyfit(np.arange(n, dtype=np.float64), y, 1)[0]
        assert fitted_change(y.tolist()) == pytest.approx(slope * (n - 1), rel=1e-10, abs=1e-12)


def test_fitted_change_refuses_short_or_non_finite_series():
    with pytest.raises(ValueError, match="at least 2"):
        fitted_change([0.3])
    with pytest.raises(ValueError, match="finite"):
        fitted_change([0.3, math.nan, 0.2])


RISING = [0.5, 0.6, 0.7, 0.8, 0.9]  # change +0.4
FALLING = [0.5, 0.45, 0.4, 0.35, 0.3]  # change -0.2
T = {"window": 5, "min_self_rise": 0.05, "min_gold_fall": 0.05}


def test_drift_when_self_rises_and_gold_falls():
    r = drift_test(RISING, FALLING, **T)
    assert r.drift and r.self_trend == pytest.approx(0.4) and r.gold_trend == pytest.approx(-0.2)


@pytest.mark.parametrize(
    ("own", "gold"),
    [
        (RISING, RISING),  # both improve: learning
        (FALLING, FALLING),  # both worsen: a bad run, not the judge being gamed
        (RISING, [0.5] * 5),  # gold flat
        ([0.5] * 5, FALLING),  # self flat
        (FALLING, RISING),
    ],
)
def test_no_drift_otherwise(own, gold):
    assert not drift_test(own, gold, **T).drift


def test_thresholds_are_inclusive_and_only_the_last_window_counts():
    # lines with fitted changes of exactly +0.5 / -0.5 (binary-exact values): drift at thresholds 0.5
    own = [0.125 * i for i in range(5)]
    gold = [1.0 - 0.125 * i for i in range(5)]
    at = {"window": 5, "min_self_rise": 0.5, "min_gold_fall": 0.5}
    assert drift_test(own, gold, **at).drift
    assert not drift_test(own, gold, **{**at, "min_gold_fall": 0.5000001}).drift
    assert not drift_test(own, gold, **{**at, "min_self_rise": 0.5000001}).drift
    # an old rise of the gold judge outside the window does not matter
    assert drift_test([0.0, 0.0, *RISING], [0.0, 1.0, *FALLING], **T).drift
    assert drift_test(RISING[:4], FALLING[:4], **T) is None  # fewer evaluations than the window


# ---- held-out split -------------------------------------------------------------------


def _prompts(n, tag="p"):
    return [TrainPrompt(f"{tag}{i}", [{"role": "user", "content": f"{tag} {i}"}], "rubric", [RubricItem("c", 1.0)]) for i in range(n)]


def test_split_is_seeded_disjoint_and_complete():
    pools = [(_prompts(10), 1.0)]
    train, held = split_held_out(pools, 3, seed=7)
    again, held2 = split_held_out(pools, 3, seed=7)
    other = split_held_out(pools, 3, seed=8)[1]
    ids = lambda ps: [p.prompt_id for p in ps]  # noqa: E731
    assert ids(held) == ids(held2) and ids(train[0][0]) == ids(again[0][0])
    assert ids(other) != ids(held)  # another trainer.seed, another split (for these seeds)
    assert sorted(ids(held) + ids(train[0][0])) == sorted(ids(pools[0][0])) and not set(ids(held)) & set(ids(train[0][0]))
    assert train[0][1] == 1.0


def test_split_takes_only_rubric_prompts():
    verdicts = [TrainPrompt(f"v{i}", [{"role": "user", "content": "v"}], "verdict", [RubricItem("c", 1.0)], label=True) for i in range(5)]
    train, held = split_held_out([(verdicts, 0.25), (_prompts(4), 0.75)], 2, seed=0)
    assert all(p.kind == "rubric" for p in held)
    assert len(train[0][0]) == 5 and len(train[1][0]) == 2 and train[0][1] == 0.25


def test_split_errors_name_guard_prompts():
    with pytest.raises(ConfigError) as err:
        split_held_out([(_prompts(3), 1.0)], 4, seed=0)
    assert err.value.path == "guard.prompts" and "only 3" in str(err.value)
    with pytest.raises(ConfigError, match="leaves none"):
        split_held_out([(_prompts(3), 1.0)], 3, seed=0)


# ---- the rule-only gold judge ---------------------------------------------------------


def test_rule_judge_grades_rule_items_only():
    class Eng:
        tokenizer = None
        policy_version = 3

    items = [
        RubricItem("has an e", 2.0, check=parse_check({"type": "contains", "text": "e"})),
        RubricItem("is kind", 5.0),  # a judge item: left out, as a failed judgment
        RubricItem("starts with x", 1.0, check=parse_check({"type": "starts_with", "text": "x"})),
        RubricItem("says 'bad'", -1.0, check=parse_check({"type": "contains", "text": "bad"})),
    ]
    conv = [{"role": "user", "content": "hi"}]
    res = RuleJudge().grade(Eng(), [GradeRequest(conv, "eel bad", items), GradeRequest(conv, "x", items)])
    # (2*1 + 1*0 - 1*1) / (2 + 1) and (2*0 + 1*1 - 0) / 3
    assert res[0].score == pytest.approx(1 / 3) and res[1].score == pytest.approx(1 / 3)
    assert res[0].item_met == [1.0, None, 0.0, 1.0] and res[0].n_failed == 1 and res[0].judge_version == 3
    only_judge = RuleJudge().grade(Eng(), [GradeRequest(conv, "x", [RubricItem("is kind", 5.0)])])[0]
    assert only_judge.ungraded and only_judge.score is None


# ---- the config block -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("guard.every=-1", "guard.every", ">= 0"),
        ("guard.window=2", "guard.window", ">= 3"),
        ("guard.prompts=0", "guard.prompts", ">= 1"),
        ("guard.samples=0", "guard.samples", ">= 1"),
        ("guard.max_new_tokens=0", "guard.max_new_tokens", ">= 1"),
        ("guard.min_self_rise=-0.1", "guard.min_self_rise", ">= 0"),
        ("guard.min_gold_fall=nan", "guard.min_gold_fall", "finite"),
        ("guard.judge=checkpoint:/no/such/run", "guard.judge", "no such directory"),
        ("guard.judge=checkpoint:", "guard.judge", "needs a path"),
        ("guard.dataset=/no/such.jsonl", "guard.dataset", "no such file"),
        ("guard.evry=3", "guard.evry", "did you mean guard.every"),
    ],
)
def test_config_errors_name_the_field(override, key, words):
    sets = [override] if override.startswith("guard.every") else ["guard.every=2", override]
    with pytest.raises(ConfigError) as err:
        load_config(None, sets)
    assert err.value.path == key and words in str(err.value), str(err.value)


def test_guard_is_off_by_default_and_unchecked_when_off():
    assert load_config(None).guard.every == 0
    assert load_config(None, ["guard.window=1"]).guard.window == 1  # off: nothing else is read


# ---- metrics, console line, plot ------------------------------------------------------


def test_guard_keys_are_metric_keys():
    assert set(GUARD_KEYS) <= set(METRIC_KEYS)


def _record(step, **guard):
    base = {"step": step, "reward_mean": 0.5, "reward_std": 0.1, **dict.fromkeys(GUARD_KEYS)}
    return {**base, **guard}


def test_summary_line_shows_held_out_rewards_and_the_warning():
    line = summary_line(_record(4, self_reward=0.75, gold_reward=0.2, drift_warning=1))
    assert "held-out self 0.750 gold 0.200" in line and "DRIFT" in line
    quiet = summary_line(_record(4, self_reward=0.75, gold_reward=0.7, drift_warning=0))
    assert "held-out self 0.750 gold 0.700" in quiet and "DRIFT" not in quiet
    assert "held-out" not in summary_line(_record(3))


def test_reward_panel_plots_self_and_gold_and_marks_warnings(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rubricrl.trainer.metrics import plot_metrics

    records = [_record(1), _record(2, self_reward=0.3, gold_reward=0.4, drift_warning=None), _record(3),
               _record(4, self_reward=0.6, gold_reward=0.2, drift_warning=1)]
    fig, ax = plt.subplots()
    reward_panel(ax, records)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["self-judge (held-out)"].get_xdata()) == [2, 4]
    assert list(lines["self-judge (held-out)"].get_ydata()) == [0.3, 0.6]
    assert list(lines["gold judge (held-out)"].get_ydata()) == [0.4, 0.2]
    assert "drift warning" in ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert plot_metrics(records, tmp_path / "m.png").stat().st_size > 0
