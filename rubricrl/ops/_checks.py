"""Input validation shared by the public ops. Every error names the argument and shape."""

from __future__ import annotations

import numbers
import warnings

import torch


def compiling() -> bool:
    """True while torch.compile traces: data-dependent checks (host syncs) are skipped then."""
    return torch.compiler.is_compiling()


def require_floating(name: str, t: torch.Tensor) -> None:
    """``t`` is a floating tensor. For ``weight`` (every op's output projection ``[V, H]``)
    also: V >= 1 and H >= 1, since nothing can be projected from or onto an empty axis."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor (fp32, bf16 or fp16), got {t.dtype}")
    if name == "weight" and t.dim() == 2 and 0 in t.shape:
        axis = "H (hidden size)" if t.shape[1] == 0 else "V (vocabulary size)"
        raise ValueError(f"weight [V, H] must have V >= 1 and H >= 1, got shape {tuple(t.shape)}: {axis} is 0")


def require_integer(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {t.dtype}")


def require_positive(name: str, value: float) -> None:
    if not (value > 0):  # also rejects NaN
        raise ValueError(f"{name} must be > 0, got {value}")


def check_index_range(
    name: str,
    t: torch.Tensor,
    bound: int,
    *,
    bound_name: str | None = None,
    skip: torch.Tensor | None = None,
    skip_note: str = "",
) -> None:
    """Every entry of the integer tensor ``t`` is in ``[0, bound)``, except where ``skip`` is True.

    The one range check of the ops (token ids, span indices). The error names the first
    bad entry, e.g. ``targets[1, 2] = 11 is outside [0, V=11)``; ``skip_note`` says which
    entries are exempt. Skipped under torch.compile (it reads data: a host sync).
    """
    if compiling() or t.numel() == 0:
        return
    bad = (t < 0) | (t >= bound)
    if skip is not None:
        bad &= ~skip
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        limit = f"{bound_name}={bound}" if bound_name else f"{bound}"
        raise ValueError(
            f"{name}{list(idx)} = {int(t[idx])} is outside [0, {limit}){skip_note} ({name} shape {tuple(t.shape)})"
        )


def check_targets_in_range(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Every target is in [0, vocab) or equals ignore_index (skipped under torch.compile)."""
    check_index_range("targets", targets, vocab, skip=targets == ignore_index,
                      skip_note=f" and is not ignore_index={ignore_index}")


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
            raise ValueError(f"all tensors must be on one device: {listing}")
    return first


def check_output_projection(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """hidden ``[..., H]``, weight ``[V, H]``, bias ``[V]`` or None: the operands of every fused linear op."""
    require_floating("hidden", hidden)
    require_floating("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [V, H], got shape {tuple(weight.shape)}")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden [..., H] and weight [V, H] disagree on H: hidden {tuple(hidden.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    if bias is not None:
        require_floating("bias", bias)
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")


def chunk_option(name: str, value: int | None, unit: str, deprecated: int | None = None) -> int:
    """A chunk option (``vocab_chunk``: vocabulary columns, ``token_chunk``: token rows) as the ops'
    ``int`` (0: the default budget). ``deprecated`` is the old ``chunk_size`` keyword, still
    accepted with a DeprecationWarning (it meant columns for some ops and rows for another)."""
    if deprecated is not None:
        if value is not None:
            raise ValueError(f"pass {name} only (chunk_size is its deprecated name), got both")
        if not compiling():  # warned in eager; a warning inside a traced function would break the graph
            warnings.warn(f"chunk_size is deprecated: use {name} ({unit} per chunk)", DeprecationWarning,
                          stacklevel=3)
        name, value = "chunk_size", deprecated
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive number of {unit}, got {value!r}")
    return int(value)
