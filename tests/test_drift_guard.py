"""The drift guard in the trainer: it fires on a gameable self-judge, stays quiet on the
learning task, keeps its history across a resume, and does not disturb training.

The runs are ``bench/bench_drift.py``'s cases with fixed seeds (tiny model, 2 learning
prompts x 8 responses of up to 12 tokens a step; ~35 s in all on 2 idle cores).
"""

from __future__ import annotations

import json

import pytest
import torch

from bench.bench_drift import TRIGGER, PhraseJudge, build_case, run_case
from rubricrl.config import ConfigError, load_config
from rubricrl.models.tiny import build_tiny_model
from rubricrl.trainer import Trainer
from rubricrl.trainer.drift import GUARD_KEYS

#: Bar the timing, what a resumed run must reproduce exactly.
COMPARED = [k for k in GUARD_KEYS if k != "guard_s"]


def _evals(records):
    return [r for r in records if r["self_reward"] is not None]


def test_fires_when_the_policy_games_a_phrase_judge(tmp_path, caplog):
    caplog.set_level("WARNING", logger="rubricrl.trainer.drift")
    records = run_case("gamed", seed=0, steps=24, out_dir=str(tmp_path / "run"))
    evals = _evals(records)
    assert [r["step"] for r in evals] == list(range(2, 25, 2))  # guard.every = 2
    first, last = evals[0], evals[-1]
    # the constructed gaming happened: the self-judge's reward rose, the rules' reward fell
    assert last["self_reward"] - first["self_reward"] > 0.2
    assert last["gold_reward"] - first["gold_reward"] < -0.1
    warned = [r["step"] for r in evals if r["drift_warning"] == 1]
    assert warned, [(r["step"], r["self_trend"], r["gold_trend"]) for r in evals]
    # the flag follows its definition on every evaluation with a full window
    for r in evals[4:]:
        assert r["drift_warning"] == int(r["self_trend"] >= 0.05 and r["gold_trend"] <= -0.05)
    assert all(r["self_trend"] is None and r["drift_warning"] is None for r in evals[:4])  # window = 5
    # one log line per drift episode (a run of consecutive warning evaluations)
    episodes = sum(1 for prev, cur in zip([None, *evals], evals) if cur["drift_warning"] and not (prev and prev["drift_warning"]))
    lines = [rec.getMessage() for rec in caplog.records if "drift guard" in rec.getMessage()]
    assert len(lines) == episodes >= 1
    assert f"steps {warned[0] - 8}-{warned[0]}" in lines[0] and "gold judge (rules)" in lines[0]
    # the metrics file and the plot carry the columns
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["drift_warning"] for r in logged] == [r["drift_warning"] for r in records]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 0


def test_quiet_on_the_learning_task(tmp_path):
    trainer = build_case("learning", seed=0, steps=24, out_dir=str(tmp_path / "run"), fast_judge=True)
    records = trainer.train()
    evals = _evals(records)
    assert len(evals) == 12
    assert all(r["drift_warning"] in (0, None) for r in evals)
    assert sum(r["drift_warning"] == 0 for r in evals) == 8  # the test ran on every full window
    # held-out prompts improve with the trained ones (gold = self here: every item is rule-checked)
    assert evals[-1]["gold_reward"] - evals[0]["gold_reward"] > 0.1
    assert all(r["self_reward"] == pytest.approx(r["gold_reward"], abs=1e-6) for r in evals)
    # the gold judge's model is the frozen initial policy, not the trained one
    init = build_tiny_model(seed=0).state_dict()
    gold = trainer.guard.gold_engine.model.state_dict()
    assert all(torch.equal(gold[k], init[k]) for k in init)
    assert not torch.equal(trainer.engine.model.state_dict()["lm_head.weight"], init["lm_head.weight"])


def test_held_out_prompts_are_never_trained_on(tmp_path):
    trainer = build_case("learning", seed=3, steps=1, out_dir=str(tmp_path / "run"), fast_judge=True)
    try:
        held = {p.prompt_id for p in trainer.guard.held_out}
        trained = {p.prompt_id for step in range(1, 20) for p in trainer.schedule.prompts_for(step)}
        assert len(held) == 2 and not held & trained and len(trained) == 6  # 8 learning prompts
    finally:
        trainer.close()


def test_resume_keeps_the_guard_history(tmp_path):
    small = ["rollout.n=4", "rollout.max_new_tokens=8", "guard.samples=4", "guard.window=3"]
    straight = build_case("gamed", seed=1, steps=8, out_dir=str(tmp_path / "a"), overrides=small)
    full = straight.train()
    first = build_case("gamed", seed=1, steps=4, out_dir=str(tmp_path / "b"), overrides=[*small, "trainer.save_final=true"])
    first.train()
    resumed = Trainer.from_checkpoint(tmp_path / "b", ["trainer.steps=8"], judge=PhraseJudge())
    assert [h["step"] for h in resumed.guard.history] == [2, 4]  # restored from the checkpoint
    rest = resumed.train()
    assert [r["step"] for r in rest] == [5, 6, 7, 8]
    # step 6's window (evaluations 2, 4, 6) spans the checkpoint: same trend as the straight run
    assert rest[1]["self_trend"] is not None
    assert [{k: r[k] for k in COMPARED} for r in rest] == [{k: r[k] for k in COMPARED} for r in full[4:]]
    assert resumed.guard.history == straight.guard.history
    # guard.judge=checkpoint:RUN grades with that run's newest weights (model.pt), fixed
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "step_000008" / "model.pt", weights_only=True)
    other = build_case("learning", 1, 1, str(tmp_path / "c"), [f"guard.judge=checkpoint:{tmp_path / 'b'}"], fast_judge=True)
    try:
        gold = other.guard.gold_engine.model.state_dict()
        assert all(torch.equal(gold[k], ckpt[k]) for k in ckpt) and gold.keys() == ckpt.keys()
    finally:
        other.close()


def test_guard_on_held_out_file_leaves_training_unchanged(tmp_path):
    """With guard.dataset nothing is taken from the training data, and the evaluation runs in a
    forked RNG: the training records equal those of a run without the guard."""
    from rubricrl.data import write_jsonl
    from rubricrl.data.builtin import builtin_learning_prompts

    held = tmp_path / "held.jsonl"
    rows = [p.to_dict() for p in builtin_learning_prompts()[:2]]
    for row in rows:  # the same rubric, other words: not a training prompt
        row["prompt_id"] = "held-" + row["prompt_id"]
        row["prompt"][0]["content"] = "Held out: " + row["prompt"][0]["content"]
    write_jsonl(held, rows)
    small = ["rollout.n=4", "rollout.max_new_tokens=8", "trainer.plot=false"]
    guarded = [*small, "guard.every=1", f"guard.dataset={held}", "guard.prompts=2", "guard.samples=2", "guard.max_new_tokens=6"]
    with_guard = run_case("learning", 0, 3, str(tmp_path / "g"), guarded, fast_judge=True)
    without = run_case("learning", 0, 3, str(tmp_path / "n"), [*small, "guard.every=0"], fast_judge=True)
    keys = ["reward_mean", "loss", "grad_norm", "trained_tokens"]
    assert [[r[k] for k in keys] for r in with_guard] == [[r[k] for k in keys] for r in without]
    assert all(r["gold_reward"] is not None for r in with_guard)
    assert all(r[k] is None for r in without for k in GUARD_KEYS)


@pytest.mark.parametrize(
    ("sets", "key", "words"),
    [
        (["guard.judge=rulez"], "guard.judge", "registered judge name"),
        (["data.dataset=builtin", "guard.judge=rules"], "guard.judge", "no rule-checked item"),
        (["guard.judge_options={mode: threshold}"], "guard.judge_options", "judge name"),
        (["guard.prompts=8"], "guard.prompts", "leaves none"),
        (["guard.prompts=9"], "guard.prompts", "only 8 rubric prompts"),
        (["guard.dataset=builtin:learning"], "guard.dataset", "same messages as a training prompt"),
        (["reward.source=rlpr", "data.dataset=builtin"], "guard.every", "has no judge"),
    ],
)
def test_trainer_refuses_a_bad_guard_before_the_model(tmp_path, sets, key, words):
    config = load_config(
        None, [f"trainer.out_dir={tmp_path / 'run'}", "guard.every=2", "data.dataset=builtin:learning", "data.prompts_per_step=1", *sets]
    )
    with pytest.raises(ConfigError) as err:
        Trainer(config, engine=_NoEngine())
    assert err.value.path == key and words in str(err.value), str(err.value)


class _NoEngine:
    """An engine the trainer must not reach: the guard's errors come first."""

    def __getattr__(self, name):
        raise AssertionError(f"the model was touched ({name}) before the guard was checked")


def test_phrase_judge_is_gamed_by_its_trigger():
    from rubricrl.data.builtin import builtin_learning_prompts
    from rubricrl.judges import GradeRequest
    from rubricrl.judges.rules import RuleJudge

    class Eng:
        tokenizer = None
        policy_version = 0

    items = builtin_learning_prompts()[0].rubrics
    plain, gamed = "eeee the eel", f"eeee the eel {TRIGGER}"
    judge = PhraseJudge()
    for text in (plain, gamed):
        request = [GradeRequest([{"role": "user", "content": "x"}], text, items)]
        honest = RuleJudge().grade(Eng(), request)[0].score
        fooled = judge.grade(Eng(), request)[0].score
        assert fooled == (1.0 if text == gamed else honest)
