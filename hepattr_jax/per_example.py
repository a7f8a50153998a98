"""Per-event gradient kernels: one event's loss, ``jax.grad``, batched with ``jax.vmap``.

A *layout* turns events into fixed-shape chunks and says what one event's loss is; every kernel
here and every driver (:mod:`hepattr_jax.engine`) takes any object with this protocol::

    layout.chunks(gs, chunk_size, positions=None) -> Iterator[Chunk]   # fixed shape per bucket
    layout.loss_one(params, example) -> []     # 0 for filler slots
    layout.margin_one(params, example) -> []   # (2y - 1) * logit, TRAK's model output

Two layouts, both differentiating the model's own flax module (there is no second copy of any
model):

* :class:`NeighbourLayout`, for models written against :mod:`hepattr_jax.graph_ops` (every
  built-in model): one event as a :class:`~hepattr_jax.graph_ops.NeighbourGraph`, aggregation a
  masked reduction over incoming-edge slots (no scatter, no receiver gather);
* :class:`GraphLayout`, for any flax module over ``jraph.GraphsTuple`` (a user's own): the event
  padded alone as a two-graph GraphsTuple.

Both group events into at most ``max_buckets`` shapes by :func:`plan_buckets`, trading padding
against compilation (``bucket_overhead``, :data:`BUCKET_OVERHEAD`; padding waste reported by
``layout.plan(gs).waste``), and pad the tail of each bucket's last chunk with filler
slots that contribute exactly zero, so every kernel compiles once per bucket shape and memory is
bounded by the chunk size whatever the data-set size.

Checkpoints enter as a *stacked* parameter tree (leading axis K) and are looped with
``jax.lax.scan`` inside one jitted call, so each chunk is sent to the device once for all K.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from hepattr_jax.errors import ConfigError, DataError
from hepattr_jax.graph_ops import AnyArray, NeighbourGraph
from hepattr_jax.graphs import Batch, Budget, GraphSet, _ragged_rows
from hepattr_jax.losses import bce_with_logits, example_loss

Params = Any


# --------------------------------------------------------------------- layouts
class Chunk(NamedTuple):
    """``positions`` (int64 ``[c]``, into the GraphSet) of the first ``c`` slots of ``data``."""

    positions: np.ndarray
    data: Any


#: What one more compiled bucket shape is worth in padded work (the layouts' cost units: node
#: rows times incoming-edge slots plus two), measured on the 2-core CPU with the built-in models
#: at K = 5 checkpoints (benchmarks/results/tracin_throughput_cpu-amd-epyc-2c.md): a bucket
#: compiles in 1.0-1.5 s, in which the kernel gets through 0.8-1.1e5 such units of padded work
#: (ref-edgeconv and ref-jets alike). So a set too small to repay a compilation runs in fewer
#: shapes: the 28 events of a test, one shape; 4,096 jets, several. Set 0 to minimise padding
#: alone (the plan then uses every one of ``max_buckets`` the sizes allow).
BUCKET_OVERHEAD = 1e5


class Bucket(NamedTuple):
    """Events padded to one shape: ``n_node`` nodes and ``width`` edge slots (per node for the
    neighbour layout, per event for the GraphsTuple layout); ``positions`` into the GraphSet."""

    n_node: int
    width: int
    positions: np.ndarray


class BucketPlan(NamedTuple):
    """How a set of events is padded: the buckets and the share of padded work they execute.

    ``waste = 1 - real cost / padded cost`` under the layout's cost model (edge rows plus node
    rows: what the per-layer matmuls scale with).
    """

    buckets: tuple[Bucket, ...]
    waste: float


def plan_buckets(
    n_node: np.ndarray,
    width: np.ndarray,
    positions: np.ndarray,
    cost,
    max_buckets: int,
    bucket_overhead: float = 0.0,
) -> BucketPlan:
    """Groups events into at most ``max_buckets`` shapes, minimising the padded cost plus
    ``bucket_overhead`` per shape.

    Events are ordered by node count; a bucket is a contiguous range of node counts, padded to
    its largest ``n_node`` and largest ``width``; ``cost(n, w)`` is the work of one padded event.
    ``bucket_overhead`` is what one more compiled shape costs, in the same units (its compile
    time as padded work): with 0 the plan minimises padding alone and uses all ``max_buckets``
    shapes the sizes allow; with a compile cost, a small set runs in one or two shapes (compiling
    is then most of the time) and a large one in more. Exact dynamic programme over the distinct
    node counts (``O(S^2 B)``, ``S`` of them), so any size distribution compiles at most
    ``max_buckets`` shapes at the least cost they allow.
    """
    order = np.argsort(n_node, kind="stable")
    n_sorted, w_sorted, pos_sorted = n_node[order], width[order], positions[order]
    values, first = np.unique(n_sorted, return_index=True)
    s = len(values)
    if s == 0:
        return BucketPlan((), 0.0)
    ends = np.append(first[1:], len(n_sorted))
    cum = np.concatenate([[0], np.cumsum(ends - first)])  # events with distinct count < i: cum[i]
    w_max = np.maximum.reduceat(w_sorted, first)  # per distinct node count
    # span[i][j]: padded cost of one bucket holding distinct counts i..j.
    inf = float("inf")
    best = np.full((max_buckets + 1, s + 1), inf)
    cut = np.zeros((max_buckets + 1, s + 1), np.int64)
    best[0, 0] = 0.0
    for b in range(1, max_buckets + 1):
        for j in range(1, s + 1):
            w = 0
            for i in range(j, 0, -1):  # bucket = distinct counts i-1 .. j-1
                w = max(w, int(w_max[i - 1]))
                padded = (cum[j] - cum[i - 1]) * cost(int(values[j - 1]), w)
                c = best[b - 1, i - 1] + padded + bucket_overhead
                if c < best[b, j]:
                    best[b, j], cut[b, j] = c, i - 1
    b = int(np.argmin(best[:, s]))
    bounds = []
    j = s
    while j > 0:
        i = int(cut[b, j])
        bounds.append((i, j))
        j, b = i, b - 1
    buckets = []
    for i, j in reversed(bounds):
        lo, hi = first[i], ends[j - 1]
        pos = np.sort(pos_sorted[lo:hi])
        buckets.append(Bucket(int(values[j - 1]), int(w_sorted[lo:hi].max()), pos))
    total = float(sum(len(bk.positions) * cost(bk.n_node, bk.width) for bk in buckets))
    real = float(sum(cost(int(n), int(w)) for n, w in zip(n_node, width, strict=True)))
    return BucketPlan(tuple(buckets), 1.0 - real / total if total > 0 else 0.0)


def _positions(gs: GraphSet, positions) -> np.ndarray:
    return np.arange(len(gs)) if positions is None else np.asarray(positions, np.int64)


class NeighbourExample(NamedTuple):
    """One event in the neighbour-list layout (a chunk adds a leading axis ``C``).

    Attributes:
      graph: the event (:class:`~hepattr_jax.graph_ops.NeighbourGraph`).
      label: float32 ``[]``.
      valid: bool ``[]``; False for the filler slots of a chunk's tail (they contribute 0).
    """

    graph: NeighbourGraph
    label: AnyArray
    valid: AnyArray


def neighbour_stack(
    gs: GraphSet, positions: np.ndarray, n_node: int, width: int, size: int, dense: bool = False
) -> NeighbourExample:
    """The events at ``positions`` in the neighbour-list layout, ``[size, n_node, ...]``.

    Incoming edge slot ``s`` of node ``i`` holds the ``s``-th edge received by ``i`` (stored
    order); unused slots and nodes are masked. Slots ``len(positions)..size-1`` are filler.
    ``dense`` (every event fully connected, ``width == n_node``): no neighbour lists, slot ``j``
    of node ``i`` is the edge ``j -> i`` (see :class:`~hepattr_jax.graph_ops.NeighbourGraph`).
    """
    ev = gs.events
    b = len(positions)
    nn = ev.n_node[positions]
    if b and (nn.max() > n_node or gs.in_degree_max[positions].max() > width):
        i = int(np.argmax((nn > n_node) | (gs.in_degree_max[positions] > width)))
        raise DataError(
            f"{ev.source}: event id {ev.ids[positions[i]]} ({nn[i]} nodes) exceeds the bucket "
            f"({n_node} nodes, {width} edge slots per node)"
        )
    nodes = np.zeros((size, n_node, ev.n_features), np.float32)
    slot = np.repeat(np.arange(b), nn)
    rank = np.arange(nn.sum()) - np.repeat(np.concatenate([[0], np.cumsum(nn)[:-1]]), nn)
    nodes[slot, rank] = ev.nodes[_ragged_rows(ev.offsets, positions)]
    node_mask = np.zeros((size, n_node), bool)
    node_mask[slot, rank] = True

    ne = gs.n_edge[positions]
    erows = _ragged_rows(gs.edge_offsets, positions)
    eslot = np.repeat(np.arange(b), ne)
    edge_mask = np.zeros((size, n_node, width), bool)
    recv = gs.receivers[erows]
    if dense:
        if width != n_node:
            raise ValueError(f"a dense bucket has one slot per node, not {width} for {n_node}")
        neighbours = None
        edge_mask[eslot, recv, gs.senders[erows]] = True
    else:
        in_slot = gs.in_slot[erows]
        neighbours = np.zeros((size, n_node, width), np.int32)
        neighbours[eslot, recv, in_slot] = gs.senders[erows]
        edge_mask[eslot, recv, in_slot] = True

    glob = np.zeros((size, ev.n_globals), np.float32)
    glob[:b] = ev.globals[positions]
    label = np.zeros(size, np.float32)
    label[:b] = ev.labels[positions]
    valid = np.arange(size) < b
    graph = NeighbourGraph(nodes, node_mask, neighbours, edge_mask, glob)
    return NeighbourExample(graph, label, valid)


def neighbour_loss(apply_fn: Callable, params: Params, ex: NeighbourExample) -> jax.Array:
    """One event's loss in the neighbour-list layout (0 in a filler slot): what the kernels
    differentiate per event, and what training averages over a batch of them."""
    return jnp.where(ex.valid, bce_with_logits(apply_fn(params, ex.graph)[0], ex.label), 0.0)


def neighbour_mean_loss(apply_fn: Callable, params: Params, batch: NeighbourExample) -> jax.Array:
    """Mean loss over the real events of a ``[B, ...]`` neighbour-layout batch."""
    losses = jax.vmap(neighbour_loss, in_axes=(None, None, 0))(apply_fn, params, batch)
    return losses.sum() / jnp.maximum(batch.valid.sum(), 1)


@dataclasses.dataclass(frozen=True)
class NeighbourLayout:
    """Per-event neighbour-list layout for models written against :mod:`hepattr_jax.graph_ops`.

    Each event becomes a :class:`~hepattr_jax.graph_ops.NeighbourGraph` padded to its bucket
    (``n_node`` nodes, ``width`` incoming-edge slots per node; at most ``max_buckets`` shapes,
    chosen by :func:`plan_buckets`), and the model's own flax module is differentiated on it:
    aggregation is a masked reduction over the slot axis (no scatter), and the receiver side of
    an edge is a broadcast (no gather). Works for any edge set: fully connected, kNN, a user's.
    The model is held by value (flax modules hash by their settings), so equal layouts share
    compiled kernels.
    """

    model: Any
    max_buckets: int = 8
    bucket_overhead: float = BUCKET_OVERHEAD

    @staticmethod
    def cost(n: int, width: int) -> float:
        return n * (width + 2)

    def plan(self, gs: GraphSet, positions=None) -> BucketPlan:
        pos = _positions(gs, positions)
        n, w = gs.events.n_node[pos], gs.in_degree_max[pos]
        return plan_buckets(n, w, pos, self.cost, self.max_buckets, self.bucket_overhead)

    def chunks(self, gs: GraphSet, chunk_size: int, positions=None) -> Iterator[Chunk]:
        complete = gs.fully_connected
        for bk in self.plan(gs, positions).buckets:
            # A bucket of complete graphs runs dense: one slot per node, both edge ends
            # broadcasts (no gather, no scatter in the backward pass).
            dense = bool(complete[bk.positions].all())
            width = bk.n_node if dense else bk.width
            for s in range(0, len(bk.positions), chunk_size):
                p = bk.positions[s : s + chunk_size]
                yield Chunk(p, neighbour_stack(gs, p, bk.n_node, width, chunk_size, dense))

    def logit_one(self, params: Params, ex: NeighbourExample) -> jax.Array:
        return self.model.apply(params, ex.graph)[0]

    def loss_one(self, params: Params, ex: NeighbourExample) -> jax.Array:
        return neighbour_loss(self.model.apply, params, ex)

    def margin_one(self, params: Params, ex: NeighbourExample) -> jax.Array:
        """The logit margin of the event's true class, ``(2y - 1) z`` (0 in filler slots)."""
        return jnp.where(ex.valid, (2.0 * ex.label - 1.0) * self.logit_one(params, ex), 0.0)

    @staticmethod
    def grown(ex: NeighbourExample) -> NeighbourExample:
        """The shapes (``jax.ShapeDtypeStruct``) of one event ``ex`` with one more node slot:
        what :func:`graph_level_layers` compares with to find the per-event layers."""
        g = ex.graph
        n = g.nodes.shape[0]

        def more(x, axes) -> Any:
            shape = tuple(d + 1 if i in axes else d for i, d in enumerate(x.shape))
            return jax.ShapeDtypeStruct(shape, x.dtype)

        def same(x) -> Any:
            return jax.ShapeDtypeStruct(x.shape, x.dtype)

        dense = g.neighbours is None
        graph = NeighbourGraph(
            more(g.nodes, {0}),
            more(g.node_mask, {0}),
            None if dense else more(g.neighbours, {0}),
            more(g.edge_mask, {0, 1} if dense and g.edge_mask.shape[1] == n else {0}),
            same(g.globals),
        )
        return NeighbourExample(graph, same(ex.label), same(ex.valid))


@dataclasses.dataclass(frozen=True)
class GraphLayout:
    """Any flax module over ``jraph.GraphsTuple``: each event padded alone to its bucket.

    The per-example stack of :mod:`hepattr_jax.graphs` (the event as graph 0, a padding graph as
    graph 1), with budgets from each bucket itself (its largest event's nodes + 1 and edges),
    never from the largest event of the set; at most ``max_buckets`` shapes
    (:func:`plan_buckets`). Padding contributes exactly zero. For modules the library has never
    seen; models written against :mod:`hepattr_jax.graph_ops` get :class:`NeighbourLayout`.
    """

    model: Any
    max_buckets: int = 8
    bucket_overhead: float = BUCKET_OVERHEAD

    @staticmethod
    def cost(n: int, n_edge: int) -> float:
        return (n + 1) + n_edge

    def plan(self, gs: GraphSet, positions=None) -> BucketPlan:
        pos = _positions(gs, positions)
        n, w = gs.events.n_node[pos], gs.n_edge[pos]
        return plan_buckets(n, w, pos, self.cost, self.max_buckets, self.bucket_overhead)

    def chunks(self, gs: GraphSet, chunk_size: int, positions=None) -> Iterator[Chunk]:
        for bk in self.plan(gs, positions).buckets:
            budget = Budget(n_node=bk.n_node + 1, n_edge=max(bk.width, 1), n_graph=2)
            for s in range(0, len(bk.positions), chunk_size):
                p = bk.positions[s : s + chunk_size]
                yield Chunk(p, gs.example_stack(p, budget, size=chunk_size))

    def loss_one(self, params: Params, ex: Batch) -> jax.Array:
        return example_loss(self.model.apply, params, ex)

    def margin_one(self, params: Params, ex: Batch) -> jax.Array:
        """The logit margin of the event's true class, ``(2y - 1) z`` (0 in empty slots)."""
        z = self.model.apply(params, ex.graphs)
        return jnp.where(ex.graph_mask, (2.0 * ex.labels - 1.0) * z, 0.0).sum()

    @staticmethod
    def grown(ex: Batch) -> Batch:
        """The shapes of one padded event ``ex`` with one more node row (see
        :meth:`NeighbourLayout.grown`)."""
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), ex)
        nodes = ex.graphs.nodes
        grown = jax.ShapeDtypeStruct((nodes.shape[0] + 1, *nodes.shape[1:]), nodes.dtype)
        return abstract._replace(graphs=abstract.graphs._replace(nodes=grown))


def supports_neighbour_graphs(model) -> bool:
    """Whether ``model`` is written against :mod:`hepattr_jax.graph_ops` (declared by the
    class attribute ``graph_ops = True``, as every built-in model does)."""
    return bool(getattr(type(model), "graph_ops", False))


def layout_for(model, gs: GraphSet | None = None, prefer_neighbour: bool = True):
    """The fastest exact layout for ``model``: :class:`NeighbourLayout` for models written
    against :mod:`hepattr_jax.graph_ops`, else :class:`GraphLayout` (any GraphsTuple module)."""
    if prefer_neighbour and supports_neighbour_graphs(model):
        return NeighbourLayout(model)
    return GraphLayout(model)


# --------------------------------------------------------------------- kernels
def tree_sq_norm(tree) -> jax.Array:
    # asarray: ``sum`` of no leaves is the int 0
    return jnp.asarray(sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(tree)))


class GradientMap(NamedTuple):
    """A per-event map ``psi_k`` applied to every gradient before an inner product is taken,
    so the kernels compute ``sum_k lr_k <psi_k(g(z')), psi_k(g(z))>`` instead of TracIn's
    ``sum_k lr_k <g(z'), g(z)>`` (self-influence, train x test, top-k, dense projections).

    A method that reweights or changes the metric of TracIn is one ``GradientMap`` and touches
    no kernel: Adam's diagonal preconditioner ``psi_k(g) = P_k^{1/2} g``
    (:mod:`hepattr_jax.adam`), EK-FAC's whitening in the Kronecker eigenbasis
    (:mod:`hepattr_jax.ekfac`), the normalisation of gradient-cosine (:mod:`hepattr_jax.cosine`).

    Attributes:
      fn: ``fn(state_k, grads) -> tree`` for one event at one checkpoint (``grads`` the
        gradient tree of the parameters; the result any tree of arrays, flattened in
        ``ravel_pytree`` order). Hashable (a module-level function or a frozen dataclass):
        kernels are compiled once per ``fn``.
      state: a pytree whose every leaf has the leading axis ``K`` (scanned with the
        checkpoints), or None.
      name: what the scores are called in stores and tables.
    """

    fn: Callable
    state: Any
    name: str


def map_parts(gradient_map: GradientMap | None) -> tuple[Callable | None, Any]:
    """``(fn, state)`` of a gradient map, ``(None, None)`` (the plain gradient) for None."""
    return (None, None) if gradient_map is None else (gradient_map.fn, gradient_map.state)


def kernel_cache(factory: Callable) -> Callable:
    """``functools.lru_cache`` for a kernel factory, keyed on its arguments *with defaults
    applied*, so ``factory(layout)`` and ``factory(layout, None)`` return the same compiled
    kernel (a plain ``lru_cache`` keys them apart and compiles twice)."""
    import inspect

    sig = inspect.signature(factory)
    cached = functools.lru_cache(maxsize=32)(factory)

    @functools.wraps(factory)
    def make(*args, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return cached(*bound.args)

    return make


def optional_state(jitted: Callable) -> Callable:
    """``jitted`` (whose last argument is a map state) callable without that argument too, and
    always called with it, so calls with and without ``None`` share one compilation."""
    import inspect

    n_args = len(inspect.signature(jitted).parameters)

    def full(args):
        return (*args, None) if len(args) == n_args - 1 else args

    @functools.wraps(jitted)
    def call(*args):
        return jitted(*full(args))

    call.lower = lambda *args: jitted.lower(*full(args))  # type: ignore[attr-defined]
    return call


def mapped_grad(fn: Callable, map_fn: Callable | None, params: Params, state, ex):
    """One event's gradient tree of ``fn`` (the loss or margin), mapped by ``map_fn`` (the
    :attr:`GradientMap.fn`, None for the plain gradient) at this checkpoint's ``state``."""
    g = jax.grad(fn)(params, ex)
    return g if map_fn is None else map_fn(state, g)


def flat_grad_one(loss_one: Callable, params: Params, ex, map_fn=None, state=None) -> jax.Array:
    """``[P]`` (mapped) gradient of one event's loss, flattened in ``ravel_pytree`` order."""
    return ravel_pytree(mapped_grad(loss_one, map_fn, params, state, ex))[0]


@kernel_cache
def self_influence_kernel(layout, map_fn: Callable | None = None) -> Callable:
    """Jitted ``f(params_k [K,...], lr [K], chunk [C,...], state_k=None) -> [K, C]``:
    ``lr_k ||psi_k(grad l)||^2`` (``psi_k`` the :class:`GradientMap` ``map_fn`` at
    ``state_k``, the identity by default).

    Cached per layout and map (layouts are hashable values), so repeated calls reuse the
    compilation.
    """
    loss_one = layout.loss_one

    def one(params, state, ex):
        return tree_sq_norm(mapped_grad(loss_one, map_fn, params, state, ex))

    batched = jax.vmap(one, in_axes=(None, None, 0))

    @jax.jit
    def f(params_k, lr_k, chunk, state_k):
        def body(carry, pk):
            params, lr, state = pk
            return carry, lr * batched(params, state, chunk)

        return jax.lax.scan(body, None, (params_k, lr_k, state_k))[1]

    return optional_state(f)


def _chunk_captures(fn: Callable, params: Params, chunk):
    """``(spec, caps)``: the capture spec of the chunk's shapes and every slot's capture of
    ``fn`` (leading axis ``C``), for the capture-based kernels below (inside their ``jit``)."""
    from hepattr_jax.capture import capture_one, discover

    spec = discover(fn, params, jax.tree_util.tree_map(lambda x: x[0], chunk))
    return spec, jax.vmap(lambda e: capture_one(fn, spec, params, e))(chunk)


@functools.lru_cache(maxsize=32)
def capture_self_influence_kernel(layout, ghost: bool | None = None) -> Callable:
    """:func:`self_influence_kernel` from per-layer captures (:mod:`hepattr_jax.capture`):
    each dense layer's ``||G_l||^2`` by the ghost norm ``<A A^T, D D^T>`` or the materialised
    product, as :func:`~hepattr_jax.capture.layer_plan` chooses (``ghost`` None) or ``ghost``
    forces; the other parameters by their ordinary gradient. Exact (same sums, other order)."""
    from hepattr_jax.capture import sq_norm_from_capture

    fn = layout.loss_one

    @jax.jit
    def f(params_k, lr_k, chunk):
        def body(carry, pk):
            params, lr = pk
            spec, caps = _chunk_captures(fn, params, chunk)
            return carry, lr * jax.vmap(lambda c: sq_norm_from_capture(spec, c, ghost))(caps)

        return jax.lax.scan(body, None, (params_k, lr_k))[1]

    return f


@functools.lru_cache(maxsize=32)
def grad_kernel(layout) -> Callable:
    """Jitted ``f(params, chunk [C,...]) -> [C, P]`` flat per-event gradients at one checkpoint."""
    return jax.jit(jax.vmap(functools.partial(flat_grad_one, layout.loss_one), in_axes=(None, 0)))


@kernel_cache
def stacked_grad_kernel(layout, map_fn: Callable | None = None) -> Callable:
    """Jitted ``f(params_k [K,...], chunk [C,...], scratch [C, K, P], state_k=None) ->
    [C, K, P]``: the chunk's (``map_fn``-mapped at ``state_k``: :class:`GradientMap`) flat
    gradients at every checkpoint, event-major, written in place into ``scratch``, which is
    donated (pass the previous call's result back in; its values are never read)."""

    def one(params, ex, state):
        return flat_grad_one(layout.loss_one, params, ex, map_fn, state)

    per_event = jax.vmap(one, in_axes=(None, 0, None))

    @functools.partial(jax.jit, donate_argnums=2)
    def f(params_k, chunk, scratch, state_k):
        return checkpoints_event_major(
            lambda x: per_event(x[0], chunk, x[1]), (params_k, state_k), scratch
        )

    return optional_state(f)


def event_major_scratch(ckpts_params, chunk_size: int, dtype=None) -> jax.Array:
    """A ``[chunk_size, K, P]`` buffer for the kernels that write a chunk's flat gradients at
    every checkpoint in place (:func:`checkpoints_event_major`); ``dtype`` defaults to the
    parameters'."""
    leaves = jax.tree_util.tree_leaves(ckpts_params)
    k = leaves[0].shape[0]
    p = sum(int(np.prod(x.shape[1:])) for x in leaves)
    return jnp.zeros((chunk_size, k, p), dtype or jnp.result_type(*leaves))


def checkpoints_event_major(fn: Callable, xs, buf: jax.Array | None = None) -> jax.Array:
    """``[C, K, P]`` from ``fn(x_k) -> [C, P]`` over the ``K`` leading slices of ``xs``.

    One checkpoint at a time (``scan``: one checkpoint's activations live at once), each result
    written in place into one event-major buffer, so that an event's ``K`` gradients form one
    contiguous ``K * P`` row (a train x test Gram over checkpoints is then one matmul) and no
    ``[K, C, P]`` stack is transposed into it. ``buf``: the ``[C, K, P]`` buffer to write into
    (a kernel that donates it writes in place and spends nothing on zero-filling a new one, 59
    MB per chunk of 64 at ref-edgeconv's K = 5); a new zero buffer by default.
    """
    k = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if buf is None:
        one = jax.eval_shape(fn, jax.tree_util.tree_map(lambda x: x[0], xs))
        buf = jnp.zeros((one.shape[0], k, one.shape[1]), one.dtype)

    def body(buf, i_x):
        i, x = i_x
        g = fn(x).astype(buf.dtype)
        return jax.lax.dynamic_update_slice_in_dim(buf, g[:, None, :], i, axis=1), None

    return jax.lax.scan(body, buf, (jnp.arange(k), xs))[0]


@functools.lru_cache(maxsize=32)
def batch_grad_kernel(layout) -> Callable:
    """Jitted ordinary gradient of the *summed* loss of a chunk (the overhead-ratio baseline)."""
    loss_one = layout.loss_one

    def total(params, chunk):
        return jax.vmap(loss_one, in_axes=(None, 0))(params, chunk).sum()

    return jax.jit(jax.grad(total))


def stack_params(params_list: list[Params]) -> Params:
    """K parameter trees -> one tree with a leading K axis (one compiled program; eagerly, each
    leaf shape compiles a stack of its own)."""
    return _stack_trees(list(params_list))


@jax.jit
def _stack_trees(trees):
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *trees)


OUTPUTS = ("loss", "margin")


@kernel_cache
def projected_grad_kernel(
    layout, projector, output: str = "loss", map_fn: Callable | None = None
) -> Callable:
    """Jitted ``f(params_k [K,...], chunk [C,...], state_k=None) -> (features [K, C, d],
    values [K, C])``.

    ``values`` is the per-event ``output`` function (``"loss"``: the training loss, TracIn;
    ``"margin"``: the logit margin of the true class, TRAK's model output) and ``features`` its
    gradient (mapped by ``map_fn`` at ``state_k``, :class:`GradientMap`) projected by the keyed
    ``projector`` (:mod:`hepattr_jax.projection`), one checkpoint at a time. Each block of the
    projection is generated once per checkpoint and chunk and applied to all ``C`` events; only
    one chunk's gradients exist at once, never the data set's.
    """
    from hepattr_jax.projection import project_batch

    if output not in OUTPUTS:
        raise ConfigError(f"output {output!r}: use one of {OUTPUTS}")
    fn = layout.loss_one if output == "loss" else layout.margin_one
    if getattr(projector, "structure", "dense") == "kronecker":
        if map_fn is not None:
            raise ConfigError(
                "a per-layer (Kronecker) projection projects captured rows, not a gradient, "
                "so it cannot take a gradient map (Adam, EK-FAC, cosine); use a dense projector"
            )
        kernel = _kronecker_kernel(layout, fn, projector)
        return lambda params_k, chunk, state_k=None: kernel(params_k, chunk)

    def one(params, state, ex):
        value, g = jax.value_and_grad(fn)(params, ex)
        return value, (g if map_fn is None else map_fn(state, g))

    per_event = jax.vmap(one, in_axes=(None, None, 0))

    @jax.jit
    def f(params_k, chunk, state_k):
        def one_checkpoint(ps):
            values, grads = per_event(ps[0], ps[1], chunk)
            return project_batch(projector, grads), values

        return jax.lax.map(one_checkpoint, (params_k, state_k))

    return optional_state(f)


def graph_level_layers(layout, fn: Callable, params: Params, ex) -> frozenset:
    """Kernel paths of the dense layers whose rows per event do not grow with the event (one
    row per graph: the readout after pooling), found by tracing ``fn`` on ``ex`` and on
    ``layout.grown(ex)`` (abstractly). A property of the model, the same for every bucket, so a
    projection that treats these layers apart gives every event the same matrix."""
    from hepattr_jax.capture import discover

    grow = getattr(layout, "grown", None)
    if grow is None:
        return frozenset()

    def rows(spec):
        return {
            layer.kernel: sum(spec.sites[i].n_rows for i in layer.sites) for layer in spec.layers
        }

    a, b = rows(discover(fn, params, ex)), rows(discover(fn, params, grow(ex)))
    return frozenset(k for k, r in a.items() if b.get(k) == r)


def _kronecker_kernel(layout, fn: Callable, projector) -> Callable:
    """:func:`projected_grad_kernel` for a per-layer projector
    (:class:`~hepattr_jax.projection.KroneckerProjector`): one capture pass per event
    (:mod:`hepattr_jax.capture`), the layers' factors applied to the captured rows; no per-event
    gradient is formed."""

    @jax.jit
    def f(params_k, chunk):
        ex0 = jax.tree_util.tree_map(lambda x: x[0], chunk)

        def one_checkpoint(params):
            spec, caps = _chunk_captures(fn, params, chunk)
            graph_level = graph_level_layers(layout, fn, params, ex0)
            return projector.project(spec, caps, graph_level), caps.value

        return jax.lax.map(one_checkpoint, params_k)

    return f


@functools.lru_cache(maxsize=32)
def layer_energy_kernel(layout, output: str = "loss") -> Callable:
    """Jitted ``f(params_k [K,...], chunk [C,...]) -> [K, B, C]``: each event's squared
    gradient norm per block of a per-layer projection (the model's dense layers in capture
    order, then the rest if any), what :meth:`~hepattr_jax.projection.KroneckerProjector.
    calibrated` splits the dimensions by."""
    from hepattr_jax.capture import layer_plan, layer_sq_norm

    fn = layout.loss_one if output == "loss" else layout.margin_one

    @jax.jit
    def f(params_k, chunk):
        def one_checkpoint(params):
            spec, caps = _chunk_captures(fn, params, chunk)
            blocks = [
                jax.vmap(lambda c, lc=lc: layer_sq_norm(spec, lc[0], c, lc[1].ghost))(caps)
                for lc in zip(spec.layers, layer_plan(spec), strict=True)
            ]
            if spec.rest:
                blocks.append(sum(jnp.sum(g.reshape(g.shape[0], -1) ** 2, 1) for g in caps.rest))
            return jnp.stack(blocks)

        return jax.lax.map(one_checkpoint, params_k)

    return f


FISHERS = ("true", "empirical")


def fisher_weight(margin: jax.Array, fisher: str) -> jax.Array:
    """Each event's Fisher weight of the binary cross-entropy from its logit margin ``m = (2y -
    1) z``: ``"true"`` ``sigma(z) sigma(-z)`` (the expectation over labels drawn from the model:
    the Gauss-Newton weight), ``"empirical"`` ``(sigma(z) - y)^2 = sigma(-m)^2`` (the observed
    label's squared loss gradient)."""
    if fisher == "true":
        return jax.nn.sigmoid(margin) * jax.nn.sigmoid(-margin)
    if fisher == "empirical":
        return jax.nn.sigmoid(-margin) ** 2
    raise ConfigError(f"fisher {fisher!r}: use one of {FISHERS}")


@functools.lru_cache(maxsize=32)
def layer_statistics_kernel(layout, fisher: str = "true") -> Callable:
    """Jitted ``f(params_k [K,...], (chunk [C,...], weight [C])) -> [K, F]``: per checkpoint the
    chunk's weighted sums of every dense layer's :class:`~hepattr_jax.capture.LayerMoments`
    (:func:`~hepattr_jax.capture.chunk_layer_moments`)
    (``a_expand, s_expand, a_reduce, s_reduce`` flattened, then ``rows`` and ``has_rows``;
    layers in capture order), then per uncovered parameter leaf ``sum c g^2`` (its diagonal
    Fisher), then the weight sum and ``sum c``. One capture pass of the logit margin per
    event; ``c`` is :func:`fisher_weight`. Unpacked by
    :func:`hepattr_jax.kfac.unpack_statistics`."""
    from hepattr_jax.capture import chunk_layer_moments

    if fisher not in FISHERS:
        raise ConfigError(f"fisher {fisher!r}: use one of {FISHERS}")
    fn = layout.margin_one

    @jax.jit
    def f(params_k, data):
        chunk, weight = data

        def one_checkpoint(params):
            spec, caps = _chunk_captures(fn, params, chunk)
            c = fisher_weight(caps.value, fisher)
            parts = []
            for layer in spec.layers:
                mom = chunk_layer_moments(spec, layer, caps, c, weight)
                parts += [x.ravel() for x in mom]
            parts += [jnp.tensordot(weight * c, g**2, axes=1).ravel() for g in caps.rest]
            parts.append(jnp.stack([weight.sum(), (weight * c).sum()]))
            return jnp.concatenate(parts)

        return jax.lax.map(one_checkpoint, params_k)

    return f


def one_example(layout, gs: GraphSet, position: int):
    """The event at ``position`` of ``gs`` as ``layout`` lays out one event (no chunk axis), in
    its bucket's shape: what a single-event trace (capture discovery, checks) takes."""
    chunk = next(iter(layout.chunks(gs, 1, np.array([position]))))
    return jax.tree_util.tree_map(lambda x: x[0], chunk.data)


_CHECKED: set = set()


def check_layerwise(layout, params_k: Params, gs: GraphSet, output: str = "loss") -> None:
    """Before a per-layer (capture-based) method runs: on the set's largest event at the first
    checkpoint, the captured layers must rebuild ``jax.grad`` of the ``output`` function
    (:func:`hepattr_jax.capture.check_capture`), else a clear error names the parameter whose
    gradient they miss. Once per layout and output in a process."""
    from hepattr_jax.capture import check_capture

    if (layout, output) in _CHECKED or len(gs) == 0:
        return
    fn = layout.loss_one if output == "loss" else layout.margin_one
    ex = one_example(layout, gs, int(np.argmax(gs.events.n_node)))
    params = jax.tree_util.tree_map(lambda x: x[0], params_k)
    check_capture(fn, params, ex)
    _CHECKED.add((layout, output))
