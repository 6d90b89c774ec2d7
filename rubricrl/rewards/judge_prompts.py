"""Judge prompt templates for rubric grading (rubricrl's own wording).

Every judge prompt is three plain-text parts, concatenated in this order::

    conversation_prefix   instructions + the conversation       (same for a whole group)
    response_part         the response being graded             (same for all items of a response)
    item_suffix           one rubric item + the answer request  (different per item)

so that an engine can run the shared prefix once per group and the response
once per response, and only the short item suffix once per (response, item)
(docs/algorithms.md §3, "prefix sharing: item last"). The same prefix and response part serve
both judge modes; only the item suffix differs:

* **logprob** judge (:func:`logprob_judge_parts`): the suffix ends with
  :data:`VERDICT_CUE` (``"Verdict:"``), right before the verdict token. The
  engine reads the next-token logits for the words in :func:`verdict_words`.
* **generate** judge (:func:`generate_judge_prompt`): the suffix asks for a
  short explanation and a JSON object ``{"explanation": ..., "criteria_met": ...}``,
  parsed by :mod:`rubricrl.rewards.judge_parse`.

Token boundaries: every part but the last ends with a newline and every part
starts with a non-whitespace character. With byte-level BPE tokenizers (GPT-2,
Llama 3, Qwen) whose pre-tokenizer splits at such a boundary, tokenizing the
parts one by one gives the same ids as tokenizing the concatenation. For other
tokenizers (e.g. SentencePiece, which adds a leading space marker per call)
tokenize the concatenation and locate the part boundaries by offsets.

Chat models: the parts are the *content* of one user turn. A logprob engine that
applies a chat template can strip :data:`VERDICT_CUE` from the item suffix and
put it at the start of the assistant turn instead; the verdict token then comes
right after it as well.

The text given to the judge (conversation, response, criterion) is inserted
verbatim: rewriting it would change what is being graded.

Layouts. The parts above are layout ``instructions_first`` (the default): instructions,
then the conversation, the response and the item. Layout ``continue_rollout``
(:func:`continuation_judge_parts`) continues the rolled-out conversation instead: the
rollout's own prompt and response come first, unchanged, then a new user turn with
:data:`CONTINUATION_INSTRUCTIONS` and the item, so a grader that keeps the rollout's KV
cache (or an engine's prefix cache) pays only for the grading turn. The chat-template
plumbing is ``rubricrl.judges.encoding.JudgePromptEncoder``'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from rubricrl.data.rubrics import RubricItem

__all__ = [
    "CONTINUATION_INSTRUCTIONS",
    "JUDGE_LAYOUTS",
    "VERDICT_CUE",
    "continuation_judge_parts",
    "generate_judge_parts",
    "generate_judge_prompt",
    "logprob_judge_parts",
    "verdict_words",
]

#: The text every logprob item suffix ends with; the verdict word is the next token.
VERDICT_CUE = "Verdict:"

#: Judge prompt layouts (``reward.judge_layout``); the first is the default.
JUDGE_LAYOUTS = ("instructions_first", "continue_rollout")

# The grading rules, shared by both layouts (one definition).
_RULES = """\
How to decide:
- Judge only the criterion you are given. Other strengths or flaws of the response do not matter here.
- When a criterion asks for several things, it is met only if the response does all of them.
- When a criterion gives examples (for instance "such as ..."), the response does not need to cover every example.
- Some criteria describe undesirable behaviour and carry negative points. Such a criterion is \
met when the response shows that behaviour, even though that is bad for the response.
- Judge what the response actually says, not what it might have meant.
- Answer true if the criterion is met and false if it is not.
"""

_INSTRUCTIONS = (
    "You are grading a response written by an AI assistant. You will see a conversation, "
    "the assistant's response to its last turn, and one criterion from a grading rubric. "
    "Decide whether the response meets that criterion.\n\n" + _RULES + "\n"
)

#: Layout ``continue_rollout``: the grading turn that follows the rolled-out conversation
#: (its first part, once per response; the item and the verdict cue come after it).
CONTINUATION_INSTRUCTIONS = (
    "Now grade the assistant's last response above against one criterion from a grading rubric. "
    "Decide whether that response meets the criterion.\n\n" + _RULES + "\n"
)

# Short on purpose: the suffix is the only per-(response, item) work of a
# prefix-shared judge, so everything generic lives in the shared instructions.
_LOGPROB_REQUEST = VERDICT_CUE

_GENERATE_REQUEST = """\
Is the criterion met by the response? First explain your decision in one or two sentences. \
Then give your answer as a JSON object and nothing after it, in this form:
{"explanation": "<your explanation>", "criteria_met": <true or false>}
Write criteria_met as a JSON boolean: true if the criterion is met, false if it is not.
"""


def verdict_words() -> tuple[list[str], list[str]]:
    """The verdict words a logprob judge reads after :data:`VERDICT_CUE`.

    Returns ``(yes, no)``. Each word comes with and without a leading space and
    capitalised, because BPE tokenizers encode " true" (after "Verdict:") and
    "true" as different single tokens. An engine keeps the words that encode to
    one token and uses their ids as the YES / NO sets of docs/algorithms.md §3.
    """
    yes = [" true", "true", " True", "True"]
    no = [" false", "false", " False", "False"]
    return yes, no


def logprob_judge_parts(conversation: Sequence[dict], response: str, item: RubricItem) -> tuple[str, str, str]:
    """The logprob judge prompt as ``(conversation_prefix, response_part, item_suffix)``.

    ``"".join(parts)`` is the full prompt; it ends with :data:`VERDICT_CUE`, so
    the next token is the verdict (see :func:`verdict_words`).

    Args:
        conversation: the prompt messages, ``[{"role": ..., "content": ...}, ...]``.
        response: the assistant response being graded.
        item: the rubric item to check.
    """
    return _conversation_prefix(conversation), _response_part(response), _item_block(item) + _LOGPROB_REQUEST


def continuation_judge_parts(item: RubricItem) -> tuple[str, str]:
    """Layout ``continue_rollout``, logprob judge: ``(grading_turn_head, item_suffix)``, the
    content of the user turn that follows the rolled-out response.

    ``grading_turn_head`` is :data:`CONTINUATION_INSTRUCTIONS` (the same for every item of a
    response); ``item_suffix`` is the item and :data:`VERDICT_CUE`, as in
    :func:`logprob_judge_parts`. The conversation and the response are not text here: they
    are the rollout's own prompt and response, rendered by the chat template.
    """
    return CONTINUATION_INSTRUCTIONS, _item_block(item) + _LOGPROB_REQUEST


def generate_judge_parts(conversation: Sequence[dict], response: str, item: RubricItem) -> tuple[str, str, str]:
    """The generative judge prompt as three parts; the first two equal the logprob judge's."""
    return _conversation_prefix(conversation), _response_part(response), _item_block(item) + _GENERATE_REQUEST


def generate_judge_prompt(conversation: Sequence[dict], response: str, item: RubricItem) -> str:
    """The generative judge prompt: asks for an explanation and ``{"explanation", "criteria_met"}`` JSON."""
    return "".join(generate_judge_parts(conversation, response, item))


# --------------------------------------------------------------------------- parts


def _conversation_prefix(conversation: Sequence[dict]) -> str:
    if not conversation:
        raise ValueError("judge prompt: the conversation is empty")
    turns = []
    for i, message in enumerate(conversation):
        try:
            role, content = message["role"], message["content"]
        except (KeyError, TypeError):
            raise ValueError(f"judge prompt: conversation[{i}] is not a {{role, content}} message") from None
        turns.append(f"[{role}]\n{content}")
    return _INSTRUCTIONS + "<conversation>\n" + "\n\n".join(turns) + "\n</conversation>\n\n"


def _response_part(response: str) -> str:
    return "<response>\n" + response + "\n</response>\n\n"


def _item_block(item: RubricItem) -> str:
    points = item.points
    shown = f"{points:+g}"
    # negative points: remind the judge, next to the item, that "met" means the flaw is present
    meaning = "(undesirable: met if the response shows it)\n" if points < 0 else ""
    return f'<criterion points="{shown}">\n{item.criterion}\n</criterion>\n' + meaning
