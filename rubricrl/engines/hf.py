"""``HFEngine``: the default engine, a transformers causal LM on CPU or GPU.

Sampling is ``model.generate(do_sample=True, temperature, top_p, top_k=0)``, with
the checkpoint's own generation defaults (repetition penalty, min_p, ...) switched off,
so the sampling distribution is exactly ``softmax(logits / T)`` cut to the ``top_p`` nucleus.

Behaviour log-probs come from one teacher-forced forward of prompt + response right
after sampling, with the same weights, not from the logits that ``generate`` saw:
- ``generate`` would have to keep ``[steps, batch, vocab]`` logits (``output_logits``),
  gigabytes for a real vocabulary, while the teacher-forced pass keeps only the
  sampled token's log-prob, from the hidden states with ``rubricrl.ops.fused_linear_logprobs``;
- the teacher-forced pass is the computation the trainer repeats for ``lp``, so at
  ``eta = 0`` the importance ratio starts at exactly 1 instead of carrying the small
  numerical gap between the KV-cached decode and a full forward (the choice verl makes
  when it recomputes ``old_log_prob``). In fp32 both agree within 1e-4 (tested).
The log-prob is ``log_softmax(logits / T)`` of the sampled token, not renormalised over
the ``top_p`` nucleus, because that is what the trainer's ``lp`` is.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import Cache, DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from rubricrl.engines.base import (
    Engine,
    Prompt,
    Sample,
    VerdictOptions,
    VerdictRequest,
    check_sampling_args,
    per_prompt_caps,
)
from rubricrl.engines.cache import cache_batch_size
from rubricrl.engines.padding import left_pad, position_ids_from_mask
from rubricrl.engines.prompts import encode_prompts
from rubricrl.engines.split_attention import SplitAttention, split_attention, supports_split_attention
from rubricrl.engines.scoring import verdict_probs_from_hidden

__all__ = ["HFEngine", "preserved_model_state"]


class HFEngine(Engine):
    """Engine over a ``transformers`` causal LM (``PreTrainedModel`` with ``generate``).

    Args:
        model: the policy; moved to ``device`` when given and put in eval mode.
        tokenizer: its tokenizer; must define a pad token (``load_policy`` sees to that).
        device: where to run (default: where the model's parameters are).
        max_batch_size: most sequences sampled at once (default: all ``len(prompts) * n``).
        policy_version: the version of the weights given.

    Stop tokens are the tokenizer's eos plus every eos id of ``model.generation_config``
    (for chat models typically the end-of-turn token, e.g. ``<|im_end|>``).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        device: torch.device | str | None = None,
        max_batch_size: int | None = None,
        policy_version: int = 0,
    ) -> None:
        super().__init__(policy_version=policy_version)
        if not isinstance(model, PreTrainedModel) or not hasattr(model, "generate"):
            raise ValueError(
                f"model must be a transformers PreTrainedModel with generate(), got {type(model).__name__}"
            )
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise ValueError("tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token)")
        if max_batch_size is not None and (not isinstance(max_batch_size, int) or max_batch_size < 1):
            raise ValueError(f"max_batch_size must be None or an int >= 1, got {max_batch_size!r}")
        _check_plain_output_projection(model)
        if device is not None:
            model.to(device)
        model.eval()
        self._model = model
        self._tokenizer = tokenizer
        self._max_batch_size = max_batch_size
        self._stop_ids = _stop_token_ids(model, tokenizer)
        #: ``forward_with_cache`` on a cache with new tokens masked by rows: attend to the
        #: context and to the new tokens separately and merge (``engines.split_attention``)
        #: instead of one masked attention over both. None: where supported (CPU, full attention).
        self.split_attention: bool | None = None

    @classmethod
    @contextlib.contextmanager
    def borrowed(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs: object
    ) -> Iterator[HFEngine]:
        """An engine over a caller's model (e.g. a trainer's policy), handed back as it was found.

        ``HFEngine(model, ...)`` puts the model in eval mode (and moves it with ``device=``);
        on leaving the block every module's train/eval flag, every parameter's
        ``requires_grad`` and every parameter's and buffer's device are restored
        (see :func:`preserved_model_state`).
        """
        with preserved_model_state(model):
            yield cls(model, tokenizer, **kwargs)  # type: ignore[arg-type]

    # ---- identity -------------------------------------------------------------------

    @property
    def model(self) -> PreTrainedModel:
        return self._model

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self._tokenizer

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return next(self._model.parameters()).device

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a response (``Sample.finished``)."""
        return list(self._stop_ids)

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy every parameter/buffer of ``state_dict`` into the model (strict), then set ``version``.

        Raises:
            ValueError: ``version`` is not an int >= the current version, or ``state_dict``
                misses or adds keys or has a wrong shape.
        """
        # Check everything before copying anything, so a bad call leaves the weights untouched
        # (load_state_dict copies the matching tensors before it reports a mismatch).
        self._check_new_version(version)
        expected = {name: tuple(t.shape) for name, t in self._model.state_dict().items()}
        given = {name: tuple(t.shape) for name, t in state_dict.items()}
        missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
        wrong = sorted(k for k in expected.keys() & given.keys() if expected[k] != given[k])
        if missing or unexpected or wrong:
            raise ValueError(
                f"state_dict does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"wrong shape {[(k, given[k], expected[k]) for k in wrong[:5]]}"
            )
        self._model.load_state_dict(dict(state_dict), strict=True)
        self._set_version(version)

    # ---- sampling -------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        n: int,
        *,
        max_new_tokens: int | Sequence[int],
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """Sample ``n`` responses for every prompt; ``result[i][j]`` is sample ``j`` of prompt ``i``.

        Args:
            prompts: chat message lists (rendered with the chat template and the generation
                prompt) and/or raw strings.
            n: samples per prompt (>= 1).
            max_new_tokens: most tokens per response (>= 1), the stop token included; or one
                cap per prompt. ``transformers``' generate runs every row of a batch until
                the batch's longest is done, so a row is cut at its cap afterwards: the same
                tokens and cost as a stop token at that position.
            temperature: sampling temperature (> 0); also the temperature of the log-probs.
            top_p: nucleus mass in (0, 1]; 1 disables it. Top-k is always off.
            seed: None samples from the global torch RNG; an int makes the call deterministic
                (same prompts, n, settings, batch size and seed -> same samples) and leaves the
                global RNG state unchanged.

        Returns:
            ``len(prompts)`` lists of ``n`` ``Sample`` each, tagged with the current policy version.
        """
        check_sampling_args(n, 1, temperature, top_p, seed)
        caps = per_prompt_caps(max_new_tokens, len(prompts))
        prompt_ids = encode_prompts(self._tokenizer, prompts)
        if not prompt_ids:
            return []

        config = GenerationConfig(
            do_sample=True,
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=0,
            max_new_tokens=max(caps),
            pad_token_id=self._tokenizer.pad_token_id,
            eos_token_id=list(self._stop_ids),
        )
        # Row i * n + j is sample j of prompt i.
        rows = [ids for ids in prompt_ids for _ in range(n)]
        row_caps = [cap for cap in caps for _ in range(n)]
        batch = self._max_batch_size or len(rows)
        version = self.policy_version
        flat: list[Sample] = []
        with torch.no_grad(), _seeded(seed, self.device), _plain_generation_defaults(self._model, config):
            for start in range(0, len(rows), batch):
                end = start + batch
                config.max_new_tokens = max(row_caps[start:end])
                flat.extend(self._generate_batch(rows[start:end], row_caps[start:end], config, float(temperature), version))
        return [flat[i * n : (i + 1) * n] for i in range(len(prompt_ids))]

    def _generate_batch(
        self, rows: list[list[int]], caps: list[int], config: GenerationConfig, temperature: float, version: int
    ) -> list[Sample]:
        """Sample one response per row of prompt ids (row ``r`` cut at ``caps[r]`` tokens), then
        score the responses teacher-forced."""
        device = self.device
        input_ids, prompt_mask = left_pad(rows, self._tokenizer.pad_token_id)
        input_ids, prompt_mask = input_ids.to(device), prompt_mask.to(device)
        sequences = self._model.generate(input_ids=input_ids, attention_mask=prompt_mask, generation_config=config)
        prompt_len = input_ids.shape[1]

        # Cut every row at its first stop token (kept); what follows is padding.
        stop = set(self._stop_ids)
        responses: list[list[int]] = []
        finished: list[bool] = []
        for row, cap in zip(sequences[:, prompt_len:].tolist(), caps):
            row = row[:cap]
            end = next((k for k, tok in enumerate(row) if tok in stop), None)
            responses.append(row if end is None else row[: end + 1])
            finished.append(end is not None)

        logprobs = self.token_logprobs(rows, responses, temperature=temperature)
        return [
            Sample(
                prompt_ids=list(prompt),
                response_ids=resp,
                response_text=self._decode_response(resp, done),
                behaviour_logprobs=lp,
                finished=done,
                policy_version=version,
            )
            for prompt, resp, done, lp in zip(rows, responses, finished, logprobs)
        ]

    def _decode_response(self, response_ids: list[int], finished: bool) -> str:
        text_ids = response_ids[:-1] if finished else response_ids
        return self._tokenizer.decode(text_ids, skip_special_tokens=True)

    # ---- scoring --------------------------------------------------------------------

    def verdict_probs(
        self,
        requests: Sequence[VerdictRequest],
        yes_ids: Sequence[int],
        no_ids: Sequence[int],
        *,
        temperature: float,
        return_mass: bool = True,
        options: VerdictOptions | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """See ``Engine.verdict_probs``. The fused path: prefixes and bodies run once in a
        prefix-shared KV cache (``forward_with_cache``), then ``rubricrl.ops.verdict_probs``
        on the verdict-position hidden states (``rubricrl.engines.scoring``)."""
        options = options or VerdictOptions()
        return verdict_probs_from_hidden(
            self, requests, yes_ids, no_ids, temperature, return_mass, options, share_prefix=options.share_prefix
        )

    def snapshot(self) -> HFEngine:
        """An ``HFEngine`` over a deep copy of the model (and of the tokenizer: fast tokenizers
        are not safe to share between threads), same settings and policy version."""
        twin = HFEngine(
            copy.deepcopy(self._model),
            copy.deepcopy(self._tokenizer),
            max_batch_size=self._max_batch_size,
            policy_version=self.policy_version,
        )
        twin.split_attention = self.split_attention
        return twin

    # ---- forward passes for trainers and judges ---------------------------------------

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states ``[B, T, H]`` (model dtype) of a padded batch.

        Positions count real tokens only (``position_ids_from_mask``), so left- and
        right-padded rows give the same states as the unpadded sequence.
        """
        input_ids, attention_mask = self._check_batch(input_ids, attention_mask)
        out = self._decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state

    def output_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight [V, H], bias [V] or None)``: the live parameters of the LM head."""
        head = self._model.get_output_embeddings()
        return head.weight, getattr(head, "bias", None)

    def forward_with_cache(
        self,
        input_ids: torch.Tensor,
        past_key_values: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """See ``Engine.forward_with_cache``; the cache is a ``transformers.DynamicCache``."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a LongTensor [B, T], got {_describe(input_ids)}")
        batch, length = input_ids.shape
        if past_key_values is None:
            past_key_values = DynamicCache(config=self._model.config)
        elif not isinstance(past_key_values, DynamicCache):
            raise ValueError(f"past_key_values must be a DynamicCache or None, got {type(past_key_values).__name__}")
        past = past_key_values.get_seq_length()
        cached_batch = cache_batch_size(past_key_values)
        if cached_batch is not None and cached_batch != batch:
            raise ValueError(
                f"past_key_values holds batch size {cached_batch} but input_ids has {batch}; "
                "use expand_cache(cache, repeats) to repeat a prefix"
            )
        device = self.device
        input_ids = input_ids.to(device)
        if attention_mask is None and segment_ids is not None:
            raise ValueError("segment_ids needs an attention_mask [B, past + T]")
        split: SplitAttention | None = None
        if attention_mask is None:
            position_ids = torch.arange(past, past + length, device=device).expand(batch, length)
        else:
            if tuple(attention_mask.shape) != (batch, past + length):
                raise ValueError(
                    f"attention_mask must have shape [B, past + T] = {[batch, past + length]} "
                    f"(it covers the cached prefix), got {list(attention_mask.shape)}"
                )
            attention_mask = attention_mask.to(device=device, dtype=torch.long)
            use_split = past > 0 and (
                supports_split_attention(self._model, device) if self.split_attention is None else self.split_attention
            )
            if segment_ids is None:
                position_ids = position_ids_from_mask(attention_mask)[:, past:]
                if use_split and _right_padded(attention_mask[:, past:]):
                    split = SplitAttention(past, _context_bias(attention_mask[:, :past], self._model.dtype))
            else:
                segment_ids = segment_ids.to(device)
                if use_split:
                    split, position_ids = _segment_split(attention_mask, segment_ids, past, self._model.dtype)
                if split is None:
                    attention_mask, position_ids = _segment_mask(attention_mask, segment_ids, past, self._model.dtype)
        if split is not None:
            with split_attention(self._model):
                out = self._decoder()(
                    input_ids=input_ids,
                    attention_mask={"full_attention": split},
                    position_ids=position_ids,
                    past_key_values=past_key_values,
                    use_cache=True,
                )
            return out.last_hidden_state, out.past_key_values
        out = self._decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=True,
        )
        return out.last_hidden_state, out.past_key_values

    # ---- helpers --------------------------------------------------------------------

    def _decoder(self) -> torch.nn.Module:
        """The base transformer (embeddings .. final norm) without the LM head."""
        return self._model.base_model

    def _check_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a LongTensor [B, T], got {_describe(input_ids)}")
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {list(input_ids.shape)}, "
                f"got {_describe(attention_mask)}"
            )
        device = self.device
        return input_ids.to(device), attention_mask.to(device=device, dtype=torch.long)



@dataclass(frozen=True)
class _Segments:
    """Packed segments of one ``forward_with_cache`` call (see ``Engine.forward_with_cache``)."""

    real: torch.Tensor  # [B, T] bool: not padding
    context: torch.Tensor  # [B, past] bool: real cached tokens
    starts: torch.Tensor  # [B, T] bool: first token of a run of one segment id
    offset: torch.Tensor  # [B, T] position of each token inside its run
    positions: torch.Tensor  # [B, T] position ids: restart after the context's real tokens


def _segments(attention_mask: torch.Tensor, segment_ids: torch.Tensor, past: int) -> _Segments:
    """Validate ``segment_ids`` against ``attention_mask`` and locate the runs of equal ids."""
    batch, length = segment_ids.shape
    if segment_ids.dtype != torch.long or tuple(attention_mask.shape) != (batch, past + length):
        raise ValueError(f"segment_ids must be int64 [B, T] = {[batch, length]}, got {_describe(segment_ids)}")
    real = segment_ids >= 0
    if not torch.equal(attention_mask[:, past:].bool(), real):
        raise ValueError("with segment_ids, the last T columns of attention_mask must be segment_ids >= 0")
    context = attention_mask[:, :past].bool()
    steps = torch.arange(length, device=segment_ids.device)
    starts = torch.ones_like(real)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.where(starts, steps, torch.zeros_like(steps)).cummax(dim=1).values
    offset = steps - first
    positions = (context.sum(dim=1, keepdim=True) + offset).masked_fill(~real, 0)
    return _Segments(real, context, starts, offset, positions)


def _segment_mask(
    attention_mask: torch.Tensor, segment_ids: torch.Tensor, past: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 4D additive mask ``[B, 1, T, past + T]`` (0 = attend, -inf = not) and positions
    ``[B, T]`` of packed segments (see ``Engine.forward_with_cache``). Additive rather than
    boolean: torch's CPU attention runs faster with it (~20% on the judge's shapes)."""
    batch, length = segment_ids.shape
    seg = _segments(attention_mask, segment_ids, past)
    steps = torch.arange(length, device=segment_ids.device)
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (steps[None, :, None] >= steps[None, None, :])
    # A padding query sees only itself: a row with nothing to attend to would give NaN, and
    # NaN in its keys/values would reach real rows through 0 * NaN.
    new = (same & seg.real[:, :, None]) | torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.cat([seg.context[:, None, :].expand(batch, length, past) & seg.real[:, :, None], new], dim=2)
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    return additive[:, None], seg.positions


def _right_padded(mask: torch.Tensor) -> bool:
    """Whether every row of a 0/1 mask ``[B, T]`` is ones then zeros."""
    return bool((mask[:, 1:] <= mask[:, :-1]).all()) if mask.shape[1] > 1 else True


def _context_bias(context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive ``[B, 1, 1, past]`` mask of the cached context, None when all of it is real."""
    if bool(context.bool().all()):
        return None
    bias = torch.zeros(context.shape, dtype=dtype, device=context.device).masked_fill_(~context.bool(), float("-inf"))
    return bias[:, None, None, :]


def _segment_split(
    attention_mask: torch.Tensor, segment_ids: torch.Tensor, past: int, dtype: torch.dtype
) -> tuple[SplitAttention | None, torch.Tensor]:
    """``(SplitAttention, positions [B, T])`` of packed segments, the layout ``_segment_mask``
    masks: each segment (a run of one id; each run of padding too) is its own causal
    sequence on the context. ``(None, positions)`` when a segment id is not one run."""
    batch, length = segment_ids.shape
    seg = _segments(attention_mask, segment_ids, past)
    starts, offset, positions = seg.starts, seg.offset, seg.positions
    device = segment_ids.device
    runs = starts.sum(dim=1)
    distinct = sum(len(torch.unique(row)) for row in segment_ids)
    if int(runs.sum()) != distinct:
        return None, positions
    run_id = (starts.reshape(-1).long().cumsum(0) - 1).view(batch, length)  # global run index
    n_runs = int(runs.sum())
    sizes = torch.bincount(run_id.reshape(-1), minlength=n_runs)
    width = int(sizes.max())
    flat_pos = torch.arange(batch * length, device=device)
    # every slot holds its run's first token, then the real slots their own tokens
    is_start = starts.reshape(-1)
    gather = flat_pos[is_start][:, None].repeat(1, width)
    gather[run_id.reshape(-1), offset.reshape(-1)] = flat_pos
    scatter = run_id.reshape(-1) * width + offset.reshape(-1)
    return SplitAttention(past, _context_bias(seg.context, dtype), gather, scatter), positions


def _stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: list[int] = []
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for candidate in (tokenizer.eos_token_id, generation_eos):
        for tok in candidate if isinstance(candidate, (list, tuple)) else [candidate]:
            if tok is not None and int(tok) not in ids:
                ids.append(int(tok))
    if not ids:
        raise ValueError("neither the tokenizer nor model.generation_config defines an eos token id")
    return ids


def _check_plain_output_projection(model: PreTrainedModel) -> None:
    """Reject models whose logits are not ``hidden @ W.T + b`` (the engine and the fused ops assume it)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError("models with final_logit_softcapping are not supported: logits must be hidden @ W.T + b")
    for name in ("logit_scale", "logits_scaling"):
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            raise ValueError(f"models with {name}={value} are not supported: logits must be hidden @ W.T + b")
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
    if model.base_model is model:
        raise ValueError(f"{type(model).__name__} has no separate base model to take hidden states from")


@contextlib.contextmanager
def _plain_generation_defaults(model: PreTrainedModel, config: GenerationConfig) -> Iterator[None]:
    """Hide the checkpoint's ``generation_config`` while sampling.

    ``generate`` fills every field left unset in the config it is given from
    ``model.generation_config`` (e.g. a repetition penalty, min_p or suppressed tokens
    shipped with an instruct checkpoint). Any of those would make the sampling
    distribution differ from ``softmax(logits / T)`` and the behaviour log-probs wrong,
    so only the token ids are kept.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id, pad_token_id=config.pad_token_id, eos_token_id=config.eos_token_id
    )
    try:
        yield
    finally:
        model.generation_config = saved


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run the block from ``torch.manual_seed(seed)`` and restore the RNG state afterwards."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return type(value).__name__


@contextlib.contextmanager
def preserved_model_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore, on exit (also on an exception), what an engine may change on a model.

    Restored: each submodule's ``training`` flag (a trainer's model may mix train and
    eval submodules), each parameter's ``requires_grad``, and the device of each
    parameter and buffer that was moved (in place, so an optimizer holding the
    parameters keeps pointing at them).
    """
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.device) for p in model.parameters()]
    buffers = [(m, name, b.device) for m in model.modules() for name, b in m._buffers.items() if b is not None]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad, device in params:
            if param.device != device:
                param.data = param.data.to(device)
            param.requires_grad_(requires_grad)
        for module, name, device in buffers:
            buf = module._buffers.get(name)
            if buf is not None and buf.device != device:
                module._buffers[name] = buf.to(device)
