"""Removal rules and mislabel-detection bookkeeping against hand-computed answers."""

import numpy as np
import pytest

from hepattr_jax.evaluation import (
    detection_rates,
    flip_labels,
    random_keep,
    remove_above_robust_threshold,
    remove_top_fraction,
    robust_threshold,
    top_k_overlap,
)

SCORES = np.array([5.0, 1.0, 9.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0, 0.0])
LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])


def test_remove_top_fraction_drops_the_largest():
    keep = remove_top_fraction(SCORES, 0.3)
    assert sorted(np.flatnonzero(~keep).tolist()) == [2, 4, 6]  # scores 9, 7, 8
    keep = remove_top_fraction(SCORES, 0.2, largest=False)
    assert sorted(np.flatnonzero(~keep).tolist()) == [1, 9]  # scores 1, 0
    assert remove_top_fraction(SCORES, 0.0).all()
    assert not remove_top_fraction(SCORES, 1.0).any()


def test_remove_top_fraction_per_class_keeps_class_balance():
    keep = remove_top_fraction(SCORES, 0.4, labels=LABELS, per_class=True)
    # class 0 scores [5,1,9,3,7] -> drop 9, 7; class 1 scores [2,8,4,6,0] -> drop 8, 6
    assert sorted(np.flatnonzero(~keep).tolist()) == [2, 4, 6, 8]


def test_ties_are_broken_by_position():
    keep = remove_top_fraction(np.array([1.0, 3.0, 3.0, 3.0]), 0.5)
    assert np.flatnonzero(~keep).tolist() == [1, 2]


def test_robust_threshold_matches_hand_computation():
    # percentiles (linear) of 0..9: q25 = 2.25, q50 = 4.5, q75 = 6.75 -> IQR 4.5
    assert robust_threshold(SCORES, 0.5) == pytest.approx(4.5 + 0.5 * 4.5)
    keep = remove_above_robust_threshold(SCORES, 0.5)
    assert np.flatnonzero(~keep).tolist() == [2, 4, 6]  # above 6.75: 9, 7, 8
    keep = remove_above_robust_threshold(SCORES, 0.0, labels=LABELS, per_class=True)
    # medians: class 0 -> 5, class 1 -> 4; dropped: 9, 7 and 8, 6
    assert sorted(np.flatnonzero(~keep).tolist()) == [2, 4, 6, 8]


def test_random_keep_has_the_requested_size_and_is_seeded():
    a = random_keep(100, 37, seed=3)
    assert a.sum() == 37
    assert (a == random_keep(100, 37, seed=3)).all()
    assert not (a == random_keep(100, 37, seed=4)).all()
    with pytest.raises(ValueError):
        random_keep(10, 11, seed=0)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        remove_top_fraction(np.array([1.0, np.nan]), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        remove_top_fraction(SCORES, 1.5)
    with pytest.raises(ValueError, match="labels"):
        remove_top_fraction(SCORES, 0.5, per_class=True)


def test_flip_labels_and_detection_rates():
    labels = np.zeros(1000, int)
    new, flipped = flip_labels(labels, 0.1, seed=0)
    assert flipped.sum() == 100 and (new[flipped] == 1).all() and (new[~flipped] == 0).all()
    # A perfect detector: flipped events score highest.
    perfect = detection_rates(flipped.astype(float) + np.linspace(0, 0.5, 1000), flipped)
    assert perfect["found_in_top_5pct"] == pytest.approx(0.5)  # 50 of the 100 in the top 50
    assert perfect["found_in_top_10pct"] == pytest.approx(1.0)
    assert perfect["detector_auroc"] == pytest.approx(1.0)
    # An inverted detector finds none.
    worst = detection_rates(-flipped.astype(float), flipped)
    assert worst["found_in_top_20pct"] == 0.0 and worst["detector_auroc"] == pytest.approx(0.0)


# --------------------------------------------------------------------- LDS
def test_rankdata_and_spearman_on_hand_computed_ties():
    from hepattr_jax.evaluation import rankdata, spearman_columns

    x = np.array([[10, 5], [20, 5], [10, 1], [30, 1], [10, 9]], float)
    # column 0: the three 10s share ranks 1, 2, 3 -> 2; 20 -> 4; 30 -> 5
    # column 1: the 1s share 1, 2 -> 1.5; the 5s share 3, 4 -> 3.5; 9 -> 5
    want = np.array([[2, 3.5], [4, 3.5], [2, 1.5], [5, 1.5], [2, 5]])
    np.testing.assert_array_equal(rankdata(x, 0), want)
    np.testing.assert_array_equal(rankdata(x.T, 1), want.T)
    # Spearman of [1..5] with column 0: centred ranks [-2,-1,0,1,2] and [-1,1,-1,2,-1]:
    # sum of products 1, sums of squares 10 and 8 -> 1 / sqrt(80)
    a = np.arange(1.0, 6.0)[:, None]
    assert spearman_columns(a, x[:, :1])[0] == pytest.approx(1 / np.sqrt(80), rel=1e-12)
    assert spearman_columns(a, -a)[0] == pytest.approx(-1.0, rel=1e-12)
    const = np.ones((5, 1))
    assert np.isnan(spearman_columns(const, a))[0]


def test_lds_is_one_for_an_exact_linear_datamodel_and_near_zero_for_noise():
    from hepattr_jax.evaluation import linear_datamodeling_score

    rng = np.random.default_rng(1)
    n, m, s = 40, 6, 50
    true = rng.normal(size=(n, m))
    masks = rng.random((s, n)) < 0.5
    margins = masks @ true + 3.0  # exactly linear in the subset
    lds, per = linear_datamodeling_score(true, masks, margins)
    np.testing.assert_allclose(per, 1.0)
    assert lds == pytest.approx(1.0)
    # A monotone transform of the margins leaves Spearman at 1; negated scores give -1.
    assert linear_datamodeling_score(true, masks, np.exp(margins / 10))[0] == pytest.approx(1.0)
    assert linear_datamodeling_score(-true, masks, margins)[0] == pytest.approx(-1.0)
    noise = rng.normal(size=(n, m))
    lds_noise, _ = linear_datamodeling_score(noise, masks, margins)
    assert abs(lds_noise) < 0.3
    with pytest.raises(ValueError, match="margins"):
        linear_datamodeling_score(true, masks, margins[:, :2])


def test_subset_masks_have_exact_sizes_and_are_reproducible():
    from hepattr_jax.datamodels import subset_masks

    m = subset_masks(11, 7, 0.5, seed=3)
    assert m.shape == (7, 11) and np.all(m.sum(1) == 6)
    np.testing.assert_array_equal(m, subset_masks(11, 7, 0.5, seed=3))
    assert not np.array_equal(m, subset_masks(11, 7, 0.5, seed=4))


def test_top_k_overlap_counts_shared_proponents_per_column():
    a = np.array([[3.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, 3.0]])
    b = np.array([[3.0, 3.0], [0.0, 2.0], [2.0, 1.0], [1.0, 0.0]])
    # column 0: top-2 {0, 1} vs {0, 2} -> 1/2; column 1: {3, 2} vs {0, 1} -> 0
    assert top_k_overlap(a, b, 2) == pytest.approx(0.25)
    assert top_k_overlap(a, a, 3) == 1.0
    with pytest.raises(ValueError, match="shapes"):
        top_k_overlap(a, b[:3], 2)
