"""Exact TracIn throughput of every built-in model on the fixed workloads of
shared/spec/benchmark-workload.md ("ref-edgeconv" and "ref-jets").

Command (from the repository root; the full ``ref`` preset takes about 15-25 minutes on a quiet
2-core CPU for the three general GNNs, and longer with the jet models on ref-jets)::

    python benchmarks/tracin_throughput.py [--preset ref|quick] [--out benchmarks/results]
        [--workloads ref-edgeconv,ref-jets] [--models edgeconv,particlenet,part]
        [--chunks ref-jets=16,64] [--matrix-workloads ref-edgeconv,ref-jets]
        [--skip-matrix] [--skip-cache-check]

Writes ``OUT/tracin_throughput_<device>.json`` (every number) and ``.md`` (tables); presets other
than ``ref`` put their name in the file name. Each workload has its own models (ref-edgeconv:
edgeconv, interaction, gcn; ref-jets: all six built-in models, the jet models particlenet,
dynedge and part included); ``--models`` runs the named ones on every chosen workload instead.
Per model and workload (definitions in benchmarks/README.md):

1. exact self-influence events/s through the engine (``tracin.self_influence(layout_for(model),
   ...)``), steady median and first call (compile seconds apart), at the workload's chunk sizes;
2. padding waste of the bucket plan and the number of compiled shapes;
3. useful GFLOP/s (hand count at each event's real size) and its fraction of a 2048^3 float32
   matmul timed in the same run; XLA's cost analysis beside the hand count, one chunk per bucket;
4. the overhead ratio against one ordinary batched training gradient of the same events;
5. the reference loop (each event padded to its own size) on a subset, and the speed-up;
6. the exact train x test matrix in a subprocess (its own peak RSS);
7. compile share of the first pass, and JAX's persistent compilation cache across processes.

Every timed function is called once alone (the first call: compilation + run, with the seconds
JAX spent compiling in it, from ``jax.monitoring``), then ``repeats`` steady calls: the figure
is their median, and the steady calls are checked to compile nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np

from hepattr_jax import per_example, tracin
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.environment import cpu_model, provenance
from hepattr_jax.graphs import GraphSet, build_graphs
from hepattr_jax.losses import mean_loss
from hepattr_jax.models import (
    MODELS,
    DynEdge,
    EdgeConvNet,
    GCNNet,
    InteractionNet,
    ParticleNet,
    ParticleTransformer,
    count_params,
    make_model,
)
from hepattr_jax.per_example import NeighbourLayout, layout_for, neighbour_mean_loss
from hepattr_jax.train import batches as train_batches
from hepattr_jax.train import neighbour_training_shape

REF_N_PARAMS = 46_081  # edgeconv-64 with 7 node features, from the workload spec
GRAPH_MODEL_NAMES = ("edgeconv", "interaction", "gcn")  # general GNNs, on every workload
JET_MODEL_NAMES = ("particlenet", "dynedge", "part")  # jet models: on the jet workloads
MODEL_NAMES = GRAPH_MODEL_NAMES + JET_MODEL_NAMES  # every built-in model (``--models``)
assert set(MODEL_NAMES) == set(MODELS), "the benchmark must know every built-in model"


# --------------------------------------------------------------------- workloads and presets
@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """One fixed set of train/test events (shapes, edges, seeds) and how it is timed."""

    name: str
    n_train: int
    n_test: int
    n_node_range: tuple[int, int]
    edges: str  # "fully_connected" or "knn:K"
    chunk_sizes: tuple[int, ...]  # self-influence; the first is also the matrix's
    reference_subset: int  # train events the reference loop is timed on
    coord_spread: float | None = None  # scale of features 0 and 1 (delta-eta, delta-phi)
    models: tuple[str, ...] = GRAPH_MODEL_NAMES  # run on it unless --models names others
    n_features: int = 7
    training_batch_size: int = 128  # train.py's default (config.TrainConfig.batch_size)
    train_seed: int = 0
    test_seed: int = 1


WORKLOADS = {
    "ref-edgeconv": WorkloadSpec(
        "ref-edgeconv", 4096, 1024, (4, 12), "fully_connected", (64, 256), reference_subset=128
    ),
    "ref-jets": WorkloadSpec(
        "ref-jets",
        4096,
        1024,
        (16, 96),
        "knn:16",
        (32,),
        reference_subset=24,
        coord_spread=0.4,
        models=MODEL_NAMES,
    ),
    # Tiny shapes for the smoke test: one node count each, so every kernel compiles once.
    # edgeconv and gcn on complete graphs, edgeconv alone on kNN graphs (the smoke test checks
    # every model's hand FLOP count against XLA's apart, without running the whole pipeline;
    # the interaction network's kernels are the same engine's, tested in tests/test_tracin.py).
    "quick-edgeconv": WorkloadSpec(
        "quick-edgeconv",
        48,
        16,
        (5, 5),
        "fully_connected",
        (16,),
        8,
        training_batch_size=16,
        models=("edgeconv", "gcn"),
    ),
    "quick-jets": WorkloadSpec(
        "quick-jets",
        32,
        8,
        (10, 10),
        "knn:4",
        (16,),
        6,
        0.4,
        training_batch_size=16,
        models=("edgeconv",),
    ),
}


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    workloads: tuple[str, ...]  # each runs its own WorkloadSpec.models
    matrix_workloads: tuple[str, ...]  # edgeconv's exact matrix on these
    cache_check: tuple[str, str]  # (workload, model) of the persistent-cache check
    n_checkpoints: int
    lr: float
    repeats: int
    matmul_size: int
    param_seed: int = 0


PRESETS = {
    "ref": Preset(
        "ref",
        ("ref-edgeconv", "ref-jets"),
        ("ref-edgeconv",),
        ("ref-edgeconv", "edgeconv"),
        n_checkpoints=5,
        lr=1e-3,
        repeats=2,
        matmul_size=2048,
    ),
    "quick": Preset(
        "quick",
        ("quick-edgeconv", "quick-jets"),
        ("quick-edgeconv",),
        ("quick-edgeconv", "gcn"),
        n_checkpoints=2,
        lr=1e-3,
        repeats=2,
        matmul_size=256,
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


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_label() -> str:
    """File-name label: ``gpu-<kind>`` on an accelerator, ``cpu-<model>-<cores>c`` on a CPU."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return f"cpu-{_slug(cpu_model())}-{os.cpu_count()}c"
    return f"{dev.platform}-{_slug(dev.device_kind)}"


def environment() -> dict:
    """:func:`hepattr_jax.environment.provenance` flattened under the keys the tables use, plus
    the benchmark's own: file label, CPU affinity and the XLA settings of the run."""
    prov = provenance()
    v = prov["versions"]
    return {
        "device_kind": prov["device_kind"],
        "platform": prov["backend"],
        "n_devices": prov["n_devices"],
        "device_label": device_label(),
        "jax": v["jax"],
        "jaxlib": v["jaxlib"],
        "flax": v["flax"],
        "numpy": v["numpy"],
        "python": v["python"],
        "cpu_model": prov["cpu_model"],
        "cpu_count": prov["cpu_count"],
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
        "versions": v,
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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


def bench_matmul(size: int, repeats: int) -> dict:
    """Practical float32 peak: median time of a ``size^3`` matmul."""
    ka, kb = jax.random.split(jax.random.key(0))
    a = jax.random.normal(ka, (size, size), jnp.float32)
    b = jax.random.normal(kb, (size, size), jnp.float32)
    f = jax.jit(jnp.matmul)
    t = time_calls(lambda: f(a, b).block_until_ready(), max(repeats, 5))
    flops = 2.0 * size**3
    return {"size": size, **t, "flops": flops, "gflops_per_s": flops / t["median_s"] / 1e9}


# --------------------------------------------------------------------- data and checkpoints
class Workload(NamedTuple):
    spec: WorkloadSpec
    train: GraphSet
    test: GraphSet
    model_name: str
    model: Any
    ckpts: tracin.Checkpoints
    n_params: int


def make_events(spec: WorkloadSpec, n: int, seed: int):
    ev = random_events(n, n_node_range=spec.n_node_range, n_features=spec.n_features, seed=seed)
    if spec.coord_spread is not None:  # (delta-eta, delta-phi) with spread ~coord_spread
        nodes = ev.nodes.copy()
        nodes[:, :2] *= spec.coord_spread
        ev = dataclasses.replace(ev, nodes=nodes)
    return ev


@functools.cache
def make_graphs(spec: WorkloadSpec) -> tuple[GraphSet, GraphSet]:
    """Train and test GraphSets of a workload (built once per process, shared by the models)."""
    train = build_graphs(make_events(spec, spec.n_train, spec.train_seed), spec.edges)
    test = build_graphs(make_events(spec, spec.n_test, spec.test_seed), spec.edges)
    return train, test


def make_checkpoints(model, gs: GraphSet, k: int, lr: float, seed: int) -> tracin.Checkpoints:
    """K random parameter sets, from ``fold_in(key(seed), k)``, each with learning rate ``lr``."""
    example = gs.training_batch(np.arange(min(2, len(gs))), gs.batch_budget(2)).graphs
    key = jax.random.key(seed)
    init = jax.jit(model.init)  # one compilation instead of op-by-op dispatch per checkpoint
    params = [init(jax.random.fold_in(key, i), example) for i in range(k)]
    return tracin.Checkpoints.from_list(params, [lr] * k, steps=range(k))


def make_workload(
    spec: WorkloadSpec, model_name: str, k: int, lr: float, seed: int = 0
) -> Workload:
    train, test = make_graphs(spec)
    model = make_model(model_name)
    ckpts = make_checkpoints(model, train, k, lr, seed)
    n_params = count_params(ckpts.at(0))
    if model_name == "edgeconv" and spec.n_features == 7 and n_params != REF_N_PARAMS:
        raise RuntimeError(f"edgeconv has {n_params} parameters, the workload fixes {REF_N_PARAMS}")
    return Workload(spec, train, test, model_name, model, ckpts, n_params)


# --------------------------------------------------------------------- useful FLOPs (hand count)
def forward_macs(model, n, e, f: int):
    """Matmul multiply-adds of one event's forward pass at its real size, and of the layers that
    take the data (whose input gradient training does not need): ``(forward, data_layer)``.

    ``n`` nodes, ``e`` directed edges of the input graph, ``f`` node features; no event-level
    globals (the workloads have none). Elementwise work (activations, LayerNorm, softmax,
    aggregation sums, pooling, the loss) is left out. An edge layer whose input holds per-node
    parts is counted at its minimal cost: ``[h_i, h_j - h_i] W`` (EdgeConv, ParticleNet,
    DynEdge; ``H_in -> C``) and ``[h_j, h_i] W`` (interaction, first block) as two per-node
    products, ``2 n H_in C`` (the models run ``3 n H_in C``); the interaction network's later
    ``[e_ij, h_j, h_i] W`` as ``e H^2 + 2 n H^2`` (the model itself runs the ``h`` parts per
    edge there, ``3 e H^2``: more work than the useful count). Per model (``H`` hidden, ``R``
    readout hidden, defaults in brackets):

    * edgeconv: ``n f H + B (2 n H^2 + e H^2) + 2 H R + R``; data ``n f H``.
    * interaction: ``n f H + sum_b (2 n H^2 [+ e H^2 for b > 0] + e H^2 + 3 n H^2) + 2 H R + R``;
      data ``n f H``.
    * gcn: ``n f H + (L - 1) n H^2 + H R + R``; data ``n f H``.
    * particlenet, blocks ``b`` of channels ``(c_1, .., c_L)`` [(32, 32, 32), (64, 64, 64)] on
      input width ``c_in`` (``f``, then the previous block's ``c_L``): ``2 n c_in c_1`` (first
      edge layer) ``+ E_b sum_l c_l c_(l+1)`` (later edge layers) ``+ n c_in c_L`` (shortcut),
      plus for ``b > 0`` the kNN distances ``n^2 c_in`` (``d_ij = |x_i|^2 + |x_j|^2 - 2 x_i .
      x_j``, the Gram matrix a matmul); ``E_0 = e``, ``E_b = n min(k, n - 1)`` for ``b > 0``
      (kNN recomputed in feature space with the model's own ``k`` [16]; ``e`` plays no part
      there). Head ``c_L M + M`` (``M`` [128]). Data: block 0's first edge layer and shortcut,
      ``2 n f c_1 + n f c_L``.
    * dynedge, layers ``l`` of sizes ``(s_1, .., s_L)`` [4 x (128, 64)] on input width ``c_in``
      (``f``, then the previous layer's ``s_L``): ``2 n c_in s_1 + E_l sum_i s_i s_(i+1)``,
      plus kNN distances ``n^2 c_in`` for ``l > 0``; ``E_0 = e``, ``E_l = n min(k, n - 1)``
      [k = 8]. Post MLP on the skip concatenation of width ``S = f + sum_l s_L`` [f + 256]:
      ``n S p_1 + n p_1 p_2`` [(128, 64)]; readout on min/max/sum/mean pooling ``4 p_2``:
      ``4 p_2 r_1 + r_1`` [r_1 = 64]. Data: ``2 n f s_1`` (layer 0's first edge layer) ``+ n f
      p_1`` (the post MLP's rows of the input features ``x``).
    * part, width ``D`` [32], ``E_a = e + n`` attention edges (the input graph plus self loops),
      MLP ratio ``m`` [2], pair MLP hidden ``P`` [16] and ``A`` heads [4]: embedding ``n f D +
      n D^2``; pair bias ``E_a (3 P + P A)``; per block [2] ``3 n D^2`` (q, k, v) ``+ E_a D``
      (``q_i . k_j`` on every attention edge, all heads) ``+ E_a D`` (weights times ``v_j``)
      ``+ n D^2`` (projection) ``+ 2 m n D^2`` (MLP); per class-attention block [1] ``D^2 + 2 n
      D^2`` (the token's q; k, v of the nodes) ``+ 2 n D`` (scores, weighted sum) ``+ D^2 + 2 m
      D^2`` (projection, MLP); head ``D M + M`` [M = 64]. Data: ``n f D + 3 E_a P`` (the
      embedding's and the pair MLP's first layers).

    Everything is at the event's real size: the kNN graphs (and their distance matrix) at its
    ``n``, as the model computes them within the event. :func:`no_grad_macs` is the part of
    ``forward`` that carries no gradient (the kNN distances, under ``stop_gradient``).
    """
    fwd, data, _ = _macs(model, n, e, f)
    return fwd, data


def no_grad_macs(model, n, e, f: int):
    """The multiply-adds of :func:`forward_macs`'s forward pass that carry no gradient: the kNN
    distance matrices of particlenet and dynedge (``stop_gradient``), 0 for the others."""
    return _macs(model, n, e, f)[2]


def _knn_edges(model, n):
    return n * np.minimum(model.k, n - 1)


def _macs(model, n, e, f: int):
    """``(forward, data_layer, no_grad)``; see :func:`forward_macs`."""
    zero = 0 * n
    if isinstance(model, EdgeConvNet | InteractionNet | GCNNet):
        h, r = model.hidden, model.readout_hidden
        data = n * f * h
        if isinstance(model, EdgeConvNet):
            fwd = data + model.n_blocks * (2 * n * h * h + e * h * h) + 2 * h * r + r
        elif isinstance(model, InteractionNet):
            fwd = data + 2 * h * r + r
            for b in range(model.n_blocks):
                first = 2 * n * h * h + (e * h * h if b else 0)
                fwd = fwd + first + e * h * h + 3 * n * h * h  # edge MLP, node MLP [2H->H, H->H]
        else:
            fwd = data + (model.n_layers - 1) * n * h * h + h * r + r
        return fwd, data, zero
    if isinstance(model, ParticleNet):
        fwd, data, no_grad = zero, zero, zero
        c_in = f
        for b, ch in enumerate(model.blocks):
            edges = e if b == 0 else _knn_edges(model, n)
            if b > 0:
                no_grad = no_grad + n * n * c_in  # kNN distances in the block's input features
            first, shortcut = 2 * n * c_in * ch[0], n * c_in * ch[-1]
            later = edges * sum(a * c for a, c in zip(ch, ch[1:], strict=False))
            fwd = fwd + first + later + shortcut
            if b == 0:
                data = data + first + shortcut
            c_in = ch[-1]
        fwd = fwd + no_grad + c_in * model.head + model.head
        return fwd, data, no_grad
    if isinstance(model, DynEdge):
        fwd, data, no_grad = zero, zero, zero
        c_in, skip = f, f
        for layer, sizes in enumerate(model.layers):
            edges = e if layer == 0 else _knn_edges(model, n)
            if layer > 0:
                no_grad = no_grad + n * n * c_in
            first = 2 * n * c_in * sizes[0]
            fwd = fwd + first + edges * sum(a * c for a, c in zip(sizes, sizes[1:], strict=False))
            if layer == 0:
                data = data + first
            c_in = sizes[-1]
            skip += c_in
        c = skip
        for i, s in enumerate(model.post):
            fwd = fwd + n * c * s
            if i == 0:
                data = data + n * f * s  # the rows of the input features x in post_0
            c = s
        r = 4 * c  # min, max, sum, mean pooling
        for s in model.readout:
            fwd = fwd + r * s
            r = s
        return fwd + no_grad + r, data, no_grad
    if isinstance(model, ParticleTransformer):
        d, m = model.dim, model.mlp_ratio
        ea = e + n  # attention edges: the input graph plus self loops
        data = n * f * d
        fwd = data + n * d * d
        if model.pair_bias:
            pair_in = ea * 3 * model.pair_hidden
            data = data + pair_in
            fwd = fwd + pair_in + ea * model.pair_hidden * model.heads
        fwd = fwd + model.n_blocks * ((4 + 2 * m) * n * d * d + 2 * ea * d)
        if model.pooling == "cls":
            fwd = fwd + model.n_cls * (2 * n * d * d + 2 * n * d + (2 + 2 * m) * d * d)
        return fwd + d * model.head + model.head, data, zero
    raise ValueError(f"no hand FLOP count for {type(model).__name__}")


def grad_flops(model, n, e, f: int):
    """Useful FLOPs (2 per multiply-add) of one training gradient of one event: forward, then a
    weight gradient and an input gradient per matmul (no input gradient for the data layers,
    neither for the matmuls without gradient, :func:`no_grad_macs`): ``2 (3 forward -
    data_layer - 2 no_grad)``. Works elementwise on arrays of ``n`` and ``e``."""
    args = (model, np.asarray(n, np.float64), np.asarray(e, np.float64), f)
    fwd, data, no_grad = _macs(*args)
    return 2.0 * (3.0 * fwd - data - 2.0 * no_grad)


def set_grad_flops(model, gs: GraphSet) -> float:
    """Useful gradient FLOPs summed over the events of ``gs`` (one checkpoint)."""
    return float(grad_flops(model, gs.events.n_node, gs.n_edge, gs.events.n_features).sum())


def self_influence_flops(w: Workload) -> float:
    """Useful FLOPs of one exact self-influence pass: ``K (sum_z grad(z) + N 2P)``."""
    k = len(w.ckpts)
    return k * (set_grad_flops(w.model, w.train) + 2.0 * w.n_params * len(w.train))


# --------------------------------------------------------------------- XLA cost analysis
def _cost(compiled) -> dict:
    ca = compiled.cost_analysis()
    if isinstance(ca, list | tuple):  # older jaxlibs: one dict per computation
        ca = ca[0] if ca else {}
    return ca or {}


@functools.cache
def scan_cost_counts_trips() -> bool:
    """Whether XLA's cost analysis multiplies a ``lax.scan`` body by its trip count
    (in jax 0.10.2 it does not: a while loop's body is counted once)."""

    def f(xs):
        return jax.lax.scan(lambda c, x: (c, (x @ x).sum()), None, xs)[1]

    flops = [
        _cost(jax.jit(f).lower(np.ones((k, 32, 32), np.float32)).compile())["flops"] for k in (1, 4)
    ]
    return flops[1] > 2 * flops[0]


def xla_crosscheck(w: Workload, layout, chunk_size: int) -> list[dict]:
    """Per bucket: XLA's FLOPs per chunk slot per checkpoint (one chunk of the self-influence
    kernel) beside the hand count at the bucket's padded shape. Runs after the timed calls, so
    the compilation is a cache hit where JAX has one (``analysis_compile_s``)."""
    kernel = per_example.self_influence_kernel(layout)
    lrs = w.ckpts.lr_array()
    trips = 1 if scan_cost_counts_trips() else len(w.ckpts)
    plan = layout.plan(w.train)
    firsts = {int(bk.positions[0]): bk for bk in plan.buckets}
    rows = []
    f = w.train.events.n_features
    for chunk in layout.chunks(w.train, chunk_size):
        bk = firsts.get(int(chunk.positions[0]))
        if bk is None:
            continue
        with CompileClock() as clock:
            compiled = kernel.lower(w.ckpts.params, lrs, chunk.data).compile()
        xla = _cost(compiled).get("flops")
        mem = compiled.memory_analysis()
        e_pad = bk.n_node * bk.width if isinstance(layout, NeighbourLayout) else bk.width
        hand_pad = float(grad_flops(w.model, bk.n_node, e_pad, f)) + 2.0 * w.n_params
        pos = bk.positions
        hand_real = float(
            grad_flops(w.model, w.train.events.n_node[pos], w.train.n_edge[pos], f).mean()
        )
        per_slot = xla / (chunk_size * len(w.ckpts) / trips) if xla else None
        rows.append(
            {
                "n_node": bk.n_node,
                "width": bk.width,
                "n_events": len(pos),
                "xla_flops_per_slot": per_slot,
                "hand_flops_padded_shape": hand_pad,
                "ratio_xla_over_hand": per_slot / hand_pad if per_slot else None,
                "hand_flops_real_mean": hand_real + 2.0 * w.n_params,
                "xla_temp_bytes": getattr(mem, "temp_size_in_bytes", None) if mem else None,
                "analysis_compile_s": clock.seconds,
            }
        )
    return rows


# --------------------------------------------------------------------- per model and workload
def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def bench_self_influence(w: Workload, chunk_size: int, repeats: int, matmul_rate: float) -> dict:
    """``tracin.self_influence(layout_for(model), ...)`` over all train events, one chunk size."""
    layout = layout_for(w.model)
    values = {}

    def run():
        values["si"] = tracin.self_influence(
            layout, w.ckpts, w.train, chunk_size=chunk_size, progress=False
        )

    t = time_calls(run, repeats)
    useful = self_influence_flops(w)
    rate = useful / t["median_s"] / 1e9
    return {
        "chunk_size": chunk_size,
        **t,
        "events_per_s": len(w.train) / t["median_s"],
        "compile_share_of_first_pass": t["first_call_compile_s"] / t["first_call_s"],
        "useful_flops_per_pass": useful,
        "useful_gflops_per_s": rate,
        "fraction_of_matmul": rate / matmul_rate,
        "_values": values["si"],
    }


def bench_training_grad(w: Workload, repeats: int, matmul_rate: float) -> dict:
    """One ordinary gradient pass over the train events, as training takes it: the gradient of
    the batch's mean loss at checkpoint 0 over ``train.batches`` (GraphsTuple batches padded to
    ``batch_budget(batch_size)``, train.py's worst-case budget, or, for a model that builds a
    dynamic kNN, neighbour-layout batches: ``train.neighbour_training_shape``), host-side
    batching included."""
    b = w.spec.training_batch_size
    gs, params = w.train, w.ckpts.at(0)
    budget = gs.batch_budget(b)
    example = gs.training_batch(np.arange(min(b, len(gs))), budget)
    shape = neighbour_training_shape(w.model, gs, example)
    loss = mean_loss if shape is None else neighbour_mean_loss
    grad_fn = jax.jit(jax.grad(functools.partial(loss, w.model.apply)))

    def run():
        for batch in train_batches(gs, b, budget, None, shape):
            jax.block_until_ready(grad_fn(params, batch))

    t = time_calls(run, repeats)
    n_batches = -(-len(gs) // b)
    if shape is None:
        node_slots, edge_slots = n_batches * (budget.n_node - 1), n_batches * (budget.n_edge - 1)
    else:  # every event padded to the shape
        node_slots = n_batches * b * shape[0]
        edge_slots = node_slots * shape[1]
    useful = set_grad_flops(w.model, gs)
    rate = useful / t["median_s"] / 1e9
    return {
        **t,
        "batch_size": b,
        "layout": "graphstuple" if shape is None else f"neighbour {shape}",
        "budget": budget._asdict(),
        "n_batches": n_batches,
        "padding_node_share": 1 - gs.events.n_node.sum() / node_slots,
        "padding_edge_share": 1 - gs.n_edge.sum() / edge_slots,
        "events_per_s": len(gs) / t["median_s"],
        "useful_flops_per_pass": useful,
        "useful_gflops_per_s": rate,
        "fraction_of_matmul": rate / matmul_rate,
    }


def bench_reference(w: Workload, repeats: int) -> dict:
    """``tracin.self_influence_reference(..., own_size=True)`` on the first train events; every
    shape it needs compiled beforehand (one event of each size, checkpoint 0), so the timed
    calls compile nothing."""
    n = min(w.spec.reference_subset, len(w.train))
    sub = w.train.select(np.arange(n))
    nn = sub.events.n_node
    one_per_size = np.unique(nn, return_index=True)[1]
    with CompileClock() as warm:
        t0 = time.perf_counter()
        tracin.self_influence_reference(
            w.model.apply, w.ckpts.select([0]), sub.select(one_per_size), own_size=True
        )
        warm_s = time.perf_counter() - t0
    values = {}

    def run():
        values["si"] = tracin.self_influence_reference(w.model.apply, w.ckpts, sub, own_size=True)

    t = time_calls(run, repeats)
    rate = n / t["median_s"]
    return {
        "n_events_timed": n,
        "n_shapes": len(one_per_size),
        "warmup_s": warm_s,
        "warmup_compile_s": warm.seconds,
        **t,
        "events_per_s": rate,
        "extrapolated_s_for_n_train": len(w.train) / rate,
        "n_node_mean_subset": float(nn.mean()),
        "n_node_mean_train": float(w.train.events.n_node.mean()),
        "_values": values["si"],
    }


def bench_model(p: Preset, w: Workload, chunk_sizes, matmul_rate: float, tag: str) -> dict:
    layout = layout_for(w.model)
    plan = layout.plan(w.train)
    out: dict = {
        "model": w.model_name,
        "n_params": w.n_params,
        "layout": type(layout).__name__,
        "n_compiled_shapes": len(plan.buckets),
        "buckets": [
            {"n_node": b.n_node, "width": b.width, "n_events": len(b.positions)}
            for b in plan.buckets
        ],
        "padding_waste": plan.waste,
        "useful_flops_per_event_mean": self_influence_flops(w) / len(w.ckpts) / len(w.train),
    }
    rows = []
    for c in chunk_sizes:
        r = bench_self_influence(w, c, p.repeats, matmul_rate)
        rows.append(r)
        print(
            f"  [{tag}] self-influence chunk {c}: {r['events_per_s']:.0f} events/s, "
            f"first call {r['first_call_s']:.1f} s ({r['first_call_compile_s']:.1f} compiling), "
            f"{r['fraction_of_matmul']:.2f} of matmul",
            flush=True,
        )
    best = max(rows, key=lambda r: r["events_per_s"])
    values = best["_values"]
    for r in rows:
        r.pop("_values")
    out["self_influence"] = rows
    out["best_chunk_size"] = best["chunk_size"]
    out["xla_crosscheck"] = xla_crosscheck(w, layout, best["chunk_size"])

    tr = bench_training_grad(w, p.repeats, matmul_rate)
    out["training_grad"] = tr
    per_ckpt = best["median_s"] / len(w.ckpts)
    out["overhead_ratio"] = per_ckpt / tr["median_s"]
    print(
        f"  [{tag}] training gradient: {tr['events_per_s']:.0f} events/s; overhead ratio "
        f"{out['overhead_ratio']:.2f}",
        flush=True,
    )

    ref = bench_reference(w, p.repeats)
    ref_values = ref.pop("_values")
    out["reference_loop"] = ref
    out["speedup_vs_reference"] = best["events_per_s"] / ref["events_per_s"]
    out["max_rel_diff_vs_reference"] = max_rel_diff(values[: len(ref_values)], ref_values)
    print(
        f"  [{tag}] reference loop: {ref['events_per_s']:.1f} events/s; speed-up "
        f"{out['speedup_vs_reference']:.1f}x; max rel. diff {out['max_rel_diff_vs_reference']:.1e}",
        flush=True,
    )
    return out


# --------------------------------------------------------------------- subprocesses
def _child(mode: str, payload: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{mode}-child", json.dumps(payload)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} subprocess failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["subprocess_wall_s"] = wall
    return out


MATRIX_STEADY_CALLS = 3  # the matrix's steady figure is their median


def matrix_child(workload: str, model: str, k: int, lr: float, seed: int, chunk_size: int) -> dict:
    """Runs in its own process: the exact matrix, first call then ``MATRIX_STEADY_CALLS``
    steady calls (their median is the steady figure)."""
    rss_start = own_peak_rss_gb()
    w = make_workload(WORKLOADS[workload], model, k, lr, seed)
    layout = layout_for(w.model)
    calls = []
    for _ in range(1 + MATRIX_STEADY_CALLS):
        with CompileClock() as clock:
            t0 = time.perf_counter()
            m = tracin.influence_matrix(
                layout, w.ckpts, w.train, w.test, chunk_size=chunk_size, progress=False
            )
            calls.append((time.perf_counter() - t0, clock.seconds))
    n, mt = len(w.train), len(w.test)
    test_block = tracin.default_test_block(w.ckpts)
    n_blocks = -(-mt // test_block)
    gram = 2.0 * n * mt * w.n_params * k
    grads = k * (n_blocks * set_grad_flops(w.model, w.train) + set_grad_flops(w.model, w.test))
    return {
        "workload": workload,
        "model": model,
        "n_train": n,
        "n_test": mt,
        "n_checkpoints": k,
        "n_params": w.n_params,
        "chunk_size": chunk_size,
        "test_block": test_block,
        "first_call_s": calls[0][0],
        "first_call_compile_s": calls[0][1],
        "steady_s": statistics.median(c[0] for c in calls[1:]),
        "steady_times_s": [c[0] for c in calls[1:]],
        "steady_compile_s": sum(c[1] for c in calls[1:]),
        "pairs_per_s": n * mt / statistics.median(c[0] for c in calls[1:]),
        "gram_flops": gram,
        "gradient_flops": grads,
        "all_finite": bool(np.isfinite(m).all()),
        "peak_rss_gb": own_peak_rss_gb(),
        "peak_rss_gb_after_imports": rss_start,
        "peak_rss_source": "VmHWM of the subprocess (/proc/self/status)",
    }


def bench_matrix(p: Preset, workload: str, matmul_rate: float) -> dict:
    spec = WORKLOADS[workload]
    out = _child(
        "matrix",
        {
            "workload": workload,
            "model": "edgeconv",
            "k": p.n_checkpoints,
            "lr": p.lr,
            "seed": p.param_seed,
            "chunk_size": spec.chunk_sizes[0],
        },
    )
    total = out["gram_flops"] + out["gradient_flops"]
    out["fraction_of_matmul"] = total / out["steady_s"] / 1e9 / matmul_rate
    gram_rate = out["gram_flops"] / out["steady_s"] / 1e9
    out["gram_only_fraction_of_matmul"] = gram_rate / matmul_rate
    return out


def cache_child(workload: str, model: str, k: int, lr: float, chunk_size: int, cache_dir: str):
    """Runs in its own process: the first self-influence call with a persistent cache dir."""
    t_start = time.perf_counter()
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    w = make_workload(WORKLOADS[workload], model, k, lr)
    with CompileClock() as clock:
        t0 = time.perf_counter()
        tracin.self_influence(
            layout_for(w.model), w.ckpts, w.train, chunk_size=chunk_size, progress=False
        )
        first = time.perf_counter() - t0
    return {
        "first_call_s": first,
        "first_call_compile_s": clock.seconds,
        "compile_breakdown_s": clock.totals,
        "process_s": time.perf_counter() - t_start,
    }


def bench_cache(p: Preset, workload: str, model: str) -> dict:
    cache_dir = tempfile.mkdtemp(prefix="hepattr-jax-cache-")
    payload = {
        "workload": workload,
        "model": model,
        "k": p.n_checkpoints,
        "lr": p.lr,
        "chunk_size": WORKLOADS[workload].chunk_sizes[0],
        "cache_dir": cache_dir,
    }
    try:
        runs = [_child("cache", payload) for _ in range(2)]
        n_files = sum(len(f) for _, _, f in os.walk(cache_dir))
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {
        "workload": workload,
        "model": model,
        "chunk_size": payload["chunk_size"],
        "cold": runs[0],
        "warm": runs[1],
        "cache_entries": n_files,
        "first_call_speedup": runs[0]["first_call_s"] / runs[1]["first_call_s"],
    }


# --------------------------------------------------------------------- report
def _g(x, fmt=".3g") -> str:
    return "n/a" if x is None else format(x, fmt)


def markdown(res: dict) -> str:
    env = res["environment"]
    lines = [
        f"# TracIn throughput: preset `{res['preset']}` on `{env['device_label']}`",
        "",
        f"- Date (UTC): {res['date_utc']}",
        f"- Command: `{res['command']}`",
        f"- Device: {env['platform']} / {env['device_kind']}; CPU {env['cpu_model']} "
        f"({env['cpu_count']} cores); load average before {res['loadavg_before']}, after "
        f"{res['loadavg_after']}",
        f"- jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, numpy {env['numpy']}, "
        f"Python {env['python']}",
        f"- K = {res['n_checkpoints']} checkpoints (random, `fold_in(key({res['param_seed']}), "
        f"k)`), eta_k = {res['lr']:g}, float32; medians of {res['repeats']} steady calls",
        f"- Matmul {res['matmul']['size']}^3 float32: **{res['matmul']['gflops_per_s']:.1f} "
        "GFLOP/s** (median of 5; the reference for every *fraction of matmul*)",
        f"- Total wall time {res['wall_s']:.0f} s; peak RSS of this process "
        f"{res['peak_rss_gb']:.2f} GB",
        "",
    ]
    for name, wres in res["workloads"].items():
        lines += _workload_md(name, wres, res["n_checkpoints"])
    lines += _matrix_md(res["influence_matrix"])
    lines += _cache_md(res["compilation_cache"])
    return "\n".join(lines) + "\n"


def _workload_md(name: str, wres: dict, k: int) -> list[str]:
    s = wres["shapes"]
    lines = [
        f"## {name}",
        "",
        f"{s['n_train']} train / {s['n_test']} test events, n_node uniform in "
        f"{s['n_node_range']} (train mean {s['n_node_mean_train']:.1f}), {s['edges']} edges "
        f"(train mean {s['n_edge_mean_train']:.0f} per event), {s['n_features']} features.",
        "",
        f"Exact self-influence (K = {k}) of all train events through the engine, best chunk size; "
        "events/s from the steady median; compile s = seconds JAX compiled in the first call "
        "(its share of that first pass in brackets); waste = the bucket plan's padding share; "
        "overhead ratio = self-influence time per checkpoint / one training-gradient pass; "
        "speed-up = engine events/s / reference loop events/s (both exclude compilation).",
        "",
        "| model | P | chunk | events/s | first call s | compile s (share) | shapes | waste "
        "| useful GFLOP/s | fraction of matmul | overhead ratio | speed-up vs reference loop |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in wres["models"].values():
        for r in m["self_influence"]:
            best = r["chunk_size"] == m["best_chunk_size"]
            lines.append(
                f"| {m['model']} | {m['n_params']} | {r['chunk_size']} "
                f"| {'**' if best else ''}{r['events_per_s']:.0f}{'**' if best else ''} "
                f"| {r['first_call_s']:.1f} "
                f"| {r['first_call_compile_s']:.1f} ({r['compile_share_of_first_pass']:.0%}) "
                f"| {m['n_compiled_shapes']} | {m['padding_waste']:.1%} "
                f"| {r['useful_gflops_per_s']:.1f} | {r['fraction_of_matmul']:.2f} "
                + (
                    f"| {m['overhead_ratio']:.2f} | {m['speedup_vs_reference']:.1f}x |"
                    if best
                    else "| | |"
                )
            )
    lines += [
        "",
        "Baselines (same events, same run; steady medians, compilation excluded):",
        "",
        "| model | training gradient events/s | its useful GFLOP/s (fraction) | batch budget "
        "(padding share of nodes) | reference loop events/s (subset, shapes) "
        "| max rel. diff engine vs loop |",
        "|---|---|---|---|---|---|",
    ]
    for m in wres["models"].values():
        tr, ref = m["training_grad"], m["reference_loop"]
        lines.append(
            f"| {m['model']} | {tr['events_per_s']:.0f} | {tr['useful_gflops_per_s']:.1f} "
            f"({tr['fraction_of_matmul']:.2f}) | {_training_batch_md(tr)} "
            f"({tr['padding_node_share']:.0%}) | {ref['events_per_s']:.1f} "
            f"({ref['n_events_timed']} events, {ref['n_shapes']} shapes) "
            f"| {m['max_rel_diff_vs_reference']:.1e} |"
        )
    lines += [
        "",
        "XLA cost analysis beside the hand count, per bucket (one chunk of the self-influence "
        "kernel at the best chunk size; MFLOP per chunk slot per checkpoint; the hand count at the "
        "bucket's padded shape; XLA also counts elementwise work and the model's executed, "
        "not minimal, factorised layer):",
        "",
        "| model | bucket n_node x width (events) | XLA MFLOP | hand MFLOP (padded) | ratio "
        "| hand MFLOP (real, mean) | XLA temp MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in wres["models"].values():
        for b in m["xla_crosscheck"]:
            temp = b["xla_temp_bytes"]
            lines.append(
                f"| {m['model']} | {b['n_node']} x {b['width']} ({b['n_events']}) "
                f"| {_g(b['xla_flops_per_slot'] and b['xla_flops_per_slot'] / 1e6)} "
                f"| {b['hand_flops_padded_shape'] / 1e6:.3g} "
                f"| {_g(b['ratio_xla_over_hand'], '.2f')} "
                f"| {b['hand_flops_real_mean'] / 1e6:.3g} | {_g(temp and temp / 1e6, '.1f')} |"
            )
    return lines + [""]


def _training_batch_md(tr: dict) -> str:
    """How the training-gradient baseline batches its events (older results: GraphsTuple)."""
    layout = tr.get("layout", "graphstuple")
    if layout != "graphstuple":
        return f"{tr['batch_size']} events, {layout}"
    return (
        f"{tr['batch_size']} events, {tr['budget']['n_node']} nodes, {tr['budget']['n_edge']} edges"
    )


def _matrix_md(mres: dict) -> list[str]:
    lines = ["## Exact train x test influence matrix (edgeconv)", ""]
    if mres.get("skipped"):
        return lines + ["Skipped (`--skip-matrix`).", ""]
    lines += [
        f"Own subprocess (peak RSS = its VmHWM); first call (with compilation) then "
        f"{MATRIX_STEADY_CALLS} steady calls (median; all of them in brackets); fraction of "
        "matmul = (Gram products + all gradients, useful FLOPs) / steady s.",
        "",
        "| workload | pairs | first call s (compile) | steady s | pairs/s | Gram TFLOP "
        "| gradient TFLOP | fraction of matmul | peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in mres.items():
        steady = ", ".join(f"{t:.1f}" for t in m.get("steady_times_s", [m["steady_s"]]))
        lines.append(
            f"| {name} | {m['n_train']} x {m['n_test']} | {m['first_call_s']:.1f} "
            f"({m['first_call_compile_s']:.1f}) | {m['steady_s']:.1f} ({steady}) | "
            f"{m['pairs_per_s']:.3g} "
            f"| {m['gram_flops'] / 1e12:.3g} | {m['gradient_flops'] / 1e12:.3g} "
            f"| {m['fraction_of_matmul']:.2f} | {m['peak_rss_gb']:.2f} |"
        )
    return lines + [""]


def _cache_md(c: dict) -> list[str]:
    lines = ["## Persistent compilation cache across processes", ""]
    if c.get("skipped"):
        return lines + ["Skipped (`--skip-cache-check`).", ""]
    return lines + [
        f"Two fresh processes, one after the other, each with `jax_compilation_cache_dir` set "
        f"to the same new directory (`jax_persistent_cache_min_compile_time_secs = 0`), each "
        f"timing its first self-influence call ({c['model']} on {c['workload']}, chunk "
        f"{c['chunk_size']}):",
        "",
        "| process | first call s | of which compiling s | process s |",
        "|---|---|---|---|",
        f"| first (cache empty) | {c['cold']['first_call_s']:.1f} "
        f"| {c['cold']['first_call_compile_s']:.1f} | {c['cold']['process_s']:.1f} |",
        f"| second (cache filled, {c['cache_entries']} entries) | {c['warm']['first_call_s']:.1f} "
        f"| {c['warm']['first_call_compile_s']:.1f} | {c['warm']['process_s']:.1f} |",
        "",
        f"First-call speed-up from the cache: {c['first_call_speedup']:.2f}x.",
        "",
    ]


def output_stem(res: dict, out_dir: Path) -> Path:
    tag = "" if res["preset"] == "ref" else f"{res['preset']}_"
    return out_dir / f"tracin_throughput_{tag}{res['environment']['device_label']}"


def save_results(res: dict, stem: Path, text: str) -> dict[str, str]:
    """Writes ``stem.json`` (the results) and ``stem.md`` (``text``); every benchmark's output."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    md_path.write_text(text)
    return {"json": str(json_path), "markdown": str(md_path)}


def results_header(name: str, preset: str, settings) -> dict:
    """What every preset benchmark's results start with: its name, preset, settings, command,
    date, the load average before it and the environment."""
    return {
        "benchmark": name,
        "preset": preset,
        "settings": dataclasses.asdict(settings),
        "command": f"python -m benchmarks.{name} --preset {preset}",
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_before": loadavg(),
        "environment": environment(),
    }


def preset_main(argv, doc: str, presets, default: str, name: str, run_fn, markdown_fn) -> dict:
    """The command line of a preset benchmark: ``--preset`` (one of ``presets``, ``default``)
    and ``--out``; runs ``run_fn(preset)``, writes ``OUT/<name>_[<preset>_]<device>.json``
    and ``.md`` (no preset tag for ``default``), prints the markdown, returns the results."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(presets), default=default)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    res = run_fn(args.preset)
    tag = "" if args.preset == default else f"{args.preset}_"
    stem = Path(args.out) / f"{name}_{tag}{res['environment']['device_label']}"
    text = markdown_fn(res)
    res["files"] = save_results(res, stem, text)
    print(text)
    return res


def write_results(res: dict, out_dir: Path) -> tuple[Path, Path]:
    files = save_results(res, output_stem(res, out_dir), markdown(res))
    return Path(files["json"]), Path(files["markdown"])


# --------------------------------------------------------------------- driver
def _csv(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x for x in text.split(",") if x)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="ref")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--workloads", help="comma-separated subset of the preset's workloads")
    ap.add_argument(
        "--models",
        help=f"comma-separated models out of {','.join(MODEL_NAMES)}, run on every chosen "
        "workload (default: each workload's own models)",
    )
    ap.add_argument(
        "--chunks",
        action="append",
        default=[],
        help="WORKLOAD=C1,C2: self-influence chunk sizes for that workload (repeatable)",
    )
    ap.add_argument("--matrix-workloads", help="workloads of the exact matrix (edgeconv)")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-cache-check", action="store_true")
    ap.add_argument("--matrix-child", help=argparse.SUPPRESS)  # internal: JSON of kwargs
    ap.add_argument("--cache-child", help=argparse.SUPPRESS)  # internal: JSON of kwargs
    return ap.parse_args(argv)


def _command(argv) -> str:
    return " ".join(["python benchmarks/tracin_throughput.py", *(argv or sys.argv[1:])])


def run_benchmark(p: Preset, args: argparse.Namespace, argv=None) -> dict:
    t_start = time.perf_counter()
    workloads = _csv(args.workloads) or p.workloads
    models = _csv(args.models)  # None: each workload's own
    chunks = {
        wl: tuple(int(c) for c in cs.split(","))
        for wl, cs in (item.split("=", 1) for item in args.chunks)
    }
    for name in (*workloads, *chunks):
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; choose from {sorted(WORKLOADS)}")
    for name in models or ():
        if name not in MODEL_NAMES:
            raise SystemExit(f"unknown model {name!r}; choose from {MODEL_NAMES}")
    res: dict = {
        "benchmark": "tracin_throughput",
        "preset": p.name,
        "preset_settings": dataclasses.asdict(p),
        "command": _command(argv),
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_before": loadavg(),
        "environment": environment(),
        "n_checkpoints": p.n_checkpoints,
        "lr": p.lr,
        "param_seed": p.param_seed,
        "repeats": p.repeats,
        "dtype": "float32",
    }
    print(f"[{p.name}] matmul {p.matmul_size}^3", flush=True)
    matmul = bench_matmul(p.matmul_size, p.repeats)
    res["matmul"] = matmul
    rate = matmul["gflops_per_s"]
    res["xla_scan_cost_counts_trips"] = scan_cost_counts_trips()
    res["workloads"] = {}
    for wl in workloads:
        spec = WORKLOADS[wl]
        t0 = time.perf_counter()
        train, test = make_graphs(spec)
        wres: dict = {
            "spec": dataclasses.asdict(spec),
            "shapes": {
                "n_train": len(train),
                "n_test": len(test),
                "n_node_range": list(spec.n_node_range),
                "n_node_mean_train": float(train.events.n_node.mean()),
                "n_edge_mean_train": float(train.n_edge.mean()),
                "edges": spec.edges,
                "n_features": spec.n_features,
                "coord_spread": spec.coord_spread,
                "generator": "hepattr_jax.data.synthetic.random_events"
                + (
                    f", features 0 and 1 scaled by {spec.coord_spread}" if spec.coord_spread else ""
                ),
                "seeds": {"train": spec.train_seed, "test": spec.test_seed},
            },
            "data_s": time.perf_counter() - t0,
            "models": {},
        }
        res["workloads"][wl] = wres
        for model_name in models or spec.models:
            tag = f"{wl}/{model_name}"
            print(f"[{p.name}] {tag}", flush=True)
            w = make_workload(spec, model_name, p.n_checkpoints, p.lr, p.param_seed)
            wres["models"][model_name] = bench_model(
                p, w, chunks.get(wl, spec.chunk_sizes), rate, tag
            )
    res["peak_rss_gb_before_subprocesses"] = peak_rss_gb()
    matrix_wls = _csv(args.matrix_workloads) or p.matrix_workloads
    if args.skip_matrix:
        res["influence_matrix"] = {"skipped": True}
    else:
        res["influence_matrix"] = {}
        for wl in matrix_wls:
            print(f"[{p.name}] exact matrix on {wl} (subprocess)", flush=True)
            m = bench_matrix(p, wl, rate)
            res["influence_matrix"][wl] = m
            print(
                f"  steady {m['steady_s']:.1f} s, first call {m['first_call_s']:.1f} s, "
                f"peak RSS {m['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    if args.skip_cache_check:
        res["compilation_cache"] = {"skipped": True}
    else:
        print(f"[{p.name}] persistent compilation cache (2 subprocesses)", flush=True)
        res["compilation_cache"] = bench_cache(p, *p.cache_check)
    res["peak_rss_gb"] = peak_rss_gb()
    res["loadavg_after"] = loadavg()
    res["wall_s"] = time.perf_counter() - t_start
    return res


def main(argv=None) -> dict:
    """Runs the benchmark, writes the JSON and markdown results, returns the results dict."""
    args = parse_args(argv)
    for mode, fn in (("matrix", matrix_child), ("cache", cache_child)):
        payload = getattr(args, f"{mode}_child")
        if payload:
            out = fn(**json.loads(payload))
            print(json.dumps(out))
            return out
    res = run_benchmark(PRESETS[args.preset], args, argv)
    json_path, md_path = write_results(res, Path(args.out))
    res["files"] = {"json": str(json_path), "markdown": str(md_path)}
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return res


if __name__ == "__main__":
    main()
