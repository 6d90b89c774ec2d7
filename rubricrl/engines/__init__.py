"""Policy engines: sampling with behaviour log-probs, token log-probs, verdict probabilities.

``VLLMEngine`` (``rubricrl.engines.vllm``, the ``rubricrl[vllm]`` extra) is not imported
here: importing it does not import vllm, but keeps this package free of it.
"""

from rubricrl.engines.base import Engine, Sample, VerdictOptions, VerdictRequest
from rubricrl.engines.cache import expand_cache
from rubricrl.engines.hf import HFEngine

__all__ = ["Engine", "HFEngine", "Sample", "VerdictOptions", "VerdictRequest", "expand_cache"]
