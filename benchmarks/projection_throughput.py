"""Projected-gradient throughput on the "ref-edgeconv" workload: projected TracIn features against
d, TRAK featurisation at d = 512 beside exact self-influence, the projected influence matrix, and
scaling over devices where there are several.

Command (from the repository root; roughly 10-15 minutes on a 2-core CPU)::

    python -m benchmarks.projection_throughput [--preset ref-edgeconv|quick] [--out DIR]

Writes ``OUT/projection_throughput_<device>.json`` and ``.md``. All methods are timed in the same
run against each other (first call with compilation apart, then the median of ``repeats`` steady
calls). FLOPs: the gradient part is the hand count of ``benchmarks/tracin_throughput.py``; the
projection adds ``2 P d`` per event and checkpoint (``[C, P] @ [P, d]``), and generating ``R``
costs ``P d`` random draws per chunk and checkpoint (shared by the ``C`` events of a chunk).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax

from benchmarks.tracin_throughput import (
    WORKLOADS,
    bench_matmul,
    make_workload,
    preset_main,
    results_header,
    set_grad_flops,
    time_calls,
)
from hepattr_jax import tracin, trak
from hepattr_jax.per_example import layout_for
from hepattr_jax.projection import Projector
from hepattr_jax.sharding import event_mesh


@dataclasses.dataclass(frozen=True)
class Settings:
    workload: str  # a workload of benchmarks/tracin_throughput.py, with the edgeconv model
    n_checkpoints: int
    matmul_size: int
    dims: tuple[int, ...]
    trak_dim: int
    chunk_sizes: tuple[int, ...]  # for the d = trak_dim features
    chunk_size: int
    matrix_dim: int
    repeats: int


SETTINGS = {
    "ref-edgeconv": Settings(
        workload="ref-edgeconv",
        n_checkpoints=5,
        matmul_size=2048,
        dims=(32, 128, 512, 2048),
        trak_dim=512,
        chunk_sizes=(64, 256),
        chunk_size=64,
        matrix_dim=512,
        repeats=3,
    ),
    # The smoke test: one d everywhere, so kernels are shared; chunk 16 as the other quick
    # presets (their exact and projected kernels are then compiled once for all of them).
    "quick": Settings(
        workload="quick-edgeconv",
        n_checkpoints=2,
        matmul_size=256,
        dims=(16,),
        trak_dim=16,
        chunk_sizes=(32,),
        chunk_size=16,
        matrix_dim=16,
        repeats=1,
    ),
}


def run(preset: str) -> dict:
    s = SETTINGS[preset]
    spec = WORKLOADS[s.workload]
    t_start = time.perf_counter()
    res: dict = results_header("projection_throughput", preset, s)
    w = make_workload(spec, "edgeconv", s.n_checkpoints, 1e-3)
    layout = layout_for(w.model)
    n, k, n_params = len(w.train), len(w.ckpts), w.n_params
    grad_flops = set_grad_flops(w.model, w.train) * k
    res["workload"] = {
        "preset": preset,
        "n_train": n,
        "n_test": len(w.test),
        "n_node_range": list(spec.n_node_range),
        "n_params": n_params,
        "n_checkpoints": k,
        "dtype": "float32",
        "projection": "rademacher, block_rows 4096, seed 0",
    }

    def rate(t):
        return n / t["median_s"]

    rows = {}

    def timed(name, fn, flops):
        t = time_calls(fn, s.repeats)
        t["events_per_s"] = rate(t)
        t["gflops_per_s"] = flops / t["median_s"] / 1e9
        t["flops_per_pass"] = flops
        rows[name] = t
        print(f"  {name}: {t['events_per_s']:.0f} events/s", flush=True)
        return t

    # Exact self-influence (the figure projected featurisation is compared with).
    timed(
        "exact_self_influence",
        lambda: tracin.self_influence(
            layout, w.ckpts, w.train, chunk_size=s.chunk_size, progress=False
        ),
        grad_flops + 2 * n_params * n * k,
    )
    # Projected TracIn features against d.
    for d in s.dims:
        proj = Projector(d)
        timed(
            f"tracin_features_d{d}",
            lambda proj=proj: tracin.projected_features(
                layout, w.ckpts, w.train, proj, chunk_size=s.chunk_size, progress=False
            ),
            grad_flops + 2 * n_params * d * n * k,
        )
    # TRAK featurisation (margin gradients + margins) at d = trak_dim, two chunk sizes.
    proj = Projector(s.trak_dim)
    for c in s.chunk_sizes:
        timed(
            f"trak_features_d{s.trak_dim}_chunk{c}",
            lambda c=c: trak.featurize(
                layout, w.ckpts, w.train, proj, chunk_size=c, progress=False
            ),
            grad_flops + 2 * n_params * s.trak_dim * n * k,
        )
    # Generating R alone: all blocks of one [P, d] projection, once (per chunk and checkpoint in
    # the kernels).
    leaves = jax.tree_util.tree_leaves(w.ckpts.at(0))

    @jax.jit
    def gen_r():
        total = 0.0
        for li, leaf in enumerate(leaves):
            for b, start in enumerate(range(0, leaf.size, proj.block_rows)):
                rows_b = min(proj.block_rows, leaf.size - start)
                total = total + proj.block(li, b, rows_b, leaf.dtype).sum()
        return total

    t_r = time_calls(lambda: gen_r().block_until_ready(), max(s.repeats, 3))
    res["generate_R_once"] = {
        "d": s.trak_dim,
        "draws": n_params * s.trak_dim,
        **t_r,
        "per_pass_s_at_chunk": {
            str(c): t_r["median_s"] * k * sum(-(-int(m) // c) for m in _bucket_sizes(layout, w))
            for c in s.chunk_sizes
        },
    }
    # The projected influence matrix at d = matrix_dim: features of train and test, then pairs.
    proj_m = Projector(s.matrix_dim)

    def matrix():
        a = tracin.projected_features(
            layout, w.ckpts, w.train, proj_m, chunk_size=s.chunk_size, progress=False
        )
        b = tracin.projected_features(
            layout, w.ckpts, w.test, proj_m, chunk_size=s.chunk_size, progress=False
        )
        return tracin.influence_from_features(a, b, w.ckpts.lrs)

    t = time_calls(matrix, 1)
    res["projected_matrix"] = {
        "d": s.matrix_dim,
        "shape": [n, len(w.test)],
        **t,
        "pairs_per_s": n * len(w.test) / t["median_s"],
    }
    print(f"  projected matrix d={s.matrix_dim}: {t['median_s']:.1f} s", flush=True)
    # Devices: data parallel over events, where several exist.
    scaling = []
    devices = jax.devices()
    for nd in sorted({1, len(devices)}):
        mesh = event_mesh(devices[:nd])
        c = s.chunk_size * nd
        t = time_calls(
            lambda mesh=mesh, c=c: trak.featurize(
                layout, w.ckpts, w.train, proj, chunk_size=c, mesh=mesh, progress=False
            ),
            s.repeats,
        )
        scaling.append({"devices": nd, "chunk_size": c, **t, "events_per_s": rate(t)})
    res["device_scaling"] = scaling
    res["matmul"] = bench_matmul(s.matmul_size, s.repeats)
    res["methods"] = rows
    exact = rows["exact_self_influence"]["events_per_s"]
    res["trak_over_exact_self_influence"] = {
        name: r["events_per_s"] / exact for name, r in rows.items() if name.startswith("trak")
    }
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_s"] = time.perf_counter() - t_start
    return res


def _bucket_sizes(layout, w) -> list[int]:
    """Events per bucket of the layout's plan (each bucket's chunks are separate calls)."""
    return [len(b.positions) for b in layout.plan(w.train).buckets]


def markdown(r: dict) -> str:
    env, wl = r["environment"], r["workload"]
    lines = [
        "# Projected-gradient throughput",
        "",
        f"{r['date_utc']}; device {env['device_label']} ({env['device_kind']}, "
        f"{env['n_devices']} device(s)); jax {env['jax']}; CPU {env['cpu_model']} "
        f"({env['cpu_count']} cores); load average before {r['loadavg_before']}, after "
        f"{r['loadavg_after']}.",
        f"Workload {wl['preset']}: {wl['n_train']} train events, {wl['n_node_range']} nodes, "
        f"{wl['n_params']} parameters, K = {wl['n_checkpoints']} checkpoints, {wl['dtype']}; "
        f"{wl['projection']}. Command: `{r['command']}`.",
        "",
        "| method | events/s | vs exact SI | median s (min-max) | first call s (compile s) | "
        "GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    exact = r["methods"]["exact_self_influence"]["events_per_s"]
    for name, t in r["methods"].items():
        lines.append(
            f"| {name} | {t['events_per_s']:.0f} | {t['events_per_s'] / exact:.2f}x | "
            f"{t['median_s']:.2f} ({t['min_s']:.2f}-{t['max_s']:.2f}) | "
            f"{t['first_call_s']:.1f} ({t['first_call_compile_s']:.1f}) | "
            f"{t['gflops_per_s']:.1f} |"
        )
    g = r["generate_R_once"]
    m = r["projected_matrix"]
    lines += [
        "",
        f"Matmul {r['matmul']['size']}^3: {r['matmul']['gflops_per_s']:.1f} GFLOP/s (the "
        "machine's practical float32 rate).",
        f"Generating one whole R (d = {g['d']}, {g['draws'] / 1e6:.1f} M draws): "
        f"{g['median_s'] * 1e3:.0f} ms; regenerated for every chunk and checkpoint it would "
        "cost "
        + ", ".join(f"{v:.1f} s per pass at chunk {c}" for c, v in g["per_pass_s_at_chunk"].items())
        + " (an upper bound: R does not depend on the checkpoint, and where the measured pass is "
        "shorter XLA has hoisted its generation out of the loop over checkpoints).",
        f"Projected influence matrix {m['shape'][0]} x {m['shape'][1]} at d = {m['d']}: "
        f"{m['median_s']:.1f} s including compilation ({m['pairs_per_s']:.3g} pairs/s).",
        "",
        "| devices | chunk | TRAK features events/s |",
        "|---|---|---|",
    ]
    for row in r["device_scaling"]:
        lines.append(f"| {row['devices']} | {row['chunk_size']} | {row['events_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return preset_main(
        argv, __doc__, SETTINGS, "ref-edgeconv", "projection_throughput", run, markdown
    )


if __name__ == "__main__":
    main()
