"""Layer-wise relevance propagation (``hepattr_jax.explain.lrp``): known answers.

* A linear model ``z = x w + b``: LRP-0 gives ``R_i = x_i w_i`` exactly, and the bias absorbs
  ``b``; with ``eps > 0`` every relevance is scaled by ``z / (z + eps sgn z)``.
* A bias-free ReLU MLP (float64): relevances sum to the output to 1e-6 (epsilon -> 0 and gamma
  rules), the gamma rule with ``gamma = 0`` equals epsilon with ``eps -> 0``, and LRP-0 equals
  gradient x input (Euler: a bias-free ReLU network is positively homogeneous of degree 1, so
  ``f(x) = x . grad f(x)``; the input-times-weight decomposition of its locally linear map).
* The same on tiny GNNs from ``hepattr_jax.models`` with biases zeroed (float64): per-graph
  conservation (mean aggregation, residual sums, mean and max pooling), and LRP-0 = grad x input;
  with biases, ``logit - sum R - absorbed`` is ~0 per event through the batched predictor.
* A parameterised layer that is not ``nn.Dense`` is refused, by name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hepattr_jax.data.synthetic import random_events
from hepattr_jax.explain import BatchedPredictor
from hepattr_jax.explain.lrp import (
    UnsupportedLayerError,
    graph_lrp_fn,
    lrp,
    make_rule,
    rank_correlations,
    relevance,
)
from hepattr_jax.graphs import Budget, build_graphs
from hepattr_jax.models import make_model
from tests.helpers import numpy_params


class MLP(nn.Module):
    sizes: tuple = (6, 5, 1)
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        for k, s in enumerate(self.sizes):
            x = nn.Dense(s, use_bias=self.use_bias, name=f"d{k}")(x)
            if k < len(self.sizes) - 1:
                x = nn.relu(x)
        return x[:, 0]


def jlrp(apply_fn, params, x, rule):
    """:func:`lrp` under ``jit`` (eager dispatch of the modified backward pass is slow)."""

    def f(p, v):
        out, rel, absorbed = lrp(apply_fn, p, v, rule)
        return out, rel, [a for _, a in absorbed]

    out, rel, absorbed = jax.jit(f)(params, x)
    return out, rel, [(k, a) for k, a in enumerate(absorbed)]


#: Small settings of each model (particlenet: a dynamic kNN, k = 3, in its second block).
SMALL = {
    "edgeconv": {"hidden": 8, "readout_hidden": 8, "n_blocks": 2},
    "interaction": {"hidden": 8, "readout_hidden": 8, "n_blocks": 2},
    "gcn": {"hidden": 8, "readout_hidden": 8, "n_layers": 2},
    "particlenet": {"blocks": ((4, 4), (8, 8)), "k": 3, "head": 8},
}


def _x(n=20, d=4, seed=0, dtype=np.float64):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, d)), dtype)


def test_linear_model_is_input_times_weight():
    x = _x(dtype=np.float32)
    model = MLP(sizes=(1,))
    params = model.init(jax.random.key(0), x)
    params = jax.tree_util.tree_map(lambda p: p, params)
    params["params"]["d0"]["bias"] = jnp.array([0.3])
    w = params["params"]["d0"]["kernel"][:, 0]
    out, rel, absorbed = jlrp(model.apply, params, x, make_rule("epsilon", eps=0.0))
    np.testing.assert_allclose(rel, x * w, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(absorbed[0][1], 0.3, rtol=1e-6)
    np.testing.assert_allclose(rel.sum(1) + absorbed[0][1], out, rtol=1e-5, atol=1e-6)
    # epsilon: scaled by z / (z + eps sgn z), the rest absorbed
    out, rel_e, ab_e = jlrp(model.apply, params, x, make_rule("epsilon", eps=0.5))
    z = np.asarray(out)
    scale = z / (z + 0.5 * np.sign(z))
    np.testing.assert_allclose(rel_e, np.asarray(x * w) * scale[:, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rel_e.sum(1) + ab_e[0][1], out, rtol=1e-5, atol=1e-6)


def test_bias_free_relu_mlp_conservation_gamma0_and_grad_x_input():
    with jax.enable_x64(True):
        x = _x(n=50, d=4, seed=1)
        model = MLP(use_bias=False)
        params = numpy_params(model, x, seed=1)
        out, r0, _ = jlrp(model.apply, params, x, make_rule("epsilon", eps=0.0))
        np.testing.assert_allclose(r0.sum(1), out, rtol=0, atol=1e-6)
        g = jax.jit(jax.grad(lambda v: model.apply(params, v).sum()))(x)
        np.testing.assert_allclose(r0, x * g, rtol=0, atol=1e-12)
        _, r_tiny, _ = jlrp(model.apply, params, x, make_rule("epsilon", eps=1e-12))
        _, r_g0, _ = jlrp(model.apply, params, x, make_rule("gamma", gamma=0.0, eps=0.0))
        np.testing.assert_allclose(r_g0, r_tiny, rtol=0, atol=1e-9)
        _, r_g, ab = jlrp(model.apply, params, x, make_rule("gamma", gamma=0.5, eps=0.0))
        np.testing.assert_allclose(r_g.sum(1), out, rtol=0, atol=1e-6)
        assert float(np.abs(np.asarray(r_g) - np.asarray(r0)).max()) > 1e-3  # a different rule


def _graphs(seed=3, n_events=6):
    ev = random_events(n_events, n_node_range=(1, 5), n_features=3, n_globals=2, seed=seed)
    gs = build_graphs(ev)  # fully connected; includes single-node events without edges
    budget = Budget(32, 88, n_events + 1)
    return ev, gs, gs.training_batch(np.arange(n_events), budget)


@pytest.mark.parametrize(
    # make test-fast keeps edgeconv and gcn; make test adds the interaction network.
    "name",
    [
        "edgeconv",
        pytest.param("interaction", marks=pytest.mark.slow),
        "gcn",
        pytest.param("particlenet", marks=pytest.mark.slow),
    ],
)
def test_gnn_bias_free_conservation_and_grad_x_input(name):
    ev, gs, batch = _graphs()
    model = make_model(name, use_globals=True, **SMALL[name])
    with jax.enable_x64(True):
        g = jax.tree_util.tree_map(
            lambda a: np.asarray(a, np.float64) if np.issubdtype(a.dtype, np.floating) else a,
            batch.graphs,
        )
        params = numpy_params(model, g)  # float64, biases zero
        valid = jnp.asarray(batch.graph_mask)
        rule = make_rule("epsilon", eps=0.0)
        out = jax.jit(graph_lrp_fn(model, rule))(params, g, valid)
        n = len(ev)
        node_graph = np.repeat(np.arange(g.n_node.shape[0]), np.asarray(g.n_node))
        node_sum = np.zeros(g.n_node.shape[0])
        np.add.at(node_sum, node_graph, np.asarray(out["node"]).sum(1))
        total = node_sum + np.asarray(out["globals"]).sum(1)
        np.testing.assert_allclose(total[:n], np.asarray(out["logit"])[:n], rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(out["absorbed"])[:n], 0.0, atol=1e-12)
        assert np.all(np.asarray(out["node"])[int(g.n_node[:n].sum()) :] == 0)  # padding

        def f(nodes, glob):
            lo = model.apply(params, g._replace(nodes=nodes, globals=glob))
            return jnp.sum(jnp.where(valid, lo, 0.0))

        gn, gg = jax.jit(jax.grad(f, argnums=(0, 1)))(g.nodes, g.globals)
        np.testing.assert_allclose(out["node"], g.nodes * gn, rtol=0, atol=1e-10)
        np.testing.assert_allclose(out["globals"], g.globals * gg, rtol=0, atol=1e-10)


@pytest.mark.slow  # compiles the batched LRP of a trained-size model: make test only
@pytest.mark.parametrize("name", ["edgeconv", "particlenet"])
def test_batched_relevance_with_biases_conserves_per_event(name):
    ev = random_events(40, n_node_range=(1, 6), n_features=3, n_globals=2, seed=7)
    gs = build_graphs(ev)
    kwargs = {**SMALL[name], "n_blocks": 1} if name == "edgeconv" else SMALL[name]
    model = make_model(name, use_globals=True, **kwargs)
    example = gs.training_batch(np.arange(4), gs.batch_budget(4)).graphs
    params = numpy_params(model, example, seed=2, bias_scale=0.3, dtype=np.float32)  # biases
    pr = BatchedPredictor(model, params, gs, batch_size=16)
    for rule in (make_rule("epsilon", eps=0.01), make_rule("gamma", gamma=0.25)):
        r = relevance(pr, rule)
        np.testing.assert_allclose(r["logit"], pr(), rtol=1e-5, atol=1e-5)
        # float32: rounding only, relative to the size of the terms
        assert np.abs(r["conservation_gap"]).max() < 1e-4 * max(1.0, np.abs(r["logit"]).max())
        assert r["per_feature"].shape == (40, 5) and r["per_constituent"].shape == (len(ev.nodes),)
        assert np.abs(r["absorbed"]).max() > 1e-3  # the biases do absorb relevance


class Normed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(nn.LayerNorm(name="norm")(x))[:, 0]


def test_unsupported_layer_is_named():
    x = _x(dtype=np.float32)
    model = Normed()
    params = model.init(jax.random.key(0), x)
    with pytest.raises(UnsupportedLayerError, match="'norm' \\(LayerNorm\\)"):
        lrp(model.apply, params, x, make_rule("epsilon"))


def test_rank_correlations():
    rc = rank_correlations({"a": [1, 2, 3], "b": [10, 20, 30], "c": [3, 2, 1], "d": [1, 1, 1]})
    assert rc["a vs b"] == pytest.approx(1.0) and rc["a vs c"] == pytest.approx(-1.0)
    assert np.isnan(rc["a vs d"])
