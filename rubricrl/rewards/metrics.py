"""Grader-quality metrics: meta-evaluation MF1 (docs/algorithms.md §3) and ranking accuracy by band (docs/algorithms.md §6).

**MF1.** For each graded item the grader gives one verdict and one or more
physicians give a label. Every (grader verdict, physician label) pair counts
once, with the grader as the prediction and the physician as the truth. Over
those pairs, F1 of the class "met" and F1 of the class "not met" are computed
and ``MF1 = (F1_met + F1_not_met) / 2``.

A class's F1 is ``2 TP / (2 TP + FP + FN)`` for that class. When the class
never occurs among the pairs, neither predicted nor labelled
(``2 TP + FP + FN = 0``), F1 is undefined; like scikit-learn's
``f1_score(zero_division=0)`` (its default behaviour, minus the warning) it is
then taken as ``zero_division`` (0.0 by default). So a grader that agrees with
physicians who marked *every* item met scores F1_met = 1, F1_not_met = 0,
MF1 = 0.5: a slice with a single class says little about a grader.

**Ranking accuracy by band.** Responses are split into bands by quantiles of
the *reference* reward. Inside a band, every pair of responses whose reference
rewards differ is a comparison; the proxy gets it right (1) when it orders the
pair the same way, wrong (0) when it orders it the other way, and 0.5 when it
ties them. Accuracy is the mean over pairs. Errors in the top band (default the
top 10%) are the ones that drive reward over-optimisation.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

__all__ = ["f1_from_counts", "meta_eval_mf1", "ranking_accuracy_by_band"]


# --------------------------------------------------------------------------- MF1


def f1_from_counts(tp: int, fp: int, fn: int, zero_division: float = 0.0) -> float:
    """F1 of one class from its counts; ``zero_division`` when ``2tp + fp + fn == 0``."""
    denom = 2 * tp + fp + fn
    return zero_division if denom == 0 else 2 * tp / denom


def meta_eval_mf1(
    grader_verdicts: Sequence[bool],
    physician_labels: Sequence[Sequence[bool]],
    categories: Sequence[str] | None = None,
    *,
    zero_division: float = 0.0,
) -> dict[str, Any]:
    """Macro F1 of a grader against physician labels, overall and per category.

    Args:
        grader_verdicts: one verdict per graded item (met = True).
        physician_labels: per item, one or more physicians' labels.
        categories: optional per-item category (e.g. "health", "coding").
        zero_division: F1 of a class that never occurs (see the module docstring).

    Returns:
        ``{"mf1", "f1_met", "f1_not_met", "n_items", "n_pairs", "tp", "fp", "fn", "tn",
        "per_category": {category: {same keys except per_category}}}``, where
        tp/fp/fn/tn count pairs with "met" as the positive class (fp: grader said
        met, physician said not met). ``per_category`` is empty without categories.

    Raises:
        ValueError: empty input, mismatched lengths, an item without labels, or a
            verdict/label that is not a boolean.
    """
    n = len(grader_verdicts)
    if n == 0:
        raise ValueError("meta_eval_mf1: no graded items")
    if len(physician_labels) != n:
        raise ValueError(f"meta_eval_mf1: {n} grader verdicts but {len(physician_labels)} label lists")
    if categories is not None and len(categories) != n:
        raise ValueError(f"meta_eval_mf1: {n} grader verdicts but {len(categories)} categories")

    overall = [0, 0, 0, 0]  # tp, fp, fn, tn
    per_cat: dict[str, list[int]] = {}
    items_per_cat: dict[str, int] = {}
    for i in range(n):
        verdict = _as_bool(grader_verdicts[i], f"grader_verdicts[{i}]")
        labels = physician_labels[i]
        if len(labels) == 0:
            raise ValueError(f"meta_eval_mf1: physician_labels[{i}] is empty")
        counts = [0, 0, 0, 0]
        for j, label in enumerate(labels):
            label = _as_bool(label, f"physician_labels[{i}][{j}]")
            counts[(0 if label else 1) if verdict else (2 if label else 3)] += 1
        _add(overall, counts)
        if categories is not None:
            cat = str(categories[i])
            _add(per_cat.setdefault(cat, [0, 0, 0, 0]), counts)
            items_per_cat[cat] = items_per_cat.get(cat, 0) + 1

    result = _mf1_summary(overall, n, zero_division)
    result["per_category"] = {cat: _mf1_summary(per_cat[cat], items_per_cat[cat], zero_division) for cat in sorted(per_cat)}
    return result


def _mf1_summary(counts: list[int], n_items: int, zero_division: float) -> dict[str, Any]:
    tp, fp, fn, tn = counts
    f1_met = f1_from_counts(tp, fp, fn, zero_division)
    # For "not met" the roles swap: its true positives are tn, its false positives are fn.
    f1_not = f1_from_counts(tn, fn, fp, zero_division)
    return {
        "mf1": (f1_met + f1_not) / 2,
        "f1_met": f1_met,
        "f1_not_met": f1_not,
        "n_items": n_items,
        "n_pairs": tp + fp + fn + tn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _add(total: list[int], counts: list[int]) -> None:
    for k in range(4):
        total[k] += counts[k]


def _as_bool(value: Any, name: str) -> bool:
    # Accept bool-like numbers (numpy/torch bools, 0/1) but never None or strings:
    # a missing verdict must be dropped by the caller, not counted as "not met".
    if isinstance(value, bool):
        return value
    if not isinstance(value, (str, bytes)) and value is not None:
        try:
            if value == 0 or value == 1:
                return bool(value)
        except Exception:
            pass
    raise ValueError(f"meta_eval_mf1: {name} = {value!r} is not a boolean")


# --------------------------------------------------------------------------- ranking accuracy


def ranking_accuracy_by_band(
    proxy: Sequence[float],
    reference: Sequence[float],
    bands: Sequence[float] = (0.0, 0.5, 0.9, 1.0),
) -> list[dict[str, Any]]:
    """Pairwise ranking accuracy of a proxy reward inside quantile bands of the reference reward.

    Band ``k`` holds the responses whose reference reward ``r`` satisfies
    ``quantile(bands[k]) <= r < quantile(bands[k+1])`` (the last band includes
    its upper edge). Quantiles interpolate linearly between order statistics
    (numpy's default method). Responses with equal reference rewards at an edge
    therefore all fall on the same side, so a band can hold slightly more or
    fewer responses than its nominal share.

    Within a band, pairs with different reference rewards are compared; a pair
    scores 1 if the proxy orders it like the reference, 0 if reversed, 0.5 if
    the proxy ties. Counting runs in O(n log n) (a Fenwick tree over proxy
    ranks), so it scales to large evaluation sets.

    Returns:
        One dict per band, in order, then one for all responses (``"band": "all"``)::

            {"band": "0.9-1", "q_lo": 0.9, "q_hi": 1.0, "ref_lo": ..., "ref_hi": ...,
             "n_responses": ..., "n_pairs": ..., "concordant": ..., "discordant": ...,
             "proxy_ties": ..., "accuracy": float | None}

        ``accuracy`` is None when the band has no comparable pair.
        With the default bands the last band is the top 10%.

    Raises:
        ValueError: empty or mismatched inputs, non-finite values, or bands that
            are not increasing values in [0, 1] with at least two edges.
    """
    if len(proxy) != len(reference):
        raise ValueError(f"ranking_accuracy_by_band: {len(proxy)} proxy rewards but {len(reference)} reference rewards")
    if len(reference) == 0:
        raise ValueError("ranking_accuracy_by_band: no responses")
    px = [_finite(v, f"proxy[{i}]") for i, v in enumerate(proxy)]
    ref = [_finite(v, f"reference[{i}]") for i, v in enumerate(reference)]
    edges = [float(b) for b in bands]
    if len(edges) < 2 or any(not (0.0 <= b <= 1.0) for b in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"ranking_accuracy_by_band: bands must be >= 2 increasing values in [0, 1], got {tuple(bands)}")

    sorted_ref = sorted(ref)
    rows = []
    for k, (q_lo, q_hi) in enumerate(zip(edges, edges[1:])):
        lo, hi = _quantile(sorted_ref, q_lo), _quantile(sorted_ref, q_hi)
        last = k == len(edges) - 2
        members = [i for i, r in enumerate(ref) if lo <= r and (r < hi or (last and r <= hi))]
        rows.append(_band_row(f"{q_lo:g}-{q_hi:g}", q_lo, q_hi, lo, hi, [ref[i] for i in members], [px[i] for i in members]))
    rows.append(_band_row("all", 0.0, 1.0, sorted_ref[0], sorted_ref[-1], ref, px))
    return rows


def _band_row(name: str, q_lo: float, q_hi: float, lo: float, hi: float, ref: list[float], px: list[float]) -> dict[str, Any]:
    concordant, discordant, ties = _pair_counts(ref, px)
    n_pairs = concordant + discordant + ties
    return {
        "band": name,
        "q_lo": q_lo,
        "q_hi": q_hi,
        "ref_lo": lo,
        "ref_hi": hi,
        "n_responses": len(ref),
        "n_pairs": n_pairs,
        "concordant": concordant,
        "discordant": discordant,
        "proxy_ties": ties,
        "accuracy": (concordant + 0.5 * ties) / n_pairs if n_pairs else None,
    }


def _pair_counts(ref: list[float], px: list[float]) -> tuple[int, int, int]:
    """(concordant, discordant, proxy-tied) counts over pairs with different reference values."""
    ranks = sorted(set(px))
    tree = [0] * (len(ranks) + 1)  # Fenwick tree: how many earlier responses have each proxy rank

    def count_below(r: int) -> int:  # responses inserted so far with proxy rank < r
        total = 0
        while r > 0:
            total += tree[r]
            r -= r & -r
        return total

    def insert(r: int) -> None:
        r += 1
        while r <= len(ranks):
            tree[r] += 1
            r += r & -r

    order = sorted(range(len(ref)), key=lambda i: ref[i])
    concordant = discordant = ties = inserted = 0
    start = 0
    while start < len(order):
        # A run of equal reference values: compare each to all earlier (strictly lower) ones,
        # then insert the run, so pairs inside the run (equal reference) are never counted.
        end = start
        while end < len(order) and ref[order[end]] == ref[order[start]]:
            end += 1
        run = [bisect_left(ranks, px[i]) for i in order[start:end]]
        for r in run:
            below = count_below(r)
            equal = count_below(r + 1) - below
            concordant += below
            ties += equal
            discordant += inserted - below - equal
        for r in run:
            insert(r)
        inserted += len(run)
        start = end
    return concordant, discordant, ties


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of pre-sorted values (numpy's default, 'linear')."""
    pos = q * (len(sorted_values) - 1)
    below = math.floor(pos)
    above = min(below + 1, len(sorted_values) - 1)
    frac = pos - below
    return sorted_values[below] + (sorted_values[above] - sorted_values[below]) * frac


def _finite(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"ranking_accuracy_by_band: {name} = {value!r} is not a number") from None
    if not math.isfinite(out):
        raise ValueError(f"ranking_accuracy_by_band: {name} = {out} is not finite")
    return out
