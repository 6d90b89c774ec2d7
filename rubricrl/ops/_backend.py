"""The one place that decides which backend runs an op.

Order of precedence: the op's ``backend=`` argument, then the environment
variable ``RUBRICRL_BACKEND``, then the automatic choice:

* CUDA tensors -> ``triton`` (``cuda`` where an op has a CUDA C++ kernel and
  the extension was built with CUDA);
* CPU tensors  -> ``cpp`` when the extension ``rubricrl._C`` is importable,
  else ``torch`` (the plain-PyTorch implementation).

The automatic choice (:func:`native`) is the kernel the dispatcher runs for
``torch.ops.rubricrl.<op>`` on those tensors; another backend forced for tests
or benchmarks runs its implementation directly (``rubricrl.ops._library.call``).

Forcing ``triton`` on CPU tensors runs the Triton interpreter. Triton decides
interpreter-or-compiler when a function is *decorated*, its own ``tl.*``
functions included, i.e. when triton is first imported. So: if nothing has
imported triton yet, rubricrl sets ``TRITON_INTERPRET=1`` itself; if triton was
already imported without it, forcing ``triton`` on CPU tensors raises and asks
for ``TRITON_INTERPRET=1`` to be set before anything imports triton.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch

BACKENDS = ("torch", "cpp", "triton", "cuda")
# Ops with a CUDA C++ kernel (csrc/cuda) besides the Triton one.
CUDA_CPP_OPS = frozenset({"group_advantages"})
ENV_VAR = "RUBRICRL_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run here; the message says why."""


def _import_extension() -> tuple[ModuleType | None, str]:
    try:
        module = importlib.import_module("rubricrl._C")
    except ImportError as exc:  # not built, or built against another torch
        return None, f"the C++ extension rubricrl._C could not be imported ({exc})"
    return module, ""


# Imported once, at import time: a plain value that torch.compile can read.
_EXTENSION = _import_extension()


def _extension() -> tuple[ModuleType | None, str]:
    return _EXTENSION


def extension_available() -> bool:
    return _extension()[0] is not None


def extension_has_cuda() -> bool:
    return extension_available() and hasattr(torch.ops.rubricrl, "cuda_kernels_built")


def _triton_language_interpreted() -> bool:
    """Whether the imported triton decorated its own language functions for the interpreter."""
    from triton.runtime.interpreter import InterpretedFunction
    import triton.language.standard as standard

    return isinstance(standard.max, InterpretedFunction)


def triton_kernels(on_cpu: bool) -> ModuleType:
    """The Triton kernel package ``rubricrl.ops._triton``, set up for the interpreter when ``on_cpu``.

    Triton picks interpreter-or-compiler for every ``@triton.jit`` function when it
    is decorated, its own ``tl.max`` & co. included, i.e. when triton is imported.
    """
    if importlib.util.find_spec("triton") is None:
        raise BackendUnavailableError("backend 'triton' needs the triton package (pip install triton)")
    if on_cpu:
        if "triton" not in sys.modules:
            os.environ["TRITON_INTERPRET"] = "1"
        elif not _triton_language_interpreted():
            raise BackendUnavailableError(
                "backend 'triton' on CPU tensors needs the Triton interpreter, but triton was "
                "imported in this process without it; set TRITON_INTERPRET=1 before anything "
                "imports triton"
            )
    return importlib.import_module("rubricrl.ops._triton")


def _unavailable_reason(name: str, device: torch.device, op: str) -> str:
    if name == "cpp":
        if device.type != "cpu":
            return f"backend 'cpp' runs on CPU tensors, got {device.type} tensors"
        return _extension()[1]
    if name == "cuda":
        if op not in CUDA_CPP_OPS:
            return f"op {op} has no CUDA C++ kernel (use 'triton' on GPUs)"
        if device.type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, got {device.type} tensors"
        if not extension_has_cuda():
            return "rubricrl._C was built without CUDA"
        return ""
    if name == "triton":
        if device.type not in ("cpu", "cuda"):
            return f"backend 'triton' runs on CUDA tensors (or CPU via the interpreter), got {device.type}"
        if importlib.util.find_spec("triton") is None:
            return "the triton package is not installed"
    return ""


def native(device: torch.device, op: str) -> str:
    """The backend of the op's own kernel for tensors on ``device`` (what the dispatcher runs)."""
    if device.type == "cuda":
        return "cuda" if op in CUDA_CPP_OPS and extension_has_cuda() else "triton"
    if device.type == "cpu":
        return "cpp" if extension_available() else "torch"
    return ""


def resolve(op: str, device: torch.device, backend: str | None = None) -> str:
    """Returns the backend name that runs ``op`` on tensors of ``device``.

    Raises ValueError for an unknown name and BackendUnavailableError when the
    requested backend cannot run, with the reason.
    """
    requested = backend if backend is not None else os.environ.get(ENV_VAR) or None
    if requested is not None:
        if requested not in BACKENDS:
            source = "backend" if backend is not None else ENV_VAR
            raise ValueError(f"{source}={requested!r} is not one of {BACKENDS}")
        reason = _unavailable_reason(requested, device, op)
        if reason:
            raise BackendUnavailableError(f"{op}: cannot use backend {requested!r}: {reason}")
        return requested
    return native(device, op) or "torch"
