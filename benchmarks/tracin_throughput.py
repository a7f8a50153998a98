"""TracIn throughput on the fixed "ref-edgeconv" workload (shared/spec/benchmark-workload.md).

Command (from the repository root; the full preset takes roughly 10-20 minutes on a 2-core CPU)::

    python benchmarks/tracin_throughput.py [--preset ref-edgeconv|quick] [--out benchmarks/results]
        [--skip-memory-scaling] [--skip-matrix]

Writes ``OUT/tracin_throughput_<device>.json`` (every number) and ``.md`` (tables); presets other
than ref-edgeconv put their name in the file name. Figures (definitions in benchmarks/README.md):

1. self-influence events/s at K checkpoints: the reference loop (timed on a subset and
   extrapolated), the dense EdgeConv kernel at several chunk sizes, the generic GraphLayout path;
2. peak RSS after each phase, XLA's compiled memory per kernel;
3. overhead ratio of per-event gradients over one ordinary batched gradient (two baselines);
4. the exact train x test influence matrix;
5. memory scaling: self-influence of many simulated events in a subprocess (its own peak RSS);
6. FLOPs per event from XLA's cost analysis beside a hand count, achieved GFLOP/s beside a large
   matmul's rate;
7. device, versions, CPU, load average, shapes and seeds.

Compilation is timed apart: the first call of each timed function (compile + run) is reported
alone, then ``repeats`` steady calls give the median and min/max. The library caches its jitted
kernels per layout, so steady calls reuse the compilation (checked: they compile nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hepattr_jax import per_example, tracin
from hepattr_jax.data.susy_sim import simulate_susy
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.environment import cpu_model
from hepattr_jax.graphs import GraphSet, build_graphs
from hepattr_jax.losses import mean_loss
from hepattr_jax.models import count_params, make_model
from hepattr_jax.per_example import GraphLayout, NeighbourLayout

REF_N_PARAMS = 46_081  # edgeconv-64 with 7 node features, from the workload spec


# --------------------------------------------------------------------- presets
@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything that fixes one benchmark run (shapes, seeds, chunkings, repeats)."""

    name: str
    n_train: int
    n_test: int
    n_node_range: tuple[int, int]
    n_features: int
    n_checkpoints: int
    lr: float
    reference_subset: int  # events the reference loop is timed on (extrapolated to n_train)
    chunk_sizes: tuple[int, ...]  # dense kernel
    generic_chunk_sizes: tuple[int, ...]  # GraphLayout(model.apply)
    overhead_chunk_size: int  # per-event vs batched gradient, and the FLOP figures
    training_batch_size: int  # baseline (ii): GraphsTuple training batches
    matrix_chunk_size: int
    memory_scaling_events: int
    memory_scaling_chunk_size: int
    matmul_size: int
    repeats: int
    train_seed: int = 0
    test_seed: int = 1
    param_seed: int = 0
    memory_scaling_seed: int = 0


PRESETS = {
    "ref-edgeconv": Preset(
        name="ref-edgeconv",
        n_train=4096,
        n_test=1024,
        n_node_range=(4, 12),
        n_features=7,
        n_checkpoints=5,
        lr=1e-3,
        reference_subset=256,
        chunk_sizes=(32, 64, 128, 256, 512),
        generic_chunk_sizes=(32, 128),
        overhead_chunk_size=128,
        training_batch_size=128,
        matrix_chunk_size=128,
        memory_scaling_events=200_000,
        memory_scaling_chunk_size=512,
        matmul_size=2048,
        repeats=3,
    ),
    # Tiny shapes for the smoke test: one node count, so each kernel compiles once.
    "quick": Preset(
        name="quick",
        n_train=128,
        n_test=32,
        n_node_range=(5, 5),
        n_features=7,
        n_checkpoints=2,
        lr=1e-3,
        reference_subset=16,
        chunk_sizes=(32,),
        generic_chunk_sizes=(32,),
        overhead_chunk_size=32,
        training_batch_size=32,
        matrix_chunk_size=32,
        memory_scaling_events=300,
        memory_scaling_chunk_size=128,
        matmul_size=256,
        repeats=3,
    ),
}


# --------------------------------------------------------------------- environment
def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (``ru_maxrss``), in GB (1e9 bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


def own_peak_rss_gb() -> float:
    """Peak RSS of this process image (``VmHWM``), in GB; ``ru_maxrss`` where /proc is absent.

    Linux carries ``ru_maxrss`` across ``execve`` (a child started by a large parent reports at
    least the parent's size at the fork), so a subprocess measures its own peak with ``VmHWM``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return peak_rss_gb()


def device_peak_bytes() -> int | None:
    """Peak bytes in use on the accelerator (None where the backend reports nothing, e.g. CPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_label() -> str:
    """File-name label: ``gpu-<kind>`` on an accelerator, ``cpu-<model>-<cores>c`` on a CPU."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu-{_slug(cpu_model())}-{os.cpu_count()}c"
    return f"{dev.platform}-{_slug(dev.device_kind)}"


def environment() -> dict:
    import flax
    import jaxlib

    dev = jax.devices()[0]
    return {
        "device_kind": dev.device_kind,
        "platform": dev.platform,
        "n_devices": jax.device_count(),
        "device_label": device_label(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
    }


# --------------------------------------------------------------------- timing
_COMPILE_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "backend_compile_s",
}


class CompileClock:
    """Seconds JAX spends tracing, lowering and compiling while active (``jax.monitoring``).

    Compilation runs synchronously in the calling thread, so ``wall - seconds`` is the time of
    the run itself. Zero inside steady calls shows that nothing recompiled.
    """

    def __init__(self):
        self.totals = dict.fromkeys(_COMPILE_EVENTS.values(), 0.0)

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event in _COMPILE_EVENTS:
            self.totals[_COMPILE_EVENTS[event]] += duration

    @property
    def seconds(self) -> float:
        return sum(self.totals.values())

    def __enter__(self) -> CompileClock:
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._on_event)


def time_calls(fn: Callable[[], Any], repeats: int) -> dict:
    """First call (compile + run) timed alone, then ``repeats`` steady calls.

    ``fn`` must block until its result is ready (the library's functions return NumPy).
    """
    with CompileClock() as first_clock:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
    times = []
    with CompileClock() as steady_clock:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {
        "first_call_s": first,
        "first_call_compile_s": first_clock.seconds,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "times_s": times,
        "steady_calls_compile_s": steady_clock.seconds,
    }


# --------------------------------------------------------------------- workload
class Workload(NamedTuple):
    train: GraphSet
    test: GraphSet
    model: Any
    ckpts: tracin.Checkpoints
    n_params: int


def make_checkpoints(model, gs: GraphSet, k: int, lr: float, seed: int) -> tracin.Checkpoints:
    """K random parameter sets, from ``fold_in(key(seed), k)``, each with learning rate ``lr``."""
    example = gs.training_batch(np.arange(min(2, len(gs))), gs.batch_budget(2)).graphs
    key = jax.random.key(seed)
    params = [model.init(jax.random.fold_in(key, i), example) for i in range(k)]
    return tracin.Checkpoints.from_list(params, [lr] * k, steps=range(k))


def make_workload(p: Preset) -> Workload:
    gen = functools.partial(random_events, n_node_range=p.n_node_range, n_features=p.n_features)
    train = build_graphs(gen(p.n_train, seed=p.train_seed), "fully_connected")
    test = build_graphs(gen(p.n_test, seed=p.test_seed), "fully_connected")
    model = make_model("edgeconv")
    ckpts = make_checkpoints(model, train, p.n_checkpoints, p.lr, p.param_seed)
    n_params = count_params(ckpts.at(0))
    if p.name == "ref-edgeconv" and n_params != REF_N_PARAMS:
        raise RuntimeError(f"edgeconv has {n_params} parameters, the workload fixes {REF_N_PARAMS}")
    return Workload(train, test, model, ckpts, n_params)


def workload_info(p: Preset, w: Workload) -> dict:
    return {
        "n_train": len(w.train),
        "n_test": len(w.test),
        "n_node_range": list(p.n_node_range),
        "n_node_mean_train": float(w.train.events.n_node.mean()),
        "n_features": p.n_features,
        "edges": w.train.edges,
        "model": "edgeconv (hidden 64, 3 EdgeConv blocks, readout 64)",
        "n_params": w.n_params,
        "n_checkpoints": len(w.ckpts),
        "lr_k": [float(x) for x in w.ckpts.lrs],
        "dtype": "float32",
        "generator": "hepattr_jax.data.synthetic.random_events",
        "seeds": {
            "train_events": p.train_seed,
            "test_events": p.test_seed,
            "params": f"fold_in(key({p.param_seed}), k), k = 0..{len(w.ckpts) - 1}",
            "memory_scaling_events": p.memory_scaling_seed,
        },
    }


def first_checkpoint(ckpts: tracin.Checkpoints) -> tracin.Checkpoints:
    return tracin.Checkpoints.from_list([ckpts.at(0)], ckpts.lrs[:1])


# --------------------------------------------------------------------- XLA analysis
def _cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):  # older jaxlibs: one dict per computation
        ca = ca[0] if ca else {}
    return ca or {}


def xla_stats(compiled) -> dict:
    """FLOPs (XLA cost analysis) and memory sizes (XLA memory analysis) of a compiled kernel."""
    out = {"flops": _cost(compiled).get("flops")}
    mem = compiled.memory_analysis()
    for field in ("temp", "argument", "output", "generated_code"):
        out[f"{field}_bytes"] = getattr(mem, f"{field}_size_in_bytes", None) if mem else None
    return out


@functools.cache
def scan_cost_counts_trips() -> bool:
    """Whether XLA's cost analysis multiplies a ``lax.scan`` body by its trip count.

    (In jax 0.10.2 it does not: a while loop's body is counted once.)
    """

    def f(xs):
        return jax.lax.scan(lambda c, x: (c, (x @ x).sum()), None, xs)[1]

    flops = [
        _cost(jax.jit(f).lower(np.ones((k, 32, 32), np.float32)).compile())["flops"] for k in (1, 4)
    ]
    return flops[1] > 2 * flops[0]


def bucket_stats(lower: Callable, layout, gs: GraphSet, chunk_size: int) -> dict[int, dict]:
    """XLA stats per node-count bucket: ``lower(chunk_data)`` must return a ``jax.stages.Lowered``.

    Runs after the timed calls, so compilation is a cache hit (``analysis_compile_s`` shows it).
    """
    out = {}
    for chunk in layout.chunks(gs, chunk_size):
        n = int(gs.events.n_node[chunk.positions[0]])
        if n not in out:
            with CompileClock() as clock:
                out[n] = xla_stats(lower(chunk.data).compile())
            out[n]["analysis_compile_s"] = clock.seconds  # ~0: the timed calls compiled it
    return out


def chunk_counts(gs: GraphSet, chunk_size: int) -> dict[int, int]:
    """Number of chunks per node-count bucket (each is one kernel call of ``chunk_size`` slots)."""
    counts: dict[int, int] = {}
    for n, c in zip(*np.unique(gs.events.n_node, return_counts=True), strict=True):
        counts[int(n)] = -(-int(c) // chunk_size)
    return counts


def kernel_summary(stats: dict[int, dict], counts: dict[int, int], per_call_repeat: int) -> dict:
    """Executed FLOPs over one pass (``per_call_repeat`` = scan trips not in XLA's count)."""
    flops = [s["flops"] for s in stats.values()]
    temps = [s["temp_bytes"] for s in stats.values() if s["temp_bytes"] is not None]
    total = (
        sum(stats[n]["flops"] * counts[n] for n in stats) * per_call_repeat
        if all(f is not None for f in flops)
        else None
    )
    return {
        "executed_flops_per_pass": total,
        "xla_temp_bytes_max_over_buckets": max(temps) if temps else None,
        "per_bucket": {str(n): s for n, s in sorted(stats.items())},
    }


def hand_flops_per_event(n: int, f: int, hidden=64, blocks=3, readout=64) -> float:
    """Matmul FLOPs (2 per multiply-add) of one event's forward + backward pass, dense layout.

    Forward multiply-adds: encoder ``n F H``; per block the two per-node products of the
    factorised first edge layer ``2 n H^2``, the second edge layer over the ``n x n`` block
    ``n^2 H^2`` and the masked mean ``n^2 H``; readout ``2H R + R``. Backward: a weight gradient
    and an input gradient per matmul (none for the data input), i.e. ``3 x forward - n F H``.
    Elementwise work (ReLU, adds, the loss) is left out, so XLA's count should be a little higher.
    """
    fwd = n * f * hidden + blocks * (2 * n * hidden**2 + n * n * hidden**2 + n * n * hidden)
    fwd += 2 * hidden * readout + readout
    return 2.0 * (3 * fwd - n * f * hidden)


def flop_table(p: Preset, w: Workload, si_stats: dict, bg_stats: dict, scan_trips: bool) -> dict:
    """Per node count: XLA FLOPs per event per checkpoint vs the hand count."""
    c = p.overhead_chunk_size
    k_in_count = len(w.ckpts) if scan_trips else 1
    rows, weights = [], []
    for n in sorted(si_stats):
        hand = hand_flops_per_event(n, p.n_features)
        xla_si = si_stats[n]["flops"] / (c * k_in_count)
        xla_bg = bg_stats[n]["flops"] / c
        rows.append(
            {
                "n_node": n,
                "xla_self_influence_flops_per_event": xla_si,
                "xla_batch_grad_flops_per_event": xla_bg,
                "hand_flops_per_event": hand,
                "hand_self_influence_flops_per_event": hand + 2 * w.n_params,
                "ratio_xla_over_hand_self_influence": xla_si / (hand + 2 * w.n_params),
                "ratio_xla_over_hand_batch_grad": xla_bg / hand,
            }
        )
        weights.append(int((w.train.events.n_node == n).sum()))

    def mean(key):
        return float(np.average([r[key] for r in rows], weights=weights))

    return {
        "chunk_size": c,
        "per_node_count": rows,
        "mean_over_train": {
            k: mean(k)
            for k in (
                "xla_self_influence_flops_per_event",
                "xla_batch_grad_flops_per_event",
                "hand_flops_per_event",
                "hand_self_influence_flops_per_event",
            )
        },
        "note": "per event per checkpoint; padded slots of a chunk's tail are not included here",
    }


def bench_matmul(size: int, repeats: int) -> dict:
    """Practical float32 peak: median time of a ``size^3`` matmul."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (size, size), jnp.float32)
    b = jax.random.normal(kb, (size, size), jnp.float32)
    f = jax.jit(jnp.matmul)
    t = time_calls(lambda: f(a, b).block_until_ready(), max(repeats, 5))
    flops = 2.0 * size**3
    return {"size": size, **t, "flops": flops, "gflops_per_s": flops / t["median_s"] / 1e9}


# --------------------------------------------------------------------- 1. self-influence
def bench_reference(p: Preset, w: Workload) -> dict:
    """The per-event loop on the first ``reference_subset`` train events, all K checkpoints."""
    n = min(p.reference_subset, len(w.train))
    sub = w.train.select(np.arange(n))
    values = {}

    def run():
        values["si"] = tracin.self_influence_reference(w.model.apply, w.ckpts, sub)

    t = time_calls(run, p.repeats)
    rate = n / t["median_s"]
    return {
        "n_events_timed": n,
        "n_checkpoints": len(w.ckpts),
        **t,
        "events_per_s": rate,
        "extrapolated_s_for_n_train": len(w.train) / rate,
        "note": (
            f"tracin.self_influence_reference timed on the first {n} train events x "
            f"{len(w.ckpts)} checkpoints; events/s extrapolated (the loop is linear in events)"
        ),
        "_values": values["si"],
    }


def bench_fast(p: Preset, w: Workload, layout, chunk_size: int) -> dict:
    """``tracin.self_influence(layout, ...)`` over all train events at one chunk size."""
    values = {}

    def run():
        values["si"] = tracin.self_influence(
            layout, w.ckpts, w.train, chunk_size=chunk_size, progress=False
        )

    t = time_calls(run, p.repeats)
    kernel = per_example.self_influence_kernel(layout)
    lrs = w.ckpts.lr_array()
    stats = bucket_stats(
        lambda data: kernel.lower(w.ckpts.params, lrs, data), layout, w.train, chunk_size
    )
    trips = 1 if scan_cost_counts_trips() else len(w.ckpts)
    summary = kernel_summary(stats, chunk_counts(w.train, chunk_size), trips)
    out = {"chunk_size": chunk_size, **t, "events_per_s": len(w.train) / t["median_s"], **summary}
    if summary["executed_flops_per_pass"]:
        out["achieved_gflops_per_s"] = summary["executed_flops_per_pass"] / t["median_s"] / 1e9
    out["peak_rss_gb_so_far"] = peak_rss_gb()
    out["_values"] = values["si"]
    return out


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def bench_self_influence(p: Preset, w: Workload) -> dict:
    ref = bench_reference(p, w)
    ref_values = ref.pop("_values")
    n_ref = len(ref_values)
    dense_layout, generic_layout = NeighbourLayout(w.model), GraphLayout(w.model)
    results = {"reference_loop": ref, "dense": [], "generic": []}
    for name, layout, sizes in (
        ("dense", dense_layout, p.chunk_sizes),
        ("generic", generic_layout, p.generic_chunk_sizes),
    ):
        for c in sizes:
            r = bench_fast(p, w, layout, c)
            r["speedup_vs_reference"] = r["events_per_s"] / ref["events_per_s"]
            r["max_rel_diff_vs_reference"] = max_rel_diff(r.pop("_values")[:n_ref], ref_values)
            results[name].append(r)
            print(f"  {name} chunk {c}: {r['events_per_s']:.0f} events/s", flush=True)
    results["layouts"] = {
        "dense": "per_example.NeighbourLayout(w.model)",
        "generic": "per_example.GraphLayout(model)",
    }
    return results


# --------------------------------------------------------------------- 3. overhead ratio
def _time_chunked_grads(kernel, params, layout, gs: GraphSet, chunk_size: int) -> Callable:
    def run():
        for chunk in layout.chunks(gs, chunk_size):
            jax.block_until_ready(kernel(params, chunk.data))

    return run


def _time_training_grads(grad_fn, params, gs: GraphSet, batch_size: int) -> Callable:
    budget = gs.batch_budget(batch_size)

    def run():
        for s in range(0, len(gs), batch_size):
            batch = gs.training_batch(np.arange(s, min(s + batch_size, len(gs))), budget)
            jax.block_until_ready(grad_fn(params, batch))

    return run


def bench_overhead(p: Preset, w: Workload) -> dict:
    """Per-event self-influence at one checkpoint over one ordinary gradient pass, same events."""
    layout, c = NeighbourLayout(w.model), p.overhead_chunk_size
    ck1 = first_checkpoint(w.ckpts)
    params = w.ckpts.at(0)
    per_event = time_calls(
        lambda: tracin.self_influence(layout, ck1, w.train, chunk_size=c, progress=False),
        p.repeats,
    )
    bg_kernel = per_example.batch_grad_kernel(layout)
    strict = time_calls(_time_chunked_grads(bg_kernel, params, layout, w.train, c), p.repeats)
    train_grad = jax.jit(jax.grad(functools.partial(mean_loss, w.model.apply)))
    b = p.training_batch_size
    training = time_calls(_time_training_grads(train_grad, params, w.train, b), p.repeats)
    budget = w.train.batch_budget(b)
    example = w.train.training_batch(np.arange(min(b, len(w.train))), budget)
    training_stats = xla_stats(train_grad.lower(params, example).compile())
    bg_stats = bucket_stats(lambda d: bg_kernel.lower(params, d), layout, w.train, c)
    bg_summary = kernel_summary(bg_stats, chunk_counts(w.train, c), 1)
    n_batches = -(-len(w.train) // b)
    return {
        "n_events": len(w.train),
        "checkpoint": 0,
        "chunk_size": c,
        "per_event_self_influence": per_event,
        "batch_grad_dense": {
            **strict,
            **bg_summary,
            "what": "per_example.batch_grad_kernel(NeighbourLayout(w.model)): gradient of "
            "the summed loss, same layout and chunks",
        },
        "training_grad_graphstuple": {
            **training,
            "batch_size": b,
            "budget": budget._asdict(),
            "xla": training_stats,
            "executed_flops_per_pass": (training_stats["flops"] or 0) * n_batches or None,
            "what": "jit(grad(losses.mean_loss)) over GraphSet.training_batch batches (worst-case "
            "padding budget, as in train.py)",
        },
        "ratio_vs_batch_grad_dense": per_event["median_s"] / strict["median_s"],
        "ratio_vs_training_grad_graphstuple": per_event["median_s"] / training["median_s"],
        "_bg_stats": bg_stats,
    }


# --------------------------------------------------------------------- 4. influence matrix
def bench_matrix(p: Preset, w: Workload) -> dict:
    """Exact ``[n_train, n_test]`` TracIn matrix, timed once (its compilation measured apart)."""
    c = p.matrix_chunk_size
    with CompileClock() as clock:
        t0 = time.perf_counter()
        m = tracin.influence_matrix(
            NeighbourLayout(w.model), w.ckpts, w.train, w.test, chunk_size=c, progress=False
        )
        total = time.perf_counter() - t0
    pairs = len(w.train) * len(w.test)
    return {
        "n_train": len(w.train),
        "n_test": len(w.test),
        "n_checkpoints": len(w.ckpts),
        "chunk_size": c,
        "test_block": tracin.default_test_block(w.ckpts),
        "seconds_total": total,
        "pairs_per_s_total": pairs / total,
        "compile_s": clock.seconds,
        "compile_breakdown_s": clock.totals,
        "pairs_per_s_excluding_compile": pairs / (total - clock.seconds),
        "all_finite": bool(np.isfinite(m).all()),
        "peak_rss_gb_so_far": peak_rss_gb(),
        "note": (
            "one call; influence_matrix builds its jitted kernels on every call, so "
            "seconds_total includes compilation (compile_s, from jax.monitoring events)"
        ),
    }


# --------------------------------------------------------------------- 5. memory scaling
def memory_child(n_events: int, k: int, lr: float, chunk_size: int, seed: int) -> dict:
    """Runs in a subprocess: self-influence of ``simulate_susy(n_events)``; own peak RSS."""
    t0 = time.perf_counter()
    rss_start = own_peak_rss_gb()
    events = simulate_susy(n_events, seed=seed, with_mt2=False)
    gs = build_graphs(events, "fully_connected")
    t_data = time.perf_counter() - t0
    rss_data = own_peak_rss_gb()
    model = make_model("edgeconv")
    ckpts = make_checkpoints(model, gs, k, lr, seed)
    layout = per_example.layout_for(model, gs)
    with CompileClock() as clock:
        t1 = time.perf_counter()
        si = tracin.self_influence(layout, ckpts, gs, chunk_size=chunk_size, progress=False)
        t_si = time.perf_counter() - t1
    return {
        "n_events": n_events,
        "generator": f"hepattr_jax.data.susy_sim.simulate_susy({n_events}, seed={seed})",
        "edges": gs.edges,
        "n_node_range": [int(gs.events.n_node.min()), int(gs.events.n_node.max())],
        "n_features": events.n_features,
        "n_params": count_params(ckpts.at(0)),
        "n_checkpoints": k,
        "chunk_size": chunk_size,
        "layout": type(layout).__name__,
        "data_s": t_data,
        "self_influence_s": t_si,
        "self_influence_compile_s": clock.seconds,
        "events_per_s_including_compile": n_events / t_si,
        "events_per_s_excluding_compile": n_events / (t_si - clock.seconds),
        "wall_s": time.perf_counter() - t0,
        "peak_rss_gb": own_peak_rss_gb(),
        "peak_rss_source": "VmHWM of the subprocess (/proc/self/status)",
        "ru_maxrss_gb": peak_rss_gb(),
        "peak_rss_gb_after_imports": rss_start,
        "peak_rss_gb_after_data": rss_data,
        "device_peak_bytes": device_peak_bytes(),
        "all_finite_positive": bool(np.isfinite(si).all() and (si > 0).all()),
    }


def bench_memory_scaling(p: Preset) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        json.dumps(
            {
                "n_events": p.memory_scaling_events,
                "k": p.n_checkpoints,
                "lr": p.lr,
                "chunk_size": p.memory_scaling_chunk_size,
                "seed": p.memory_scaling_seed,
            }
        ),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"memory-scaling subprocess failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["subprocess_wall_s"] = wall
    return out


# --------------------------------------------------------------------- report
def flop_summary(p: Preset, w: Workload, si: dict, overhead: dict, matmul: dict) -> dict:
    dense = next(r for r in si["dense"] if r["chunk_size"] == p.overhead_chunk_size)
    bg = overhead["batch_grad_dense"]
    si_stats = {int(n): s for n, s in dense["per_bucket"].items()}
    table = flop_table(p, w, si_stats, overhead.pop("_bg_stats"), scan_cost_counts_trips())
    peak = matmul["gflops_per_s"]
    rate_si = dense.get("achieved_gflops_per_s")
    rate_bg = (
        bg["executed_flops_per_pass"] / bg["median_s"] / 1e9
        if bg["executed_flops_per_pass"]
        else None
    )
    tr = overhead["training_grad_graphstuple"]
    rate_tr = (
        tr["executed_flops_per_pass"] / tr["median_s"] / 1e9
        if tr["executed_flops_per_pass"]
        else None
    )
    return {
        **table,
        "xla_scan_cost_counts_trips": scan_cost_counts_trips(),
        "matmul": matmul,
        "achieved_gflops_per_s": {
            "self_influence_dense": rate_si,
            "batch_grad_dense": rate_bg,
            "training_grad_graphstuple": rate_tr,
        },
        "fraction_of_matmul_rate": {
            "self_influence_dense": rate_si / peak if rate_si else None,
            "batch_grad_dense": rate_bg / peak if rate_bg else None,
            "training_grad_graphstuple": rate_tr / peak if rate_tr else None,
        },
    }


def _fmt_t(t: dict) -> str:
    return f"{t['median_s']:.3g} ({t['min_s']:.3g}-{t['max_s']:.3g})"


def _first(t: dict) -> str:
    return f"{t['first_call_s']:.3g} ({t['first_call_compile_s']:.2g})"


def _mb(x) -> str:
    return "n/a" if x is None else f"{x / 1e6:.1f}"


def _g(x, fmt=".3g") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(res: dict) -> str:
    env, wl, si = res["environment"], res["workload"], res["self_influence"]
    ref = si["reference_loop"]
    lines = [
        f"# TracIn throughput: preset `{res['preset']}` on `{env['device_label']}`",
        "",
        f"- Date (UTC): {res['date_utc']}",
        f"- Command: `{res['command']}`",
        f"- Device: {env['platform']} / {env['device_kind']} ({env['cpu_model']}, "
        f"{env['cpu_count']} cores); load average before {res['loadavg_before']}, "
        f"after {res['loadavg_after']}",
        f"- jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, "
        f"numpy {env['numpy']}, Python {env['python']}",
        f"- Shapes: {wl['n_train']} train / {wl['n_test']} test events, n_node uniform in "
        f"{wl['n_node_range']}, F = {wl['n_features']}, {wl['edges']}, P = {wl['n_params']}, "
        f"K = {wl['n_checkpoints']} (eta_k = {wl['lr_k'][0]:g}), float32",
        f"- Seeds: {wl['seeds']}",
        f"- Total wall time {res['wall_s']:.0f} s; peak RSS {res['peak_rss_gb']:.2f} GB",
        "",
        f"## Self-influence, K = {wl['n_checkpoints']}",
        "",
        "Times in seconds for all train events: median of "
        f"{len(ref['times_s'])} steady calls (min-max); the first call (compile + run) apart, "
        "with the seconds JAX spent tracing and compiling in it (jax.monitoring) in brackets.",
        "",
        "| method | chunk | events/s | steady s | first call s (compile) | speed-up vs loop "
        "| max rel. diff vs loop | XLA temp MB | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| reference loop ({ref['n_events_timed']} events, extrapolated) | 1 "
        f"| {ref['events_per_s']:.1f} | {ref['extrapolated_s_for_n_train']:.3g} (extrap.) "
        f"| {_first(ref)} | 1 | 0 | n/a | n/a |",
    ]
    for name in ("dense", "generic"):
        for r in si[name]:
            lines.append(
                f"| {name} | {r['chunk_size']} | {r['events_per_s']:.0f} | {_fmt_t(r)} "
                f"| {_first(r)} | {r['speedup_vs_reference']:.1f}x "
                f"| {r['max_rel_diff_vs_reference']:.1e} "
                f"| {_mb(r['xla_temp_bytes_max_over_buckets'])} "
                f"| {_g(r.get('achieved_gflops_per_s'), '.1f')} |"
            )
    lines += ["", f"Reference loop: {ref['note']}; its subset took {_fmt_t(ref)} s.", ""]
    lines += _overhead_md(res.get("overhead_ratio"))
    lines += _flops_md(res.get("flops"))
    lines += _matrix_md(res.get("influence_matrix"))
    lines += _memory_md(res)
    return "\n".join(lines) + "\n"


def _overhead_md(o: dict | None) -> list[str]:
    if o is None:
        return []
    pe, bg, tr = (
        o["per_event_self_influence"],
        o["batch_grad_dense"],
        o["training_grad_graphstuple"],
    )
    return [
        "## Overhead ratio (one checkpoint)",
        "",
        f"{o['n_events']} events, checkpoint 0, chunk {o['chunk_size']}; seconds as median "
        "(min-max).",
        "",
        "| pass | steady s | first call s (compile) | ratio per-event / this |",
        "|---|---|---|---|",
        f"| per-event self-influence (dense) | {_fmt_t(pe)} | {_first(pe)} | 1 |",
        f"| (i) batched gradient, same dense layout and chunks | {_fmt_t(bg)} "
        f"| {_first(bg)} | **{o['ratio_vs_batch_grad_dense']:.2f}** |",
        f"| (ii) training-style gradient, GraphsTuple batches of {tr['batch_size']} "
        f"| {_fmt_t(tr)} | {_first(tr)} "
        f"| **{o['ratio_vs_training_grad_graphstuple']:.2f}** |",
        "",
    ]


def _flops_md(f: dict | None) -> list[str]:
    if f is None:
        return []
    m, a, fr = f["matmul"], f["achieved_gflops_per_s"], f["fraction_of_matmul_rate"]
    lines = [
        "## FLOPs (XLA cost analysis) and achieved rate",
        "",
        f"Per event per checkpoint, chunk {f['chunk_size']}; hand count = matmul FLOPs of "
        "forward + backward (self-influence adds 2P for the squared norm).",
        "",
        "| n_node | XLA self-influence MFLOP | hand MFLOP | ratio | XLA batch-grad MFLOP | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in f["per_node_count"]:
        lines.append(
            f"| {r['n_node']} | {r['xla_self_influence_flops_per_event'] / 1e6:.2f} "
            f"| {r['hand_self_influence_flops_per_event'] / 1e6:.2f} "
            f"| {r['ratio_xla_over_hand_self_influence']:.2f} "
            f"| {r['xla_batch_grad_flops_per_event'] / 1e6:.2f} "
            f"| {r['ratio_xla_over_hand_batch_grad']:.2f} |"
        )
    mo = f["mean_over_train"]
    lines += [
        f"| mean | {mo['xla_self_influence_flops_per_event'] / 1e6:.2f} "
        f"| {mo['hand_self_influence_flops_per_event'] / 1e6:.2f} | "
        f"| {mo['xla_batch_grad_flops_per_event'] / 1e6:.2f} | |",
        "",
        "| kernel | achieved GFLOP/s | fraction of matmul rate |",
        "|---|---|---|",
        f"| matmul {m['size']}^3 float32 (median {m['median_s']:.3g} s) "
        f"| {m['gflops_per_s']:.1f} | 1 |",
    ]
    for k in ("self_influence_dense", "batch_grad_dense", "training_grad_graphstuple"):
        lines.append(f"| {k} | {_g(a[k], '.1f')} | {_g(fr[k], '.2f')} |")
    return lines + [""]


def _matrix_md(m: dict | None) -> list[str]:
    if m is None:
        return []
    if m.get("skipped"):
        return ["## Train x test influence matrix", "", "Skipped (`--skip-matrix`).", ""]
    return [
        "## Train x test influence matrix (exact)",
        "",
        f"{m['n_train']} x {m['n_test']} pairs, K = {m['n_checkpoints']}, chunk "
        f"{m['chunk_size']}, test block {m['test_block']}: **{m['seconds_total']:.1f} s** "
        f"in all ({m['pairs_per_s_total']:.3g} pairs/s, compilation included); of which "
        f"compilation {m['compile_s']:.1f} s, so "
        f"{m['pairs_per_s_excluding_compile']:.3g} pairs/s without it.",
        "",
    ]


def _memory_md(res: dict) -> list[str]:
    lines = ["## Memory", "", "| phase | peak RSS so far (GB) |", "|---|---|"]
    for phase, gb in res["peak_rss_gb_after"].items():
        lines.append(f"| {phase} | {gb:.2f} |")
    ms = res.get("memory_scaling")
    lines.append("")
    if ms is None or ms.get("skipped"):
        return lines + ["Memory scaling skipped (`--skip-memory-scaling`).", ""]
    return lines + [
        f"Memory scaling (own subprocess): {ms['generator']}, {ms['edges']} graphs of "
        f"{ms['n_node_range'][0]}-{ms['n_node_range'][1]} nodes, F = {ms['n_features']}, "
        f"P = {ms['n_params']}, K = {ms['n_checkpoints']}, chunk {ms['chunk_size']} "
        f"({ms['layout']}): peak RSS **{ms['peak_rss_gb']:.2f} GB** (after imports "
        f"{ms['peak_rss_gb_after_imports']:.2f}, after data {ms['peak_rss_gb_after_data']:.2f}); "
        f"wall {ms['wall_s']:.1f} s (data {ms['data_s']:.1f} s, self-influence "
        f"{ms['self_influence_s']:.1f} s of which compilation "
        f"{ms['self_influence_compile_s']:.1f} s; "
        f"{ms['events_per_s_excluding_compile']:.0f} events/s without compilation).",
        "",
    ]


def write_results(res: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if res["preset"] == "ref-edgeconv" else f"{res['preset']}_"
    stem = out_dir / f"tracin_throughput_{tag}{res['environment']['device_label']}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    md_path.write_text(markdown(res))
    return json_path, md_path


# --------------------------------------------------------------------- driver
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="ref-edgeconv")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--skip-memory-scaling", action="store_true")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)  # internal: JSON of kwargs
    return ap.parse_args(argv)


def run_benchmark(p: Preset, args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    res: dict = {
        "benchmark": "tracin_throughput",
        "preset": p.name,
        "preset_settings": dataclasses.asdict(p),
        "command": _command(args),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "environment": environment(),
    }
    rss: dict[str, float] = {"start": peak_rss_gb()}
    w = make_workload(p)
    res["workload"] = workload_info(p, w)
    rss["workload"] = peak_rss_gb()
    # First, so that a failure shows early; its own process, so its own peak RSS.
    if args.skip_memory_scaling:
        res["memory_scaling"] = {"skipped": True}
    else:
        print(f"[{p.name}] memory scaling ({p.memory_scaling_events} events)", flush=True)
        res["memory_scaling"] = bench_memory_scaling(p)
    print(f"[{p.name}] self-influence", flush=True)
    res["self_influence"] = bench_self_influence(p, w)
    rss["self_influence"] = peak_rss_gb()
    print(f"[{p.name}] overhead ratio", flush=True)
    res["overhead_ratio"] = bench_overhead(p, w)
    rss["overhead_ratio"] = peak_rss_gb()
    print(f"[{p.name}] matmul + FLOPs", flush=True)
    matmul = bench_matmul(p.matmul_size, p.repeats)
    res["flops"] = flop_summary(p, w, res["self_influence"], res["overhead_ratio"], matmul)
    if args.skip_matrix:
        res["influence_matrix"] = {"skipped": True}
    else:
        print(f"[{p.name}] influence matrix", flush=True)
        res["influence_matrix"] = bench_matrix(p, w)
        rss["influence_matrix"] = peak_rss_gb()
    res["peak_rss_gb_after"] = rss
    res["peak_rss_gb"] = peak_rss_gb()
    res["device_peak_bytes"] = device_peak_bytes()
    res["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_s"] = time.perf_counter() - t_start
    return res


def _command(args: argparse.Namespace) -> str:
    parts = [
        "python benchmarks/tracin_throughput.py",
        f"--preset {args.preset}",
        f"--out {args.out}",
    ]
    parts += ["--skip-memory-scaling"] if args.skip_memory_scaling else []
    parts += ["--skip-matrix"] if args.skip_matrix else []
    return " ".join(parts)


def main(argv=None) -> dict:
    """Runs the benchmark, writes the JSON and markdown results, returns the results dict."""
    args = parse_args(argv)
    if args.memory_child:
        out = memory_child(**json.loads(args.memory_child))
        print(json.dumps(out))
        return out
    res = run_benchmark(PRESETS[args.preset], args)
    json_path, md_path = write_results(res, Path(args.out))
    res["files"] = {"json": str(json_path), "markdown": str(md_path)}
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return res


if __name__ == "__main__":
    main()
