"""LogprobJudge: prefix-shared p(met) equals unshared and a direct forward; modes; results."""

from __future__ import annotations

import math

import pytest
import torch

from rubricrl.data.rubrics import RubricItem
from rubricrl.engines import HFEngine
from rubricrl.judges import GradeRequest, LogprobJudge, make_judge, verdict_token_ids, verdicts_from_probs
from rubricrl.models import build_tiny_model, load_builtin_tokenizer
from rubricrl.rewards.judge_prompts import verdict_words
from rubricrl.rewards.rubric_score import score_response


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: the tiny model gains nothing from two, and on a busy shared
    machine two spinning OpenMP threads make these forwards several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

CONV_A = [{"role": "user", "content": "My bike chain keeps slipping when I pedal hard. What should I check?"}]
CONV_B = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Is it safe to take ibuprofen with coffee?"},
]
ITEMS = [
    RubricItem("Mentions chain wear.", 5),
    RubricItem("Suggests checking the rear derailleur adjustment and the cassette for worn teeth, step by step.", 3),
    RubricItem("Recommends buying a new bike.", -4),
]
RESPONSES = ["Check it.", "Look at the chain for stretch and the cassette for wear; adjust the derailleur.", "x" * 60]


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.from_path(None, seed=3)


@pytest.fixture(scope="module")
def small_engine() -> HFEngine:
    """A 1-layer tiny model for the tests of judge logic (4x less compute than the default)."""
    return HFEngine(build_tiny_model(seed=5, num_hidden_layers=1), load_builtin_tokenizer(), policy_version=5)


@pytest.fixture(scope="module")
def requests_() -> list[GradeRequest]:
    reqs = [GradeRequest(CONV_A, r, ITEMS, group_id="a") for r in RESPONSES]
    reqs.append(GradeRequest(CONV_B, "Usually yes.", ITEMS[:2], group_id="b"))
    return reqs


@pytest.fixture(scope="module")
def shared_probs(engine, requests_):
    return LogprobJudge(temperature=0.8, max_batch_tokens=1 << 16).verdict_probs(engine, requests_)


def _reference_p(engine, judge, request, item, temperature):
    """p(met) from a plain full forward of the judge prompt through the HF model."""
    enc = judge.prompt_encoder(engine.tokenizer)
    ids = enc.prefix_ids(request.conversation) + enc.response_ids(request.response) + enc.suffix_ids(item)
    with torch.no_grad():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    vid = judge.verdict_ids(engine.tokenizer)
    z = logits / temperature
    lse_yes = torch.logsumexp(z[list(vid.yes)], 0)
    lse_all = torch.logsumexp(z[list(vid.yes) + list(vid.no)], 0)
    mass = torch.exp(lse_all - torch.logsumexp(z, 0))
    return float(torch.exp(lse_yes - lse_all)), float(mass)


def test_prefix_shared_equals_unshared(engine, requests_, shared_probs):
    """Several responses and items of different lengths, two groups; batched in one pass
    (the fixture) and in small chunks (one response per forward, so the packed suffixes
    run on rows selected from the responses' cache)."""
    unshared_judge = LogprobJudge(temperature=0.8, share_prefix=False, max_batch_tokens=3000)
    unshared_judge.pad_unshared = True  # right-padded batches of full prompts (as on a GPU)
    unshared = unshared_judge.verdict_probs(engine, requests_)
    one_by_one = LogprobJudge(temperature=0.8, share_prefix=False).verdict_probs(engine, requests_)
    chunked = LogprobJudge(temperature=0.8, max_batch_tokens=600).verdict_probs(engine, requests_)
    assert shared_probs.offsets.tolist() == unshared.offsets.tolist() == [0, 3, 6, 9, 11]
    torch.testing.assert_close(shared_probs.p_met, unshared.p_met, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared_probs.mass, unshared.mass, atol=1e-4, rtol=0)
    torch.testing.assert_close(one_by_one.p_met, unshared.p_met, atol=1e-4, rtol=0)
    torch.testing.assert_close(chunked.p_met, unshared.p_met, atol=1e-4, rtol=0)
    assert len(set(shared_probs.p_met.tolist())) == 11  # distinct prompts give distinct p(met)


def test_p_met_matches_a_direct_forward(engine, requests_, shared_probs):
    judge = LogprobJudge(temperature=0.8)
    for r, k in [(0, 0), (2, 2), (3, 1)]:
        p_ref, mass_ref = _reference_p(engine, judge, requests_[r], requests_[r].items[k], 0.8)
        flat = int(shared_probs.offsets[r]) + k
        assert shared_probs.p_met[flat].item() == pytest.approx(p_ref, abs=1e-4)
        assert shared_probs.mass[flat].item() == pytest.approx(mass_ref, abs=1e-4)


def test_prefixes_run_once_together_and_each_response_once(small_engine, requests_):
    engine = small_engine
    calls = []
    original = engine.forward_with_cache

    def spy(input_ids, past_key_values=None, attention_mask=None, segment_ids=None):
        past = 0 if past_key_values is None else past_key_values.get_seq_length()
        segments = None if segment_ids is None else [len(set(row) - {-1}) for row in segment_ids.tolist()]
        calls.append((tuple(input_ids.shape), past, segments))
        return original(input_ids, past_key_values, attention_mask, segment_ids)

    engine.forward_with_cache = spy
    try:
        LogprobJudge().verdict_probs(engine, requests_)
    finally:
        del engine.forward_with_cache
    # one prefix pass for both conversations (2 rows), then the 4 responses of both groups in
    # one batch, then their 11 (response, item) suffixes, each once: packed into each
    # response's row of the response cache (responses longest first: 3, 3, 3 items for
    # group a's "x" * 60, its long sentence, then group b's 2 and group a's "Check it." 3)
    assert [(shape[0], past, segments) for shape, past, segments in calls][0] == (2, 0, None)
    assert [(shape[0], segments) for shape, past, segments in calls[1:]] == [(4, None), (4, [3, 3, 2, 3])]


def test_verdict_token_ids_of_the_builtin_tokenizer(engine):
    tok = engine.tokenizer
    ids = verdict_token_ids(tok)
    yes_words, no_words = verdict_words()
    # Each id is the start of a verdict word of its own side and of no word of the other side.
    for side, words, other in ((ids.yes, yes_words, no_words), (ids.no, no_words, yes_words)):
        for i in side:
            text = tok.decode([i])
            assert text and any(w.startswith(text) for w in words) and not any(w.startswith(text) for w in other)
    assert not set(ids.yes) & set(ids.no) and ids.dropped == ()
    # The BPE merges make the spaced lower-case words, what follows "Verdict:", one token each.
    assert tok.encode(" true", add_special_tokens=False) == [ids.yes[0]]
    assert tok.encode(" false", add_special_tokens=False) == [ids.no[0]]
    # A first token shared by a yes and a no word is dropped from both sets.
    (spaces,) = tok.encode("  ", add_special_tokens=False)  # a whitespace run is one piece
    assert tok.encode("  yes", add_special_tokens=False)[0] == spaces == tok.encode("  no", add_special_tokens=False)[0]
    shared = verdict_token_ids(tok, [" true", "  yes"], [" false", "  no"])
    assert shared.dropped == (spaces,) and shared.yes == (ids.yes[0],) and shared.no == (ids.no[0],)
    with pytest.raises(ValueError, match="no usable verdict tokens"):
        verdict_token_ids(tok, ["yes"], ["yikes"])


def test_prompt_encoding_is_the_chat_rendering(engine):
    judge = LogprobJudge()
    enc = judge.prompt_encoder(engine.tokenizer)
    assert enc.uses_chat_template
    text = enc.full_text(CONV_A, RESPONSES[1], ITEMS[1])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_end|>\n<|im_start|>assistant\nVerdict:")
    ids = enc.prefix_ids(CONV_A) + enc.response_ids(RESPONSES[1]) + enc.suffix_ids(ITEMS[1])
    assert ids == engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    raw = LogprobJudge(chat_template=False).prompt_encoder(engine.tokenizer)
    assert raw.full_text(CONV_A, "r", ITEMS[0]).endswith("</criterion>\nVerdict:")


def test_modes_follow_the_probabilities(small_engine, requests_):
    engine = small_engine
    reqs = requests_[:2]
    p = LogprobJudge(temperature=0.8).verdict_probs(engine, reqs).p_met.tolist()
    expected = LogprobJudge(temperature=0.8, mode="expected").grade(engine, reqs)
    threshold = LogprobJudge(temperature=0.8, mode="threshold").grade(engine, reqs)
    flat_exp = [m for r in expected for m in r.item_met]
    flat_thr = [m for r in threshold for m in r.item_met]
    assert flat_exp == pytest.approx(p, abs=1e-5)
    assert flat_thr == [1.0 if q >= 0.5 else 0.0 for q in flat_exp]
    for res, req in zip(expected, reqs):
        assert res.item_probs == res.item_met
        assert res.score == pytest.approx(score_response(req.items, res.item_met).score, abs=1e-6)
    for res, req in zip(threshold, reqs):
        assert res.score == pytest.approx(score_response(req.items, res.item_met).score, abs=1e-6)


def test_sample_mode_is_reproducible_with_a_seed(small_engine, requests_):
    a = LogprobJudge(mode="sample", seed=7).grade(small_engine, requests_)
    b = LogprobJudge(mode="sample", seed=7).grade(small_engine, requests_)
    assert [r.item_met for r in a] == [r.item_met for r in b]
    assert {m for r in a for m in r.item_met} <= {0.0, 1.0}
    assert [r.score for r in a] == [r.score for r in b]


def test_sampled_verdicts_average_to_p():
    p = torch.full((20000,), 0.3)
    gen = torch.Generator().manual_seed(0)
    draws = verdicts_from_probs(p, "sample", generator=gen)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert draws.mean().item() == pytest.approx(0.3, abs=0.01)
    again = verdicts_from_probs(p, "sample", generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert verdicts_from_probs(torch.tensor([0.5, 0.49]), "threshold").tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="mode"):
        verdicts_from_probs(p, "vote")


def test_results_record_version_mass_and_ungraded(small_engine):
    reqs = [
        GradeRequest(CONV_A, "ok", [RubricItem("Is rude.", -2)]),  # no positive points: ungraded
        GradeRequest(CONV_A, "ok", []),  # nothing to grade
        GradeRequest(CONV_A, "ok", ITEMS[:1]),
    ]
    small_engine.bump_version()
    version = small_engine.policy_version
    results = make_judge("logprob", mode="threshold").grade(small_engine, reqs)
    assert all(r.judge_version == version for r in results) and version >= 6
    assert results[0].ungraded and results[0].score is None and len(results[0].item_probs) == 1
    assert results[1].ungraded and results[1].item_probs == [] and results[1].verdict_mass == []
    assert not results[2].ungraded and results[2].score in (0.0, 1.0)
    assert all(0.0 < m <= 1.0 for r in results for m in r.verdict_mass)
    assert all(r.n_failed == 0 and r.item_failed == [False] * len(r.item_met) for r in results)


def test_another_engine_can_judge(small_engine, requests_, shared_probs):
    probs = LogprobJudge(temperature=0.8).verdict_probs(small_engine, requests_[:1])
    assert not torch.allclose(probs.p_met, shared_probs.p_met[:3], atol=1e-4)
    assert all(0.0 <= p <= 1.0 and not math.isnan(p) for p in probs.p_met.tolist())


def test_bad_options():
    with pytest.raises(ValueError, match="mode"):
        LogprobJudge(mode="vote")
    with pytest.raises(ValueError, match="temperature"):
        LogprobJudge(temperature=0)
    with pytest.raises(ValueError, match="max_batch_tokens"):
        LogprobJudge(max_batch_tokens=0)


def test_length_batches_is_the_cheapest_contiguous_cut():
    """Against brute force over every way to cut the sorted rows into contiguous batches."""
    import itertools

    from rubricrl.engines.scoring import _length_batches

    def cost(widths, batches, overhead):
        return sum(len(b) * widths[b[0]] + overhead for b in batches)

    rng = torch.Generator().manual_seed(0)
    for trial in range(40):
        n = 1 + trial % 7
        widths = sorted(torch.randint(1, 300, (n,), generator=rng).tolist(), reverse=True)
        budget, overhead = int(torch.randint(300, 1200, (1,), generator=rng)), int(torch.randint(0, 200, (1,), generator=rng))
        got = _length_batches(widths, budget, overhead)
        assert [i for b in got for i in b] == list(range(n))
        assert all(len(b) == 1 or len(b) * widths[b[0]] <= budget for b in got)
        best = min(
            cost(widths, batches, overhead)
            for cuts in itertools.product([False, True], repeat=n - 1)
            for batches in [_cut(n, cuts)]
            if all(len(b) == 1 or len(b) * widths[b[0]] <= budget for b in batches)
        )
        assert cost(widths, got, overhead) == best


def _cut(n, cuts):
    batches, current = [], [0]
    for i, c in enumerate(cuts, start=1):
        if c:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current]
