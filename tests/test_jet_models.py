"""Jet models (particlenet, dynedge, part) and the graph ops they add (dynamic kNN, attention).

Tiny configurations (hidden 8, k = 3) so that events with fewer than k + 1 nodes and with more
both occur among node counts 1..12. Tolerances: SegmentOps vs NeighbourOps logits 1e-6 (float32,
absolute) and 1e-12 (float64, relative); TracIn self-influence 1e-9 relative in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hepattr_jax import tracin
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import ConfigError
from hepattr_jax.graph_ops import SegmentOps, knn, ops_for
from hepattr_jax.graphs import build_graphs, knn_edges
from hepattr_jax.losses import mean_loss
from hepattr_jax.models import make_model
from hepattr_jax.per_example import NeighbourLayout, layout_for, neighbour_stack
from tests.helpers import init_params

TINY = {
    "particlenet": dict(blocks=((8, 8), (8, 8)), k=3, head=8),
    "dynedge": dict(layers=((8, 8),) * 3, k=3, post=(8,), readout=(8,)),
    "part": dict(dim=8, heads=2, n_blocks=1, pair_hidden=4, head=8),
}
JET = sorted(TINY)
SLOW = pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
# particlenet in make test-fast, the other two (longer to compile) in make test only.
JET_FAST_FIRST = [n if n == "particlenet" else pytest.param(n, marks=SLOW) for n in JET]
# Single-node events, events with fewer than k + 1 = 4 nodes, and larger ones.
SIZES = np.array([1, 2, 3, 4, 6, 9, 12, 1, 3, 12])


def _events(seed=0, sizes=SIZES):
    return random_events(len(sizes), n_nodes=sizes, seed=seed, n_globals=2)


def _neighbour_logits(model, params, gs, chunk=4):
    layout = NeighbourLayout(model, max_buckets=2)
    f = jax.jit(jax.vmap(layout.logit_one, in_axes=(None, 0)))
    out = np.zeros(len(gs))
    for ch in layout.chunks(gs, chunk):
        out[ch.positions] = np.asarray(f(params, ch.data), np.float64)[: len(ch.positions)]
    return out


def _knn_sets(nbr, mask):
    return [
        sorted(int(j) for j, m in zip(row, mrow, strict=True) if m)
        for row, mrow in zip(nbr, mask, strict=True)
    ]


def test_dynamic_knn_matches_knn_edges_on_both_backends_with_ties():
    # Coordinates on an integer grid: many exact distance ties, broken by node index.
    rng = np.random.default_rng(0)
    sizes = np.array([1, 2, 3, 5, 9, 12])
    ev = _events(sizes=sizes)
    ev.nodes[:, 0] = rng.integers(-2, 3, size=len(ev.nodes))
    ev.nodes[:, 1] = rng.integers(-1, 2, size=len(ev.nodes))  # |delta phi| < pi: no wrapping
    gs = build_graphs(ev, "knn:3")
    k = 3
    want = []
    for i in range(len(ev)):
        x = ev.event_nodes(i).astype(np.float64)
        s, r = knn_edges(x[:, 0], x[:, 1], k)
        want.append([sorted(s[r == j].tolist()) for j in range(len(x))])

    nb = neighbour_stack(gs, np.arange(len(gs)), 12, int(gs.in_degree_max.max()), len(gs))
    per_event = jax.jit(jax.vmap(lambda g: ops_for(g).knn(g.nodes[:, :2], k).graph))(nb.graph)
    batch = gs.training_batch(np.arange(len(gs)), gs.batch_budget(len(gs)))

    def seg_knn(g):
        o = knn(SegmentOps(g), g.nodes[:, :2], k)
        return o.senders, o.receivers, o.edge_mask

    snd, rcv, msk = (np.asarray(x) for x in jax.jit(seg_knn)(batch.graphs))
    start = np.concatenate([[0], np.cumsum(sizes)])
    for i, n in enumerate(sizes):
        got = _knn_sets(
            np.asarray(per_event.neighbours[i, :n]), np.asarray(per_event.edge_mask[i, :n])
        )
        assert got == want[i]
        sel = msk & (rcv >= start[i]) & (rcv < start[i + 1])
        got_seg = [sorted((snd[sel & (rcv == start[i] + j)] - start[i]).tolist()) for j in range(n)]
        assert got_seg == want[i]
        assert all(len(w) == min(k, n - 1) for w in want[i])


@pytest.mark.parametrize("name", JET_FAST_FIRST)
def test_segment_and_neighbour_backends_give_the_same_logits(name):
    ev = _events(seed=1)
    gs = build_graphs(ev, "knn:3" if name != "part" else "fully_connected")
    model = make_model(name, use_globals=True, **TINY[name])
    batch = gs.training_batch(np.arange(len(gs)), gs.batch_budget(len(gs)))
    params = jax.jit(model.init)(jax.random.key(0), batch.graphs)
    z = np.asarray(jax.jit(model.apply)(params, batch.graphs))[: len(gs)]
    np.testing.assert_allclose(_neighbour_logits(model, params, gs), z, rtol=0, atol=1e-6)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), params)
        z64 = np.asarray(jax.jit(model.apply)(p64, batch.graphs))[: len(gs)]
        np.testing.assert_allclose(_neighbour_logits(model, p64, gs), z64, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", JET_FAST_FIRST)
def test_self_influence_float64_equals_single_event_reference(name):
    with jax.enable_x64(True):
        ev = _events(seed=2)
        gs = build_graphs(ev, "knn:3" if name != "part" else "fully_connected")
        model = make_model(name, use_globals=True, **TINY[name])
        assert isinstance(layout_for(model, gs), NeighbourLayout)
        ex = jax.tree_util.tree_map(
            lambda x: x[0], gs.example_stack(np.arange(1), gs.single_budget())
        )
        params = init_params(model, ex.graphs, range(2), jnp.float64)
        ckpts = tracin.Checkpoints.from_list(params, [1e-3, 5e-4])
        ref = tracin.self_influence_reference(model.apply, ckpts, gs)
        layout = NeighbourLayout(model, max_buckets=2)  # layout_for's layout, fewer compilations
        fast = tracin.self_influence(layout, ckpts, gs, chunk_size=4, progress=False)
        assert np.all(ref > 0)
        np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("name", JET_FAST_FIRST)
def test_one_training_step_runs_and_lowers_the_loss(name):
    gs = build_graphs(_events(seed=3), "knn:3" if name != "part" else "fully_connected")
    model = make_model(name, **TINY[name])
    batch = gs.training_batch(np.arange(len(gs)), gs.batch_budget(len(gs)))
    params = jax.jit(model.init)(jax.random.key(0), batch.graphs)
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state):
        loss, g = jax.value_and_grad(lambda p: mean_loss(model.apply, p, batch))(params)
        updates, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(3):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
def test_part_pair_bias_and_pooling_options():
    gs = build_graphs(_events(seed=4, sizes=np.array([1, 3, 5])))
    batch = gs.training_batch(np.arange(3), gs.batch_budget(3))
    for kw in (dict(pooling="mean"), dict(pair_bias=False)):
        model = make_model("part", **{**TINY["part"], **kw})
        params = jax.jit(model.init)(jax.random.key(0), batch.graphs)
        assert np.all(np.isfinite(jax.jit(model.apply)(params, batch.graphs)))
    with pytest.raises(ConfigError, match="pooling"):
        make_model("part", pooling="max").init(jax.random.key(0), batch.graphs)


# float64 gradients of a jet model on both batch layouts: about 25 s of compiling per model, so
# make test runs them; make test-fast checks that a model without a dynamic kNN keeps its batches
@pytest.mark.parametrize(
    "name",
    [pytest.param("particlenet", marks=SLOW), pytest.param("dynedge", marks=SLOW), "edgeconv"],
)
def test_training_batches_in_the_neighbour_layout_give_the_same_loss_and_gradient(name):
    """train.py trains a model that builds a dynamic kNN on neighbour-layout batches (one
    shape fitting every event): the loss and gradient equal those of the GraphsTuple batch of
    the same events (float64); a model without one keeps GraphsTuple batches."""
    from functools import partial

    from hepattr_jax.per_example import neighbour_mean_loss
    from hepattr_jax.train import batches, neighbour_training_shape

    with jax.enable_x64(True):
        gs = build_graphs(_events(seed=4), "knn:3")
        model = make_model(name, **TINY.get(name, {}))
        pos = np.random.default_rng(0).permutation(len(gs))[:7]
        budget = gs.batch_budget(8)
        batch = gs.training_batch(pos, budget)
        (params,) = init_params(model, batch.graphs, range(1), jnp.float64)  # as train() does
        shape = neighbour_training_shape(model, gs, batch)  # first: a cached trace is no use
        if name == "edgeconv":
            assert shape is None
            return
        assert shape == (int(gs.events.n_node.max()), 3, False)
        (stack,) = batches(gs, 8, budget, pos, shape)
        ref = jax.value_and_grad(partial(mean_loss, model.apply))(params, batch)
        new = jax.value_and_grad(partial(neighbour_mean_loss, model.apply))(params, stack)
        for a, b in zip(
            jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(ref), strict=True
        ):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
