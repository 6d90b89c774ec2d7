"""The Triton GRPO token kernel against the PyTorch reference's ``token_terms`` (fp64), output by
output: the sums behind the loss and every metric (clip counts included), d loss / d lp,
d loss / d entropy and the ratio-log share ``g_logr`` that GSPO spreads over the response;
for every policy loss and switch, across several kernel programs, masked tokens poisoned."""

from __future__ import annotations

import pytest
import torch

import tests.test_grpo_loss  # noqa: F401,I001  (sets TRITON_INTERPRET before triton is imported)

from rubricrl.ops import constants
from rubricrl.ops._options import grpo_options
from rubricrl.ops._torch import grpo as torch_grpo
from rubricrl.ops._triton import grpo as triton_grpo

N = 53  # 4 programs of 16 tokens (BLOCK patched below), the last one partial


def tokens(seed, on_policy, with_pgw, with_ref, sequence_level):
    """-> (lp, ent, tok) in float64, the ``tok`` dict as ``prepare_tokens`` (+ ``seq_lr``) gives it."""
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(N, generator=g, dtype=torch.float64) * 3
    old = lp + torch.randn(N, generator=g, dtype=torch.float64) * 0.6
    old[3], old[11] = lp[3] + 25.0, lp[11] - 25.0  # log-ratio clamped
    adv = torch.randn(N, generator=g, dtype=torch.float64)
    valid = torch.rand(N, generator=g) > 0.2
    valid[[3, 11, 20]] = True
    wt = torch.rand(N, generator=g, dtype=torch.float64) * valid
    ref = lp + torch.randn(N, generator=g, dtype=torch.float64) * 1.5
    ref[20] = lp[20] + 22.0  # KL log-ratio clamped, k3 capped
    # a response log-ratio per token, some beyond the clip range, one beyond the clamp
    seq_lr = torch.randn(N, generator=g, dtype=torch.float64) * 0.3
    seq_lr[5] = 21.0
    tok = dict(old=None if on_policy else old, adv=adv, valid=valid, wt=wt, ref=ref if with_ref else None,
               pgw=torch.rand(N, generator=g, dtype=torch.float64) + 0.5 if with_pgw else None)
    if sequence_level:
        tok["seq_lr"] = seq_lr
    ent = torch.rand(N, generator=g, dtype=torch.float64) * 2
    return lp, ent, tok


def poisoned_fp32(x, valid):
    """fp32, NaN on masked tokens: the kernel must never read them."""
    if x is None or x.dtype == torch.bool:
        return x
    return torch.where(valid, x, torch.full_like(x, float("nan"))).float()


CASES = {
    "plain": dict(),
    "on-policy+k3": dict(on_policy=True, kl_coef=0.1),
    "pgw+entropy": dict(pgw=True, entropy_coef=0.02),
    "dual+k1": dict(clip_c=2.0, kl_coef=0.1, kl_type="k1"),
    "k2-bias": dict(kl_coef=0.1, kl_type="k2", kl_bias_correction=True),
    "k3-bias-on-policy+pgw": dict(kl_coef=0.1, kl_bias_correction=True, on_policy=True, pgw=True),
    "kl-metric-only": dict(kl_coef=0.0, ref=True, entropy=True),
    "no-lower-clip+taus": dict(eps_low=1.0, eps_high=0.5, tau_pos=0.7, tau_neg=2.0, pgw=True),
}


def _applies(policy, case):
    c = CASES[case]
    return not (("clip_c" in c and policy in ("cispo", "sapo"))
                or (c.get("kl_bias_correction") and policy in constants.SEQUENCE_POLICY_LOSSES))


@pytest.mark.parametrize("policy, case", [(p, c) for p in constants.POLICY_LOSSES for c in CASES if _applies(p, c)])
def test_triton_token_terms_match_torch_reference(monkeypatch, policy, case):
    monkeypatch.setattr(triton_grpo, "BLOCK", 16)
    c = dict(CASES[case])
    on_policy, with_pgw, with_ent = c.pop("on_policy", False), c.pop("pgw", False), c.pop("entropy", False)
    with_ref = c.pop("ref", False) or "kl_coef" in c
    with_ent = with_ent or "entropy_coef" in c
    opts = grpo_options(policy_loss=policy, **c)
    lp, ent, tok = tokens(7, on_policy, with_pgw, with_ref, opts.sequence_level)
    ent = ent if with_ent else None
    want = torch_grpo.token_terms(lp, ent, tok, opts)
    valid = tok["valid"]
    got = triton_grpo.token_terms(poisoned_fp32(lp, valid), poisoned_fp32(ent, valid),
                                  {k: poisoned_fp32(v, valid) for k, v in tok.items()}, opts)
    sums, want_sums = got[0].double(), want[0]
    for i, name in enumerate(constants.GRPO_SUMS):
        if name in ("clipped", "lower"):  # token counts: exact
            assert sums[i] == want_sums[i], f"{policy}/{case}: sum {name} {sums[i]} != {want_sums[i]}"
        else:
            torch.testing.assert_close(sums[i], want_sums[i], rtol=1e-5, atol=1e-6, msg=f"{policy}/{case}: {name}")
    for what, g, w in zip(("g_lp", "g_ent", "g_logr"), got[1:], want[1:]):
        assert (g is None) == (w is None), f"{policy}/{case}: {what}"
        if w is not None:
            assert g.dtype == torch.float32 and g.shape == w.shape
            torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-7, msg=f"{policy}/{case}: {what}")
    # the data clips some tokens, except on-policy with the token ratio (1 everywhere)
    if policy != "sapo" and not (on_policy and not opts.sequence_level):
        assert want_sums[constants.GRPO_SUMS.index("clipped")] > 0
