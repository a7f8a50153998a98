"""The clusters-and-embeddings section of the explain report (training events).

For a sample of training events, two representations: (a) the pooled latent ``readout_in`` of the
explained checkpoint and (b) attribution features, per-event loss gradients at that checkpoint
projected to ``proj_dim`` dimensions (:func:`hepattr_jax.tracin.projected_features`, the TracIn
features of one checkpoint). For each: PCA (all sampled events), UMAP and t-SNE (subsamples),
k-means (2 initialisations) on the 10 leading standardised PCs with the elbow rule, DBSCAN on
the UMAP embedding (UMAP 200 epochs, t-SNE 500 iterations: the report's time budget),
and per cluster the class mix, physics means, self-influence and the share of two flags: the
events the GNN-IRST rule discards (top ``q`` self-influence over the whole training split) and
the events the model misclassifies (the real jets have no known label noise; a misclassified
jet is the observable stand-in for a mislabelled one). Whether the flagged events form their
own clusters is measured by :func:`~hepattr_jax.explain.clusters.flag_concentration` and the
neighbourhood enrichment (:func:`~hepattr_jax.explain.clusters.neighbour_enrichment`).

Every stage has its own progress bar; a stage that cannot run (too few events, a missing
package) is skipped with a sentence in ``skipped``, never an exception.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hepattr_jax.explain import clusters as cl

log = logging.getLogger(__name__)

N_PCS = 10
MIN_EVENTS = 30
MIN_UMAP = 200  # UMAP's neighbour graph means little on fewer (and its numba compile costs ~1 min)


@contextlib.contextmanager
def _stage(name: str, progress: bool, timings: dict, skipped: list, total: int = 1):
    """A progress bar of ``total`` steps around a stage (completed on exit); a failure becomes
    a sentence in ``skipped``."""
    t0 = time.perf_counter()
    with tqdm(total=total, desc=f"clusters: {name}", disable=not progress, leave=False) as bar:
        try:
            yield bar
        except Exception as e:  # a stage must never take the report down
            log.warning("clusters: %s skipped (%s: %s)", name, type(e).__name__, e)
            skipped.append(f"{name}: skipped ({type(e).__name__}: {e})")
        bar.update(bar.total - bar.n)
    timings[name] = time.perf_counter() - t0


def clusters_section(
    model,
    params,
    checkpoint,
    train,
    self_influence: np.ndarray,
    keep: np.ndarray,
    out_dir,
    *,
    n_events: int = 10_000,
    n_umap: int = 2000,
    n_tsne: int = 1000,
    proj_dim: int = 32,
    k_max: int = 8,
    seed: int = 0,
    batch_size: int = 512,
    class_names=("class 0", "class 1"),
    progress: bool = True,
) -> dict:
    """Runs the section on ``train`` (GraphSet of the training split) with ``self_influence``
    and the rule's ``keep`` mask (``[len(train)]``, stored order); ``checkpoint``: a one-entry
    :class:`~hepattr_jax.tracin.Checkpoints` of ``params``. Writes the figures into ``out_dir``
    and returns the numbers (JSON-ready)."""
    from hepattr_jax.explain import plots
    from hepattr_jax.explain.predict import LATENT, BatchedPredictor
    from hepattr_jax.explain.report import physics_quantities

    out = Path(out_dir)
    timings: dict[str, float] = {}
    skipped: list[str] = []
    n = len(train)
    if n < MIN_EVENTS:
        return {"skipped": [f"only {n} training events (at least {MIN_EVENTS} needed)"]}
    rng = np.random.default_rng([seed, 15])
    pos = np.sort(rng.permutation(n)[: min(n_events, n)])
    gs = train.select(pos)
    y = gs.events.labels
    si = np.asarray(self_influence, np.float64)[pos]
    flags = {"discarded": ~np.asarray(keep, bool)[pos]}
    phys = physics_quantities(gs.events)
    spaces: dict[str, np.ndarray] = {}

    with _stage("latent", progress, timings, skipped):
        pr = BatchedPredictor(model, params, gs, batch_size)
        z = pr()
        flags["misclassified"] = (z > 0) != (y > 0.5)
        spaces["latent"] = pr.activations()[LATENT]
    with _stage("gradient features", progress, timings, skipped):
        from hepattr_jax.per_example import layout_for
        from hepattr_jax.projection import Projector
        from hepattr_jax.tracin import projected_features

        f = projected_features(
            layout_for(model, gs), checkpoint, gs, Projector(proj_dim, seed=seed), progress=False
        )
        spaces["gradient"] = np.asarray(f[0], np.float64)

    sub_u = np.sort(rng.permutation(len(pos))[: min(n_umap, len(pos))])
    sub_t = np.sort(rng.permutation(len(pos))[: min(n_tsne, len(pos))])
    result: dict[str, Any] = {
        "n_events": len(pos),
        "n_train": n,
        "n_umap": len(sub_u),
        "n_tsne": len(sub_t),
        "proj_dim": proj_dim,
        "flags_overall": {k: float(v.mean()) for k, v in flags.items()},
        "spaces": {},
    }
    figures = {}
    for space, x in spaces.items():
        r: dict = {"dim": int(x.shape[1])}
        emb: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with _stage(f"{space}: PCA", progress, timings, skipped):
            scores, expl = cl.pca_embedding(x, N_PCS)
            r["pca_explained"] = expl.tolist()
            emb["PCA"] = (scores[:, :2], np.arange(len(x)))
        if len(sub_u) < MIN_UMAP:
            skipped.append(f"{space}: UMAP and DBSCAN skipped ({len(sub_u)} < {MIN_UMAP} events)")
        else:
            with _stage(f"{space}: UMAP ({len(sub_u)} events)", progress, timings, skipped):
                emb["UMAP"] = (cl.umap_embedding(x[sub_u], n_epochs=200, seed=seed), sub_u)
        with _stage(f"{space}: t-SNE ({len(sub_t)} events)", progress, timings, skipped):
            emb["t-SNE"] = (cl.tsne_embedding(x[sub_t], max_iter=500, seed=seed), sub_t)
        with _stage(f"{space}: k-means", progress, timings, skipped, total=k_max) as bar:
            km = cl.kmeans_elbow(
                cl.standardize(scores),
                range(1, k_max + 1),
                n_init=2,
                seed=seed,
                progress=lambda: bar.update(1),
            )
            r["kmeans"] = _clustering(km["labels"], y, phys, si, flags)
            r["kmeans"].update(k=km["k"], inertia=km["inertia"], k_elbow=km["k_elbow"])
        if "UMAP" in emb:
            with _stage(f"{space}: DBSCAN", progress, timings, skipped):
                db = cl.dbscan_clusters(cl.standardize(emb["UMAP"][0]), min_samples=10)
                sel = sub_u
                r["dbscan"] = _clustering(
                    db["labels"],
                    y[sel],
                    {q: v[sel] for q, v in phys.items()},
                    si[sel],
                    {k: v[sel] for k, v in flags.items()},
                )
                r["dbscan"].update(
                    eps=db["eps"], noise_fraction=db["noise_fraction"], n_clusters=db["n_clusters"]
                )
        with _stage(f"{space}: neighbours", progress, timings, skipped):
            xs = cl.standardize(scores)
            r["neighbour_enrichment"] = {
                k: cl.neighbour_enrichment(xs, v, k=10) for k, v in flags.items()
            }
        with _stage(f"{space}: figures", progress, timings, skipped):
            colours = {
                "class": (y, "coolwarm"),
                "self-influence (log)": (np.log10(np.maximum(si, si[si > 0].min())), "viridis"),
                "discarded (top q SI)": (flags["discarded"].astype(float), "coolwarm"),
            }
            if "misclassified" in flags:
                colours["misclassified"] = (flags["misclassified"].astype(float), "coolwarm")
            if "kmeans" in r:
                colours[f"k-means (k = {r['kmeans']['k_elbow']})"] = (km["labels"], "tab10")
            figures[f"clusters_{space}_embeddings"] = plots.embeddings_grid(
                emb,
                colours,
                out / f"clusters_{space}_embeddings.png",
                f"{space} space: {len(pos)} training events",
            ).name
            if "kmeans" in r:
                figures[f"clusters_{space}_elbow"] = plots.elbow(
                    r["kmeans"]["k"],
                    r["kmeans"]["inertia"],
                    r["kmeans"]["k_elbow"],
                    out / f"clusters_{space}_elbow.png",
                    f"k-means on {space} (10 PCs)",
                ).name
                figures[f"clusters_{space}_kmeans"] = plots.cluster_summary(
                    r["kmeans"]["clusters"],
                    list(flags),
                    out / f"clusters_{space}_kmeans.png",
                    f"k-means clusters of the {space} space",
                    class_names,
                ).name
        result["spaces"][space] = r
    result.update(figures=figures, timing_seconds=timings, skipped=skipped)
    return result


def _clustering(labels, y, phys, si, flags) -> dict:
    return {
        "clusters": cl.cluster_summary(labels, y, phys, si, flags),
        "concentration": {k: cl.flag_concentration(labels, v) for k, v in flags.items()},
    }


# --------------------------------------------------------------------- markdown
def render_clusters(c: dict | None, cnames=("class 0", "class 1")) -> list[str]:
    """The report's section (markdown lines); a sentence when the section was skipped."""
    lines = ["", "## 10. Clusters and embeddings (training events)", ""]
    if not c:
        return lines + ["Not run."]
    if "spaces" not in c:
        return lines + ["Skipped: " + "; ".join(c.get("skipped", [])) + "."]
    fo = c["flags_overall"]
    lines += [
        f"{c['n_events']} of {c['n_train']} training events; (a) the pooled latent, (b) loss "
        f"gradients at the explained checkpoint projected to d = {c['proj_dim']}. PCA on all "
        f"of them, UMAP on {c['n_umap']} and t-SNE on {c['n_tsne']} (seeded subsamples); k-means "
        "on the 10 leading standardised PCs, k by the elbow rule; DBSCAN on the UMAP embedding "
        "(eps at the knee of the 10-NN distances). Flags: discarded = top q self-influence "
        f"({100 * fo['discarded']:.1f} % here)"
        + (
            f", misclassified ({100 * fo['misclassified']:.1f} %; no label noise is known in "
            "these jets, so misclassification stands in for mislabelling)"
            if "misclassified" in fo
            else ""
        )
        + ". Own clusters = share of the flagged events in clusters where they are the "
        "majority; NN enrichment = P(10 nearest neighbours flagged | flagged) / P(flagged) "
        "(1 = scattered at random).",
        "",
        "| space | clustering | clusters | flag | max share in a cluster | own clusters | "
        "NN enrichment |",
        "|---|---|---|---|---|---|---|",
    ]
    for space, r in c["spaces"].items():
        for meth in ("kmeans", "dbscan"):
            if meth not in r:
                continue
            m = r[meth]
            ncl = m.get("k_elbow", m.get("n_clusters"))
            for f, con in m["concentration"].items():
                lines.append(
                    f"| {space} | {meth} | {ncl} | {f} | {con['max_share']:.3f} | "
                    f"{con['in_majority_clusters']:.3f} | "
                    f"{r.get('neighbour_enrichment', {}).get(f, float('nan')):.2f} |"
                )
    for space, r in c["spaces"].items():
        if "kmeans" not in r:
            continue
        rows = r["kmeans"]["clusters"]
        flags = list(fo)
        qs = [k[5:] for k in rows[0] if k.startswith("mean_")][:4]
        lines += [
            "",
            f"k-means clusters of the {space} space (k = {r['kmeans']['k_elbow']}):",
            "",
            f"| cluster | events | {cnames[1]} fraction | "
            + " | ".join(f"mean {q}" for q in qs)
            + " | SI median | SI q90 | "
            + " | ".join(f"{f} share" for f in flags)
            + " |",
            "|---" * (5 + len(qs) + len(flags)) + "|",
        ]
        for row in rows:
            lines.append(
                f"| {row['cluster']} | {row['n']} | {row['class1_fraction']:.3f} | "
                + " | ".join(f"{row['mean_' + q]:.3g}" for q in qs)
                + f" | {row['si_median']:.3g} | {row['si_q90']:.3g} | "
                + " | ".join(f"{row[f + '_share']:.3f}" for f in flags)
                + " |"
            )
    figs = c.get("figures", {})
    if figs:
        lines += ["", " ".join(f"![{k}]({v})" for k, v in figs.items())]
    t = c["timing_seconds"]
    lines += ["", "Time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in t.items()) + "."]
    if c["skipped"]:
        lines += ["", "Skipped: " + "; ".join(c["skipped"]) + "."]
    return lines
