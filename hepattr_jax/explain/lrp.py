"""Layer-wise relevance propagation (LRP) for any flax model built of ``nn.Dense`` + ReLU +
gathers, concatenations, residual sums, segment means/sums and max pooling.

For a Dense layer ``z_j = sum_i x_i w_ij + b_j`` with relevance ``R_j`` at its output
(Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation: an overview"):

* epsilon rule: ``R_i = sum_j x_i w_ij R_j / (z_j + eps sgn z_j)``;
* gamma rule:   ``R_i = sum_j x_i w'_ij R_j / (sum_i' x_i' w'_i'j + b'_j)`` with
  ``w' = w + gamma w^+``, ``b' = b + gamma b^+`` (``gamma = 0`` is LRP-0, i.e. epsilon with
  ``eps -> 0``).

What a layer does not pass down, ``R_j (zs_j - sum_i x_i w'_ij) / zs_j`` (``zs_j`` the
denominator: the bias and the stabiliser), is *absorbed*; so per event

    sum_inputs R = logit - absorbed      (conservation; checked per event by :func:`relevance`).

**Implementation: a modified gradient, times the input** (Ancona et al. 2018; Montavon et al. 2019
Sec. 10.3). Every ``nn.Dense`` call is intercepted (``flax.linen.intercept_methods``) and returns

    y = zlin' * sg(z / zs) + sg(z - zlin' * z / zs),        zlin' = x @ w'

(``sg`` = ``stop_gradient``): the value is the layer's own output ``z``, but the gradient sends
``g_x = w' (g_z z / zs)`` down, which is the rule written with ``R = value x gradient``.
Everything else keeps its ordinary gradient, and value x gradient is conserved by it: through a
ReLU element by element (``relu(z) g = z g 1[z > 0]``); through any linear map ``A``
(gathers, concatenation, ``h_j - h_i``, residual sums, segment sums and means) because
``sum_i x_i (A^T g)_i = (A x) . g``, i.e. relevance flows in proportion to the contributions;
through max pooling the winner takes all. The input relevance is ``x * grad`` at the (normalised)
input features, so it is relevance relative to the training mean (the origin of the inputs).
The absorbed relevance comes from the same backward pass: each Dense adds ``delta * sg(rate)``
with ``delta = 0``; ``d logit / d delta`` is the absorbed relevance of each of its rows (nodes,
edges or graphs), summed per graph.

Any other parameterised layer raises :class:`UnsupportedLayerError` naming it; a non-ReLU
nonlinearity cannot be intercepted (it is a function, not a module) and shows up as a
conservation gap instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from hepattr_jax.errors import ConfigError
from hepattr_jax.explain.features import feature_names
from hepattr_jax.graph_ops import recording_knn_rows
from hepattr_jax.graphs import node_graph_index

sg = jax.lax.stop_gradient


class UnsupportedLayerError(ConfigError):
    """A parameterised layer that LRP has no rule for (only ``nn.Dense`` is supported)."""


class Rule(NamedTuple):
    """An LRP rule for Dense layers: ``name`` ``"epsilon"`` (uses ``eps``) or ``"gamma"``
    (uses ``gamma``; ``eps`` only stabilises a zero denominator)."""

    name: str = "epsilon"
    eps: float = 1e-2
    gamma: float = 0.25


def make_rule(name: str, *, eps: float = 1e-2, gamma: float = 0.25) -> Rule:
    if name not in ("epsilon", "gamma"):
        raise ConfigError(f"unknown LRP rule {name!r}: use epsilon or gamma")
    if eps < 0 or gamma < 0:
        raise ConfigError(f"LRP eps and gamma must be >= 0, got eps={eps}, gamma={gamma}")
    return Rule(name, float(eps), float(gamma))


def _own_params(module) -> list[str]:
    """Names of the parameters a module holds itself (not through submodules)."""
    params = module.variables.get("params", {}) if module.scope is not None else {}
    return sorted(k for k, v in params.items() if not isinstance(v, Mapping))


def _dense_rule(x, z, kernel, bias, rule: Rule):
    """``(y, rate)``: the Dense output with the rule's gradient, and the absorbed relevance per
    unit of output gradient (see the module docstring)."""
    dtype = z.dtype
    x = x.astype(dtype)
    kernel = kernel.astype(dtype)
    if rule.name == "gamma":
        w = kernel + rule.gamma * jax.nn.relu(kernel)
        b = 0.0 if bias is None else bias.astype(dtype) + rule.gamma * jax.nn.relu(bias)
        zlin = jnp.dot(x, w)
        zs = zlin + b
        stab = 1e-12 if rule.eps == 0 else rule.eps * 1e-6
    else:
        zlin = jnp.dot(x, kernel)
        zs = z
        stab = rule.eps
    zs = zs + stab * jnp.where(zs >= 0, 1.0, -1.0).astype(dtype)
    f = sg(jnp.where(zs == 0, 0.0, z / jnp.where(zs == 0, 1.0, zs)))
    y = zlin * f + sg(z - zlin * f)
    return y.astype(dtype), sg((zs - zlin) * f)


def _interceptor(rule: Rule, deltas, shapes):
    count = [0]

    def intercept(next_fun, args, kwargs, context):
        mod = context.module
        path = "/".join(str(s) for s in mod.scope.path) or type(mod).__name__
        if not isinstance(mod, nn.Dense):
            own = _own_params(mod)
            if own:
                raise UnsupportedLayerError(
                    f"LRP has rules for nn.Dense (+ ReLU) only: layer '{path}' "
                    f"({type(mod).__name__}) holds parameters {own}"
                )
            return next_fun(*args, **kwargs)
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        z = next_fun(*args, **kwargs)
        p = mod.variables["params"]
        y, rate = _dense_rule(args[0], z, p["kernel"], p.get("bias"), rule)
        k = count[0]
        count[0] += 1
        if shapes is not None:
            shapes.append((path, z.shape, z.dtype))
        if deltas is not None:
            y = y + deltas[k] * rate
        return y

    return intercept


def lrp(apply_fn: Callable, params, inputs, rule: Rule, weights=None):
    """LRP of ``sum_n weights_n * apply_fn(params, inputs)[n]`` (float inputs, any pytree).

    Returns ``(outputs, relevance, absorbed)``: ``relevance`` has the structure of ``inputs``
    (value x modified gradient); ``absorbed`` is a list of ``(layer path, [rows, ...])``, the
    relevance each Dense call absorbs per row of its input (summed over its output units).
    Works under ``jit``; one example's rows may span several rows of every layer.
    """
    shapes: list = []
    with nn.intercept_methods(_interceptor(rule, None, shapes)):
        jax.eval_shape(apply_fn, params, inputs)
    deltas = [jnp.zeros(s, d) for _, s, d in shapes]

    def objective(inp, dl):
        with nn.intercept_methods(_interceptor(rule, dl, None)):
            out = apply_fn(params, inp)
        w = jnp.ones_like(out) if weights is None else weights
        return jnp.sum(jnp.where(w != 0, w * out, 0.0)), out

    (_, out), (g_in, g_d) = jax.value_and_grad(objective, argnums=(0, 1), has_aux=True)(
        inputs, deltas
    )
    rel = jax.tree_util.tree_map(lambda x, g: x * g, inputs, g_in)
    absorbed = [
        (path, g.reshape(g.shape[0], -1).sum(1) if g.ndim > 1 else g)
        for (path, _, _), g in zip(shapes, g_d, strict=True)
    ]
    return out, rel, absorbed


def _rows_to_graphs(per_row, graphs: jraph.GraphsTuple, path: str, knn_rows=frozenset()):
    """Sums a Dense call's per-row values into its graphs. Rows are nodes, edges, graphs, or
    the neighbour slots of a dynamic kNN the model built (``knn_rows``, from
    :func:`graph_ops.recording_knn_rows`; :meth:`graph_ops.SegmentOps.knn`: ``kk`` slots per
    node, node-major; a masked slot carries no gradient, so it absorbs nothing)."""
    n_graph = graphs.n_node.shape[0]
    n_node = graphs.nodes.shape[0]
    sizes = {
        "node": (n_node, graphs.n_node),
        "edge": (graphs.senders.shape[0], graphs.n_edge),
    }
    rows = per_row.shape[0]
    hits = [k for k, (s, _) in sizes.items() if s == rows] + (["graph"] if rows == n_graph else [])
    if rows in knn_rows:
        hits.append("neighbour slots")
    if len(hits) != 1:
        raise UnsupportedLayerError(
            f"LRP: layer '{path}' has {rows} input rows, which is "
            + ("none" if not hits else f"ambiguous among {hits}")
            + f" of nodes {n_node}, edges {sizes['edge'][0]}, graphs {n_graph} and the "
            f"dynamic kNN slot counts {sorted(knn_rows)}"
        )
    if hits[0] == "graph":
        return per_row
    if hits[0] == "neighbour slots":
        gidx = jnp.repeat(node_graph_index(graphs.n_node, n_node), rows // n_node)
        return jraph.segment_sum(per_row, gidx, n_graph)
    size, counts = sizes[hits[0]]
    return jraph.segment_sum(per_row, node_graph_index(counts, size), n_graph)


def graph_lrp_fn(model, rule: Rule) -> Callable:
    """``fn(params, graphs, valid)`` for :meth:`BatchedPredictor.map_batches`: per padded batch
    ``{"logit" [n_graph], "node" [n_node, F], "globals" [n_graph, G], "absorbed" [n_graph]}``
    (relevance of every node feature and event-level input; padding graphs contribute
    nothing)."""

    def fn(params, graphs, valid):
        def apply(p, inp):
            nodes, glob = inp
            return model.apply(p, graphs._replace(nodes=nodes, globals=glob))

        with recording_knn_rows() as knn_rows:
            out, (rn, rg), absorbed = lrp(
                apply,
                params,
                (graphs.nodes, graphs.globals),
                rule,
                weights=valid.astype(jnp.float32),
            )
        total = jnp.zeros(graphs.n_node.shape[0], out.dtype)
        for path, a in absorbed:
            total = total + _rows_to_graphs(a, graphs, path, knn_rows)
        return {"logit": out, "node": rn, "globals": rg, "absorbed": total}

    return fn


def relevance(predictor, rule: Rule, events=None) -> dict:
    """LRP of the logit of every event of a :class:`BatchedPredictor`.

    Returns float64 arrays: ``node [sum n_i, F]`` (per constituent and feature),
    ``globals [N, G]``, ``per_feature [N, F + G]`` (node relevance summed over each event's
    constituents, then the event-level inputs), ``per_constituent [sum n_i]``, ``logit [N]``,
    ``absorbed [N]`` (bias and stabiliser) and ``conservation_gap [N] = logit - sum R -
    absorbed`` (0 up to rounding when every layer is Dense + ReLU + linear or max ops).
    """
    out = predictor.map_batches(graph_lrp_fn(predictor.model, rule))(events)
    ev = predictor.events
    node = predictor.per_node(out["node"]).astype(np.float64)
    glob = predictor.per_event(out["globals"]).astype(np.float64)
    logit = predictor.per_event(out["logit"]).astype(np.float64)
    absorbed = predictor.per_event(out["absorbed"]).astype(np.float64)
    per_event_nodes = (
        np.add.reduceat(node, ev.offsets[:-1], axis=0)
        if len(node)
        else np.zeros((len(ev), node.shape[1]))
    )
    per_event_nodes[ev.n_node == 0] = 0.0  # reduceat repeats a row for empty events
    per_feature = np.concatenate([per_event_nodes, glob], axis=1)
    return {
        "node": node,
        "globals": glob,
        "per_feature": per_feature,
        "per_constituent": node.sum(1),
        "logit": logit,
        "absorbed": absorbed,
        "conservation_gap": logit - per_feature.sum(1) - absorbed,
    }


# --------------------------------------------------------------------- comparison of methods
def rank_correlations(scores: Mapping[str, np.ndarray]) -> dict:
    """Spearman rank correlation of every pair of feature scores ``{method: [F]}``:
    ``{"a vs b": rho}`` (NaN when a score is constant)."""
    names = list(scores)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            x, y = np.asarray(scores[a]), np.asarray(scores[b])
            rho = (
                float(spearmanr(x, y).statistic)
                if np.ptp(x) > 0 and np.ptp(y) > 0
                else float("nan")
            )
            out[f"{a} vs {b}"] = rho
    return out


def lrp_section(
    predictor,
    feature_groups,
    baseline,
    *,
    repeats: int,
    seed: int,
    n_permutations: int = 8,
    eps: float = 1e-2,
    gamma: float = 0.25,
    progress: bool = False,
) -> dict:
    """LRP (epsilon and gamma rules) on the predictor's events, with per-event conservation, and
    the feature ranking against permutation importance and Shapley values (one group per
    feature, antithetic permutation sampling) on the same events."""
    from hepattr_jax.explain.importance import permutation_importance
    from hepattr_jax.explain.shapley import shapley_values

    ev = predictor.events
    names = feature_names(ev)
    feats = list(feature_groups)  # one group per feature (node features, then used globals)
    col = {n: i for i, n in enumerate(names)}
    bar = tqdm(total=4, desc="LRP and method comparison", disable=not progress)
    t0 = time.perf_counter()
    res = {}
    for rname in ("epsilon", "gamma"):
        r = relevance(predictor, make_rule(rname, eps=eps, gamma=gamma))
        res[rname] = r
        bar.update()
    t_lrp = time.perf_counter() - t0
    perm = permutation_importance(predictor, ev, feature_groups, repeats=repeats, seed=seed)
    bar.update()
    sh = shapley_values(
        predictor,
        ev,
        feature_groups,
        baseline=baseline,
        method="permutation" if len(feats) > 8 else "exact",
        n_permutations=n_permutations,
        seed=seed,
    )
    bar.update()
    bar.close()
    scores = {
        f"LRP-{k}": np.abs(r["per_feature"][:, [col[f] for f in feats]]).mean(0)
        for k, r in res.items()
    }
    scores["permutation"] = np.array([perm["groups"][f]["delta_loss"] for f in feats])
    scores["Shapley"] = np.abs(sh["values"]).mean(0)
    y = ev.labels
    out = {
        "n_events": len(ev),
        "rules": {"epsilon": {"eps": eps}, "gamma": {"gamma": gamma}},
        "features": feats,
        "scores": {k: v.tolist() for k, v in scores.items()},
        "rank_correlation": rank_correlations(scores),
        "shapley_method": sh["method"],
        "shapley_evaluations": sh["n_evaluations"],
        "seconds_lrp": t_lrp,
    }
    for k, r in res.items():
        gap = r["conservation_gap"]
        scale = np.maximum(np.abs(r["logit"]), 1.0)
        out[k] = {
            "conservation_max_abs_gap": float(np.abs(gap).max()),
            "conservation_max_rel_gap": float((np.abs(gap) / scale).max()),
            "mean_abs_logit": float(np.abs(r["logit"]).mean()),
            "mean_abs_absorbed": float(np.abs(r["absorbed"]).mean()),
            "mean_sum_relevance": float(r["per_feature"].sum(1).mean()),
            "mean_relevance_by_class": {
                f: [float(r["per_feature"][y == c, col[f]].mean()) for c in (0, 1)] for f in feats
            },
            "top_constituent_share": float(_top_share(r["per_constituent"], ev.offsets)),
        }
    out["_arrays"] = {"gap": {k: r["conservation_gap"] for k, r in res.items()}}
    return out


def _top_share(per_constituent: np.ndarray, offsets: np.ndarray) -> float:
    """Mean over events (with >1 constituent) of max |R_node| / sum |R_node|."""
    shares = []
    for a, b in zip(offsets[:-1], offsets[1:], strict=True):
        if b - a > 1:
            r = np.abs(per_constituent[a:b])
            s = r.sum()
            if s > 0:
                shares.append(r.max() / s)
    return float(np.mean(shares)) if shares else float("nan")


def plot_lrp(sec: dict, path) -> object:
    """Normalised feature scores per method (bars), and per-event conservation gaps."""
    from hepattr_jax.explain.plots import _save, subplots

    feats = sec["features"]
    fig, ax = subplots(1, 3, figsize=(14, 0.35 * len(feats) + 2.2))
    yy = np.arange(len(feats))
    methods = list(sec["scores"])
    w = 0.8 / len(methods)
    for k, m in enumerate(methods):
        v = np.asarray(sec["scores"][m], np.float64)
        v = v / np.abs(v).max() if np.abs(v).max() > 0 else v
        ax[0].barh(yy + (k - (len(methods) - 1) / 2) * w, v, height=w, label=m, color=f"C{k}")
    ax[0].set_yticks(yy, feats, fontsize=8)
    ax[0].invert_yaxis()
    ax[0].set_title("feature score / max (per method)", fontsize=9)
    ax[0].legend(fontsize=7)
    pairs = list(sec["rank_correlation"])
    rho = [sec["rank_correlation"][p] for p in pairs]
    ax[1].barh(np.arange(len(pairs)), rho, color="C4")
    ax[1].set_yticks(np.arange(len(pairs)), pairs, fontsize=7)
    ax[1].set_xlim(-1, 1)
    ax[1].axvline(0, color="grey", lw=0.5)
    ax[1].invert_yaxis()
    ax[1].set_title("Spearman rank correlation of the rankings", fontsize=9)
    for k, (rname, gap) in enumerate(sec["_arrays"]["gap"].items()):
        g = np.abs(gap) + 1e-18
        ax[2].hist(np.log10(g), bins=40, histtype="step", label=rname, color=f"C{k}")
    ax[2].set_xlabel("log10 |logit - sum R - absorbed| per event", fontsize=8)
    ax[2].set_title("LRP conservation", fontsize=9)
    ax[2].legend(fontsize=7)
    return _save(fig, path)


def render_lrp(sec: dict) -> list[str]:
    feats = sec["features"]
    methods = list(sec["scores"])
    lines = [
        f"LRP of the logit on {sec['n_events']} test events (epsilon rule eps = "
        f"{sec['rules']['epsilon']['eps']}, gamma rule gamma = {sec['rules']['gamma']['gamma']}, "
        "through every Dense + ReLU layer, the edge aggregation and the pooling; relevance "
        "relative to the training mean of the normalised inputs). Permutation importance "
        f"(loss increase) and Shapley values (one player per feature, {sec['shapley_method']}, "
        f"{sec['shapley_evaluations']} coalitions) on the same events. Score per feature: "
        "mean over events of |relevance summed over the event's constituents|, the loss increase, "
        "mean |phi|.",
        "",
        "| rule | max abs conservation gap | max rel. gap | mean abs logit | mean abs absorbed "
        "(biases) | mean sum of relevances | mean top-constituent share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ("epsilon", "gamma"):
        c = sec[r]
        lines.append(
            f"| {r} | {c['conservation_max_abs_gap']:.2e} | {c['conservation_max_rel_gap']:.2e} "
            f"| {c['mean_abs_logit']:.3f} | {c['mean_abs_absorbed']:.3f} | "
            f"{c['mean_sum_relevance']:+.3f} | {c['top_constituent_share']:.3f} |"
        )
    lines += ["", "| feature | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    ranks = {m: _ranks(sec["scores"][m]) for m in methods}
    for i, f in enumerate(feats):
        lines.append(
            f"| {f} | "
            + " | ".join(f"{sec['scores'][m][i]:.4f} (#{ranks[m][i]})" for m in methods)
            + " |"
        )
    lines += ["", "| methods | Spearman rank correlation |", "|---|---|"]
    lines += [f"| {p} | {v:+.3f} |" for p, v in sec["rank_correlation"].items()]
    lines += ["", "![LRP](lrp.png)"]
    return lines


def _ranks(v) -> list[int]:
    order = np.argsort(-np.asarray(v, np.float64), kind="stable")
    r = np.empty(len(order), int)
    r[order] = np.arange(1, len(order) + 1)
    return r.tolist()
