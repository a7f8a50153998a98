"""The classic single-quantity discriminants of each generated task, with the field's figures.

A baseline is one physics quantity of the jet used directly as the classifier score (sign chosen
so that larger = more signal-like). For each task the figures are the AUROC and the background
rejection ``1 / eps_B`` at the task's working point ``eps_S``:

* ``top_qcd`` (eps_S = 0.3): jet mass (score ``m``), distance to the top mass
  (``-|m - 173 GeV|``), tau32 (``-tau32``);
* ``qg`` (eps_S = 0.5): constituent multiplicity (``-n``), tau21 (``-tau21``).

Labels: top = 1 (signal) vs QCD = 0; quark = 1 (signal) vs gluon = 0, as in the generator.
A model must beat these to be worth attributing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from hepattr_jax.errors import ConfigError, DataError
from hepattr_jax.metrics import auroc, background_rejection

M_TOP = 173.0  # GeV

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
