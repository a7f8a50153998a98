"""Information coverage at constituent level: how much of a per-constituent quantity (pT
fraction, delta-R to the jet axis) and of the jet's own quantities (mass, multiplicity, ...) each
constituent's latent representation determines.

Per-constituent latents are read with ``flax.linen.intercept_methods`` around every
``nn.Dense`` call of the model (no copy of any model, no dependence on its internals beyond
"parameterised layers are nn.Dense"); one latent per Dense call whose rows are nodes or edges:

* ``LAYER``: ReLU of a node-level Dense output (the encoder's output is the embedding entering
  the first block; for ``gcn`` the node transform before the graph aggregation);
* ``LAYER:in``: a node-level Dense input other than the raw features (for ``gcn`` the embedding
  after the previous layer; for the interaction network's node MLP ``[h_i, sum_j e_ij]``);
* ``LAYER->nodes``: ReLU of an edge-level Dense output averaged over each node's incoming edges,
  i.e. the message a constituent receives in that block (for ``edgeconv`` the block's residual
  update ``h_b - h_{b-1}``).

Coverage is :func:`~hepattr_jax.explain.coverage.information_coverage` (the estimator of the
jet-level section) of the quantity by a latent's 3 leading principal components, over a seeded
subsample of constituents (each carrying its jet's quantities for the jet-level columns).
"""

from __future__ import annotations

import time

import flax.linen as nn
import jax
import jraph
import numpy as np
from tqdm.auto import tqdm

from hepattr_jax.explain.activations import pca
from hepattr_jax.explain.coverage import information_coverage

INPUT = "input features"


def node_latents_fn(model, names: list[str]):
    """``fn(params, graphs, valid) -> [[n_node, D], ...]`` for
    :meth:`~hepattr_jax.explain.predict.BatchedPredictor.map_batches`; the latents' names (see
    the module docstring) are appended to ``names`` in call order when ``fn`` is traced."""

    def fn(params, graphs, valid):
        records = []

        def intercept(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                path = "/".join(str(s) for s in context.module.scope.path)
                records.append((path, args[0], out))
            return out

        with nn.intercept_methods(intercept):
            model.apply(params, graphs)
        n_node, n_edge = graphs.nodes.shape[0], graphs.senders.shape[0]
        out = [(INPUT, graphs.nodes)]
        for k, (path, x, y) in enumerate(records):
            if y.shape[0] == n_node and n_node != n_edge:
                if k > 0 and x is not graphs.nodes:
                    out.append((f"{path}:in", x.reshape(n_node, -1)))
                out.append((path, jax.nn.relu(y).reshape(n_node, -1)))
            elif y.shape[0] == n_edge and n_node != n_edge:
                m = jax.nn.relu(y).reshape(n_edge, -1)
                out.append((f"{path}->nodes", jraph.segment_mean(m, graphs.receivers, n_node)))
        if not names:
            names.extend(n for n, _ in out)
        return [a for _, a in out]

    return fn


def node_latents(predictor, events=None) -> dict[str, np.ndarray]:
    """Per-constituent latents ``{name: [sum n_i, D]}`` of a
    :class:`~hepattr_jax.explain.predict.BatchedPredictor`'s events, in call order."""
    names: list[str] = []
    out = predictor.map_batches(node_latents_fn(predictor.model, names))(events)
    return {n: predictor.per_node(a) for n, a in zip(names, out, strict=True)}


def constituent_quantities(events, normalizer=None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per-constituent quantities found in the node features, and sentences for those missing.

    ``pt_frac`` (any node feature whose name contains it; coverage bins by quantiles, so the
    normalisation does not matter) and ``delta_R = hypot(d_eta, d_phi)`` when the event set's
    ``eta_phi`` columns are relative to the jet axis (names starting with ``d``); delta-R needs
    the raw values, so the ``normalizer`` that standardised the features.
    """
    out, missing = {}, []
    names = list(events.node_names)
    pt = [i for i, n in enumerate(names) if "pt_frac" in n.lower()]
    if pt:
        out["pt_fraction"] = events.nodes[:, pt[0]].astype(np.float64)
    else:
        missing.append("no pT-fraction node feature (a name containing 'pt_frac')")
    ep = events.eta_phi
    if ep is None or not all(names[i].lower().startswith("d") for i in ep):
        missing.append("no delta-eta/delta-phi node features relative to the jet axis")
    elif normalizer is None:
        missing.append("delta-R needs the feature normalisation, which was not given")
    else:
        raw = [events.nodes[:, i] * normalizer.node_std[i] + normalizer.node_mean[i] for i in ep]
        out["delta_R"] = np.hypot(raw[0], raw[1]).astype(np.float64)
    return out, missing


def constituent_section(
    model,
    params,
    gs,
    jet_quantities: dict[str, np.ndarray],
    *,
    normalizer=None,
    jet_level: dict[str, float] | None = None,
    n_events: int = 600,
    n_nodes: int = 1500,
    n_pcs: int = 3,
    seed: int = 0,
    batch_size: int = 512,
    progress: bool = False,
) -> dict:
    """Coverage of constituent- and jet-level quantities by every per-constituent latent, on
    ``n_nodes`` constituents of ``n_events`` events of ``gs`` (seeded samples). ``jet_quantities``
    are per event of ``gs``; ``jet_level`` the jet-level coverage of the same quantities by the
    pooled latent, shown beside. Returns ``{"skipped": reason}`` when there is nothing to cover.
    """
    from hepattr_jax.explain.predict import BatchedPredictor

    t0 = time.perf_counter()
    cq, missing = constituent_quantities(gs.events, normalizer)
    if not cq and not jet_quantities:
        return {"skipped": "; ".join(missing + ["no jet-level physics quantities"])}
    rng = np.random.default_rng([seed, 15])
    pos = np.sort(rng.permutation(len(gs))[: min(n_events, len(gs))])
    sub = gs.select(pos)
    ev = sub.events
    pr = BatchedPredictor(model, params, sub, batch_size)
    lat = node_latents(pr)
    n_total = len(ev.nodes)
    rows = np.sort(rng.permutation(n_total)[: min(n_nodes, n_total)])
    event_of = np.repeat(np.arange(len(ev)), ev.n_node)[rows]
    cq, _ = constituent_quantities(ev, normalizer)
    quantities = {k: v[rows] for k, v in cq.items()}
    quantities.update({k: np.asarray(v)[pos][event_of] for k, v in jet_quantities.items()})
    cov = {}
    for name in tqdm(lat, desc="constituent coverage", disable=not progress):
        x = lat[name][rows]
        scores = pca(x, n_pcs)["scores"]
        cov[name] = {q: information_coverage(scores, v)["coverage"] for q, v in quantities.items()}
    return {
        "n_events": len(ev),
        "n_constituents": len(rows),
        "n_pcs": n_pcs,
        "constituent_quantities": list(cq),
        "jet_quantities": list(jet_quantities),
        "missing": missing,
        "coverage": cov,
        "dims": {k: int(v.shape[1]) for k, v in lat.items()},
        "jet_level": jet_level or {},
        "seconds": time.perf_counter() - t0,
    }


def plot_constituents(sec: dict, path):
    from hepattr_jax.explain.plots import heatmap

    qs = sec["constituent_quantities"] + sec["jet_quantities"]
    layers = list(sec["coverage"])
    m = np.array([[np.nan_to_num(sec["coverage"][la][q]) for q in qs] for la in layers])
    labels = list(layers)
    if sec["jet_level"]:
        m = np.vstack([m, [sec["jet_level"].get(q, np.nan) for q in qs]])
        labels.append("pooled latent (per jet)")
    return heatmap(
        m,
        labels,
        qs,
        path,
        f"coverage by per-constituent latents ({sec['n_pcs']} PCs)",
        vmin=0,
        vmax=1,
    )


def render_constituents(sec: dict) -> list[str]:
    if "skipped" in sec:
        return [f"Skipped: {sec['skipped']}."]
    qs = sec["constituent_quantities"] + sec["jet_quantities"]
    lines = [
        f"Coverage (the estimator of section 3) of constituent-level quantities "
        f"({', '.join(sec['constituent_quantities']) or 'none'}) and of the jet's quantities "
        f"(each constituent carries its jet's value) by each per-constituent latent's "
        f"{sec['n_pcs']} leading PCs, on {sec['n_constituents']} constituents of "
        f"{sec['n_events']} test jets. Latents are read at every nn.Dense call: `LAYER` = ReLU of "
        "a node-level output, `LAYER:in` = a node-level input, `LAYER->nodes` = an edge-level "
        "output averaged over each constituent's incoming edges (the message it receives). The "
        "last row is the jet-level coverage by the pooled latent (section 3).",
    ]
    if sec["missing"]:
        lines += ["", "Not covered: " + "; ".join(sec["missing"]) + "."]
    lines += ["", "| latent (dim) | " + " | ".join(qs) + " |", "|---|" + "---|" * len(qs)]
    for la, d in sec["coverage"].items():
        lines.append(f"| {la} ({sec['dims'][la]}) | " + " | ".join(_f(d[q]) for q in qs) + " |")
    if sec["jet_level"]:
        lines.append(
            "| pooled latent (per jet) | "
            + " | ".join(_f(sec["jet_level"].get(q)) for q in qs)
            + " |"
        )
    lines += ["", "![constituent coverage](coverage_constituents.png)"]
    return lines


def _f(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"
