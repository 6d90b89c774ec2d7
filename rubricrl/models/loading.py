"""Load the policy (model + tokenizer): the embedded tiny model or a local checkpoint."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rubricrl.models.tiny import build_tiny_model
from rubricrl.models.tokenizer import load_builtin_tokenizer

__all__ = ["load_policy"]

# Files of which a saved tokenizer has at least one.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_policy(
    model_path: str | Path | None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Return ``(model, tokenizer)`` for the policy, in eval mode, never touching the network.

    Args:
        model_path: ``None`` for the embedded tiny model (``build_tiny_model(seed)``) and the
            built-in byte-level tokenizer; otherwise a local directory written by
            ``save_pretrained`` holding both the model (``config.json`` + weights) and the
            tokenizer, loaded with ``local_files_only=True``.
        seed: weight seed of the tiny model (ignored for a checkpoint).
        dtype: parameter dtype of the returned model (e.g. ``torch.bfloat16``).

    The tokenizer is set to left padding (batched generation) and, when the checkpoint
    defines no pad token, pads with its eos token.

    Raises:
        ValueError: ``model_path`` does not exist, is not a directory, or is not a
            checkpoint (no ``config.json``), has no tokenizer, its weights cannot be read
            (a corrupt or truncated ``model.safetensors`` / ``pytorch_model.bin``: the message
            names the file), or ``dtype`` is not a floating dtype.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if model_path is None:
        model = build_tiny_model(seed=seed).to(dtype)
        return model, load_builtin_tokenizer()

    path = Path(model_path).expanduser()
    if not path.exists():
        raise ValueError(f"model_path {str(model_path)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"model_path {str(model_path)!r} is not a directory (expected a save_pretrained checkpoint)")
    if not (path / "config.json").is_file():
        raise ValueError(
            f"model_path {str(model_path)!r} is not a Hugging Face checkpoint: it has no config.json "
            "(write one with model.save_pretrained(path) and tokenizer.save_pretrained(path))"
        )
    # transformers would otherwise build an empty tokenizer from the model type alone.
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise ValueError(
            f"model_path {str(model_path)!r} has no tokenizer files (one of {list(_TOKENIZER_FILES)}); "
            "save the tokenizer beside the model with tokenizer.save_pretrained(path)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(f"model_path {str(model_path)!r} has no loadable tokenizer: {err}") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    except Exception as err:  # safetensors, pickle, zip and json errors share no base class
        raise ValueError(_weights_error(path, model_path, err)) from err
    model.eval()
    vocab = model.get_output_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise ValueError(
            f"tokenizer at model_path {str(model_path)!r} has {len(tokenizer)} tokens, more than the model's "
            f"output vocabulary of {vocab}: they do not belong together"
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer at model_path {str(model_path)!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _weights_error(path: Path, model_path: str | Path, err: Exception) -> str:
    """One line naming the weight file that would not load (found by a cheap probe of each)."""
    first = " ".join((str(err).strip().splitlines() or [""])[0].split())[:160]
    reason = f"{type(err).__name__}: {first}" if first else type(err).__name__
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    bad = next((f for f in files if not _weights_file_readable(f)), None)
    if bad is not None:
        return f"model_path {str(model_path)!r}: cannot read {bad} (corrupt or truncated? {reason})"
    if not files:
        return f"model_path {str(model_path)!r}: no loadable weights (no *.safetensors or pytorch_model*.bin; {reason})"
    return f"model_path {str(model_path)!r}: cannot load the model ({reason})"


def _weights_file_readable(file: Path) -> bool:
    """Whether a weight file's container is intact: a safetensors header, or a torch zip archive."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception:  # SafetensorError is not importable under a stable name
            return False
        return True
    return zipfile.is_zipfile(file)  # torch.save writes a zip archive since torch 1.6
