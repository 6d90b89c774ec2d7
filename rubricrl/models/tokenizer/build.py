"""Build the byte-level BPE tokenizer files shipped with rubricrl.

Run from the repository root to regenerate the committed files::

    python -m rubricrl.models.tokenizer.build

It writes, next to this file:

- ``tokenizer.json``: a ``tokenizers`` byte-level BPE model trained by this script
  on text the package itself contains (:func:`training_corpus`), no download. Ids
  0..4 are the special tokens ``SPECIAL_TOKENS``, then the 256 byte symbols (so every
  UTF-8 string is representable), then the merges, ``VOCAB_SIZE`` entries in all.
- ``chat_template.jinja``: an im_start/im_end (ChatML) chat template.

Why BPE: the judges grade ~1k-token prompts item by item, and attention costs grow
with tokens x context; merging frequent byte sequences cuts both ~3-4x.

Reproducible: the corpus is built in a fixed order from the package's files and
prompt builders, and ``BpeTrainer`` breaks count ties deterministically, so two runs
write the same file (tested).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from rubricrl.models.tokenizer import CHAT_TEMPLATE_FILE, SPECIAL_TOKENS, TOKENIZER_FILE

#: Total vocabulary: special tokens + 256 byte symbols + merges. Chosen by measuring
#: tokens per byte of the judge prompts and the training-step time (docs/engine.md).
VOCAB_SIZE = 3072

# ChatML: each turn is "<|im_start|>{role}\n{content}<|im_end|>\n"; the
# generation prompt opens an assistant turn that the model ends with <|im_end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Pre-tokenization: GPT-2's split (contractions, an optional space + a run of letters,
# digits or punctuation), except that a whitespace run is always one piece. GPT-2's
# ``\s+(?!\S)`` cuts "\n\n" before a word into "\n" + "\n" but keeps it whole at the end of
# a string, so text tokenized in parts would differ from the whole; here a part ending in a
# newline tokenizes the same alone as inside the full text (the judges encode their
# prompts part by part, see rubricrl/judges/encoding.py).
SPLIT_PATTERN = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+"


def training_corpus() -> list[str]:
    """The texts the merges are learned from, in a fixed order, each once.

    What the embedded model reads and writes most: the judges' prompts as the engine
    sees them (ChatML turns; instructions, conversation, response and item parts rendered
    with the real prompt builders over the shipped rubric dataset, with its
    meta-evaluation completions as responses), the PaTaRM judge prompts, the RLPR answer
    format and the verdict words. Special tokens are cut out: they are never merged.
    """
    # Imported here: these modules are not needed to load the tokenizer, only to build it.
    from rubricrl.data.builtin import builtin_meta_eval, builtin_rubric_prompts
    from rubricrl.rewards.judge_prompts import VERDICT_CUE, generate_judge_prompt, logprob_judge_parts, verdict_words
    from rubricrl.rewards.patarm_prompts import TASK_TYPES, build_pointwise_prompt
    from rubricrl.rewards.rlpr import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN

    def chat(messages: list[dict], generation_prompt: str = "") -> str:
        turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return turns + (f"<|im_start|>assistant\n{generation_prompt}" if generation_prompt is not None else "")

    texts: list[str] = []
    prompts = builtin_rubric_prompts()
    meta = builtin_meta_eval()
    for i, prompt in enumerate(prompts):
        conversation = list(prompt.prompt)
        response = meta[i % len(meta)].completion
        texts.append(chat(conversation))
        for item in prompt.rubrics:
            # The logprob judge: one user turn, the verdict cue opening the assistant turn.
            content = "".join(logprob_judge_parts(conversation, response, item))[: -len(VERDICT_CUE)]
            texts.append(chat([{"role": "user", "content": content}], VERDICT_CUE))
            texts.append(chat([{"role": "user", "content": generate_judge_prompt(conversation, response, item)}]))
        user = "\n".join(m["content"] for m in conversation)
        pointwise = build_pointwise_prompt(user, response, TASK_TYPES[i % len(TASK_TYPES)])
        texts.append(chat([{"role": "user", "content": pointwise}]))
    for row in meta:
        texts.append(chat([*row.prompt, {"role": "assistant", "content": row.completion}], None))
        texts.append(row.rubric)
    texts.append(f"{THINK_OPEN}\n{THINK_CLOSE}\n{ANSWER_OPEN} 42 {ANSWER_CLOSE}")
    yes, no = verdict_words()
    texts.extend(VERDICT_CUE + word for word in yes + no)
    special = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    pieces = [piece for text in texts for piece in special.split(text) if piece]
    # Once each: the shared instructions repeat in every judge prompt, and repeats would
    # only weight the merges towards them.
    return list(dict.fromkeys(pieces))


def build_tokenizer(vocab_size: int = VOCAB_SIZE, corpus: list[str] | None = None) -> Tokenizer:
    """Train and return the byte-level BPE ``tokenizers.Tokenizer``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        # All 256 byte symbols, even those the corpus lacks: any UTF-8 text stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(training_corpus() if corpus is None else corpus, trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}")
    return tok


def write(directory: Path, vocab_size: int = VOCAB_SIZE) -> None:
    """Write ``tokenizer.json`` and ``chat_template.jinja`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    build_tokenizer(vocab_size).save(str(directory / TOKENIZER_FILE.name), pretty=True)
    (directory / CHAT_TEMPLATE_FILE.name).write_text(CHAT_TEMPLATE + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description="Build rubricrl's built-in tokenizer files.")
    parser.add_argument("--out", type=Path, default=TOKENIZER_FILE.parent, help="output directory")
    parser.add_argument("--vocab-size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args()
    write(args.out, args.vocab_size)
    print(f"wrote {args.out / TOKENIZER_FILE.name} and {args.out / CHAT_TEMPLATE_FILE.name}")


if __name__ == "__main__":
    main()
