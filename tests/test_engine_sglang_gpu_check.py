"""bench/gpu_check.py's SGLang section where it cannot run (CPU, no sglang): one skipped row
that says why, and the rest of the run unaffected. The section itself runs on a GPU machine
with sglang installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check as module
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def test_skip_reasons(gpu_check, monkeypatch):
    dry = gpu_check.Run(device="cpu", dry_run=True, budget_s=1, repeats=1)
    assert "dry run" in gpu_check.sglang_skip_reason(dry)
    real = gpu_check.Run(device="cuda", dry_run=False, budget_s=1, repeats=1)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sglang" else object())
    assert "sglang is not importable" in gpu_check.sglang_skip_reason(real)
    gpu_check.sglang_section(real, 5.0, "torch_native")
    (row,) = real.checks
    assert (row["section"], row["status"]) == ("sglang", "skipped") and "not importable" in row["message"]


def test_dry_run_only_sglang_records_one_skipped_row(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--only-sglang",
                          "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sglang section skipped: dry run" in res.stderr
    result = json.loads(out.with_suffix(".json").read_text())
    assert [(c["section"], c["status"]) for c in result["checks"]] == [("sglang", "skipped")]
    assert "| sglang | SGLangEngine | server |" in out.with_suffix(".md").read_text()
