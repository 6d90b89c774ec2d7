"""bench/gpu_check.py: its logic on the CPU (the --dry-run mode), its refusal without CUDA,
its deadline, and that its comparison catches a wrong kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
OPS = ["token_logprobs", "fused_linear_logprobs", "grpo_loss", "fused_linear_grpo_loss", "group_advantages",
       "rubric_scores", "verdict_probs", "span_mean_prob"]


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("TRITON_INTERPRET", None)  # the script decides
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check as module
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run")
def test_without_cuda_it_refuses_with_a_clear_message():
    res = _run()
    assert res.returncode == 2, res.stderr
    assert "no CUDA device" in res.stderr and "--dry-run" in res.stderr
    assert res.stdout == ""


def test_dry_run_checks_every_op_and_writes_both_files(tmp_path):
    out = tmp_path / "gpu"
    res = _run("--dry-run", "--repeats", "2", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["partial"] is False and result["environment"]["dry_run"] is True
    checks = result["checks"]
    for section in ("correct-small", "correct-qwen"):
        for op in OPS:
            for dtype in ("float32", "bfloat16"):
                rows = [c for c in checks if (c["section"], c["op"], c["dtype"], c["backend"]) ==
                        (section, op, dtype, "triton")]
                assert rows and all(c["status"] == "pass" for c in rows), (section, op, dtype, rows)
                # the outputs and, for differentiable ops, the gradients were compared
                assert all(c["errors"] for c in rows)
    grads = {k for c in checks if c["op"] == "fused_linear_grpo_loss" for k in c.get("errors", {})}
    assert {"loss", "d_hidden", "d_weight"} <= grads
    cuda_rows = [c for c in checks if c["backend"] == "cuda"]
    assert cuda_rows and all(c["op"] == "group_advantages" and c["status"] == "skipped" for c in cuda_rows)

    timings = result["timings"]
    for workload in ("logprobs+entropy fwd+bwd", "GRPO loss fwd+bwd"):
        rows = {r["variant"]: r for r in timings if r["workload"] == workload}
        fused = next(r for name, r in rows.items() if name.startswith("rubricrl"))
        floor = next(r for name, r in rows.items() if name.startswith("floor"))
        assert fused["status"] == "ok" and fused["median_ms"] > 0 and fused["x_floor"] > 0
        assert floor["status"] == "ok" and floor["x_floor"] == 1.0
        # every variant is either timed or skipped with its reason
        assert all(r["status"] == "ok" or (r["status"] == "skipped" and r["message"]) for r in rows.values()), rows
    liger = [r for r in timings if r["variant"] == "Liger LigerFusedLinearGRPOLoss (compiled=False)"]
    assert liger and liger[0]["status"] == "ok"
    md = out.with_suffix(".md").read_text()
    assert "DRY RUN" in md and "| fused_linear_grpo_loss |" in md and "GRPO loss fwd+bwd" in md


def test_a_spent_budget_writes_partial_results(tmp_path):
    out = tmp_path / "gpu"
    res = _run("--dry-run", "--budget-s", "0", "--out", str(out))
    assert res.returncode == 3, res.stdout + res.stderr
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["partial"] is True
    assert result["checks"] and all(c["status"] == "skipped" for c in result["checks"])
    assert "PARTIAL" in out.with_suffix(".md").read_text()


def test_compare_catches_wrong_values_nans_and_shapes(gpu_check):
    ref = {"y": torch.tensor([1.0, 2.0, float("nan")])}
    ok, errors, _ = gpu_check.compare({"y": torch.tensor([1.0, 2.0, float("nan")])}, ref, 1e-6)
    assert ok and errors["y"]["rel"] == 0.0
    ok, _, msg = gpu_check.compare({"y": torch.tensor([1.0, 2.1, float("nan")])}, ref, 1e-2)
    assert not ok and "y rel err" in msg
    ok, _, msg = gpu_check.compare({"y": torch.tensor([1.0, 2.0, 3.0])}, ref, 1e-2)
    assert not ok and "NaN" in msg
    ok, _, msg = gpu_check.compare({"y": torch.tensor([1.0, 2.0])}, ref, 1e-2)
    assert not ok and "shape" in msg


def test_a_kernel_that_differs_from_the_reference_fails_its_check(gpu_check):
    """check_case end to end with a fake op whose non-reference backend is 1% off in its gradient."""

    def make(dtype, device, gen):
        return {"x": torch.randn(16, generator=gen, dtype=torch.float64)}

    def call(x, backend):
        y = x["x"] * 2
        if backend != "torch":
            y = y + 0.01 * (x["x"] - x["x"].detach()) * 2  # same value, gradient 2.02 instead of 2
        return {"y": y}

    case = gpu_check.Case("fake", "wrong gradient", "N=16", make, call, backends=("cpp",), grad_inputs=("x",),
                          diff_outputs=("y",))
    run = gpu_check.Run(device="cpu", dry_run=True, budget_s=60, repeats=1)
    gpu_check.check_case(run, "correct-small", case, "float32", seed=3)
    (row,) = run.checks
    assert row["status"] == "fail" and "d_x" in row["message"]
    assert row["errors"]["y"]["rel"] < 1e-6  # the forward matched
