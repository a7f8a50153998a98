"""The report's later sections: LRP against permutation and Shapley, correlation-aware
importance, and coverage at constituent level (:mod:`~hepattr_jax.explain.lrp`,
:mod:`~hepattr_jax.explain.correlated`, :mod:`~hepattr_jax.explain.constituents`).

:func:`run_sections` computes them for :func:`~hepattr_jax.explain.report.explain_run` and
:func:`render_sections` writes their markdown. Each section works with what the run has and is
skipped, with a sentence saying why, when it cannot apply (a model with a layer LRP has no rule
for, a single feature, no constituent or physics quantities).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hepattr_jax.explain.constituents import (
    constituent_section,
    plot_constituents,
    render_constituents,
)
from hepattr_jax.explain.correlated import correlated_section, plot_correlated, render_correlated
from hepattr_jax.explain.lrp import UnsupportedLayerError, lrp_section, plot_lrp, render_lrp

N_LRP = 2000  # events for LRP and the method comparison
N_CONSTITUENT_EVENTS = 600
N_CONSTITUENTS = 1500


def run_sections(
    model,
    params,
    gs,
    predictor,
    feature_groups,
    baseline,
    plain_permutation: dict,
    phys: dict,
    jet_coverage: dict,
    out_dir,
    *,
    normalizer=None,
    repeats: int,
    seed: int,
    batch_size: int = 512,
    progress: bool = False,
) -> tuple[dict, dict]:
    """``(results, figures)`` of the three sections on the report's test events ``gs`` (whose
    :class:`BatchedPredictor` is ``predictor``); ``jet_coverage`` = ``{quantity: coverage}`` of
    the pooled latent, shown beside the constituent-level coverage."""
    from hepattr_jax.explain.predict import BatchedPredictor

    out = Path(out_dir)
    res, figs, secs = {}, {}, {}

    t0 = time.perf_counter()
    if len(gs) > N_LRP:
        pos = np.sort(np.random.default_rng([seed, 2]).permutation(len(gs))[:N_LRP])
        pr = BatchedPredictor(model, params, gs.select(pos), batch_size)
    else:
        pr = predictor
    try:
        sec = lrp_section(
            pr, feature_groups, baseline, repeats=repeats, seed=seed, progress=progress
        )
        figs["lrp"] = plot_lrp(sec, out / "lrp.png")
        sec.pop("_arrays")
    except UnsupportedLayerError as e:
        sec = {"skipped": str(e)}
    res["lrp"] = sec
    secs["lrp"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if len(feature_groups) < 2:
        res["correlated"] = {"skipped": "a single input feature has no correlated partner"}
    else:
        res["correlated"] = correlated_section(
            predictor,
            feature_groups,
            plain_permutation,
            repeats=repeats,
            seed=seed,
            progress=progress,
        )
        figs["correlated"] = plot_correlated(res["correlated"], out / "correlated_importance.png")
    secs["correlated"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sec = constituent_section(
        model,
        params,
        gs,
        phys,
        normalizer=normalizer,
        jet_level=jet_coverage,
        n_events=N_CONSTITUENT_EVENTS,
        n_nodes=N_CONSTITUENTS,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )
    if "skipped" not in sec:
        figs["constituents"] = plot_constituents(sec, out / "coverage_constituents.png")
    res["constituents"] = sec
    secs["constituents"] = time.perf_counter() - t0
    res["seconds"] = secs
    return res, figs


def render_sections(r: dict | None) -> list[str]:
    """Markdown of sections 7-9 (nothing for a report written before they existed)."""
    if not r:
        return []
    lines = ["", "## 7. Layer-wise relevance propagation against permutation and Shapley", ""]
    lines += [f"Skipped: {r['lrp']['skipped']}."] if "skipped" in r["lrp"] else render_lrp(r["lrp"])
    lines += ["", "## 8. Importance that respects correlations", ""]
    c = r["correlated"]
    lines += [f"Skipped: {c['skipped']}."] if "skipped" in c else render_correlated(c)
    lines += ["", "## 9. Information coverage at constituent level", ""]
    lines += render_constituents(r["constituents"])
    s = r["seconds"]
    lines += [
        "",
        f"Sections 7-9 took {s['lrp']:.1f} s (LRP and comparison), {s['correlated']:.1f} s "
        f"(correlations), {s['constituents']:.1f} s (constituent coverage).",
    ]
    return lines
