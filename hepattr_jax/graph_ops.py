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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jraph

from hepattr_jax.errors import ConfigError

POOLINGS = ("mean", "max", "sum")


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
    """

    nodes: jax.Array
    node_mask: jax.Array
    neighbours: jax.Array
    edge_mask: jax.Array
    globals: jax.Array


def _masked_max(x: jax.Array, mask: jax.Array, axis: int) -> jax.Array:
    """Max over ``axis`` of the entries where ``mask``; 0 where no entry is valid."""
    m = jnp.expand_dims(mask, -1)
    lowest = jnp.finfo(x.dtype).min
    mx = jnp.where(m, x, lowest).max(axis)
    return jnp.where(m.any(axis), mx, 0.0)


class SegmentOps:
    """GraphsTuple backend (training batches; any number of graphs, padding graphs included)."""

    def __init__(self, graphs: jraph.GraphsTuple):
        self.graphs = graphs
        self.nodes = graphs.nodes
        self.globals = graphs.globals
        self.n_total = graphs.nodes.shape[0]

    def senders_of(self, x: jax.Array) -> jax.Array:
        """Per-node ``x [n, H]`` at each edge's sender: ``[E, H]``."""
        return x[self.graphs.senders]

    def receivers_of(self, x: jax.Array) -> jax.Array:
        """Per-node ``x [n, H]`` at each edge's receiver: ``[E, H]``."""
        return x[self.graphs.receivers]

    def aggregate(self, m: jax.Array, kind: str = "mean") -> jax.Array:
        """Edge values ``m [E, H]`` reduced over each node's incoming edges: ``[n, H]``."""
        r = self.graphs.receivers
        if kind == "mean":
            return jraph.segment_mean(m, r, self.n_total)
        if kind == "sum":
            return jraph.segment_sum(m, r, self.n_total)
        raise ConfigError(f"unknown aggregation {kind!r}; use 'mean' or 'sum'")

    def in_degree(self) -> jax.Array:
        """``[n]`` number of incoming edges of each node (padding edges land on padding nodes)."""
        ones = jnp.ones(self.graphs.receivers.shape, self.nodes.dtype)
        return jraph.segment_sum(ones, self.graphs.receivers, self.n_total)

    def pool(self, h: jax.Array, kinds: Sequence[str]) -> jax.Array:
        """Per-graph pooling ``[n, H] -> [n_graph, H * len(kinds)]``; an empty graph pools to 0."""
        from hepattr_jax.graphs import node_graph_index

        n_graph = self.graphs.n_node.shape[0]
        gidx = node_graph_index(self.graphs.n_node, self.n_total)
        out = []
        for k in kinds:
            if k == "mean":
                out.append(jraph.segment_mean(h, gidx, n_graph))
            elif k == "max":
                mx = jraph.segment_max(h, gidx, n_graph)
                out.append(jnp.where(self.graphs.n_node[:, None] > 0, mx, 0.0))
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

    def senders_of(self, x: jax.Array) -> jax.Array:
        if self.graph.neighbours is None:  # dense: every node sends to every slot row
            return x[None, :, :]  # [1, N, H], broadcasts against [N, 1, H]
        return x[self.graph.neighbours]  # [N, D, H]

    def receivers_of(self, x: jax.Array) -> jax.Array:
        return x[:, None, :]  # [N, 1, H], broadcasts against [N, D, H]

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

    def pool(self, h: jax.Array, kinds: Sequence[str]) -> jax.Array:
        mask = self.graph.node_mask
        out = []
        for k in kinds:
            if k == "mean":
                s = jnp.where(mask[:, None], h, 0.0).sum(0)
                out.append(s / jnp.maximum(mask.sum(), 1).astype(h.dtype))
            elif k == "max":
                out.append(_masked_max(h, mask, 0))
            elif k == "sum":
                out.append(jnp.where(mask[:, None], h, 0.0).sum(0))
            else:
                raise ConfigError(f"unknown pooling {k!r}; use one of {POOLINGS}")
        return jnp.concatenate(out, axis=-1)[None, :]

    def graph_globals(self) -> jax.Array:
        return self.graph.globals[None, :]


def ops_for(graphs) -> SegmentOps | NeighbourOps:
    """The backend for the input's type (a static, trace-time choice)."""
    if isinstance(graphs, NeighbourGraph):
        return NeighbourOps(graphs)
    if isinstance(graphs, jraph.GraphsTuple):
        return SegmentOps(graphs)
    raise ConfigError(
        f"models take a jraph.GraphsTuple or a graph_ops.NeighbourGraph, not {type(graphs)}"
    )


def edge_concat(ops, parts: Sequence[jax.Array]) -> jax.Array:
    """Concatenate edge values along features, broadcasting receiver-side ``[N, 1, H]`` parts."""
    if isinstance(ops, NeighbourOps):
        parts = [ops.broadcast_edges(p) for p in parts]
    return jnp.concatenate(parts, axis=-1)
