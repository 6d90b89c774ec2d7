"""Token ids of logprob judge prompts, split for prefix sharing, and the verdict token ids.

A logprob judge prompt is three token segments (see
:func:`rubricrl.rewards.judge_prompts.logprob_judge_parts`)::

    prefix    instructions + conversation        one per group (the G responses of a prompt)
    response  the response being graded          one per response
    suffix    one rubric item + "Verdict:"        one per (response, item); the verdict comes next

With a chat model (the tokenizer has a chat template) the three parts are the content of
one user turn and the verdict cue opens the assistant turn, as ``judge_prompts`` suggests::

    <template head> prefix | response | item text <template tail: end of turn, assistant> Verdict:

The template is split once with a sentinel message, so the head joins the prefix and the
tail joins every item suffix.

Layout ``continue_rollout`` (``layout=``) continues the rolled-out conversation instead::

    prefix    the rollout's prompt: encode_prompts(conversation), the ids the policy sampled after
    response  response + <end of turn, user turn head> CONTINUATION_INSTRUCTIONS
    suffix    item text <end of turn, assistant turn head> Verdict:

so the prefix and the response's tokens are the rollout's own sequence, which a prefix cache
holding the rollout covers: the response part is the sampled ids when the request carries
them (``GradeRequest.response_ids``, as the trainer's requests do), else the response text
tokenized (the sampled ids only where they are the tokenizer's own encoding of the text). It needs a chat template that
renders an assistant message right after the generation prompt, checked once with sentinel
messages (``ValueError`` otherwise). Each segment is tokenized on its own (``add_special_tokens``
only for the first segment of a raw-text prompt). For byte-level tokenizers (the built-in
one, GPT-2/Llama-3/Qwen BPE) the parts start with non-whitespace and end with a newline,
so this gives the ids of the concatenated text. The prefix-shared and the unshared judge
use the same ids, which is what makes their p(met) equal.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from rubricrl.data.rubrics import RubricItem
from rubricrl.engines.prompts import encode_prompts
from rubricrl.rewards.judge_prompts import (
    JUDGE_LAYOUTS,
    VERDICT_CUE,
    continuation_judge_parts,
    logprob_judge_parts,
    verdict_words,
)

__all__ = ["JudgePromptEncoder", "VerdictIds", "verdict_token_ids"]

_SENTINEL = "\u2063RUBRICRL-JUDGE-CONTENT\u2063"
_SENTINEL_RESPONSE = "\u2063RUBRICRL-JUDGE-RESPONSE\u2063"
_SENTINEL_GRADING = "\u2063RUBRICRL-JUDGE-GRADING\u2063"


@dataclass(frozen=True)
class VerdictIds:
    """Token ids read at the verdict position: ``yes`` means met, ``no`` means not met."""

    yes: tuple[int, ...]
    no: tuple[int, ...]
    #: ids that start both a yes and a no word (e.g. a leading space in a byte tokenizer);
    #: they say nothing about the verdict and are left out of both sets.
    dropped: tuple[int, ...] = ()


def verdict_token_ids(
    tokenizer: PreTrainedTokenizerBase,
    yes_words: Sequence[str] | None = None,
    no_words: Sequence[str] | None = None,
) -> VerdictIds:
    """The YES / NO verdict token ids: the first token of each verdict word, deduplicated.

    Args:
        tokenizer: the judge's tokenizer.
        yes_words, no_words: default :func:`rubricrl.rewards.judge_prompts.verdict_words`
            (" true", "true", " True", "True" / the same for false).

    A first token shared by a yes word and a no word (a byte-level tokenizer encodes
    " true" and " false" both starting with the byte " ") cannot tell the verdicts apart;
    it is removed from both sets and reported in ``dropped``.

    Raises:
        ValueError: a set is empty after that (no usable verdict token).
    """
    default_yes, default_no = verdict_words()
    yes_words = list(default_yes if yes_words is None else yes_words)
    no_words = list(default_no if no_words is None else no_words)

    def first_tokens(words: list[str]) -> list[int]:
        out: list[int] = []
        for word in words:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
            if ids and int(ids[0]) not in out:
                out.append(int(ids[0]))
        return out

    yes, no = first_tokens(yes_words), first_tokens(no_words)
    shared = [i for i in yes if i in no]
    yes = [i for i in yes if i not in shared]
    no = [i for i in no if i not in shared]
    if not yes or not no:
        raise ValueError(
            f"no usable verdict tokens: yes words {yes_words} -> ids {yes}, no words {no_words} -> ids {no} "
            f"(ids {shared} start both a yes and a no word and were dropped)"
        )
    return VerdictIds(tuple(yes), tuple(no), tuple(shared))


class JudgePromptEncoder:
    """Tokenizes logprob judge prompts into (prefix, response, suffix) id segments.

    Args:
        tokenizer: the judge engine's tokenizer.
        chat_template: wrap the prompt in the tokenizer's chat template (one user turn,
            then the assistant turn opened with the verdict cue). ``None``: when the
            tokenizer has one.
        layout: ``instructions_first`` (default) or ``continue_rollout`` (module docstring;
            needs the chat template).

    Prefixes and item suffixes are cached by text (the last ``cache_size`` of them), so a
    group's prefix and a rubric's items are tokenized once; responses are not cached.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        chat_template: bool | None = None,
        cache_size: int = 4096,
        layout: str = "instructions_first",
    ) -> None:
        has_template = getattr(tokenizer, "chat_template", None) is not None
        if chat_template and not has_template:
            raise ValueError("chat_template=True but the tokenizer has no chat template")
        if layout not in JUDGE_LAYOUTS:
            raise ValueError(f"layout must be one of {list(JUDGE_LAYOUTS)}, got {layout!r}")
        self.tokenizer = tokenizer
        self.layout = layout
        self.uses_chat_template = has_template if chat_template is None else bool(chat_template)
        if layout == "continue_rollout" and not self.uses_chat_template:
            raise ValueError(
                "layout 'continue_rollout' needs the tokenizer's chat template (the rollout's prompt is rendered with it)"
            )
        self._head, self._tail = self._split_template() if self.uses_chat_template else ("", "")
        #: continue_rollout: the template text between the response and the grading turn's content
        self._turn_change = self._split_continuation() if layout == "continue_rollout" else ""
        self._cache: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
        self._cache_size = cache_size

    def _split_template(self) -> tuple[str, str]:
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
        )
        if not isinstance(text, str) or text.count(_SENTINEL) != 1:
            raise ValueError(
                "cannot split the tokenizer's chat template around the user message; "
                "pass chat_template=False to grade with raw-text prompts"
            )
        head, tail = text.split(_SENTINEL)
        return head, tail

    def _split_continuation(self) -> str:
        """The template text between an assistant message and the next user message's
        content, after checking that the assistant message follows the generation prompt
        verbatim (so the rollout's prompt + response is a prefix of the judge prompt)."""
        render = self.tokenizer.apply_chat_template
        prompt = render([{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True)
        full = render(
            [
                {"role": "user", "content": _SENTINEL},
                {"role": "assistant", "content": _SENTINEL_RESPONSE},
                {"role": "user", "content": _SENTINEL_GRADING},
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        if not (isinstance(full, str) and full.startswith(prompt + _SENTINEL_RESPONSE) and full.count(_SENTINEL_GRADING) == 1):
            raise ValueError(
                "layout 'continue_rollout': the chat template does not render an assistant message right after "
                "its generation prompt, so the rollout is not a prefix of the judge prompt; use 'instructions_first'"
            )
        between, after = full[len(prompt + _SENTINEL_RESPONSE) :].split(_SENTINEL_GRADING)
        if after != self._tail:
            raise ValueError("layout 'continue_rollout': the chat template closes a later user turn differently from the first")
        return between

    def _ids(self, kind: str, text: str) -> list[int]:
        key = (kind, text)
        ids = self._cache.get(key)
        if ids is not None:
            self._cache.move_to_end(key)
            return ids
        # Only a raw-text prompt's first segment gets the tokenizer's special tokens
        # (e.g. BOS); a chat template writes its own.
        special = kind == "prefix" and not self.uses_chat_template
        ids = list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        if not ids:
            raise ValueError(f"judge prompt {kind} encodes to zero tokens")
        if kind != "response":  # responses are new every step: caching them would only grow
            self._remember(key, ids)
        return ids

    def _remember(self, key: tuple[str, str], ids: list[int]) -> None:
        self._cache[key] = ids
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def prefix_text(self, conversation: Sequence[dict]) -> str:
        if self.layout == "continue_rollout":
            return self.tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        return self._head + logprob_judge_parts(conversation, "", _PLACEHOLDER_ITEM)[0]

    def prefix_ids(self, conversation: Sequence[dict]) -> list[int]:
        if self.layout == "continue_rollout":
            # exactly the rollout's prompt ids (the engines encode prompts with encode_prompts)
            key = ("rollout-prefix", repr(list(conversation)))
            ids = self._cache.get(key)
            if ids is None:
                ids = encode_prompts(self.tokenizer, [list(conversation)])[0]
                self._remember(key, ids)
            return ids
        return self._ids("prefix", self.prefix_text(conversation))

    def response_text(self, response: str) -> str:
        if self.layout == "continue_rollout":
            return response + self._turn_change + continuation_judge_parts(_PLACEHOLDER_ITEM)[0]
        return logprob_judge_parts(_PLACEHOLDER_CONVERSATION, response, _PLACEHOLDER_ITEM)[1]

    def response_ids(self, response: str, sampled_ids: Sequence[int] | None = None) -> list[int]:
        """The body ids of ``response``. Layout ``continue_rollout`` with ``sampled_ids`` (the
        rollout's ids of the response): those ids, less a final special (stop) token, then the
        tokens of the turn change and the grading instructions, so the judge prompt continues
        the rollout's token sequence exactly (the template's end-of-turn token then stands where
        the rollout stopped). Otherwise the tokens of the body text."""
        if self.layout != "continue_rollout" or sampled_ids is None:
            return self._ids("response", self.response_text(response))
        ids = [int(t) for t in sampled_ids]
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            ids = ids[:-1]
        return ids + self._ids("turn", self._turn_change + continuation_judge_parts(_PLACEHOLDER_ITEM)[0])

    def suffix_text(self, item: RubricItem) -> str:
        if self.layout == "continue_rollout":
            suffix = continuation_judge_parts(item)[1]
        else:
            suffix = logprob_judge_parts(_PLACEHOLDER_CONVERSATION, "", item)[2]
        if self.uses_chat_template:
            # The cue moves from the user turn to the start of the assistant turn.
            suffix = suffix[: len(suffix) - len(VERDICT_CUE)] + self._tail + VERDICT_CUE
        return suffix

    def suffix_ids(self, item: RubricItem) -> list[int]:
        return self._ids("suffix", self.suffix_text(item))

    def full_text(self, conversation: Sequence[dict], response: str, item: RubricItem) -> str:
        """The whole judge prompt as text (for display and debugging)."""
        return self.prefix_text(conversation) + self.response_text(response) + self.suffix_text(item)


_PLACEHOLDER_CONVERSATION = [{"role": "user", "content": "-"}]
_PLACEHOLDER_ITEM = RubricItem("-", 1.0)
