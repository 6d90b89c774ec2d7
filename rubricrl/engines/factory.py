"""``make_engine``: the engine a config or a CLI asks for, by backend name."""

from __future__ import annotations

from pathlib import Path

import torch

from rubricrl.engines.base import Engine

__all__ = ["BACKENDS", "make_engine"]

#: Engine backends by name (``engine.backend`` in the config, ``--engine`` of the CLIs).
BACKENDS = ("hf", "vllm", "sglang")


def make_engine(
    backend: str,
    model_path: str | Path | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    max_batch_size: int | None = None,
    kv_cache_mb: int | None = None,
    sglang_url: str | None = None,
) -> Engine:
    """Load the policy at ``model_path`` (None: the embedded tiny model) into a ``backend`` engine.

    ``max_batch_size`` applies to ``hf`` (vLLM schedules its own batches), ``kv_cache_mb``
    (None: ``VLLMEngine``'s default) to ``vllm``, ``sglang_url`` (the running server) to
    ``sglang`` (and is required there).

    Raises:
        ValueError: an unknown backend, a bad model, ``vllm`` when vLLM cannot be imported,
            ``sglang`` without a valid ``sglang_url``, or ``sglang_url`` with another backend.
    """
    if sglang_url is not None and backend != "sglang":
        raise ValueError(f"sglang_url applies to engine backend sglang only, not {backend!r}")
    if backend == "hf":
        from rubricrl.engines.hf import HFEngine

        return HFEngine.from_path(model_path, seed=seed, dtype=dtype, device=device, max_batch_size=max_batch_size)
    if backend == "vllm":
        from rubricrl.engines.vllm import VLLMEngine, vllm_available

        reason = vllm_available()
        if reason is not None:
            raise ValueError(f"engine backend vllm needs the rubricrl[vllm] extra (make test installs it): {reason}")
        kwargs = {} if kv_cache_mb is None else {"kv_cache_memory_bytes": kv_cache_mb << 20}
        return VLLMEngine.from_path(model_path, seed=seed, dtype=dtype, device=device, **kwargs)
    if backend == "sglang":
        from rubricrl.config import server_url_problem
        from rubricrl.engines.sglang import SGLangEngine

        problem = server_url_problem(sglang_url)
        if problem is not None:
            raise ValueError(f"engine backend sglang needs sglang_url: it {problem}")
        return SGLangEngine.from_path(model_path, seed=seed, dtype=dtype, device=device, url=sglang_url)
    raise ValueError(f"engine backend must be one of {BACKENDS}, got {backend!r}")
