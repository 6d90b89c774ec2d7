"""A small rubric dataset written by the rubricrl project, shipped with the package.

* ``rubric_prompts.jsonl``: 25 prompts (health, advice, writing, coding), each
  with 5-12 rubric items in HealthBench's format, some with negative points.
* ``meta_eval.jsonl``: 52 meta-evaluation rows (a completion, one criterion,
  1-3 reviewer labels, a category) for checking a judge with MF1.
* ``pairs.jsonl`` / ``pairs_heldout.jsonl``: 72 / 24 preference pairs whose preference
  a rule check decides (``data.dataset=builtin:pairs`` / ``builtin:pairs-heldout``),
  written by ``python -m rubricrl.data.builtin.make_pairs``.

All text is original. It is meant for smoke tests, examples and quick judge
checks, not as a benchmark: it is far too small to rank models.

Packaging: ``setup.py`` must list the files in ``package_data``, as
``{"rubricrl.data": ["builtin/*.jsonl"]}`` (checked with ``build_py``), for them
to be installed.
"""

from __future__ import annotations

from importlib import resources

from rubricrl.data.pairs import PreferencePair, load_pair_jsonl
from rubricrl.data.rubrics import MetaEvalRow, RubricPrompt, load_meta_eval_jsonl, load_rubric_jsonl

__all__ = ["PAIR_DATASETS", "builtin_learning_prompts", "builtin_meta_eval", "builtin_pairs", "builtin_rubric_prompts"]

RUBRIC_PROMPTS_FILE = "rubric_prompts.jsonl"
META_EVAL_FILE = "meta_eval.jsonl"
#: The learning task (``data.dataset=builtin:learning``): every rubric item rule-checked, so
#: the reward is exact and the embedded tiny model can be seen to climb it.
LEARNING_PROMPTS_FILE = "learning_prompts.jsonl"
#: Shipped preference pairs by ``data.dataset`` name (reward.source=patarm | pairwise_judge).
PAIR_DATASETS = {"builtin:pairs": "pairs.jsonl", "builtin:pairs-heldout": "pairs_heldout.jsonl"}


def builtin_rubric_prompts() -> list[RubricPrompt]:
    """Load the shipped rubric prompts (validated like any other file)."""
    with resources.as_file(resources.files(__name__) / RUBRIC_PROMPTS_FILE) as path:
        return load_rubric_jsonl(path)


def builtin_learning_prompts() -> list[RubricPrompt]:
    """Load the shipped learning task: rubric prompts whose items are all rule-checked."""
    with resources.as_file(resources.files(__name__) / LEARNING_PROMPTS_FILE) as path:
        return load_rubric_jsonl(path)


def builtin_meta_eval() -> list[MetaEvalRow]:
    """Load the shipped meta-evaluation rows."""
    with resources.as_file(resources.files(__name__) / META_EVAL_FILE) as path:
        return load_meta_eval_jsonl(path)


def builtin_pairs(name: str = "builtin:pairs") -> list[PreferencePair]:
    """Load shipped preference pairs: ``name`` is one of :data:`PAIR_DATASETS`.

    Raises:
        ValueError: ``name`` is not a shipped pair set.
    """
    if name not in PAIR_DATASETS:
        raise ValueError(f"no shipped pair set {name!r}; expected one of {', '.join(PAIR_DATASETS)}")
    with resources.as_file(resources.files(__name__) / PAIR_DATASETS[name]) as path:
        return load_pair_jsonl(path)
