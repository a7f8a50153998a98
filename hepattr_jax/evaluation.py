"""Plain-NumPy evaluation of attribution scores: removal rules, subsets, mislabel detection.

The GNN-IRST study (arXiv 2407.14859) removes training events by their TracIn self-influence and
retrains on what remains. Every rule here maps scores (and optionally labels) to a boolean *keep*
mask over the training events, so the retrained set is exactly ``ids[keep]``.

Rules:
  * :func:`remove_top_fraction`: drop the fraction ``q`` with the largest (or smallest) score,
    over all events or within each class (``per_class``: ``q`` of each class).
  * :func:`remove_above_robust_threshold`: drop events above ``median + c * IQR`` (per class
    optional): the data decide how many go.
  * :func:`random_keep`: a random subset of a given size (the baseline every rule is compared
    with at equal size).
Ties are broken by position (stable sort), so every rule is deterministic.
"""

from __future__ import annotations

import numpy as np

from hepattr_jax.metrics import auroc


def _check(scores: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"scores contain {np.sum(~np.isfinite(scores))} NaN/inf values")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != scores.shape:
            raise ValueError(f"labels shape {labels.shape} != scores shape {scores.shape}")
    return scores, labels


def _drop_top(scores: np.ndarray, n_drop: int, largest: bool) -> np.ndarray:
    keep = np.ones(len(scores), bool)
    if n_drop > 0:
        order = np.argsort(-scores if largest else scores, kind="stable")
        keep[order[:n_drop]] = False
    return keep


def remove_top_fraction(
    scores, q: float, *, largest: bool = True, labels=None, per_class: bool = False
) -> np.ndarray:
    """Keep mask that drops ``round(q * n)`` events of largest (``largest``) or smallest score.

    With ``per_class``, ``round(q * n_c)`` events are dropped within each class ``c`` of
    ``labels`` separately, so class fractions are preserved.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"removal fraction q must be in [0, 1], got {q}")
    scores, labels = _check(scores, labels)
    if not per_class:
        return _drop_top(scores, int(round(q * len(scores))), largest)
    if labels is None:
        raise ValueError("per_class removal needs labels")
    keep = np.ones(len(scores), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep[idx] = _drop_top(scores[idx], int(round(q * len(idx))), largest)
    return keep


def robust_threshold(scores, c: float) -> float:
    """``median + c * IQR`` of ``scores`` (IQR = 75th - 25th percentile, linear interpolation)."""
    scores, _ = _check(scores, None)
    q25, q50, q75 = np.percentile(scores, [25, 50, 75])
    return float(q50 + c * (q75 - q25))


def remove_above_robust_threshold(
    scores, c: float = 1.5, *, labels=None, per_class: bool = False
) -> np.ndarray:
    """Keep mask dropping events with score above ``median + c * IQR`` (of their class)."""
    scores, labels = _check(scores, labels)
    if not per_class:
        return scores <= robust_threshold(scores, c)
    if labels is None:
        raise ValueError("per_class removal needs labels")
    keep = np.ones(len(scores), bool)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        keep[idx] = scores[idx] <= robust_threshold(scores[idx], c)
    return keep


def random_keep(n: int, n_keep: int, seed: int) -> np.ndarray:
    """Keep mask of ``n_keep`` of ``n`` events chosen uniformly at random (seeded)."""
    if not 0 <= n_keep <= n:
        raise ValueError(f"cannot keep {n_keep} of {n} events")
    keep = np.zeros(n, bool)
    keep[np.random.default_rng(seed).permutation(n)[:n_keep]] = True
    return keep


# --------------------------------------------------------------------- mislabel detection
def flip_labels(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flips ``round(fraction * n)`` binary labels chosen at random; returns (labels, flipped)."""
    labels = np.asarray(labels)
    n_flip = int(round(fraction * len(labels)))
    flipped = np.zeros(len(labels), bool)
    flipped[np.random.default_rng(seed).permutation(len(labels))[:n_flip]] = True
    new = labels.copy()
    new[flipped] = 1 - new[flipped]
    return new, flipped


def detection_rates(scores, flipped, fractions=(0.05, 0.1, 0.2)) -> dict[str, float]:
    """Fraction of the flipped events found among the top ``f`` of events by score (largest first),
    for each ``f``; and the AUROC of the score as a detector of flipped events."""
    scores, _ = _check(scores, None)
    flipped = np.asarray(flipped, bool)
    order = np.argsort(-scores, kind="stable")
    out = {}
    for f in fractions:
        top = order[: int(round(f * len(scores)))]
        out[f"found_in_top_{round(100 * f)}pct"] = float(flipped[top].sum() / max(flipped.sum(), 1))
    out["detector_auroc"] = float(auroc(flipped.astype(int), scores))
    return out


# --------------------------------------------------------------------- attribution quality (LDS)
def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean over columns (test events) of ``|top-k rows of a & top-k rows of b| / k``: how many
    of one score matrix's ``k`` strongest proponents ``[N, M]`` the other finds (ties broken by
    the smaller row)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"top_k_overlap: shapes {a.shape} and {b.shape}, want equal [N, M]")
    ta = np.argsort(-a, axis=0, kind="stable")[:k]
    tb = np.argsort(-b, axis=0, kind="stable")[:k]
    return float(np.mean([len(set(ta[:, j]) & set(tb[:, j])) / k for j in range(a.shape[1])]))


def rankdata(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """Ranks ``1..n`` along ``axis``, ties given their average rank (``scipy.stats.rankdata``,
    already a dependency for the TRAK solves, in float64)."""
    import scipy.stats

    return scipy.stats.rankdata(np.asarray(x, np.float64), method="average", axis=axis)


def spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each column of ``a`` ``[S, M]`` with the same column of ``b``
    (Pearson correlation of average ranks); NaN for a constant column."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"shapes {a.shape} and {b.shape}: want equal [S, M]")
    ra, rb = rankdata(a, 0), rankdata(b, 0)
    ra -= ra.mean(0)
    rb -= rb.mean(0)
    den = np.sqrt((ra**2).sum(0) * (rb**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(0) / np.where(den > 0, den, 1.0), np.nan)


def linear_datamodeling_score(
    scores: np.ndarray, masks: np.ndarray, margins: np.ndarray
) -> tuple[float, np.ndarray]:
    """LDS (TRAK, arXiv 2303.14186, eq. 5) of attribution ``scores`` ``[N, M]`` (train x test).

    For each subset ``S_s`` (row of ``masks`` ``[S, N]``) the attribution predicts the test
    margins as ``g_s(x) = sum_{i in S_s} scores[i, x]``; the LDS of test event ``x`` is the
    Spearman correlation over the ``S`` subsets of ``g_s(x)`` with the margins ``[S, M]`` of the
    models actually trained on ``S_s``. Returns the mean over test events (NaNs of constant
    columns left out) and the per-event values ``[M]``.
    """
    scores = np.asarray(scores, np.float64)
    masks = np.asarray(masks, bool)
    margins = np.asarray(margins, np.float64)
    if scores.ndim != 2 or masks.shape[1] != scores.shape[0]:
        raise ValueError(f"scores {scores.shape} and masks {masks.shape}: want [N, M] and [S, N]")
    if margins.shape != (masks.shape[0], scores.shape[1]):
        raise ValueError(
            f"margins {margins.shape}: want [S, M] = {masks.shape[0], scores.shape[1]}"
        )
    per_event = spearman_columns(masks.astype(np.float64) @ scores, margins)
    finite = per_event[np.isfinite(per_event)]
    return (float(finite.mean()) if len(finite) else float("nan")), per_event


def lds_interval(
    predictions: np.ndarray,
    margins: np.ndarray,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """LDS of predicted margins ``[S, M]`` (``masks @ scores``, or any predictor) against the
    trained models' ``margins`` ``[S, M]``, with a percentile bootstrap interval that resamples
    the subset models *and* the test events (both with replacement, jointly): the two sources of
    noise in an LDS figure (which subsets were drawn, which test events were scored).

    Returns ``{"lds", "low", "high", "n_boot", "level"}``; the point estimate is the plain LDS
    (mean Spearman over test events, constant columns left out, as
    :func:`linear_datamodeling_score`). A resample repeats subset models, whose tied ranks pull
    its Spearman down a little (0.005 below the point estimate on average on synthetic data with
    64 subsets), so the interval leans slightly low: conservative.
    """
    pred = np.asarray(predictions, np.float64)
    marg = np.asarray(margins, np.float64)
    if pred.shape != marg.shape or pred.ndim != 2:
        raise ValueError(f"predictions {pred.shape} and margins {marg.shape}: want equal [S, M]")
    point = spearman_columns(pred, marg)
    rng = np.random.default_rng(seed)
    s, m = pred.shape
    boots = np.empty(n_boot)
    for b in range(n_boot):
        rows, cols = rng.integers(0, s, s), rng.integers(0, m, m)
        per = spearman_columns(pred[np.ix_(rows, cols)], marg[np.ix_(rows, cols)])
        boots[b] = np.nanmean(per) if np.isfinite(per).any() else np.nan
    alpha = (1 - level) / 2
    low, high = np.nanquantile(boots, [alpha, 1 - alpha])
    return {
        "lds": float(np.nanmean(point)),
        "low": float(low),
        "high": float(high),
        "n_boot": int(n_boot),
        "level": float(level),
    }
