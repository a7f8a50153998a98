"""Events to ``jraph.GraphsTuple``: edges, padding budgets and the two batch layouts.

Two batch layouts, both with static shapes fixed by a :class:`Budget` (so a jitted function
compiles once per budget) and both with a ``graph_mask`` so that padding never reaches a loss,
a gradient or a score:

* **training batch** (:meth:`GraphSet.training_batch`): up to ``B`` event graphs concatenated
  (``jraph.batch`` layout), then one padding graph that owns every padding node and edge, then
  empty padding graphs up to ``n_graph``. Shapes: ``nodes [n_node, F]``, ``senders/receivers
  [n_edge]``, ``n_node/n_edge [n_graph]``, ``globals [n_graph, G]``.
* **per-example stack** (:meth:`GraphSet.example_stack`): each event padded *alone* to the
  single-event budget (the event as graph 0, a padding graph as graph 1) and stacked on a leading
  axis that ``jax.vmap`` maps over. Shapes: ``nodes [B, n_node, F]``, ``senders [B, n_edge]``,
  ``n_node [B, 2]``, ``globals [B, 2, G]``. Unused slots of a stack are all-padding examples with
  ``graph_mask`` false everywhere, so they contribute exactly zero.

Padding edges connect the first padding node to itself, so they only ever touch padding nodes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jraph
import numpy as np

from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import DataError


class Batch(NamedTuple):
    """What crosses the jit boundary: padded graphs, labels and the mask of real graphs.

    Attributes:
      graphs: padded ``jraph.GraphsTuple`` (``edges`` None; ``globals`` = event-level inputs).
      labels: float32 ``[n_graph]`` (or ``[B, 2]`` in a per-example stack); 0 on padding graphs.
      graph_mask: bool, same shape as ``labels``: True for real events.

    Built with NumPy arrays; inside a jitted function the fields are ``jax.Array``.
    """

    graphs: jraph.GraphsTuple
    labels: jax.Array | np.ndarray
    graph_mask: jax.Array | np.ndarray


class Budget(NamedTuple):
    """Static padded sizes. ``n_node`` and ``n_edge`` include room for one padding graph."""

    n_node: int
    n_edge: int
    n_graph: int


# --------------------------------------------------------------------- edges
@functools.lru_cache(maxsize=256)
def fully_connected_edges(n: int) -> tuple[np.ndarray, np.ndarray]:
    """All ordered pairs (i, j), i != j, of ``n`` nodes: ``senders, receivers`` int32 ``[n(n-1)]``.

    Ordered by receiver then sender. Written here because jraph's ``get_fully_connected_graph``
    calls removed JAX APIs (see shared/spec/stack-notes.md).
    """
    r, s = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = r != s
    return s[keep].astype(np.int32), r[keep].astype(np.int32)


def delta_phi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a - b`` wrapped into [-pi, pi)."""
    return (np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi


def knn_edges(eta: np.ndarray, phi: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each node receives edges from its ``k`` nearest other nodes in (eta, phi).

    Distance ``dR^2 = d_eta^2 + d_phi^2`` with d_phi wrapped. ``k`` is clipped to ``n - 1``; ties
    are broken by node index (stable sort). Returns ``senders, receivers`` int32.
    """
    n = len(eta)
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    deta = eta[:, None] - eta[None, :]
    dphi = delta_phi(phi[:, None], phi[None, :])
    d2 = deta**2 + dphi**2
    np.fill_diagonal(d2, np.inf)
    nbr = np.argsort(d2, axis=1, kind="stable")[:, :kk]  # [n, kk], row i = senders into i
    receivers = np.repeat(np.arange(n), kk)
    return nbr.reshape(-1).astype(np.int32), receivers.astype(np.int32)


# --------------------------------------------------------------------- graph set
@dataclasses.dataclass(frozen=True)
class GraphSet:
    """An EventSet with its edges: per event, local ``senders/receivers`` in a ragged array.

    Attributes:
      events: the events (features already normalised if wanted).
      senders, receivers: int32 ``[sum_i e_i]`` local node indices within each event.
      edge_offsets: int64 ``[N + 1]``.
      edges: how the edges were made (``"fully_connected"`` or ``"knn:K"``).
    """

    events: EventSet
    senders: np.ndarray
    receivers: np.ndarray
    edge_offsets: np.ndarray
    edges: str

    def __len__(self) -> int:
        return len(self.events)

    @property
    def n_edge(self) -> np.ndarray:
        return np.diff(self.edge_offsets)

    @functools.cached_property
    def _in_slots(self) -> tuple[np.ndarray, np.ndarray]:
        ev = self.events
        ne = self.n_edge
        node_base = np.repeat(ev.offsets[:-1], ne)  # global row of each edge's event's node 0
        global_recv = self.receivers.astype(np.int64) + node_base
        order = np.argsort(global_recv, kind="stable")
        counts = np.bincount(global_recv, minlength=int(ev.offsets[-1]))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.empty(len(global_recv), np.int32)
        slot[order] = np.arange(len(order)) - starts[global_recv[order]]
        deg_max = np.maximum.reduceat(counts, ev.offsets[:-1]) if len(ev) else np.zeros(0, np.int64)
        return slot, deg_max.astype(np.int64)

    @property
    def in_slot(self) -> np.ndarray:
        """int32 ``[sum_i e_i]``: rank of each edge among the edges its receiver gets (stored
        order); the edge's slot in the neighbour-list layout."""
        return self._in_slots[0]

    @functools.cached_property
    def fully_connected(self) -> np.ndarray:
        """bool ``[N]``: each event's edges are every ordered pair ``i != j`` exactly once."""
        n = self.events.n_node
        ne = self.n_edge
        loops = np.zeros(len(self), np.int64)
        self_loop = self.senders == self.receivers
        if self_loop.any():
            loops = np.add.reduceat(self_loop.astype(np.int64), self.edge_offsets[:-1])
            loops[ne == 0] = 0
        # n(n-1) edges without self loops, each node receiving n-1 of them: all pairs, once each
        # (a repeated pair would leave another pair out, and one receiver short).
        return (ne == n * (n - 1)) & (loops == 0) & (self.in_degree_max == np.maximum(n - 1, 0))

    @property
    def in_degree_max(self) -> np.ndarray:
        """int64 ``[N]``: the largest number of edges any node of each event receives."""
        return self._in_slots[1]

    def single_budget(self) -> Budget:
        """Budget for one event alone (per-example stack): largest event plus one padding node."""
        nmax = int(self.events.n_node.max())
        emax = int(self.n_edge.max()) if len(self) else 0
        return Budget(n_node=nmax + 1, n_edge=max(emax, 1), n_graph=2)

    def batch_budget(self, batch_size: int) -> Budget:
        """Budget for any ``batch_size`` events of this set (worst case) plus a padding graph."""
        nmax = int(self.events.n_node.max())
        emax = int(self.n_edge.max())
        return Budget(batch_size * nmax + 1, batch_size * emax + 1, batch_size + 1)

    def check_fits(self, budget: Budget, positions: np.ndarray, what: str) -> None:
        nn = self.events.n_node[positions]
        ne = self.n_edge[positions]
        if (
            nn.sum() + 1 > budget.n_node
            or ne.sum() > budget.n_edge
            or len(positions) + 1 > budget.n_graph
        ):
            raise DataError(
                f"{self.events.source}: {what}: {len(positions)} events with {nn.sum()} nodes, "
                f"{ne.sum()} edges exceed the padding budget {budget}"
            )

    def training_batch(self, positions: np.ndarray, budget: Budget) -> Batch:
        """The events at ``positions`` as one padded training batch (layout in the module doc)."""
        positions = np.asarray(positions, np.int64)
        self.check_fits(budget, positions, "training batch")
        ev = self.events
        b = len(positions)
        nn = ev.n_node[positions]
        ne = self.n_edge[positions]
        f, g = ev.n_features, ev.n_globals

        node_rows = _ragged_rows(ev.offsets, positions)
        edge_rows = _ragged_rows(self.edge_offsets, positions)
        node_start = np.repeat(np.concatenate([[0], np.cumsum(nn)[:-1]]), ne)
        n_real, e_real = int(nn.sum()), int(ne.sum())

        nodes = np.zeros((budget.n_node, f), np.float32)
        nodes[:n_real] = ev.nodes[node_rows]
        senders = np.full(budget.n_edge, n_real, np.int32)  # padding edges: first padding node
        receivers = np.full(budget.n_edge, n_real, np.int32)
        senders[:e_real] = self.senders[edge_rows] + node_start
        receivers[:e_real] = self.receivers[edge_rows] + node_start
        n_node = np.zeros(budget.n_graph, np.int32)
        n_edge = np.zeros(budget.n_graph, np.int32)
        n_node[:b], n_edge[:b] = nn, ne
        n_node[b] = budget.n_node - n_real
        n_edge[b] = budget.n_edge - e_real
        globals_ = np.zeros((budget.n_graph, g), np.float32)
        globals_[:b] = ev.globals[positions]
        labels = np.zeros(budget.n_graph, np.float32)
        labels[:b] = ev.labels[positions]
        mask = np.zeros(budget.n_graph, bool)
        mask[:b] = True
        graphs = jraph.GraphsTuple(
            nodes=nodes,
            edges=None,
            senders=senders,
            receivers=receivers,
            globals=globals_,
            n_node=n_node,
            n_edge=n_edge,
        )
        return Batch(graphs, labels, mask)

    def example_stack(
        self, positions: np.ndarray, budget: Budget, size: int | None = None
    ) -> Batch:
        """Each event at ``positions`` padded alone to ``budget``, stacked: leading axis ``size``.

        ``size`` (default ``len(positions)``) may exceed the number of events: the extra slots
        are all-padding examples (``graph_mask`` false), so a fixed chunk shape serves the tail.
        """
        positions = np.asarray(positions, np.int64)
        size = len(positions) if size is None else size
        if size < len(positions):
            raise ValueError(f"stack size {size} < {len(positions)} events")
        ev = self.events
        b = len(positions)
        nn = ev.n_node[positions]
        ne = self.n_edge[positions]
        if b and (nn.max() + 1 > budget.n_node or ne.max() > budget.n_edge):
            i = int(np.argmax((nn + 1 > budget.n_node) | (ne > budget.n_edge)))
            raise DataError(
                f"{ev.source}: event id {ev.ids[positions[i]]} ({nn[i]} nodes, {ne[i]} edges) "
                f"exceeds the per-example budget {budget}"
            )
        f, g = ev.n_features, ev.n_globals
        nodes = np.zeros((size, budget.n_node, f), np.float32)
        slot = np.repeat(np.arange(b), nn)
        rank = np.arange(nn.sum()) - np.repeat(np.concatenate([[0], np.cumsum(nn)[:-1]]), nn)
        nodes[slot, rank] = ev.nodes[_ragged_rows(ev.offsets, positions)]

        pad_node = np.zeros(size, np.int32)
        pad_node[:b] = nn  # first padding node of each example
        senders = np.repeat(pad_node[:, None], budget.n_edge, axis=1)
        receivers = senders.copy()
        eslot = np.repeat(np.arange(b), ne)
        erank = np.arange(ne.sum()) - np.repeat(np.concatenate([[0], np.cumsum(ne)[:-1]]), ne)
        erows = _ragged_rows(self.edge_offsets, positions)
        senders[eslot, erank] = self.senders[erows]
        receivers[eslot, erank] = self.receivers[erows]

        n_node = np.zeros((size, 2), np.int32)
        n_edge = np.zeros((size, 2), np.int32)
        n_node[:b, 0], n_edge[:b, 0] = nn, ne
        n_node[:, 1] = budget.n_node - n_node[:, 0]
        n_edge[:, 1] = budget.n_edge - n_edge[:, 0]
        globals_ = np.zeros((size, 2, g), np.float32)
        globals_[:b, 0] = ev.globals[positions]
        labels = np.zeros((size, 2), np.float32)
        labels[:b, 0] = ev.labels[positions]
        mask = np.zeros((size, 2), bool)
        mask[:b, 0] = True
        graphs = jraph.GraphsTuple(
            nodes=nodes,
            edges=None,
            senders=senders,
            receivers=receivers,
            globals=globals_,
            n_node=n_node,
            n_edge=n_edge,
        )
        return Batch(graphs, labels, mask)

    def select(self, positions: np.ndarray) -> GraphSet:
        positions = np.asarray(positions, np.int64)
        rows = _ragged_rows(self.edge_offsets, positions)
        ne = self.n_edge[positions]
        return GraphSet(
            events=self.events.select(positions),
            senders=self.senders[rows],
            receivers=self.receivers[rows],
            edge_offsets=np.concatenate([[0], np.cumsum(ne)]).astype(np.int64),
            edges=self.edges,
        )


def _ragged_rows(offsets: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Row indices of the items of the given ragged entries, in order (vectorised)."""
    counts = offsets[positions + 1] - offsets[positions]
    starts = np.repeat(offsets[positions], counts)
    rank = np.arange(counts.sum()) - np.repeat(
        np.concatenate([[0], np.cumsum(counts)[:-1]]), counts
    )
    return (starts + rank).astype(np.int64)


def build_graphs(events: EventSet, edges: str = "fully_connected") -> GraphSet:
    """Adds edges to every event: ``"fully_connected"`` (all ordered pairs, no self loops) or
    ``"knn:K"`` (K nearest neighbours in (eta, phi), needs ``events.eta_phi``)."""
    counts = events.n_node
    if edges == "fully_connected":
        parts = [fully_connected_edges(int(n)) for n in counts]
    elif edges.startswith("knn:"):
        k = int(edges.split(":")[1])
        if events.eta_phi is None:
            raise DataError(
                f"{events.source}: kNN edges need (eta, phi) columns; this set has none"
            )
        ie, ip = events.eta_phi
        parts = []
        for i in range(len(events)):
            x = events.event_nodes(i)
            parts.append(knn_edges(x[:, ie].astype(np.float64), x[:, ip].astype(np.float64), k))
    else:
        raise DataError(f"unknown edge construction {edges!r}: use 'fully_connected' or 'knn:K'")
    ne = np.array([len(s) for s, _ in parts], np.int64)
    cat = lambda j: (  # noqa: E731
        np.concatenate([p[j] for p in parts]).astype(np.int32) if parts else np.zeros(0, np.int32)
    )
    return GraphSet(
        events=events,
        senders=cat(0),
        receivers=cat(1),
        edge_offsets=np.concatenate([[0], np.cumsum(ne)]).astype(np.int64),
        edges=edges,
    )


def unstack_example(batch: Batch, i: int) -> Batch:
    """Example ``i`` of a per-example stack as an ordinary (two-graph) batch."""
    return jax.tree_util.tree_map(lambda x: x[i], batch)


def node_graph_index(n_node, total: int):
    """Graph index of every node, ``[total]``, for segment ops (works under jit and vmap)."""
    import jax.numpy as jnp

    return jnp.repeat(jnp.arange(n_node.shape[0]), n_node, total_repeat_length=total)
