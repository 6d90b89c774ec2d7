"""Adapters that plug rubricrl into other RL trainers (see docs/integrations.md).

* :mod:`rubricrl.integrations.trl`: TRL's ``GRPOTrainer`` with rubricrl's fused
  log-prob kernel (and optionally its fused loss), and a rubric reward function.
* :mod:`rubricrl.integrations.verl`: verl policy losses registered as ``rubricrl_*``,
  a ``linear_cross_entropy`` replacement for verl's fused-kernel forward, and a
  rubric ``compute_score``.

Each module imports its host lazily: importing this package needs neither.
"""
