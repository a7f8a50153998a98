"""Binary-classification metrics in plain NumPy: accuracy, precision, recall, F1, ROC, AUROC and
the background rejection 1/eps_B at a fixed signal efficiency.

Conventions (they match scikit-learn, which the tests compare against):

* ``labels`` are 0/1 (or bool), 1 = signal (the positive class); ``scores`` are real numbers,
  larger = more signal-like.
* A ratio whose denominator is zero is defined as 0.0: precision with no positive predictions,
  recall with no positive labels, F1 when precision + recall = 0. This is scikit-learn's
  ``zero_division=0``.
* AUROC and the ROC curve need both classes and raise ``ValueError`` otherwise.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "background_rejection", "binary_metrics", "roc_curve"]


def _check_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(y, s)``: labels as a bool vector and scores as a float64 vector, validated."""
    y = np.asarray(labels)
    s = np.asarray(scores)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if y.size == 0:
        raise ValueError("labels and scores are empty")
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"labels must be 0/1 numbers or bools, got dtype {y.dtype}")
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"labels must be 0 or 1; labels[{i}] = {y[i]!r}")
        y = y == 1
    if not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"scores must be finite; scores[{i}] = {s[i]!r}")
    return y, s


def _both_classes(y: np.ndarray, what: str) -> tuple[int, int]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        only = "1 (signal)" if n_neg == 0 else "0 (background)"
        raise ValueError(
            f"{what} is undefined when only one class is present: all {y.size} labels are {only}"
        )
    return n_pos, n_neg


def _ratio(num: int, den: int) -> float:
    """num / den, with 0/0 (and x/0) defined as 0.0."""
    return float(num) / float(den) if den else 0.0


def auroc(labels, scores) -> float:
    """Area under the ROC curve, from the Mann-Whitney U statistic.

    With ``R_i`` the rank of ``scores[i]`` among all n scores (1-based; tied scores share the
    average of the ranks they span), ``n_+`` positives and ``n_-`` negatives::

        U = sum_{i: y_i = 1} R_i - n_+ (n_+ + 1) / 2,        AUROC = U / (n_+ n_-)

    which equals P(s_+ > s_-) + 1/2 P(s_+ = s_-) over independent positive/negative pairs
    (Mann & Whitney 1947; Hanley & McNeil 1982). Cost O(n log n) (one sort).

    Raises ``ValueError`` if only one class is present.
    """
    y, s = _check_inputs(labels, scores)
    n_pos, n_neg = _both_classes(y, "AUROC")
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    # Group equal scores: group g spans sorted positions [start_g, end_g) and gets the mean of
    # the 1-based ranks start_g + 1 .. end_g, i.e. (start_g + 1 + end_g) / 2.
    new_group = np.empty(s.size, dtype=bool)
    new_group[0] = True
    np.not_equal(s_sorted[1:], s_sorted[:-1], out=new_group[1:])
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], s.size)
    group_rank = (starts + 1 + ends) / 2.0
    # Rank sum of the positives, group by group: (positives in group) x (group's mean rank).
    pos_per_group = np.add.reduceat(y[order].astype(np.int64), starts)
    rank_sum_pos = float(np.dot(pos_per_group, group_rank))
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return u / (float(n_pos) * float(n_neg))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)``, one point per distinct score plus the origin.

    ``thresholds`` are the distinct scores in decreasing order, preceded by ``+inf``; point k
    classifies ``score >= thresholds[k]`` as positive, so tied scores enter together (one point
    per group of equal scores). Same output as ``sklearn.metrics.roc_curve(labels, scores,
    drop_intermediate=False)`` (scikit-learn >= 1.3, which uses ``inf`` as the first threshold).

    Shapes: all three are ``[n_distinct + 1]`` float64; fpr and tpr rise from 0 to 1.
    Raises ``ValueError`` if only one class is present (scikit-learn warns and returns NaN).
    """
    y, s = _check_inputs(labels, scores)
    n_pos, n_neg = _both_classes(y, "the ROC curve")
    order = np.argsort(-s, kind="stable")
    s_desc = s[order]
    y_desc = y[order].astype(np.int64)
    # Last index of each group of equal scores in the decreasing order.
    last_of_group = np.append(np.flatnonzero(s_desc[1:] != s_desc[:-1]), s.size - 1)
    tps = np.cumsum(y_desc)[last_of_group]
    fps = (last_of_group + 1) - tps
    tpr = np.concatenate(([0.0], tps / n_pos))
    fpr = np.concatenate(([0.0], fps / n_neg))
    thresholds = np.concatenate(([np.inf], s_desc[last_of_group]))
    return fpr, tpr, thresholds


def background_rejection(labels, scores, signal_efficiency: float) -> float:
    """Background rejection ``1 / eps_B`` at signal efficiency ``eps_S`` (taggers' figure of merit).

    ``eps_B`` is read off the ROC curve of :func:`roc_curve` (``tpr = eps_S``, ``fpr = eps_B``),
    taken as piecewise linear between its points: at a point whose ``tpr`` equals ``eps_S`` the
    smallest ``fpr`` there; between two points, linear interpolation from the last point below
    ``eps_S`` to the first one above it. ``eps_B = 0`` gives ``inf``. This is the convention of
    the top-tagging comparison (Kasieczka et al., arXiv 1902.09914: 1/eps_B at eps_S = 0.3).

    Raises ``ValueError`` if only one class is present or ``signal_efficiency`` is not in (0, 1].
    """
    eps_s = float(signal_efficiency)
    if not 0.0 < eps_s <= 1.0:
        raise ValueError(f"signal_efficiency must lie in (0, 1], got {signal_efficiency}")
    fpr, tpr, _ = roc_curve(labels, scores)
    k = int(np.searchsorted(tpr, eps_s, side="left"))  # first point with tpr >= eps_s
    if tpr[k] == eps_s:
        eps_b = fpr[k]
    else:
        t0, t1, f0, f1 = tpr[k - 1], tpr[k], fpr[k - 1], fpr[k]
        eps_b = f0 + (f1 - f0) * (eps_s - t0) / (t1 - t0)
    return float(1.0 / eps_b) if eps_b > 0 else float("inf")


def binary_metrics(
    labels, scores, threshold: float = 0.5, *, scores_are_logits: bool = True
) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and AUROC of a binary classifier.

    Args:
      labels: ``[n]`` 0/1 or bool, 1 = signal.
      scores: ``[n]`` real; logits if ``scores_are_logits`` (the default, what the models
        output), else probabilities in [0, 1].
      threshold: probability threshold; an event is predicted signal when
        ``p >= threshold``. For logits this is applied as ``logit >= log(t / (1 - t))``, which
        is the same rule without computing the sigmoid (no saturation to exactly 0 or 1), so
        it needs ``0 < threshold < 1``.

    Returns:
      ``{"accuracy", "precision", "recall", "f1", "auroc"}`` as Python floats, with
      precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 P R / (P + R), and 0/0 defined
      as 0.0 (see the module docstring). AUROC uses the raw scores (it depends only on their
      order, which the sigmoid preserves) and raises ``ValueError`` if one class is absent.
    """
    y, s = _check_inputs(labels, scores)
    threshold = float(threshold)
    if scores_are_logits:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1) for logits, got {threshold}")
        cut = float(np.log(threshold) - np.log1p(-threshold))
    else:
        if s.min() < 0.0 or s.max() > 1.0:
            raise ValueError(
                f"scores_are_logits=False but scores span [{s.min()}, {s.max()}], not [0, 1]"
            )
        cut = threshold
    pred = s >= cut
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    fn = int(np.sum(~pred & y))
    tn = int(y.size - tp - fp - fn)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    # F1 from counts (2 TP / (2 TP + FP + FN)): equal to 2PR/(P+R), without the rounding of P, R.
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "accuracy": _ratio(tp + tn, y.size),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": auroc(y, s),
    }
