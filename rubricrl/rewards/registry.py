"""Reward sources by name: the registry that ``reward.source`` in a config names.

It holds names and factories only and imports nothing of rubricrl, so that
``rubricrl.config`` checks ``reward.source`` without importing the pipeline (which reads
the config: the layers run config -> pipeline, never back).

The built-in sources (:data:`BUILTIN_REWARD_SOURCES`) are defined in
``rubricrl.pipeline.rewards`` and register when it is imported; build one with
``rubricrl.pipeline.make_reward_source``. Add one with ``@register_reward_source("name")``
on a factory ``factory(config, *, judge=None) -> RewardSource``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["BUILTIN_REWARD_SOURCES", "register_reward_source", "reward_source_factory", "reward_source_names"]

#: The sources ``rubricrl.pipeline.rewards`` registers (a test checks that it does).
BUILTIN_REWARD_SOURCES: tuple[str, ...] = ("mix", "pairwise_judge", "patarm", "rlpr", "rubric")

#: name -> ``factory(config, *, judge=None) -> RewardSource``.
_REGISTRY: dict[str, Callable[..., Any]] = {}


def register_reward_source(name: str, *, overwrite: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``factory(config, *, judge=None) -> RewardSource`` under ``name``.

    Raises:
        ValueError: ``name`` is not a non-empty string, or is already registered and
            ``overwrite`` is false (the judge registry behaves the same).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward source name must be a non-empty string, got {name!r}")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"a reward source named {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = factory
        return factory

    return deco


def reward_source_names() -> list[str]:
    """Sorted names ``reward.source`` may take: the built-ins and every registered source."""
    return sorted(set(BUILTIN_REWARD_SOURCES) | set(_REGISTRY))


def reward_source_factory(name: str) -> Callable[..., Any]:
    """The factory registered as ``name``.

    Raises:
        ValueError: nothing is registered under ``name`` (listing what is).
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown reward source {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return factory
