"""Layer statistics for K-FAC/EK-FAC (issue 13 item 4): the one-pass cost beside exact
self-influence in the same run.

Command (from the repository root; about 6 minutes on the 2-core CPU)::

    python -m benchmarks.layer_statistics [--preset ref|quick] [--out DIR]

Workloads of shared/spec/benchmark-workload.md (``ref``: ref-edgeconv and ref-jets with the
ref-edgeconv model, K = 5 random checkpoints, float32), timed against each other in one
process as benchmarks/layer_capture.py does (first call with compilation apart, then rounds
calling every method once in turn; medians of the steady calls):

* ``exact_self_influence``: ``||jax.grad||^2`` per event (the reference speed);
* ``capture_self_influence``: the same from per-layer captures (one capture pass per event);
* ``layer_statistics``: :func:`hepattr_jax.kfac.layer_statistics` (one capture of the margin
  per event, then every layer's expand and reduce moments and the diagonal Fisher of the rest).

Also the factor sizes (``m``, ``p``) and mean rows per event of each layer. Writes
``OUT/layer_statistics_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses

from benchmarks.layer_capture import _interleaved, markdown_head, method_table, run_preset
from benchmarks.tracin_throughput import WORKLOADS, make_workload, preset_main
from hepattr_jax import kfac, tracin
from hepattr_jax.per_example import layout_for


@dataclasses.dataclass(frozen=True)
class Settings:
    workloads: tuple[str, ...]
    model: str
    n_checkpoints: int
    chunk_size: int
    repeats: dict  # workload -> steady calls
    matmul_size: int


SETTINGS = {
    "ref": Settings(
        ("ref-edgeconv", "ref-jets"), "edgeconv", 5, 64, {"ref-edgeconv": 5, "ref-jets": 2}, 2048
    ),
    "quick": Settings(("quick-edgeconv",), "edgeconv", 2, 16, {"quick-edgeconv": 1}, 256),
}


def run_workload(s: Settings, name: str) -> dict:
    spec = WORKLOADS[name]
    w = make_workload(spec, s.model, s.n_checkpoints, 1e-3)
    layout = layout_for(w.model)
    n, c = len(w.train), s.chunk_size
    print(f"{name}: {n} events, {w.n_params} parameters, K = {len(w.ckpts)}", flush=True)
    kw = {"chunk_size": c, "progress": False}
    methods = {
        "exact_self_influence": lambda: tracin.self_influence(layout, w.ckpts, w.train, **kw),
        "capture_self_influence": lambda: tracin.self_influence(
            layout, w.ckpts, w.train, method="capture", **kw
        ),
        "layer_statistics": lambda: kfac.layer_statistics(layout, w.ckpts, w.train, **kw),
    }
    rows = _interleaved(methods, s.repeats[name], n)
    st = kfac.layer_statistics(layout, w.ckpts, w.train, **kw)
    layers = [
        {
            "kernel": k,
            "m": int(st.a_expand[i].shape[-1]),
            "p": int(st.s_expand[i].shape[-1]),
            "rows_per_event": float(st.rows[0, i]),
        }
        for i, k in enumerate(st.kernels)
    ]
    return {
        "workload": {
            "name": name,
            "n_train": n,
            "n_node_range": list(spec.n_node_range),
            "edges": spec.edges,
            "model": s.model,
            "n_params": w.n_params,
            "n_checkpoints": len(w.ckpts),
            "chunk_size": c,
            "buckets": len(layout.plan(w.train).buckets),
        },
        "methods": rows,
        "statistics_over_exact_self_influence": rows["layer_statistics"]["events_per_s"]
        / rows["exact_self_influence"]["events_per_s"],
        "layers": layers,
    }


def run(preset: str) -> dict:
    return run_preset("layer_statistics", preset, SETTINGS[preset], run_workload)


def markdown(r: dict) -> str:
    lines = markdown_head("Layer statistics (K-FAC/EK-FAC factors) beside exact self-influence", r)
    for wr in r["workloads"]:
        wl = wr["workload"]
        lines += [
            "",
            f"## {wl['name']}: {wl['n_train']} events, {wl['n_node_range']} nodes, "
            f"{wl['edges']}, {wl['model']} ({wl['n_params']} parameters), K = "
            f"{wl['n_checkpoints']}, chunk {wl['chunk_size']}, {wl['buckets']} bucket shapes, "
            "float32",
            "",
            *method_table(wr["methods"]),
            "",
            "| layer | m | p | rows per event |",
            "|---|---|---|---|",
        ]
        for x in wr["layers"]:
            lines.append(f"| {x['kernel']} | {x['m']} | {x['p']} | {x['rows_per_event']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return preset_main(argv, __doc__, SETTINGS, "ref", "layer_statistics", run, markdown)


if __name__ == "__main__":
    main()
