"""Adam-aware TracIn against NumPy: ``sum_k lr_k g(z')^T P_k g(z)`` with
``P_k = diag(1 / (sqrt(v_k) + eps))`` built from per-event reference gradients (one jitted
single-event gradient at a time), float64 to 1e-9; the bias-corrected second moment against
Adam's update written out in NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from hepattr_jax import tracin
from hepattr_jax.adam import adam_gradient_map
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import CheckpointError, ConfigError
from hepattr_jax.graphs import build_graphs
from hepattr_jax.models import make_model
from hepattr_jax.per_example import layout_for
from hepattr_jax.projection import KroneckerProjector, Projector, dense_projection_matrix
from hepattr_jax.train import ADAM_B1, ADAM_B2, ADAM_EPS, adam_second_moment
from tests.helpers import SMALL_MODEL, init_params

LRS = [1e-3, 4e-4]


def _setup(seed=0, dtype=jnp.float64):
    ev = random_events(14, n_nodes=np.r_[1:8, 1:8], seed=seed, n_globals=2)
    gs = build_graphs(ev, "fully_connected")
    model = make_model("edgeconv", use_globals=True, **SMALL_MODEL["edgeconv"])
    budget = gs.single_budget()
    ex = jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.arange(1), budget))
    params = init_params(model, ex.graphs, [seed + k for k in range(len(LRS))], dtype)
    moments = []
    rng = np.random.default_rng(seed)
    for p in params:
        # second moments spanning the scales a trained net has (1e-12 .. 1e-2)
        moments.append(jax.tree_util.tree_map(lambda x: 10.0 ** rng.uniform(-12, -2, x.shape), p))
    ckpts = tracin.Checkpoints.from_list(params, LRS, second_moments=moments)
    return gs, model, ckpts


def _reference(model, ckpts, gs):
    """``[K, N, P]`` flat reference gradients and ``[K, P]`` preconditioner diagonals."""
    grad_fn = tracin.single_event_grad_fn(model.apply)
    budget = gs.single_budget()
    grads, precond = [], []
    for k in range(len(ckpts)):
        events = [
            jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.array([i]), budget))
            for i in range(len(gs))
        ]
        grads.append(np.stack([np.asarray(grad_fn(ckpts.at(k), e)) for e in events]))
        v_k = jax.tree_util.tree_map(lambda x, k=k: x[k], ckpts.second_moments)
        v = np.asarray(ravel_pytree(v_k)[0])
        precond.append(1.0 / (np.sqrt(v) + ADAM_EPS))
    return np.stack(grads), np.stack(precond)


def _rel(a, b):
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-300)


@pytest.mark.slow  # compile-heavy (float64 matrix, top-k, features): make test runs it
def test_adam_self_influence_matrix_top_k_and_features_float64_equal_numpy():
    with jax.enable_x64(True):
        gs, model, ckpts = _setup()
        test = build_graphs(random_events(5, n_nodes=[1, 3, 5, 6, 7], seed=9, n_globals=2))
        layout = layout_for(model, gs)
        gm = adam_gradient_map(ckpts)
        g_tr, p = _reference(model, ckpts, gs)
        g_te, _ = _reference(model, ckpts, test)
        lrs = np.asarray(LRS)

        si = tracin.self_influence(layout, ckpts, gs, chunk_size=4, progress=False, gradient_map=gm)
        ref_si = np.einsum("k,knp,kp->n", lrs, g_tr**2, p)
        assert _rel(si, ref_si).max() < 1e-9
        # it is not plain TracIn: the preconditioner reweights every coordinate
        plain = tracin.self_influence(layout, ckpts, gs, chunk_size=4, progress=False)
        assert _rel(plain, ref_si).min() > 1e-2

        m = tracin.influence_matrix(
            layout, ckpts, gs, test, chunk_size=4, test_block=3, progress=False, gradient_map=gm
        )
        ref_m = np.einsum("k,knp,kp,kmp->nm", lrs, g_tr, p, g_te)
        np.testing.assert_allclose(m, ref_m, rtol=1e-9, atol=1e-12 * np.abs(ref_m).max())

        top = tracin.top_k(
            layout, ckpts, gs, test, 3, chunk_size=4, progress=False, gradient_map=gm
        )
        want = tracin.top_k_from_matrix(m, 3)
        np.testing.assert_array_equal(top.proponents, want.proponents)
        np.testing.assert_array_equal(top.opponents, want.opponents)

        proj = Projector(16, seed=3)
        feats = tracin.projected_features(
            layout, ckpts, gs, proj, chunk_size=4, progress=False, gradient_map=gm
        )
        r = np.asarray(dense_projection_matrix(proj, ckpts.at(0)))
        ref_f = np.einsum("knp,kp,pd->knd", g_tr, np.sqrt(p), r)
        np.testing.assert_allclose(feats, ref_f, rtol=1e-9, atol=1e-12 * np.abs(ref_f).max())


@pytest.mark.slow  # make test runs it, make test-fast not
def test_refusals_name_the_problem():
    gs, model, ckpts = _setup(dtype=jnp.float32)
    layout = layout_for(model, gs)
    gm = adam_gradient_map(ckpts)
    with pytest.raises(ConfigError, match="capture"):
        tracin.self_influence(layout, ckpts, gs, method="capture", gradient_map=gm, progress=False)
    with pytest.raises(ConfigError, match="Kronecker"):
        tracin.projected_features(
            layout, ckpts, gs, KroneckerProjector(8), gradient_map=gm, progress=False
        )
    bare = tracin.Checkpoints(ckpts.params, ckpts.lrs)
    with pytest.raises(ConfigError, match="second moment"):
        adam_gradient_map(bare)
    # select keeps each checkpoint's own second moment
    last = ckpts.select([1])
    v1 = jax.tree_util.tree_map(lambda x: x[1:], ckpts.second_moments)
    chex_equal = jax.tree_util.tree_map(np.array_equal, last.second_moments, v1)
    assert all(jax.tree_util.tree_leaves(chex_equal))


def test_second_moment_is_adams_bias_corrected_estimate():
    """optax's AdamW state after t steps against the update written out in NumPy."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    schedule = optax.linear_schedule(1e-3, 1e-4, 10)  # a schedule adds a second "count"
    tx = optax.adamw(schedule, b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS, weight_decay=1e-4)
    state = tx.init(params)
    with pytest.raises(CheckpointError, match="no step"):
        adam_second_moment(state, "ckpt 0")
    nu = {k: np.zeros(v.shape) for k, v in params.items()}
    for t in range(1, 6):
        g = {k: rng.normal(size=v.shape) for k, v in params.items()}
        updates, state = tx.update(jax.tree_util.tree_map(jnp.asarray, g), state, params)
        params = optax.apply_updates(params, updates)
        nu = {k: ADAM_B2 * nu[k] + (1 - ADAM_B2) * g[k] ** 2 for k in nu}
        got = adam_second_moment(state)
        for k in nu:
            np.testing.assert_allclose(got[k], nu[k] / (1 - ADAM_B2**t), rtol=1e-5)
    with pytest.raises(CheckpointError, match="0 Adam states"):
        adam_second_moment(optax.sgd(1e-3).init(params), "ckpt 3")
