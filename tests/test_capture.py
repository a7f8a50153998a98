"""Per-layer capture (hepattr_jax.capture): the gradient rebuilt from each dense layer's per-event
(input rows, output-gradient rows) equals ``jax.grad`` of the event's loss, for every built-in
model and a user's own GraphsTuple module, events of one node and no edges included.

Tolerances: float64, 1e-9 relative to the gradient's norm (issue 13's acceptance).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hepattr_jax.capture import (
    capture_one,
    check_capture,
    discover,
    grads_from_capture,
    kernel_rows,
    layer_plan,
    sq_norm_from_capture,
)
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import build_graphs
from hepattr_jax.models import make_model
from hepattr_jax.per_example import GraphLayout, NeighbourLayout, graph_level_layers
from hepattr_jax.projection import KroneckerProjector, allocate, kronecker_projection_matrix
from tests.helpers import init_params

# Tiny settings; knn k = 3 so that events with fewer than k + 1 nodes occur.
MODELS = {
    "edgeconv": ({"hidden": 6, "n_blocks": 2, "readout_hidden": 5}, "knn:3"),
    "interaction": ({"hidden": 6, "n_blocks": 2, "readout_hidden": 5}, "knn:3"),
    "gcn": ({"hidden": 6, "n_layers": 2, "readout_hidden": 5}, "knn:3"),
    "particlenet": ({"blocks": ((6, 6), (6, 6)), "k": 3, "head": 5}, "knn:3"),
    "dynedge": ({"layers": ((6, 6),) * 2, "k": 3, "post": (6,), "readout": (5,)}, "knn:3"),
    "part": ({"dim": 8, "heads": 2, "n_blocks": 1, "pair_hidden": 4, "head": 5}, "fully_connected"),
}
# A single-node event (no edges), a two-node one, and larger ones.
SIZES = np.array([1, 2, 5, 9, 3, 1])
RTOL = 1e-9


def _rel_err(got, want) -> float:
    ga, wa = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(ga, wa, strict=True))
    den = sum(float(jnp.sum(b**2)) for b in wa)
    return float(np.sqrt(num / den))


def _flat_grads(fn, params, data):
    """``[slots, P]`` flat ``jax.grad(fn)`` of each slot of a chunk, one event at a time under
    ``vmap`` (jitted: eager mode would compile each operation of the model on its own)."""
    return jax.jit(jax.vmap(lambda e: ravel_pytree(jax.grad(fn)(params, e))[0]))(data)


def _first_chunk(layout, gs):
    return next(iter(layout.chunks(gs, len(gs)))).data


def _compare(layout, params, data, norms=True):
    """The capture's gradient against ``jax.grad`` per event; with ``norms``, also the squared
    norms by the Gram route and by the product for every layer (model-independent code over
    the captures: tested on a few models, to keep the compilations down)."""
    fn = layout.loss_one
    ex0 = jax.tree_util.tree_map(lambda x: x[0], data)
    spec = discover(fn, params, ex0)

    @jax.jit
    def both(params, data):
        caps = jax.vmap(lambda e: capture_one(fn, spec, params, e))(data)
        got = jax.vmap(lambda c: grads_from_capture(spec, params, c))(caps)
        want = jax.vmap(lambda e: jax.grad(fn)(params, e))(data)
        # Every layer by the Gram route, and every layer by the product (the plan mixes them).
        sq = {
            str(g): jax.vmap(lambda c, g=g: sq_norm_from_capture(spec, c, ghost=g))(caps)
            for g in ((True, False) if norms else ())
        }
        return got, want, sq

    got, want, sq = both(params, data)
    for i in range(data.valid.shape[0] if hasattr(data, "valid") else 1):
        gi = jax.tree_util.tree_map(lambda x, i=i: x[i], got)
        wi = jax.tree_util.tree_map(lambda x, i=i: x[i], want)
        if sum(float(jnp.sum(w**2)) for w in jax.tree_util.tree_leaves(wi)) == 0:
            continue
        assert _rel_err(gi, wi) < RTOL, f"event slot {i}"
    exact = jax.vmap(lambda w: sum(jnp.vdot(x, x) for x in jax.tree_util.tree_leaves(w)))(want)
    for g, v in sq.items():
        np.testing.assert_allclose(v, exact, rtol=RTOL, atol=0, err_msg=f"ghost={g}")
    return spec


SLOW = pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
# make test-fast keeps edgeconv (two sites per factorised layer); make test runs all six.
MODEL_CASES = [m if m == "edgeconv" else pytest.param(m, marks=SLOW) for m in sorted(MODELS)]


@pytest.mark.parametrize("name", MODEL_CASES)
def test_capture_rebuilds_the_per_event_gradient_float64(name):
    kwargs, graph = MODELS[name]
    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=4, n_globals=2)
        gs = build_graphs(ev, graph)
        model = make_model(name, use_globals=True, **kwargs)
        layout = NeighbourLayout(model, max_buckets=1)
        data = _first_chunk(layout, gs)
        g0 = jax.tree_util.tree_map(lambda x: x[0], data.graph)
        (params,) = init_params(model, g0, (0,), jnp.float64)
        spec = _compare(layout, params, data, norms=name in ("edgeconv", "interaction"))
    # Every Dense kernel is covered by a site; only non-Dense parameters remain.
    rest = {"/".join(p[1:]) for p in spec.rest}
    if name == "part":
        assert rest and all("ln" in r or r == "cls_token" for r in rest), rest
    else:
        assert rest == set(), rest
    if name in ("edgeconv", "particlenet", "dynedge"):  # factorised first edge layers: 2 sites
        assert any(len(layer.sites) == 2 for layer in spec.layers)


class UsersOwnGNN(nn.Module):
    """A module the library has never seen, over a GraphsTuple (GraphLayout): raw jraph segment
    ops, one Dense applied twice (shared weights), a LayerNorm (a non-Dense parameter)."""

    @nn.compact
    def __call__(self, graphs):
        n = graphs.nodes.shape[0]
        h = nn.tanh(nn.Dense(6)(graphs.nodes))
        shared = nn.Dense(6, name="shared")
        msg = shared(jnp.concatenate([h[graphs.senders], h[graphs.receivers]], -1))
        h = h + jraph.segment_sum(jax.nn.softplus(msg), graphs.receivers, n)
        h = nn.LayerNorm()(h + shared(jnp.concatenate([h, h], -1)))
        gidx = jnp.repeat(jnp.arange(graphs.n_node.shape[0]), graphs.n_node, total_repeat_length=n)
        pooled = jraph.segment_sum(h, gidx, graphs.n_node.shape[0])
        return nn.Dense(1)(pooled)[:, 0]


def test_capture_of_a_users_graphs_tuple_module_float64():
    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=5, n_globals=2)
        gs = build_graphs(ev, "knn:3")
        model = UsersOwnGNN()
        layout = GraphLayout(model, max_buckets=1)
        data = _first_chunk(layout, gs)
        ex0 = jax.tree_util.tree_map(lambda x: x[0], data)
        (params,) = init_params(model, ex0.graphs, (1,), jnp.float64)
        spec = _compare(layout, params, data)
    shared = [layer for layer in spec.layers if layer.kernel[-2] == "shared"]
    assert len(shared) == 1 and len(shared[0].sites) == 2
    assert {p[-2] for p in spec.rest} == {"LayerNorm_0"}


class Tied(nn.Module):
    """Uses a Dense kernel outside its call without kernel_rows: capture must refuse it."""

    direct_via_hook: bool = False

    @nn.compact
    def __call__(self, x):
        d = nn.Dense(3, name="d")
        y = d(x)
        if self.direct_via_hook:
            z = kernel_rows(d, x, 0)
        else:
            z = x @ d.variables["params"]["kernel"]
        return (jnp.tanh(y) * z).sum()


def test_kernel_used_outside_its_sites_is_named():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
    model = Tied()
    params = model.init(jax.random.key(0), x)
    with pytest.raises(ConfigError, match="params/d/kernel"):
        check_capture(model.apply, params, x)
    spec = check_capture(Tied(direct_via_hook=True).apply, params, x)
    assert len(spec.layers) == 1 and len(spec.layers[0].sites) == 2


def test_layer_plan_prefers_ghost_norms_for_few_rows():
    model = make_model("edgeconv", hidden=16, n_blocks=1, readout_hidden=16)
    ev = random_events(2, n_nodes=np.array([12, 3]), seed=0)
    gs = build_graphs(ev, "fully_connected")
    layout = NeighbourLayout(model, max_buckets=1)
    data = _first_chunk(layout, gs)
    ex0 = jax.tree_util.tree_map(lambda x: x[0], data)
    (params,) = init_params(model, ex0.graph)
    plan = {c.kernel[-2]: c for c in layer_plan(discover(layout.loss_one, params, ex0))}
    assert plan["readout_0"].ghost and plan["readout_0"].rows == 1  # one pooled row
    assert not plan["edge0_1"].ghost  # 144 edge rows of width 16: the product is cheaper
    assert plan["edge0_1"].rows == 12 * 12


# --------------------------------------------------------------------- Kronecker projection
def test_allocate_splits_the_dimension_by_size():
    # one each, then 57 by room 9 : 999 : 99 -> 0.46, 51.44, 5.10: floors 0, 51, 5, last to 0.46
    assert allocate([10, 1000, 100], 60) == [2, 52, 6]
    dims = allocate([6, 4000, 130, 1], 512)
    assert sum(dims) == 512 and dims[3] == 1 and all(d >= 1 for d in dims)
    assert allocate([3, 4], 100) == [3, 4]  # more dimensions than entries: every block exact
    assert allocate([3, 400], 40)[0] == 1
    assert allocate([100, 100, 5], 50, weights=[1.0, 3.0, 100.0]) == [12, 33, 5]  # 5: exact
    with pytest.raises(ConfigError, match="proj_dim 2 is below the 3 blocks"):
        allocate([5, 5, 5], 2)


# The users' module has a LayerNorm: a rest block (parameters no dense site covers).
@pytest.mark.parametrize(
    "name, proj_dim",
    # make test-fast keeps gcn (exact blocks); make test adds the calibrated edgeconv case and
    # the users' module (a rest block).
    [
        pytest.param("edgeconv", 60, marks=SLOW),
        pytest.param("users", 50, marks=SLOW),
        ("gcn", 4000),
    ],
)
def test_kronecker_features_equal_the_dense_matrix_form_float64(name, proj_dim):
    """``project`` (per-layer factors on captured rows, never a per-event gradient) equals the
    flat exact gradient times the whole ``[P, d]`` Kronecker matrix built independently."""
    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=6, n_globals=2)
        if name == "users":
            gs = build_graphs(ev, "knn:3")
            model = UsersOwnGNN()
            layout = GraphLayout(model, max_buckets=1)
        else:
            kwargs, graph = MODELS[name]
            gs = build_graphs(ev, graph)
            model = make_model(name, use_globals=True, **kwargs)
            layout = NeighbourLayout(model, max_buckets=1)
        data = _first_chunk(layout, gs)
        ex0 = jax.tree_util.tree_map(lambda x: x[0], data)
        g0 = ex0.graphs if name == "users" else ex0.graph
        (params,) = init_params(model, g0, (2,), jnp.float64)
        fn = layout.margin_one
        spec = discover(fn, params, ex0)
        graph_level = graph_level_layers(layout, fn, params, ex0)
        # The readout after pooling is one row per event: projected densely.
        readout = {"edgeconv": {"readout_0", "readout_1"}}
        assert {k[1] for k in graph_level} >= readout.get(name, set())
        proj = KroneckerProjector(proj_dim, seed=3)
        if name == "edgeconv":  # calibrated: dimensions by (here made-up) layer energies
            proj = proj.calibrated([float(i + 1) for i in range(len(spec.layers))])
        blocks = proj.blocks(spec, graph_level)
        assert sum(b.dim for b in blocks) == min(proj_dim, sum(b.size for b in blocks))
        if name != "gcn":
            assert any(not b.exact for b in blocks)
        else:
            assert all(b.exact for b in blocks)  # 4000 > P: exact, zero-padded

        @jax.jit
        def features(params, data):
            caps = jax.vmap(lambda e: capture_one(fn, spec, params, e))(data)
            return proj.project(spec, caps, graph_level)

        got = np.asarray(features(params, data))
        r = kronecker_projection_matrix(proj, spec, params, graph_level)
        want = np.asarray(_flat_grads(fn, params, data) @ r)
    assert got.shape == (len(SIZES), proj_dim)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@SLOW
def test_kronecker_inner_products_are_unbiased():
    """Mean over 50 keys of the projected inner product of two fixed gradients is the exact
    one within 4 standard errors (per-entry unbiasedness; the matrix form is checked above)."""
    kwargs, graph = MODELS["edgeconv"]
    ev = random_events(2, n_nodes=np.array([5, 7]), seed=8)
    gs = build_graphs(ev, graph)
    model = make_model("edgeconv", **kwargs)
    layout = NeighbourLayout(model, max_buckets=1)
    data = _first_chunk(layout, gs)
    ex0 = jax.tree_util.tree_map(lambda x: x[0], data)
    (params,) = init_params(model, ex0.graph)
    spec = discover(layout.margin_one, params, ex0)
    flat = _flat_grads(layout.margin_one, params, data)
    exact = float(flat[0] @ flat[1])
    est = []
    for seed in range(50):
        r = kronecker_projection_matrix(KroneckerProjector(24, seed=seed), spec, params)
        f = flat @ r
        est.append(float(f[0] @ f[1]))
    est = np.asarray(est)
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - exact) < 4 * se, (est.mean(), exact, se)


@SLOW  # make test runs it, make test-fast not
def test_layer_energy_is_the_mean_squared_gradient_norm_per_layer():
    from hepattr_jax import tracin

    kwargs, graph = MODELS["gcn"]
    with jax.enable_x64(True):
        ev = random_events(len(SIZES), n_nodes=SIZES, seed=9, n_globals=2)
        gs = build_graphs(ev, graph)
        model = make_model("gcn", use_globals=True, **kwargs)
        layout = NeighbourLayout(model, max_buckets=1)
        data = _first_chunk(layout, gs)
        ex0 = jax.tree_util.tree_map(lambda x: x[0], data.graph)
        params = init_params(model, ex0, range(2), jnp.float64)
        ckpts = tracin.Checkpoints.from_list(params, [1.0, 1.0])
        got = tracin.layer_energy(layout, ckpts, gs, n_events=4, chunk_size=3)
        want = np.zeros_like(got)
        for p in params:
            for i in range(4):
                ex = jax.tree_util.tree_map(lambda x, i=i: x[i], data)
                g = jax.grad(layout.loss_one)(p, ex)["params"]
                names = [f"gcn{j}" for j in range(2)] + ["readout_0", "readout_1"]
                for b, name in enumerate(names):
                    want[b] += sum(float(jnp.sum(x**2)) for x in jax.tree_util.tree_leaves(g[name]))
        np.testing.assert_allclose(got, want / 8, rtol=1e-9)
        proj = tracin.calibrate_projector(layout, ckpts, gs, KroneckerProjector(16))
        assert proj.weights is not None and len(proj.weights) == 4
        assert proj.to_meta()["weights"] == list(proj.weights)
