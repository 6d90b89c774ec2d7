"""Rubric judges: logprob (fast, prefix-shared) and generate (HealthBench-style).

```python
from rubricrl.engines import HFEngine
from rubricrl.judges import GradeRequest, make_judge

engine = HFEngine.from_path(None)                 # the policy itself grades (self-rewarding)
judge = make_judge("logprob", mode="expected", temperature=0.6)
results = judge.grade(engine, [GradeRequest(conversation, response, items, group_id="p0")])
```
"""

from rubricrl.judges.base import GradeRequest, GradeResult, Judge
from rubricrl.judges.encoding import JudgePromptEncoder, VerdictIds, verdict_token_ids
from rubricrl.judges.generate import GenerateJudge
from rubricrl.judges.logprob import MODES, LogprobJudge, VerdictProbs, verdicts_from_probs
from rubricrl.judges.meta_eval import meta_eval_requests, run_meta_eval
from rubricrl.judges.registry import JUDGES, build_judge, make_judge, register_judge

__all__ = [
    "JUDGES",
    "MODES",
    "GenerateJudge",
    "GradeRequest",
    "GradeResult",
    "Judge",
    "JudgePromptEncoder",
    "LogprobJudge",
    "VerdictIds",
    "VerdictProbs",
    "build_judge",
    "make_judge",
    "meta_eval_requests",
    "register_judge",
    "run_meta_eval",
    "verdict_token_ids",
    "verdicts_from_probs",
]
