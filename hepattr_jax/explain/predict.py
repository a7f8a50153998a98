"""A GNN as a function of the input features of a fixed set of events, compiled once.

Every explanation here asks the same question many times: the model's output on the same events
with some feature columns changed (masked, permuted, a Shapley coalition). The graph structure
never changes, so :class:`BatchedPredictor` pads the events into training batches once
(:meth:`~hepattr_jax.graphs.GraphSet.training_batch` layout, one tight budget for all batches)
and keeps, per batch, the row of every padded node in the flat ``nodes`` array and the event of
every graph. A call then gathers the new features into the padded batches inside one jitted
function that maps the model over the batches (``jax.lax.map``): one compilation per event set,
no Python loop over events or batches, and padding (nodes, edges and graphs) never reaches an
output because only real graphs are read back.

The estimators in this package take any ``predict(events) -> logits [N]`` callable, so they are
tested on closed-form NumPy functions; :class:`BatchedPredictor` is the GNN one.

Layer activations (:meth:`BatchedPredictor.activations`) are read with
``flax.linen.intercept_methods`` around every ``nn.Dense`` call, so no model needs changing:

* a hidden Dense layer's activation is ``relu`` of its output (every hidden Dense of the three
  models is followed by a ReLU; for ``gcn`` this is the ReLU of the node transform *before* the
  graph aggregation). Node- and edge-level activations are averaged over the event's nodes
  (edges) to one vector per event; an event without edges gets zeros for edge layers.
* ``readout_in``: the input of the first graph-level Dense, i.e. the pooled graph representation
  the readout sees (the event-level inputs appended to it by ``use_globals`` are dropped). This is
  the per-event latent space.
The final one-unit Dense (the logit) is not a layer here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import DataError
from hepattr_jax.graph_ops import recording_knn_rows
from hepattr_jax.graphs import Budget, GraphSet, node_graph_index

Predictor = Callable[[EventSet], np.ndarray]

LATENT = "readout_in"


class _Packed(NamedTuple):
    """Static structure of ``nb`` padded batches (leading axis ``nb`` on every field).

    Attributes:
      senders, receivers: int32 ``[nb, n_edge]``.
      n_node, n_edge: int32 ``[nb, n_graph]``.
      node_rows: int32 ``[nb, n_node]``: row of each padded node in the flat ``nodes`` array;
        padding nodes point at row ``sum_i n_i`` (a zero row appended in the jitted function).
      graph_rows: int32 ``[nb, n_graph]``: event position of each graph; padding graphs point
        at ``N`` (a zero row of event-level inputs).
    """

    senders: np.ndarray
    receivers: np.ndarray
    n_node: np.ndarray
    n_edge: np.ndarray
    node_rows: np.ndarray
    graph_rows: np.ndarray


def _round_up(x: int, m: int = 8) -> int:
    return -(-x // m) * m


def _tight_budget(gs: GraphSet, chunks: list[np.ndarray]) -> Budget:
    """The smallest budget (rounded up to 8) holding every chunk, with the node, edge and graph
    sizes all different (so an activation's leading axis tells its level)."""
    nn_ = gs.events.n_node
    ne = gs.n_edge
    n_graph = max(len(c) for c in chunks) + 1
    n_node = _round_up(max(int(nn_[c].sum()) for c in chunks) + 1)
    n_edge = _round_up(max(int(ne[c].sum()) for c in chunks) + 1)
    while n_node == n_graph:
        n_node += 8
    while n_edge in (n_node, n_graph):
        n_edge += 8
    return Budget(n_node, n_edge, n_graph)


def _pack(gs: GraphSet, batch_size: int) -> tuple[_Packed, np.ndarray, Budget]:
    n = len(gs)
    if n == 0:
        raise DataError(f"{gs.events.source}: no events to explain")
    chunks = [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    budget = _tight_budget(gs, chunks)
    offsets = gs.events.offsets
    total = int(offsets[-1])
    fields: dict[str, list[np.ndarray]] = {k: [] for k in _Packed._fields}
    masks = []
    for c in chunks:
        b = gs.training_batch(c, budget)
        g = b.graphs
        rows = np.full(budget.n_node, total, np.int32)
        counts = np.diff(offsets)[c]
        real = np.repeat(offsets[c], counts) + (
            np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        rows[: len(real)] = real
        grows = np.full(budget.n_graph, n, np.int32)
        grows[: len(c)] = c
        for k, v in (
            ("senders", g.senders),
            ("receivers", g.receivers),
            ("n_node", g.n_node),
            ("n_edge", g.n_edge),
            ("node_rows", rows),
            ("graph_rows", grows),
        ):
            fields[k].append(np.asarray(v, np.int32))
        masks.append(np.asarray(b.graph_mask))
    packed = _Packed(**{k: np.stack(v) for k, v in fields.items()})
    return packed, np.stack(masks), budget


def _graphs(nodes_ext, globals_ext, p: _Packed) -> jraph.GraphsTuple:
    """One padded batch (no leading axis) with features gathered from the flat arrays."""
    return jraph.GraphsTuple(
        nodes=nodes_ext[p.node_rows],
        edges=None,
        senders=p.senders,
        receivers=p.receivers,
        globals=globals_ext[p.graph_rows],
        n_node=p.n_node,
        n_edge=p.n_edge,
    )


def _extend(nodes, globals_):
    """Appends the zero row that padding nodes and padding graphs gather."""
    nodes_ext = jnp.concatenate([nodes, jnp.zeros((1, nodes.shape[1]), nodes.dtype)])
    globals_ext = jnp.concatenate([globals_, jnp.zeros((1, globals_.shape[1]), globals_.dtype)])
    return nodes_ext, globals_ext


@dataclasses.dataclass(eq=False)
class BatchedPredictor:
    """Logits and layer activations of a model on the events of ``gs``, for any feature values.

    ``predictor(events)`` takes an EventSet with the structure of ``gs.events`` (same
    ``offsets``; e.g. a masked or permuted copy) and returns float64 logits ``[N]`` in stored
    order. Both methods compile once (per predictor) and map over padded batches of
    ``batch_size`` events inside ``jit``.

    Attributes:
      model: the flax module (``model.apply(params, graphs)`` gives ``[n_graph]`` logits).
      params: its parameters.
      gs: the events with their edges.
      batch_size: events per padded batch.
    """

    model: object
    params: object
    gs: GraphSet
    batch_size: int = 512

    def __post_init__(self):
        self._packed, self._mask, self.budget = _pack(self.gs, self.batch_size)
        self._dev = jax.tree_util.tree_map(jnp.asarray, self._packed)
        self._layer_names: list[str] = []
        apply_fn = self.model.apply

        def logits(params, nodes, globals_, packed):
            nodes_ext, globals_ext = _extend(nodes, globals_)
            return jax.lax.map(
                lambda p: apply_fn(params, _graphs(nodes_ext, globals_ext, p)), packed
            )

        self._logits = jax.jit(logits)
        self._acts = jax.jit(self._activations_fn())

    @property
    def events(self) -> EventSet:
        return self.gs.events

    def _check(self, events: EventSet) -> None:
        ref = self.gs.events
        if events.offsets.shape != ref.offsets.shape or not np.array_equal(
            events.offsets, ref.offsets
        ):
            raise DataError(
                f"{events.source}: events do not have the structure the predictor was built for "
                f"({len(events)} vs {len(ref)} events or different node counts)"
            )
        if events.nodes.shape[1] != ref.nodes.shape[1] or events.globals.shape != ref.globals.shape:
            raise DataError(f"{events.source}: feature columns differ from the predictor's")

    def _inputs(self, events: EventSet | None) -> tuple:
        """``(params, nodes, globals, packed)`` for the jitted functions, after the checks."""
        events = self.gs.events if events is None else events
        self._check(events)
        nodes = jnp.asarray(events.nodes, jnp.float32)
        return self.params, nodes, jnp.asarray(events.globals, jnp.float32), self._dev

    def __call__(self, events: EventSet | None = None) -> np.ndarray:
        out = self._logits(*self._inputs(events))
        return np.asarray(out)[self._mask].astype(np.float64)

    # ----------------------------------------------------------------- any per-batch function
    def map_batches(self, fn: Callable) -> Callable:
        """``fn(params, graphs, valid) -> pytree`` on every padded batch, inside one ``jit``.

        ``graphs`` is one padded batch (the layout of :meth:`GraphSet.training_batch`) and
        ``valid`` bool ``[n_graph]`` marks its real graphs. Returns ``run(events=None)`` giving
        the outputs stacked over batches (leading axis ``nb``, device arrays); read them back per
        event with :meth:`per_event` or per node with :meth:`per_node`. Compiles once.
        """
        n = len(self.gs)

        def run(params, nodes, globals_, packed):
            nodes_ext, globals_ext = _extend(nodes, globals_)
            return jax.lax.map(
                lambda p: fn(params, _graphs(nodes_ext, globals_ext, p), p.graph_rows < n), packed
            )

        jitted = jax.jit(run)
        return lambda events=None: jitted(*self._inputs(events))

    def per_event(self, out) -> np.ndarray:
        """``[nb, n_graph, ...]`` batch outputs -> ``[N, ...]`` in stored event order."""
        return np.asarray(out)[self._mask]

    def per_node(self, out) -> np.ndarray:
        """``[nb, n_node, ...]`` batch outputs -> ``[sum_i n_i, ...]`` rows of ``events.nodes``."""
        out = np.asarray(out)
        rows = self._packed.node_rows
        real = rows < len(self.gs.events.nodes)
        flat = np.zeros((len(self.gs.events.nodes),) + out.shape[2:], out.dtype)
        flat[rows[real]] = out[real]
        return flat

    # ----------------------------------------------------------------- activations
    def _activations_fn(self):
        model, budget = self.model, self.budget
        names = self._layer_names
        drop_globals = bool(getattr(model, "use_globals", False)) and self.gs.events.n_globals

        def one_batch(params, graphs):
            records: list[tuple[str, jax.Array, jax.Array]] = []

            def interceptor(next_fun, args, kwargs, context):
                out = next_fun(*args, **kwargs)
                if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                    path = "/".join(str(s) for s in context.module.scope.path)
                    records.append((path, args[0], out))
                return out

            with nn.intercept_methods(interceptor), recording_knn_rows() as knn_rows:
                model.apply(params, graphs)
            n_graph = graphs.n_node.shape[0]
            node_gidx = node_graph_index(graphs.n_node, budget.n_node)
            edge_gidx = node_graph_index(graphs.n_edge, budget.n_edge)
            out, seen = [], []
            latent_done = False
            for path, x, y in records:
                lead = y.shape[0]
                if lead == n_graph and not latent_done:
                    z = x[:, : x.shape[1] - graphs.globals.shape[1]] if drop_globals else x
                    out.append(z)
                    seen.append(LATENT)
                    latent_done = True
                if y.shape[-1] == 1 and lead == n_graph:
                    continue  # the logit layer
                a = jax.nn.relu(y)
                slots = lead in knn_rows  # a dynamic kNN's neighbour slots (node-major)
                if slots and lead in (n_graph, budget.n_node, budget.n_edge):
                    raise DataError(
                        f"explain: layer {path} has {lead} rows, both a dynamic kNN's neighbour "
                        f"slots and the batch's graphs ({n_graph}), nodes ({budget.n_node}) or "
                        f"edges ({budget.n_edge}); its rows cannot be told apart"
                    )
                if lead == budget.n_node:
                    a = jraph.segment_mean(a, node_gidx, n_graph)
                elif lead == budget.n_edge:
                    a = jraph.segment_mean(a, edge_gidx, n_graph)
                elif slots:
                    a = _knn_rows_mean(a, lead // budget.n_node, graphs.n_node, node_gidx)
                elif lead != n_graph:
                    raise DataError(
                        f"explain: layer {path} has {lead} rows in a batch of {n_graph} graphs, "
                        f"{budget.n_node} nodes and {budget.n_edge} edges; only per-graph, "
                        "per-node, per-edge and per-neighbour-slot rows can be averaged per event"
                    )
                out.append(a)
                seen.append(path)
            if not names:
                names.extend(seen)
            return out

        def acts(params, nodes, globals_, packed):
            nodes_ext, globals_ext = _extend(nodes, globals_)
            return jax.lax.map(
                lambda p: one_batch(params, _graphs(nodes_ext, globals_ext, p)), packed
            )

        return acts

    def activations(self, events: EventSet | None = None) -> dict[str, np.ndarray]:
        """Per-event activations of every layer, ``{layer: float32 [N, D]}`` in call order
        (``readout_in`` is the pooled latent; see the module docstring)."""
        out = self._acts(*self._inputs(events))
        return {
            name: np.asarray(a)[self._mask] for name, a in zip(self._layer_names, out, strict=True)
        }


def _knn_rows_mean(a: jax.Array, kk: int, n_node: jax.Array, node_gidx: jax.Array) -> jax.Array:
    """Per-graph mean of the rows of a dynamic kNN edge set (:meth:`graph_ops.SegmentOps.knn`:
    ``kk`` slots per node, node-major, a node's valid neighbours first): ``[n * kk, D] ->
    [n_graph, D]`` over the valid slots only, so the value does not depend on the batch (a node
    of a graph of ``m`` nodes has ``min(kk, m - 1)`` valid slots)."""
    n_graph = n_node.shape[0]
    size = n_node[node_gidx]  # nodes in each node's graph
    valid = (jnp.arange(kk)[None, :] < (size - 1)[:, None]).reshape(-1).astype(a.dtype)
    g = jnp.repeat(node_gidx, kk)
    total = jraph.segment_sum(a * valid[:, None], g, n_graph)
    count = jraph.segment_sum(valid, g, n_graph)
    return total / jnp.maximum(count, 1.0)[:, None]


def bce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-event binary cross-entropy of logits (numerically stable, float64)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return np.exp(-np.logaddexp(0.0, -z))
