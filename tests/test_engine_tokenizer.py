"""The built-in byte-level BPE tokenizer: ids, round trip, merges, special tokens, chat template."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerFast

from rubricrl.data.builtin import builtin_rubric_prompts
from rubricrl.judges.encoding import JudgePromptEncoder
from rubricrl.models import TINY_CONFIG
from rubricrl.models.tokenizer import (
    CHAT_TEMPLATE_FILE,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    builtin_vocab,
    load_builtin_tokenizer,
)
from rubricrl.models.tokenizer.build import CHAT_TEMPLATE, VOCAB_SIZE, build_tokenizer


def _gpt2_byte_symbols() -> dict[str, int]:
    """GPT-2's byte-level alphabet, written out independently: symbol -> byte value.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes map, in order, to
    code points from U+0100.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


BYTE_OF = _gpt2_byte_symbols()


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return load_builtin_tokenizer()


def _token_bytes(tok, ids: list[int]) -> bytes:
    """The bytes each token stands for, through the independent alphabet above."""
    return b"".join(bytes(BYTE_OF[c] for c in tok.convert_ids_to_tokens(i)) for i in ids)


def test_vocabulary_layout(tok):
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == VOCAB_SIZE == builtin_vocab()[0] == TINY_CONFIG["vocab_size"]
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS) and all(0 <= i < len(tok) for i in ids)
    assert ids == [builtin_vocab()[1][t] for t in SPECIAL_TOKENS]
    for t, i in zip(SPECIAL_TOKENS, ids):
        assert tok.encode(t, add_special_tokens=False) == [i]
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert (TINY_CONFIG["pad_token_id"], TINY_CONFIG["bos_token_id"], TINY_CONFIG["eos_token_id"]) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id
    )
    assert tok.padding_side == "left"
    # Every byte is a token of its own, so any UTF-8 string is representable.
    vocab = tok.get_vocab()
    assert set(BYTE_OF) <= set(vocab)


@pytest.mark.parametrize(
    "text",
    [
        "", "hello world", " leading and trailing spaces ", "tabs\tand\nnewlines\r\n", "\x00\x01\x7f control",
        "héllo wörld — ¿qué?", "中文字符 and 日本語", "emoji 😀👍🏽 family 👨‍👩‍👧", "Ωμέγα ∑ ∫ √2",
    ],
)
def test_tokens_cover_the_utf8_bytes_and_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert _token_bytes(tok, ids) == text.encode("utf-8")
    assert tok.decode(ids) == text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=80))
def test_round_trip_arbitrary_text(tok, text):
    assume(not any(s in text for s in SPECIAL_TOKENS))
    ids = tok.encode(text, add_special_tokens=False)
    assert _token_bytes(tok, ids) == text.encode("utf-8")
    assert tok.decode(ids) == text
    assert len(ids) <= len(text.encode("utf-8"))


_PART = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_PART, st.sampled_from(["\n", "\n\n", " \n", "\n\n\n"]), st.text(min_size=1, max_size=30))
def test_parts_ending_in_a_newline_tokenize_as_the_whole(tok, head, newline, tail):
    """The judges tokenize their prompt part by part (each ends with a newline, the next
    starts with non-whitespace); the ids must be those of the whole text."""
    assume(not tail[0].isspace())
    assume(not any(s in head + tail for s in SPECIAL_TOKENS))
    first = head + newline
    whole = tok.encode(first + tail, add_special_tokens=False)
    assert tok.encode(first, add_special_tokens=False) + tok.encode(tail, add_special_tokens=False) == whole


def _tokens_per_byte(tok, texts: list[str]) -> float:
    n_tokens = sum(len(tok.encode(t, add_special_tokens=False)) for t in texts)
    return n_tokens / sum(len(t.encode("utf-8")) for t in texts)


def test_merges_shorten_the_judge_prompts(tok):
    """Measured 0.218 (prefix) and 0.229 (item suffixes) tokens per byte; the bounds leave room."""
    enc = JudgePromptEncoder(tok)
    prompts = builtin_rubric_prompts()
    prefixes = [enc.prefix_text(p.prompt) for p in prompts]
    prefix_ids = [enc.prefix_ids(p.prompt) for p in prompts]
    assert sum(map(len, prefix_ids)) / sum(len(t.encode()) for t in prefixes) < 0.25
    suffixes = [enc.suffix_ids(item) for p in prompts for item in p.rubrics]
    suffix_bytes = sum(len(tok.decode(s).encode()) for s in suffixes)
    assert sum(map(len, suffixes)) / suffix_bytes < 0.27


def test_merges_shorten_text_the_tokenizer_never_saw(tok):
    # Original English, not in the training corpus (measured 0.29 tokens per byte).
    text = (
        "The committee met on Tuesday to review the proposal. Several members asked whether the "
        "budget would cover the extra staff, and the chair said the answer depends on next year's "
        "funding. They agreed to meet again after the report is published."
    )
    assert _tokens_per_byte(tok, [text]) < 0.4


def test_special_tokens_are_single_ids_and_skippable(tok):
    text = "<|im_start|>user\nhé<|im_end|>"
    ids = tok.encode(text, add_special_tokens=False)
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == im_start and ids[-1] == im_end
    assert _token_bytes(tok, ids[1:-1]) == "user\nhé".encode("utf-8")
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhé"


def test_chat_template(tok):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Ça va? 😀"},
        {"role": "assistant", "content": "Oui."},
    ]
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert tok.apply_chat_template(messages, tokenize=False) == expected
    with_prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert with_prompt == expected + "<|im_start|>assistant\n"
    ids = tok(with_prompt, add_special_tokens=False)["input_ids"]
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids.count(im_start) == 4 and ids.count(im_end) == 3
    assert tok.decode(ids) == with_prompt


def test_batch_padding_is_left(tok):
    short, long = tok.encode("ab", add_special_tokens=False), tok.encode("ab cd ef", add_special_tokens=False)
    assert len(short) < len(long)
    enc = tok(["ab", "ab cd ef"], padding=True)
    gap = len(long) - len(short)
    assert enc["input_ids"][0] == [tok.pad_token_id] * gap + short
    assert enc["attention_mask"][0] == [0] * gap + [1] * len(short)


def test_committed_files_match_build_script():
    built = build_tokenizer().to_str()
    assert built == build_tokenizer().to_str()  # the build is deterministic
    committed = json.loads(TOKENIZER_FILE.read_text(encoding="utf-8"))
    assert json.loads(built) == committed
    assert CHAT_TEMPLATE_FILE.read_text(encoding="utf-8").strip("\n") == CHAT_TEMPLATE


def test_bad_padding_side():
    with pytest.raises(ValueError, match="padding_side"):
        load_builtin_tokenizer(padding_side="middle")
