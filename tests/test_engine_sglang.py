"""SGLangEngine without an SGLang server (SGLang cannot run here: it pins torch 2.14.1 and its
kernels are CUDA-only; the real-server checks are in bench/gpu_check.py's GPU run).

What is tested here:

1. request building: the exact JSON of every call (``/generate`` for rollout and verdicts,
   ``/update_weights_from_disk``, ``/flush_cache``, ``/release_memory_occupation``,
   ``/resume_memory_occupation``), as SGLang's ``GenerateReqInput`` /
   ``UpdateWeightFromDiskReqInput`` define the fields;
2. response parsing, on example responses written from SGLang's source. None of them was
   recorded from a server: they are built field by field from the code that produces the
   answer (see ``SGLANG_SOURCE``), with our own token ids and numbers;
3. the engine's HTTP traffic and error handling against a REPLAY server: a stdlib
   ``http.server`` in a thread that answers in SGLang's format, computing log-probs with
   the tiny model in float64. It is not SGLang; it checks our transport, our parsing and our
   arithmetic, not SGLang's numbers.
"""

from __future__ import annotations

import copy
import http.server
import json
import math
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from rubricrl.cli.grade import main_grade
from rubricrl.config import ConfigError, load_config
from rubricrl.data.builtin import builtin_meta_eval, builtin_rubric_prompts
from rubricrl.engines import HFEngine, VerdictRequest
from rubricrl.engines.factory import make_engine
from rubricrl.engines.sglang import (
    SGLangClient,
    SGLangEngine,
    SGLangError,
    SGLangStartError,
    generate_payload,
    parse_generate,
    parse_verdicts,
    update_weights_payload,
    verdict_payload,
)
from rubricrl.engines.scoring import verdicts_from_logprobs
from rubricrl.judges import GradeRequest, LogprobJudge
from rubricrl.models import build_tiny_model, load_builtin_tokenizer

#: Where the response format below comes from (sgl-project/sglang, read for this test).
SGLANG_SOURCE = {
    "request fields": "python/sglang/srt/managers/io_struct.py GenerateReqInput, UpdateWeightFromDiskReqInput "
    "(commit 001067fffe33427bee0ed2f007fb7551a1d76b44)",
    "endpoints": "python/sglang/srt/entrypoints/http_server.py: /generate returns the output dicts; "
    "/update_weights_from_disk {success, message, num_paused_requests} with 200 or 400; /flush_cache plain text "
    "200 or 400; errors {'error': {'message': ...}} (commit 0025436eab0556737d615b36a4dd3e1e26e82f3d)",
    "output dict": "python/sglang/srt/managers/tokenizer_manager.py _handle_batch_output: "
    "{'output_ids', 'meta_info': {'id', 'finish_reason', 'prompt_tokens', 'weight_version', ..., "
    "'completion_tokens', 'cached_tokens'}} (+ 'text' unless --skip-tokenizer-init); add_logprob_to_meta_info / "
    "detokenize_logprob_tokens: 'output_token_logprobs' = [(logprob, token_id, None)], "
    "'output_token_ids_logprobs' = per output position [(logprob, token_id, None), ...] (JSON: lists)",
    "finish_reason": "python/sglang/srt/managers/schedule_batch.py FINISH_MATCHED_TOKEN.to_json "
    "{'type': 'stop', 'matched': id}, FINISH_LENGTH.to_json {'type': 'length', 'length': n}",
}

# Example outputs written from SGLANG_SOURCE (not recordings). Prompt 11 12 13, stop token 2.
SOURCE_EXAMPLE_STOPPED = {  # stop token kept in output_ids
    "output_ids": [40, 41, 2],
    "meta_info": {
        "id": "a1", "finish_reason": {"type": "stop", "matched": 2}, "prompt_tokens": 3, "weight_version": "4",
        "total_retractions": 0, "completion_tokens": 3, "cached_tokens": 0,
        "input_token_logprobs": [],
        "output_token_logprobs": [[-0.25, 40, None], [-1.5, 41, None], [-0.125, 2, None]],
    },
}
SOURCE_EXAMPLE_TRIMMED = {  # the same, with the stop token trimmed from output_ids
    "output_ids": [40, 41],
    "meta_info": {**SOURCE_EXAMPLE_STOPPED["meta_info"], "id": "a2"},
}
SOURCE_EXAMPLE_LENGTH = {
    "text": "ab c",  # present when the server has its tokenizer
    "output_ids": [40, 41, 42],
    "meta_info": {
        "id": "a3", "finish_reason": {"type": "length", "length": 3}, "prompt_tokens": 3, "weight_version": "4",
        "total_retractions": 0, "completion_tokens": 3, "cached_tokens": 2,
        "input_token_logprobs": [],
        "output_token_logprobs": [[-0.5, 40, None], [-0.75, 41, None], [-2.0, 42, None]],
    },
}
SOURCE_EXAMPLE_VERDICT = {
    "output_ids": [7],
    "meta_info": {
        "id": "v1", "finish_reason": {"type": "length", "length": 1}, "prompt_tokens": 9, "weight_version": "4",
        "total_retractions": 0, "completion_tokens": 1, "cached_tokens": 8,
        "input_token_logprobs": [], "output_token_logprobs": [[-0.1, 7, None]],
        "input_token_ids_logprobs": [],
        # the order follows the request's token_ids_logprob, which need not be ours
        "output_token_ids_logprobs": [[[-2.5, 31, None], [-0.5, 30, None], [-3.0, 32, None]]],
    },
}


# ------------------------------------------------------------------------ 1. request JSON


def test_generate_payload_is_sglangs_generate_req_input():
    got = generate_payload(
        [[11, 12, 13], [14]], [7, 9], max_new_tokens=5, temperature=0.7, top_p=0.9, stop_token_ids=[2, 3],
        return_logprob=True,
    )
    params = {
        "max_new_tokens": 5, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
        "presence_penalty": 0.0, "repetition_penalty": 1.0, "stop_token_ids": [2, 3],
    }
    assert got == {
        "input_ids": [[11, 12, 13], [14]],
        "sampling_params": [{**params, "sampling_seed": 7}, {**params, "sampling_seed": 9}],
        "return_logprob": True,
        "logprob_start_len": -1,
        "top_logprobs_num": 0,
        "stream": False,
    }
    json.dumps(got)  # plain JSON types only


def test_verdict_payload_asks_for_the_verdict_token_ids():
    got = verdict_payload([[1, 2, 3], [1, 2, 4]], [30, 31, 32], 0.6)
    assert got == {
        "input_ids": [[1, 2, 3], [1, 2, 4]],
        "sampling_params": {
            "max_new_tokens": 1, "temperature": 0.6, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
            "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0,
        },
        "return_logprob": True,
        "logprob_start_len": -1,
        "top_logprobs_num": 0,
        "token_ids_logprob": [[30, 31, 32], [30, 31, 32]],
        "stream": False,
    }


def test_update_weights_payload():
    assert update_weights_payload("/shared/w", 12) == {"model_path": "/shared/w", "weight_version": "12"}


# ------------------------------------------------------------------------ 2. parsing


def test_parse_generate_on_source_examples():
    body = [SOURCE_EXAMPLE_STOPPED, SOURCE_EXAMPLE_TRIMMED, SOURCE_EXAMPLE_LENGTH]
    got = parse_generate(body, 3, [2, 3], max_new_tokens=3, version=4, with_logprobs=True)
    assert [g.response_ids for g in got] == [[40, 41, 2], [40, 41, 2], [40, 41, 42]]
    assert [g.finished for g in got] == [True, True, False]
    assert [g.logprobs for g in got] == [[-0.25, -1.5, -0.125], [-0.25, -1.5, -0.125], [-0.5, -0.75, -2.0]]
    bare = parse_generate(SOURCE_EXAMPLE_LENGTH, 1, [2], max_new_tokens=3, version=4, with_logprobs=False)
    assert bare[0].response_ids == [40, 41, 42] and bare[0].logprobs is None


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: o["meta_info"].update(weight_version="3"), "weight version '3', but the policy version is 4"),
        (lambda o: o["meta_info"].update(finish_reason={"type": "abort", "message": "oom"}), "did not finish normally"),
        (lambda o: o["meta_info"].update(finish_reason={"type": "stop", "matched": 40}), "stopped on 40"),
        (lambda o: o["meta_info"].update(finish_reason={"type": "stop", "matched": "</s>"}), "stopped on '</s>'"),
        (lambda o: o["meta_info"]["output_token_logprobs"].pop(), "output_token_logprobs cover tokens"),
        (lambda o: o["meta_info"].pop("output_token_logprobs"), "no meta_info.output_token_logprobs"),
        (lambda o: o.pop("output_ids"), "no list of output_ids"),
    ],
)
def test_parse_generate_rejects_what_it_cannot_trust(change, message):
    bad = copy.deepcopy(SOURCE_EXAMPLE_STOPPED)
    change(bad)
    with pytest.raises(SGLangError, match="POST /generate: output 0"):
        try:
            parse_generate([bad], 1, [2], max_new_tokens=3, version=4, with_logprobs=True)
        except SGLangError as err:
            assert message in str(err)
            raise


def test_parse_generate_checks_the_length_and_the_count():
    short = copy.deepcopy(SOURCE_EXAMPLE_LENGTH)
    with pytest.raises(SGLangError, match="finished by length with 3 tokens"):
        parse_generate([short], 1, [2], max_new_tokens=4, version=4, with_logprobs=True)
    with pytest.raises(SGLangError, match="expected a list of 2 outputs, got a list of 1"):
        parse_generate([short], 2, [2], max_new_tokens=3, version=4, with_logprobs=True)


def test_parse_verdicts_on_a_source_example():
    logp = parse_verdicts([SOURCE_EXAMPLE_VERDICT], 1, [30, 31, 32], version=4)
    assert logp.dtype == torch.float64 and logp.tolist() == [[-0.5, -2.5, -3.0]]  # our order, not the server's
    with pytest.raises(SGLangError, match=r"lacks the log-probs of verdict tokens \[33\]"):
        parse_verdicts([SOURCE_EXAMPLE_VERDICT], 1, [30, 33], version=4)
    with pytest.raises(SGLangError, match="weight version '4', but the policy version is 5"):
        parse_verdicts([SOURCE_EXAMPLE_VERDICT], 1, [30], version=5)


def test_verdicts_from_logprobs_by_hand():
    # yes = {30}, no = {31, 32}: p = e^-0.5, e^-2.5, e^-3.0
    p_met, mass = verdicts_from_logprobs(torch.tensor([[-0.5, -2.5, -3.0]], dtype=torch.float64), 1)
    p = [math.exp(-0.5), math.exp(-2.5), math.exp(-3.0)]
    assert p_met.dtype == torch.float32 and mass.dtype == torch.float32
    assert p_met.item() == pytest.approx(p[0] / sum(p), rel=1e-6)
    assert mass.item() == pytest.approx(sum(p), rel=1e-6)


# ------------------------------------------------------------------------ 3. the replay server


class Replay:
    """A REPLAY server, not SGLang: records every request and answers with ``respond(method,
    path, body) -> (status, payload)`` (a dict/list is sent as JSON, a str as text)."""

    def __init__(self, respond):
        self.respond = respond
        self.requests: list[tuple[str, str, object]] = []
        replay = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self):
                size = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(size) if size else b""
                body = json.loads(raw) if raw else None
                replay.requests.append((self.command, self.path, body))
                status, payload = replay.respond(self.command, self.path, body)
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def paths(self):
        return [(m, p) for m, p, _ in self.requests]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class ModelAnswers:
    """Answers ``/generate`` in SGLang's format with log-probs of the tiny model computed here in
    float64 (full forwards, ``log_softmax(logits / T)``): the reference the engine's parsing and
    arithmetic are checked against. Rollout responses are the prompt's first ``k`` tokens
    (``k = min(2, max_new_tokens)``), plus the stop token when there is room; the stop token
    is trimmed from ``output_ids`` in every other output, as a server may."""

    def __init__(self, model, stop_id):
        self.model, self.stop_id = model, stop_id
        self.version = "0"
        self.generate_calls = 0

    def logprobs(self, ids, temperature):
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0].double()
        return torch.log_softmax(logits / temperature, dim=-1)

    def __call__(self, method, path, body):
        if path == "/update_weights_from_disk":
            self.version = body["weight_version"]
            return 200, {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}
        if path in ("/flush_cache", "/release_memory_occupation", "/resume_memory_occupation"):
            return 200, "Cache flushed.\n" if path == "/flush_cache" else None
        if path == "/get_weight_version":
            return 200, {"weight_version": self.version}
        assert path == "/generate", path
        self.generate_calls += 1
        outs = []
        for i, ids in enumerate(body["input_ids"]):
            params = body["sampling_params"][i] if isinstance(body["sampling_params"], list) else body["sampling_params"]
            t, m = params["temperature"], params["max_new_tokens"]
            meta = {"id": f"r{i}", "prompt_tokens": len(ids), "weight_version": self.version, "cached_tokens": 0}
            if body.get("token_ids_logprob"):
                lp = self.logprobs(ids, t)[-1]
                meta.update(finish_reason={"type": "length", "length": 1}, completion_tokens=1)
                meta["output_token_ids_logprobs"] = [[[lp[k].item(), k, None] for k in body["token_ids_logprob"][i]]]
                outs.append({"output_ids": [5], "meta_info": meta})
                continue
            resp = list(ids[: min(2, m)]) + ([self.stop_id] if m > 2 else [])
            lp = self.logprobs(list(ids) + resp, t)
            meta["finish_reason"] = {"type": "stop", "matched": self.stop_id} if m > 2 else {"type": "length", "length": m}
            meta["completion_tokens"] = len(resp)
            if body["return_logprob"]:
                meta["output_token_logprobs"] = [
                    [lp[len(ids) - 1 + k, tok].item(), tok, None] for k, tok in enumerate(resp)
                ]
            shown = resp[:-1] if (m > 2 and i % 2) else resp
            outs.append({"output_ids": shown, "meta_info": meta})
        return 200, outs


def _tiny():
    model = build_tiny_model(seed=3)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # varied log-probs
    return model, load_builtin_tokenizer()


@contextmanager
def _engine(tmp_path, **kwargs):
    model, tok = _tiny()
    answers = ModelAnswers(copy.deepcopy(model), tok.eos_token_id)
    with Replay(answers) as replay:
        engine = SGLangEngine(model, tok, url=replay.url, weights_dir=tmp_path, **kwargs)
        try:
            yield engine, replay, answers
        finally:
            engine.close()


def test_start_pushes_the_weights_from_disk_then_flushes(tmp_path):
    with _engine(tmp_path) as (engine, replay, _):
        assert replay.requests == [
            ("POST", "/update_weights_from_disk",
             {"model_path": str(tmp_path / "rubricrl-policy"), "weight_version": "0"}),
            ("POST", "/flush_cache", {}),
        ]
        from safetensors.torch import load_file

        saved = load_file(str(engine.weights_path / "model.safetensors"))
        state = engine.model.state_dict()
        assert (engine.weights_path / "config.json").is_file()
        for name, tensor in saved.items():
            assert torch.equal(tensor, state[name]), name
        assert engine.served_version == "0"


def test_colocated_updates_release_and_resume_the_kv_cache(tmp_path):
    with _engine(tmp_path, colocated=True) as (engine, replay, _):
        replay.requests.clear()
        with torch.no_grad():
            engine.model.lm_head.weight.mul_(1.5)
        assert engine.bump_version() == 1
        assert replay.requests == [
            ("POST", "/release_memory_occupation", {"tags": ["kv_cache"]}),
            ("POST", "/update_weights_from_disk",
             {"model_path": str(tmp_path / "rubricrl-policy"), "weight_version": "1"}),
            ("POST", "/resume_memory_occupation", {"tags": ["kv_cache"]}),
            ("POST", "/flush_cache", {}),
        ]
        from safetensors.torch import load_file

        saved = load_file(str(engine.weights_path / "model.safetensors"))
        assert torch.equal(saved["lm_head.weight"], engine.model.lm_head.weight)


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_generate_through_the_replay(tmp_path, top_p):
    prompts = ["The cat sat on", [{"role": "user", "content": "Fix a bike chain?"}]]
    with _engine(tmp_path, max_requests_per_call=3) as (engine, replay, answers):
        replay.requests.clear()
        out = engine.generate(prompts, 2, max_new_tokens=4, temperature=0.7, top_p=top_p, seed=5)
        again = engine.generate(prompts, 2, max_new_tokens=4, temperature=0.7, top_p=top_p, seed=5)
        bodies = [b for _, p, b in replay.requests if p == "/generate"]
        assert len(bodies) == 4  # 4 rows in chunks of 3, twice
        assert bodies[:2] == bodies[2:]  # the same seed gives the same requests
        seeds = [sp["sampling_seed"] for b in bodies[:2] for sp in b["sampling_params"]]
        assert len(set(seeds)) == 4
        assert all(b["return_logprob"] is (top_p == 1.0) for b in bodies)
        assert [[s.response_ids for s in row] for row in out] == [[s.response_ids for s in row] for row in again]
        stop = engine.stop_token_ids
        for row in out:
            for s in row:
                assert s.finished and s.response_ids == s.prompt_ids[:2] + [stop[0]]
                assert s.policy_version == 0
                want = answers.logprobs(s.prompt_ids + s.response_ids, 0.7)
                ref = [want[len(s.prompt_ids) - 1 + k, t].item() for k, t in enumerate(s.response_ids)]
                assert s.behaviour_logprobs == pytest.approx(ref, abs=1e-5)
        cut = engine.generate(["abc"], 1, max_new_tokens=2, temperature=1.0, seed=0)[0][0]
        assert not cut.finished and len(cut.response_ids) == 2


def test_verdicts_through_the_replay_match_the_hf_judge(tmp_path):
    """The replay answers with the tiny model's float64 log-probs of the verdict tokens; the
    engine's p(met) and mass must equal the HF engine's fused judge on the shipped rubrics."""
    prompts = builtin_rubric_prompts()[:2]
    completions = [row.completion for row in builtin_meta_eval()[:4]]
    requests = [
        GradeRequest(p.prompt, completions[2 * i + j], p.rubrics, group_id=p.prompt_id)
        for i, p in enumerate(prompts)
        for j in range(2)
    ]
    judge = LogprobJudge(temperature=0.8)
    with _engine(tmp_path, max_requests_per_call=7) as (engine, replay, answers):
        hf = HFEngine(copy.deepcopy(engine.model), engine.tokenizer)
        got = judge.verdict_probs(engine, requests)
        want = judge.verdict_probs(hf, requests)
        assert got.p_met.numel() >= 10 and answers.generate_calls >= 2  # chunked
        torch.testing.assert_close(got.p_met, want.p_met, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.mass, want.mass, atol=1e-5, rtol=0)
        assert len(set(got.p_met.tolist())) > got.p_met.numel() // 2
        body = next(b for _, p, b in replay.requests if p == "/generate")
        assert body["sampling_params"]["temperature"] == 0.8 and body["sampling_params"]["max_new_tokens"] == 1


def test_a_bump_flushes_and_a_stale_server_is_caught(tmp_path):
    with _engine(tmp_path) as (engine, replay, answers):
        engine.bump_version()
        assert replay.paths()[-2:] == [("POST", "/update_weights_from_disk"), ("POST", "/flush_cache")]
        answers.version = "0"  # as if another client had loaded older weights
        with pytest.raises(SGLangError, match="weight version '0', but the policy version is 1"):
            engine.generate(["abc"], 1, max_new_tokens=3)
        req = VerdictRequest(prefix=[5, 6], body=[7], suffixes=[[8], [9]])
        with pytest.raises(SGLangError, match="weight version '0', but the policy version is 1"):
            engine.verdict_probs([req], [10], [11], temperature=1.0)


def test_engine_argument_errors(tmp_path):
    model, tok = _tiny()
    with pytest.raises(ValueError, match="needs url="):
        SGLangEngine(model, tok)
    with pytest.raises(ValueError, match="http:// or https://"):
        SGLangEngine(model, tok, url="127.0.0.1:30000")
    with _engine(tmp_path) as (engine, _, _):
        with pytest.raises(ValueError, match="greedy threshold"):
            engine.generate(["a"], 1, max_new_tokens=2, temperature=1e-7)
        with pytest.raises(ValueError, match="disjoint"):
            engine.verdict_probs([], [1], [1], temperature=1.0)
        engine.close()
        with pytest.raises(RuntimeError, match="closed"):
            engine.generate(["a"], 1, max_new_tokens=2)


# ------------------------------------------------------------------------ transport errors (replay)


def test_http_500_names_the_endpoint_and_sglangs_message():
    def respond(method, path, body):
        return 500, {"error": {"message": "CUDA out of memory"}}

    with Replay(respond) as replay:
        client = SGLangClient(replay.url, timeout_s=5)
        with pytest.raises(SGLangError) as info:
            client.post("/generate", {"input_ids": [[1]]})
    assert str(info.value) == f"SGLang POST /generate ({replay.url}): HTTP 500: CUDA out of memory"


def test_a_refused_update_and_flush_are_errors(tmp_path):
    def respond(method, path, body):
        if path == "/update_weights_from_disk":
            return 400, {"success": False, "message": "Failed to get weights iterator: no such file", "num_paused_requests": 0}
        return 400, "Cache flushed.\nPlease check backend logs for more details.\n"

    model, tok = _tiny()
    with Replay(respond) as replay:
        with pytest.raises(SGLangStartError, match="/update_weights_from_disk .*HTTP 400: Failed to get weights iterator"):
            SGLangEngine(model, tok, url=replay.url, weights_dir=tmp_path)
        assert issubclass(SGLangStartError, ValueError)  # bad input to the CLIs (exit 2)
        engine = SGLangEngine(model, tok, url=replay.url, weights_dir=tmp_path, sync_on_start=False)
        with pytest.raises(SGLangError, match="/flush_cache .*HTTP 400: Cache flushed"):
            engine.flush_cache()


def test_a_slow_server_times_out_with_a_clear_error():
    def respond(method, path, body):
        time.sleep(1.0)
        return 200, []

    with Replay(respond) as replay:
        client = SGLangClient(replay.url, timeout_s=0.2)
        with pytest.raises(SGLangError, match=r"POST /generate .*no answer within 0.2 s \(timeout_s\)"):
            client.post("/generate", {})


def test_unreachable_server_and_non_json_answers():
    with Replay(lambda m, p, b: (200, "<html>not json</html>")) as replay:
        with pytest.raises(SGLangError, match="GET /get_weight_version .*the answer is not JSON"):
            SGLangClient(replay.url).get("/get_weight_version")
        url = replay.url
    with pytest.raises(SGLangError, match="POST /generate .*cannot reach the server"):
        SGLangClient(url, timeout_s=2).post("/generate", {})


# ------------------------------------------------------------------------ config, factory, CLI


def test_config_backend_sglang_needs_a_url():
    with pytest.raises(ConfigError, match=r"^engine.sglang_url: engine.backend=sglang needs it"):
        load_config(None, ["engine.backend=sglang"])
    with pytest.raises(ConfigError, match=r"^engine.sglang_url: .*http:// or https://"):
        load_config(None, ["engine.backend=sglang", "engine.sglang_url=localhost:30000"])
    with pytest.raises(ConfigError, match=r"^engine.sglang_url: applies to engine.backend=sglang only"):
        load_config(None, ["engine.sglang_url=http://127.0.0.1:30000"])
    with pytest.raises(ConfigError, match=r"^pipeline.overlap: engine.backend=sglang cannot sample on a producer"):
        load_config(None, ["engine.backend=sglang", "engine.sglang_url=http://h:1", "pipeline.overlap=thread"])
    cfg = load_config(None, ["engine.backend=sglang", "engine.sglang_url=http://127.0.0.1:30000"])
    assert (cfg.engine.backend, cfg.engine.sglang_url) == ("sglang", "http://127.0.0.1:30000")


def test_make_engine_sglang(tmp_path):
    with pytest.raises(ValueError, match="engine backend sglang needs sglang_url"):
        make_engine("sglang")
    with pytest.raises(ValueError, match="sglang_url applies to engine backend sglang only"):
        make_engine("hf", sglang_url="http://127.0.0.1:1")
    answers = ModelAnswers(None, None)
    with Replay(answers) as replay:
        engine = make_engine("sglang", sglang_url=replay.url)
        try:
            assert isinstance(engine, SGLangEngine) and answers.version == "0"
        finally:
            engine.close()


def test_grade_cli_engine_sglang(tmp_path, capsys):
    example = tmp_path / "in.jsonl"
    assert main_grade(["--example", str(example)]) == 0
    out = str(tmp_path / "out.jsonl")
    capsys.readouterr()
    assert main_grade([str(example), "--out", out, "--engine", "sglang"]) == 2
    assert "--sglang-url: --engine sglang needs it" in capsys.readouterr().err
    assert main_grade([str(example), "--out", out, "--sglang-url", "http://127.0.0.1:1"]) == 2
    assert "--sglang-url applies to --engine sglang only" in capsys.readouterr().err
    with Replay(lambda m, p, b: (500, {"error": {"message": "boom"}})) as replay:
        assert main_grade([str(example), "--out", out, "--engine", "sglang", "--sglang-url", replay.url]) == 2
    err = capsys.readouterr().err
    assert f"--sglang-url {replay.url}: SGLang POST /update_weights_from_disk" in err and "HTTP 500: boom" in err
    assert not Path(out).exists()


def test_train_cli_reports_an_unusable_server(tmp_path, capsys):
    from rubricrl.cli import main

    with Replay(lambda m, p, b: (503, {"error": {"message": "not ready"}})) as replay:
        code = main(["train", "--out", str(tmp_path / "run"), "--set", "engine.backend=sglang",
                     "--set", f"engine.sglang_url={replay.url}", "--set", "trainer.steps=1"])
    assert code == 2
    assert "SGLang POST /update_weights_from_disk" in capsys.readouterr().err
