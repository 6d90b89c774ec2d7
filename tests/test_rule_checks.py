"""Rule-checked rubric items: each check type on hand-computed cases, file:line errors, and a
mixed rubric through the real logprob (and generate) judge: rule items exact, judge items
from the model, score by the unchanged docs/algorithms.md §3 formula."""

from __future__ import annotations

import json

import pytest
import torch

from rubricrl.data.rubrics import DataError, RubricItem, load_rubric_jsonl
from rubricrl.engines import HFEngine
from rubricrl.judges import GenerateJudge, GradeRequest, LogprobJudge
from rubricrl.models import build_tiny_model, load_builtin_tokenizer
from rubricrl.rewards.rubric_score import score_response
from rubricrl.rewards.rule_checks import CheckError, parse_check


def ends_with(response: str, suffix: str) -> bool:
    """A ``callable`` check used below (imported by name, "tests.test_rule_checks:ends_with")."""
    return response.rstrip().endswith(suffix)


def returns_number(response: str) -> int:
    return len(response)


def ok(check: dict, response: str, tokenizer=None) -> bool:
    return parse_check(check).evaluate(response, tokenizer)


# ------------------------------------------------------------------ each check type


def test_contains_and_not_contains():
    assert ok({"type": "contains", "text": "call 911"}, "Please call 911 now.")
    assert not ok({"type": "contains", "text": "Call 911"}, "Please call 911 now.")  # case-sensitive by default
    assert ok({"type": "contains", "text": "Call 911", "ignore_case": True}, "Please call 911 now.")
    # "aa" occurs twice non-overlapping in "aaaa" (not three times), "e" 3 times in "eel e"
    assert ok({"type": "contains", "text": "aa", "min_count": 2}, "aaaa")
    assert not ok({"type": "contains", "text": "aa", "min_count": 3}, "aaaa")
    assert ok({"type": "contains", "text": "e", "min_count": 3}, "eel e")
    assert not ok({"type": "contains", "text": "e", "min_count": 4}, "eel e")
    assert ok({"type": "contains", "text": "a.b"}, "xa.by") and not ok({"type": "contains", "text": "a.b"}, "axb")  # literal
    assert ok({"type": "not_contains", "text": "aspirin"}, "Take paracetamol.")
    assert not ok({"type": "not_contains", "text": "aspirin", "ignore_case": True}, "ASPIRIN is fine")
    assert ok({"type": "not_contains", "text": "aspirin"}, "ASPIRIN is fine")


def test_regex():
    assert ok({"type": "regex", "pattern": r"\b\d{3}\b"}, "call 911 now")
    assert not ok({"type": "regex", "pattern": r"\b\d{3}\b"}, "call 9110 now")
    assert ok({"type": "regex", "pattern": r"^yes", "ignore_case": True}, "Yes, do it")
    assert not ok({"type": "regex", "pattern": r"^yes"}, "Yes, do it")
    assert ok({"type": "regex", "pattern": r"done\.$"}, "all done.")  # search, not fullmatch


def test_starts_with():
    assert ok({"type": "starts_with", "text": "Yes"}, "  Yes, it is.")  # leading whitespace ignored
    assert not ok({"type": "starts_with", "text": "Yes"}, "Well, yes.")
    assert not ok({"type": "starts_with", "text": "yes"}, "Yes.")
    assert ok({"type": "starts_with", "text": "yes", "ignore_case": True}, "Yes.")


def test_length_words_chars_tokens():
    text = "one two  three\nfour"  # 4 words, 19 chars
    assert ok({"type": "length", "unit": "words", "min": 4, "max": 4}, text)
    assert not ok({"type": "length", "unit": "words", "max": 3}, text)
    assert not ok({"type": "length", "unit": "words", "min": 5}, text)
    assert ok({"type": "length", "unit": "chars", "min": 19, "max": 19}, text)
    assert not ok({"type": "length", "unit": "chars", "max": 18}, text)
    assert ok({"type": "length", "unit": "words", "max": 0}, "   ")
    tok = load_builtin_tokenizer()
    n = len(tok.encode(text, add_special_tokens=False))
    assert ok({"type": "length", "unit": "tokens", "min": n, "max": n}, text, tok)
    assert not ok({"type": "length", "unit": "tokens", "max": n - 1}, text, tok)
    with pytest.raises(ValueError, match="tokenizer"):
        ok({"type": "length", "unit": "tokens", "max": 3}, text)


def test_json():
    assert ok({"type": "json"}, ' {"a": [1, 2]}\n')
    assert ok({"type": "json"}, "3")
    assert not ok({"type": "json"}, "{'a': 1}")
    assert not ok({"type": "json"}, '{"a": 1} trailing')
    assert not ok({"type": "json"}, "")


def test_list():
    bullets = "Steps:\n- check the chain\n  * look at the cassette\n\u2022 adjust"
    numbered = "1. call 911\n2) unlock the door\n3.no space"  # the last line is not an item
    assert ok({"type": "list", "style": "bullet", "min_items": 3}, bullets)
    assert not ok({"type": "list", "style": "bullet", "min_items": 4}, bullets)
    assert not ok({"type": "list", "style": "numbered"}, bullets)
    assert ok({"type": "list", "style": "numbered", "min_items": 2}, numbered)
    assert not ok({"type": "list", "style": "numbered", "min_items": 3}, numbered)
    assert ok({"type": "list", "min_items": 5}, bullets + "\n" + numbered)  # style any: 3 + 2
    assert not ok({"type": "list"}, "-not an item\nplain text")


def test_share():
    # "eel e xy": non-space chars e,e,l,e,x,y -> share of e = 3/6 = 0.5
    assert ok({"type": "share", "chars": "e", "min": 0.5, "max": 0.5}, "eel e xy")
    assert not ok({"type": "share", "chars": "e", "min": 0.51}, "eel e xy")
    assert not ok({"type": "share", "chars": "e", "max": 0.49}, "eel e xy")
    assert ok({"type": "share", "chars": "ly", "min": 2 / 6, "max": 2 / 6}, "eel e xy")
    # case: "EEl" has 0 lower-case e unless ignore_case
    assert not ok({"type": "share", "chars": "e", "min": 0.1}, "EEl")
    assert ok({"type": "share", "chars": "e", "min": 0.6, "ignore_case": True}, "EEl")
    assert not ok({"type": "share", "chars": "e", "min": 0.0 + 1e-9}, "")  # empty response: share 0
    assert ok({"type": "share", "chars": "e", "max": 0.0}, "")


def test_callable():
    check = {"type": "callable", "function": "tests.test_rule_checks:ends_with", "args": {"suffix": "!"}}
    assert ok(check, "Go now! ")
    assert not ok(check, "Go now.")
    assert ok({"type": "callable", "function": "builtins:str.isupper"}, "LOUD")
    assert not ok({"type": "callable", "function": "builtins:str.isupper"}, "quiet")
    with pytest.raises(ValueError, match="returned int, expected a bool"):
        ok({"type": "callable", "function": "tests.test_rule_checks:returns_number"}, "abc")


def test_round_trip_of_item_with_check():
    item = RubricItem("Has three words.", 2.0, ["x"], parse_check({"type": "length", "unit": "words", "min": 3, "max": 3}))
    back = RubricItem.from_dict(json.loads(json.dumps(item.to_dict())))
    assert back == item and back.check.evaluate("a b c")
    assert "check" not in RubricItem("plain", 1.0).to_dict()


# ------------------------------------------------------------------ file:line errors


@pytest.mark.parametrize(
    ("check", "field", "message"),
    [
        ({"type": "regex", "pattern": "a(b"}, "rubrics[1].check.pattern", "bad regular expression"),
        ({"type": "shout"}, "rubrics[1].check.type", "unknown check type 'shout'"),
        ({"text": "x"}, "rubrics[1].check.type", "missing"),
        ({"type": "contains"}, "rubrics[1].check.text", "missing"),
        ({"type": "contains", "text": ""}, "rubrics[1].check.text", "non-empty string"),
        ({"type": "contains", "text": "a", "min_count": 0}, "rubrics[1].check.min_count", "integer >= 1"),
        ({"type": "contains", "text": "a", "phrase": "b"}, "rubrics[1].check.phrase", "unknown field"),
        ({"type": "length", "unit": "lines", "max": 3}, "rubrics[1].check.unit", "not one of"),
        ({"type": "length", "unit": "words"}, "rubrics[1].check.min", "needs min, max or both"),
        ({"type": "length", "unit": "words", "min": 5, "max": 2}, "rubrics[1].check.max", "below min"),
        ({"type": "length", "unit": "words", "max": 2.5}, "rubrics[1].check.max", "integer >= 0"),
        ({"type": "share", "chars": "e", "min": 1.5}, "rubrics[1].check.min", "share in [0, 1]"),
        ({"type": "list", "style": "dashes"}, "rubrics[1].check.style", "not one of"),
        ({"type": "starts_with", "text": "a", "ignore_case": "yes"}, "rubrics[1].check.ignore_case", "true or false"),
        ({"type": "callable", "function": "no_such_module_xyz:f"}, "rubrics[1].check.function", "cannot import module"),
        ({"type": "callable", "function": "json:no_such_function"}, "rubrics[1].check.function", "has no attribute"),
        ({"type": "callable", "function": "json.loads"}, "rubrics[1].check.function", "'module:function'"),
        ({"type": "callable", "function": "json:decoder.__name__"}, "rubrics[1].check.function", "not callable"),
        ({"type": "callable", "function": "json:loads", "args": [1]}, "rubrics[1].check.args", "keyword arguments"),
        ("contains", "rubrics[1].check", "expected a check object"),
    ],
)
def test_bad_check_is_a_file_line_error(tmp_path, check, field, message):
    good = {"prompt_id": "ok", "prompt": [{"role": "user", "content": "hi"}], "rubrics": [{"criterion": "c", "points": 1}]}
    bad = {
        "prompt_id": "bad",
        "prompt": [{"role": "user", "content": "hi"}],
        "rubrics": [{"criterion": "c", "points": 1}, {"criterion": "d", "points": 2, "check": check}],
    }
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError) as info:
        load_rubric_jsonl(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: field {field!r}: "), text
    assert message in text, text
    assert info.value.field == field


def test_builtin_learning_task_is_all_rule_checked():
    from rubricrl.data.builtin import builtin_learning_prompts

    prompts = builtin_learning_prompts()
    assert len(prompts) >= 4
    assert all(item.check is not None for p in prompts for item in p.rubrics)


# ------------------------------------------------------------------ mixed rubric through the judges

CONV = [{"role": "user", "content": "My chest hurts and my left arm is numb. What now?"}]
JUDGE_ITEMS = [RubricItem("Tells the user to call emergency services.", 6), RubricItem("Suggests waiting it out.", -5)]
RULE_ITEMS = [
    RubricItem("Mentions 911.", 4, check=parse_check({"type": "contains", "text": "911"})),
    RubricItem("At most 12 words.", 2, check=parse_check({"type": "length", "unit": "words", "max": 12})),
    RubricItem("Says to wait.", -3, check=parse_check({"type": "regex", "pattern": r"\bwait\b", "ignore_case": True})),
]
# judge and rule items interleaved, so the merge must keep item order
MIXED = [RULE_ITEMS[0], JUDGE_ITEMS[0], RULE_ITEMS[1], JUDGE_ITEMS[1], RULE_ITEMS[2]]
RESPONSES = ["Call 911 now.", "Just wait and rest, it will pass, do not worry about it at all today.", "Wait."]
# hand-computed rule verdicts per response, in RULE_ITEMS order
RULE_EXPECTED = [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    torch.set_num_threads(1)
    return HFEngine(build_tiny_model(seed=5, num_hidden_layers=1), load_builtin_tokenizer(), policy_version=4)


def test_mixed_rubric_logprob_judge(engine):
    judge = LogprobJudge(temperature=0.8)
    requests = [GradeRequest(CONV, r, MIXED, group_id="g") for r in RESPONSES]
    results = judge.grade(engine, requests)
    # independent reference: the model's p(met) of the judge items alone
    ref = judge.verdict_probs(engine, [GradeRequest(CONV, r, JUDGE_ITEMS, group_id="g") for r in RESPONSES])
    ref_p = ref.p_met.tolist()
    for r, res in enumerate(results):
        judge_p = ref_p[2 * r : 2 * r + 2]
        expected = [RULE_EXPECTED[r][0], judge_p[0], RULE_EXPECTED[r][1], judge_p[1], RULE_EXPECTED[r][2]]
        assert res.item_probs == pytest.approx(expected, abs=1e-5)
        assert res.item_met == pytest.approx(expected, abs=1e-5)  # mode expected: met = p
        assert all(0.0 < p < 1.0 for p in judge_p)  # the judge items really come from the model
        assert [res.item_probs[k] for k in (0, 2, 4)] == RULE_EXPECTED[r]  # exact, not approx
        assert res.verdict_mass[0] is None and res.verdict_mass[1] is not None
        ref_score = score_response(MIXED, expected).score
        assert res.score == pytest.approx(ref_score, abs=1e-5)
        assert res.judge_version == 4 and not res.ungraded


def test_threshold_mode_keeps_rule_items_exact(engine):
    results = LogprobJudge(mode="threshold").grade(engine, [GradeRequest(CONV, RESPONSES[0], MIXED)])
    assert [results[0].item_met[k] for k in (0, 2, 4)] == RULE_EXPECTED[0]
    assert all(m in (0.0, 1.0) for m in results[0].item_met)


def test_all_rule_items_never_reach_the_engine():
    class NoEngine:
        policy_version = 7
        tokenizer = load_builtin_tokenizer()

        def __getattr__(self, name):
            raise AssertionError(f"the engine was used ({name}) for a rubric of rule items only")

    requests = [GradeRequest(CONV, r, RULE_ITEMS) for r in RESPONSES]
    for judge in (LogprobJudge(), GenerateJudge()):
        results = judge.grade(NoEngine(), requests)
        for res, expected in zip(results, RULE_EXPECTED):
            assert res.item_met == expected
            # hand-computed: points 4, 2, -3; max = 6
            assert res.score == pytest.approx(max(0.0, (4 * expected[0] + 2 * expected[1] - 3 * expected[2]) / 6))


def test_mixed_rubric_generate_judge(engine):
    judge = GenerateJudge(max_new_tokens=4, max_attempts=1, seed=0)
    results = judge.grade(engine, [GradeRequest(CONV, RESPONSES[0], MIXED)])
    res = results[0]
    assert [res.item_met[k] for k in (0, 2, 4)] == RULE_EXPECTED[0]
    assert res.item_raw[0] is None and isinstance(res.item_raw[1], str)
    assert res.item_attempts[0] == 0 and res.item_attempts[1] == 1
    assert len(judge.last_outcomes[0]) == 2  # only the two judge items were sent
    ref = score_response(MIXED, [None if m is None else bool(m) for m in res.item_met])
    assert res.ungraded == ref.ungraded
    assert res.score == pytest.approx(ref.score, abs=1e-6) if ref.score is not None else res.score is None
