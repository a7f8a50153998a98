"""Correlation-aware importance (``hepattr_jax.explain.correlated``): known answers.

* ``x1`` a noisy copy of ``x0`` (corr ~0.99) and a model reading ``x0 + x1``: plain permutation
  of ``x1`` destroys its information (and builds off-distribution pairs), conditional
  permutation within bins of ``x0`` keeps almost all of it: conditional / plain < 0.1
  (measured 0.003 here: plain 0.253, conditional 0.0007).
* Two identical features form one correlated group, and its grouped permutation equals
  permuting the two together (same seeds: identical numbers).
* Conditional permutation keeps every bin's multiset of values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hepattr_jax.data.synthetic import random_events
from hepattr_jax.explain import make_groups, permutation_importance
from hepattr_jax.explain.correlated import (
    conditional_permutation_importance,
    correlated_groups,
    correlation_matrix,
    grouped_permutation_importance,
    permutation_within,
)


def event_mean(ev, f):
    x = ev.nodes[:, f].astype(np.float64)
    return np.add.reduceat(x, ev.offsets[:-1]) / ev.n_node


@pytest.fixture(scope="module")
def noisy_copy():
    ev = random_events(400, n_node_range=(1, 6), n_features=3, n_globals=1, seed=2)
    rng = np.random.default_rng(0)
    nodes = ev.nodes.copy()
    nodes[:, 1] = nodes[:, 0] + 0.1 * rng.normal(size=len(nodes))
    ev = dataclasses.replace(ev, nodes=nodes.astype(np.float32))
    f = 2.0 * (event_mean(ev, 0) + event_mean(ev, 1))
    labels = (f + 0.5 * rng.normal(size=len(ev)) > 0).astype(np.int32)
    return dataclasses.replace(ev, labels=labels)


def model(ev):
    return 2.0 * (event_mean(ev, 0) + event_mean(ev, 1))


def test_conditional_permutation_of_noisy_copy_is_much_smaller(noisy_copy):
    ev = noisy_copy
    groups = make_groups(ev)
    plain = permutation_importance(model, ev, groups, repeats=3, seed=0)
    cond = conditional_permutation_importance(model, ev, groups, n_bins=20, repeats=3, seed=0)
    assert cond["partner"]["x1"] == "x0" and cond["partner_corr"]["x1"] > 0.98
    p, c = plain["groups"]["x1"]["delta_loss"], cond["groups"]["x1"]["delta_loss"]
    ratio = c / p
    print(f"plain {p:.4f} conditional {c:.4f} ratio {ratio:.4f}")
    assert p > 0.2 and 0 <= ratio < 0.1
    # features the model ignores stay exactly unimportant
    assert cond["groups"]["x2"]["delta_loss"] == 0.0 and cond["groups"]["g0"]["delta_loss"] == 0


def test_grouped_permutation_of_identical_features_is_joint_permutation(noisy_copy):
    nodes = noisy_copy.nodes.copy()
    nodes[:, 1] = nodes[:, 0]
    ev = dataclasses.replace(noisy_copy, nodes=nodes)
    groups = make_groups(ev)
    corr = correlation_matrix(ev, [g[0] for g in groups.values()])
    assert corr[0, 1] == pytest.approx(1.0)
    assert correlated_groups(list(groups), corr, 0.9) == [[0, 1], [2], [3]]
    got = grouped_permutation_importance(model, ev, groups, threshold=0.9, repeats=2, seed=3)
    want = permutation_importance(
        model,
        ev,
        {"x0+x1": groups["x0"] + groups["x1"], "x2": groups["x2"], "g0": groups["g0"]},
        repeats=2,
        seed=3,
    )
    assert got["members"]["x0+x1"] == ["x0", "x1"]
    for k in want["groups"]:
        assert got["groups"][k]["delta_loss_all"] == want["groups"][k]["delta_loss_all"]
    assert got["groups"]["x0+x1"]["delta_loss"] > 0.2


def test_permutation_within_keeps_bins():
    rng = np.random.default_rng(0)
    bins = rng.integers(0, 4, 200)
    p = permutation_within(bins, rng)
    np.testing.assert_array_equal(bins[p], bins)
    np.testing.assert_array_equal(np.sort(p), np.arange(200))
    assert (p != np.arange(200)).mean() > 0.5
