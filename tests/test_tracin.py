"""TracIn kernels against the reference loop (one jitted single-event gradient at a time).

float64: every event to 1e-9 relative. float32: 1e-5 at the median and 1e-4 at the 99th
percentile (a ReLU input within rounding of zero can flip single events in any float32
implementation, so quantiles are compared there).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hepattr_jax import tracin
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.graphs import build_graphs
from hepattr_jax.models import make_model
from hepattr_jax.per_example import (
    DenseEdgeConvLayout,
    GraphLayout,
    layout_for,
    self_influence_kernel,
)

# Node counts 1..12, single-node (edgeless) events included, twice over.
SIZES = np.concatenate([np.arange(1, 13), np.arange(1, 13), [1, 2, 7, 12]])


def _setup(
    model_name="edgeconv",
    use_globals=True,
    edges="fully_connected",
    dtype=jnp.float64,
    n_ckpt=3,
    seed=0,
):
    ev = random_events(len(SIZES), n_nodes=SIZES, seed=seed, n_globals=2)
    gs = build_graphs(ev, edges)
    model = make_model(model_name, use_globals=use_globals)
    ex = jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.arange(1), gs.single_budget()))
    params = [
        jax.tree_util.tree_map(
            lambda x: x.astype(dtype), model.init(jax.random.key(seed + k), ex.graphs)
        )
        for k in range(n_ckpt)
    ]
    ckpts = tracin.Checkpoints.from_list(params, [1e-3, 5e-4, 2.5e-4][:n_ckpt])
    return gs, model, ckpts


def _rel(a, b):
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


@pytest.mark.parametrize("use_globals", [False, True])
def test_dense_edgeconv_self_influence_float64_equals_reference(use_globals):
    with jax.enable_x64(True):
        gs, model, ckpts = _setup(use_globals=use_globals)
        layout = layout_for(model, gs)
        assert isinstance(layout, DenseEdgeConvLayout)
        ref = tracin.self_influence_reference(model.apply, ckpts, gs)
        fast = tracin.self_influence(layout, ckpts, gs, chunk_size=2, progress=False)
        assert np.all(ref > 0)
        assert _rel(fast, ref).max() < 1e-9


# Train events of 1, 2, 7 and 12 nodes (single-node ones included); test events of 3, 5, 12.
TRAIN_POS = np.flatnonzero(np.isin(SIZES, (1, 2, 7, 12)))
TEST_POS = np.array([2, 4, 11, 14, 16, 23])


def test_dense_edgeconv_matrix_and_top_k_float64_equal_reference():
    with jax.enable_x64(True):
        gs, model, ckpts = _setup(use_globals=True)
        layout = layout_for(model, gs)
        train, test = gs.select(TRAIN_POS), gs.select(TEST_POS)
        mref = tracin.influence_matrix_reference(model.apply, ckpts, train, test)
        # Two test blocks and train chunks with filler slots exercise the blocking.
        m = tracin.influence_matrix(
            layout, ckpts, train, test, chunk_size=2, test_block=3, progress=False
        )
        assert np.abs(m - mref).max() < 1e-9 * np.abs(mref).max()
        assert _rel(m, mref)[np.abs(mref) > 1e-3 * np.abs(mref).max()].max() < 1e-9

        top = tracin.top_k(
            layout, ckpts, train, test, 4, chunk_size=2, test_block=3, progress=False
        )
        want = tracin.top_k_from_matrix(mref, 4)
        np.testing.assert_array_equal(top.proponents, want.proponents)
        np.testing.assert_array_equal(top.opponents, want.opponents)
        np.testing.assert_allclose(top.proponent_scores, want.proponent_scores, rtol=1e-9)
        np.testing.assert_allclose(top.opponent_scores, want.opponent_scores, rtol=1e-9)
        # Top-k is streamed: compare with a brute-force sort of the exact matrix as well.
        for j in range(len(test)):
            assert set(top.proponents[j]) == set(np.argsort(-mref[:, j], kind="stable")[:4])


@pytest.mark.parametrize(
    "model_name,edges",
    [("edgeconv", "knn:3"), ("gcn", "fully_connected"), ("interaction", "knn:2")],
)
def test_generic_graph_layout_float64_equals_reference(model_name, edges):
    with jax.enable_x64(True):
        gs, model, ckpts = _setup(model_name, edges=edges, n_ckpt=2)
        layout = layout_for(model, gs)
        assert isinstance(layout, GraphLayout)
        ref = tracin.self_influence_reference(model.apply, ckpts, gs)
        fast = tracin.self_influence(layout, ckpts, gs, chunk_size=4, progress=False)
        assert _rel(fast, ref).max() < 1e-9


def test_per_checkpoint_contributions_sum_to_total():
    with jax.enable_x64(True):
        gs, model, ckpts = _setup()
        layout = layout_for(model, gs)
        per = tracin.self_influence(
            layout, ckpts, gs, chunk_size=2, per_checkpoint=True, progress=False
        )
        assert per.shape == (3, len(gs))
        for k in range(3):
            one = dataclasses.replace(
                ckpts,
                params=jax.tree_util.tree_map(lambda x, k=k: x[k : k + 1], ckpts.params),
                lrs=ckpts.lrs[k : k + 1],
            )
            ref = tracin.self_influence_reference(model.apply, one, gs)
            assert _rel(per[k], ref).max() < 1e-9
        np.testing.assert_allclose(
            per.sum(0),
            tracin.self_influence(layout, ckpts, gs, chunk_size=2, progress=False),
            rtol=1e-12,
        )


def test_float32_quantiles_against_reference():
    ev = random_events(300, seed=11)  # the benchmark's sizes: 4..12 nodes, 7 features
    gs = build_graphs(ev)
    model = make_model("edgeconv")
    ex = jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.arange(1), gs.single_budget()))
    ckpts = tracin.Checkpoints.from_list(
        [model.init(jax.random.key(k), ex.graphs) for k in range(2)], [1e-3, 1e-3]
    )
    ref = tracin.self_influence_reference(model.apply, ckpts, gs)
    fast = tracin.self_influence(layout_for(model, gs), ckpts, gs, chunk_size=64, progress=False)
    rel = _rel(fast, ref)
    assert np.median(rel) < 1e-5, np.median(rel)
    assert np.quantile(rel, 0.99) < 1e-4, np.quantile(rel, 0.99)


def test_padding_slots_contribute_exactly_zero_and_kernels_compile_once_per_bucket():
    with jax.enable_x64(True):
        gs, model, ckpts = _setup()
        layout = layout_for(model, gs)
        kernel = self_influence_kernel(layout)
        chunks = list(layout.chunks(gs, 2))
        shapes = {jax.tree_util.tree_leaves(c.data)[0].shape for c in chunks}
        lrs = ckpts.lr_array()
        for c in chunks:
            out = np.asarray(kernel(ckpts.params, lrs, c.data))
            n = len(c.positions)
            assert np.all(out[:, n:] == 0.0)  # filler slots of a bucket's tail
            assert np.all(out[:, :n] > 0.0)
        before = kernel._cache_size()
        assert before >= len(shapes) == 12  # one shape per node count 1..12
        tracin.self_influence(layout, ckpts, gs, chunk_size=2, progress=False)  # a second call
        assert self_influence_kernel(layout) is kernel
        assert kernel._cache_size() == before  # reused: no new compilation
