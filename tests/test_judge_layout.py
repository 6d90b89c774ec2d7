"""Judge prompt layout ``continue_rollout``: the grading turn follows the rolled-out
conversation. Prompt text and ids (hand-checked), the rollout is a token prefix of the
judge prompt, prefix-shared p(met) equals unshared and a float64 forward, and bad
settings are errors that name the field."""

from __future__ import annotations

import copy

import pytest
import torch

from rubricrl.cli import main
from rubricrl.config import ConfigError, load_config
from rubricrl.data.rubrics import RubricItem
from rubricrl.engines import HFEngine
from rubricrl.engines.prompts import encode_prompts
from rubricrl.judges import GradeRequest, LogprobJudge, build_judge
from rubricrl.judges.encoding import JudgePromptEncoder
from rubricrl.models import build_tiny_model, load_builtin_tokenizer
from rubricrl.rewards.judge_prompts import CONTINUATION_INSTRUCTIONS

CONV = [{"role": "user", "content": "What is 2+2?"}]
CONV_B = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is it safe to take ibuprofen with coffee?"}]
ITEMS = [RubricItem("Says 4.", 2.0), RubricItem("Shows the working step by step.", 1.0), RubricItem("Is rude.", -3.0)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine(build_tiny_model(seed=3, num_hidden_layers=2), load_builtin_tokenizer())


@pytest.fixture(scope="module")
def requests_() -> list[GradeRequest]:
    reqs = [GradeRequest(CONV, r, ITEMS, group_id="a") for r in ("It is 4.", "2+2 = 4 because two and two make four.", "no")]
    tok = load_builtin_tokenizer()
    spelled = [tok.convert_tokens_to_ids(c) for c in "Usually"] + tok(" yes.", add_special_tokens=False)["input_ids"]
    # a response with its sampled (non-canonical) ids, as the trainer's requests carry them
    reqs.append(GradeRequest(CONV_B, "Usually yes.", ITEMS[:2], group_id="b", response_ids=spelled))
    return reqs


def test_continue_rollout_prompt_text_hand_checked():
    enc = JudgePromptEncoder(load_builtin_tokenizer(), layout="continue_rollout")
    expected = (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"  # the rollout's prompt
        "It is 4."  # the rollout's response
        "<|im_end|>\n<|im_start|>user\n"  # a new user turn: the grading question
        + CONTINUATION_INSTRUCTIONS
        + '<criterion points="-3">\nIs rude.\n</criterion>\n(undesirable: met if the response shows it)\n'
        "<|im_end|>\n<|im_start|>assistant\nVerdict:"
    )
    assert enc.full_text(CONV, "It is 4.", ITEMS[2]) == expected
    assert CONTINUATION_INSTRUCTIONS.startswith("Now grade the assistant's last response above against one criterion")
    assert CONTINUATION_INSTRUCTIONS.endswith("Answer true if the criterion is met and false if it is not.\n\n")
    # the default layout is unchanged: instructions first, the conversation inside the prompt
    default = JudgePromptEncoder(load_builtin_tokenizer()).full_text(CONV, "It is 4.", ITEMS[2])
    assert default.startswith("<|im_start|>user\nYou are grading a response written by an AI assistant.")
    assert "<conversation>\n[user]\nWhat is 2+2?\n</conversation>" in default


def test_continue_rollout_ids_start_with_the_rollout():
    tok = load_builtin_tokenizer()
    enc = JudgePromptEncoder(tok, layout="continue_rollout")
    response = "It is 4."
    prefix, body, suffix = enc.prefix_ids(CONV), enc.response_ids(response), enc.suffix_ids(ITEMS[0])
    rollout_prompt = encode_prompts(tok, [CONV])[0]
    response_ids = tok(response, add_special_tokens=False)["input_ids"]
    assert prefix == rollout_prompt
    assert body[: len(response_ids)] == response_ids  # the response's own tokens come first
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert body[len(response_ids)] == im_end  # then the end of the assistant turn, as sampled
    # the segments tokenized one by one are the tokenization of the whole text
    whole = tok(enc.full_text(CONV, response, ITEMS[0]), add_special_tokens=False)["input_ids"]
    assert prefix + body + suffix == whole


def test_continue_rollout_grades_the_sampled_ids():
    """With the rollout's ids (GradeRequest.response_ids), the judge prompt continues the
    rollout's exact token sequence, even where the ids are not the text's own encoding."""
    tok = load_builtin_tokenizer()
    enc = JudgePromptEncoder(tok, layout="continue_rollout")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    canonical = tok("It is 4.", add_special_tokens=False)["input_ids"]
    # a non-canonical spelling of the same text: one token per character
    spelled = [tok.convert_tokens_to_ids(c) for c in "It"] + canonical[1:]
    assert spelled != canonical and tok.decode(spelled) == tok.decode(canonical)
    text_body = enc.response_ids("It is 4.")
    for sampled in (canonical + [im_end], spelled + [im_end], spelled):  # finished / cut at max_new_tokens
        body = enc.response_ids("It is 4.", sampled)
        stripped = sampled[:-1] if sampled[-1] == im_end else sampled
        assert body[: len(stripped)] == stripped
        assert body[len(stripped) :] == text_body[len(canonical) :]  # <|im_end|> + the grading turn, as tokenized from text
        rollout = encode_prompts(tok, [CONV])[0] + sampled
        assert (enc.prefix_ids(CONV) + body)[: len(rollout)] == rollout
    # the default layout ignores the ids (it grades the text inside its <response> tags)
    default = JudgePromptEncoder(tok)
    assert default.response_ids("It is 4.", spelled) == default.response_ids("It is 4.")


def _double_reference(engine, judge, request, item, temperature):
    """p(met) from a float64 full forward of the judge prompt."""
    enc = judge.prompt_encoder(engine.tokenizer)
    ids = enc.prefix_ids(request.conversation) + enc.response_ids(request.response, request.response_ids)
    ids += enc.suffix_ids(item)
    model = copy.deepcopy(engine.model).double()
    with torch.no_grad():
        z = model(input_ids=torch.tensor([ids])).logits[0, -1] / temperature
    vid = judge.verdict_ids(engine.tokenizer)
    return float(torch.exp(torch.logsumexp(z[list(vid.yes)], 0) - torch.logsumexp(z[list(vid.yes) + list(vid.no)], 0)))


def test_continue_rollout_shared_equals_unshared_and_float64(engine, requests_):
    shared_judge = LogprobJudge(temperature=0.8, layout="continue_rollout")
    shared = shared_judge.verdict_probs(engine, requests_)
    unshared = LogprobJudge(temperature=0.8, layout="continue_rollout", share_prefix=False).verdict_probs(engine, requests_)
    chunked = LogprobJudge(temperature=0.8, layout="continue_rollout", max_batch_tokens=300).verdict_probs(engine, requests_)
    assert shared.offsets.tolist() == [0, 3, 6, 9, 11]
    torch.testing.assert_close(shared.p_met, unshared.p_met, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared.mass, unshared.mass, atol=1e-4, rtol=0)
    torch.testing.assert_close(chunked.p_met, unshared.p_met, atol=1e-4, rtol=0)
    for r, k in [(0, 0), (1, 2), (3, 1)]:
        p64 = _double_reference(engine, shared_judge, requests_[r], requests_[r].items[k], 0.8)
        assert shared.p_met[int(shared.offsets[r]) + k].item() == pytest.approx(p64, abs=1e-4)
    # a different prompt: the default layout's p(met) are not these
    default = LogprobJudge(temperature=0.8).verdict_probs(engine, requests_)
    assert (default.p_met - shared.p_met).abs().max() > 1e-3


def test_layout_errors_name_the_setting():
    tok = load_builtin_tokenizer()
    with pytest.raises(ValueError, match="layout must be one of"):
        LogprobJudge(layout="continue")
    with pytest.raises(ValueError, match="judge layout 'continue_rollout' is for the logprob judge only"):
        build_judge("generate", temperature=1.0, layout="continue_rollout")
    assert build_judge("logprob", temperature=1.0, layout="continue_rollout").layout == "continue_rollout"
    with pytest.raises(ValueError, match="'continue_rollout' needs the tokenizer's chat template"):
        JudgePromptEncoder(tok, chat_template=False, layout="continue_rollout")
    thinking = copy.deepcopy(tok)  # a template that rewrites past assistant turns (as reasoning models' do)
    thinking.chat_template = (
        "{%- for m in messages %}{%- if m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n<think></think>' + m['content'] + '<|im_end|>\\n' }}"
        "{%- else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    with pytest.raises(ValueError, match="does not render an assistant message right after its generation prompt"):
        JudgePromptEncoder(thinking, layout="continue_rollout")


def test_config_judge_layout_validation_and_wiring():
    from rubricrl.pipeline.rewards import build_judge as build_config_judge

    with pytest.raises(ConfigError, match="reward.judge_layout"):
        load_config("rubricrl/configs/demo.yaml", ["reward.judge_layout=last"])
    with pytest.raises(ConfigError, match="reward.judge_layout.*for reward.judge=logprob only"):
        load_config("rubricrl/configs/demo.yaml", ["reward.judge=generate", "reward.judge_layout=continue_rollout"])
    cfg = load_config("rubricrl/configs/demo.yaml", ["reward.judge_layout=continue_rollout"])
    assert build_config_judge(cfg).layout == "continue_rollout"
    assert build_config_judge(load_config("rubricrl/configs/demo.yaml", [])).layout == "instructions_first"


def test_cli_judge_layout(capsys):
    with pytest.raises(SystemExit) as err:
        main(["meta-eval", "--judge", "generate", "--judge-layout", "continue_rollout", "--limit", "1"])
    assert err.value.code == 2
    assert "--judge-layout applies to --judge logprob only" in capsys.readouterr().err
