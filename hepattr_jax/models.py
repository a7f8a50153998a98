"""GNN classifiers (flax.linen), chosen by name, each written once against :mod:`graph_ops`.

Every model maps a padded ``jraph.GraphsTuple`` (a training batch) to one logit per graph,
``[n_graph]``, and a :class:`~hepattr_jax.graph_ops.NeighbourGraph` (one event in the per-event
neighbour-list layout the attribution kernels batch with ``vmap``) to ``[1]``: the same code,
the backend chosen by the input's type. Padding graphs get
finite logits (never NaN/inf), so masking them out with ``jnp.where`` also keeps their gradient
exactly zero. Event-level inputs (``graphs.globals``, ``[n_graph, G]``) are concatenated to the
pooled readout when ``use_globals`` is true.

Models:
  * ``edgeconv``: the ref-edgeconv model of shared/spec/benchmark-workload.md (46,081 parameters
    at its defaults with 7 node features and no globals). EdgeConv (Wang et al., arXiv 1801.07829)
    message ``m_ij = MLP([h_i, h_j - h_i])``, mean over incoming edges, residual update.
  * ``interaction``: an interaction network (Battaglia et al., arXiv 1612.00222): edge MLP on
    ``[e_ij, h_j, h_i]``, node MLP on ``[h_i, mean_j e_ij]``.
  * ``gcn``: a graph-convolution stack (Kipf & Welling, arXiv 1609.02907; symmetric normalisation
    with self loops) with mean pooling and a dense head, as in the GNN-IRST paper
    (arXiv 2407.14859).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hepattr_jax.errors import ConfigError
from hepattr_jax.graph_ops import edge_concat, ops_for


def _readout_inputs(pooled: jax.Array, ops, use_globals: bool) -> jax.Array:
    if use_globals:
        return jnp.concatenate([pooled, ops.graph_globals()], axis=-1)
    return pooled


def _factorised_edge_layer(dense: nn.Dense, h: jax.Array, ops):
    """``dense([h_i, h_j - h_i])`` on every edge, computed from per-node products.

    ``[h_i, h_j - h_i] W + b = (h_i (W_a - W_b) + b) + h_j W_b`` with ``W = [W_a; W_b]``: the
    layer is called on the ``n`` per-node rows ``[h, -h]`` (receiver term, bias included) and its
    kernel's lower block multiplies ``h`` once more (sender term), so ``3 n H^2`` multiply-adds
    replace ``2 E H^2`` on the ``E`` edges (``E = n k`` for kNN, ``n (n - 1)`` fully connected),
    and the edge value is a gather and an add. Exact. The receiver term is an ordinary
    ``nn.Dense`` call; the sender term uses the same layer's parameters directly (calling the
    layer on ``[0, h]`` instead would cost ``n H^2`` more multiply-adds by zero, measured 15-20 %
    slower end to end on ref-edgeconv), so a method that intercepts ``nn.Dense`` calls sees the
    receiver rows only and must add ``h_j^T delta`` to the kernel's lower block itself.
    """
    per_recv = dense(jnp.concatenate([h, -h], -1))
    w_send = dense.variables["params"]["kernel"][h.shape[-1] :]
    return ops.receivers_of(per_recv) + ops.senders_of(h @ w_send)


class EdgeConvNet(nn.Module):
    """Encoder Dense(h)+ReLU; ``n_blocks`` residual EdgeConv blocks; mean+max readout MLP.

    The first layer of each edge MLP is factorised per node (:func:`_factorised_edge_layer`).
    """

    graph_ops = True  # written against graph_ops: runs on NeighbourGraph events too

    hidden: int = 64
    n_blocks: int = 3
    readout_hidden: int = 64
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs) -> jax.Array:
        ops = ops_for(graphs)
        h = nn.relu(nn.Dense(self.hidden, name="encoder")(ops.nodes))
        for b in range(self.n_blocks):
            z = _factorised_edge_layer(nn.Dense(self.hidden, name=f"edge{b}_0"), h, ops)
            m = nn.relu(nn.Dense(self.hidden, name=f"edge{b}_1")(nn.relu(z)))
            h = h + ops.aggregate(m, "mean")
        r = _readout_inputs(ops.pool(h, ("mean", "max")), ops, self.use_globals)
        r = nn.relu(nn.Dense(self.readout_hidden, name="readout_0")(r))
        return nn.Dense(1, name="readout_1")(r)[:, 0]


class InteractionNet(nn.Module):
    """Interaction network (Battaglia et al.): learned edge states, mean aggregation, residual
    node update, mean+max readout.

    Block ``b``: ``e_ij <- MLP_e([e_ij, h_j, h_i])`` (``e`` is empty before the first block),
    ``h_i <- h_i + MLP_n([h_i, mean_j e_ij])``. The first block's first edge layer is factorised
    per node (its input has no edge part). Parameter names are those of the earlier
    ``jraph.GraphNetwork`` formulation (``edge{b}/dense{i}``, ``node{b}/dense{i}``).
    """

    graph_ops = True  # written against graph_ops: runs on NeighbourGraph events too

    hidden: int = 64
    n_blocks: int = 2
    readout_hidden: int = 64
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs) -> jax.Array:
        ops = ops_for(graphs)
        h = nn.relu(nn.Dense(self.hidden, name="encoder")(ops.nodes))
        e = None
        for b in range(self.n_blocks):
            edge_mlp = _MLP((self.hidden, self.hidden), name=f"edge{b}")
            node_mlp = _MLP((self.hidden, self.hidden), name=f"node{b}")
            if e is None:
                e = edge_mlp(None, first=(h, ops))
            else:
                e = edge_mlp(edge_concat(ops, [e, ops.senders_of(h), ops.receivers_of(h)]))
            h = h + node_mlp(jnp.concatenate([h, ops.aggregate(e, "mean")], axis=-1))
        r = _readout_inputs(ops.pool(h, ("mean", "max")), ops, self.use_globals)
        r = nn.relu(nn.Dense(self.readout_hidden, name="readout_0")(r))
        return nn.Dense(1, name="readout_1")(r)[:, 0]


class GCNNet(nn.Module):
    """GCN layers ``h' = ReLU(W sum_j h_j / sqrt(d_i d_j))`` (with self loops); mean pool; MLP."""

    graph_ops = True  # written against graph_ops: runs on NeighbourGraph events too

    hidden: int = 64
    n_layers: int = 3
    readout_hidden: int = 64
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs) -> jax.Array:
        ops = ops_for(graphs)
        # Real in-degree + 1 (self loop); padding edges land on padding nodes only.
        inv_sqrt = jax.lax.rsqrt(ops.in_degree() + 1.0)[:, None]
        h = ops.nodes
        for layer in range(self.n_layers):
            h = nn.Dense(self.hidden, name=f"gcn{layer}")(h)
            hs = h * inv_sqrt
            agg = ops.aggregate(ops.senders_of(hs), "sum") + hs
            h = nn.relu(agg * inv_sqrt)
        r = _readout_inputs(ops.pool(h, ("mean",)), ops, self.use_globals)
        r = nn.relu(nn.Dense(self.readout_hidden, name="readout_0")(r))
        return nn.Dense(1, name="readout_1")(r)[:, 0]


class _MLP(nn.Module):
    """Dense+ReLU stack. ``first=(h, ops)`` feeds it ``[h_j, h_i]`` on every edge, with the first
    layer factorised per node (``[h_j, h_i] W + b = h_j W_s + (h_i W_r + b)``)."""

    sizes: Sequence[int]

    @nn.compact
    def __call__(self, x, first=None):
        for i, s in enumerate(self.sizes):
            dense = nn.Dense(s, name=f"dense{i}")
            if i == 0 and first is not None:
                h, ops = first
                n = h.shape[0]
                zeros = jnp.zeros_like(h)
                rows = jnp.concatenate(
                    [jnp.concatenate([h, zeros], -1), jnp.concatenate([zeros, h], -1)], 0
                )
                y = dense(rows)
                per_send, per_recv = y[:n] - dense.variables["params"]["bias"], y[n:]
                x = ops.senders_of(per_send) + ops.receivers_of(per_recv)
            else:
                x = dense(x)
            x = nn.relu(x)
        return x


MODELS = {"edgeconv": EdgeConvNet, "interaction": InteractionNet, "gcn": GCNNet}


def make_model(name: str, **kwargs) -> nn.Module:
    """The model called ``name`` (``edgeconv``, ``interaction``, ``gcn``) with its settings."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: {e}") from None


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
