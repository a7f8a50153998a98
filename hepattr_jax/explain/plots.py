"""Figures of the explanation report (files only; made through :mod:`hepattr_jax.plotting`,
so importing this module leaves the caller's matplotlib backend alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepattr_jax.plotting import save, subplots

DPI = 90


def _save(fig, path) -> Path:
    return save(fig, path, dpi=DPI)


def importance(perm: dict, mask: dict, path) -> Path:
    """Permutation importance (loss increase, AUROC drop) and mean masking (delta AUC, relative
    output change per class), error bars = std over repeats."""
    names = list(perm["groups"])
    y = np.arange(len(names))
    fig, ax = subplots(1, 3, figsize=(12, 0.35 * len(names) + 1.8), sharey=True)
    for a, key, title in (
        (ax[0], "delta_loss", "permutation: loss increase"),
        (ax[1], "delta_auroc", "permutation: AUROC drop"),
    ):
        v = [perm["groups"][n][key] for n in names]
        e = [perm["groups"][n][f"{key}_std"] for n in names]
        a.barh(y, v, xerr=e, color="C0")
        a.set_title(title, fontsize=9)
        a.axvline(0, color="grey", lw=0.5)
    w = 0.27
    for k, (key, lab) in enumerate(
        (
            ("delta_auc", "delta AUC"),
            ("rel_change_0", "rel. change, class 0"),
            ("rel_change_1", "rel. change, class 1"),
        )
    ):
        v = [mask["groups"][n][key] for n in names]
        e = [mask["groups"][n][f"{key}_std"] for n in names]
        ax[2].barh(y + (k - 1) * w, v, height=w, xerr=e, label=lab, color=f"C{k + 1}")
    ax[2].set_title("mean masking", fontsize=9)
    ax[2].legend(fontsize=7)
    ax[0].set_yticks(y, names, fontsize=8)
    ax[0].invert_yaxis()
    return _save(fig, path)


def shapley(
    values: np.ndarray,
    names: list[str],
    labels: np.ndarray,
    path,
    class_names=("class 0", "class 1"),
) -> Path:
    """Mean |phi| per class (bars) and the per-event distribution (box plots per class)."""
    values = np.asarray(values)
    g = len(names)
    y = np.arange(g)
    fig, ax = subplots(1, 2, figsize=(11, 0.4 * g + 1.8))
    for c in (0, 1):
        sel = labels == c
        ax[0].barh(
            y + (c - 0.5) * 0.4,
            np.abs(values[sel]).mean(0),
            height=0.4,
            label=class_names[c],
            color=f"C{c}",
        )
        bp = ax[1].boxplot(
            [values[sel, j] for j in range(g)],
            positions=y + (c - 0.5) * 0.35,
            widths=0.3,
            orientation="horizontal",
            showfliers=False,
            patch_artist=True,
        )
        for b in bp["boxes"]:
            b.set_facecolor(f"C{c}")
            b.set_alpha(0.6)
    ax[0].set_yticks(y, names, fontsize=8)
    ax[1].set_yticks(y, names, fontsize=8)
    ax[0].invert_yaxis()
    ax[1].invert_yaxis()
    ax[0].set_xlabel("mean |Shapley value| (logit)")
    ax[1].set_xlabel("Shapley value per event (logit), 5-95 % whiskers off")
    ax[1].axvline(0, color="grey", lw=0.5)
    ax[0].legend(fontsize=8)
    return _save(fig, path)


def heatmap(
    mat: np.ndarray,
    rows: list[str],
    cols: list[str],
    path,
    title: str,
    vmin=None,
    vmax=None,
    cmap="viridis",
    fmt="{:.2f}",
) -> Path:
    mat = np.asarray(mat, np.float64)
    fig, ax = subplots(figsize=(0.8 * len(cols) + 2.5, 0.35 * len(rows) + 1.5))
    im = ax.imshow(mat, aspect="auto", vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(cols)), cols, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    if mat.size <= 200:
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                if np.isfinite(mat[i, j]):
                    ax.text(
                        j,
                        i,
                        fmt.format(mat[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="w" if mat[i, j] < np.nanmean(mat) else "k",
                    )
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    return _save(fig, path)


def coverage_sweep(sweeps: dict, gof: dict, path, title: str) -> Path:
    """Coverage against bandwidth per quantity, and the KDE goodness of fit (KS) against h."""
    fig, ax = subplots(1, 2, figsize=(10, 3.8))
    for name, s in sweeps.items():
        ax[0].plot(s["h"], s["coverage"], "o-", label=name, ms=3)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("bandwidth h")
    ax[0].set_ylabel("coverage (leave-one-out)")
    ax[0].axhline(0, color="grey", lw=0.5)
    ax[0].legend(fontsize=7)
    ax[0].set_title(title, fontsize=9)
    ax[1].plot(gof["h"], gof["ks"], "o-", ms=3, label="max KS over PCs")
    ax[1].plot(gof["h"], gof["critical_95"], "--", color="grey", label="95 % critical value")
    ax[1].set_xscale("log")
    ax[1].set_xlabel("bandwidth h")
    ax[1].set_ylabel("KS: KDE sample vs held-out half")
    ax[1].legend(fontsize=7)
    ax[1].set_title("goodness of fit of the KDE", fontsize=9)
    return _save(fig, path)


def rna(patterns: dict, path, class_names=("class 0", "class 1")) -> Path:
    """Per layer (rows): RNA of class 0, class 1 (neurons sorted by class 1), |difference|."""
    layers = list(patterns)
    dmax = max(len(p["rna_1"]) for p in patterns.values())
    mats = {k: np.full((len(layers), dmax), np.nan) for k in ("rna_0", "rna_1", "diff")}
    for i, name in enumerate(layers):
        p = patterns[name]
        o = p["order"]
        for k in mats:
            mats[k][i, : len(o)] = np.asarray(p[k])[o]
    fig, ax = subplots(1, 3, figsize=(15, 0.4 * len(layers) + 1.8), sharey=True)
    for a, (k, t) in zip(
        ax,
        (
            ("rna_0", f"RNA {class_names[0]}"),
            ("rna_1", f"RNA {class_names[1]}"),
            ("diff", "|difference|"),
        ),
        strict=True,
    ):
        im = a.imshow(
            mats[k], aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest"
        )
        a.set_title(t + " (neurons sorted by class-1 RNA)", fontsize=9)
        a.set_xlabel("neuron (sorted)")
    labels = [
        f"{n} (sparse {patterns[n]['sparsity_0']:.2f}/{patterns[n]['sparsity_1']:.2f})"
        for n in layers
    ]
    ax[0].set_yticks(range(len(layers)), labels, fontsize=7)
    fig.colorbar(im, ax=ax[2])
    return _save(fig, path)


def embedding(
    scores: np.ndarray,
    labels: np.ndarray,
    quantity: np.ndarray,
    qname: str,
    path,
    explained=None,
    class_names=("class 0", "class 1"),
) -> Path:
    """2-D PCA embedding coloured by class and by a physics quantity."""
    fig, ax = subplots(1, 2, figsize=(10, 4.2))
    for c in (0, 1):
        s = labels == c
        ax[0].scatter(scores[s, 0], scores[s, 1], s=3, alpha=0.4, label=class_names[c])
    ax[0].legend(markerscale=4, fontsize=8)
    lo, hi = np.percentile(quantity, [2, 98])
    sc = ax[1].scatter(
        scores[:, 0], scores[:, 1], s=3, c=quantity, vmin=lo, vmax=hi, cmap="plasma", alpha=0.6
    )
    fig.colorbar(sc, ax=ax[1], label=qname)
    for a in ax:
        ev = (
            ""
            if explained is None
            else f" ({100 * explained[0]:.0f} %, {100 * explained[1]:.0f} %)"
        )
        a.set_xlabel("PC 1")
        a.set_ylabel("PC 2")
        a.set_title("latent space, PCA" + ev, fontsize=9)
    return _save(fig, path)


def kept_vs_discarded(
    rows: list[str], kept: list[float], disc: list[float], kept_err, disc_err, xlabel: str, ax
) -> None:
    y = np.arange(len(rows))
    ax.barh(y - 0.2, kept, height=0.4, xerr=kept_err, label="kept", color="C0")
    ax.barh(y + 0.2, disc, height=0.4, xerr=disc_err, label="discarded", color="C3")
    ax.set_yticks(y, rows, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel, fontsize=8)
    ax.axvline(0, color="grey", lw=0.5)


def influence_split(summary: dict, path) -> Path:
    """Kept vs discarded (GNN-IRST rule): permutation AUROC drop, Shapley mean |phi|,
    RNA sparsity per layer and latent coverage per quantity."""
    k, d = summary["kept"], summary["discarded"]
    fig, ax = subplots(1, 4, figsize=(17, 4.5))
    names = list(k["permutation"]["groups"])
    kept_vs_discarded(
        names,
        [k["permutation"]["groups"][n]["delta_loss"] for n in names],
        [d["permutation"]["groups"][n]["delta_loss"] for n in names],
        [k["permutation"]["groups"][n]["delta_loss_std"] for n in names],
        [d["permutation"]["groups"][n]["delta_loss_std"] for n in names],
        "permutation: loss increase",
        ax[0],
    )
    sg = list(k["shapley"])
    kept_vs_discarded(
        sg,
        [k["shapley"][n]["mean_abs"] for n in sg],
        [d["shapley"][n]["mean_abs"] for n in sg],
        None,
        None,
        "mean |Shapley| (logit)",
        ax[1],
    )
    layers = list(k["sparsity"])
    kept_vs_discarded(
        layers,
        [k["sparsity"][n] for n in layers],
        [d["sparsity"][n] for n in layers],
        None,
        None,
        "RNA sparsity (both classes, mean)",
        ax[2],
    )
    qs = list(dict.fromkeys([*k["coverage"], *d["coverage"]]))
    nan = float("nan")
    kept_vs_discarded(
        qs,
        [nan if k["coverage"].get(n) is None else k["coverage"][n] for n in qs],
        [nan if d["coverage"].get(n) is None else d["coverage"][n] for n in qs],
        None,
        None,
        "coverage by latent (3 PCs)",
        ax[3],
    )
    ax[0].legend(fontsize=8)
    return _save(fig, path)


def embeddings_grid(embeddings: dict, colours: dict, path, title: str) -> Path:
    """Rows: the 2-D embeddings ``{name: (coords [n, 2], positions [n])}`` (PCA, UMAP, t-SNE);
    columns: the colourings ``{name: (values [N], cmap)}`` indexed by ``positions``. Axes span
    the central 99 % of each embedding (a few extreme events would squash the rest)."""
    rows, cols = list(embeddings), list(colours)
    fig, ax = subplots(
        len(rows), len(cols), figsize=(3.2 * len(cols), 3.0 * len(rows)), squeeze=False
    )
    for i, en in enumerate(rows):
        xy, pos = embeddings[en]
        for j, cn in enumerate(cols):
            v, cmap = colours[cn]
            v = np.asarray(v, np.float64)[pos]
            order = np.argsort(v, kind="stable")  # rare high values (flags) drawn last
            lo, hi = (
                np.percentile(v, [1, 99]) if cmap not in ("tab10", "coolwarm") else (None, None)
            )
            a = ax[i, j]
            sc = a.scatter(
                xy[order, 0],
                xy[order, 1],
                c=v[order],
                s=2,
                cmap=cmap,
                vmin=lo,
                vmax=hi,
                alpha=0.6,
                rasterized=True,
            )
            a.set_xticks([])
            a.set_yticks([])
            (x0, x1), (y0, y1) = np.percentile(xy, [0.5, 99.5], axis=0).T  # outliers off-frame
            pad = 0.05 * max(x1 - x0, y1 - y0, 1e-12)
            a.set_xlim(x0 - pad, x1 + pad)
            a.set_ylim(y0 - pad, y1 + pad)
            if i == 0:
                a.set_title(cn, fontsize=9)
            if j == 0:
                a.set_ylabel(f"{en} ({len(pos)})", fontsize=9)
            if cmap == "viridis":
                fig.colorbar(sc, ax=a, fraction=0.046)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def elbow(ks, inertia, k_chosen: int, path, title: str) -> Path:
    """k-means inertia against k with the elbow marked."""
    fig, ax = subplots(figsize=(4.5, 3.4))
    ax.plot(ks, inertia, "o-", ms=4)
    ax.axvline(k_chosen, color="C3", ls="--", lw=0.8, label=f"elbow k = {k_chosen}")
    ax.set_xlabel("k")
    ax.set_ylabel("inertia (within-cluster sum of squares)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def cluster_summary(rows: list, flags: list, path, title: str, class_names=("0", "1")) -> Path:
    """Per cluster: size, class-1 fraction, share of each flag, and the self-influence median
    and 90 % quantile."""
    ids = [str(r["cluster"]) for r in rows]
    x = np.arange(len(rows))
    fig, ax = subplots(1, 3, figsize=(13, 3.6))
    ax[0].bar(x, [r["n"] for r in rows], color="grey")
    ax[0].set_ylabel("events")
    w = 0.8 / (1 + len(flags))
    ax[1].bar(x - 0.4 + w / 2, [r["class1_fraction"] for r in rows], w, label=f"{class_names[1]}")
    for k, f in enumerate(flags):
        ax[1].bar(
            x - 0.4 + (k + 1.5) * w, [r[f"{f}_share"] for r in rows], w, label=f, color=f"C{k + 1}"
        )
    ax[1].set_ylabel("fraction of the cluster")
    ax[1].legend(fontsize=7)
    ax[2].bar(x - 0.2, [r["si_median"] for r in rows], 0.4, label="median")
    ax[2].bar(x + 0.2, [r["si_q90"] for r in rows], 0.4, label="90 % quantile")
    ax[2].set_yscale("log")
    ax[2].set_ylabel("self-influence")
    ax[2].legend(fontsize=7)
    for a in ax:
        a.set_xticks(x, ids)
        a.set_xlabel("cluster")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
