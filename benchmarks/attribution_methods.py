"""The attribution methods' self-influence cost beside TracIn's, in one run (issue 14).

Command (from the repository root; about 5 minutes on the 2-core CPU)::

    python -m benchmarks.attribution_methods [--preset ref|quick] [--out DIR]

Workloads of shared/spec/benchmark-workload.md (``ref``: ref-edgeconv and ref-jets with the
ref-edgeconv model, K = 5 random checkpoints, float32; Adam second moments drawn at random, as
the checkpoints are), timed against each other in one process as benchmarks/layer_capture.py
does (first call with compilation apart, then interleaved rounds; medians of steady calls):

* ``exact_self_influence``: TracIn, ``sum_k eta_k ||jax.grad||^2`` (the reference speed);
* ``adam_self_influence``: Adam-aware TracIn (each gradient scaled by ``P_k^{1/2}``);
* ``cosine_map``: the gradient-cosine map (its self-influence is a constant; this is the map's
  cost, what its matrix pays per event);
* ``ekfac_self_influence``: EK-FAC at all K checkpoints (rotation into each layer's eigenbasis
  and whitening per event; factors fitted before the timing);
* ``ekfac_fit``: fitting those factors (layer statistics, eigendecompositions, the eigenvalue
  correction pass): once per run, in events of the set per second.

Writes ``OUT/attribution_methods_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from benchmarks.layer_capture import _interleaved, markdown_head, method_table, run_preset
from benchmarks.layer_statistics import SETTINGS, Settings  # the same workloads and repeats
from benchmarks.tracin_throughput import WORKLOADS, make_workload, preset_main
from hepattr_jax import ekfac, tracin
from hepattr_jax.adam import adam_gradient_map
from hepattr_jax.cosine import cosine_gradient_map
from hepattr_jax.per_example import layout_for


def run_workload(s: Settings, name: str) -> dict:
    spec = WORKLOADS[name]
    w = make_workload(spec, s.model, s.n_checkpoints, 1e-3)
    layout = layout_for(w.model)
    n, c = len(w.train), s.chunk_size
    print(f"{name}: {n} events, {w.n_params} parameters, K = {len(w.ckpts)}", flush=True)
    rng = np.random.default_rng(0)
    moments = jax.tree_util.tree_map(
        lambda x: (10.0 ** rng.uniform(-10, -4, x.shape)).astype(x.dtype), w.ckpts.params
    )
    ck = dataclasses.replace(w.ckpts, second_moments=moments)
    kw = {"chunk_size": c, "progress": False}
    fac = ekfac.fit(layout, ck, w.train, **kw)
    ek_map, ek_ck = ekfac.ekfac_gradient_map(fac), ekfac.ekfac_checkpoints(ck)
    adam, cos = adam_gradient_map(ck), cosine_gradient_map()
    methods = {
        "exact_self_influence": lambda: tracin.self_influence(layout, ck, w.train, **kw),
        "adam_self_influence": lambda: tracin.self_influence(
            layout, ck, w.train, gradient_map=adam, **kw
        ),
        "cosine_map": lambda: tracin.self_influence(layout, ck, w.train, gradient_map=cos, **kw),
        "ekfac_self_influence": lambda: tracin.self_influence(
            layout, ek_ck, w.train, gradient_map=ek_map, **kw
        ),
        "ekfac_fit": lambda: ekfac.fit(layout, ck, w.train, **kw),
    }
    rows = _interleaved(methods, s.repeats[name], n)
    return {
        "workload": {
            "name": name,
            "n_train": n,
            "n_node_range": list(spec.n_node_range),
            "edges": spec.edges,
            "model": s.model,
            "n_params": w.n_params,
            "n_checkpoints": len(ck),
            "chunk_size": c,
            "buckets": len(layout.plan(w.train).buckets),
            "ekfac_layers": [
                [k, int(e.shape[1]), int(e.shape[2])]
                for k, e in zip(fac.kernels, fac.eigenvalues, strict=True)
            ],
        },
        "methods": rows,
    }


def run(preset: str) -> dict:
    return run_preset("attribution_methods", preset, SETTINGS[preset], run_workload)


def markdown(r: dict) -> str:
    lines = markdown_head("Attribution methods: self-influence cost beside TracIn", r)
    for wr in r["workloads"]:
        wl = wr["workload"]
        lines += [
            "",
            f"## {wl['name']}: {wl['n_train']} events, {wl['n_node_range']} nodes, "
            f"{wl['edges']}, {wl['model']} ({wl['n_params']} parameters), K = "
            f"{wl['n_checkpoints']}, chunk {wl['chunk_size']}, {wl['buckets']} bucket shapes, "
            "float32; EK-FAC layers (m x p): "
            + ", ".join(f"{m}x{p}" for _, m, p in wl["ekfac_layers"]),
            "",
            *method_table(wr["methods"]),
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return preset_main(argv, __doc__, SETTINGS, "ref", "attribution_methods", run, markdown)


if __name__ == "__main__":
    main()
