"""``SGLangEngine``: rollout and self-grading on a running SGLang server, training on the
trainer's torch model.

The engine talks to SGLang's native HTTP API (a server started separately, e.g.
``python -m sglang.launch_server --model-path DIR``); the client side needs nothing beyond
the standard library (``urllib``), so there is no Python extra to install here. The request
and response formats below follow SGLang's source (``python/sglang/srt/managers/io_struct.py``
``GenerateReqInput`` / ``UpdateWeightFromDiskReqInput``, ``entrypoints/http_server.py``, and
``managers/tokenizer_manager.py``, which builds ``meta_info``).

Two copies of the policy, as with ``VLLMEngine``:

- the **trainer's** torch model (``model``, ``hidden_states``, ``output_projection``,
  ``token_logprobs``): the trainer updates it in place;
- the **serving** copy in the SGLang server: ``generate`` and ``verdict_probs`` run there.
  At start and after every update (``bump_version``) and ``load_weights`` the trainer's
  weights are written with ``save_pretrained`` to ``weights_dir`` (a directory the server
  can read: same machine or a shared filesystem) and loaded by ``POST
  /update_weights_from_disk`` with ``weight_version = str(policy_version)``; then ``POST
  /flush_cache`` empties the radix (prefix) cache, whose entries hold keys/values of the old
  weights (newer servers flush on update by themselves; older ones do not, so the engine
  always flushes). Every response's ``meta_info.weight_version`` is checked against the
  policy version, which every sample and judgment records.
- ``colocated=True`` (server and trainer on one GPU, server started with
  ``--enable-memory-saver``): the KV cache is released (``POST /release_memory_occupation``,
  ``tags=["kv_cache"]``) before the new weights are written and loaded, and resumed (``POST
  /resume_memory_occupation``) after. ``release_memory`` / ``resume_memory`` are public for
  a caller that frees the server's memory during its own update step.

``/update_weights_from_tensor`` does not apply: it passes tensors as ``torch.multiprocessing``
handles (CUDA IPC, same node, produced by SGLang's own serializer in the caller's process),
not as data over HTTP; loading from disk works with a server in another process or on
another host.

Sampling (``/generate`` with ``input_ids``, one request per sample): ``temperature=T``,
``top_p``, ``top_k=-1``, ``min_p=0`` and no penalties, all sent explicitly because a server
started with ``--sampling-defaults model`` (the default) would fill unset ones from the
checkpoint's ``generation_config.json``; ``stop_token_ids`` = the trainer's stop tokens,
kept at the end of a finished response. ``sampling_seed`` is sent per request; SGLang honours
it only when the server runs with ``--enable-deterministic-inference``. Behaviour log-probs:

- ``top_p == 1``: SGLang's ``output_token_logprobs`` (``log_softmax(logits / T)`` of the
  sampled tokens, from the decode that sampled them), which needs a server *without*
  ``SGLANG_RETURN_ORIGINAL_LOGPROB`` (that variable makes them ignore ``T``);
- ``top_p < 1``: SGLang may renormalise them over the nucleus (its sampler did, in versions
  read), which is not rubricrl's definition, so they are computed teacher-forced on the
  trainer's model (the same weights), like ``VLLMEngine``.

Verdicts: one ``/generate`` request per (request, suffix) with ``max_new_tokens=1``,
``temperature=T`` and ``token_ids_logprob = yes + no``; ``meta_info.output_token_ids_logprobs[0]``
holds ``log_softmax(logits / T)`` of those ids, from which p(met) and the verdict mass
follow. Requests sharing the judge prefix and the response reuse them through SGLang's radix
cache. ``T`` below SGLang's greedy threshold (1e-6) is refused: SGLang would switch to greedy
and return untempered log-probs.

``token_logprobs`` runs on the trainer's model (``Engine``'s default).
"""

from __future__ import annotations

import json
import math
import random
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rubricrl.config import server_url_problem
from rubricrl.engines.base import Engine, Prompt, Sample, ServedEngine, VerdictOptions, VerdictRequest, check_sampling_args
from rubricrl.engines.hf import HFEngine
from rubricrl.engines.prompts import encode_prompts
from rubricrl.engines.scoring import verdicts_from_logprobs

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "SGLangClient",
    "SGLangEngine",
    "SGLangError",
    "SGLangStartError",
    "generate_payload",
    "parse_generate",
    "parse_verdicts",
    "update_weights_payload",
    "verdict_payload",
]

#: Seconds one HTTP call may take before the engine gives up (a whole rollout batch is one call).
DEFAULT_TIMEOUT_S = 600.0
#: SGLang treats a temperature below this as greedy (``sampling_params.py``, ``_SAMPLING_EPS``).
SGLANG_GREEDY_BELOW = 1e-6
#: Requests per ``/generate`` call (bounds the JSON body and one call's time).
DEFAULT_MAX_REQUESTS_PER_CALL = 512
#: The sub-directory of ``weights_dir`` the trainer's weights are written to.
WEIGHTS_SUBDIR = "rubricrl-policy"


class SGLangError(RuntimeError):
    """A failed call to the SGLang server; the message names the endpoint."""


class SGLangStartError(SGLangError, ValueError):
    """The server did not take the policy's weights when the engine started: a bad
    ``url`` / ``engine.sglang_url`` (or ``weights_dir``) as much as a server failure, so it is
    also a ValueError, which the CLIs report as bad input (exit 2)."""


# ---------------------------------------------------------------------------- transport


class SGLangClient:
    """JSON over HTTP to one SGLang server (``urllib``; one call at a time per request).

    Errors raise ``SGLangError`` naming the endpoint: HTTP errors with SGLang's message
    (``{"error": {"message": ...}}``, ``{"message": ...}`` or the text body), timeouts,
    refused connections, bodies that are not JSON where JSON is expected.
    """

    def __init__(self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        problem = server_url_problem(url)
        if problem is not None:
            raise ValueError(f"sglang url {problem}")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        self.url = url.strip().rstrip("/")
        self.timeout_s = float(timeout_s)

    def post(self, endpoint: str, payload: Mapping[str, Any] | None = None, *, expect_json: bool = True) -> Any:
        """``POST url + endpoint`` with a JSON body; the decoded JSON answer (or the text when
        ``expect_json=False``)."""
        body = json.dumps(payload if payload is not None else {}).encode()
        return self._call("POST", endpoint, body, expect_json)

    def get(self, endpoint: str, *, expect_json: bool = True) -> Any:
        return self._call("GET", endpoint, None, expect_json)

    def _call(self, method: str, endpoint: str, body: bytes | None, expect_json: bool) -> Any:
        req = urllib.request.Request(self.url + endpoint, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        where = f"SGLang {method} {endpoint} ({self.url})"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise SGLangError(f"{where}: HTTP {err.code}: {_error_message(err.read())}") from None
        except (TimeoutError, socket.timeout):
            raise SGLangError(f"{where}: no answer within {self.timeout_s:g} s (timeout_s)") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise SGLangError(f"{where}: no answer within {self.timeout_s:g} s (timeout_s)") from None
            raise SGLangError(f"{where}: cannot reach the server: {err.reason}") from None
        except (ConnectionError, OSError) as err:
            raise SGLangError(f"{where}: connection failed: {err}") from None
        text = raw.decode("utf-8", errors="replace")
        if not expect_json:
            return text
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            raise SGLangError(f"{where}: the answer is not JSON: {text[:200]!r}") from None


def _error_message(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return " ".join(text.split())[:500] or "(empty body)"
    if isinstance(data, Mapping):
        err = data.get("error")
        if isinstance(err, Mapping) and "message" in err:
            return str(err["message"])
        if "message" in data:
            return str(data["message"])
    return text[:500]


# ---------------------------------------------------------------------------- requests


def _sampling_params(max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
    """Every parameter that shapes the sampling distribution, set explicitly (see module doc)."""
    return {
        "max_new_tokens": int(max_new_tokens),
        "temperature": float(temperature),
        "top_p": float(top_p),
        "top_k": -1,
        "min_p": 0.0,
        "frequency_penalty": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,
    }


def generate_payload(
    rows: Sequence[Sequence[int]],
    seeds: Sequence[int],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_token_ids: Sequence[int],
    return_logprob: bool,
) -> dict[str, Any]:
    """The ``/generate`` body sampling one response per row (row ``i`` with ``seeds[i]``)."""
    if len(rows) != len(seeds):
        raise ValueError(f"{len(rows)} rows but {len(seeds)} seeds")
    base = _sampling_params(max_new_tokens, temperature, top_p)
    base["stop_token_ids"] = [int(t) for t in stop_token_ids]
    return {
        "input_ids": [[int(t) for t in row] for row in rows],
        "sampling_params": [{**base, "sampling_seed": int(seed)} for seed in seeds],
        "return_logprob": bool(return_logprob),
        "logprob_start_len": -1,  # output tokens only: no prompt log-probs computed
        "top_logprobs_num": 0,
        "stream": False,
    }


def verdict_payload(prompts: Sequence[Sequence[int]], verdict_ids: Sequence[int], temperature: float) -> dict[str, Any]:
    """The ``/generate`` body scoring ``verdict_ids`` at the token after each prompt."""
    ids = [int(t) for t in verdict_ids]
    return {
        "input_ids": [[int(t) for t in p] for p in prompts],
        "sampling_params": _sampling_params(1, temperature, 1.0),
        "return_logprob": True,
        "logprob_start_len": -1,
        "top_logprobs_num": 0,
        "token_ids_logprob": [ids for _ in prompts],
        "stream": False,
    }


def update_weights_payload(model_path: str, version: int) -> dict[str, Any]:
    """The ``/update_weights_from_disk`` body: load ``model_path``, then serve ``version``."""
    return {"model_path": str(model_path), "weight_version": str(version)}


# ---------------------------------------------------------------------------- responses


@dataclass(frozen=True)
class Generated:
    """One parsed ``/generate`` output: the response ids (a finished one ends with its stop
    token), ``finished``, and the per-token log-probs (None when not requested)."""

    response_ids: list[int]
    finished: bool
    logprobs: list[float] | None


def _items(body: Any, n: int, endpoint: str) -> list[Mapping[str, Any]]:
    """The list of ``n`` per-request outputs of a batch ``/generate`` call."""
    if isinstance(body, Mapping) and n == 1:
        body = [body]  # a server may answer a batch of one with the bare object
    if not isinstance(body, list) or len(body) != n or not all(isinstance(x, Mapping) for x in body):
        got = f"a list of {len(body)}" if isinstance(body, list) else type(body).__name__
        raise SGLangError(f"SGLang {endpoint}: expected a list of {n} outputs, got {got}")
    for i, item in enumerate(body):
        if not isinstance(item.get("meta_info"), Mapping):
            raise SGLangError(f"SGLang {endpoint}: output {i} has no meta_info")
    return list(body)


def _check_version(meta: Mapping[str, Any], version: int, i: int, endpoint: str) -> None:
    served = meta.get("weight_version")
    if served != str(version):
        raise SGLangError(
            f"SGLang {endpoint}: output {i} was produced by weight version {served!r}, but the policy version is "
            f"{version} (weights not synced, or another client updated the server)"
        )


def parse_generate(
    body: Any,
    n: int,
    stop_token_ids: Sequence[int],
    *,
    max_new_tokens: int,
    version: int,
    with_logprobs: bool,
) -> list[Generated]:
    """Parse a batch ``/generate`` answer of ``n`` sampled responses.

    Per output: ``output_ids``; ``meta_info.finish_reason`` (``{"type": "stop", "matched":
    id}`` or ``{"type": "length", "length": n}``; ``"abort"`` is an error);
    ``meta_info.weight_version`` (must be ``str(version)``); with ``with_logprobs``,
    ``meta_info.output_token_logprobs``: one ``[logprob, token_id, text|null]`` per generated
    token. A stop token trimmed from ``output_ids`` is put back (it is the policy's choice);
    the log-prob token ids must then equal the response ids.
    """
    endpoint = "POST /generate"
    stop = {int(t) for t in stop_token_ids}
    out: list[Generated] = []
    for i, item in enumerate(_items(body, n, endpoint)):
        meta = item["meta_info"]
        _check_version(meta, version, i, endpoint)
        reason = meta.get("finish_reason")
        kind = reason.get("type") if isinstance(reason, Mapping) else None
        if kind not in ("stop", "length"):
            raise SGLangError(f"SGLang {endpoint}: output {i} did not finish normally: finish_reason {reason!r}")
        ids = item.get("output_ids")
        if not isinstance(ids, list) or not all(isinstance(t, int) for t in ids):
            raise SGLangError(f"SGLang {endpoint}: output {i} has no list of output_ids")
        ids = list(ids)
        if kind == "stop":
            matched = reason.get("matched")
            if not isinstance(matched, int) or matched not in stop:
                raise SGLangError(
                    f"SGLang {endpoint}: output {i} stopped on {matched!r}, not one of the stop tokens {sorted(stop)}"
                )
            if not ids or ids[-1] != matched:
                ids.append(matched)  # trimmed by the server; the response keeps it
        elif len(ids) != max_new_tokens or (ids and ids[-1] in stop):
            raise SGLangError(
                f"SGLang {endpoint}: output {i} finished by length with {len(ids)} tokens "
                f"(max_new_tokens={max_new_tokens}, last {ids[-1:]})"
            )
        logprobs = None
        if with_logprobs:
            entries = meta.get("output_token_logprobs")
            if not isinstance(entries, list):
                raise SGLangError(f"SGLang {endpoint}: output {i} has no meta_info.output_token_logprobs")
            lp_ids = [int(e[1]) for e in entries]
            if lp_ids != ids:
                raise SGLangError(
                    f"SGLang {endpoint}: output {i}: output_token_logprobs cover tokens {lp_ids[:8]}... "
                    f"({len(lp_ids)}), the response is {ids[:8]}... ({len(ids)})"
                )
            logprobs = [float(e[0]) for e in entries]
        out.append(Generated(ids, kind == "stop", logprobs))
    return out


def parse_verdicts(body: Any, n: int, verdict_ids: Sequence[int], *, version: int) -> torch.Tensor:
    """``[n, len(verdict_ids)]`` float64 log-probs of the verdict ids, in ``verdict_ids`` order,
    from ``meta_info.output_token_ids_logprobs[0]`` (``[[logprob, token_id, text|null], ...]``)
    of each output of a verdict ``/generate`` call."""
    endpoint = "POST /generate"
    ids = [int(t) for t in verdict_ids]
    rows: list[list[float]] = []
    for i, item in enumerate(_items(body, n, endpoint)):
        meta = item["meta_info"]
        _check_version(meta, version, i, endpoint)
        positions = meta.get("output_token_ids_logprobs")
        if not isinstance(positions, list) or not positions or not isinstance(positions[0], list):
            raise SGLangError(f"SGLang {endpoint}: output {i} has no meta_info.output_token_ids_logprobs[0]")
        got = {int(e[1]): e[0] for e in positions[0]}
        missing = [t for t in ids if t not in got]
        if missing:
            raise SGLangError(f"SGLang {endpoint}: output {i} lacks the log-probs of verdict tokens {missing}")
        row = [float(got[t]) for t in ids]
        if any(math.isnan(v) for v in row):
            raise SGLangError(f"SGLang {endpoint}: output {i} has NaN verdict log-probs {row}")
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).reshape(n, len(ids))


# ---------------------------------------------------------------------------- the engine


class SGLangEngine(ServedEngine):
    """Engine whose rollout and grading run on an SGLang server at ``url``.

    Args:
        model: the trainer's policy (a ``transformers`` causal LM of the architecture the
            server serves); its weights are pushed to the server at start (``sync_on_start``).
        tokenizer: its tokenizer; prompts are tokenized here, the server gets ids.
        url: the server's base URL, ``http://host:port``.
        device: where the trainer's model runs.
        policy_version: the version of the weights given.
        weights_dir: where the weights are written for ``/update_weights_from_disk`` (a
            directory the server can read; None: a temporary directory on this machine).
        timeout_s: seconds one HTTP call may take.
        colocated: release the server's KV cache around weight updates (needs a server
            started with ``--enable-memory-saver``).
        sync_on_start: push the trainer's weights at start (False: the caller guarantees the
            server serves exactly these weights, at ``policy_version``).
        max_requests_per_call: requests per ``/generate`` call.
        client: an ``SGLangClient`` to use instead of one built from ``url`` and ``timeout_s``.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        url: str | None = None,
        device: torch.device | str | None = None,
        policy_version: int = 0,
        weights_dir: str | Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        colocated: bool = False,
        sync_on_start: bool = True,
        max_requests_per_call: int = DEFAULT_MAX_REQUESTS_PER_CALL,
        client: SGLangClient | None = None,
    ) -> None:
        super().__init__(policy_version=policy_version)
        if client is None:
            if url is None:
                raise ValueError("SGLangEngine needs url= (the SGLang server, http://host:port)")
            client = SGLangClient(url, timeout_s=timeout_s)
        if not isinstance(max_requests_per_call, int) or max_requests_per_call < 1:
            raise ValueError(f"max_requests_per_call must be an int >= 1, got {max_requests_per_call!r}")
        self._client = client
        self._trainer = HFEngine(model, tokenizer, device=device, policy_version=policy_version)
        self._stop_ids = self._trainer.stop_token_ids
        self._tmp = tempfile.TemporaryDirectory(prefix="rubricrl-sglang-") if weights_dir is None else None
        self._weights_path = Path(self._tmp.name if self._tmp else weights_dir) / WEIGHTS_SUBDIR
        self._colocated = bool(colocated)
        self._max_requests = max_requests_per_call
        self._closed = False
        if sync_on_start:
            try:
                self._sync(self.policy_version)
            except SGLangError as err:
                self.close()
                raise SGLangStartError(str(err)) from None

    # ---- identity and weights -----------------------------------------------------------

    @property
    def client(self) -> SGLangClient:
        return self._client

    @property
    def weights_path(self) -> Path:
        """The directory the trainer's weights are written to for the server."""
        return self._weights_path

    @property
    def served_version(self) -> str | None:
        """The weight version the server reports (``GET /get_weight_version``)."""
        body = self._client.get("/get_weight_version")
        return body.get("weight_version") if isinstance(body, Mapping) else None

    def bump_version(self) -> int:
        """The trainer updated ``model`` in place: push its weights to the server, new version."""
        version = super().bump_version()
        self._sync(version)
        return version

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Load ``state_dict`` into the trainer's model (strict) and into the server; set ``version``."""
        self._check_new_version(version)
        self._trainer.load_weights(state_dict, version)
        self._set_version(version)
        self._sync(version)

    def release_memory(self, tags: Sequence[str] | None = None) -> None:
        """``POST /release_memory_occupation`` (``tags``: e.g. ``["kv_cache"]``, ``["weights"]``; None: all)."""
        self._check_open()
        self._client.post("/release_memory_occupation", {"tags": None if tags is None else list(tags)})

    def resume_memory(self, tags: Sequence[str] | None = None) -> None:
        """``POST /resume_memory_occupation`` (same ``tags`` as ``release_memory``)."""
        self._check_open()
        self._client.post("/resume_memory_occupation", {"tags": None if tags is None else list(tags)})

    def flush_cache(self) -> None:
        """``POST /flush_cache``; SGLang refuses (HTTP 400) while requests are running."""
        self._check_open()
        self._client.post("/flush_cache", expect_json=False)

    def _sync(self, version: int) -> None:
        """Server <- trainer's weights (from disk); radix cache flushed; server version = ``version``."""
        self._check_open()
        self._weights_path.mkdir(parents=True, exist_ok=True)
        if self._colocated:
            self.release_memory(["kv_cache"])
        try:
            self.model.save_pretrained(self._weights_path)
            body = self._client.post(
                "/update_weights_from_disk", update_weights_payload(str(self._weights_path), version)
            )
            if not isinstance(body, Mapping) or body.get("success") is not True:
                raise SGLangError(f"SGLang POST /update_weights_from_disk did not succeed: {body!r}")
        finally:
            if self._colocated:  # resumed even after a failed update: the server stays usable
                self.resume_memory(["kv_cache"])
        # Mandatory: cached prefixes hold keys/values computed by the old weights.
        self.flush_cache()

    # ---- sampling -------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """Sample ``n`` responses for every prompt on the server; see ``HFEngine.generate``.

        ``seed``: each of the ``len(prompts) * n`` requests gets its own ``sampling_seed``
        derived from it (None: from the global torch RNG); reproducible only on a server
        with deterministic inference (see the module doc).
        """
        check_sampling_args(n, max_new_tokens, temperature, top_p, seed)
        _check_temperature(temperature)
        self._check_open()
        version = self.policy_version
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        if not prompt_ids:
            return []
        rows = [ids for ids in prompt_ids for _ in range(n)]  # row i * n + j: sample j of prompt i
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        rng = random.Random(seed)
        seeds = [rng.getrandbits(31) for _ in rows]  # 31 bits: fits whatever int type the server seeds with
        own_logprobs = top_p == 1.0
        generated: list[Generated] = []
        for start in range(0, len(rows), self._max_requests):
            chunk = slice(start, start + self._max_requests)
            payload = generate_payload(
                rows[chunk], seeds[chunk], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                stop_token_ids=self._stop_ids, return_logprob=own_logprobs,
            )
            body = self._client.post("/generate", payload)
            generated += parse_generate(
                body, len(payload["input_ids"]), self._stop_ids, max_new_tokens=max_new_tokens, version=version,
                with_logprobs=own_logprobs,
            )
        responses = [g.response_ids for g in generated]
        if own_logprobs:
            logprobs = [g.logprobs or [] for g in generated]
        else:
            # the trainer's model holds the served weights (synced at every version change)
            logprobs = self.token_logprobs(rows, responses, temperature=temperature)
        flat = [
            Sample(
                prompt_ids=list(prompt),
                response_ids=g.response_ids,
                response_text=self.tokenizer.decode(
                    g.response_ids[:-1] if g.finished else g.response_ids, skip_special_tokens=True
                ),
                behaviour_logprobs=lp,
                finished=g.finished,
                policy_version=version,
            )
            for prompt, g, lp in zip(rows, generated, logprobs)
        ]
        return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

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
        """See ``Engine.verdict_probs``: verdict-token log-probs from the server, one request
        per (request, suffix), prefixes shared by SGLang's radix cache (``options`` are
        batching hints for hidden-state engines and do not apply)."""
        verdict_ids = list(yes_ids) + list(no_ids)
        if not yes_ids or not no_ids or len(set(verdict_ids)) != len(verdict_ids):
            raise ValueError(f"yes_ids and no_ids must be non-empty and disjoint, got {list(yes_ids)}, {list(no_ids)}")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
        _check_temperature(temperature)
        self._check_open()
        version = self.policy_version
        prompts = [list(r.prefix) + list(r.body) + list(s) for r in requests for s in r.suffixes]
        if not prompts:
            empty = torch.empty(0, dtype=torch.float32)
            return empty, (empty.clone() if return_mass else None)
        parts = []
        for start in range(0, len(prompts), self._max_requests):
            chunk = prompts[start : start + self._max_requests]
            body = self._client.post("/generate", verdict_payload(chunk, verdict_ids, temperature))
            parts.append(parse_verdicts(body, len(chunk), verdict_ids, version=version))
        p_met, mass = verdicts_from_logprobs(torch.cat(parts), len(yes_ids))
        return p_met, (mass if return_mass else None)

    # ---- life cycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Delete the weights written here (a temporary ``weights_dir`` only); the server,
        started by someone else, keeps running."""
        if self._closed:
            return
        self._closed = True
        if self._tmp is not None:
            self._tmp.cleanup()


def _check_temperature(temperature: float) -> None:
    if temperature < SGLANG_GREEDY_BELOW:
        raise ValueError(
            f"temperature {temperature!r} is below SGLang's greedy threshold {SGLANG_GREEDY_BELOW:g}: SGLang would "
            "sample greedily and return log-probs without the temperature"
        )
