"""Model dtypes have one definition (``rubricrl.config.MODEL_DTYPES``) that the config,
the trainer, ``export`` and the grade/meta-eval CLIs read."""

from __future__ import annotations

import argparse

import pytest
import torch

from rubricrl.cli._common import add_engine_args
from rubricrl.config import MODEL_DTYPES, ConfigError, load_config, torch_dtype


def test_names_map_to_torch_dtypes():
    assert [torch_dtype(n) for n in MODEL_DTYPES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(ValueError, match="got 'int8'"):
        torch_dtype("int8")


def test_config_and_cli_accept_exactly_these_names():
    for name in MODEL_DTYPES:
        assert load_config(None, [f"model.dtype={name}"]).model.dtype == name
    with pytest.raises(ConfigError, match=r"^model.dtype: expected one of float32, bfloat16, float16, got 'int8'"):
        load_config(None, ["model.dtype=int8"])
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    (dtype_action,) = [a for a in parser._actions if a.dest == "dtype"]
    assert tuple(dtype_action.choices) == MODEL_DTYPES
