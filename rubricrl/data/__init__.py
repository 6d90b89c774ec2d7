"""Datasets for rubricrl: rubric prompts, meta-evaluation rows, preference pairs, JSONL helpers."""

from rubricrl.data.jsonl import DataError, write_jsonl
from rubricrl.data.pairs import PreferencePair, load_pair_jsonl
from rubricrl.data.rubrics import (
    MetaEvalRow,
    RubricItem,
    RubricPrompt,
    load_meta_eval_jsonl,
    load_rubric_jsonl,
)

__all__ = [
    "DataError",
    "MetaEvalRow",
    "PreferencePair",
    "RubricItem",
    "RubricPrompt",
    "load_meta_eval_jsonl",
    "load_pair_jsonl",
    "load_rubric_jsonl",
    "write_jsonl",
]
