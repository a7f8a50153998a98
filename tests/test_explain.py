"""Explanations (``hepattr_jax.explain``): every estimator on a case with a known answer, the
batched GNN predictor against ``train.evaluate_events``, and ``hepattr explain`` end to end.

Known answers:
  * Shapley values of a linear model with mean masking: ``phi_f(i) = a_f (m_if - mu_f)``
    (``m_if`` the event's mean of feature f); of a product ``m_1 g_0``:
    ``phi_1 = (m_1 - mu_1)(g_0 + mu_g) / 2`` and symmetrically (exact, and by antithetic
    permutation sampling, which is exact for a two-player interaction). Efficiency
    ``sum phi = f(x) - f(baseline)`` for both methods on a nonlinear model.
  * Permutation and masking importance of a feature the model ignores: exactly 0; masking the
    only feature the model reads makes the output constant: AUROC drops to exactly 0.5.
  * Coverage of ``Y = X^2`` near 1, of an independent ``Y`` near 0; the KDE goodness of fit
    passes at Silverman's bandwidth and fails when grossly oversmoothed.
  * Relative neural activation and sparsity on a hand-computed layer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hepattr_jax.data.synthetic import random_events
from hepattr_jax.explain import (
    BatchedPredictor,
    coverage_per_dimension,
    feature_means,
    information_coverage,
    kde_goodness_of_fit,
    make_groups,
    masking_importance,
    permutation_importance,
    relative_neural_activation,
    shapley_values,
)
from hepattr_jax.explain.activations import correlations, pca
from hepattr_jax.explain.coverage import discretize, silverman, uniform_scores
from hepattr_jax.explain.features import mask_features, permute_features
from hepattr_jax.metrics import auroc
from tests.helpers import numpy_params

TOL = 1e-9  # float64 model outputs on float32 inputs: only summation order differs


@pytest.fixture(scope="module")
def events():
    return random_events(300, n_node_range=(1, 6), n_features=3, n_globals=2, seed=5)


def event_mean(ev, f):
    """``[N]`` mean of node feature ``f`` over each event's objects (float64)."""
    x = ev.nodes[:, f].astype(np.float64)
    return np.add.reduceat(x, ev.offsets[:-1]) / ev.n_node


def linear_model(a, b, c=0.2):
    def predict(ev):
        out = np.full(len(ev), c)
        for f, af in enumerate(a):
            out += af * event_mean(ev, f)
        return out + ev.globals.astype(np.float64) @ np.asarray(b, np.float64)

    return predict


# --------------------------------------------------------------------- features
def test_mask_and_permute_keep_structure_and_marginals(events):
    base = feature_means(events)
    groups = make_groups(events)
    assert list(groups) == ["x0", "x1", "x2", "g0", "g1"]
    m = mask_features(events, groups["x1"] + groups["g0"], base)
    assert np.all(m.nodes[:, 1] == base.node[1]) and np.all(m.globals[:, 0] == base.globals[0])
    np.testing.assert_array_equal(m.nodes[:, [0, 2]], events.nodes[:, [0, 2]])
    assert m.offsets is events.offsets
    p = permute_features(events, groups["x0"] + groups["x2"], np.random.default_rng(0))

    # one permutation for the whole group: rows of (x0, x2) pairs are preserved as a multiset
    def pairs(e):
        return np.unique(e.nodes[:, [0, 2]], axis=0)

    np.testing.assert_array_equal(pairs(p), pairs(events))
    np.testing.assert_array_equal(p.nodes[:, 1], events.nodes[:, 1])
    assert not np.array_equal(p.nodes[:, 0], events.nodes[:, 0])


# --------------------------------------------------------------------- Shapley
def test_shapley_linear_model_closed_form(events):
    a, b = [1.5, -2.0, 0.5], [0.7, -0.3]
    groups = make_groups(events)
    base = feature_means(events)
    want = np.stack(
        [a[f] * (event_mean(events, f) - base.node[f]) for f in range(3)]
        + [b[k] * (events.globals[:, k] - base.globals[k]) for k in range(2)],
        axis=1,
    )
    for method in ("exact", "permutation"):
        r = shapley_values(linear_model(a, b), events, groups, method=method, n_permutations=3)
        np.testing.assert_allclose(r["values"], want, rtol=0, atol=1e-6, err_msg=method)
    assert r["n_evaluations"] <= 2 ** len(groups)


def test_shapley_interaction_closed_form_exact_and_antithetic(events):
    def f(ev):
        return event_mean(ev, 1) * ev.globals[:, 0].astype(np.float64)

    groups = make_groups(events)
    base = feature_means(events)
    m1, g0 = event_mean(events, 1), events.globals[:, 0].astype(np.float64)
    mu1 = float(base.node[1])
    mug = float(base.globals[0])
    phi1 = 0.5 * (m1 - mu1) * (g0 + mug)
    phig = 0.5 * (g0 - mug) * (m1 + mu1)
    for method, kw in (("exact", {}), ("permutation", {"n_permutations": 2})):
        r = shapley_values(f, events, groups, method=method, **kw)
        v = r["values"]
        np.testing.assert_allclose(v[:, 1], phi1, atol=1e-6, err_msg=method)
        np.testing.assert_allclose(v[:, 3], phig, atol=1e-6, err_msg=method)
        np.testing.assert_allclose(v[:, [0, 2, 4]], 0.0, atol=1e-12, err_msg=method)


def test_shapley_efficiency_nonlinear(events):
    def f(ev):
        m = np.stack([event_mean(ev, j) for j in range(3)], 1)
        g = ev.globals.astype(np.float64)
        return np.tanh(m[:, 0] * g[:, 1]) + m[:, 1] ** 2 * m[:, 2] - np.exp(0.3 * g[:, 0])

    groups = make_groups(events, {"a": ["x0", "g1"], "b": ["x1"], "c": ["x2", "g0"]})
    ex = shapley_values(f, events, groups, method="exact")
    pm = shapley_values(f, events, groups, method="permutation", n_permutations=3)
    for r in (ex, pm):
        gap = r["values"].sum(1) - (r["f_x"] - r["f_baseline"])
        assert np.max(np.abs(gap)) < TOL, r["method"]
    np.testing.assert_allclose(ex["f_x"], f(events), atol=0)
    # permutation sampling with all 3! = 6 orderings would be exact; 3 antithetic-ish draws are
    # an estimate, but one that differs from the exact values (the test could fail)
    assert ex["n_evaluations"] == 8


# --------------------------------------------------------------------- importance
def test_permutation_importance_ignored_features_are_exactly_zero(events):
    pred = linear_model([3.0, 0.0, 0.0], [0.0, 0.0])
    r = permutation_importance(pred, events, make_groups(events), repeats=3, seed=1)
    for name in ("x1", "x2", "g0", "g1"):
        g = r["groups"][name]
        assert g["delta_loss"] == 0.0 and g["delta_auroc"] == 0.0, name
    assert r["groups"]["x0"]["delta_auroc"] > 0.2
    assert r["groups"]["x0"]["delta_loss"] > 0.1
    assert r["groups"]["x0"]["delta_auroc_std"] > 0  # three different shuffles
    assert len(r["groups"]["x0"]["delta_loss_all"]) == 3


def test_masking_importance_known_answers(events):
    pred = linear_model([3.0, 0.0, 0.0], [0.0, 0.0], c=0.0)
    r = masking_importance(pred, events, make_groups(events), repeats=4)
    auc0 = auroc(events.labels, pred(events))
    # masking the only feature read makes every output equal: AUROC exactly 0.5
    assert r["groups"]["x0"]["delta_auc"] == pytest.approx(auc0 - 0.5, abs=1e-12)
    # output after masking: sigmoid(3 mu_0) for everybody; relative change of own-class prob
    z = pred(events)
    zm = np.full(len(z), 3.0 * float(feature_means(events).node[0]))
    p, pm = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-zm))
    y = events.labels
    s, sm = np.where(y == 1, p, 1 - p), np.where(y == 1, pm, 1 - pm)
    for c in (0, 1):
        want = np.mean(np.abs(sm - s)[y == c] / s[y == c])
        assert r["groups"]["x0"][f"rel_change_{c}"] == pytest.approx(want, rel=1e-9)
    for name in ("x1", "g1"):
        g = r["groups"][name]
        assert g["delta_auc"] == 0.0 and g["rel_change_0"] == 0.0 and g["rel_change_1"] == 0.0


# --------------------------------------------------------------------- coverage
def test_coverage_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=1000)
    sq = information_coverage(x, x**2)
    ind = information_coverage(x, rng.normal(size=1000))
    assert sq["coverage"] > 0.9, sq
    assert abs(ind["coverage"]) < 0.03, ind
    assert sq["H_Y"] == pytest.approx(np.log(10), rel=1e-3)  # 10 equal-population bins
    # columns one by one in one jitted call == single calls; a constant column covers nothing
    cols = np.stack([x, rng.normal(size=1000), np.zeros(1000)], 1)
    per = coverage_per_dimension(cols, x**2)
    assert per[0] == pytest.approx(sq["coverage"], abs=1e-5)
    assert abs(per[1]) < 0.03 and per[2] == 0.0


def test_discretize_and_uniform_scores():
    assert discretize(np.array([3.0, 1, 1, 2, 3]), 10).tolist() == [2, 0, 0, 1, 2]
    c = discretize(np.arange(100.0), 4)
    assert np.bincount(c).tolist() == [25, 25, 25, 25]
    u = uniform_scores(np.array([0.0, 0.0, 5.0, 10.0]))[:, 0]
    assert u[0] == u[1] < u[2] < u[3] and u.mean() == pytest.approx(0.0)


def test_kde_goodness_of_fit_passes_at_silverman_fails_oversmoothed():
    x = np.random.default_rng(1).normal(size=(2000, 2))
    h = silverman(1000, 2)
    assert kde_goodness_of_fit(x, h, seed=0)["passed"]
    bad = kde_goodness_of_fit(x, 3.0, seed=0)
    assert not bad["passed"] and bad["ks"] > 2 * bad["critical_95"]


# --------------------------------------------------------------------- activations
def test_relative_neural_activation_hand_case():
    acts = np.array([[1.0, 0.0, 0.1], [3.0, 2.0, 0.0], [0.0, 4.0, 0.1], [2.0, 2.0, 0.0]])
    r = relative_neural_activation(acts, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(r["rna_0"], [1.0, 0.5, 0.025])
    np.testing.assert_allclose(r["rna_1"], [1 / 3, 1.0, 0.1 / 6])
    np.testing.assert_allclose(r["diff"], [2 / 3, 0.5, abs(0.1 / 6 - 0.025)])
    assert r["order"].tolist() == [1, 0, 2]
    assert r["sparsity_0"] == pytest.approx(1 / 3) and r["sparsity_1"] == pytest.approx(1 / 3)


def test_pca_and_correlations():
    rng = np.random.default_rng(2)
    t = rng.normal(size=500)
    x = np.stack([t, 2 * t + 1, np.zeros(500)], 1)
    p = pca(x, 2)
    assert p["explained"][0] == pytest.approx(1.0)
    c = correlations(x, {"t": t, "const": np.ones(500)})
    np.testing.assert_allclose(c["t"], [1.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(c["const"], 0.0)


# --------------------------------------------------------------------- the GNN predictor
@pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
@pytest.mark.parametrize("model_name", ["edgeconv", "particlenet"])
def test_batched_predictor_matches_evaluate_events(model_name):
    from hepattr_jax.graphs import build_graphs
    from hepattr_jax.models import make_model
    from hepattr_jax.train import evaluate_events

    ev = random_events(70, n_node_range=(1, 5), n_features=3, n_globals=2, seed=4)
    gs = build_graphs(ev)  # includes single-node events (no edges)
    kwargs = {
        "edgeconv": {"hidden": 8, "readout_hidden": 8},
        # dynamic kNN (k = 3) in its second block: rows per neighbour slot, masked in small events
        "particlenet": {"blocks": ((4, 4), (8, 8)), "k": 3, "head": 8},
    }[model_name]
    model = make_model(model_name, use_globals=True, **kwargs)
    # Any parameters do (the check is predictor == evaluate_events): nonzero biases
    example = gs.training_batch(np.arange(4), gs.batch_budget(4)).graphs
    params = numpy_params(model, example, bias_scale=0.3, dtype=np.float32)
    want, _ = evaluate_events(model.apply, params, gs, batch_size=16)
    pr = BatchedPredictor(model, params, gs, batch_size=16)  # 5 batches, last one partial
    np.testing.assert_allclose(pr(), want, rtol=1e-5, atol=1e-6)
    masked = mask_features(ev, make_groups(ev)["x0"], feature_means(ev))
    pr(masked)
    assert pr._logits._cache_size() == 1  # new feature values, no recompilation
    acts = pr.activations()
    assert acts["readout_in"].shape[1] == (16 if model_name == "edgeconv" else 8)  # no globals
    assert all(v.shape[0] == len(ev) for v in acts.values())
    # an event's activations do not depend on which events share its batch
    sub = np.array([0, 5, 33, 69])
    alone = BatchedPredictor(model, params, gs.select(sub), batch_size=3).activations()
    for k, v in acts.items():
        np.testing.assert_allclose(alone[k], v[sub], rtol=1e-5, atol=1e-6, err_msg=k)


# --------------------------------------------------------------------- CLI end to end
RUN_TOML = """
dataset = "random"
edges = "fully_connected"
epochs = 2
batch_size = 32
lr = 3e-3
seed = 0
use_globals = true
[dataset_kwargs]
n_events = 300
n_node_range = [2, 5]
n_features = 4
n_globals = 2
seed = 0
[model_kwargs]
hidden = 8
n_blocks = 1
readout_hidden = 8
"""


@pytest.mark.slow  # end-to-end or subprocess: make test runs it, make test-fast not
def test_hepattr_explain_end_to_end(tmp_path, capsys):
    from hepattr_jax import cli

    (tmp_path / "run.toml").write_text(RUN_TOML)
    run_dir = tmp_path / "run"
    assert (
        cli.main(["train", str(tmp_path / "run.toml"), "--run-dir", str(run_dir), "--quiet"]) == 0
    )
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"nodes": ["x0", "x1"], "rest": ["x2", "x3"], "g": ["g0", "g1"]}))
    out = tmp_path / "explain"
    argv = [
        "explain",
        str(run_dir),
        "--out",
        str(out),
        "--n-events",
        "40",
        "--repeats",
        "2",
        "--groups",
        str(groups),
        "--n-coverage",
        "40",
        "--timing-events",
        "50",
        "--batch-size",
        "64",
        "--quiet",
    ]
    assert cli.main(argv) == 0
    assert str(out / "report.md") in capsys.readouterr().out
    r = json.loads((out / "explain.json").read_text())
    assert r["shapley"]["method"] == "exact" and r["shapley"]["n_evaluations"] == 8
    assert r["shapley"]["efficiency_max_abs_gap"] < 1e-5
    assert set(r["permutation_importance"]["groups"]) == {"x0", "x1", "x2", "x3", "g0", "g1"}
    assert r["influence_split"]["n_discarded_total"] == round(0.1 * r["influence_split"]["n_train"])
    assert r["timing_fixed_events"]["n_events"] == 50
    assert r["settings"]["batch_size"] == 64
    assert r["command"] == f"hepattr explain {run_dir} " + " ".join(argv[2:-1])
    for fig in r["figures"].values():
        assert (out / fig).stat().st_size > 1000
    text = (out / "report.md").read_text()
    for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 10.", "## Timing"):
        assert section in text
    # sections 7-9 (LRP, correlations, constituents): no pT fraction or angles in these events
    later = r["later_sections"]
    for rule in ("epsilon", "gamma"):
        assert later["lrp"][rule]["conservation_max_rel_gap"] < 1e-4
    assert set(later["correlated"]["features"]) == {"x0", "x1", "x2", "x3", "g0", "g1"}
    assert later["constituents"]["constituent_quantities"] == []
    assert "no pT-fraction node feature" in text
    for section in ("## 7.", "## 8.", "## 9."):
        assert section in text
    # section 10, clusters: 40 training events are too few for UMAP (skipped with a sentence)
    c = r["clusters"]
    assert c["n_events"] == 40 and set(c["spaces"]) == {"latent", "gradient"}
    assert any("UMAP and DBSCAN skipped" in m for m in c["skipped"]), c["skipped"]
    assert sum(row["n"] for row in c["spaces"]["gradient"]["kmeans"]["clusters"]) == 40
    for fig in c["figures"].values():
        assert (out / fig).stat().st_size > 1000
    # bad input is named
    assert cli.main(["explain", str(run_dir), "--q", "1.5"]) == 2
    assert "--q" in capsys.readouterr().err
    assert cli.main(["explain", str(run_dir), "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    # a quantity left out of one subset (constant there on small data) is n/a, not a KeyError
    from hepattr_jax.explain.report import align_quantities, render_report

    split = {k: r["influence_split"][k] for k in ("kept", "discarded")}
    for key in ("coverage", "max_abs_corr_pc", "physics_mean"):
        del split["discarded"][key]["n_node"]
    align_quantities(split)
    assert split["discarded"]["physics_mean"] == {"n_node": None}
    r["influence_split"].update(split)
    text = render_report(r)
    mean = split["kept"]["physics_mean"]["n_node"]
    assert f"| mean n_node | {mean:.3f} | n/a |" in text


@pytest.mark.slow  # end-to-end or subprocess: make test runs it, make test-fast not
def test_explain_a_parquet_run_without_physics_columns(tmp_path, monkeypatch, capsys):
    """Physics columns are optional in Parquet files: every section copes without them. The
    config names its data by a path relative to the config file (resolved, recorded absolute)."""
    import dataclasses

    from hepattr_jax import cli
    from hepattr_jax.data.parquet import save_parquet

    ev = random_events(240, n_node_range=(2, 5), n_features=3, seed=4)
    save_parquet(dataclasses.replace(ev, physics={}), tmp_path / "data" / "ev.parquet")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.toml").write_text(
        'dataset = "parquet"\nepochs = 1\nbatch_size = 32\nlr = 3e-3\nwarmup_epochs = 0\n'
        '[dataset_kwargs]\npath = "../data/ev.parquet"\n'
        "[model_kwargs]\nhidden = 8\nn_blocks = 1\nreadout_hidden = 8\n"
    )
    monkeypatch.chdir(tmp_path / "data")  # not the config's directory
    run_dir = tmp_path / "run"
    argv = ["train", str(tmp_path / "cfg" / "run.toml"), "--run-dir", str(run_dir), "--quiet"]
    assert cli.main(argv) == 0
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["dataset_kwargs"]["path"] == str(tmp_path / "data" / "ev.parquet")
    out = tmp_path / "explain"
    argv = ["explain", str(run_dir), "--out", str(out), "--n-events", "30", "--repeats", "1"]
    assert cli.main([*argv, "--n-coverage", "30", "--quiet"]) == 0, capsys.readouterr().err
    r = json.loads((out / "explain.json").read_text())
    assert r["coverage"]["per_neuron_max"] == {} and r["latent"]["pc_correlation"] == {}
    assert len(r["coverage"]["goodness_of_fit"]) > 0  # the density check needs no quantity
    assert r["influence_split"]["kept"]["coverage"] == {}
    text = (out / "report.md").read_text()
    assert "No physics quantities to cover" in text
    for fig in r["figures"].values():
        assert f"({fig})" in text and (out / fig).stat().st_size > 1000
    assert "coverage_layers" not in r["figures"] and "latent_pca.png" in text
