"""metrics.py against scikit-learn (the independent reference) and hand-computed cases."""

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from hepattr_jax.metrics import auroc, binary_metrics, roc_curve

TOL = 1e-12  # absolute, on quantities in [0, 1]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _cases():
    """(name, labels, scores): continuous scores, heavy ties, imbalance, tiny sizes."""
    rng = np.random.default_rng(1234)
    out = []
    for n, frac in [(2, 0.5), (7, 0.3), (200, 0.5), (1000, 0.05), (5000, 0.8)]:
        y = (rng.random(n) < frac).astype(np.int64)
        y[0], y[-1] = 1, 0  # both classes present
        informative = rng.normal(size=n) + 0.8 * y
        out.append((f"continuous-{n}", y, informative))
        out.append((f"int-ties-{n}", y, np.round(informative).astype(np.int64)))  # few values
        out.append((f"two-values-{n}", y.astype(bool), rng.integers(0, 2, size=n)))
    return out


CASES = _cases()
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize(("name", "y", "s"), CASES, ids=IDS)
def test_auroc_matches_sklearn(name, y, s):
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=TOL, rel=0)


@pytest.mark.parametrize(("name", "y", "s"), CASES, ids=IDS)
def test_roc_curve_matches_sklearn(name, y, s):
    fpr, tpr, thr = roc_curve(y, s)
    fpr_ref, tpr_ref, thr_ref = skm.roc_curve(y, s, drop_intermediate=False)
    assert fpr.shape == fpr_ref.shape
    np.testing.assert_allclose(fpr, fpr_ref, rtol=0, atol=TOL)
    np.testing.assert_allclose(tpr, tpr_ref, rtol=0, atol=TOL)
    np.testing.assert_array_equal(thr, thr_ref.astype(np.float64))
    # The trapezoid area under our curve is the Mann-Whitney AUROC (ties give diagonal steps).
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(y, s), abs=TOL, rel=0)


@pytest.mark.parametrize(("name", "y", "s"), CASES, ids=IDS)
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_logits_match_sklearn(name, y, s, threshold):
    logits = np.asarray(s, dtype=np.float64)
    pred = (_sigmoid(logits) >= threshold).astype(int)  # reference: threshold on probabilities
    got = binary_metrics(y, logits, threshold)
    ref = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, zero_division=0),
        "recall": skm.recall_score(y, pred, zero_division=0),
        "f1": skm.f1_score(y, pred, zero_division=0),
        "auroc": skm.roc_auc_score(y, logits),
    }
    assert set(got) == set(ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=TOL, rel=0), k


@pytest.mark.parametrize(("name", "y", "s"), CASES[:6], ids=IDS[:6])
def test_binary_metrics_probabilities_match_sklearn(name, y, s):
    p = _sigmoid(np.asarray(s, dtype=np.float64))
    pred = (p >= 0.4).astype(int)
    got = binary_metrics(y, p, 0.4, scores_are_logits=False)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=0), abs=TOL, rel=0)
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred), abs=TOL, rel=0)
    assert got["recall"] == pytest.approx(skm.recall_score(y, pred), abs=TOL, rel=0)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=TOL, rel=0)


def test_hand_computed_tiny_case():
    y = [0, 0, 1, 1]
    p = [0.1, 0.4, 0.35, 0.8]
    # Pairs (pos, neg): (.35,.1) win, (.35,.4) loss, (.8,.1) win, (.8,.4) win -> 3/4.
    assert auroc(y, p) == 0.75
    # threshold 0.3: predictions [0, 1, 1, 1] -> TP 2, FP 1, FN 0, TN 1.
    m = binary_metrics(y, p, 0.3, scores_are_logits=False)
    assert m == {"accuracy": 0.75, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "auroc": 0.75}


def test_hand_computed_ties():
    y = [0, 1, 0, 1]
    s = [1, 1, 0, 2]
    # Pairs: (1 vs 1) tie = 1/2, (1 vs 0) win, (2 vs 1) win, (2 vs 0) win -> 3.5 / 4.
    assert auroc(y, s) == 0.875
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_array_equal(thr, [np.inf, 2.0, 1.0, 0.0])
    np.testing.assert_array_equal(fpr, [0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(tpr, [0.0, 0.5, 1.0, 1.0])
    # Logit 0 is probability exactly 0.5: ">= threshold" counts it as signal.
    m = binary_metrics(y, [0.0, 0.0, -1.0, 3.0])  # predictions [1, 1, 0, 1]
    assert (m["precision"], m["recall"], m["accuracy"]) == (2 / 3, 1.0, 0.75)


def test_zero_division_is_zero():
    y = np.array([0, 1, 0, 1])
    m = binary_metrics(y, np.full(4, -5.0))  # nothing predicted positive: precision is 0/0
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 0.5
    assert skm.precision_score(y, np.zeros(4, int), zero_division=0) == 0.0


def test_one_class_raises():
    with pytest.raises(ValueError, match="only one class"):
        auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="only one class"):
        roc_curve([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only one class"):
        binary_metrics([0, 0], [0.1, 0.2])
    # The reference agrees that it is undefined (scikit-learn 1.9 warns and returns NaN).
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(skm.roc_auc_score([1, 1, 1], [0.1, 0.2, 0.3]))


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        ([0, 2], [0.1, 0.2], "labels must be 0 or 1"),
        ([0, 1], [0.1, np.nan], "finite"),
        ([0, 1, 1], [0.1, 0.2], "differ in length"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        auroc(labels, scores)


def test_bad_threshold_and_probabilities():
    with pytest.raises(ValueError, match="threshold"):
        binary_metrics([0, 1], [0.0, 1.0], threshold=1.0)
    with pytest.raises(ValueError, match="not \\[0, 1\\]"):
        binary_metrics([0, 1], [-0.5, 2.0], scores_are_logits=False)


def test_auroc_large_n_is_fast_and_exact():
    rng = np.random.default_rng(7)
    n = 200_000
    y = rng.integers(0, 2, size=n)
    s = rng.integers(0, 50, size=n) + y  # many ties
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=TOL, rel=0)
