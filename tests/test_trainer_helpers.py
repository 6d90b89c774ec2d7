"""Shared helpers for the trainer tests: small configs and deterministic stub judges.

The stub judges stand in for ``rubricrl.judges`` so these tests exercise the trainer
alone; they grade from the response text, so scores vary between responses.
"""

from __future__ import annotations

import zlib

from rubricrl.config import config_from_dict
from rubricrl.judges.base import GradeResult
from rubricrl.rewards.rubric_score import score_response


#: ``--set`` overrides of a small, fast CLI run of the tiny model on the CPU: 2 prompts x 2
#: responses of <= 4 tokens, self-graded (logprob judge), no progress bar, plot or logs.
TINY_CLI_SETS = [
    "--set", "model.device=cpu",
    "--set", "data.prompts_per_step=2",
    "--set", "rollout.n=2",
    "--set", "rollout.max_new_tokens=4",
    "--set", "optim.lr=1e-3",
    "--set", "trainer.progress=false",
    "--set", "trainer.plot=false",
    "--set", "trainer.log_every=1000",
]  # fmt: skip


def tiny_config(tmp_path, **sections):
    """A config for a fast CPU run of the tiny model; ``sections`` override per section."""
    raw = {
        "model": {"device": "cpu"},
        "data": {"prompts_per_step": 2},
        "rollout": {"n": 3, "max_new_tokens": 12},
        "optim": {"lr": 1e-3, "micro_batch_size": 4, "weight_decay": 0.0},
        "trainer": {"steps": 2, "out_dir": str(tmp_path / "run"), "progress": False, "plot": False, "log_every": 1000},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return config_from_dict(raw).validate()


def _p_met(response: str, k: int) -> float:
    return (zlib.crc32(f"{k}:{response}".encode()) % 1000) / 1000.0


class StubJudge:
    """p(met) from a hash of (item, response): deterministic, different per response."""

    name = "stub"

    def __init__(self):
        self.calls = 0

    def grade(self, engine, requests):
        self.calls += 1
        out = []
        for req in requests:
            probs = [_p_met(req.response, k) for k in range(len(req.items))]
            res = score_response(req.items, probs)
            out.append(GradeResult(probs, probs, res.score, res.ungraded, res.n_failed, engine.policy_version))
        return out


class FlakyJudge(StubJudge):
    """Fails every item of every second request (-> ungraded), the first item of every
    third, and raises on any call that includes a group whose id starts with ``raise_on``."""

    name = "flaky"

    def __init__(self, raise_on: str | None = None):
        super().__init__()
        self.raise_on = raise_on
        self.seen = 0

    def grade(self, engine, requests):
        if self.raise_on is not None and any(r.group_id.startswith(self.raise_on) for r in requests):
            raise RuntimeError("judge crashed")
        out = []
        for req in requests:
            idx = self.seen
            self.seen += 1
            n = len(req.items)
            probs = [_p_met(req.response, k) for k in range(n)]
            if idx % 2 == 1:
                probs = [None] * n
            elif idx % 3 == 0:
                probs[0] = None
            res = score_response(req.items, probs)
            out.append(GradeResult(probs, probs, res.score, res.ungraded, res.n_failed, engine.policy_version))
        return out


def test_stub_judge_is_deterministic():
    from rubricrl.data import RubricItem
    from rubricrl.judges.base import GradeRequest

    class E:
        policy_version = 3

    items = [RubricItem("a", 2.0), RubricItem("b", -1.0)]
    reqs = [GradeRequest([{"role": "user", "content": "q"}], text, items, "g") for text in ("x", "y")]
    a, b = StubJudge().grade(E(), reqs), StubJudge().grade(E(), reqs)
    assert [r.score for r in a] == [r.score for r in b]
    assert all(0.0 <= r.score <= 1.0 and r.judge_version == 3 for r in a)
