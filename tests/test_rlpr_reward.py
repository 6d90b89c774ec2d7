"""RLPR: format check, reward combination, debias cache, std filter (docs/algorithms.md §4)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rubricrl.rewards.rlpr import DebiasCache, StdFilter, check_format, rlpr_reward

FAST = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------- check_format


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<think>a</think><answer>b</answer>", True),
        ("pre <think>\nx\n</think>\n\n<answer> 42 </answer> post", True),
        ("<think></think><answer></answer>", True),
        ("<think>a</think>", False),  # no answer
        ("<answer>b</answer>", False),  # no think
        ("<answer>b</answer><think>a</think>", False),  # order
        ("</think><think>a<answer>b</answer>", False),  # think closed before opened
        ("<think>a</think><answer>b</answer><answer>c</answer>", False),  # two answers
        ("<think>a<think>b</think><answer>c</answer>", False),  # two <think>
        ("<think>a<answer>b</think></answer>", False),  # interleaved
        ("<think>a</think><answer>b", False),  # unclosed answer
        ("", False),
    ],
)
def test_check_format(text: str, ok: bool) -> None:
    assert check_format(text) is ok


def test_check_format_rejects_non_str() -> None:
    with pytest.raises(ValueError, match="response"):
        check_format(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- rlpr_reward


def test_rlpr_reward_hand_computed() -> None:
    r = torch.tensor([0.7, 0.2, 0.9, 0.5, float("nan")])
    r_debias = torch.tensor([0.3, 0.4, -0.5, 0.5, 0.1])
    ok = torch.tensor([True, True, True, True, False])
    out = rlpr_reward(r, r_debias, ok, fc=0.1)
    # r_hat: 0.4, clip(-0.2)=0, clip(1.4)=1, 0, malformed=0 (its NaN r is ignored)
    expected = torch.tensor([0.9 * 0.4 + 0.1, 0.1, 0.9 * 1.0 + 0.1, 0.1, 0.0])
    torch.testing.assert_close(out, expected)
    assert out.dtype == torch.float32


def test_rlpr_reward_fc_extremes() -> None:
    r, rd, ok = torch.tensor([0.8, 0.8]), torch.tensor([0.2, 0.2]), torch.tensor([True, False])
    torch.testing.assert_close(rlpr_reward(r, rd, ok, fc=0.0), torch.tensor([0.6, 0.0]))
    torch.testing.assert_close(rlpr_reward(r, rd, ok, fc=1.0), torch.tensor([1.0, 0.0]))


def test_rlpr_reward_errors() -> None:
    one, ok = torch.ones(2), torch.ones(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="fc"):
        rlpr_reward(one, one, ok, fc=1.5)
    with pytest.raises(ValueError, match="r_debias"):
        rlpr_reward(one, torch.ones(3), ok)
    with pytest.raises(ValueError, match="indices \\[1\\]"):
        rlpr_reward(torch.tensor([0.5, float("nan")]), one, ok)


@FAST
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), st.booleans()), min_size=1, max_size=16),
    st.floats(0, 1),
)
def test_rlpr_reward_range(rows: list[tuple[float, float, bool]], fc: float) -> None:
    r = torch.tensor([a for a, _, _ in rows])
    rd = torch.tensor([b for _, b, _ in rows])
    ok = torch.tensor([c for _, _, c in rows])
    out = rlpr_reward(r, rd, ok, fc=fc)
    assert bool(((out >= 0) & (out <= 1 + 1e-6)).all())
    assert bool((out[~ok] == 0).all())
    assert bool((out[ok] >= fc - 1e-6).all())


# --------------------------------------------------------------------------- DebiasCache


def test_debias_cache_cached_mode_computes_once() -> None:
    calls: list[list[str]] = []

    def compute(ids: list[str]) -> list[float]:
        calls.append(list(ids))
        return [len(i) / 10 for i in ids]

    cache = DebiasCache("cached")
    out = cache.get_or_compute(["ab", "ab", "abc", "ab"], compute, policy_version=0)
    torch.testing.assert_close(out, torch.tensor([0.2, 0.2, 0.3, 0.2]))
    cache.get_or_compute(["ab", "abcd"], compute, policy_version=5)  # version ignored
    assert calls == [["ab", "abc"], ["abcd"]]
    assert cache.key("ab", 7) == ("ab", "fixed")


def test_debias_cache_per_step_recomputes_and_evicts() -> None:
    version_values = {0: 0.1, 1: 0.2}
    calls: list[tuple[int, list[str]]] = []
    cache = DebiasCache("per_step")
    for v in (0, 0, 1):
        out = cache.get_or_compute(
            ["p", "q", "p"], lambda ids, v=v: (calls.append((v, list(ids))), [version_values[v]] * len(ids))[1], v
        )
        torch.testing.assert_close(out, torch.full((3,), version_values[v]))
    assert calls == [(0, ["p", "q"]), (1, ["p", "q"])]
    assert len(cache) == 2 and cache.get("p", 0) is None and cache.get("p", 1) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="policy_version"):
        cache.get("p")


def test_debias_cache_errors_and_state() -> None:
    with pytest.raises(ValueError, match="mode"):
        DebiasCache("sometimes")  # type: ignore[arg-type]
    cache = DebiasCache()
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        cache.get_or_compute(["a", "b"], lambda ids: [0.0])
    cache.put("a", 0.5)
    other = DebiasCache()
    other.load_state_dict(copy.deepcopy(cache.state_dict()))
    assert other.get("a") == 0.5
    with pytest.raises(ValueError, match="mode"):
        DebiasCache("per_step").load_state_dict(cache.state_dict())


# --------------------------------------------------------------------------- StdFilter


def _rows(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_std_filter_hand_computed() -> None:
    f = StdFilter(beta=0.5, ema_rate=0.99, warmup_steps=2)
    # Unbiased std of [0, a, 2a] is exactly a; of a constant row 0.
    keep = f.update_and_select(_rows([0, 0.25, 0.5], [0, 0.5, 1.0]))  # sigma .25 .5, mean .375
    assert keep.tolist() == [True, True] and f.ema is None
    keep = f.update_and_select(_rows([0.5, 0.5, 0.5], [0, 0.25, 0.5]))  # sigma 0 .25, mean .125
    assert keep.tolist() == [True, True]  # warm-up keeps all, even sigma = 0
    assert f.ema == pytest.approx(0.25)  # (0.375 + 0.125) / 2
    assert f.threshold == pytest.approx(0.125)
    # threshold 0.125: sigma 0.125 kept (>=, boundary), 0 dropped, 4 kept. Selection uses the
    # ema *before* this step's update; updating first would give 0.5*0.26125 > 0.125 and drop row 0.
    keep = f.update_and_select(_rows([0, 0.125, 0.25], [0.5, 0.5, 0.5], [0, 4, 8]))
    assert keep.tolist() == [True, False, True]
    assert f.ema == pytest.approx(0.99 * 0.25 + 0.01 * (4.125 / 3))  # 0.26125
    keep = f.update_and_select(_rows([0, 0.125, 0.25]))  # 0.125 < 0.130625
    assert keep.tolist() == [False]
    assert f.step == 4
    assert f.last_stats["std_filter/kept_frac"] == 0.0


def test_std_filter_matches_torch_std() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 8, generator=g)
    f = StdFilter(beta=0.0, warmup_steps=1)
    f.update_and_select(x)
    assert f.ema == pytest.approx(float(x.double().std(dim=1).mean()))


def test_std_filter_errors() -> None:
    with pytest.raises(ValueError, match="beta"):
        StdFilter(beta=-1)
    with pytest.raises(ValueError, match="ema_rate"):
        StdFilter(ema_rate=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        StdFilter(warmup_steps=0)
    f = StdFilter()
    with pytest.raises(ValueError, match="group_rewards"):
        f.update_and_select(torch.rand(4, 1))  # G = 1: std undefined
    with pytest.raises(ValueError, match="group_rewards"):
        f.update_and_select(torch.tensor([[0.0, float("nan")]]))


_groups = st.integers(1, 4).flatmap(
    lambda p: st.integers(2, 4).flatmap(
        lambda g: st.lists(
            st.lists(st.lists(st.floats(0, 1, width=32), min_size=g, max_size=g), min_size=p, max_size=p),
            min_size=1,
            max_size=8,
        )
    )
)


@FAST
@given(_groups, st.integers(0, 8), st.integers(1, 3))
def test_std_filter_state_round_trip(steps: list[list[list[float]]], cut: int, warmup: int) -> None:
    cut = min(cut, len(steps))
    a = StdFilter(beta=0.5, ema_rate=0.9, warmup_steps=warmup)
    for s in steps[:cut]:
        a.update_and_select(torch.tensor(s))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = StdFilter(beta=0.9, ema_rate=0.5, warmup_steps=7)  # restored fields override these
    b.load_state_dict(torch.load(buf))
    assert b.state_dict() == a.state_dict()
    for s in steps[cut:]:
        t = torch.tensor(s)
        assert a.update_and_select(t).tolist() == b.update_and_select(t).tolist()
        assert a.ema == b.ema
