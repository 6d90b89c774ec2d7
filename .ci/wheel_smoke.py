"""Checks an installed rubricrl wheel from outside the source tree (`make test-wheel`).

Run with the fresh venv's python and -P (no script folder or cwd on sys.path), e.g.
``venv/bin/python -P .ci/wheel_smoke.py 2.13.0``; the argument is the torch version
the venv had before the wheel was installed, which the install must have kept.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch


def main() -> None:
    expected_torch = sys.argv[1]
    assert torch.__version__.split("+")[0] == expected_torch, (
        f"installing the wheel changed torch: {expected_torch} -> {torch.__version__}")

    import rubricrl
    import rubricrl._C  # noqa: F401  the compiled extension, from the wheel
    import rubricrl.ops as ops

    pkg = Path(rubricrl.__file__).resolve().parent
    assert "site-packages" in pkg.parts, f"rubricrl imported from {pkg}, not from the installed wheel"
    assert ops.extension_available(), "rubricrl._C imported but the ops do not see it"

    # One op through the C++ kernel, forward and backward, against float64 PyTorch.
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 8, generator=g, requires_grad=True)
    weight = torch.randn(50, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 50, (6,), generator=g)
    lp = ops.fused_linear_logprobs(hidden, weight, targets, backend="cpp")
    lp.sum().backward()
    h64, w64 = hidden.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    ref = torch.log_softmax(h64 @ w64.T, -1).gather(-1, targets[:, None])[:, 0]
    ref.sum().backward()
    torch.testing.assert_close(lp.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-5)

    # Package data and the Triton kernels package are in the wheel.
    from rubricrl.data.builtin import builtin_rubric_prompts
    from rubricrl.models.tokenizer import load_builtin_tokenizer

    assert len(builtin_rubric_prompts()) > 0
    assert load_builtin_tokenizer()("hello").input_ids
    for rel in ("py.typed", "configs/demo.yaml", "ops/_triton/__init__.py"):
        assert (pkg / rel).is_file(), f"{rel} missing from the installed package"
    assert importlib.util.find_spec("rubricrl.ops._triton") is not None
    print(f"wheel smoke: rubricrl from {pkg}, torch {torch.__version__}, extension {rubricrl._C.__file__}: ok")


if __name__ == "__main__":
    main()
