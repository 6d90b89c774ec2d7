"""Input validation shared by the public ops. Every error names the argument and shape."""

from __future__ import annotations

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


def check_targets_in_range(targets: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Every target is in [0, vocab) or equals ignore_index (skipped under torch.compile)."""
    if compiling() or targets.numel() == 0:
        return
    bad = (targets != ignore_index) & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"targets{list(idx)} = {int(targets[idx])} is outside [0, {vocab}) and is not "
            f"ignore_index={ignore_index} (targets shape {tuple(targets.shape)})"
        )


def same_device(**tensors: torch.Tensor | None) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        if dev != first:
            listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
            raise ValueError(f"all tensors must be on one device: {listing}")
    return first


def check_output_projection(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, chunk_size: int | None
) -> None:
    """hidden ``[..., H]``, weight ``[V, H]``, bias ``[V]`` or None, chunk_size > 0 or None."""
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
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of vocabulary columns, got {chunk_size}")
