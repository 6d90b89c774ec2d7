"""HFEngine.generate: shapes, stop handling, seeds, behaviour log-probs, versions, argument errors."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig

from rubricrl.engines import HFEngine, Sample
from rubricrl.models import build_tiny_model, load_builtin_tokenizer

CHATS = [
    [{"role": "user", "content": "Name a prime number."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße! 😀"}],
]


def _engine(seed: int = 0, *, head_scale: float = 1.0, eos_bias: float | None = None, **kwargs) -> HFEngine:
    """Tiny engine; ``head_scale`` sharpens the next-token distribution (the random model is near
    uniform), ``eos_bias`` swaps in an LM head with a bias that favours <|eos|>."""
    model = build_tiny_model(seed=seed)
    tok = load_builtin_tokenizer()
    with torch.no_grad():
        model.lm_head.weight.mul_(head_scale)
        if eos_bias is not None:
            head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
            head.weight.copy_(model.lm_head.weight)
            head.bias.zero_()
            head.bias[tok.eos_token_id] = eos_bias
            model.set_output_embeddings(head)
    return HFEngine(model, tok, **kwargs)


def _reference_logprobs(engine: HFEngine, sample: Sample, temperature: float) -> torch.Tensor:
    """log_softmax(logits / T) of the response tokens from an unpadded teacher-forced model forward."""
    ids = torch.tensor([sample.prompt_ids + sample.response_ids])
    with torch.no_grad():
        logits = engine.model(input_ids=ids).logits[0, len(sample.prompt_ids) - 1 : -1].double()
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return logprobs.gather(1, torch.tensor(sample.response_ids)[:, None]).squeeze(1)


def _check_sample_invariants(engine: HFEngine, sample: Sample, max_new_tokens: int) -> None:
    stop = set(engine.stop_token_ids)
    assert 1 <= len(sample.response_ids) <= max_new_tokens
    assert len(sample.behaviour_logprobs) == len(sample.response_ids)
    assert all(isinstance(x, float) and x <= 0.0 for x in sample.behaviour_logprobs)
    assert not stop & set(sample.response_ids[:-1])  # a stop token can only be last
    assert sample.finished == (sample.response_ids[-1] in stop)
    if not sample.finished:
        assert len(sample.response_ids) == max_new_tokens
    body = sample.response_ids[:-1] if sample.finished else sample.response_ids
    assert sample.response_text == engine.tokenizer.decode(body, skip_special_tokens=True)


def test_generate_shapes_prompts_and_invariants():
    engine = _engine()
    prompts = [*CHATS, "raw text prompt"]
    out = engine.generate(prompts, 3, max_new_tokens=8, seed=0)
    assert len(out) == 3 and all(len(group) == 3 for group in out)
    tok = engine.tokenizer
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])

    def text_ids(text):
        return tok.encode(text, add_special_tokens=False)

    def chat_ids(messages):  # ChatML, the special tokens as single ids between text pieces
        ids = []
        for m in messages:
            ids += [im_start, *text_ids(f"{m['role']}\n{m['content']}"), im_end, *text_ids("\n")]
        return ids + [im_start, *text_ids("assistant\n")]

    expected_prompts = [chat_ids(CHATS[0]), chat_ids(CHATS[1]), text_ids("raw text prompt")]
    for group, expected in zip(out, expected_prompts):
        for sample in group:
            assert sample.prompt_ids == expected
            assert sample.policy_version == 0
            _check_sample_invariants(engine, sample, 8)
    assert engine.generate([], 2, max_new_tokens=4) == []


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_behaviour_logprobs_match_teacher_forced_forward(temperature, top_p):
    # A sharpened head and an eos bias give varied log-probs and responses of mixed
    # lengths, so left padding of prompts and right padding of responses are both exercised.
    engine = _engine(seed=2, head_scale=8.0, eos_bias=5.0)
    out = engine.generate(CHATS, 4, max_new_tokens=10, temperature=temperature, top_p=top_p, seed=3)
    lengths = {len(s.response_ids) for group in out for s in group}
    assert len(lengths) > 1
    for group in out:
        for sample in group:
            _check_sample_invariants(engine, sample, 10)
            ref = _reference_logprobs(engine, sample, temperature)
            got = torch.tensor(sample.behaviour_logprobs, dtype=torch.float64)
            torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_behaviour_logprobs_match_the_logits_generate_sampled_from():
    """Rerun transformers' generate on the same left-padded batch with the same seed, keeping its
    raw logits: the same tokens come out, and log_softmax(logits / T) of them is our log-prob."""
    engine = _engine(seed=4, head_scale=8.0)
    temperature, n, steps = 0.8, 2, 6
    out = engine.generate(["abc", "a much longer prompt"], n, max_new_tokens=steps, temperature=temperature, seed=9)
    def text_ids(text):
        return engine.tokenizer.encode(text, add_special_tokens=False)

    rows = [text_ids("abc")] * n + [text_ids("a much longer prompt")] * n
    width = max(map(len, rows))
    pad = engine.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    config = GenerationConfig(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=steps,
                              pad_token_id=pad, eos_token_id=engine.stop_token_ids)
    torch.manual_seed(9)
    ref = engine.model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                output_logits=True, return_dict_in_generate=True)
    samples = [s for group in out for s in group]
    for b, sample in enumerate(samples):
        k = len(sample.response_ids)
        assert ref.sequences[b, width : width + k].tolist() == sample.response_ids
        logits = torch.stack([ref.logits[t][b] for t in range(k)]).double()
        want = torch.log_softmax(logits / temperature, -1).gather(1, torch.tensor(sample.response_ids)[:, None])
        torch.testing.assert_close(torch.tensor(sample.behaviour_logprobs, dtype=torch.float64), want[:, 0],
                                   atol=1e-4, rtol=0)


def test_top_p_samples_stay_in_the_nucleus():
    engine = _engine(seed=5, head_scale=8.0)
    top_p = 0.5
    out = engine.generate(CHATS, 4, max_new_tokens=8, top_p=top_p, seed=1)
    for sample in (s for group in out for s in group):
        ids = torch.tensor([sample.prompt_ids + sample.response_ids])
        with torch.no_grad():
            logits = engine.model(input_ids=ids).logits[0, len(sample.prompt_ids) - 1 : -1]
        probs = torch.softmax(logits.double(), -1)
        for t, tok in enumerate(sample.response_ids):
            mass_above = probs[t][probs[t] > probs[t, tok]].sum().item()
            assert mass_above < top_p + 1e-4


def test_seeded_generation_is_deterministic_and_leaves_global_rng_alone():
    engine = _engine(seed=1)
    kwargs = dict(max_new_tokens=12, temperature=1.0)
    torch.manual_seed(77)
    expected_next = torch.rand(3)
    torch.manual_seed(77)
    a = engine.generate(CHATS, 3, seed=42, **kwargs)
    assert torch.equal(torch.rand(3), expected_next)
    b = engine.generate(CHATS, 3, seed=42, **kwargs)
    c = engine.generate(CHATS, 3, seed=43, **kwargs)
    assert a == b
    assert [s.response_ids for g in a for s in g] != [s.response_ids for g in c for s in g]
    # The n samples of one prompt are distinct draws, not copies.
    assert len({tuple(s.response_ids) for s in a[0]}) > 1
    # seed=None draws from the global RNG.
    torch.manual_seed(5)
    d = engine.generate(CHATS, 2, **kwargs)
    torch.manual_seed(5)
    assert engine.generate(CHATS, 2, **kwargs) == d


def test_checkpoint_generation_defaults_do_not_change_sampling():
    engine = _engine(seed=2, head_scale=8.0)
    plain = engine.generate(CHATS, 3, max_new_tokens=10, seed=1)
    saved = engine.model.generation_config
    saved.repetition_penalty, saved.top_k, saved.min_p = 3.0, 5, 0.5
    saved.suppress_tokens = list(range(97, 123))
    assert engine.generate(CHATS, 3, max_new_tokens=10, seed=1) == plain
    assert engine.model.generation_config is saved


def test_max_batch_size_splits_without_changing_the_results_layout():
    engine = _engine(seed=2, head_scale=8.0, eos_bias=5.0, max_batch_size=3)
    out = engine.generate(CHATS, 4, max_new_tokens=6, seed=0)
    assert [len(g) for g in out] == [4, 4]
    assert engine.generate(CHATS, 4, max_new_tokens=6, seed=0) == out
    for g in out:
        for s in g:
            _check_sample_invariants(engine, s, 6)
            torch.testing.assert_close(torch.tensor(s.behaviour_logprobs, dtype=torch.float64),
                                       _reference_logprobs(engine, s, 1.0), atol=1e-4, rtol=0)


def test_empty_responses_are_reported():
    # The bias makes <|eos|> (almost) certain at every step: every response is empty.
    engine = _engine(seed=0, eos_bias=60.0)
    eos = engine.tokenizer.eos_token_id
    weight, bias = engine.output_projection()
    assert bias is not None and bias.shape == (weight.shape[0],)
    out = engine.generate(CHATS, 3, max_new_tokens=5, seed=0)
    for sample in (s for g in out for s in g):
        assert sample.response_ids == [eos]
        assert sample.finished and sample.response_text == ""
        _check_sample_invariants(engine, sample, 5)
        torch.testing.assert_close(torch.tensor(sample.behaviour_logprobs, dtype=torch.float64),
                                   _reference_logprobs(engine, sample, 1.0), atol=1e-4, rtol=0)


def test_versions_and_load_weights():
    engine = _engine(seed=0)
    assert engine.policy_version == 0
    other = build_tiny_model(seed=1)
    engine.load_weights(other.state_dict(), version=3)
    assert engine.policy_version == 3
    ids = torch.tensor([engine.tokenizer.encode("check the weights", add_special_tokens=False)])
    with torch.no_grad():
        torch.testing.assert_close(engine.model(input_ids=ids).logits, other(input_ids=ids).logits, atol=0, rtol=0)
    assert all(s.policy_version == 3 for g in engine.generate(["x"], 2, max_new_tokens=2, seed=0) for s in g)
    assert engine.bump_version() == 4
    assert engine.generate(["x"], 1, max_new_tokens=2, seed=0)[0][0].policy_version == 4
    with pytest.raises(ValueError, match="version"):
        engine.load_weights(other.state_dict(), version=2)
    partial = dict(other.state_dict())
    partial.pop("lm_head.weight")
    with pytest.raises(ValueError, match="missing.*lm_head.weight"):
        engine.load_weights(partial, version=5)
    reshaped = dict(other.state_dict())
    reshaped["model.norm.weight"] = torch.zeros(3)
    before = engine.model.lm_head.weight.clone()
    with pytest.raises(ValueError, match="wrong shape.*model.norm.weight"):
        engine.load_weights({**reshaped, "lm_head.weight": torch.zeros_like(before)}, version=5)
    assert torch.equal(engine.model.lm_head.weight, before)  # nothing was half-loaded
    assert engine.policy_version == 4


@pytest.mark.parametrize(
    "prompts,kwargs,match",
    [
        (["a"], dict(n=0), "n must"),
        (["a"], dict(max_new_tokens=0), "max_new_tokens"),
        (["a"], dict(temperature=0.0), "temperature"),
        (["a"], dict(top_p=0.0), "top_p"),
        (["a"], dict(top_p=1.5), "top_p"),
        (["a"], dict(seed=-1), "seed"),
        ("a", {}, "prompts must be a list"),
        ([[]], {}, r"prompts\[0\]"),
        ([123], {}, r"prompts\[0\]"),
        ([""], {}, "zero tokens"),
    ],
)
def test_generate_argument_errors(prompts, kwargs, match):
    engine = _engine()
    args = dict(n=1, max_new_tokens=2) | kwargs
    n = args.pop("n")
    with pytest.raises(ValueError, match=match):
        engine.generate(prompts, n, **args)


def test_bf16_model_samples_and_scores_in_fp32():
    engine = HFEngine.from_path(None, seed=0, dtype=torch.bfloat16)
    assert engine.model.lm_head.weight.dtype == torch.bfloat16
    out = engine.generate(CHATS, 2, max_new_tokens=5, seed=0)
    for sample in (s for g in out for s in g):
        _check_sample_invariants(engine, sample, 5)
        # The engine scores in fp32 from the bf16 hidden states; the model's own logits are bf16,
        # so the two agree to bf16 rounding of the logits only.
        torch.testing.assert_close(torch.tensor(sample.behaviour_logprobs, dtype=torch.float64),
                                   _reference_logprobs(engine, sample, 1.0), atol=3e-2, rtol=0)
