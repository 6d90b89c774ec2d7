"""Config loading: YAML + --set overrides, strict keys and types, errors naming the key path."""

from __future__ import annotations

import pytest

from rubricrl.cli import main
from rubricrl.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    default_config_path,
    load_config,
    parse_override,
    save_config,
)


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_demo_config_loads_and_matches_the_brief():
    cfg = load_config()
    assert default_config_path().name == "demo.yaml"
    assert cfg.model.path is None and cfg.data.dataset == "builtin"
    assert cfg.data.prompts_per_step == 4 and cfg.rollout.n == 4
    assert 48 <= cfg.rollout.max_new_tokens <= 64
    assert cfg.rollout.temperature == 1.0 and cfg.reward.judge == "logprob"
    assert cfg.loss.eps_low == 0.2 and cfg.loss.eps_high == 0.28 and cfg.pipeline.eta == 0


def test_defaults_are_valid():
    cfg = TrainConfig().validate()
    assert cfg.loss.loss_agg == "token-mean" and cfg.loss.kl_coef == 0.0 and cfg.optim.betas == [0.9, 0.999]


def test_unknown_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "trainer:\n  stpes: 3\n"))
    assert str(err.value) == "trainer.stpes: unknown key (did you mean trainer.steps?)"
    with pytest.raises(ConfigError, match=r"^optimm: unknown key \(did you mean optim\?\)"):
        load_config(_write(tmp_path, "optimm:\n  lr: 1.0\n"))
    with pytest.raises(ConfigError, match=r"^reward\.rlpr\.zzz: unknown key$"):
        load_config(None, ["reward.rlpr.zzz=1"])


def test_wrong_types_name_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["optim.lr=fast"])
    assert str(err.value) == "optim.lr: expected float, got 'fast'"
    cases = {
        "trainer.steps=2.5": "trainer.steps: expected int, got 2.5",
        "trainer.progress=maybe": "trainer.progress: expected bool (true or false), got 'maybe'",
        "loss.loss_agg=mean": "loss.loss_agg: expected one of token-mean, seq-mean-token-mean",
        "optim.betas=0.9": "optim.betas: expected a list, got 0.9",
        "optim.betas=[0.9, x]": "optim.betas[1]: expected float, got 'x'",
        "rollout.n=0": "rollout.n: must be >= 1, got 0",
        "loss.clip_c=0.5": "loss.clip_c: must be > 1",
        "reward.source=nope": "reward.source: expected one of mix, pairwise_judge, patarm, rlpr, rubric, got 'nope'",
        "reward.judge_mode=vote": "reward.judge_mode: expected one of expected, threshold, sample",
        "model.device=tpu": "model.device: expected auto, cpu, cuda or cuda:N",
        "optim.betas=[0.9]": "optim.betas: expected two numbers",
        "pipeline.overlap=yes": "pipeline.overlap: expected one of auto, thread, inline",
        "pipeline.behaviour_version=latest": "pipeline.behaviour_version: expected one of newest, scheduled",
        "pipeline.rollout_threads=-1": "pipeline.rollout_threads: must be >= 0, got -1",
    }
    for override, message in cases.items():
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        assert str(err.value).startswith(message), (override, str(err.value))
    with pytest.raises(ConfigError, match=r"^model: expected a mapping"):
        load_config(_write(tmp_path, "model: 3\n"))


def test_bad_override_syntax():
    for bad in ("trainer.steps", "=3", "trainer..steps=3", "trainer steps=3"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            load_config(None, [bad])
    assert parse_override("optim.lr=1e-5") == ("optim.lr", "1e-5")
    with pytest.raises(ConfigError, match=r"^trainer\.steps: is not a section"):
        load_config(None, ["trainer.steps.x=1"])


def test_override_values_are_yaml_scalars():
    cfg = load_config(
        None,
        [
            "optim.lr=1e-5",  # PyYAML alone would read this as a string
            "trainer.steps=7",
            "trainer.progress=false",
            "loss.clip_c=3",
            "model.path=123",  # a string field keeps the text
            "trainer.out_dir=runs/x=y",  # only the first '=' splits
            "reward.judge_options={max_retries: 3}",
            "rollout.max_batch_size=null",
        ],
    )
    assert cfg.optim.lr == 1e-5 and cfg.trainer.steps == 7 and cfg.trainer.progress is False
    assert cfg.loss.clip_c == 3.0 and isinstance(cfg.loss.clip_c, float)
    assert cfg.model.path == "123" and cfg.trainer.out_dir == "runs/x=y"
    assert cfg.reward.judge_options == {"max_retries": 3} and cfg.rollout.max_batch_size is None
    assert load_config(None, ["model.path=null"]).model.path is None


def test_yaml_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML") as err:
        load_config(_write(tmp_path, "model: [\n"))
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(_write(tmp_path, "- 1\n"))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_save_and_load_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-6", "loss.clip_c=3.0", "reward.rlpr.std_filter=true"])
    save_config(cfg, tmp_path / "out.yaml")
    again = load_config(tmp_path / "out.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)


def test_cli_config_error_exits_2_with_one_line(capsys):
    assert main(["train", "--set", "trainer.stpes=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rubricrl train: error: trainer.stpes: unknown key (did you mean trainer.steps?)"]
    assert main(["train", "--set", "optim.lr"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--config", "/nonexistent.yaml"]) == 2
    assert "cannot read config" in capsys.readouterr().err
    assert main(["train", "--resume", "/nonexistent-dir"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
