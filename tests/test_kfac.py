"""Layer statistics for Kronecker-factored curvature (hepattr_jax.kfac): the per-graph input and
output-gradient moments of every dense layer against a brute-force computation written here on
the unpadded events, for both weightings (expand, reduce) and both Fisher weights; the same
figures whatever the bucketing (padding never enters), on a built-in model with two sites per
layer. Tolerances: float64, 1e-9.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import build_graphs
from hepattr_jax.kfac import LayerStatistics, layer_statistics
from hepattr_jax.models import make_model
from hepattr_jax.per_example import GraphLayout, NeighbourLayout
from hepattr_jax.tracin import Checkpoints
from tests.helpers import init_params

SIZES = np.array([1, 2, 5, 9, 3, 1, 4])
RTOL = 1e-9


class MeanPoolMLP(nn.Module):
    """A user's GraphsTuple module: tanh(Dense) on nodes, mean over each graph's nodes, Dense."""

    @nn.compact
    def __call__(self, graphs):
        n, g = graphs.nodes.shape[0], graphs.n_node.shape[0]
        h = jnp.tanh(nn.Dense(4, name="node")(graphs.nodes))
        gidx = jnp.repeat(jnp.arange(g), graphs.n_node, total_repeat_length=n)
        pooled = jraph.segment_sum(h, gidx, g) / jnp.maximum(graphs.n_node, 1)[:, None]
        return nn.Dense(1, name="out")(pooled)[:, 0]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _brute_force(params, ev, fisher):
    """The statistics from each unpadded event, in NumPy: layer ``node`` has one row per node
    (input ``[x_t, 1]``, logit gradient ``(1/n)(1 - h_t^2) * w_out``), layer ``out`` one row."""
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)["params"]
    w1, b1 = p["node"]["kernel"], p["node"]["bias"]
    w2, b2 = p["out"]["kernel"], p["out"]["bias"]
    acc = {k: 0.0 for k in ("ae1", "se1", "ar1", "sr1", "a2", "s2", "rows", "c")}
    for i in range(len(ev)):
        x = ev.nodes[ev.offsets[i] : ev.offsets[i + 1]].astype(np.float64)
        n = len(x)
        h = np.tanh(x @ w1 + b1)
        pooled = h.mean(0)
        z = float(pooled @ w2[:, 0] + b2[0])
        y = float(ev.labels[i])
        m = (2 * y - 1) * z
        c = _sigmoid(m) * _sigmoid(-m) if fisher == "true" else _sigmoid(-m) ** 2
        a1 = np.concatenate([x, np.ones((n, 1))], 1)
        d1 = (1 - h**2) * w2[:, 0] / n
        abar, dbar = a1.mean(0), d1.sum(0)
        a2 = np.append(pooled, 1.0)
        acc["ae1"] += a1.T @ a1 / n
        acc["se1"] += c * d1.T @ d1
        acc["ar1"] += np.outer(abar, abar)
        acc["sr1"] += c * np.outer(dbar, dbar)
        acc["a2"] += np.outer(a2, a2)
        acc["s2"] += c
        acc["rows"] += n
        acc["c"] += c
    return {k: v / len(ev) for k, v in acc.items()}


@pytest.mark.parametrize("fisher", ["true", pytest.param("empirical", marks=pytest.mark.slow)])
def test_statistics_equal_the_brute_force_per_graph_sums_float64(fisher):
    """Two checkpoints, a heavily padded single bucket and a bucketed plan with small chunks
    (filler slots): both equal the unpadded brute force."""
    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=7)
        gs = build_graphs(ev, "knn:2")
        model = MeanPoolMLP()
        g0 = next(iter(GraphLayout(model).chunks(gs, 1))).data.graphs
        g0 = jax.tree_util.tree_map(lambda x: x[0], g0)
        plist = init_params(model, g0, (0, 1), jnp.float64)
        ck = Checkpoints.from_list(plist, [1.0, 0.5])
        for layout, chunk in [
            (GraphLayout(model, max_buckets=1), 8),
            (GraphLayout(model, max_buckets=3, bucket_overhead=0.0), 2),
        ]:
            st = layer_statistics(layout, ck, gs, fisher=fisher, chunk_size=chunk, progress=False)
            assert st.kernels == ("params/node/kernel", "params/out/kernel")
            assert st.biases == ("params/node/bias", "params/out/bias")
            assert st.n_events == len(SIZES) and st.rest == ()
            for k, params in enumerate(plist):
                want = _brute_force(params, ev, fisher)
                close = dict(rtol=RTOL, atol=1e-15)
                np.testing.assert_allclose(st.a_expand[0][k], want["ae1"], **close)
                np.testing.assert_allclose(st.s_expand[0][k], want["se1"], **close)
                np.testing.assert_allclose(st.a_reduce[0][k], want["ar1"], **close)
                np.testing.assert_allclose(st.s_reduce[0][k], want["sr1"], **close)
                for name in ("a_expand", "a_reduce"):  # one row per graph: plain K-FAC
                    np.testing.assert_allclose(getattr(st, name)[1][k], want["a2"], **close)
                for name in ("s_expand", "s_reduce"):
                    np.testing.assert_allclose(getattr(st, name)[1][k], [[want["s2"]]], **close)
                np.testing.assert_allclose(st.rows[k], [want["rows"], 1.0], rtol=RTOL)
                np.testing.assert_array_equal(st.layer_events[k], [1.0, 1.0])
                np.testing.assert_allclose(st.mean_weight[k], want["c"], rtol=RTOL)
            back = LayerStatistics.from_arrays(st.to_arrays())
            for a, b in zip(back.a_expand + back.s_reduce, st.a_expand + st.s_reduce, strict=True):
                np.testing.assert_array_equal(a, b)


# Tiny settings (test_capture's) of the built-in models whose rows differ in kind: EdgeConv
# (static kNN edges, two sites per factorised layer), ParticleNet
# (dynamic kNN in feature space) and ParT (attention over every pair, a class token). The other
# three are message passing over the static edges like EdgeConv; test_capture covers all six.
MODELS = {
    "edgeconv": ({"hidden": 6, "n_blocks": 2, "readout_hidden": 5}, "knn:3"),
    "particlenet": ({"blocks": ((6, 6), (6, 6)), "k": 3, "head": 5}, "knn:3"),
    "part": ({"dim": 8, "heads": 2, "n_blocks": 1, "pair_hidden": 4, "head": 5}, "fully_connected"),
}
# make test-fast keeps the brute force (the math, padding included); make test runs these.
MODEL_CASES = [pytest.param(m, marks=pytest.mark.slow) for m in sorted(MODELS)]


@pytest.mark.parametrize("name", MODEL_CASES)
def test_statistics_do_not_depend_on_the_padding_float64(name):
    """Built-in models on kNN (ParT: fully connected) graphs, events of one node and no edges
    included. One bucket (every event padded to the largest) and a 2-bucket plan with another
    chunk size give the same statistics; every factor is symmetric positive
    semi-definite. EdgeConv in detail: its first edge layer has two sites per event (receiver
    rows through nn.Dense, sender rows through kernel_rows); a layer's rows are at most the
    event's (padding never enters); after pooling (one row per event) expand and reduce
    coincide."""
    kwargs, graph = MODELS[name]
    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=4, n_globals=2)
        gs = build_graphs(ev, graph)
        model = make_model(name, use_globals=True, **kwargs)
        data = next(iter(NeighbourLayout(model).chunks(gs, 1))).data
        g0 = jax.tree_util.tree_map(lambda x: x[0], data.graph)
        ck = Checkpoints.from_list(init_params(model, g0, (0,), jnp.float64), [1.0])
        one = layer_statistics(
            NeighbourLayout(model, max_buckets=1), ck, gs, chunk_size=7, progress=False
        )
        many = NeighbourLayout(model, max_buckets=2, bucket_overhead=0.0)
        assert len(many.plan(gs).buckets) == 2
        many = layer_statistics(many, ck, gs, chunk_size=2, progress=False)
    for field in ("a_expand", "s_expand", "a_reduce", "s_reduce", "rest_diag"):
        for a, b in zip(getattr(one, field), getattr(many, field), strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-14, err_msg=field)
    np.testing.assert_allclose(one.rows, many.rows, rtol=RTOL)
    for x in one.a_expand + one.s_expand + one.a_reduce + one.s_reduce:
        np.testing.assert_allclose(x[0], x[0].T, atol=1e-14)
        assert np.linalg.eigvalsh(x[0]).min() > -1e-12
    if name != "edgeconv":
        return
    # The rows carrying gradient: at most the encoder's nodes, the factorised edge layers' two
    # sites of n rows, the edge MLP's second layer on the kNN edges (max aggregation: an edge
    # that wins no channel carries none), the readout MLP's one row per event.
    n, e = SIZES.mean(), gs.n_edge.mean()
    assert np.all(one.rows[0] <= np.array([n, 2 * n, e, 2 * n, e, 1, 1]) + 1e-9), one.rows
    assert one.rows[0, 2] < e and one.rows[0, 0] > 0.5 * n
    assert one.layer_events[0, 5] <= 1.0 and one.layer_events[0, 6] == 1.0  # the logit's layer
    for i in (5, 6):
        np.testing.assert_allclose(one.a_expand[i], one.a_reduce[i], rtol=RTOL)
        np.testing.assert_allclose(one.s_expand[i], one.s_reduce[i], rtol=RTOL)


@pytest.mark.slow  # make test runs it, make test-fast not (the brute force covers GraphLayout)
def test_statistics_of_a_users_module_with_edge_rows_do_not_depend_on_the_padding_float64():
    """A user's GraphsTuple module (test_capture's: one Dense on nodes, one shared Dense on edge
    rows and on node rows, a LayerNorm the layers do not cover): one bucket against three, the
    same statistics; the shared layer's rows are at most the event's edges and nodes; the
    LayerNorm's diagonal Fisher is there."""
    from tests.test_capture import UsersOwnGNN

    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=5, n_globals=2)
        gs = build_graphs(ev, "knn:3")
        model = UsersOwnGNN()
        g0 = next(iter(GraphLayout(model).chunks(gs, 1))).data.graphs
        g0 = jax.tree_util.tree_map(lambda x: x[0], g0)
        ck = Checkpoints.from_list(init_params(model, g0, (1,), jnp.float64), [1.0])
        one = layer_statistics(
            GraphLayout(model, max_buckets=1), ck, gs, chunk_size=7, progress=False
        )
        many = layer_statistics(
            GraphLayout(model, max_buckets=3, bucket_overhead=0.0),
            ck,
            gs,
            chunk_size=3,
            progress=False,
        )
    for field in ("a_expand", "s_expand", "a_reduce", "s_reduce", "rest_diag"):
        for a, b in zip(getattr(one, field), getattr(many, field), strict=True):
            np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-14, err_msg=field)
    n, e = SIZES.mean(), gs.n_edge.mean()
    assert np.all(one.rows[0] <= np.array([n, e + n, 1]) + 1e-9), one.rows
    assert one.rows[0, 1] > 0.5 * (e + n)
    assert len(one.rest) == 2 and all("LayerNorm" in r for r in one.rest)
    assert all(d.min() >= 0 and d.max() > 0 for d in one.rest_diag)


def test_chunk_moments_equal_the_sum_of_per_event_moments_float64():
    """The chunk path (one matmul over the chunk's rows) against the per-event reference
    ``layer_moments`` summed with the slot weights (a filler slot weighted 0), every layer."""
    from hepattr_jax.capture import chunk_layer_moments, layer_moments
    from hepattr_jax.per_example import _chunk_captures

    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=2, n_globals=2)
        gs = build_graphs(ev, "knn:3")
        model = make_model("edgeconv", hidden=6, n_blocks=1, readout_hidden=5, use_globals=True)
        layout = NeighbourLayout(model, max_buckets=1)
        data = next(iter(layout.chunks(gs, 8))).data  # 7 events and a filler slot
        (params,) = init_params(
            model, jax.tree_util.tree_map(lambda x: x[0], data.graph), (0,), jnp.float64
        )
        c = jnp.linspace(0.1, 0.3, 8)
        weight = jnp.asarray(np.arange(8) < 7, jnp.float64)

        @jax.jit
        def both(params, data):
            spec, caps = _chunk_captures(layout.margin_one, params, data)
            out = []
            for layer in spec.layers:

                def one(cap, ci, layer=layer):
                    return layer_moments(spec, layer, cap, ci)

                fast = chunk_layer_moments(spec, layer, caps, c, weight)
                per = jax.vmap(one)(caps, c)
                out.append((fast, [jnp.tensordot(weight, p, axes=1) for p in per]))
            return out

        for fast, per in both(params, data):
            for f, p in zip(fast, per, strict=True):
                np.testing.assert_allclose(f, p, rtol=RTOL, atol=1e-15)


def test_unknown_fisher_is_refused():
    ev = random_events(3, n_nodes=np.array([2, 3, 4]), seed=1)
    gs = build_graphs(ev, "knn:2")
    model = MeanPoolMLP()
    g0 = jax.tree_util.tree_map(lambda x: x[0], next(iter(GraphLayout(model).chunks(gs, 1))).data)
    ck = Checkpoints.from_list([model.init(jax.random.key(0), g0.graphs)], [1.0])
    with pytest.raises(ConfigError, match="fisher 'observed'"):
        layer_statistics(GraphLayout(model), ck, gs, fisher="observed", progress=False)


def test_input_factors_average_over_the_events_with_rows():
    """Unpacking by hand: a layer with rows in 2 of 4 events has its input factors divided by 2
    (the events with rows), its output-gradient factors and rows by 4 (all events)."""
    from types import SimpleNamespace

    from hepattr_jax.kfac import unpack_statistics

    layer = SimpleNamespace(m=1, p=1, kernel=("params", "d", "kernel"), bias=None)
    spec = SimpleNamespace(layers=(layer,), rest=(), rest_shapes=())
    # a_expand, s_expand, a_reduce, s_reduce, rows, has_rows | events, sum of c
    total = np.array([[6.0, 8.0, 10.0, 12.0, 5.0, 2.0, 4.0, 1.0]])
    st = unpack_statistics(spec, total, "true")
    assert (st.a_expand[0][0, 0, 0], st.a_reduce[0][0, 0, 0]) == (3.0, 5.0)
    assert (st.s_expand[0][0, 0, 0], st.s_reduce[0][0, 0, 0]) == (2.0, 3.0)
    assert (st.rows[0, 0], st.layer_events[0, 0], st.n_events) == (1.25, 0.5, 4)
    assert st.mean_weight[0] == 0.25 and st.kernels == ("params/d/kernel",)
