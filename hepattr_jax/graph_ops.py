"""The graph-ops seam: one model definition, two backends chosen by the input's type.

Every built-in model is written once against :func:`ops_for` and runs unchanged on

* a ``jraph.GraphsTuple`` (:class:`SegmentOps`): the training batch, many graphs concatenated,
  edges as ``senders/receivers`` lists, aggregation by ``jraph.segment_*`` over receivers;
* a :class:`NeighbourGraph` (:class:`NeighbourOps`): **one event** padded to a bucket of ``N``
  nodes with ``D`` incoming-edge slots per node (``neighbours [N, D]``, receiver-major). Edge
  tensors are ``[N, D, H]``: the receiver side is a broadcast (no gather at all), the sender side
  one gather, and aggregation a masked reduction over the ``D`` axis: no scatter. This is the
  per-event layout that :mod:`hepattr_jax.per_example` batches with ``jax.vmap``.

The two give the same numbers on the real nodes of an event (tested in ``tests/test_models.py``);
padding nodes and masked edge slots never reach a real node, a pooled value or a gradient.

Edge-shaped values are whatever :meth:`senders_of` / :meth:`receivers_of` return (``[E, H]``
for a GraphsTuple, ``[N, D, H]`` or a broadcastable ``[N, 1, H]`` for a neighbour graph); models
only combine them elementwise, pass them through ``nn.Dense`` (which maps the last axis) and
hand them back to :meth:`aggregate`.

Beyond the input graph, the seam has three ways to get a *new* edge set over the same nodes
(each returns a new ops object of the same backend; nodes, graphs and pooling are unchanged):

* :func:`knn` (dynamic k-nearest neighbours in a learned feature space, as DGCNN / ParticleNet /
  DynEdge recompute them each block), identical on both backends on real nodes;
* :meth:`~SegmentOps.with_self_loops` (every node also receives from itself: attention);
* and :meth:`~SegmentOps.softmax` / :meth:`~SegmentOps.pool_softmax` normalise edge / node
  logits per receiver / per graph (attention weights, class-attention pooling).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import NamedTuple, TypeAlias

import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hepattr_jax.errors import ConfigError

_KNN_ROWS: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar(
    "hepattr_knn_rows", default=None
)


@contextlib.contextmanager
def recording_knn_rows() -> Iterator[set[int]]:
    """Collects, while tracing a model inside the block, the row count ``n_nodes * slots`` of
    every dynamic kNN edge set :meth:`SegmentOps.knn` builds: what tells a layer whose rows are
    neighbour slots from one whose rows are the input graph's edges (the explain report's
    activations and LRP need to know)."""
    rows: set[int] = set()
    token = _KNN_ROWS.set(rows)
    try:
        yield rows
    finally:
        _KNN_ROWS.reset(token)


POOLINGS = ("mean", "max", "sum", "min")

#: An array built on the host (NumPy) that is a ``jax.Array`` once inside ``jit``.
AnyArray: TypeAlias = jax.Array | np.ndarray


class NeighbourGraph(NamedTuple):
    """One event in the neighbour-list layout (a chunk adds a leading axis ``C``).

    Attributes:
      nodes: float ``[N, F]``; rows ``n..N-1`` are padding (zeros).
      node_mask: bool ``[N]``; True for the event's ``n`` real nodes.
      neighbours: int32 ``[N, D]``; ``neighbours[i, s]`` is the sender of incoming edge slot ``s``
        of node ``i`` (any valid row where the slot is masked). ``None`` for a *dense* event
        (fully connected): then ``D = N``, slot ``j`` of node ``i`` is the edge from node ``j``,
        and the sender side of an edge is a broadcast like the receiver side (no gather).
      edge_mask: bool ``[N, D]``; True for real edges (only between real nodes).
      globals: float ``[G]`` event-level inputs.

    Built with NumPy arrays (:func:`hepattr_jax.per_example.neighbour_stack`); inside a jitted
    function the fields are ``jax.Array``.
    """

    nodes: AnyArray
    node_mask: AnyArray
    neighbours: AnyArray | None
    edge_mask: AnyArray
    globals: AnyArray


def _masked_max(x: AnyArray, mask: AnyArray, axis: int) -> jax.Array:
    """Max over ``axis`` of the entries where ``mask``; 0 where no entry is valid."""
    m = jnp.expand_dims(mask, -1)
    lowest = jnp.finfo(x.dtype).min
    mx = jnp.where(m, x, lowest).max(axis)
    return jnp.where(m.any(axis), mx, 0.0)


class SegmentOps:
    """GraphsTuple backend (training batches; any number of graphs, padding graphs included).

    ``senders, receivers`` (int32 ``[E]``) default to the GraphsTuple's; an edge set made by
    :func:`knn` also carries ``edge_mask`` (bool ``[E]``; False for the unused slots of nodes
    whose graph has fewer than ``k + 1`` nodes). Masked edges contribute to nothing.
    """

    def __init__(self, graphs: jraph.GraphsTuple, senders=None, receivers=None, edge_mask=None):
        self.graphs = graphs
        self.nodes = graphs.nodes
        self.globals = graphs.globals
        self.n_total = graphs.nodes.shape[0]
        self.senders = graphs.senders if senders is None else senders
        self.receivers = graphs.receivers if receivers is None else receivers
        self.edge_mask = edge_mask
        self.n_graph = graphs.n_node.shape[0]

    def senders_of(self, x: jax.Array) -> jax.Array:
        """Per-node ``x [n, H]`` at each edge's sender: ``[E, H]``."""
        return jnp.asarray(x)[self.senders]

    def receivers_of(self, x: jax.Array) -> jax.Array:
        """Per-node ``x [n, H]`` at each edge's receiver: ``[E, H]``."""
        return jnp.asarray(x)[self.receivers]

    def _masked(self, m: jax.Array, fill=0.0) -> jax.Array:
        if self.edge_mask is None:
            return m
        mask = self.edge_mask.reshape(self.edge_mask.shape + (1,) * (m.ndim - 1))
        return jnp.where(mask, m, fill)

    def aggregate(self, m: jax.Array, kind: str = "mean") -> jax.Array:
        """Edge values ``m [E, H]`` reduced over each node's incoming edges: ``[n, H]``."""
        r = self.receivers
        if kind == "mean":
            if self.edge_mask is None:
                return jraph.segment_mean(m, r, self.n_total)
            s = jraph.segment_sum(self._masked(m), r, self.n_total)
            return s / jnp.maximum(self.in_degree(), 1.0).reshape((-1,) + (1,) * (m.ndim - 1))
        if kind == "sum":
            return jraph.segment_sum(self._masked(m), r, self.n_total)
        raise ConfigError(f"unknown aggregation {kind!r}; use 'mean' or 'sum'")

    def in_degree(self) -> jax.Array:
        """``[n]`` number of incoming edges of each node (padding edges land on padding nodes)."""
        ones = jnp.ones(self.receivers.shape, self.nodes.dtype)
        return jraph.segment_sum(self._masked(ones), self.receivers, self.n_total)

    def softmax(self, logits: jax.Array) -> jax.Array:
        """Edge logits ``[E, H]`` normalised over each receiver's incoming edges (masked edges
        get weight 0): ``a_ij = exp(z_ij) / sum_j' exp(z_ij')``, per head ``H``."""
        z = self._masked(logits, jnp.finfo(logits.dtype).min)
        w = jraph.segment_softmax(z, self.receivers, self.n_total)
        return self._masked(w)

    def pool_softmax(self, logits: jax.Array) -> jax.Array:
        """Node logits ``[n, H]`` normalised over the nodes of each graph."""
        return jraph.segment_softmax(logits, self._graph_index(), self.n_graph)

    def graph_to_nodes(self, x: jax.Array) -> jax.Array:
        """Per-graph ``x [n_graph, H]`` at each of the graph's nodes: ``[n, H]``."""
        return jnp.asarray(x)[self._graph_index()]

    def _graph_index(self) -> jax.Array:
        from hepattr_jax.graphs import node_graph_index

        return node_graph_index(self.graphs.n_node, self.n_total)

    def with_self_loops(self) -> SegmentOps:
        """The same graph with an edge ``i -> i`` added to every node (appended after ``E``)."""
        idx = jnp.arange(self.n_total, dtype=self.senders.dtype)
        mask = None
        if self.edge_mask is not None:
            mask = jnp.concatenate([self.edge_mask, jnp.ones(self.n_total, bool)])
        return SegmentOps(
            self.graphs,
            jnp.concatenate([self.senders, idx]),
            jnp.concatenate([self.receivers, idx]),
            mask,
        )

    def knn(self, coords: AnyArray, k: int) -> SegmentOps:
        """See :func:`knn`. Block-masked ``[n, n]`` distances over the whole batch: ``O(n^2)``
        time and memory in the batch's node count ``n`` (fine for evaluation batches and
        per-event GraphsTuples; a training batch of ``B`` jets of ``m`` constituents costs
        ``(B m)^2``, ``B`` times the per-event work)."""
        n = self.n_total
        kk = max(1, min(k, n - 1))
        gidx = self._graph_index()
        valid = (gidx[:, None] == gidx[None, :]) & ~jnp.eye(n, dtype=bool)
        nbr, mask = _top_k_neighbours(coords, valid, kk)
        recording = _KNN_ROWS.get()
        if recording is not None:
            recording.add(n * kk)
        return SegmentOps(
            self.graphs,
            nbr.reshape(-1),
            jnp.repeat(jnp.arange(n, dtype=nbr.dtype), kk),
            mask.reshape(-1),
        )

    def pool(self, h: AnyArray, kinds: Sequence[str]) -> jax.Array:
        """Per-graph pooling ``[n, H] -> [n_graph, H * len(kinds)]``; an empty graph pools to 0."""
        n_graph = self.graphs.n_node.shape[0]
        gidx = self._graph_index()
        nonempty = self.graphs.n_node[:, None] > 0
        out = []
        for k in kinds:
            if k == "mean":
                out.append(jraph.segment_mean(h, gidx, n_graph))
            elif k == "max":
                mx = jraph.segment_max(h, gidx, n_graph)
                out.append(jnp.where(nonempty, mx, 0.0))
            elif k == "min":
                mn = -jraph.segment_max(-h, gidx, n_graph)
                out.append(jnp.where(nonempty, mn, 0.0))
            elif k == "sum":
                out.append(jraph.segment_sum(h, gidx, n_graph))
            else:
                raise ConfigError(f"unknown pooling {k!r}; use one of {POOLINGS}")
        return jnp.concatenate(out, axis=-1)

    def graph_globals(self) -> jax.Array:
        """``[n_graph, G]`` event-level inputs."""
        return self.graphs.globals


class NeighbourOps:
    """Per-event neighbour-list backend (see :class:`NeighbourGraph`); outputs have one graph."""

    def __init__(self, graph: NeighbourGraph):
        self.graph = graph
        self.nodes = graph.nodes
        self.globals = graph.globals
        self.n_graph = 1

    def senders_of(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if self.graph.neighbours is None:  # dense: slot j of every node is node j (a broadcast)
            n = self.graph.edge_mask.shape[0]
            return jnp.broadcast_to(x[None], (n, *x.shape))  # [N, N, H]
        return x[self.graph.neighbours]  # [N, D, H]

    def receivers_of(self, x: jax.Array) -> jax.Array:
        return jnp.asarray(x)[:, None, :]  # [N, 1, H], broadcasts against [N, D, H]

    def broadcast_edges(self, x: jax.Array) -> jax.Array:
        """An edge value made explicit at full edge shape ``[N, D, H]`` (for concatenation)."""
        n, d = self.graph.edge_mask.shape
        return jnp.broadcast_to(x, (n, d, x.shape[-1]))

    def aggregate(self, m: jax.Array, kind: str = "mean") -> jax.Array:
        m = self.broadcast_edges(m)
        mask = self.graph.edge_mask[..., None]
        s = jnp.where(mask, m, 0.0).sum(1)
        if kind == "sum":
            return s
        if kind == "mean":
            count = self.graph.edge_mask.sum(1, keepdims=True).astype(m.dtype)
            return s / jnp.maximum(count, 1.0)
        raise ConfigError(f"unknown aggregation {kind!r}; use 'mean' or 'sum'")

    def in_degree(self) -> jax.Array:
        return self.graph.edge_mask.sum(1).astype(self.nodes.dtype)

    def softmax(self, logits: jax.Array) -> jax.Array:
        """Edge logits ``[N, D, H]`` normalised over each node's incoming slots (masked: 0)."""
        return _masked_softmax(self.broadcast_edges(logits), self.graph.edge_mask[..., None], 1)

    def pool_softmax(self, logits: jax.Array) -> jax.Array:
        """Node logits ``[N, H]`` normalised over the event's real nodes (padding: 0)."""
        return _masked_softmax(logits, self.graph.node_mask[:, None], 0)

    def graph_to_nodes(self, x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(x, (self.nodes.shape[0], x.shape[-1]))

    def with_self_loops(self) -> NeighbourOps:
        """Slot 0 of every real node becomes an edge from itself; the input slots follow (in a
        dense event: the diagonal slots become edges)."""
        g = self.graph
        if g.neighbours is None:
            eye = jnp.eye(g.edge_mask.shape[0], dtype=bool)
            return NeighbourOps(g._replace(edge_mask=g.edge_mask | (eye & g.node_mask[:, None])))
        n = g.neighbours.shape[0]
        own = jnp.arange(n, dtype=g.neighbours.dtype)[:, None]
        return NeighbourOps(
            g._replace(
                neighbours=jnp.concatenate([own, g.neighbours], 1),
                edge_mask=jnp.concatenate([g.node_mask[:, None], g.edge_mask], 1),
            )
        )

    def knn(self, coords: AnyArray, k: int) -> NeighbourOps:
        """See :func:`knn`. Masked ``[N, N]`` distances within the event; ``min(k, N - 1)``
        slots per node (at least 1), masked where the event has fewer than ``k + 1`` nodes."""
        g = self.graph
        n = g.node_mask.shape[0]
        kk = max(1, min(k, n - 1))
        valid = g.node_mask[:, None] & g.node_mask[None, :] & ~jnp.eye(n, dtype=bool)
        nbr, mask = _top_k_neighbours(coords, valid, kk)
        return NeighbourOps(g._replace(neighbours=nbr, edge_mask=mask))

    def pool(self, h: AnyArray, kinds: Sequence[str]) -> jax.Array:
        mask = self.graph.node_mask
        out = []
        for k in kinds:
            if k == "mean":
                s = jnp.where(mask[:, None], h, 0.0).sum(0)
                out.append(s / jnp.maximum(mask.sum(), 1).astype(h.dtype))
            elif k == "max":
                out.append(_masked_max(h, mask, 0))
            elif k == "min":
                out.append(-_masked_max(-h, mask, 0))
            elif k == "sum":
                out.append(jnp.where(mask[:, None], h, 0.0).sum(0))
            else:
                raise ConfigError(f"unknown pooling {k!r}; use one of {POOLINGS}")
        return jnp.concatenate(out, axis=-1)[None, :]

    def graph_globals(self) -> AnyArray:
        return self.graph.globals[None, :]


def _masked_softmax(z: jax.Array, mask: AnyArray, axis: int) -> jax.Array:
    """Softmax of ``z`` over ``axis`` among the entries where ``mask`` (0 elsewhere; all 0 where
    no entry is valid). The shift by the (stop-gradient) max is exact in value and gradient."""
    z = jnp.where(mask, z, jnp.finfo(z.dtype).min)
    e = jnp.where(mask, jnp.exp(z - jax.lax.stop_gradient(z.max(axis, keepdims=True))), 0.0)
    return e / jnp.maximum(e.sum(axis, keepdims=True), jnp.finfo(z.dtype).tiny)


def _top_k_neighbours(coords: AnyArray, valid: AnyArray, k: int) -> tuple[jax.Array, jax.Array]:
    """For each row ``i``, the ``k`` columns ``j`` with ``valid[i, j]`` nearest in ``coords``.

    ``d_ij = |x_i|^2 + |x_j|^2 - 2 x_i . x_j`` (one matmul; ``[n, n]`` memory), invalid pairs at
    ``+inf``; ``jax.lax.top_k`` of ``-d`` keeps the lower index first among equal distances, the
    stable-argsort tie rule of :func:`hepattr_jax.graphs.knn_edges`. Returns ``nbr`` int32
    ``[n, k]`` and ``mask`` bool ``[n, k]`` (False where row ``i`` has fewer than ``k`` valid
    columns). No gradient flows through the selection.
    """
    x = jax.lax.stop_gradient(coords)
    sq = jnp.sum(x * x, axis=-1)
    gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    neg = jnp.where(valid, -d2, -jnp.inf)
    vals, nbr = jax.lax.top_k(neg, k)
    return nbr.astype(jnp.int32), vals > -jnp.inf


def ops_for(graphs) -> SegmentOps | NeighbourOps:
    """The backend for the input's type (a static, trace-time choice)."""
    if isinstance(graphs, NeighbourGraph):
        return NeighbourOps(graphs)
    if isinstance(graphs, jraph.GraphsTuple):
        return SegmentOps(graphs)
    raise ConfigError(
        f"models take a jraph.GraphsTuple or a graph_ops.NeighbourGraph, not {type(graphs)}"
    )


def knn(ops: SegmentOps | NeighbourOps, coords: AnyArray, k: int):
    """The same nodes with edges to each node from its ``k`` nearest others in ``coords``.

    ``coords [n, C]`` are per-node values (input features or a layer's output: DGCNN's dynamic
    graph, arXiv 1801.07829, as in ParticleNet, arXiv 1902.08570). Distance is squared
    Euclidean; self, padding and other graphs are excluded; ties go to the lower node index
    (as ``graphs.knn_edges``); a node of an event with ``n - 1 < k`` other nodes gets ``n - 1``
    edges (the rest masked), a single-node event none. ``k`` is static. The selection carries
    no gradient (``stop_gradient``): only the features gathered along the new edges do.
    Both backends select the same neighbours for the real nodes of an event.
    """
    return ops.knn(coords, k)


def edge_concat(ops, parts: Sequence[jax.Array]) -> jax.Array:
    """Concatenate edge values along features, broadcasting receiver-side ``[N, 1, H]`` parts."""
    if isinstance(ops, NeighbourOps):
        parts = [ops.broadcast_edges(p) for p in parts]
    return jnp.concatenate(parts, axis=-1)
