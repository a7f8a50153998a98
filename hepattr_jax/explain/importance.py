"""Feature importance by permutation and by mean masking, with uncertainties over repeats.

Both take any ``predict(events) -> logits [N]`` (:class:`~hepattr_jax.explain.predict.Predictor`)
and feature groups (:func:`~hepattr_jax.explain.features.make_groups`); every evaluation is one
call on the whole event set.

* **Permutation importance** (Breiman 2001; Fisher, Rudin & Dominici 2019): shuffle a group's
  columns (:func:`~hepattr_jax.explain.features.permute_features`) and measure the increase of the
  mean BCE loss ``L(perm) - L`` and the drop of AUROC ``AUC - AUC(perm)``; mean and standard
  deviation over ``repeats`` independent shuffles (seeded by ``(seed, group, repeat)``).
* **Mean-masking importance** (arXiv 2210.04371): replace a group by its baseline (mean) value and
  measure ``delta_auc = AUC - AUC(masked)`` and, per class ``c``, the mean absolute relative
  change of the output ``mean_{i: y_i = c} |s'_i - s_i| / s_i``, where ``s_i`` is the probability
  the model gives event ``i``'s own class (``sigmoid(z)`` for class 1, ``1 - sigmoid(z)`` for
  class 0). Masking is deterministic; uncertainties are bootstrap standard deviations over
  ``repeats`` resamplings of the events (the masked outputs are computed once).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tqdm.auto import tqdm

from hepattr_jax.data.events import EventSet
from hepattr_jax.explain.features import (
    Baseline,
    Groups,
    feature_means,
    mask_features,
    permute_features,
)
from hepattr_jax.explain.predict import Predictor, bce, sigmoid
from hepattr_jax.metrics import auroc


def _auroc(labels, logits) -> float:
    y = np.asarray(labels)
    if y.min() == y.max():
        return float("nan")
    return float(auroc(y, logits))


def permutation_importance(
    predict: Predictor,
    events: EventSet,
    groups: Groups,
    *,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Increase of loss and drop of AUROC when each group is permuted.

    Returns ``{"base": {"loss", "auroc"}, "groups": {name: {"delta_loss", "delta_loss_std",
    "delta_auroc", "delta_auroc_std", "delta_loss_all" [repeats], "delta_auroc_all"}}}``
    (std: over repeats, ``ddof=1``; 0 for one repeat). ``repeats * len(groups)`` predictions.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    y = events.labels
    z0 = predict(events)
    loss0, auc0 = float(bce(z0, y).mean()), _auroc(y, z0)
    out = {}
    bar = tqdm(total=repeats * len(groups), desc="permutation importance", disable=not progress)
    for gi, (name, feats) in enumerate(groups.items()):
        dl, da = [], []
        for r in range(repeats):
            rng = np.random.default_rng([seed, gi, r])
            z = predict(permute_features(events, feats, rng))
            dl.append(float(bce(z, y).mean()) - loss0)
            da.append(auc0 - _auroc(y, z))
            bar.update()
        out[name] = _summary({"delta_loss": dl, "delta_auroc": da})
    bar.close()
    return {"base": {"loss": loss0, "auroc": auc0}, "repeats": repeats, "groups": out}


def _summary(values: Mapping[str, list[float]]) -> dict:
    out = {}
    for k, v in values.items():
        a = np.asarray(v, np.float64)
        out[k] = float(a.mean())
        out[f"{k}_std"] = float(a.std(ddof=1)) if len(a) > 1 else 0.0
        out[f"{k}_all"] = a.tolist()
    return out


def class_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probability the model gives each event's own class: ``sigmoid(z)`` or ``1 - sigmoid(z)``."""
    p = sigmoid(logits)
    return np.where(np.asarray(labels) == 1, p, 1.0 - p)


def masking_scores(labels, logits, masked_logits) -> dict:
    """``delta_auc`` and, per class ``c``, ``rel_change_c`` for one masked output (see module)."""
    y = np.asarray(labels)
    s0 = class_probability(logits, y)
    s1 = class_probability(masked_logits, y)
    rel = np.abs(s1 - s0) / np.maximum(s0, 1e-12)
    out = {"delta_auc": _auroc(y, logits) - _auroc(y, masked_logits)}
    for c in (0, 1):
        sel = y == c
        out[f"rel_change_{c}"] = float(rel[sel].mean()) if sel.any() else float("nan")
    return out


def masking_importance(
    predict: Predictor,
    events: EventSet,
    groups: Groups,
    *,
    baseline: Baseline | None = None,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Mean-masking importance of each group (arXiv 2210.04371): ``delta_auc`` and the per-class
    mean absolute relative change of the class probability, with bootstrap std over
    ``repeats`` resamplings of the events. ``len(groups) + 1`` predictions.
    """
    baseline = feature_means(events) if baseline is None else baseline
    y = events.labels
    z0 = predict(events)
    boot = (
        [
            np.random.default_rng([seed, 10_000, r]).integers(0, len(y), len(y))
            for r in range(repeats)
        ]
        if repeats > 1
        else []
    )
    out = {}
    for name, feats in tqdm(groups.items(), desc="mean masking", disable=not progress):
        z = predict(mask_features(events, feats, baseline))
        point = masking_scores(y, z0, z)
        samples = [masking_scores(y[b], z0[b], z[b]) for b in boot]
        rec = dict(point)
        for k in point:
            vals = np.array([s[k] for s in samples], np.float64)
            rec[f"{k}_std"] = float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0
        out[name] = rec
    return {"base": {"auroc": _auroc(y, z0)}, "repeats": repeats, "groups": out}
