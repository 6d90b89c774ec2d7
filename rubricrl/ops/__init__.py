"""rubricrl.ops: the public kernel API (names are a contract).

Each function validates its inputs and calls one ``torch.library`` op,
``torch.ops.rubricrl.<name>`` (registered in :mod:`rubricrl.ops._library`), which
has a C++ CPU kernel, a Triton CUDA kernel, a fake kernel for torch.compile and
an autograd formula.

Every op takes ``backend=`` (``torch``, ``cpp``, ``triton``, ``cuda``) and
honours ``RUBRICRL_BACKEND``; without either it picks Triton/CUDA for CUDA
tensors and C++ for CPU tensors (the PyTorch implementation when the extension
is not built).
"""

from ._backend import BackendUnavailableError, extension_available  # loads rubricrl._C if built
from . import _library  # noqa: F401  (registers the ops; already imported by rubricrl._C when built)
from .logprobs import fused_linear_logprobs, token_logprobs
from .rubric import rubric_scores
from .span import span_mean_prob
from .verdict import verdict_probs
from .grpo import fused_linear_grpo_loss, grpo_loss
from .advantages import group_advantages

__all__ = [
    "BackendUnavailableError",
    "extension_available",
    "fused_linear_logprobs",
    "token_logprobs",
    "rubric_scores",
    "span_mean_prob",
    "verdict_probs",
    "grpo_loss",
    "fused_linear_grpo_loss",
    "group_advantages",
]
