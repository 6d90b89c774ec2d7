"""bench/bench_async.py --quick runs end to end (a smoke test: no timing is asserted) and its
simulation behaves on hand-checkable inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.bench_async import length_cap, simulate

ROOT = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_results(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_async", "--quick", "--threads", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "async_quick.json").read_text())
    rows = {r["eta"]: r for r in result["rows"]}
    assert sorted(rows) == [0, 1, 2, 4]
    for r in rows.values():
        assert r["steps_timed"] == 1 and r["generated_tokens"] > 0 and r["stale_dropped_groups"] == 0
        assert max(r["staleness"]) <= r["eta"] and r["threads"] == 1 and len(r["loadavg_before"]) == 3
    assert set(result["simulation"]["measured_costs"]) >= {"sync", "async", "colocated"}
    assert "SIMULATION" in (tmp_path / "async_quick.md").read_text()


def test_length_caps_are_long_tailed_and_bounded():
    caps = [length_cap(f"p{i}", 512) for i in range(2000)]
    assert min(caps) >= 16 and max(caps) <= 512
    mean = sum(caps) / len(caps)
    assert 16 + (512 - 16) / 4 * 0.9 < mean < 16 + (512 - 16) / 4 * 1.1  # E[q^3] = 1/4
    assert sorted(caps)[len(caps) // 2] < mean  # median below mean: a long tail


def test_simulation_by_hand():
    # one GPU, one prompt of one response of 10 tokens per step, no grading or update:
    # sync = 10 iterations of c0 + c1 per step
    kw = dict(gpus=1, prompts=1, n=1, items=0, prompt_len=0, steps=2, c0=1.0, c1=0.5, grade_per_token=0.0, update_per_token=0.0)
    sync = simulate("sync", max_len=10, **kw)
    lengths = sync["seconds"] / 1.5  # both steps' lengths, in iterations
    assert lengths >= 2 * 16  # the floor of 16 tokens
    coloc = simulate("colocated", max_len=10, eta=0, **kw)
    assert abs(coloc["seconds"] - sync["seconds"]) < 1e-9  # nothing to overlap: the same time
