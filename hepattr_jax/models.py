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
  * ``particlenet``: ParticleNet-like (Qu & Gouskos, arXiv 1902.08570; DGCNN, arXiv 1801.07829):
    EdgeConv blocks, the first on the input graph (build it with ``"knn:16"`` for ParticleNet's
    (eta, phi) neighbours), later ones on the ``k`` nearest neighbours in the current features
    (:func:`~hepattr_jax.graph_ops.knn`), shortcut, global average pooling, dense head.
  * ``dynedge``: DynEdge-like (GraphNeT, arXiv 2209.03042): EdgeConv layers (sum aggregation)
    with kNN recomputed on each layer's output, skip concatenation of all layer outputs,
    min/max/sum/mean pooling, MLP head.
  * ``part``: a small particle transformer (Qu et al., arXiv 2202.03772) as a GNN: multi-head
    self-attention along the input graph's edges plus self loops (build the graph
    ``"fully_connected"`` for attention over all constituents), with a pairwise attention bias
    from (delta eta, delta phi, delta R), class-attention (or mean) pooling.

Batch normalisation and dropout of the published models are left out: a per-event gradient
needs a model whose output for one event does not depend on the other events of its batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hepattr_jax.capture import kernel_rows
from hepattr_jax.errors import ConfigError
from hepattr_jax.graph_ops import AnyArray, edge_concat, knn, ops_for


def _readout_inputs(pooled: jax.Array, ops, use_globals: bool) -> jax.Array:
    if use_globals:
        return jnp.concatenate([pooled, ops.graph_globals()], axis=-1)
    return pooled


def _factorised_edge_layer(dense: nn.Dense, h: AnyArray, ops):
    """``dense([h_i, h_j - h_i])`` on every edge, computed from per-node products.

    ``[h_i, h_j - h_i] W + b = (h_i (W_a - W_b) + b) + h_j W_b`` with ``W = [W_a; W_b]``: the
    layer is called on the ``n`` per-node rows ``[h, -h]`` (receiver term, bias included) and its
    kernel's lower block multiplies ``h`` once more (sender term), so ``3 n H^2`` multiply-adds
    replace ``2 E H^2`` on the ``E`` edges (``E = n k`` for kNN, ``n (n - 1)`` fully connected),
    and the edge value is a gather and an add. Exact. The receiver term is an ordinary
    ``nn.Dense`` call; the sender term uses the same layer's parameters directly (calling the
    layer on ``[0, h]`` instead would cost ``n H^2`` more multiply-adds by zero, measured 15-20 %
    slower end to end on ref-edgeconv), through :func:`~hepattr_jax.capture.kernel_rows`, which
    per-layer capture sees as a second site of the layer (rows ``H:2H``).
    """
    per_recv = dense(jnp.concatenate([h, -h], -1))
    return ops.receivers_of(per_recv) + ops.senders_of(kernel_rows(dense, h, h.shape[-1]))


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


class ParticleNet(nn.Module):
    """ParticleNet-like classifier (arXiv 1902.08570), default size near ParticleNet-Lite.

    Block ``b`` with channels ``(c_1, .., c_L)``: edges ``E_b`` (the input graph for ``b = 0``,
    else the ``k`` nearest neighbours of each node in ``h``), ``m_ij = MLP([h_i, h_j - h_i])``
    (``L`` Dense+ReLU layers, the first factorised per node), ``h_i <- ReLU(mean_j m_ij +
    W_s h_i)``. Readout: global average pooling, Dense(``head``)+ReLU, Dense(1).
    """

    graph_ops = True  # written against graph_ops: runs on NeighbourGraph events too

    blocks: tuple[tuple[int, ...], ...] = ((32, 32, 32), (64, 64, 64))
    k: int = 16
    head: int = 128
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs) -> jax.Array:
        ops = ops_for(graphs)
        h = ops.nodes
        for b, channels in enumerate(self.blocks):
            bops = ops if b == 0 else knn(ops, h, self.k)
            z = _factorised_edge_layer(nn.Dense(channels[0], name=f"block{b}_edge0"), h, bops)
            m = nn.relu(z)
            for i, c in enumerate(channels[1:], 1):
                m = nn.relu(nn.Dense(c, name=f"block{b}_edge{i}")(m))
            shortcut = nn.Dense(channels[-1], name=f"block{b}_shortcut")(h)
            h = nn.relu(bops.aggregate(m, "mean") + shortcut)
        r = _readout_inputs(ops.pool(h, ("mean",)), ops, self.use_globals)
        r = nn.relu(nn.Dense(self.head, name="head_0")(r))
        return nn.Dense(1, name="head_1")(r)[:, 0]


class DynEdge(nn.Module):
    """DynEdge-like classifier (GraphNeT, arXiv 2209.03042), narrower than GraphNeT's default.

    Layer ``l``: ``h^(l+1)_i = sum_{j in E_l(i)} MLP_l([h_i, h_j - h_i])`` (LeakyReLU, first
    layer factorised per node) with ``E_0`` the input graph and ``E_l`` the ``k`` nearest
    neighbours in ``h^(l)``; then ``MLP_post([x, h^(1), .., h^(L)])`` per node, min/max/sum/mean
    pooling and an MLP head.
    """

    graph_ops = True  # written against graph_ops: runs on NeighbourGraph events too

    layers: tuple[tuple[int, ...], ...] = ((128, 64),) * 4
    k: int = 8
    post: tuple[int, ...] = (128, 64)
    readout: tuple[int, ...] = (64,)
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs) -> jax.Array:
        ops = ops_for(graphs)
        act = nn.leaky_relu
        h = ops.nodes
        skips = [h]
        lops = ops
        for layer, sizes in enumerate(self.layers):
            if layer > 0:
                lops = knn(ops, h, self.k)
            m = act(_factorised_edge_layer(nn.Dense(sizes[0], name=f"conv{layer}_0"), h, lops))
            for i, s in enumerate(sizes[1:], 1):
                m = act(nn.Dense(s, name=f"conv{layer}_{i}")(m))
            h = lops.aggregate(m, "sum")
            skips.append(h)
        x = jnp.concatenate(skips, axis=-1)
        for i, s in enumerate(self.post):
            x = act(nn.Dense(s, name=f"post_{i}")(x))
        r = _readout_inputs(ops.pool(x, ("min", "max", "sum", "mean")), ops, self.use_globals)
        for i, s in enumerate(self.readout):
            r = act(nn.Dense(s, name=f"readout_{i}")(r))
        return nn.Dense(1, name=f"readout_{len(self.readout)}")(r)[:, 0]


def _split_heads(x: jax.Array, heads: int) -> jax.Array:
    return x.reshape(x.shape[:-1] + (heads, x.shape[-1] // heads))


def _pair_features(ops, eta_phi: tuple[int, int]) -> jax.Array:
    """``[E, 3]`` (delta eta, delta phi wrapped to [-pi, pi), delta R) of every edge ``j -> i``
    (``x_j - x_i``) from the node columns ``eta_phi``; delta R has a zero-safe square root."""
    ie, ip = eta_phi
    x = ops.nodes
    eta, phi = x[:, ie : ie + 1], x[:, ip : ip + 1]
    deta = ops.senders_of(eta) - ops.receivers_of(eta)
    dphi = jnp.remainder(ops.senders_of(phi) - ops.receivers_of(phi) + jnp.pi, 2 * jnp.pi)
    dphi = dphi - jnp.pi
    d2 = deta**2 + dphi**2
    pos = d2 > 0
    dr = jnp.where(pos, jnp.sqrt(jnp.where(pos, d2, 1.0)), 0.0)
    return edge_concat(ops, [deta, dphi, dr])


class ParticleTransformer(nn.Module):
    """A small particle transformer (ParT, arXiv 2202.03772) over the graph's edges + self loops.

    Embedding MLP; ``n_blocks`` pre-LayerNorm blocks of multi-head attention
    ``a_ij = softmax_j(q_i . k_j / sqrt(d_h) + U_ij)`` over ``j in {i} u N(i)`` (masked
    ``jraph.segment_softmax`` / a masked softmax over neighbour slots) and a GELU MLP; the bias
    ``U_ij`` (one per head, shared by the blocks) is an MLP of (delta eta, delta phi, delta R)
    from node columns ``eta_phi`` (``pair_bias=False``: none). Pooling ``"cls"``: ``n_cls``
    class-attention blocks (CaiT/ParT; a learned token attends to the event's constituents, here
    without itself among the keys), ``"mean"``: average of the final node states. Head:
    LayerNorm, Dense(``head``)+ReLU, Dense(1).
    """

    graph_ops = True  # written against graph_ops: runs on NeighbourGraph events too

    dim: int = 32
    heads: int = 4
    n_blocks: int = 2
    mlp_ratio: int = 2
    pooling: str = "cls"
    n_cls: int = 1
    pair_bias: bool = True
    pair_hidden: int = 16
    eta_phi: tuple[int, int] = (0, 1)
    head: int = 64
    use_globals: bool = False

    @nn.compact
    def __call__(self, graphs) -> jax.Array:
        if self.pooling not in ("cls", "mean"):
            raise ConfigError(f"part: pooling {self.pooling!r}; use 'cls' or 'mean'")
        if self.dim % self.heads:
            raise ConfigError(f"part: dim {self.dim} is not a multiple of heads {self.heads}")
        ops = ops_for(graphs)
        aops = ops.with_self_loops()
        scale = 1.0 / math.sqrt(self.dim // self.heads)
        bias = None
        if self.pair_bias:
            u = nn.gelu(
                nn.Dense(self.pair_hidden, name="pair_0")(_pair_features(aops, self.eta_phi))
            )
            bias = nn.Dense(self.heads, name="pair_1")(u)  # [E, heads]
        x = nn.Dense(self.dim, name="embed_1")(
            nn.gelu(nn.Dense(self.dim, name="embed_0")(ops.nodes))
        )
        for b in range(self.n_blocks):
            y = nn.LayerNorm(name=f"block{b}_ln0")(x)
            q, k, v = (nn.Dense(self.dim, name=f"block{b}_{t}")(y) for t in "qkv")
            z = _split_heads(aops.receivers_of(q) * aops.senders_of(k), self.heads).sum(-1) * scale
            if bias is not None:
                z = z + bias
            w = aops.softmax(z)  # [E, heads]
            ve = _split_heads(aops.senders_of(v), self.heads)
            att = aops.aggregate((w[..., None] * ve).reshape(ve.shape[:-2] + (self.dim,)), "sum")
            x = x + nn.Dense(self.dim, name=f"block{b}_proj")(att)
            x = x + self._mlp(nn.LayerNorm(name=f"block{b}_ln1")(x), f"block{b}_mlp")
        if self.pooling == "mean":
            r = ops.pool(nn.LayerNorm(name="final_ln")(x), ("mean",))
        else:
            cls = self.param("cls_token", nn.initializers.normal(0.02), (self.dim,))
            c = jnp.broadcast_to(cls.astype(x.dtype), (ops.n_graph, self.dim))
            for b in range(self.n_cls):
                y = nn.LayerNorm(name=f"cls{b}_ln_x")(x)
                q = nn.Dense(self.dim, name=f"cls{b}_q")(nn.LayerNorm(name=f"cls{b}_ln_c")(c))
                k = nn.Dense(self.dim, name=f"cls{b}_k")(y)
                v = _split_heads(nn.Dense(self.dim, name=f"cls{b}_v")(y), self.heads)
                z = _split_heads(ops.graph_to_nodes(q) * k, self.heads).sum(-1) * scale
                w = ops.pool_softmax(z)  # [n, heads]
                pooled = ops.pool((w[..., None] * v).reshape(v.shape[:-2] + (self.dim,)), ("sum",))
                c = c + nn.Dense(self.dim, name=f"cls{b}_proj")(pooled)
                c = c + self._mlp(nn.LayerNorm(name=f"cls{b}_ln1")(c), f"cls{b}_mlp")
            r = nn.LayerNorm(name="final_ln")(c)
        r = _readout_inputs(r, ops, self.use_globals)
        r = nn.relu(nn.Dense(self.head, name="head_0")(r))
        return nn.Dense(1, name="head_1")(r)[:, 0]

    def _mlp(self, y: jax.Array, name: str) -> jax.Array:
        y = nn.gelu(nn.Dense(self.mlp_ratio * self.dim, name=f"{name}_0")(y))
        return nn.Dense(self.dim, name=f"{name}_1")(y)


class _MLP(nn.Module):
    """Dense+ReLU stack. ``first=(h, ops)`` feeds it ``[h_j, h_i]`` on every edge, with the first
    layer factorised per node (``[h_j, h_i] W + b = h_j W_s + (h_i W_r + b)``: the layer's call
    sees the node rows ``[0, h]``, the sender term uses ``W_s`` directly)."""

    sizes: Sequence[int]

    @nn.compact
    def __call__(self, x, first=None):
        for i, s in enumerate(self.sizes):
            dense = nn.Dense(s, name=f"dense{i}")
            if i == 0 and first is not None:
                # Receiver term through the layer on the node rows [0, h] (bias included),
                # sender term through its kernel's upper block, as in _factorised_edge_layer.
                h, ops = first
                per_recv = dense(jnp.concatenate([jnp.zeros_like(h), h], -1))
                x = ops.senders_of(kernel_rows(dense, h, 0, h.shape[-1]))
                x = x + ops.receivers_of(per_recv)
            else:
                x = dense(x)
            x = nn.relu(x)
        return x


MODELS = {
    "edgeconv": EdgeConvNet,
    "interaction": InteractionNet,
    "gcn": GCNNet,
    "particlenet": ParticleNet,
    "dynedge": DynEdge,
    "part": ParticleTransformer,
}


def make_model(name: str, **kwargs) -> nn.Module:
    """The model called ``name`` (one of :data:`MODELS`) with its settings."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r}: {e}") from None


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
