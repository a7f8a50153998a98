"""Feature importance that respects correlations between features.

Plain permutation (:func:`~hepattr_jax.explain.importance.permutation_importance`) shuffles a
feature across all objects, which builds inputs the data never contains when the feature is
correlated with another (a track energy paired with an unrelated pT): the model is then probed
off its training distribution and a feature can look important only because its partner still
carries the information (Hooker, Mentch & Zhou 2021; Strobl et al. 2008). Two remedies:

* **conditional permutation** (Strobl et al. 2008; Molnar et al. 2023): shuffle feature ``f`` only
  among objects in the same quantile bin of its most correlated other feature ``c`` (``n_bins``
  equal-population bins of ``c``, :func:`~hepattr_jax.explain.coverage.discretize`), so the joint
  distribution of ``(f, c)`` is approximately kept and only the information ``f`` has beyond
  ``c`` is destroyed;
* **grouped permutation**: features whose ``|corr| > threshold`` are joined (connected
  components of the thresholded correlation graph) and permuted together.

Correlations are Pearson coefficients over the *objects* (node features per object, event-level
inputs repeated on every object of the event; :func:`correlation_matrix`). A node feature is
conditioned on values per object (an event-level partner is read from the object's event), an
event-level input on values per event (a node partner is averaged over the event's objects).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
from tqdm.auto import tqdm

from hepattr_jax.data.events import EventSet
from hepattr_jax.explain.coverage import discretize
from hepattr_jax.explain.features import Feature, Groups
from hepattr_jax.explain.importance import _auroc, _summary, permutation_importance
from hepattr_jax.explain.predict import Predictor, bce


def _event_index(events: EventSet) -> np.ndarray:
    return np.repeat(np.arange(len(events)), events.n_node)


def _event_means(events: EventSet, col: int) -> np.ndarray:
    x = events.nodes[:, col].astype(np.float64)
    s = np.zeros(len(events))
    np.add.at(s, _event_index(events), x)
    return s / np.maximum(events.n_node, 1)


def values(events: EventSet, f: Feature, level: str) -> np.ndarray:
    """Feature ``f`` per object (``level="node"``) or per event (``"global"``), float64."""
    kind, i = f
    if level == "node":
        if kind == "node":
            return events.nodes[:, i].astype(np.float64)
        return events.globals[_event_index(events), i].astype(np.float64)
    if kind == "node":
        return _event_means(events, i)
    return events.globals[:, i].astype(np.float64)


def correlation_matrix(events: EventSet, features: list[Feature]) -> np.ndarray:
    """Pearson correlations ``[K, K]`` of the features over all objects (0 for constants)."""
    x = np.stack([values(events, f, "node") for f in features], axis=1)
    xc = x - x.mean(0)
    norm = np.sqrt((xc**2).sum(0))
    den = np.outer(norm, norm)
    c = np.divide(xc.T @ xc, den, out=np.zeros((len(features),) * 2), where=den > 0)
    np.fill_diagonal(c, 1.0)
    return c


def partners(corr: np.ndarray) -> np.ndarray:
    """Index of the most correlated other feature (by ``|corr|``) of each feature."""
    a = np.abs(corr).copy()
    np.fill_diagonal(a, -1.0)
    return np.argmax(a, axis=1)


def permutation_within(bins: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation ``p`` with ``bins[p] == bins``: ``x[p]`` shuffles within bins."""
    dst = np.argsort(bins, kind="stable")
    src = np.lexsort((rng.random(len(bins)), bins))
    p = np.empty(len(bins), np.int64)
    p[dst] = src
    return p


def conditional_permute(
    events: EventSet, f: Feature, cond: np.ndarray, n_bins: int, rng: np.random.Generator
) -> EventSet:
    """A copy with feature ``f`` shuffled within equal-population bins of ``cond`` (per object
    for a node feature, ``[sum n_i]``; per event for an event-level input, ``[N]``)."""
    kind, i = f
    p = permutation_within(discretize(cond, n_bins), rng)
    if kind == "node":
        nodes = events.nodes.copy()
        nodes[:, i] = events.nodes[p, i]
        return dataclasses.replace(events, nodes=nodes)
    glob = events.globals.copy()
    glob[:, i] = events.globals[p, i]
    return dataclasses.replace(events, globals=glob)


def correlated_groups(names: list[str], corr: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of ``|corr| > threshold`` (singletons included), in feature order."""
    k = len(names)
    parent = list(range(k))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a in range(k):
        for b in range(a + 1, k):
            if abs(corr[a, b]) > threshold:
                parent[find(a)] = find(b)
    comps: dict[int, list[int]] = {}
    for a in range(k):
        comps.setdefault(find(a), []).append(a)
    return sorted(comps.values(), key=lambda c: c[0])


def _importance(
    predict: Predictor,
    events: EventSet,
    perturb: dict[str, Callable[[np.random.Generator], EventSet]],
    *,
    repeats: int,
    seed: int,
    desc: str,
    progress: bool,
) -> dict:
    """Loss increase and AUROC drop per perturbation (the format of permutation_importance)."""
    y = events.labels
    z0 = predict(events)
    loss0, auc0 = float(bce(z0, y).mean()), _auroc(y, z0)
    out = {}
    bar = tqdm(total=repeats * len(perturb), desc=desc, disable=not progress)
    for gi, (name, fn) in enumerate(perturb.items()):
        dl, da = [], []
        for r in range(repeats):
            z = predict(fn(np.random.default_rng([seed, gi, r])))
            dl.append(float(bce(z, y).mean()) - loss0)
            da.append(auc0 - _auroc(y, z))
            bar.update()
        out[name] = _summary({"delta_loss": dl, "delta_auroc": da})
    bar.close()
    return {"base": {"loss": loss0, "auroc": auc0}, "repeats": repeats, "groups": out}


def conditional_permutation_importance(
    predict: Predictor,
    events: EventSet,
    groups: Groups,
    *,
    n_bins: int = 10,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Conditional permutation importance of each single-feature group, conditioned on its
    most correlated other feature among ``groups``; the result also names each partner and
    the correlation matrix used."""
    names = list(groups)
    feats = [groups[n][0] for n in names]
    if any(len(groups[n]) != 1 for n in names):
        raise ValueError("conditional permutation takes one feature per group")
    corr = correlation_matrix(events, feats)
    part = partners(corr) if len(feats) > 1 else np.zeros(1, int)
    perturb: dict[str, Callable[[np.random.Generator], EventSet]] = {}
    for k, (n, f) in enumerate(zip(names, feats, strict=True)):
        level = "node" if f[0] == "node" else "global"
        cond = values(events, feats[part[k]], level) if len(feats) > 1 else np.zeros(1)

        def fn(rng, f=f, cond=cond):
            return conditional_permute(events, f, cond, n_bins, rng)

        perturb[n] = fn
    res = _importance(
        predict,
        events,
        perturb,
        repeats=repeats,
        seed=seed,
        desc="conditional permutation",
        progress=progress,
    )
    res["partner"] = {n: names[part[k]] for k, n in enumerate(names)}
    res["partner_corr"] = {n: float(corr[k, part[k]]) for k, n in enumerate(names)}
    res["n_bins"] = n_bins
    res["names"] = names
    res["corr"] = corr
    return res


def grouped_permutation_importance(
    predict: Predictor,
    events: EventSet,
    groups: Groups,
    *,
    threshold: float = 0.5,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Permutation importance of the groups of correlated features (``|corr| > threshold``,
    connected components); a group's features are permuted together. ``groups`` holds one
    feature each; the result names every correlated group ``a+b+...``."""
    names = list(groups)
    feats = [groups[n][0] for n in names]
    corr = correlation_matrix(events, feats)
    comps = correlated_groups(names, corr, threshold)
    cg: Groups = {"+".join(names[i] for i in c): tuple(feats[i] for i in c) for c in comps}
    res = permutation_importance(predict, events, cg, repeats=repeats, seed=seed, progress=progress)
    res["threshold"] = threshold
    res["members"] = {k: [names[i] for i in c] for k, c in zip(cg, comps, strict=True)}
    return res


# --------------------------------------------------------------------- report section
def correlated_section(
    predictor,
    feature_groups: Groups,
    plain: dict,
    *,
    repeats: int,
    seed: int,
    n_bins: int = 10,
    threshold: float = 0.5,
    progress: bool = False,
) -> dict:
    """Conditional and grouped permutation beside the report's plain permutation ``plain``
    (same events, same repeats), and where plain and conditional disagree."""
    ev = predictor.events
    t0 = time.perf_counter()
    cond = conditional_permutation_importance(
        predictor, ev, feature_groups, n_bins=n_bins, repeats=repeats, seed=seed, progress=progress
    )
    grp = grouped_permutation_importance(
        predictor, ev, feature_groups, threshold=threshold, repeats=repeats, seed=seed
    )
    rows = {}
    for n in cond["names"]:
        p, c = plain["groups"][n], cond["groups"][n]
        err = np.hypot(p["delta_loss_std"], c["delta_loss_std"])
        diff = p["delta_loss"] - c["delta_loss"]
        rows[n] = {
            "plain": p["delta_loss"],
            "plain_std": p["delta_loss_std"],
            "conditional": c["delta_loss"],
            "conditional_std": c["delta_loss_std"],
            "ratio": c["delta_loss"] / p["delta_loss"] if p["delta_loss"] > 0 else None,
            "partner": cond["partner"][n],
            "partner_corr": cond["partner_corr"][n],
            "disagree": bool(abs(diff) > max(2 * err, 0.2 * abs(p["delta_loss"]), 1e-4)),
        }
    return {
        "n_events": len(ev),
        "n_bins": n_bins,
        "threshold": threshold,
        "names": cond["names"],
        "corr": cond["corr"].tolist(),
        "features": rows,
        "conditional": {k: v for k, v in cond.items() if k not in ("corr", "names")},
        "grouped": grp,
        "seconds": time.perf_counter() - t0,
    }


def plot_correlated(sec: dict, path):
    """Feature correlation matrix (left) beside plain, conditional and grouped importance."""
    from hepattr_jax.explain.plots import _save, subplots

    names = sec["names"]
    k = len(names)
    fig, ax = subplots(1, 2, figsize=(13, 0.4 * k + 2.5), width_ratios=[1.1, 1])
    im = ax[0].imshow(np.asarray(sec["corr"]), cmap="coolwarm", vmin=-1, vmax=1)
    ax[0].set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax[0].set_yticks(range(k), names, fontsize=7)
    for i in range(k):
        for j in range(k):
            ax[0].text(j, i, f"{sec['corr'][i][j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=ax[0], fraction=0.046)
    ax[0].set_title("feature correlation (Pearson, over constituents)", fontsize=9)
    y = np.arange(k)
    f = sec["features"]
    for j, (key, lab) in enumerate((("plain", "plain"), ("conditional", "conditional"))):
        ax[1].barh(
            y + (j - 0.5) * 0.4,
            [f[n][key] for n in names],
            height=0.4,
            xerr=[f[n][f"{key}_std"] for n in names],
            label=lab,
            color=f"C{j}",
        )
    for i, n in enumerate(names):
        if f[n]["disagree"]:
            ax[1].text(0, i, " *", va="center", color="red", fontsize=10)
    ax[1].set_yticks(y, [f"{n} | {f[n]['partner']}" for n in names], fontsize=7)
    ax[1].invert_yaxis()
    ax[1].axvline(0, color="grey", lw=0.5)
    ax[1].legend(fontsize=7)
    ax[1].set_title("permutation: loss increase (* = plain and conditional disagree)", fontsize=9)
    return _save(fig, path)


def render_correlated(sec: dict) -> list[str]:
    f = sec["features"]
    lines = [
        f"On the {sec['n_events']} test events: plain permutation (section 1) against permutation "
        f"within {sec['n_bins']} equal-population bins of each feature's most correlated other "
        "feature (conditional), and permutation of groups of features with |corr| > "
        f"{sec['threshold']} (grouped). Loss increase ± std over the repeats; 'disagree' = the "
        "two differ by more than twice their combined std and more than 20 % of the plain value.",
        "",
        "![correlated features](correlated_importance.png)",
        "",
        "| feature | conditioned on (corr) | plain | conditional | conditional / plain | "
        "disagree |",
        "|---|---|---|---|---|---|",
    ]
    for n in sorted(f, key=lambda k: -f[k]["plain"]):
        r = f[n]
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(
            f"| {n} | {r['partner']} ({r['partner_corr']:+.2f}) | "
            f"{r['plain']:.4f} ± {r['plain_std']:.4f} | "
            f"{r['conditional']:.4f} ± {r['conditional_std']:.4f} | {ratio} | "
            f"{'yes' if r['disagree'] else ''} |"
        )
    g = sec["grouped"]
    lines += ["", "| correlated group | loss increase | AUROC drop |", "|---|---|---|"]
    for n, r in g["groups"].items():
        lines.append(
            f"| {n} | {r['delta_loss']:.4f} ± {r['delta_loss_std']:.4f} | "
            f"{r['delta_auroc']:.4f} ± {r['delta_auroc_std']:.4f} |"
        )
    return lines
