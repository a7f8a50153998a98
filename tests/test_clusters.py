"""Known answers of the clustering and embedding helpers (hepattr_jax/explain/clusters.py) and
of the NAP-guided slimming choice (hepattr_jax/explain/slimming.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from hepattr_jax.explain import clusters as cl
from hepattr_jax.explain import slimming as sl


def mixture(n_per=150, k=4, d=5, sep=8.0, seed=0):
    """``k`` unit Gaussians in ``d`` dimensions, centres ``sep`` apart along the axes."""
    rng = np.random.default_rng(seed)
    centres = sep * np.eye(max(k, d))[:k, :d]
    truth = np.repeat(np.arange(k), n_per)
    return centres[truth] + rng.normal(size=(k * n_per, d)), truth


def test_kmeans_recovers_mixture_and_elbow_picks_k():
    x, truth = mixture()
    r = cl.kmeans_elbow(x, range(1, 11), seed=0)
    assert r["k_elbow"] == 4
    ari = adjusted_rand_score(truth, r["labels"])
    assert ari > 0.99, ari  # measured 1.000: the components are 8 sd apart
    assert np.all(np.diff(r["inertia"]) <= 0)


@pytest.mark.parametrize("k", [2, 3, 6])
def test_elbow_other_k(k):
    x, _ = mixture(n_per=100, k=k, d=6, seed=k)
    assert cl.kmeans_elbow(x, range(1, 11), seed=1)["k_elbow"] == k


def test_dbscan_recovers_mixture_with_knee_eps():
    x, truth = mixture(n_per=200, k=3, d=2, sep=10.0, seed=3)
    r = cl.dbscan_clusters(x, min_samples=10)
    assert r["n_clusters"] == 3
    real = r["labels"] >= 0
    assert r["noise_fraction"] < 0.1, r["noise_fraction"]  # measured 0.06: Gaussian tails
    ari = adjusted_rand_score(truth[real], r["labels"][real])
    assert ari > 0.99, ari  # measured 1.000 on the non-noise points


@pytest.mark.slow  # UMAP compiles with numba on first use: 2+ min on the loaded 2-core CPU
def test_embeddings_separate_mixture():
    x, truth = mixture(n_per=60, k=3, d=8, sep=10.0, seed=5)
    for emb in (
        cl.pca_embedding(x)[0],
        cl.umap_embedding(x, seed=0),
        cl.tsne_embedding(x, seed=0),
    ):
        assert emb.shape == (len(x), 2)
        lab = cl.kmeans_elbow(emb, [3], seed=0)["labels"]
        assert adjusted_rand_score(truth, lab) > 0.95


def test_cluster_summary_hand_count():
    labels = np.array([0, 0, 1, 1, 1, -1])
    classes = np.array([1, 0, 1, 1, 0, 0])
    mass = np.array([1.0, 3.0, 2.0, 4.0, 6.0, 10.0])
    si = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    disc = np.array([False, True, False, True, True, False])
    rows = cl.cluster_summary(labels, classes, {"mass": mass}, si, {"disc": disc})
    assert [r["cluster"] for r in rows] == [-1, 0, 1]
    noise, c0, c1 = rows
    assert (noise["n"], c0["n"], c1["n"]) == (1, 2, 3)
    assert (noise["class1_fraction"], c0["class1_fraction"]) == (0.0, 0.5)
    assert c1["class1_fraction"] == pytest.approx(2 / 3, abs=1e-15)
    assert (c0["mean_mass"], c1["mean_mass"]) == (2.0, 4.0)
    assert (c0["si_median"], c1["si_median"], c1["si_mean"]) == (1.5, 4.0, 4.0)
    assert (noise["disc_n"], c0["disc_n"], c1["disc_n"]) == (0, 1, 2)
    assert c1["disc_share"] == pytest.approx(2 / 3, abs=1e-15)
    assert c1["disc_of_all"] == pytest.approx(2 / 3, abs=1e-15)
    assert c0["disc_enrichment"] == pytest.approx(0.5 / 0.5, abs=1e-15)
    conc = cl.flag_concentration(labels, disc)
    assert conc["in_majority_clusters"] == pytest.approx(2 / 3, abs=1e-15)
    assert conc["max_share"] == pytest.approx(2 / 3, abs=1e-15)


def test_neighbour_enrichment_clustered_vs_scattered():
    x, truth = mixture(n_per=100, k=4, d=3, seed=2)
    own = truth == 1  # a flag that is one component: all neighbours flagged
    assert cl.neighbour_enrichment(x, own, k=10) == pytest.approx(4.0, rel=0.02)
    rnd = np.random.default_rng(0).random(len(x)) < 0.25
    assert 0.6 < cl.neighbour_enrichment(x, rnd, k=10) < 1.4


def test_knee_closed_form():
    # y = 1/x on 1..10: the kneedle point of the scaled curve is the one nearest x = sqrt(10)
    x = np.arange(1, 11)
    assert x[cl.knee(x, 1.0 / x)] == 3
    assert cl.knee([1, 2], [2.0, 1.0]) == 0


# --------------------------------------------------------------------- slimming
def patterns_from(rna0, rna1):
    rna0, rna1 = np.asarray(rna0, float), np.asarray(rna1, float)
    return {"rna_0": rna0, "rna_1": rna1, "diff": np.abs(rna1 - rna0)}


def test_retained_score_hand_case():
    full = {"hidden": 4, "n_blocks": 2, "readout_hidden": 2}
    pats = {
        "encoder": patterns_from([1.0, 0.5, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0]),  # w = 0.25
        "edge0_0": patterns_from([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]),  # w = 0
        "edge1_0": patterns_from([1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]),  # w = 0.25
        "readout_in": patterns_from([1.0] * 8, [0.0] * 8),  # folded to 4 channels, w = 1
        "readout_0": patterns_from([1.0, 0.0], [0.0, 0.0]),  # w = 0.5
    }
    assert sl.retained_score(pats, "edgeconv", full, full) == pytest.approx(1.0, abs=1e-15)
    # hidden 2: encoder keeps (1 + .5) / 2, edge1_0 keeps 1, readout_in keeps 2/4; depth 1 drops
    # edge1_0; readout_hidden 1 keeps all of readout_0
    cand = {"hidden": 2, "n_blocks": 1, "readout_hidden": 1}
    want = (0.25 * 0.75 + 0.25 * 0 + 1.0 * 0.5 + 0.5 * 1.0) / 2.0
    assert sl.retained_score(pats, "edgeconv", full, cand) == pytest.approx(want, abs=1e-15)
    t = sl.layer_table(pats, "edgeconv", full)
    assert t["readout_in"]["width"] == 4 and t["encoder"]["n_active"] == 3
    assert t["encoder"]["sparsity"] == 0.25


def test_choices_respect_budget_and_param_count():
    full = sl.full_kwargs("edgeconv", {"hidden": 16, "n_blocks": 2, "readout_hidden": 16})
    count = lambda k: sl.param_count("edgeconv", k, 3, 2, True)  # noqa: E731
    # closed form: encoder 3h + h; block 2h*h + h + h*h + h; readout (2h + 2) r + r + r + 1
    h, r = 16, 16
    assert count(full) == (4 * h) + 2 * (3 * h * h + 2 * h) + (2 * h + 2) * r + r + r + 1
    grid = [(k, count(k)) for k in sl.candidates("edgeconv", full, step=8)]
    rng = np.random.default_rng(0)
    pats = {
        "encoder": patterns_from(rng.random(16), rng.random(16)),
        "edge0_0": patterns_from(rng.random(16), rng.random(16)),
        "edge1_0": patterns_from(rng.random(16), rng.random(16)),
        "readout_0": patterns_from(rng.random(16), rng.random(16)),
    }
    budget = count(full) // 2
    nap, ranked = sl.nap_choice(pats, "edgeconv", full, grid, budget)
    assert count(nap) <= budget and ranked[0]["retained"] == pytest.approx(1.0)
    uni = sl.uniform_choice(full, count, count(nap))
    assert uni["n_blocks"] == 2 and count(uni) <= count(nap)
    rnd = sl.random_choice(grid, count(nap), rng, tol=0.5, exclude=[nap])
    assert rnd != nap and abs(count(rnd) - count(nap)) <= 0.5 * count(nap)
