"""The GNN-IRST study end to end on a tiny preset, and its bookkeeping: every retraining used
exactly the training events its removal rule kept."""

import json

import numpy as np
import pytest

from experiments.gnn_irst import study
from hepattr_jax import evaluation


def test_removal_masks_match_their_random_baselines_in_size():
    rng = np.random.default_rng(0)
    si, loss = rng.random(500), rng.random(500)
    labels = rng.integers(0, 2, 500)
    p = study.PRESETS["full"]
    masks = study.removal_masks(si, loss, labels, p, seed=3)
    for q in p.qs:
        n_keep = 500 - round(q * 500)
        for rule in ("si_top", "si_bottom", "loss_top", "random"):
            assert masks[f"{rule}_{q:g}"].sum() == n_keep
        assert si[~masks[f"si_top_{q:g}"]].min() >= si[masks[f"si_top_{q:g}"]].max()
    for name in ("si_robust_1.5", "si_robust_1.5_perclass"):
        assert masks[f"random_as_{name}"].sum() == masks[name].sum()


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("gnn_irst")
    report = study.run_study("tiny", out)
    return out, report


def test_tiny_study_runs_end_to_end(tiny_study):
    out, report = tiny_study
    rows = json.loads((out / "results.json").read_text())
    text = report.read_text()
    for key in (
        "full",
        "si_top_0.2",
        "si_bottom_0.2",
        "loss_top_0.2",
        "random_0.2",
        "si_robust_1.5",
        "random_as_si_robust_1.5",
    ):
        assert f"qg_jets/seed0/{key}" in rows
        assert f"| {key} |" in text
    det = rows["qg_jets/mislabel_seed0/detection"]
    assert set(det) == {"self_influence", "loss", "random"}
    assert 0.0 <= det["self_influence"]["detector_auroc"] <= 1.0
    assert (out / "removal_curve_qg_jets.png").exists()
    assert (out / "physics_removed_vs_kept_qg_jets.png").exists()


def test_each_retraining_used_exactly_the_kept_ids(tiny_study):
    out, _ = tiny_study
    rows = json.loads((out / "results.json").read_text())
    z = np.load(out / "scores" / "qg_jets_seed0.npz")
    ids, si, loss = z["ids"], z["si"], z["loss"]
    assert np.all(np.isfinite(si)) and np.all(si > 0)
    want = {
        "si_top_0.2": evaluation.remove_top_fraction(si, 0.2),
        "si_bottom_0.2": evaluation.remove_top_fraction(si, 0.2, largest=False),
        "loss_top_0.2": evaluation.remove_top_fraction(loss, 0.2),
    }
    for rule, keep in want.items():
        kept = np.load(out / "runs" / "qg_jets" / "seed0" / rule / "kept_ids.npy")
        np.testing.assert_array_equal(np.sort(kept), np.sort(ids[keep]))
        assert rows[f"qg_jets/seed0/{rule}"]["n_train"] == keep.sum()
    full = np.load(out / "runs" / "qg_jets" / "seed0" / "full" / "kept_ids.npy")
    np.testing.assert_array_equal(np.sort(full), np.sort(ids))


def test_a_finished_study_resumes_without_retraining(tiny_study, monkeypatch):
    out, _ = tiny_study

    def no_training(*a, **k):
        raise AssertionError("a finished row was recomputed")

    monkeypatch.setattr(study, "_train_row", no_training)
    monkeypatch.setattr(study, "_noisy_row", no_training)
    study.run_study("tiny", out)
