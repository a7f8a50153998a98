"""Gradient-cosine influence (a method added as one GradientMap, no kernel touched) against
NumPy cosines of per-event reference gradients, float64 to 1e-9."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hepattr_jax import tracin
from hepattr_jax.cosine import cosine_gradient_map, unit_gradient
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.graphs import build_graphs
from hepattr_jax.models import make_model
from hepattr_jax.per_example import layout_for
from tests.helpers import SMALL_MODEL, init_params

LRS = [1e-3, 4e-4]


def _grads(model, ckpts, gs):
    grad_fn = tracin.single_event_grad_fn(model.apply)
    budget = gs.single_budget()
    events = [
        jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.array([i]), budget))
        for i in range(len(gs))
    ]
    return np.stack(
        [np.stack([np.asarray(grad_fn(ckpts.at(k), e)) for e in events]) for k in range(len(ckpts))]
    )


@pytest.mark.slow  # compile-heavy (float64 matrix, top-k, self-influence): make test runs it
def test_cosine_matrix_top_k_and_self_influence_equal_numpy_float64():
    with jax.enable_x64(True):
        train = build_graphs(random_events(11, n_nodes=np.r_[1:12], seed=1, n_globals=2))
        test = build_graphs(random_events(4, n_nodes=[2, 5, 1, 9], seed=2, n_globals=2))
        model = make_model("edgeconv", use_globals=True, **SMALL_MODEL["edgeconv"])
        ex = jax.tree_util.tree_map(
            lambda x: x[0], train.example_stack(np.arange(1), train.single_budget())
        )
        params = init_params(model, ex.graphs, range(len(LRS)), jnp.float64)
        ckpts = tracin.Checkpoints.from_list(params, LRS)
        layout = layout_for(model, train)
        gm = cosine_gradient_map()
        g_tr, g_te = _grads(model, ckpts, train), _grads(model, ckpts, test)
        u_tr = g_tr / np.linalg.norm(g_tr, axis=2, keepdims=True)
        u_te = g_te / np.linalg.norm(g_te, axis=2, keepdims=True)
        want = np.einsum("k,knp,kmp->nm", np.asarray(LRS), u_tr, u_te)
        m = tracin.influence_matrix(
            layout, ckpts, train, test, chunk_size=4, progress=False, gradient_map=gm
        )
        np.testing.assert_allclose(m, want, rtol=1e-9, atol=1e-15)
        assert np.abs(m).max() <= sum(LRS) * (1 + 1e-12)  # cosines are at most 1
        top = tracin.top_k(
            layout, ckpts, train, test, 3, chunk_size=4, progress=False, gradient_map=gm
        )
        np.testing.assert_array_equal(top.proponents, tracin.top_k_from_matrix(m, 3).proponents)
        si = tracin.self_influence(layout, ckpts, train, progress=False, gradient_map=gm)
        np.testing.assert_allclose(si, sum(LRS), rtol=1e-12)


def test_zero_gradient_maps_to_zero():
    out = unit_gradient(None, {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))})
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(out))
    assert not any(bool(jnp.isnan(x).any()) for x in jax.tree_util.tree_leaves(out))
