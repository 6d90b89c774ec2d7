"""The tiny default model and load_policy."""

from __future__ import annotations

import torch
import pytest

from rubricrl.models import TINY_CONFIG, build_tiny_model, load_builtin_tokenizer, load_policy


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_gives_bitwise_identical_weights():
    assert _same_weights(build_tiny_model(seed=3), build_tiny_model(seed=3))


def test_different_seeds_differ_and_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    a = build_tiny_model(seed=0)
    after = torch.rand(4)
    assert torch.equal(after, expected)
    assert not torch.equal(a.lm_head.weight, build_tiny_model(seed=1).lm_head.weight)


def test_config_and_parameter_count():
    model = build_tiny_model()
    cfg = model.config
    tok = load_builtin_tokenizer()
    assert cfg.vocab_size == len(tok)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (128, 4, 4, 384)
    assert cfg.max_position_embeddings == 2048
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Untied: the output projection is its own [V, H] parameter.
    assert model.lm_head.weight.shape == (cfg.vocab_size, cfg.hidden_size)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    v, h, i, hd = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer = h * q + 2 * h * kv + q * h + 2 * hd + 3 * h * i + 2 * h
    expected = 2 * v * h + cfg.num_hidden_layers * per_layer + h
    assert sum(p.numel() for p in model.parameters()) == expected == 1_574_272


def test_overrides_apply_and_unknown_keys_are_rejected():
    model = build_tiny_model(num_hidden_layers=2, hidden_size=64, head_dim=16)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert TINY_CONFIG["num_hidden_layers"] == 4  # the defaults are not mutated
    with pytest.raises(ValueError, match="hiden_size"):
        build_tiny_model(hiden_size=64)


def test_generation_config_stops_on_end_of_turn_and_eos():
    model = build_tiny_model()
    tok = load_builtin_tokenizer()
    eos = model.generation_config.eos_token_id
    assert set(eos) == {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_load_policy_none_is_tiny_model_and_builtin_tokenizer():
    model, tok = load_policy(None, seed=5)
    assert _same_weights(model, build_tiny_model(seed=5))
    assert len(tok) == model.config.vocab_size and not model.training
    bf16, _ = load_policy(None, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())


def test_load_policy_from_saved_checkpoint(tmp_path):
    model, tok = load_policy(None, seed=7)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_policy(str(tmp_path))
    assert _same_weights(model, loaded)
    ids = torch.tensor([tok.encode("Grüße, 世界!")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    messages = [{"role": "user", "content": "hi é"}]
    assert loaded_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    assert loaded_tok.encode("Grüße") == tok.encode("Grüße")
    assert loaded_tok.padding_side == "left" and loaded_tok.pad_token_id == tok.pad_token_id


def test_load_policy_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_policy(str(tmp_path / "missing"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a directory"):
        load_policy(str(tmp_path / "file.bin"))
    with pytest.raises(ValueError, match="config.json"):
        load_policy(str(tmp_path))
    build_tiny_model().save_pretrained(tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="no tokenizer"):
        load_policy(str(tmp_path / "no_tokenizer"))
    with pytest.raises(ValueError, match="dtype"):
        load_policy(None, dtype=torch.int32)
