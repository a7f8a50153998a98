"""Where the per-event kernels' time goes, op by op (issue 10: "if a figure is not reached, the
note shows the profile and names what limits it").

Command (from the repository root; about 5 minutes on the 2-core CPU)::

    python -m benchmarks.kernel_profile [--preset ref|quick] [--out DIR]

For each built-in model on each fixed workload (shared/spec/benchmark-workload.md), one chunk of
the exact self-influence kernel (``per_example.self_influence_kernel``, all K = 5 checkpoints,
the workload's chunk size) on the bucket that holds most of the workload's useful FLOPs; and for
the exact train x test matrix (edgeconv, ref-edgeconv) one train chunk of its kernel against the
1024 test events' gradients. Each kernel is timed (median of steady calls, no profiler), then
run again under ``jax.profiler.trace``: XLA's CPU runtime records one event per executed thunk
(one per HLO instruction of the optimised module, fusions included), named by the instruction.
The optimised HLO gives each instruction's kind and, for matmuls (``dot``, also inside
fusions), its FLOPs from the operand shapes. So each kernel's thunk time splits into:

* ``matmul``: dots and fusions holding one, with their achieved GFLOP/s against a large matmul
  timed in the same run;
* ``elementwise``, ``reduce``, ``gather``, ``scatter``, ``sort``, ``slice/update``,
  ``copy/layout`` (copies, transposes, concatenations: the flattening of gradients included);
* ``control`` (while loops, calls) holds other thunks and is left out of the shares.

Three bounds follow from it and are what the closing notes quote: the fraction of the matmul
rate the kernel would reach if only its matmul thunks took time (at their measured speed); if
its matmuls also ran at the large-matmul rate; and the roofline, every executed op at the larger
of its matmul FLOPs over the matmul rate and the bytes it must move over the fastest memory rate
measured in the run (an upper bound for this op graph on this machine). Thunk times are summed
over threads (XLA may run two independent thunks at once), so shares are of the summed thunk
time; the wall time is apart.

Writes ``OUT/kernel_profile_<device>.json`` (every op) and ``.md`` (the summary and each
kernel's heaviest ops).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import math
import re
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from benchmarks.layer_capture import markdown_head
from benchmarks.tracin_throughput import (
    WORKLOADS,
    bench_matmul,
    grad_flops,
    loadavg,
    make_workload,
    preset_main,
    results_header,
    time_calls,
)
from hepattr_jax import per_example, tracin
from hepattr_jax.per_example import NeighbourLayout, layout_for

# ----------------------------------------------------------------------------- optimised HLO
CONTROL = frozenset({"while", "call", "conditional"})
LAYOUT_OPS = frozenset(
    {
        "parameter",
        "constant",
        "copy",
        "transpose",
        "bitcast",
        "reshape",
        "broadcast",
        "slice",
        "concatenate",
        "pad",
        "tuple",
        "get-tuple-element",
        "iota",
        "convert",
    }
)
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"^(\w+)\[([\d,]*)\]")
_OPCODE = re.compile(r"^\s*([\w\-]+)\(")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_DTYPE_BYTES |= {"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8}


def shape_bytes(shape: str) -> float:
    """Bytes of an HLO array shape (``'f32[4,8]'``); tuples and tokens count 0."""
    a = _ARRAY.match(shape)
    if not a:
        return 0.0
    dims = [int(d) for d in a.group(2).split(",") if d]
    return float(_DTYPE_BYTES.get(a.group(1), 4) * math.prod(dims))


@dataclasses.dataclass
class HloOp:
    """One instruction of the optimised module: its opcode, output dims (``None`` for a
    tuple), the computations it calls, the opcodes inside them and its matmul FLOPs."""

    name: str
    opcode: str
    dims: tuple[int, ...] | None
    shape: str
    operands: list[str]
    calls: list[str]
    lhs_contracting: tuple[int, ...] = ()
    computation: str = ""
    flops: float = 0.0
    inner: frozenset = frozenset()
    category: str = ""
    in_fusion: bool = False  # inside a fused computation: runs as part of its fusion's thunk
    bytes: float = 0.0  # memory it must move: operands read and result written (at least once)


def _split_shape(rest: str) -> tuple[str, str]:
    """``'f32[2,3]{1,0} add(...)'`` -> (shape, remainder); tuple shapes keep their parens."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[: i + 1], rest[i + 1 :]
    head, _, tail = rest.partition(" ")
    return head, tail


def _operand_text(rem: str) -> tuple[str, str]:
    """The text inside an instruction's operand parentheses, and what follows them."""
    start = rem.index("(")
    depth = 0
    for i in range(start, len(rem)):
        depth += rem[i] == "("
        depth -= rem[i] == ")"
        if depth == 0:
            return rem[start + 1 : i], rem[i + 1 :]
    return rem[start + 1 :], ""


def parse_hlo(text: str) -> dict[str, HloOp]:
    """Every instruction of an optimised HLO module (``compiled.as_text()``) by name, with its
    matmul FLOPs (``2 * prod(out) * prod(contracted lhs dims)``, summed through the fused
    computations it calls) and its category (:func:`categorise`)."""
    ops: dict[str, HloOp] = {}
    comp = ""
    comps: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        h = _HEADER.match(line)
        if h:
            comp = h.group(1)
            continue
        m = _INSTR.match(line)
        if not m or not comp:
            continue
        name, rest = m.groups()
        shape, rem = _split_shape(rest.strip())
        op = _OPCODE.match(rem)
        if not op:
            continue
        inside, attrs = _operand_text(rem)
        a = _ARRAY.match(shape)
        dims = tuple(int(d) for d in a.group(2).split(",") if d) if a else None
        calls = re.findall(r"(?:calls|body|condition|to_apply)=\{?%?([\w.\-]+)", attrs)
        lhs = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
        ops[name] = HloOp(
            name=name,
            opcode=op.group(1),
            dims=dims,
            shape=shape.split("{")[0],
            operands=re.findall(r"%([\w.\-]+)", inside),
            calls=calls,
            lhs_contracting=tuple(int(d) for d in lhs.group(1).split(",") if d) if lhs else (),
            computation=comp,
        )
        comps[comp].append(name)
    for op in ops.values():
        if op.opcode == "dot" and op.dims is not None and op.operands:
            lhs_dims = ops[op.operands[0]].dims if op.operands[0] in ops else None
            if lhs_dims is not None:
                k = math.prod(lhs_dims[d] for d in op.lhs_contracting)
                op.flops = 2.0 * math.prod(op.dims) * k

    def inner(op: HloOp, seen: frozenset = frozenset()) -> tuple[frozenset, float]:
        if op.opcode in CONTROL:  # a loop's body runs its own thunks: not part of this op
            return frozenset({op.opcode}), 0.0
        kinds, flops = {op.opcode}, op.flops
        for c in op.calls:
            if c in seen:
                continue
            for n in comps.get(c, ()):
                k, f = inner(ops[n], seen | {c})
                kinds |= k
                flops += f
        return frozenset(kinds), flops

    fused = {c for op in ops.values() if op.opcode == "fusion" for c in op.calls}
    for op in ops.values():
        op.inner, op.flops = inner(op)
        op.category = categorise(op.opcode, op.inner)
        op.in_fusion = op.computation in fused
        op.bytes = _op_bytes(op, ops)
    return ops


def _op_bytes(op: HloOp, ops: dict[str, HloOp]) -> float:
    """The least memory traffic of one executed instruction: each operand read once and the
    result written once; an in-place update (a dynamic-update-slice fusion, whose buffer is
    aliased) reads and writes only its update, not the buffer it writes into."""
    if op.opcode in CONTROL or op.opcode in ("parameter", "constant", "bitcast", "tuple"):
        return 0.0
    operands = [shape_bytes(ops[n].shape) for n in op.operands if n in ops]
    out = shape_bytes(op.shape)
    if "dynamic-update-slice" in op.inner:
        update = sum(b for b in operands if b != out)
        return 2.0 * update
    return out + sum(operands)


def categorise(opcode: str, inner: frozenset) -> str:
    """What an executed instruction mostly does, from its opcode and those fused into it."""
    if opcode in CONTROL:
        return "control"
    if {"dot", "convolution"} & inner:
        return "matmul"
    if "sort" in inner or opcode == "custom-call":
        return "sort"
    for kind in ("scatter", "gather"):
        if kind in inner:
            return kind
    if "dynamic-update-slice" in inner or opcode == "dynamic-slice":
        return "slice/update"
    if {"reduce", "reduce-window"} & inner:
        return "reduce"
    # a dynamic-slice fused into other work is a checkpoint's parameter taken in the scan
    if inner <= LAYOUT_OPS | {"fusion", "dynamic-slice"}:
        return "copy/layout"
    return "elementwise"


# ----------------------------------------------------------------------------- thunk trace
KEEP_OPS = 40  # the heaviest executed ops kept per kernel in the results


def thunk_events(trace_dir: str, module: str) -> list[tuple[str, float]]:
    """``(hlo_op, microseconds)`` of every thunk of ``module`` in a ``jax.profiler.trace``."""
    (path,) = glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)
    with gzip.open(path) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    out = []
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") == "X" and args.get("hlo_module") == module and "hlo_op" in args:
            out.append((args["hlo_op"], float(e["dur"])))
    return out


def profile(
    fn: Callable,
    make_args: Callable[[], tuple],
    useful_flops: float,
    matmul_rate: float,
    repeats: int,
    stream_rate: float = math.inf,
) -> dict:
    """Times ``fn(*make_args())`` (a jitted function; median of ``repeats`` steady calls, no
    profiler), then traces ``repeats`` more calls and splits the thunk time by op and category.
    ``matmul_rate`` (GFLOP/s) and ``stream_rate`` (bytes/s) set each op's roofline floor.
    ``make_args`` is called before every call, untimed (a kernel that donates a buffer gets a
    new one each time)."""
    compiled = fn.lower(*make_args()).compile()
    text = compiled.as_text()
    module = re.match(r"HloModule\s+([\w.\-]+)", text).group(1)
    ops = parse_hlo(text)
    jax.block_until_ready(compiled(*make_args()))
    times = []
    for _ in range(repeats):
        args = jax.block_until_ready(make_args())
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(repeats):
                args = jax.block_until_ready(make_args())
                jax.block_until_ready(compiled(*args))
        events = thunk_events(d, module)
    per_op: dict[str, dict] = {}
    for name, us in events:
        r = per_op.setdefault(name, {"count": 0, "us": 0.0})
        r["count"] += 1
        r["us"] += us
    rows = []
    for name, r in per_op.items():
        op = ops.get(name)
        cat = op.category if op else "unknown"
        calls = r["count"] / repeats
        flops = op.flops * calls if op else 0.0
        nbytes = op.bytes * calls if op else 0.0
        s = r["us"] / repeats / 1e6
        rows.append(
            {
                "op": name,
                "category": cat,
                "shape": op.shape if op else "",
                "fused": sorted(op.inner - {"parameter", "fusion"}) if op else [],
                "runs_per_call": calls,
                "s_per_call": s,
                "matmul_flops_per_call": flops,
                "gflops_per_s": flops / s / 1e9 if flops and s else None,
                "bytes_per_call": nbytes,
                "gb_per_s": nbytes / s / 1e9 if nbytes and s else None,
                # the op's floor on this machine: its matmul FLOPs at the large-matmul rate or
                # its bytes at the fastest memory rate, whichever takes longer
                "roofline_s_per_call": max(flops / (matmul_rate * 1e9), nbytes / stream_rate),
            }
        )
    rows.sort(key=lambda r: -r["s_per_call"])
    leaf = [r for r in rows if r["category"] != "control"]
    total = sum(r["s_per_call"] for r in leaf)
    cats: dict[str, dict] = {}
    for r in leaf:
        c = cats.setdefault(
            r["category"],
            {
                "s_per_call": 0.0,
                "matmul_flops_per_call": 0.0,
                "bytes_per_call": 0.0,
                "roofline_s_per_call": 0.0,
            },
        )
        for key in ("s_per_call", "matmul_flops_per_call", "bytes_per_call", "roofline_s_per_call"):
            c[key] += r[key]
    for c in cats.values():
        c["share"] = c["s_per_call"] / total if total else None
    wall = statistics.median(times)
    roofline = sum(r["roofline_s_per_call"] for r in leaf)
    mm = cats.get("matmul", {"s_per_call": 0.0, "matmul_flops_per_call": 0.0})
    mm_rate = mm["matmul_flops_per_call"] / mm["s_per_call"] if mm["s_per_call"] else None
    return {
        "wall_s": wall,
        "wall_times_s": times,
        "useful_flops": useful_flops,
        "useful_gflops_per_s": useful_flops / wall / 1e9,
        "fraction_of_matmul": useful_flops / wall / 1e9 / matmul_rate,
        "thunk_s_per_call": total,
        "thunk_s_over_wall": total / wall,
        "xla_matmul_flops": mm["matmul_flops_per_call"],
        "matmul_ops_gflops_per_s": mm_rate / 1e9 if mm_rate else None,
        "matmul_ops_fraction_of_matmul": mm_rate / 1e9 / matmul_rate if mm_rate else None,
        # bounds: only the matmul thunks take time (at their speed / at the large-matmul rate)
        "bound_matmul_only": (
            useful_flops / mm["s_per_call"] / 1e9 / matmul_rate if mm["s_per_call"] else None
        ),
        "bound_matmul_at_peak": (
            useful_flops / mm["matmul_flops_per_call"] if mm["matmul_flops_per_call"] else None
        ),
        # every executed op at its roofline floor (matmul rate or fastest memory rate)
        "roofline_s_per_call": roofline,
        "bound_roofline": useful_flops / roofline / 1e9 / matmul_rate if roofline else None,
        "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1]["s_per_call"])),
        "ops": rows[:KEEP_OPS],  # the heaviest; the categories count every op
        "ops_left_out": {
            "n": max(0, len(rows) - KEEP_OPS),
            "s_per_call": sum(r["s_per_call"] for r in rows[KEEP_OPS:]),
        },
        "n_ops": len(ops),
    }


def bench_stream(sizes_mb=(1, 4, 16, 64, 256), repeats: int = 5) -> dict:
    """The machine's memory rates: ``x * a + b`` (bytes read + written per second) and ``sum(x)``
    (bytes read) over float32 arrays of ``sizes_mb``, medians of ``repeats``. They vary a lot
    with size (caches, and whether XLA splits the loop over both cores), so the roofline takes
    the fastest of all: its floor is then one no op could beat, and its bound an upper one."""
    kinds = {"axpb": (jax.jit(lambda x: x * 1.5 + 0.5), 2), "sum": (jax.jit(jnp.sum), 1)}
    rates = {}
    for mb in sizes_mb:
        x = jnp.ones((mb * 2**20 // 4,), jnp.float32)
        for kind, (f, passes) in kinds.items():
            t = time_calls(lambda f=f, x=x: jax.block_until_ready(f(x)), repeats)
            rates[f"{kind} {mb}MB"] = passes * x.nbytes / t["median_s"]
    return {"bytes_per_s": rates, "roofline_bytes_per_s": max(rates.values())}


# ----------------------------------------------------------------------------- the kernels
@dataclasses.dataclass(frozen=True)
class Settings:
    workloads: dict  # workload -> models
    n_checkpoints: int
    repeats: int
    matrix: tuple[str, str, int] | None  # (workload, model, n_test) of the matrix kernel
    matmul_size: int


SETTINGS = {
    "ref": Settings(
        {
            "ref-edgeconv": WORKLOADS["ref-edgeconv"].models,
            "ref-jets": WORKLOADS["ref-jets"].models,
        },
        5,
        3,
        ("ref-edgeconv", "edgeconv", 1024),
        2048,
    ),
    "quick": Settings(
        {"quick-edgeconv": ("edgeconv",)}, 2, 1, ("quick-edgeconv", "edgeconv", 16), 256
    ),
}


def heaviest_bucket_chunk(w, layout, chunk_size: int):
    """The first chunk of the bucket holding most of the workload's useful gradient FLOPs."""
    f = w.train.events.n_features
    per_event = grad_flops(w.model, w.train.events.n_node, w.train.n_edge, f)
    plan = layout.plan(w.train)
    bk = max(plan.buckets, key=lambda b: per_event[b.positions].sum())
    for chunk in layout.chunks(w.train, chunk_size):
        if int(chunk.positions[0]) == int(bk.positions[0]):
            return bk, chunk
    raise RuntimeError("no chunk starts the heaviest bucket")


def _chunk_useful(w, chunk) -> float:
    """Useful FLOPs of one chunk's gradients at one checkpoint (real events, real sizes)."""
    pos = chunk.positions
    f = w.train.events.n_features
    return float(grad_flops(w.model, w.train.events.n_node[pos], w.train.n_edge[pos], f).sum())


def _bucket_label(layout, bk) -> str:
    e = bk.n_node * bk.width if isinstance(layout, NeighbourLayout) else bk.width
    return f"{bk.n_node} nodes x {bk.width} ({e} edge slots)"


def _kernel_case(s: Settings, wl: str, model: str, kernel: str):
    """A workload's model, layout and the chunk to profile (:func:`heaviest_bucket_chunk`), and
    the head of the kernel's results."""
    spec = WORKLOADS[wl]
    w = make_workload(spec, model, s.n_checkpoints, 1e-3)
    layout = layout_for(w.model)
    c = spec.chunk_sizes[0]
    bk, chunk = heaviest_bucket_chunk(w, layout, c)
    head = {
        "kernel": kernel,
        "workload": wl,
        "model": model,
        "n_params": w.n_params,
        "n_checkpoints": len(w.ckpts),
        "chunk_size": c,
        "events_in_chunk": len(chunk.positions),
        "bucket": _bucket_label(layout, bk),
        "bucket_events": len(bk.positions),
    }
    print(f"{wl}/{model}: {kernel}, chunk {c}, {head['bucket']}", flush=True)
    return w, layout, chunk, head


def profile_self_influence(s: Settings, wl: str, model: str, rate: float, stream: float) -> dict:
    w, layout, chunk, head = _kernel_case(s, wl, model, "self_influence")
    k = len(w.ckpts)
    useful = k * (_chunk_useful(w, chunk) + 2.0 * w.n_params * len(chunk.positions))
    kernel = per_example.self_influence_kernel(layout)
    fn = jax.jit(lambda p, lr, data: kernel(p, lr, data))
    args = (w.ckpts.params, w.ckpts.lr_array(), chunk.data)
    out = profile(fn, lambda: args, useful, rate, s.repeats, stream)
    # the training gradient in the same formulation: one ordinary gradient of the chunk's
    # summed loss through the same layout and model code (checkpoint 0), timed alone
    grad = per_example.batch_grad_kernel(layout)
    p0 = w.ckpts.at(0)
    g_s = time_calls(lambda: jax.block_until_ready(grad(p0, chunk.data)), s.repeats)["median_s"]
    layout_grad = {
        "wall_s": g_s,
        "fraction_of_matmul": _chunk_useful(w, chunk) / g_s / 1e9 / rate,
        # self-influence per checkpoint over one ordinary gradient of the same chunk
        "overhead_ratio": out["wall_s"] / k / g_s,
    }
    return {**head, **out, "layout_training_gradient": layout_grad}


def profile_matrix(s: Settings, rate: float, stream: float) -> dict:
    wl, model, n_test = s.matrix
    w, layout, chunk, head = _kernel_case(s, wl, model, "train_x_test")
    k, p, c = len(w.ckpts), ravel_pytree(w.ckpts.at(0))[0].shape[0], head["chunk_size"]
    test_grads = jnp.zeros((n_test, k, p), jnp.float32)  # values do not change the time
    gram = 2.0 * n_test * len(chunk.positions) * k * p
    useful = gram + k * _chunk_useful(w, chunk)
    # the library's own jitted kernel, which donates its scratch: a new one for every call
    fn = tracin._train_test_kernel(layout)
    lrs = w.ckpts.lr_array()

    def make_args():
        scratch = per_example.event_major_scratch(w.ckpts.params, c, test_grads.dtype)
        return (w.ckpts.params, lrs, chunk.data, test_grads, scratch, None)  # no gradient map

    out = profile(fn, make_args, useful, rate, s.repeats, stream)
    return {**head, "n_test": n_test, "gram_flops": gram, **out}


def run(preset: str) -> dict:
    """The preset's kernels; a large matmul timed before them (the rate every fraction is of)
    and again after (how much the machine's own rate moved during the run)."""
    s = SETTINGS[preset]
    t_start = time.perf_counter()
    res = results_header("kernel_profile", preset, s)
    res["matmul"] = bench_matmul(s.matmul_size, 5)
    res["stream"] = bench_stream()
    rate, stream = res["matmul"]["gflops_per_s"], res["stream"]["roofline_bytes_per_s"]
    res["kernels"] = [
        profile_self_influence(s, wl, m, rate, stream)
        for wl, models in s.workloads.items()
        for m in models
    ]
    if s.matrix is not None:
        res["kernels"].append(profile_matrix(s, rate, stream))
    res["matmul_after"] = bench_matmul(s.matmul_size, 5)
    res["loadavg_after"] = loadavg()
    res["wall_s"] = time.perf_counter() - t_start
    return res


def _f(x, fmt=".2f") -> str:
    return "" if x is None else format(x, fmt)


def _non_matmul_gbs(cats: dict) -> float | None:
    rest = [c for name, c in cats.items() if name != "matmul"]
    t = sum(c["s_per_call"] for c in rest)
    return sum(c["bytes_per_call"] for c in rest) / t / 1e9 if t else None


def markdown(r: dict) -> str:
    lines = markdown_head("Kernel profile: where the per-event kernels' time goes", r)
    lines += [
        f"Matmul after the kernels: {r['matmul_after']['gflops_per_s']:.1f} GFLOP/s. "
        "Memory rates (`x * a + b` bytes read + written, `sum(x)` bytes read; float32): "
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in r["stream"]["bytes_per_s"].items())
        + " GB/s; the roofline takes the fastest.",
        "",
        "One chunk of each kernel on its workload's heaviest bucket (K checkpoints in one call); "
        "wall = median of steady calls without the profiler; shares = of the summed thunk time "
        "(XLA's CPU thunks under `jax.profiler.trace`); *matmul ops* = dots and fusions holding "
        "one, at XLA's own FLOP count; *bound if only matmuls* = the fraction of matmul the "
        "kernel would reach if its other thunks took no time; *bound at peak* = also with its "
        "matmuls at the large-matmul rate (useful / executed matmul FLOPs); *roofline bound* "
        "= every executed op at its floor, its matmul FLOPs at the matmul rate or the bytes it "
        "must move at the fastest memory rate, whichever is slower (what this op graph could "
        "reach on this machine); *non-matmul GB/s* = the bytes the other ops move over their "
        "time.",
        "",
        "| workload | model | kernel | bucket (chunk) | wall ms | fraction of matmul "
        "(useful) | matmul share | matmul ops GFLOP/s (fraction) | elementwise | reduce | "
        "gather+scatter | copy/layout+slice | sort | non-matmul GB/s | bound if only matmuls | "
        "bound at peak | roofline bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in r["kernels"]:
        c = k["categories"]

        def share(*names, c=c):
            v = sum((c[n]["share"] or 0.0) for n in names if n in c)
            return f"{100 * v:.0f}%"

        lines.append(
            f"| {k['workload']} | {k['model']} | {k['kernel']} | {k['bucket']} "
            f"({k['events_in_chunk']}) | {1e3 * k['wall_s']:.1f} | "
            f"{k['fraction_of_matmul']:.2f} | {share('matmul')} | "
            f"{_f(k['matmul_ops_gflops_per_s'], '.1f')} ({_f(k['matmul_ops_fraction_of_matmul'])}) "
            f"| {share('elementwise')} | {share('reduce')} | {share('gather', 'scatter')} | "
            f"{share('copy/layout', 'slice/update')} | {share('sort')} | "
            f"{_f(_non_matmul_gbs(c), '.1f')} | {_f(k['bound_matmul_only'])} | "
            f"{_f(k['bound_matmul_at_peak'])} | {_f(k['bound_roofline'])} |"
        )
    lines += [
        "",
        "The training gradient in the kernels' own formulation (`per_example.batch_grad_kernel`: "
        "one ordinary gradient of the same chunk's summed loss through the same layout and "
        "model code, checkpoint 0): its time, its fraction of matmul in useful FLOPs, and the "
        "overhead ratio of self-influence per checkpoint against it.",
        "",
        "| workload | model | training gradient ms (chunk) | fraction of matmul | "
        "self-influence overhead ratio |",
        "|---|---|---|---|---|",
    ]
    for k in r["kernels"]:
        g = k.get("layout_training_gradient")
        if g:
            lines.append(
                f"| {k['workload']} | {k['model']} | {1e3 * g['wall_s']:.1f} "
                f"({k['events_in_chunk']}) | {g['fraction_of_matmul']:.2f} | "
                f"{g['overhead_ratio']:.2f} |"
            )
    for k in r["kernels"]:
        lines += [
            "",
            f"### {k['workload']} / {k['model']} / {k['kernel']}: heaviest ops",
            "",
            f"{k['n_ops']} instructions; thunk time {1e3 * k['thunk_s_per_call']:.1f} ms per "
            f"call, {k['thunk_s_over_wall']:.2f}x the wall time.",
            "",
            "| op | category | shape | runs per call | ms per call | share | GFLOP/s | GB/s | "
            "floor ms | fused |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        total = k["thunk_s_per_call"]
        for o in [o for o in k["ops"] if o["category"] != "control"][:8]:
            fused = ", ".join(o["fused"][:6]) + (" ..." if len(o["fused"]) > 6 else "")
            lines.append(
                f"| {o['op']} | {o['category']} | {o['shape']} | {o['runs_per_call']:g} | "
                f"{1e3 * o['s_per_call']:.2f} | {100 * o['s_per_call'] / total:.0f}% | "
                f"{_f(o['gflops_per_s'], '.1f')} | {_f(o['gb_per_s'], '.1f')} | "
                f"{1e3 * o['roofline_s_per_call']:.2f} | {fused} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    return preset_main(argv, __doc__, SETTINGS, "ref", "kernel_profile", run, markdown)


if __name__ == "__main__":
    main()
