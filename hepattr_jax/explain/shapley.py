"""Shapley values of feature groups, per event, with masking by a baseline (the mean).

The players are the ``G`` feature groups; the value of a coalition ``S`` for event ``i`` is the
model's logit with every group outside ``S`` set to its baseline value,
``v_i(S) = f(x_i^S)`` (interventional masking by the mean; Lundberg & Lee 2017). The Shapley value
of group ``g`` is

    phi_g(i) = sum_{S not containing g} |S|! (G - |S| - 1)! / G! * (v_i(S + g) - v_i(S)),

and the values satisfy efficiency: ``sum_g phi_g(i) = v_i(all) - v_i(empty) = f(x_i) -
f(baseline_i)``, where ``baseline_i`` keeps event ``i``'s structure (its objects and edges) with
every feature at the baseline.

* ``exact``: all ``2^G`` coalitions, each one prediction over all events at once.
* ``permutation``: ``n_permutations`` random orderings of the groups (Castro, Gomez & Tejada
  2009), drawn in antithetic pairs (an ordering and its reverse) to reduce variance; along each
  ordering the groups are added one by one and each marginal ``v(S + g) - v(S)`` is credited to
  ``g``. The sum over one ordering telescopes to ``v(all) - v(empty)``, so efficiency holds
  exactly for every estimate. Every coalition is evaluated once (cached), at most ``2^G``.
The same orderings serve all events, and every evaluation covers all events: the cost is the
number of distinct coalitions, independent of the number of events.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from hepattr_jax.data.events import EventSet
from hepattr_jax.explain.features import Baseline, Groups, feature_means, mask_coalition
from hepattr_jax.explain.predict import Predictor


def _value_fn(predict: Predictor, events: EventSet, groups: Groups, baseline: Baseline):
    cache: dict[int, np.ndarray] = {}
    g = len(groups)

    def value(mask: int) -> np.ndarray:
        if mask not in cache:
            present = [(mask >> j) & 1 == 1 for j in range(g)]
            cache[mask] = predict(mask_coalition(events, groups, present, baseline))
        return cache[mask]

    return value, cache


def shapley_values(
    predict: Predictor,
    events: EventSet,
    groups: Groups,
    *,
    baseline: Baseline | None = None,
    method: str = "auto",
    max_exact: int = 8,
    n_permutations: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Per-event Shapley values of the groups for the logit.

    ``method``: ``"exact"``, ``"permutation"`` or ``"auto"`` (exact when ``G <= max_exact``).
    Returns ``{"values": float64 [N, G], "groups": names, "f_x": [N], "f_baseline": [N],
    "method", "n_evaluations", "n_permutations"}``.
    """
    baseline = feature_means(events) if baseline is None else baseline
    names = list(groups)
    g = len(names)
    if g == 0:
        raise ValueError("no feature groups")
    if method == "auto":
        method = "exact" if g <= max_exact else "permutation"
    value, cache = _value_fn(predict, events, groups, baseline)
    full = (1 << g) - 1
    n = len(events)
    phi = np.zeros((n, g))
    if method == "exact":
        fact = [math.factorial(k) for k in range(g + 1)]
        for mask in tqdm(range(1 << g), desc="Shapley (exact)", disable=not progress):
            v = value(mask)
            size = bin(mask).count("1")
            for j in range(g):
                if (mask >> j) & 1:  # mask = S + j: credit +w(|S|) to j
                    w = fact[size - 1] * fact[g - size] / fact[g]
                    phi[:, j] += w * v
                else:  # mask = S without j: credit -w(|S|) to j
                    w = fact[size] * fact[g - size - 1] / fact[g]
                    phi[:, j] -= w * v
        n_perm = None
    elif method == "permutation":
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
        rng = np.random.default_rng(seed)
        orders: list[np.ndarray] = []
        while len(orders) < n_permutations:
            o = rng.permutation(g)
            orders.append(o)
            if len(orders) < n_permutations:
                orders.append(o[::-1])
        for order in tqdm(orders, desc="Shapley (permutations)", disable=not progress):
            mask = 0
            prev = value(mask)
            for j in order:
                mask |= 1 << int(j)
                cur = value(mask)
                phi[:, j] += cur - prev
                prev = cur
        phi /= len(orders)
        n_perm = len(orders)
    else:
        raise ValueError(f"unknown Shapley method {method!r}: use exact, permutation or auto")
    return {
        "values": phi,
        "groups": names,
        "f_x": value(full),
        "f_baseline": value(0),
        "method": method,
        "n_evaluations": len(cache),
        "n_permutations": n_perm,
    }


def aggregate_shapley(values: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Per group: mean |phi| over all events, and mean phi and mean |phi| per class."""
    values = np.asarray(values, np.float64)
    labels = np.asarray(labels)
    out = {}
    for j, name in enumerate(names):
        v = values[:, j]
        rec = {"mean_abs": float(np.abs(v).mean()), "mean": float(v.mean())}
        for c in (0, 1):
            sel = labels == c
            rec[f"mean_{c}"] = float(v[sel].mean()) if sel.any() else float("nan")
            rec[f"mean_abs_{c}"] = float(np.abs(v[sel]).mean()) if sel.any() else float("nan")
        out[name] = rec
    return out
