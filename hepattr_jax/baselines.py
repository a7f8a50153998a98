"""The classic single-quantity discriminants of each generated task, with the field's figures.

A baseline is one physics quantity of the jet used directly as the classifier score (sign chosen
so that larger = more signal-like). For each task the figures are the AUROC and the background
rejection ``1 / eps_B`` at the task's working point ``eps_S``:

* ``top_qcd`` (eps_S = 0.3): jet mass (score ``m``), distance to the top mass
  (``-|m - 173 GeV|``), tau32 (``-tau32``);
* ``qg`` (eps_S = 0.5): constituent multiplicity (``-n``), tau21 (``-tau21``);
* ``wh_ttbar`` (events, eps_S = 0.5): missing transverse momentum (``met``), the b-jet pair's
  distance to the Higgs mass (``-|m_bb - 125 GeV|``), jet count (``-n_jets``: t t-bar has more);
* ``susy_2l`` (events, eps_S = 0.5): missing transverse momentum (``met``), ``mt2``.

Labels: top = 1 (signal) vs QCD = 0; quark = 1 (signal) vs gluon = 0; WH = 1 vs t t-bar = 0;
chargino pairs = 1 vs WW = 0, as in the generator.
A model must beat these to be worth attributing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from hepattr_jax.errors import ConfigError, DataError
from hepattr_jax.metrics import auroc, background_rejection

M_TOP = 173.0  # GeV
M_HIGGS = 125.0  # GeV

# task -> (signal efficiency, {name: score(physics) -> [N]})
BASELINES: dict[str, tuple[float, dict[str, Callable[[Mapping[str, np.ndarray]], np.ndarray]]]] = {
    "top_qcd": (
        0.3,
        {
            "jet_mass": lambda p: p["jet_mass"],
            "mass_window": lambda p: -np.abs(p["jet_mass"] - M_TOP),
            "tau32": lambda p: -p["tau32"],
        },
    ),
    "qg": (
        0.5,
        {
            "multiplicity": lambda p: -p["n_constituents"],
            "tau21": lambda p: -p["tau21"],
        },
    ),
    "wh_ttbar": (
        0.5,
        {
            "met": lambda p: p["met"],
            "m_bb_window": lambda p: -np.abs(p["m_bb"] - M_HIGGS),
            "n_jets": lambda p: -p["n_jets"],
        },
    ),
    "susy_2l": (
        0.5,
        {
            "met": lambda p: p["met"],
            "mt2": lambda p: p["mt2"],
        },
    ),
}


def baseline_scores(task: str, physics: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{name: scores [N]}`` of the task's single-quantity discriminants."""
    try:
        _, fns = BASELINES[task]
    except KeyError:
        raise ConfigError(f"unknown task {task!r}; valid: {', '.join(sorted(BASELINES))}") from None
    try:
        return {name: np.asarray(fn(physics), np.float64) for name, fn in fns.items()}
    except KeyError as e:
        raise DataError(f"task {task!r}: physics quantity {e} is missing") from None


def baseline_table(task: str, physics: Mapping[str, np.ndarray], labels) -> dict[str, dict]:
    """``{name: {"auroc", "rejection", "signal_efficiency"}}`` for each discriminant of ``task``.

    ``rejection`` is ``1 / eps_B`` at the task's ``eps_S`` (module docstring).
    """
    scores = baseline_scores(task, physics)  # raises ConfigError for an unknown task
    eps_s = BASELINES[task][0]
    out = {}
    for name, s in scores.items():
        out[name] = {
            "auroc": auroc(labels, s),
            "rejection": background_rejection(labels, s, eps_s),
            "signal_efficiency": eps_s,
        }
    return out


def _interval(values: np.ndarray) -> list[float]:
    """The 2.5 and 97.5 percentiles, without interpolating (a rejection may be ``inf``: no
    background event passes the cut in a resample); ``[nan, nan]`` for no values."""
    if len(values) == 0:
        return [float("nan"), float("nan")]
    return np.percentile(values, [2.5, 97.5], method="inverted_cdf").tolist()


def _bootstrap(labels, scores, eps_s: float, n_boot: int, seed: int) -> tuple[dict, np.ndarray]:
    """AUROC and 1/eps_B with 95 % percentile bootstrap intervals over events, and the
    ``[n_boot, 2]`` resampled values. The resamples depend only on ``seed`` and the event count,
    so two discriminants on the same events are resampled alike (paired)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    boots = np.empty((n_boot, 2))
    for b in range(n_boot):
        i = rng.integers(0, n, n)
        boots[b] = auroc(labels[i], scores[i]), background_rejection(labels[i], scores[i], eps_s)
    out: dict = {
        "auroc": auroc(labels, scores),
        "rejection": background_rejection(labels, scores, eps_s),
    }
    for j, k in enumerate(("auroc", "rejection")):
        out[f"{k}_95"] = _interval(boots[:, j])
    return out, boots


def compare(
    task: str,
    physics: Mapping[str, np.ndarray],
    labels,
    scores,
    name: str = "model",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """A classifier's ``scores`` beside ``task``'s baselines on the same events.

    Returns ``{"n", "signal_efficiency", "rows": {name and each baseline: {"auroc",
    "rejection", "auroc_95", "rejection_95"}}, "vs": {baseline: {"auroc_difference_95",
    "rejection_ratio_95", "share_better_auroc", "share_better_rejection"}}}``: intervals are 95 %
    percentile bootstraps over events; ``vs`` is paired (both resampled on the same events), with
    the share of resamples in which the classifier is the better one.
    """
    base = baseline_scores(task, physics)  # ConfigError for an unknown task
    eps_s = BASELINES[task][0]
    y = np.asarray(labels, np.int64)
    rows, boots = {}, {}
    for key, s in {name: np.asarray(scores, np.float64), **base}.items():
        rows[key], boots[key] = _bootstrap(y, s, eps_s, n_boot, seed)
    vs = {}
    for key in base:
        d_auc = boots[name][:, 0] - boots[key][:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = boots[name][:, 1] / boots[key][:, 1]
        vs[key] = {
            "auroc_difference_95": _interval(d_auc),
            "rejection_ratio_95": _interval(ratio[~np.isnan(ratio)]),
            "share_better_auroc": float(np.mean(d_auc > 0)),
            "share_better_rejection": float(np.mean(ratio > 1)),
        }
    return {"n": len(y), "signal_efficiency": eps_s, "rows": rows, "vs": vs}
