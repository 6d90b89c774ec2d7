"""Registries and imports: the reward-source registry sits below the config (no import
cycle) and raises on a duplicate name as the judge registry does; one judge builder serves
the config and the CLI; the CLI never hides a subcommand whose module fails to import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rubricrl.config import ConfigError, load_config
from rubricrl.judges import JUDGES, LogprobJudge, register_judge
from rubricrl.pipeline import make_reward_source
from rubricrl.rewards import registry

ROOT = Path(__file__).resolve().parents[1]


def test_config_loads_without_importing_the_pipeline():
    # A fresh interpreter: this test process has imported the pipeline already.
    code = (
        "import sys\n"
        "from rubricrl.config import ConfigError, load_config\n"
        "load_config(None)\n"
        "try:\n"
        "    load_config(None, ['reward.source=nope'])\n"
        "except ConfigError as err:\n"
        "    print(err)\n"
        "print(sorted(m for m in sys.modules if m.startswith('rubricrl.pipeline')))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    lines = out.stdout.splitlines()
    assert lines == ["reward.source: expected one of mix, pairwise_judge, patarm, rlpr, rubric, got 'nope'", "[]"], out.stdout + out.stderr


def test_builtin_names_are_the_registered_sources():
    # rubricrl.pipeline is imported above: every built-in the config accepts has a factory.
    assert set(registry.BUILTIN_REWARD_SOURCES) <= set(registry._REGISTRY)
    assert registry.reward_source_names() == ["mix", "pairwise_judge", "patarm", "rlpr", "rubric"]


def test_duplicate_reward_source_raises_and_overwrite_replaces():
    def factory(config, *, judge=None):
        return ("first", judge)

    def other(config, *, judge=None):
        return ("second", judge)

    registry.register_reward_source("dup-test")(factory)
    try:
        assert "dup-test" in registry.reward_source_names()
        # a registered name passes config validation
        assert load_config(None, ["reward.source=dup-test"]).reward.source == "dup-test"
        with pytest.raises(ValueError, match=r"^a reward source named 'dup-test' is already registered"):
            registry.register_reward_source("dup-test")(other)
        assert make_reward_source("dup-test", None, judge="j") == ("first", "j")  # unchanged
        registry.register_reward_source("dup-test", overwrite=True)(other)
        assert make_reward_source("dup-test", None, judge="j") == ("second", "j")
    finally:
        del registry._REGISTRY["dup-test"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register_reward_source("rubric")(factory)
    with pytest.raises(ValueError, match="non-empty string"):
        registry.register_reward_source("")
    with pytest.raises(ConfigError, match="^reward.source: expected one of mix, pairwise_judge, patarm, rlpr, rubric, got 'dup-test'"):
        load_config(None, ["reward.source=dup-test"])
    with pytest.raises(ValueError, match="^unknown reward source 'dup-test'; registered: mix, pairwise_judge, patarm, rlpr, rubric$"):
        make_reward_source("dup-test", None)


def test_duplicate_judge_raises_like_reward_sources():
    with pytest.raises(ValueError, match=r"^a judge named 'logprob' is already registered"):
        register_judge("logprob", LogprobJudge)
    assert JUDGES["logprob"] is LogprobJudge


def test_build_judge_is_the_one_builder_of_config_and_cli():
    import argparse

    from rubricrl.cli._common import build_judge as cli_build_judge
    from rubricrl.judges import GenerateJudge, build_judge
    from rubricrl.pipeline import build_judge as config_build_judge

    # logprob-only settings reach the logprob judge; options win over them
    judge = build_judge("logprob", temperature=0.5, mode="threshold", share_prefix=False, options={"mode": "sample"})
    assert isinstance(judge, LogprobJudge) and (judge.mode, judge.temperature, judge.share_prefix) == ("sample", 0.5, False)
    # ... and never reach another judge (GenerateJudge takes no mode)
    judge = build_judge("generate", temperature=0.7, mode="expected", share_prefix=True, options={"max_new_tokens": 5})
    assert isinstance(judge, GenerateJudge) and (judge.temperature, judge.max_new_tokens) == (0.7, 5)
    with pytest.raises(ValueError, match=r"^'generate' with options \{'temperature': 1.0, 'mode': 'x'\}: judge 'generate' does not take"):
        build_judge("generate", temperature=1.0, options={"mode": "x"})

    cfg = load_config(None, ["reward.judge_mode=threshold", "reward.grading_temperature=0.5", "reward.judge_options={mode: sample}"])
    judge = config_build_judge(cfg)
    assert (judge.mode, judge.temperature, judge.share_prefix) == ("sample", 0.5, True)
    cfg = load_config(None, ["reward.judge=nope"])
    with pytest.raises(ConfigError, match=r"^reward.judge: 'nope' with options \{.*\}: unknown judge 'nope'"):
        config_build_judge(cfg)

    args = argparse.Namespace(
        judge="generate", mode=None, temperature=0.3, share_prefix=True, max_new_tokens=7, max_attempts=2, seed=4
    )
    judge = cli_build_judge(args)
    assert isinstance(judge, GenerateJudge) and (judge.temperature, judge.max_new_tokens, judge.max_attempts) == (0.3, 7, 2)
    args.judge = "logprob"
    judge = cli_build_judge(args)
    assert isinstance(judge, LogprobJudge) and (judge.mode, judge.temperature) == ("expected", 0.3)


def test_cli_lists_every_subcommand_and_never_hides_a_broken_one(monkeypatch):
    import argparse
    import sys as _sys

    from rubricrl.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == ["train", "export", "grade", "meta-eval"]
    # A sibling module that fails to import is an error, not a missing subcommand.
    monkeypatch.setitem(_sys.modules, "rubricrl.cli.grade", None)
    with pytest.raises(ImportError, match="rubricrl.cli.grade"):
        build_parser()
