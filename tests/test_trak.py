"""TRAK: the streamed estimator equals the plain-inverse formula; featurisation equals the dense
projection of exact margin gradients, for the dense and the generic layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hepattr_jax import trak
from hepattr_jax.errors import ConfigError
from hepattr_jax.projection import Projector, dense_projection_matrix
from tests.helpers import init_params


def _random_features(e=2, n=13, m=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(e, n, d)),
        rng.normal(scale=3.0, size=(e, n)),
        rng.normal(size=(e, m, d)),
    )


@pytest.mark.parametrize("damping", [1e-3, 0.5])
@pytest.mark.parametrize("block", [5, 100])  # several row blocks; one
def test_streamed_scores_equal_reference(damping, block):
    tf, tm, xf = _random_features()
    want = trak.trak_scores_reference(tf, tm, xf, damping=damping)
    got = trak.trak_scores(tf, tm, xf, damping=damping, block=block)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    si = trak.trak_self_influence(tf, tm, damping=damping, block=block)
    np.testing.assert_allclose(
        si, np.diag(trak.trak_scores_reference(tf, tm, tf, damping=damping)), rtol=1e-10
    )


def test_single_member_closed_form():
    # E = 1, d = 1: tau(x, z) = phi(x) phi(z) / (sum phi^2 (1 + damping)) * (1 - sigmoid(m)).
    phi = np.array([[[1.0], [2.0], [-1.0]]])
    m = np.array([[0.0, 100.0, -100.0]])
    x = np.array([[[3.0]]])
    got = trak.trak_scores(phi, m, x, damping=0.5)[:, 0]
    want = 3.0 * phi[0, :, 0] / (6.0 * 1.5) * np.array([0.5, 0.0, 1.0])
    np.testing.assert_allclose(got, want, atol=1e-15)


def test_bad_shapes_and_values_are_refused():
    tf, tm, xf = _random_features()
    with pytest.raises(ConfigError, match="margins"):
        trak.trak_scores(tf, tm[:, :3], xf)
    with pytest.raises(ConfigError, match="test features"):
        trak.trak_scores(tf, tm, xf[:1])
    tf[0, 2, 1] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        trak.trak_self_influence(tf, tm)


def _small_run(dtype, model_name="edgeconv"):
    from hepattr_jax import tracin
    from hepattr_jax.data.synthetic import random_events
    from hepattr_jax.graphs import build_graphs
    from hepattr_jax.models import make_model

    gs = build_graphs(random_events(12, n_nodes=np.array([1, 5] * 6), seed=4))  # 2 buckets
    kw = {"hidden": 16, "readout_hidden": 8} if model_name == "edgeconv" else {"hidden": 8}
    model = make_model(model_name, **kw)
    ex = jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.arange(1), gs.single_budget()))
    params = init_params(model, ex.graphs, range(2), dtype)
    return gs, model, tracin.Checkpoints.from_list(params, [1e-3, 5e-4])


@pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
@pytest.mark.parametrize("prefer_neighbour", [True, False])
def test_features_equal_dense_projection_of_exact_margin_gradients(prefer_neighbour):
    from hepattr_jax.graphs import unstack_example
    from hepattr_jax.per_example import layout_for

    with jax.enable_x64(True):
        gs, model, ckpts = _small_run(jnp.float64)
        layout = layout_for(model, gs, prefer_neighbour=prefer_neighbour)
        proj = Projector(proj_dim=16, kind="gaussian", seed=2, block_rows=300)
        feats, margins = trak.featurize(layout, ckpts, gs, proj, chunk_size=4, progress=False)
        r = np.asarray(dense_projection_matrix(proj, ckpts.at(0)))
        stack = gs.example_stack(np.arange(len(gs)), gs.single_budget())
        y = 2.0 * gs.events.labels - 1.0
        # The flax model itself, one event at a time (one compile: all share one budget).
        value_grad = jax.jit(
            jax.value_and_grad(lambda p, ex, yi: yi * model.apply(p, ex.graphs)[0])
        )
        for k in range(len(ckpts)):
            for i in range(len(gs)):
                value, g = value_grad(ckpts.at(k), unstack_example(stack, i), y[i])
                np.testing.assert_allclose(margins[k, i], value, rtol=1e-10)
                np.testing.assert_allclose(
                    feats[k, i], ravel_pytree(g)[0] @ r, rtol=1e-9, atol=1e-12
                )
