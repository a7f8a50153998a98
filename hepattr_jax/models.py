"""GNN classifiers over padded ``jraph.GraphsTuple`` batches (flax.linen), chosen by name.

Every model maps a (padded) GraphsTuple to one logit per graph, ``[n_graph]``. Padding graphs get
finite logits (never NaN/inf), so masking them out with ``jnp.where`` also keeps their gradient
exactly zero. Event-level inputs (``graphs.globals``, ``[n_graph, G]``) are concatenated to the
pooled readout when ``use_globals`` is true.

Models:
  * ``edgeconv``: the ref-edgeconv model of shared/spec/benchmark-workload.md (46,081 parameters
    at its defaults with 7 node features and no globals). EdgeConv (Wang et al., arXiv 1801.07829)
    message ``m_ij = MLP([h_i, h_j - h_i])``, mean over incoming edges, residual update.
  * ``interaction``: an interaction network (Battaglia et al., arXiv 1612.00222) built from
    ``jraph.GraphNetwork``: edge MLP on ``[e_ij, h_j, h_i]``, node MLP on ``[h_i, sum_j e_ij]``.
  * ``gcn``: a graph-convolution stack (Kipf & Welling, arXiv 1609.02907; symmetric normalisation
    with self loops) with mean pooling and a dense head, as in the GNN-IRST paper
    (arXiv 2407.14859).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import node_graph_index


def _pool(h: jax.Array, graphs: jraph.GraphsTuple, kind: Sequence[str]) -> jax.Array:
    """Per-graph pooling of node features ``h [n_node, D]`` -> ``[n_graph, D * len(kind)]``.

    ``max`` of a graph without nodes (empty padding graphs) is 0 rather than -inf, so padding
    logits stay finite and their masked-out gradients stay exactly zero.
    """
    n_total = h.shape[0]
    n_graph = graphs.n_node.shape[0]
    gidx = node_graph_index(graphs.n_node, n_total)
    out = []
    for k in kind:
        if k == "mean":
            out.append(jraph.segment_mean(h, gidx, n_graph))
        elif k == "max":
            mx = jraph.segment_max(h, gidx, n_graph)
            out.append(jnp.where(graphs.n_node[:, None] > 0, mx, 0.0))
        elif k == "sum":
            out.append(jraph.segment_sum(h, gidx, n_graph))
        else:
            raise ConfigError(f"unknown pooling {k!r}")
    return jnp.concatenate(out, axis=-1)


def _readout_inputs(pooled: jax.Array, graphs: jraph.GraphsTuple, use_globals: bool) -> jax.Array:
    if use_globals:
        return jnp.concatenate([pooled, graphs.globals], axis=-1)
    return pooled


class EdgeConvNet(nn.Module):
    """Encoder Dense(h)+ReLU; ``n_blocks`` residual EdgeConv blocks; mean+max readout MLP."""

    hidden: int = 64
    n_blocks: int = 3
    readout_hidden: int = 64
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs: jraph.GraphsTuple) -> jax.Array:
        n_total = graphs.nodes.shape[0]
        h = nn.relu(nn.Dense(self.hidden, name="encoder")(graphs.nodes))
        for b in range(self.n_blocks):
            h_i = h[graphs.receivers]
            h_j = h[graphs.senders]
            m = jnp.concatenate([h_i, h_j - h_i], axis=-1)
            m = nn.relu(nn.Dense(self.hidden, name=f"edge{b}_0")(m))
            m = nn.relu(nn.Dense(self.hidden, name=f"edge{b}_1")(m))
            h = h + jraph.segment_mean(m, graphs.receivers, n_total)
        r = _readout_inputs(_pool(h, graphs, ("mean", "max")), graphs, self.use_globals)
        r = nn.relu(nn.Dense(self.readout_hidden, name="readout_0")(r))
        return nn.Dense(1, name="readout_1")(r)[:, 0]


class InteractionNet(nn.Module):
    """Interaction network via ``jraph.GraphNetwork``, learned edge states; mean+max readout."""

    hidden: int = 64
    n_blocks: int = 2
    readout_hidden: int = 64
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs: jraph.GraphsTuple) -> jax.Array:
        n_edge_total = graphs.senders.shape[0]
        h = nn.relu(nn.Dense(self.hidden, name="encoder")(graphs.nodes))
        g = graphs._replace(nodes=h, edges=jnp.zeros((n_edge_total, 0), h.dtype))
        for b in range(self.n_blocks):
            edge_mlp = _MLP((self.hidden, self.hidden), name=f"edge{b}")
            node_mlp = _MLP((self.hidden, self.hidden), name=f"node{b}")

            def update_edge(e, s, r, _glob, edge_mlp=edge_mlp):
                return edge_mlp(jnp.concatenate([e, s, r], axis=-1))

            def update_node(n, _sent, recv, _glob, node_mlp=node_mlp):
                return n + node_mlp(jnp.concatenate([n, recv], axis=-1))

            net = jraph.GraphNetwork(
                update_edge_fn=update_edge,
                update_node_fn=update_node,
                aggregate_edges_for_nodes_fn=jraph.segment_mean,
            )
            g = net(g)
        r = _readout_inputs(_pool(g.nodes, graphs, ("mean", "max")), graphs, self.use_globals)
        r = nn.relu(nn.Dense(self.readout_hidden, name="readout_0")(r))
        return nn.Dense(1, name="readout_1")(r)[:, 0]


class GCNNet(nn.Module):
    """GCN layers ``h' = ReLU(W sum_j h_j / sqrt(d_i d_j))`` (with self loops); mean pool; MLP."""

    hidden: int = 64
    n_layers: int = 3
    readout_hidden: int = 64
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs: jraph.GraphsTuple) -> jax.Array:
        n_total = graphs.nodes.shape[0]
        # Padding edges touch only padding nodes; count real in-degree + 1 (self loop).
        h_dtype = graphs.nodes.dtype
        ones = jnp.ones(graphs.receivers.shape, h_dtype)
        deg = jraph.segment_sum(ones, graphs.receivers, n_total) + 1.0
        inv_sqrt = jax.lax.rsqrt(deg)
        h = graphs.nodes
        for layer in range(self.n_layers):
            h = nn.Dense(self.hidden, name=f"gcn{layer}")(h)
            msg = (h * inv_sqrt[:, None])[graphs.senders]
            agg = jraph.segment_sum(msg, graphs.receivers, n_total) + h * inv_sqrt[:, None]
            h = nn.relu(agg * inv_sqrt[:, None]).astype(h_dtype)
        r = _readout_inputs(_pool(h, graphs, ("mean",)), graphs, self.use_globals)
        r = nn.relu(nn.Dense(self.readout_hidden, name="readout_0")(r))
        return nn.Dense(1, name="readout_1")(r)[:, 0]


class _MLP(nn.Module):
    sizes: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, s in enumerate(self.sizes):
            x = nn.relu(nn.Dense(s, name=f"dense{i}")(x))
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
