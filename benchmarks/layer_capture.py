"""Per-layer capture (issue 13): Kronecker-projected TRAK features, capture-based self-influence
and ghost norms, timed beside exact self-influence and the dense projection in one run, with
the projections' quality against exact inner products.

Command (from the repository root; about 25 minutes on the 2-core CPU)::

    python -m benchmarks.layer_capture [--preset ref|quick] [--out DIR]

Workloads of shared/spec/benchmark-workload.md (``ref``: ref-edgeconv and ref-jets with the
ref-edgeconv model, K = 5 random checkpoints, eta_k = 1e-3, float32). For each, timed against
each other in the same process (first call with compilation apart, then rounds that call every
method once in turn, so load changes fall on all alike; the median of each method's steady
calls):

* ``exact_self_influence``: ``||jax.grad||^2`` per event (the library's default);
* ``capture_self_influence``: the same sums from per-layer captures, ghost norms where the
  plan finds them cheaper (``method="capture"``);
* ``trak_dense_d512`` / ``trak_kronecker_d512``: TRAK featurisation (margin gradients
  projected to d = 512, plus the margins) with the dense Rademacher projection and with the
  Kronecker-structured one.

Quality (untimed, the same checkpoints): TracIn self-influence from d = 512 projected loss
gradients against the exact one (median and 90th percentile of the relative error), and the
overlap of the top-10 proponents of ``n_test_quality`` test events with the exact influence
matrix's. Ghost norms: per dense layer, the squared norms of one chunk's captures by the Gram
route and by the materialised product, each jitted alone (median of repeats), beside the
plan's choice. Writes ``OUT/layer_capture_<device>.json`` and ``.md``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import jax
import numpy as np

from benchmarks.tracin_throughput import (
    WORKLOADS,
    CompileClock,
    bench_matmul,
    make_workload,
    preset_main,
    results_header,
)
from hepattr_jax import tracin, trak
from hepattr_jax.capture import capture_one, discover, layer_plan, layer_sq_norm
from hepattr_jax.evaluation import top_k_overlap
from hepattr_jax.per_example import graph_level_layers, layout_for
from hepattr_jax.projection import KroneckerProjector, Projector


@dataclasses.dataclass(frozen=True)
class Settings:
    workloads: tuple[str, ...]
    model: str
    n_checkpoints: int
    proj_dim: int
    chunk_size: int
    repeats: dict  # workload -> steady calls
    n_test_quality: int
    top: int
    matmul_size: int
    ghost_layers: int | None = None  # time the first this many layers' norms (None: all)


SETTINGS = {
    "ref": Settings(
        ("ref-edgeconv", "ref-jets"),
        "edgeconv",
        5,
        512,
        64,
        {"ref-edgeconv": 5, "ref-jets": 2},
        128,
        10,
        2048,
    ),
    # All 16 test events of quick-edgeconv in the quality matrix: the exact matrix is then the
    # one tracin_throughput's quick preset compiles (the same kernels, one compilation).
    "quick": Settings(
        ("quick-edgeconv",),
        "edgeconv",
        2,
        16,
        16,
        {"quick-edgeconv": 1},
        16,
        3,
        256,
        ghost_layers=2,
    ),
}


def _ghost_layers(w, layout, chunk_size: int, n_layers, repeats: int = 5) -> list[dict]:
    """Per layer: one chunk's squared norms by the Gram route and by the product, timed apart."""
    chunk = next(iter(layout.chunks(w.train, chunk_size))).data
    params = w.ckpts.at(0)
    fn = layout.loss_one
    ex0 = jax.tree_util.tree_map(lambda x: x[0], chunk)
    spec = discover(fn, params, ex0)
    caps = jax.jit(jax.vmap(lambda e: capture_one(fn, spec, params, e)))(chunk)
    jax.block_until_ready(caps)
    rows = []
    for layer, choice in list(zip(spec.layers, layer_plan(spec), strict=True))[:n_layers]:
        ghost = jax.jit(jax.vmap(lambda c, layer=layer: layer_sq_norm(spec, layer, c, True)))
        prod = jax.jit(jax.vmap(lambda c, layer=layer: layer_sq_norm(spec, layer, c, False)))
        times = {}
        for name, f in (("ghost", ghost), ("product", prod)):
            f(caps).block_until_ready()
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                f(caps).block_until_ready()
                ts.append(time.perf_counter() - t0)
            times[name] = statistics.median(ts)
        rows.append(
            {
                "layer": "/".join(layer.kernel[1:-1]),
                "rows_T": choice.rows,
                "m": choice.m,
                "p": choice.p,
                "ghost_macs": choice.ghost_cost,
                "product_macs": choice.dense_cost,
                "plan": "ghost" if choice.ghost else "product",
                "ghost_s": times["ghost"],
                "product_s": times["product"],
                "chunk": chunk_size,
                "bucket_shape": [int(x) for x in ex0.graph.nodes.shape[:1]],
            }
        )
    return rows


def run_workload(s: Settings, name: str) -> dict:
    spec = WORKLOADS[name]
    w = make_workload(spec, s.model, s.n_checkpoints, 1e-3)
    layout = layout_for(w.model)
    n, c, reps = len(w.train), s.chunk_size, s.repeats[name]
    print(f"{name}: {n} events, {w.n_params} parameters, K = {len(w.ckpts)}", flush=True)
    rows: dict = {}
    kw = {"chunk_size": c, "progress": False}
    dense = Projector(s.proj_dim)
    # Calibrated once on the training events (dimensions split by layer energy), as scoring
    # does; timed apart.
    t0 = time.perf_counter()
    kron = tracin.calibrate_projector(
        layout, w.ckpts, w.train, KroneckerProjector(s.proj_dim), output="margin"
    )
    calibration_s = time.perf_counter() - t0
    kron_loss = tracin.calibrate_projector(
        layout, w.ckpts, w.train, KroneckerProjector(s.proj_dim), output="loss"
    )
    methods = {
        "exact_self_influence": lambda: tracin.self_influence(layout, w.ckpts, w.train, **kw),
        "capture_self_influence": lambda: tracin.self_influence(
            layout, w.ckpts, w.train, method="capture", **kw
        ),
        f"trak_dense_d{s.proj_dim}": lambda: trak.featurize(layout, w.ckpts, w.train, dense, **kw),
        f"trak_kronecker_d{s.proj_dim}": lambda: trak.featurize(
            layout, w.ckpts, w.train, kron, **kw
        ),
    }
    rows = _interleaved(methods, reps, n)
    # Quality against exact inner products (TracIn: loss gradients), untimed.
    t0 = time.perf_counter()
    exact_si = tracin.self_influence(layout, w.ckpts, w.train, **kw)
    test = w.test.select(np.arange(s.n_test_quality))
    exact_m = tracin.influence_matrix(layout, w.ckpts, w.train, test, **kw)
    quality = {}
    for label, proj in (("dense", dense), ("kronecker", kron_loss)):
        f_tr = tracin.projected_features(layout, w.ckpts, w.train, proj, **kw)
        f_te = tracin.projected_features(layout, w.ckpts, test, proj, **kw)
        si = tracin.self_influence_from_features(f_tr, w.ckpts.lrs)
        rel = np.abs(si / exact_si - 1)
        m = tracin.influence_from_features(f_tr, f_te, w.ckpts.lrs)
        quality[label] = {
            "self_influence_rel_err_median": float(np.median(rel)),
            "self_influence_rel_err_p90": float(np.quantile(rel, 0.9)),
            f"top{s.top}_proponent_overlap": top_k_overlap(m, exact_m, s.top),
            "matrix_pearson": float(np.corrcoef(m.ravel(), exact_m.ravel())[0, 1]),
        }
    quality["wall_s"] = time.perf_counter() - t0
    print(f"  quality: {quality}", flush=True)
    ex = _example(layout, w, c)
    graph_level = graph_level_layers(layout, layout.margin_one, w.ckpts.at(0), ex)
    blocks = kron.blocks(discover(layout.margin_one, w.ckpts.at(0), ex), graph_level)
    return {
        "workload": {
            "name": name,
            "n_train": n,
            "n_test_quality": s.n_test_quality,
            "n_node_range": list(spec.n_node_range),
            "edges": spec.edges,
            "model": s.model,
            "n_params": w.n_params,
            "n_checkpoints": len(w.ckpts),
            "chunk_size": c,
            "proj_dim": s.proj_dim,
            "buckets": len(layout.plan(w.train).buckets),
        },
        "methods": rows,
        "kronecker_over_exact_self_influence": rows[f"trak_kronecker_d{s.proj_dim}"]["events_per_s"]
        / rows["exact_self_influence"]["events_per_s"],
        "dense_over_exact_self_influence": rows[f"trak_dense_d{s.proj_dim}"]["events_per_s"]
        / rows["exact_self_influence"]["events_per_s"],
        "quality": quality,
        "kronecker_blocks": [b._asdict() for b in blocks],
        "kronecker_calibration_s": calibration_s,
        "kronecker_weights": list(kron.weights or ()),
        "ghost_layers": _ghost_layers(w, layout, c, s.ghost_layers),
    }


def _interleaved(methods: dict, repeats: int, n: int) -> dict:
    """Each method's first call (compilation included) timed alone, then ``repeats`` rounds
    that call every method once in turn (so a change in the machine's load during the run
    falls on all of them alike); the median of each method's steady calls."""
    rows = {}
    for key, fn in methods.items():
        with CompileClock() as clock:
            t0 = time.perf_counter()
            fn()
            rows[key] = {
                "first_call_s": time.perf_counter() - t0,
                "first_call_compile_s": clock.seconds,
                "times_s": [],
            }
    with CompileClock() as steady:
        for _ in range(repeats):
            for key, fn in methods.items():
                t0 = time.perf_counter()
                fn()
                rows[key]["times_s"].append(time.perf_counter() - t0)
    for key, r in rows.items():
        ts = r["times_s"]
        r.update(
            median_s=statistics.median(ts),
            min_s=min(ts),
            max_s=max(ts),
            steady_calls_compile_s=steady.seconds,
            events_per_s=n / statistics.median(ts),
        )
        print(f"  {key}: {r['events_per_s']:.0f} events/s (first call {r['first_call_s']:.1f} s)")
    return rows


def _example(layout, w, c):
    return jax.tree_util.tree_map(lambda x: x[0], next(iter(layout.chunks(w.train, c))).data)


def run_preset(name: str, preset: str, s, run_workload) -> dict:
    """A preset's results: the header, ``run_workload(s, workload)`` for each of
    ``s.workloads``, a large matmul timed in the same run, the load after, the wall time."""
    t_start = time.perf_counter()
    res: dict = results_header(name, preset, s)
    res["workloads"] = [run_workload(s, w) for w in s.workloads]
    res["matmul"] = bench_matmul(s.matmul_size, 3)
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_s"] = time.perf_counter() - t_start
    return res


def markdown_head(title: str, r: dict) -> list[str]:
    """The title and the line saying when, where and how a preset's results were made."""
    env = r["environment"]
    return [
        f"# {title}",
        "",
        f"{r['date_utc']}; device {env['device_label']} ({env['device_kind']}); jax "
        f"{env['jax']}; CPU {env['cpu_model']} ({env['cpu_count']} cores); load average "
        f"before {r['loadavg_before']}, after {r['loadavg_after']}; matmul "
        f"{r['matmul']['size']}^3 {r['matmul']['gflops_per_s']:.1f} GFLOP/s. "
        f"Command: `{r['command']}` ({r['wall_s'] / 60:.1f} min).",
    ]


def method_table(methods: dict) -> list[str]:
    """The interleaved timings (:func:`_interleaved`) as a table against exact SI."""
    lines = [
        "| method | events/s | vs exact SI | median s (min-max) | first call s (compile s) |",
        "|---|---|---|---|---|",
    ]
    exact = methods["exact_self_influence"]["events_per_s"]
    for name, t in methods.items():
        lines.append(
            f"| {name} | {t['events_per_s']:.0f} | {t['events_per_s'] / exact:.2f}x | "
            f"{t['median_s']:.2f} ({t['min_s']:.2f}-{t['max_s']:.2f}) | "
            f"{t['first_call_s']:.1f} ({t['first_call_compile_s']:.1f}) |"
        )
    return lines


def run(preset: str) -> dict:
    return run_preset("layer_capture", preset, SETTINGS[preset], run_workload)


def markdown(r: dict) -> str:
    lines = markdown_head(
        "Per-layer capture: Kronecker-projected TRAK, capture self-influence, ghost norms", r
    )
    for wr in r["workloads"]:
        wl = wr["workload"]
        lines += [
            "",
            f"## {wl['name']}: {wl['n_train']} train events, {wl['n_node_range']} nodes, "
            f"{wl['edges']}, {wl['model']} ({wl['n_params']} parameters), K = "
            f"{wl['n_checkpoints']}, chunk {wl['chunk_size']}, {wl['buckets']} bucket shapes, "
            f"float32",
            "",
            *method_table(wr["methods"]),
        ]
        q = wr["quality"]
        top = next(k for k in q["dense"] if k.startswith("top"))
        lines += [
            "",
            f"Quality at d = {wl['proj_dim']} (TracIn loss gradients, exact as reference; "
            f"top-k over {wl['n_test_quality']} test events; the Kronecker projection "
            f"calibrated on the training events in {wr['kronecker_calibration_s']:.1f} s, "
            "graph-level layers projected densely):",
            "",
            "| projection | SI rel. error median | SI rel. error p90 | "
            f"{top.replace('_', ' ')} | matrix Pearson r |",
            "|---|---|---|---|---|",
        ]
        for label in ("dense", "kronecker"):
            x = q[label]
            lines.append(
                f"| {label} | {x['self_influence_rel_err_median']:.3f} | "
                f"{x['self_influence_rel_err_p90']:.3f} | {x[top]:.2f} | "
                f"{x['matrix_pearson']:.5f} |"
            )
        lines += [
            "",
            "Ghost norms, one chunk's squared norms per layer (jitted alone, median of 5):",
            "",
            "| layer | rows T | m x p | plan | Gram MACs | product MACs | Gram ms | product ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for g in wr["ghost_layers"]:
            lines.append(
                f"| {g['layer']} | {g['rows_T']} | {g['m']} x {g['p']} | {g['plan']} | "
                f"{g['ghost_macs']:.3g} | {g['product_macs']:.3g} | "
                f"{g['ghost_s'] * 1e3:.2f} | {g['product_s'] * 1e3:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return preset_main(argv, __doc__, SETTINGS, "ref", "layer_capture", run, markdown)


if __name__ == "__main__":
    main()
