"""Embeddings and clusters of per-event representations (plain NumPy + scikit-learn + umap-learn).

The representations are the pooled latent of the model (``readout_in``, see
:mod:`hepattr_jax.explain.predict`) or attribution features (projected per-event gradients,
:func:`hepattr_jax.tracin.projected_features`); every function here takes ``x [N, D]``.

* **Embeddings** (2-D): PCA (:func:`hepattr_jax.explain.activations.pca`), UMAP (McInnes et al.,
  arXiv 1802.03426) and t-SNE (van der Maaten & Hinton 2008) of the standardised features.
* **k-means** for ``k = 1..k_max`` and the **elbow**: with the inertia ``W(k)`` (within-cluster
  sum of squares) normalised to [0, 1] on both axes, the chosen ``k`` is the point farthest below
  the chord from the first to the last point ("kneedle", Satopaa et al. 2011).
* **DBSCAN** (Ester et al. 1996) with ``eps`` at the knee of the sorted distances to the
  ``min_samples``-th neighbour (the same kneedle rule on an increasing convex curve).
* **Per-cluster summary**: size, class mix, physics means, self-influence quantiles and the share
  of flagged events (e.g. those a removal rule discards) in each cluster, with the enrichment
  ``share / overall share``.
* **Neighbourhood enrichment** of a flag: ``P(neighbour flagged | event flagged) / P(flagged)``
  over the ``k`` nearest neighbours; 1 when the flagged events are scattered at random, large
  when they sit together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from hepattr_jax.explain.activations import pca


def standardize(x: np.ndarray) -> np.ndarray:
    """Columns of ``x [N, D]`` to zero mean and unit variance (constant columns to 0), float64."""
    x = np.asarray(x, np.float64)
    sd = x.std(axis=0)
    return np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 0)


def pca_embedding(x: np.ndarray, n_components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [N, k], explained variance fraction [k])`` of standardised ``x``."""
    p = pca(standardize(x), n_components)
    return p["scores"], p["explained"]


def umap_embedding(
    x: np.ndarray,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """UMAP ``[N, 2]`` of standardised ``x`` (umap-learn; seeded, hence single-threaded;
    ``n_epochs`` None: umap's default, 500 below 10,000 events)."""
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap's notices about n_jobs with a fixed seed
        red = umap.UMAP(
            n_components=2,
            n_neighbors=min(n_neighbors, len(x) - 1),
            min_dist=min_dist,
            n_epochs=n_epochs,
            random_state=seed,
        )
        return np.asarray(red.fit_transform(standardize(x)), np.float64)


def tsne_embedding(
    x: np.ndarray, *, perplexity: float = 30.0, max_iter: int = 1000, seed: int = 0
) -> np.ndarray:
    """t-SNE ``[N, 2]`` of standardised ``x`` (scikit-learn, Barnes-Hut, PCA initialisation)."""
    from sklearn.manifold import TSNE

    perp = min(perplexity, (len(x) - 1) / 3)
    return np.asarray(
        TSNE(2, perplexity=perp, init="pca", max_iter=max_iter, random_state=seed).fit_transform(
            standardize(x)
        ),
        np.float64,
    )


def knee(x: ArrayLike, y: ArrayLike, *, decreasing: bool = True) -> int:
    """Index of the knee of a convex curve ``y(x)`` (kneedle): both axes scaled to [0, 1], the
    point farthest below the chord through the end points. ``decreasing``: an elbow curve (the
    inertia); else an increasing one (sorted k-distances)."""
    xa = np.asarray(x, np.float64)
    ya = np.asarray(y, np.float64)
    if len(xa) < 3:
        return 0
    xs = (xa - xa[0]) / (xa[-1] - xa[0])
    span = ya.max() - ya.min()
    if span == 0:
        return 0
    ys = (ya - ya.min()) / span
    chord = ys[0] + (ys[-1] - ys[0]) * xs
    return int(np.argmax(chord - ys))


def kmeans_elbow(
    x: np.ndarray, ks: Sequence[int], *, n_init: int = 4, seed: int = 0, progress=None
) -> dict:
    """k-means (scikit-learn, ``n_init`` initialisations) of ``x [N, D]`` for each ``k`` in ``ks``:
    ``{"k": ks, "inertia": [len(ks)], "k_elbow", "labels": [N] at k_elbow}``. ``progress``:
    an optional callable run after each k (a progress bar's ``update``)."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, np.float64)
    ks = [int(k) for k in ks if k <= len(x)]
    inertia, labels = [], {}
    for k in ks:
        km = KMeans(k, n_init=n_init, random_state=seed).fit(x)
        inertia.append(float(km.inertia_))
        labels[k] = km.labels_.astype(np.int64)
        if progress is not None:
            progress()
    k_elbow = ks[knee(ks, inertia)]
    return {"k": ks, "inertia": inertia, "k_elbow": k_elbow, "labels": labels[k_elbow]}


def dbscan_clusters(x: np.ndarray, *, min_samples: int = 10, eps: float | None = None) -> dict:
    """DBSCAN of ``x [N, D]``: ``{"labels" [N] (-1 = noise), "eps", "n_clusters",
    "noise_fraction"}``; ``eps`` by default at the knee of the sorted ``min_samples``-th
    neighbour distances."""
    from sklearn.cluster import DBSCAN
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, np.float64)
    if eps is None:
        d, _ = NearestNeighbors(n_neighbors=min_samples).fit(x).kneighbors(x)
        kd = np.sort(d[:, -1])
        eps = float(kd[knee(np.arange(len(kd)), kd, decreasing=False)])
        eps = eps if eps > 0 else float(kd[kd > 0].min(initial=1.0))
    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(x).astype(np.int64)
    return {
        "labels": labels,
        "eps": eps,
        "n_clusters": int(labels.max() + 1),
        "noise_fraction": float(np.mean(labels < 0)),
    }


def cluster_summary(
    labels: np.ndarray,
    classes: np.ndarray,
    quantities: Mapping[str, np.ndarray] | None = None,
    self_influence: np.ndarray | None = None,
    flags: Mapping[str, np.ndarray] | None = None,
) -> list[dict]:
    """One dict per cluster id (sorted; DBSCAN noise ``-1`` is a cluster of its own):
    ``cluster``, ``n``, ``class1_fraction``, ``mean_<quantity>``, ``si_median``, ``si_q90``,
    ``si_mean``, and per flag ``<flag>_n`` (flagged events in the cluster), ``<flag>_share``
    (their fraction of the cluster), ``<flag>_of_all`` (fraction of all flagged events that are in
    the cluster) and ``<flag>_enrichment`` (share / overall share)."""
    labels = np.asarray(labels)
    classes = np.asarray(classes)
    out = []
    for c in np.unique(labels):
        m = labels == c
        row = {"cluster": int(c), "n": int(m.sum()), "class1_fraction": float(classes[m].mean())}
        for q, v in (quantities or {}).items():
            row[f"mean_{q}"] = float(np.asarray(v, np.float64)[m].mean())
        if self_influence is not None:
            s = np.asarray(self_influence, np.float64)[m]
            row.update(
                si_median=float(np.median(s)),
                si_q90=float(np.quantile(s, 0.9)),
                si_mean=float(s.mean()),
            )
        for f, v in (flags or {}).items():
            v = np.asarray(v, bool)
            k = int(v[m].sum())
            base = v.mean()
            row[f"{f}_n"] = k
            row[f"{f}_share"] = k / row["n"]
            row[f"{f}_of_all"] = k / v.sum() if v.any() else 0.0
            row[f"{f}_enrichment"] = (k / row["n"]) / base if base > 0 else 0.0
        out.append(row)
    return out


def flag_concentration(labels: np.ndarray, flag: np.ndarray, majority: float = 0.5) -> dict:
    """How much a flag gathers in clusters: ``max_share`` (largest flagged fraction of a
    cluster), ``max_enrichment``, ``in_majority_clusters`` (fraction of flagged events in
    clusters whose flagged share exceeds ``majority``: "their own clusters")."""
    rows = cluster_summary(labels, np.zeros(len(labels)), flags={"f": flag})
    flag = np.asarray(flag, bool)
    own = sum(r["f_n"] for r in rows if r["f_share"] > majority)
    return {
        "max_share": max(r["f_share"] for r in rows),
        "max_enrichment": max(r["f_enrichment"] for r in rows),
        "in_majority_clusters": own / flag.sum() if flag.any() else 0.0,
        "overall_share": float(flag.mean()),
    }


def neighbour_enrichment(x: np.ndarray, flag: np.ndarray, k: int = 10) -> float:
    """``P(neighbour flagged | event flagged) / P(flagged)`` over the ``k`` nearest neighbours
    (Euclidean, the event itself excluded) of the flagged events of ``x [N, D]``; 1 for flags
    scattered at random, ``1 / P(flagged)`` at most."""
    from sklearn.neighbors import NearestNeighbors

    flag = np.asarray(flag, bool)
    if not flag.any() or flag.all():
        return float("nan")
    k = min(k, len(x) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(np.asarray(x)[flag])
    return float(flag[idx[:, 1:]].mean() / flag.mean())
