"""Explaining a finished run: importance, Shapley values, coverage, activation patterns, latent
physics, and all of them split by the events the GNN-IRST rule keeps and discards.

:func:`explain_run` writes into ``out_dir``: ``report.md`` (numbers and what was done),
``explain.json`` (every number, with the settings, checkpoint and data fingerprint that made
them) and the figures. The parameters are those of the run's best epoch (``metrics.json``
``best_epoch``, the model whose test metrics training reported), or the last checkpoint if that
epoch was not saved. Feature masking uses the training split's feature means (the normalised
inputs' origin), the same baseline for every event set.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import date
from pathlib import Path

import numpy as np

from hepattr_jax.data.registry import class_names
from hepattr_jax.environment import provenance
from hepattr_jax.explain import plots
from hepattr_jax.explain.activations import activation_patterns, correlations, pca
from hepattr_jax.explain.cluster_report import clusters_section, render_clusters
from hepattr_jax.explain.coverage import (
    H_FACTORS,
    coverage_per_dimension,
    information_coverage,
    kde_goodness_of_fit,
    silverman,
    uniform_scores,
)
from hepattr_jax.explain.features import Groups, feature_means, make_groups
from hepattr_jax.explain.importance import masking_importance, permutation_importance
from hepattr_jax.explain.predict import LATENT, BatchedPredictor, bce
from hepattr_jax.explain.sections import render_sections, run_sections
from hepattr_jax.explain.shapley import aggregate_shapley, shapley_values
from hepattr_jax.io_utils import atomic_write_json, atomic_write_text, ensure_dir
from hepattr_jax.metrics import auroc

log = logging.getLogger(__name__)

N_PCS = 10  # principal components correlated with the physics quantities
N_PCS_COVERAGE = 3  # components of a layer whose joint coverage is estimated


# --------------------------------------------------------------------- helpers
def best_checkpoint(run) -> tuple[int, str]:
    """Index into ``run.checkpoints`` of the best epoch's checkpoint, and a description."""
    from hepattr_jax.checkpoints import CheckpointStore

    path = Path(run.run_dir) / "metrics.json"
    last = len(run.checkpoints) - 1
    if not path.exists():
        return last, f"last checkpoint (step {run.checkpoints.steps[last]}; no metrics.json)"
    best_epoch = json.loads(path.read_text()).get("best_epoch")
    with CheckpointStore(
        Path(run.run_dir) / "checkpoints",
        config_fingerprint=None,
        data_fingerprint=None,
        create=False,
    ) as store:
        for k, step in enumerate(run.checkpoints.steps):
            if store.meta(step)["epoch"] == best_epoch:
                return k, f"best epoch {best_epoch + 1} (step {step})"
    return last, f"last checkpoint (step {run.checkpoints.steps[last]}; best epoch not saved)"


def physics_quantities(events) -> dict[str, np.ndarray]:
    """The event's physics quantities, without constants and without any that separates the
    classes perfectly (the truth label in disguise, e.g. the parton id)."""
    out = {}
    y = events.labels
    both = 0 < y.sum() < len(y)
    for name, v in events.physics.items():
        v = np.asarray(v, np.float64)
        if np.all(v == v[0]):
            continue
        if both and auroc(y, v) in (0.0, 1.0):
            continue
        out[name] = v
    return out


def _subsample(n: int, k: int | None, seed: int) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:k])


def _layer_coverage(acts: dict, phys: dict, n_pcs: int = N_PCS_COVERAGE) -> dict:
    """Coverage of each quantity by each layer's leading principal components (jointly)."""
    out = {}
    for layer, a in acts.items():
        p = pca(a, n_pcs)
        out[layer] = {q: information_coverage(p["scores"], v) for q, v in phys.items()}
    return out


def _finite(x):
    """JSON-friendly float (None for NaN)."""
    x = float(x)
    return x if np.isfinite(x) else None


# --------------------------------------------------------------------- diagnostics of one set
def diagnose(
    predictor: BatchedPredictor,
    feature_groups: Groups,
    shapley_groups: Groups,
    baseline,
    *,
    repeats: int,
    seed: int,
    n_coverage: int,
    shapley_method: str,
    n_permutations: int,
    progress: bool,
) -> dict:
    """Every diagnostic on one event set (used for the kept and discarded events)."""
    ev = predictor.events
    y = ev.labels
    z = predictor()
    perm = permutation_importance(
        predictor, ev, feature_groups, repeats=repeats, seed=seed, progress=progress
    )
    mask = masking_importance(
        predictor, ev, feature_groups, baseline=baseline, repeats=repeats, seed=seed
    )
    sh = shapley_values(
        predictor,
        ev,
        shapley_groups,
        baseline=baseline,
        method=shapley_method,
        n_permutations=n_permutations,
        seed=seed,
    )
    acts = predictor.activations()
    pats = activation_patterns(acts, y)
    phys = physics_quantities(ev)
    sub = _subsample(len(ev), n_coverage, seed)
    lat = pca(acts[LATENT][sub], N_PCS_COVERAGE)["scores"]
    corr = correlations(pca(acts[LATENT], N_PCS)["scores"], phys)
    return {
        "n_events": len(ev),
        "gluon_fraction": float(y.mean()),
        "auroc": _finite(auroc(y, z)) if 0 < y.sum() < len(y) else None,
        "loss": float(bce(z, y).mean()),
        "permutation": perm,
        "masking": mask,
        "shapley": aggregate_shapley(sh["values"], y, sh["groups"]),
        "sparsity": {k: 0.5 * (p["sparsity_0"] + p["sparsity_1"]) for k, p in pats.items()},
        "coverage": {q: information_coverage(lat, v[sub])["coverage"] for q, v in phys.items()},
        "max_abs_corr_pc": {q: float(np.abs(c).max()) for q, c in corr.items()},
        "physics_mean": {q: float(v.mean()) for q, v in phys.items()},
    }


# --------------------------------------------------------------------- the report
def explain_run(
    run,
    out_dir: str | Path,
    *,
    n_events: int | None = None,
    repeats: int = 5,
    q: float = 0.1,
    seed: int = 0,
    groups: dict | None = None,
    shapley_method: str = "auto",
    n_permutations: int = 16,
    n_coverage: int = 2000,
    batch_size: int = 512,
    timing_events: int = 0,
    influence_dir: str | Path | None = None,
    progress: bool = True,
    command: str = "",
) -> dict:
    """Explains ``run`` (a :class:`~hepattr_jax.runs.Run`) on its test split; see the module
    docstring. ``groups`` (``{name: [feature names]}``) are the Shapley players (default: one
    per feature). Returns the ``explain.json`` dict."""
    from hepattr_jax.evaluation import remove_top_fraction
    from hepattr_jax.scoring import scored_self_influence

    t_start = time.perf_counter()
    out = ensure_dir(out_dir)
    k_best, ckpt_desc = best_checkpoint(run)
    params = run.checkpoints.at(k_best)
    dataset = run.config.dataset
    cnames = class_names(dataset, run.config.dataset_kwargs)
    train, test = run.data.train, run.data.test
    use_globals = bool(run.config.use_globals) and test.events.n_globals > 0
    baseline = feature_means(train.events)
    feature_groups = make_groups(test.events, include_globals=use_globals)
    shapley_groups = make_groups(test.events, groups, include_globals=use_globals)
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t0 = time.perf_counter()
        r = fn(*a, **kw)
        timings[name] = time.perf_counter() - t0
        return r

    # ---- test events
    pos = _subsample(len(test), n_events, seed)
    gs = test.select(pos)
    ev = gs.events
    y = ev.labels
    predictor = BatchedPredictor(run.model, params, gs, batch_size)
    z0 = timed("compile_and_first_call", predictor)
    timed("one_prediction", predictor)  # steady state
    perm = timed(
        "permutation_importance",
        permutation_importance,
        predictor,
        ev,
        feature_groups,
        repeats=repeats,
        seed=seed,
        progress=progress,
    )
    mask = timed(
        "masking_importance",
        masking_importance,
        predictor,
        ev,
        feature_groups,
        baseline=baseline,
        repeats=repeats,
        seed=seed,
        progress=progress,
    )
    sh = timed(
        "shapley",
        shapley_values,
        predictor,
        ev,
        shapley_groups,
        baseline=baseline,
        method=shapley_method,
        n_permutations=n_permutations,
        seed=seed,
        progress=progress,
    )
    efficiency_gap = float(np.max(np.abs(sh["values"].sum(1) - (sh["f_x"] - sh["f_baseline"]))))
    sh_agg = aggregate_shapley(sh["values"], y, sh["groups"])

    acts = timed("activations", predictor.activations)
    pats = activation_patterns(acts, y)
    phys = physics_quantities(ev)
    layers = list(acts)

    # ---- coverage
    t0 = time.perf_counter()
    sub = _subsample(len(ev), n_coverage, seed)
    acts_sub = {k: v[sub] for k, v in acts.items()}
    phys_sub = {k: v[sub] for k, v in phys.items()}
    neuron_cov = {qn: coverage_per_dimension(acts_sub[LATENT], v) for qn, v in phys_sub.items()}
    layer_cov = _layer_coverage(acts_sub, phys_sub)
    lat3 = pca(acts_sub[LATENT], N_PCS_COVERAGE)["scores"]
    u = uniform_scores(lat3)
    # The bandwidths information_coverage sweeps for these 3 PCs (known without any quantity).
    sweep_h = (np.asarray(H_FACTORS, np.float64) * silverman(*lat3.shape)).tolist()
    gof = [kde_goodness_of_fit(u, h, seed=seed) for h in sweep_h]
    timings["coverage"] = time.perf_counter() - t0

    # ---- latent physics
    lat_pca = pca(acts[LATENT], N_PCS)
    pc_corr = correlations(lat_pca["scores"], phys)
    dim_corr = correlations(acts[LATENT], phys)

    # ---- influence split (training events)
    t0 = time.perf_counter()
    si_dir = (
        Path(influence_dir)
        if influence_dir
        else Path(run.run_dir) / "influence" / ("self_influence_train")
    )
    si = scored_self_influence(run, si_dir, split="train", progress=progress)
    keep = remove_top_fraction(si.total, q)
    disc_pos = np.flatnonzero(~keep)
    cap = len(disc_pos) if n_events is None else min(len(disc_pos), n_events)
    rng = np.random.default_rng([seed, 1])
    disc_pos = np.sort(rng.permutation(disc_pos)[:cap])
    kept_pos = np.sort(rng.permutation(np.flatnonzero(keep))[:cap])
    split = {}
    for name, p in (("kept", kept_pos), ("discarded", disc_pos)):
        pr = BatchedPredictor(run.model, params, train.select(p), batch_size)
        split[name] = diagnose(
            pr,
            feature_groups,
            shapley_groups,
            baseline,
            repeats=repeats,
            seed=seed,
            n_coverage=n_coverage,
            shapley_method=shapley_method,
            n_permutations=n_permutations,
            progress=False,
        )
    align_quantities(split)
    timings["influence_split"] = time.perf_counter() - t0
    clusters = timed(
        "clusters",
        clusters_section,
        run.model,
        params,
        run.checkpoints.select([k_best]),
        train,
        si.total,
        keep,
        out,
        n_events=n_events or 10_000,
        seed=seed,
        class_names=cnames,
        progress=progress,
    )

    # ---- timing at a fixed event count (test events tiled)
    timing = None
    if timing_events:
        timing = time_estimators(
            run.model,
            params,
            test,
            timing_events,
            feature_groups,
            shapley_groups,
            baseline,
            repeats=repeats,
            seed=seed,
            shapley_method=shapley_method,
            n_permutations=n_permutations,
            batch_size=batch_size,
            progress=progress,
        )

    # ---- sections 7-9: LRP, correlation-aware importance, constituent-level coverage
    later, later_figs = timed(
        "sections_7_9",
        run_sections,
        run.model,
        params,
        gs,
        predictor,
        feature_groups,
        baseline,
        perm,
        phys,
        {qn: layer_cov[LATENT][qn]["coverage"] for qn in phys},
        out,
        normalizer=run.data.normalizer,
        repeats=repeats,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
    )

    # ---- figures (those about physics quantities only when the run has some)
    figs = {
        "importance": plots.importance(perm, mask, out / "importance.png"),
        "shapley": plots.shapley(sh["values"], sh["groups"], y, out / "shapley.png", cnames),
        "rna": plots.rna(pats, out / "activation_patterns.png", cnames),
    }
    if phys:
        figs["coverage_neurons"] = plots.heatmap(
            np.array([neuron_cov[qn] for qn in phys]).T[lat_order(neuron_cov)],
            [f"{LATENT}[{j}]" for j in lat_order(neuron_cov)],
            list(phys),
            out / "coverage_neurons.png",
            f"coverage by single latent neurons ({LATENT}), best 20",
            vmin=0,
            vmax=1,
        )
        figs["coverage_layers"] = plots.heatmap(
            np.array([[layer_cov[la][qn]["coverage"] for qn in phys] for la in layers]),
            layers,
            list(phys),
            out / "coverage_layers.png",
            f"coverage by each layer's {N_PCS_COVERAGE} leading PCs",
            vmin=0,
            vmax=1,
        )
        figs["coverage_sweep"] = plots.coverage_sweep(
            {qn: layer_cov[LATENT][qn]["sweep"] for qn in phys},
            {
                "h": sweep_h,
                "ks": [g["ks"] for g in gof],
                "critical_95": [g["critical_95"] for g in gof],
            },
            out / "coverage_bandwidth.png",
            f"{LATENT}, {N_PCS_COVERAGE} PCs: coverage vs bandwidth",
        )
        figs["latent_corr"] = plots.heatmap(
            np.array([pc_corr[qn] for qn in phys]).T,
            [f"PC {i + 1}" for i in range(N_PCS)],
            list(phys),
            out / "latent_correlation.png",
            "Pearson correlation of latent PCs with physics",
            vmin=-1,
            vmax=1,
            cmap="coolwarm",
        )
    colour = _colour_quantity(phys)
    figs["embedding"] = plots.embedding(
        lat_pca["scores"],
        y,
        phys[colour] if colour else z0,
        colour or "GNN output (logit)",
        out / "latent_pca.png",
        lat_pca["explained"],
        cnames,
    )
    figs["influence_split"] = plots.influence_split(split, out / "kept_vs_discarded.png")
    figs.update(later_figs)
    timings["total"] = time.perf_counter() - t_start

    result = {
        "date": date.today().isoformat(),
        "command": command,
        "run_dir": str(run.run_dir),
        "dataset": dataset,
        "model": run.config.model,
        "checkpoint": ckpt_desc,
        "checkpoint_step": int(run.checkpoints.steps[k_best]),
        "checkpoint_hash": run.checkpoints.hashes[k_best] if run.checkpoints.hashes else None,
        "data_fingerprint": run.data.fingerprint,
        "settings": {
            "n_events": len(ev),
            "repeats": repeats,
            "q": q,
            "seed": seed,
            "shapley_method": sh["method"],
            "n_permutations": sh["n_permutations"],
            "n_coverage": len(sub),
            "batch_size": batch_size,
            "feature_groups": {k: [f"{a}:{b}" for a, b in v] for k, v in feature_groups.items()},
            "shapley_groups": {k: [f"{a}:{b}" for a, b in v] for k, v in shapley_groups.items()},
        },
        "environment": provenance(),
        "test": {"auroc": _finite(auroc(y, z0)), "loss": float(bce(z0, y).mean())},
        "permutation_importance": perm,
        "masking_importance": mask,
        "shapley": {
            "aggregate": sh_agg,
            "method": sh["method"],
            "n_evaluations": sh["n_evaluations"],
            "efficiency_max_abs_gap": efficiency_gap,
            "mean_f_x": float(sh["f_x"].mean()),
            "mean_f_baseline": float(sh["f_baseline"].mean()),
        },
        "activation_patterns": {
            k: {
                "sparsity_0": p["sparsity_0"],
                "sparsity_1": p["sparsity_1"],
                "mean_abs_diff": float(p["diff"].mean()),
            }
            for k, p in pats.items()
        },
        "coverage": {
            "per_layer": {
                la: {
                    qn: {k: r[k] for k in ("coverage", "h", "H_Y", "H_Y_given_X")}
                    for qn, r in d.items()
                }
                for la, d in layer_cov.items()
            },
            "per_neuron_max": {qn: float(np.max(c)) for qn, c in neuron_cov.items()},
            "per_neuron_argmax": {qn: int(np.argmax(c)) for qn, c in neuron_cov.items()},
            "sweep_latent": {qn: layer_cov[LATENT][qn]["sweep"] for qn in phys},
            "goodness_of_fit": [{"h": h, **g} for h, g in zip(sweep_h, gof, strict=True)],
            "silverman_h": silverman(len(sub), N_PCS_COVERAGE),
        },
        "latent": {
            "explained_variance": lat_pca["explained"].tolist(),
            "pc_correlation": {qn: c.tolist() for qn, c in pc_corr.items()},
            "max_abs_neuron_correlation": {
                qn: float(np.abs(c).max()) for qn, c in dim_corr.items()
            },
        },
        "influence_split": {
            "q": q,
            "n_train": len(train),
            "n_discarded_total": int((~keep).sum()),
            "store": str(si_dir),
            **split,
        },
        "later_sections": later,
        "clusters": clusters,
        "timing_seconds": timings,
        "timing_fixed_events": timing,
        "figures": {k: Path(v).name for k, v in figs.items()},
    }
    atomic_write_json(out / "explain.json", result)
    atomic_write_text(out / "report.md", render_report(result, cnames))
    return result


def lat_order(neuron_cov: dict, top: int = 20) -> np.ndarray:
    """Latent neurons with the highest coverage of any quantity, best first."""
    m = np.max(np.array(list(neuron_cov.values())), axis=0)
    return np.argsort(-m, kind="stable")[:top]


def _colour_quantity(phys: dict) -> str | None:
    for name in ("jet_mass", "m_ll", "met", "chg_mult"):
        if name in phys:
            return name
    return next(iter(phys), None)


def align_quantities(split: dict) -> None:
    """Gives the kept and discarded diagnostics the same physics quantities, in place: a
    quantity left out of one subset (constant there, or separating its classes perfectly, as
    happens on small subsets) is ``None`` there, shown as n/a."""
    for key in ("coverage", "max_abs_corr_pc", "physics_mean"):
        names = list(dict.fromkeys(q for d in split.values() for q in d[key]))
        for d in split.values():
            d[key] = {q: d[key].get(q) for q in names}


# --------------------------------------------------------------------- timing
def time_estimators(
    model,
    params,
    gs,
    n_events,
    feature_groups,
    shapley_groups,
    baseline,
    *,
    repeats,
    seed,
    shapley_method,
    n_permutations,
    batch_size,
    progress=False,
) -> dict:
    """Wall-clock seconds of permutation importance and Shapley values on ``n_events`` events
    (``gs`` tiled to that size), compilation timed apart."""
    pos = np.resize(np.arange(len(gs)), n_events)
    tiled = gs.select(pos)
    t0 = time.perf_counter()
    pr = BatchedPredictor(model, params, tiled, batch_size)
    pr()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(3):
        pr()
    one = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    permutation_importance(
        pr, tiled.events, feature_groups, repeats=repeats, seed=seed, progress=progress
    )
    perm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sh = shapley_values(
        pr,
        tiled.events,
        shapley_groups,
        baseline=baseline,
        method=shapley_method,
        n_permutations=n_permutations,
        seed=seed,
        progress=progress,
    )
    sh_s = time.perf_counter() - t0
    return {
        "n_events": n_events,
        "source": f"test split ({len(gs)} events) tiled",
        "compile_and_first_call": compile_s,
        "one_prediction": one,
        "permutation_importance": perm_s,
        "permutation_predictions": repeats * len(feature_groups) + 1,
        "shapley": sh_s,
        "shapley_predictions": sh["n_evaluations"],
        "shapley_method": sh["method"],
    }


# --------------------------------------------------------------------- markdown
def _pm(v, e, f="{:.4f}"):
    return f"{f.format(v)} ± {f.format(e)}"


def render_report(r: dict, cnames=("class 0", "class 1")) -> str:
    s = r["settings"]
    env = r["environment"]
    lines = [
        f"# Explaining the model: {r['dataset']}, {r['model']}",
        "",
        f"Run `{r['run_dir']}`, {r['checkpoint']}, data fingerprint {r['data_fingerprint']}. "
        f"{s['n_events']} test events ({cnames[0]} = 0, {cnames[1]} = 1), test AUROC "
        f"{r['test']['auroc']:.4f}, loss {r['test']['loss']:.4f}. Date {r['date']}; "
        f"{env['hardware']}, jax {env['jax']} ({env['backend']}); seed "
        f"{s['seed']}, {s['repeats']} repeats.",
        "",
    ]
    if r["command"]:
        lines += [f"Command: `{r['command']}`", ""]
    lines += [
        "## 1. Feature importance",
        "",
        f"Permutation importance ({s['repeats']} shuffles each; node features shuffled across "
        "all tracks of all events, event-level inputs across events) and mean masking "
        "(arXiv 2210.04371; feature set to its training mean; relative change of the "
        "probability of the event's own class; ± is a bootstrap std over events).",
        "",
        "![importance](importance.png)",
        "",
        "| feature | loss increase | AUROC drop | masking delta AUC | rel. change "
        f"{cnames[0]} | rel. change {cnames[1]} |",
        "|---|---|---|---|---|---|",
    ]
    perm, mask = r["permutation_importance"]["groups"], r["masking_importance"]["groups"]
    for n in sorted(perm, key=lambda k: -perm[k]["delta_loss"]):
        p, m = perm[n], mask[n]
        lines.append(
            f"| {n} | {_pm(p['delta_loss'], p['delta_loss_std'])} | "
            f"{_pm(p['delta_auroc'], p['delta_auroc_std'])} | "
            f"{_pm(m['delta_auc'], m['delta_auc_std'])} | "
            f"{_pm(m['rel_change_0'], m['rel_change_0_std'], '{:.3f}')} | "
            f"{_pm(m['rel_change_1'], m['rel_change_1_std'], '{:.3f}')} |"
        )
    sh = r["shapley"]
    lines += [
        "",
        "## 2. Shapley values",
        "",
        f"Players: {_players(s['shapley_groups'])}. "
        f"Method {sh['method']} ({sh['n_evaluations']} coalitions, each one prediction over "
        f"all events); value = logit with absent groups at their training mean. Efficiency: "
        f"max over events of |sum phi - (f(x) - f(baseline))| = {sh['efficiency_max_abs_gap']:.2e}"
        f" (mean f(x) {sh['mean_f_x']:.3f}, mean f(baseline) {sh['mean_f_baseline']:.3f}).",
        "",
        "![shapley](shapley.png)",
        "",
        f"| group | mean abs phi | mean phi {cnames[0]} | mean phi {cnames[1]} |",
        "|---|---|---|---|",
    ]
    agg = sh["aggregate"]
    for n in sorted(agg, key=lambda k: -agg[k]["mean_abs"]):
        a = agg[n]
        lines.append(f"| {n} | {a['mean_abs']:.4f} | {a['mean_0']:+.4f} | {a['mean_1']:+.4f} |")
    cov = r["coverage"]
    quantities = list(cov["per_neuron_max"])
    figs = r.get("figures", {})
    lines += [
        "",
        "## 3. Information coverage",
        "",
    ]
    if not quantities:
        lines += [
            "No physics quantities to cover: the data source has none (they are optional), or "
            "every one is constant or separates the classes perfectly on these events. Only the "
            "goodness of fit of the latent density estimate is reported.",
            "",
        ]
    lines += [
        "coverage = (H(Y) - H(Y|X)) / H(Y), Y binned into 10 equal-population bins, p(y|x) from "
        "leave-one-out Gaussian KDEs on rank-transformed X, bandwidth chosen by leave-one-out "
        f"cross-entropy over a sweep (Silverman h = {cov['silverman_h']:.3f} for 3 dimensions). "
        f"{s['n_coverage']} test events.",
        "",
        "| X | " + " | ".join(quantities) + " |",
        "|---|" + "---|" * len(quantities),
    ]
    for la, d in cov["per_layer"].items() if quantities else ():
        lines.append(
            f"| {la} (3 PCs) | " + " | ".join(f"{d[q]['coverage']:.3f}" for q in quantities) + " |"
        )
    if quantities:
        lines.append(
            f"| best single {LATENT} neuron | "
            + " | ".join(
                f"{cov['per_neuron_max'][q]:.3f} (#{cov['per_neuron_argmax'][q]})"
                for q in quantities
            )
            + " |"
        )
    else:
        del lines[-2:]  # no table without quantities
    g = cov["goodness_of_fit"]
    if "coverage_layers" in figs:
        lines += [
            "",
            "![coverage by layer](coverage_layers.png) ![coverage by neuron](coverage_neurons.png)",
        ]
    lines += [
        "",
        "Bandwidth sweep and goodness of fit (KDE of the latent's 3 PCs fitted on half the "
        "events, sampled, compared with the other half by KS):",
        "",
        "| h | " + " | ".join(f"{x['h']:.3f}" for x in g) + " |",
        "|---|" + "---|" * len(g),
        "| max KS | " + " | ".join(f"{x['ks']:.3f}" for x in g) + " |",
        "| passed (KS < 95 % critical) | "
        + " | ".join("yes" if x["passed"] else "no" for x in g)
        + " |",
        "",
        *(["![bandwidth](coverage_bandwidth.png)", ""] if "coverage_sweep" in figs else []),
        "## 4. Neural activation patterns",
        "",
        "Relative neural activation per layer and class (summed activations over the test "
        "events normalised by the layer maximum of that class; neurons sorted by the "
        f"{cnames[1]} class); sparsity = fraction of neurons with RNA < 0.2.",
        "",
        f"| layer | sparsity {cnames[0]} | sparsity {cnames[1]} | mean abs difference |",
        "|---|---|---|---|",
    ]
    for la, p in r["activation_patterns"].items():
        lines.append(
            f"| {la} | {p['sparsity_0']:.3f} | {p['sparsity_1']:.3f} | {p['mean_abs_diff']:.3f} |"
        )
    lat = r["latent"]
    lines += [
        "",
        "![activation patterns](activation_patterns.png)",
        "",
        "## 5. Latent physics",
        "",
        f"Latent = {LATENT} (pooled graph representation before the readout, event-level "
        "inputs excluded). Explained variance of the first PCs: "
        + ", ".join(f"{100 * v:.1f} %" for v in lat["explained_variance"][:5])
        + ".",
        "",
        "| quantity | corr. with PC 1 | corr. with PC 2 | max abs corr. over PCs 1-10 | "
        "max abs corr. single neuron |",
        "|---|---|---|---|---|",
    ]
    for q, c in lat["pc_correlation"].items():
        lines.append(
            f"| {q} | {c[0]:+.3f} | {c[1]:+.3f} | {max(abs(v) for v in c):.3f} | "
            f"{lat['max_abs_neuron_correlation'][q]:.3f} |"
        )
    isp = r["influence_split"]
    k, d = isp["kept"], isp["discarded"]
    if not lat["pc_correlation"]:
        lines.append("| (no physics quantities in this run) | | | | |")
    lines += [
        "",
        (
            "![latent correlation](latent_correlation.png) ![latent PCA](latent_pca.png)"
            if "latent_corr" in figs
            else "![latent PCA](latent_pca.png)"
        ),
        "",
        "## 6. Influence meets explanation",
        "",
        f"GNN-IRST rule: drop the top q = {isp['q']} of the training events by TracIn "
        f"self-influence ({isp['n_discarded_total']} of {isp['n_train']}); the diagnostics on "
        f"{d['n_events']} discarded events and an equally large random sample of kept ones.",
        "",
        "| | kept | discarded |",
        "|---|---|---|",
        f"| events | {k['n_events']} | {d['n_events']} |",
        f"| {cnames[1]} fraction | {k['gluon_fraction']:.3f} | {d['gluon_fraction']:.3f} |",
        f"| AUROC | {_fmt(k['auroc'])} | {_fmt(d['auroc'])} |",
        f"| loss | {k['loss']:.4f} | {d['loss']:.4f} |",
    ]
    for n in k["permutation"]["groups"]:
        lines.append(
            f"| permutation loss increase: {n} | {k['permutation']['groups'][n]['delta_loss']:.4f}"
            f" | {d['permutation']['groups'][n]['delta_loss']:.4f} |"
        )
    for n in k["shapley"]:
        lines.append(
            f"| mean abs Shapley: {n} | {k['shapley'][n]['mean_abs']:.4f} | "
            f"{d['shapley'][n]['mean_abs']:.4f} |"
        )
    for la in k["sparsity"]:
        lines.append(f"| RNA sparsity: {la} | {k['sparsity'][la]:.3f} | {d['sparsity'][la]:.3f} |")
    for q in dict.fromkeys([*k["coverage"], *d["coverage"]]):
        lines.append(
            f"| coverage of {q} by latent | {_fmt(k['coverage'].get(q), 3)} | "
            f"{_fmt(d['coverage'].get(q), 3)} |"
        )
    for q in dict.fromkeys([*k["physics_mean"], *d["physics_mean"]]):
        lines.append(
            f"| mean {q} | {_fmt(k['physics_mean'].get(q), 3)} | "
            f"{_fmt(d['physics_mean'].get(q), 3)} |"
        )
    lines += ["", "![kept vs discarded](kept_vs_discarded.png)"]
    lines += render_sections(r.get("later_sections"))
    lines += render_clusters(r.get("clusters"), cnames)
    t = r["timing_seconds"]
    lines += [
        "",
        "## Timing",
        "",
        f"On these {s['n_events']} events: one prediction {t['one_prediction']:.3f} s, "
        f"permutation importance {t['permutation_importance']:.1f} s, mean masking "
        f"{t['masking_importance']:.1f} s, Shapley {t['shapley']:.1f} s, coverage "
        f"{t['coverage']:.1f} s, influence split {t['influence_split']:.1f} s, total "
        f"{t['total']:.0f} s.",
    ]
    tf = r["timing_fixed_events"]
    if tf:
        lines += [
            "",
            f"At {tf['n_events']} events ({tf['source']}): compile + first call "
            f"{tf['compile_and_first_call']:.1f} s, one prediction {tf['one_prediction']:.3f} s, "
            f"permutation importance {tf['permutation_importance']:.1f} s "
            f"({tf['permutation_predictions']} predictions), Shapley {tf['shapley']:.1f} s "
            f"({tf['shapley_predictions']} coalitions, {tf['shapley_method']}).",
        ]
    return "\n".join(lines) + "\n"


def _players(groups: dict) -> str:
    return ", ".join(f"**{k}** ({', '.join(v)})" for k, v in groups.items())


def _fmt(x, digits: int = 4):
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"
