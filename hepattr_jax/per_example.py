"""Per-event gradient kernels: one event's loss, ``jax.grad``, batched with ``jax.vmap``.

Two layouts feed the same machinery (each a single-event loss ``loss_one(params, example)``):

* :class:`GraphLayout` (any model, any edges): an event padded alone to the budget of its
  node-count bucket, as a two-graph ``Batch`` (the per-example stack of :mod:`hepattr_jax.graphs`);
  the flax model itself is differentiated.
* :class:`DenseEdgeConvLayout` (``edgeconv`` on fully connected graphs, the GNN-IRST setting and
  the ref-edgeconv workload): the same network written for one event of exactly ``n`` nodes as
  dense ``[n, n, H]`` edge tensors. It uses the *same* flax parameter tree, and two exact
  rewritings: the first EdgeConv layer on ``[h_i, h_j - h_i]`` factorises into per-node products,
  ``[h_i, h_j - h_i] W = h_i (W_a - W_b) + h_j W_b``, which moves ``2 H x H`` multiply-adds from
  each of the ``n(n-1)`` edges to each of the ``n`` nodes; and gather/scatter over edge lists
  becomes a masked sum over the ``n x n`` block. Events are grouped by exact node count, so there
  is no padding and no node mask at all.

Either way events are processed in chunks of fixed size per bucket (the tail of a bucket is padded
with ``valid=False`` slots that contribute exactly zero), so every kernel compiles once per
(bucket, chunk) shape and memory is bounded by the chunk size whatever the data-set size.

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

from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import Batch, GraphSet
from hepattr_jax.losses import bce_with_logits, example_loss

Params = Any


# --------------------------------------------------------------------- layouts
class DenseExample(NamedTuple):
    """One event of exactly ``n`` nodes (a chunk adds a leading axis ``C``).

    Attributes:
      nodes: float32 ``[n, F]``.
      globals: float32 ``[G]`` event-level inputs.
      label: float32 ``[]``.
      valid: bool ``[]``; False for the filler slots of a chunk's tail.
    """

    nodes: jax.Array
    globals: jax.Array
    label: jax.Array
    valid: jax.Array


class Chunk(NamedTuple):
    """``positions`` (int64 ``[c]``, into the GraphSet) of the first ``c`` slots of ``data``."""

    positions: np.ndarray
    data: Any


def _buckets(gs: GraphSet, positions: np.ndarray | None) -> dict[int, np.ndarray]:
    positions = np.arange(len(gs)) if positions is None else np.asarray(positions, np.int64)
    nn = gs.events.n_node[positions]
    return {int(n): positions[nn == n] for n in np.unique(nn)}


@dataclasses.dataclass(frozen=True)
class DenseEdgeConvLayout:
    """Dense single-event EdgeConv (see module doc); needs fully connected graphs."""

    hidden: int = 64
    n_blocks: int = 3
    use_globals: bool = False

    def chunks(self, gs: GraphSet, chunk_size: int, positions=None) -> Iterator[Chunk]:
        """Chunks of events of equal node count, ``chunk_size`` slots each (tail padded)."""
        if gs.edges != "fully_connected":
            raise ConfigError(
                f"the dense EdgeConv kernel needs fully connected graphs, not {gs.edges}"
            )
        ev = gs.events
        for n, pos in _buckets(gs, positions).items():
            for s in range(0, len(pos), chunk_size):
                p = pos[s : s + chunk_size]
                c = len(p)
                rows = ev.offsets[p][:, None] + np.arange(n)[None, :]
                nodes = np.zeros((chunk_size, n, ev.n_features), np.float32)
                nodes[:c] = ev.nodes[rows]
                glob = np.zeros((chunk_size, ev.n_globals), np.float32)
                glob[:c] = ev.globals[p]
                label = np.zeros(chunk_size, np.float32)
                label[:c] = ev.labels[p]
                valid = np.arange(chunk_size) < c
                yield Chunk(p, DenseExample(nodes, glob, label, valid))

    def logit(self, params: Params, ex: DenseExample) -> jax.Array:
        """The EdgeConvNet logit of one event, ``[]`` (equal to the flax model's)."""
        p = params["params"]
        h_dim = self.hidden
        x = ex.nodes
        n = x.shape[0]
        dense = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]  # noqa: E731
        h = jax.nn.relu(dense("encoder", x))
        # Incoming-edge mean over j != i; a single-node event has no edges and aggregates 0.
        off_diag = 1.0 - jnp.eye(n, dtype=x.dtype)
        inv_deg = 1.0 / max(n - 1, 1)
        for b in range(self.n_blocks):
            w0 = p[f"edge{b}_0"]["kernel"]
            w_a, w_b = w0[:h_dim], w0[h_dim:]
            per_recv = h @ (w_a - w_b) + p[f"edge{b}_0"]["bias"]  # [n, H], receiver i
            per_send = h @ w_b  # [n, H], sender j
            z = jax.nn.relu(per_recv[:, None, :] + per_send[None, :, :])  # [i, j, H]
            m = jax.nn.relu(dense(f"edge{b}_1", z))
            h = h + jnp.einsum("ij,ijh->ih", off_diag, m) * inv_deg
        r = jnp.concatenate([h.mean(0), h.max(0)])
        if self.use_globals:
            r = jnp.concatenate([r, ex.globals])
        r = jax.nn.relu(dense("readout_0", r))
        return dense("readout_1", r)[0]

    def loss_one(self, params: Params, ex: DenseExample) -> jax.Array:
        return jnp.where(ex.valid, bce_with_logits(self.logit(params, ex), ex.label), 0.0)

    def margin_one(self, params: Params, ex: DenseExample) -> jax.Array:
        """The logit margin of the event's true class, ``(2y - 1) z`` (0 in filler slots)."""
        return jnp.where(ex.valid, (2.0 * ex.label - 1.0) * self.logit(params, ex), 0.0)


@dataclasses.dataclass(frozen=True)
class GraphLayout:
    """Any flax model over GraphsTuples: each event padded alone to its bucket's budget.

    Buckets round the node count up to a power of two (capped at the set's largest event), so a
    data set of events with 4 to 12 nodes compiles 3 shapes rather than 9, at the cost of some
    padding (which contributes exactly zero). The model is held by value (flax modules hash by
    their settings), so equal layouts share compiled kernels.
    """

    model: Any

    def chunks(self, gs: GraphSet, chunk_size: int, positions=None) -> Iterator[Chunk]:
        n_max = int(gs.events.n_node.max())
        positions = np.arange(len(gs)) if positions is None else np.asarray(positions, np.int64)
        nn = gs.events.n_node[positions]
        rounded = np.minimum(2 ** np.ceil(np.log2(np.maximum(nn, 1))).astype(np.int64), n_max)
        for n in np.unique(rounded):
            pos = positions[rounded == n]
            budget = gs.single_budget(n_node=int(n))
            for s in range(0, len(pos), chunk_size):
                p = pos[s : s + chunk_size]
                yield Chunk(p, gs.example_stack(p, budget, size=chunk_size))

    def loss_one(self, params: Params, ex: Batch) -> jax.Array:
        return example_loss(self.model.apply, params, ex)

    def margin_one(self, params: Params, ex: Batch) -> jax.Array:
        """The logit margin of the event's true class, ``(2y - 1) z`` (0 in empty slots)."""
        z = self.model.apply(params, ex.graphs)
        return jnp.where(ex.graph_mask, (2.0 * ex.labels - 1.0) * z, 0.0).sum()


def layout_for(model, gs: GraphSet, prefer_dense: bool = True):
    """The fastest exact layout for ``model`` on ``gs``: dense EdgeConv where it applies."""
    from hepattr_jax.models import EdgeConvNet

    if (
        prefer_dense
        and isinstance(model, EdgeConvNet)
        and gs.edges == "fully_connected"
        and model.readout_hidden > 0
    ):
        return DenseEdgeConvLayout(model.hidden, model.n_blocks, model.use_globals)
    return GraphLayout(model)


# --------------------------------------------------------------------- kernels
def tree_sq_norm(tree) -> jax.Array:
    return sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(tree))


def flat_grad_one(loss_one: Callable, params: Params, ex) -> jax.Array:
    """``[P]`` gradient of one event's loss, flattened in ``ravel_pytree(params)`` order."""
    return ravel_pytree(jax.grad(loss_one)(params, ex))[0]


@functools.lru_cache(maxsize=32)
def self_influence_kernel(layout) -> Callable:
    """Jitted ``f(params_k [K,...], lr [K], chunk [C,...]) -> [K, C]``: ``lr_k ||grad l||^2``.

    Cached per layout (layouts are hashable values), so repeated calls reuse the compilation.
    """
    loss_one = layout.loss_one

    def one(params, ex):
        return tree_sq_norm(jax.grad(loss_one)(params, ex))

    batched = jax.vmap(one, in_axes=(None, 0))

    @jax.jit
    def f(params_k, lr_k, chunk):
        def body(carry, pk):
            params, lr = pk
            return carry, lr * batched(params, chunk)

        return jax.lax.scan(body, None, (params_k, lr_k))[1]

    return f


@functools.lru_cache(maxsize=32)
def grad_kernel(layout) -> Callable:
    """Jitted ``f(params, chunk [C,...]) -> [C, P]`` flat per-event gradients at one checkpoint."""
    return jax.jit(jax.vmap(functools.partial(flat_grad_one, layout.loss_one), in_axes=(None, 0)))


@functools.lru_cache(maxsize=32)
def stacked_grad_kernel(layout) -> Callable:
    """Jitted ``f(params_k [K,...], chunk [C,...]) -> [K, C, P]`` at every checkpoint."""
    per_event = jax.vmap(functools.partial(flat_grad_one, layout.loss_one), in_axes=(None, 0))
    return jax.jit(jax.vmap(per_event, in_axes=(0, None)))


@functools.lru_cache(maxsize=32)
def batch_grad_kernel(layout) -> Callable:
    """Jitted ordinary gradient of the *summed* loss of a chunk (the overhead-ratio baseline)."""
    loss_one = layout.loss_one

    def total(params, chunk):
        return jax.vmap(loss_one, in_axes=(None, 0))(params, chunk).sum()

    return jax.jit(jax.grad(total))


def stack_params(params_list: list[Params]) -> Params:
    """K parameter trees -> one tree with a leading K axis."""
    return jax.tree_util.tree_map(lambda *x: jnp.stack(x), *params_list)


OUTPUTS = ("loss", "margin")


@functools.lru_cache(maxsize=32)
def projected_grad_kernel(layout, projector, output: str = "loss") -> Callable:
    """Jitted ``f(params_k [K,...], chunk [C,...]) -> (features [K, C, d], values [K, C])``.

    ``values`` is the per-event ``output`` function (``"loss"``: the training loss, TracIn;
    ``"margin"``: the logit margin of the true class, TRAK's model output) and ``features`` its
    gradient projected by the keyed ``projector`` (:mod:`hepattr_jax.projection`), one
    checkpoint at a time. Each block of the projection is generated once per checkpoint and
    chunk and applied to all ``C`` events; only one chunk's gradients exist at once, never the
    data set's.
    """
    from hepattr_jax.projection import project_batch

    if output not in OUTPUTS:
        raise ConfigError(f"output {output!r}: use one of {OUTPUTS}")
    fn = layout.loss_one if output == "loss" else layout.margin_one
    per_event = jax.vmap(jax.value_and_grad(fn), in_axes=(None, 0))

    @jax.jit
    def f(params_k, chunk):
        def one_checkpoint(params):
            values, grads = per_event(params, chunk)
            return project_batch(projector, grads), values

        return jax.lax.map(one_checkpoint, params_k)

    return f
