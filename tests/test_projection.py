"""Keyed block projections: equal to the dense matrix built from the same keys, reproducible,
and norm-preserving within the Johnson-Lindenstrauss bound."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from hepattr_jax.projection import (
    Projector,
    dense_projection_matrix,
    project_batch,
    project_tree,
)

TREE = {
    "a": {"kernel": jnp.arange(7 * 5, dtype=jnp.float32).reshape(7, 5) / 10, "bias": jnp.ones(5)},
    "b": jnp.linspace(-1, 1, 23, dtype=jnp.float32),
}


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("block_rows", [4, 1000])  # many blocks per leaf; one per leaf
def test_blockwise_projection_equals_dense_reference(kind, block_rows):
    with jax.enable_x64(True):
        tree = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), TREE)
        proj = Projector(proj_dim=9, kind=kind, seed=3, block_rows=block_rows)
        r = dense_projection_matrix(proj, tree)
        flat = ravel_pytree(tree)[0]
        assert r.shape == (flat.shape[0], 9)
        np.testing.assert_allclose(project_tree(proj, tree), flat @ r, rtol=1e-12)
        batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, -2 * x, x**2]), tree)
        flats = jax.vmap(lambda t: ravel_pytree(t)[0])(batch)
        np.testing.assert_allclose(project_batch(proj, batch), flats @ r, rtol=1e-12)
        np.testing.assert_allclose(
            jax.vmap(lambda t: project_tree(proj, t))(batch), flats @ r, rtol=1e-12
        )


def test_same_key_same_matrix_other_key_other_matrix():
    p = Projector(proj_dim=8, seed=1, block_rows=10)
    a = dense_projection_matrix(p, TREE)
    np.testing.assert_array_equal(
        a, dense_projection_matrix(Projector(8, seed=1, block_rows=10), TREE)
    )
    assert not np.allclose(a, dense_projection_matrix(Projector(8, seed=2, block_rows=10), TREE))
    # Rademacher entries are exactly +-1/sqrt(d).
    np.testing.assert_allclose(np.abs(a), 1 / np.sqrt(8))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_norms_preserved_within_the_jl_bound(kind):
    # For a fixed unit vector, ||g R||^2 is a mean of d unit-variance-ish terms: relative sd
    # sqrt(2/d) (Gaussian) or below (Rademacher). Over 40 independent keys, all within 6 sd.
    d = 256
    g = {"w": jax.random.normal(jax.random.key(0), (3000,))}
    norm2 = float(jnp.vdot(g["w"], g["w"]))
    ratios = np.array(
        [
            float(jnp.sum(project_tree(Projector(d, kind, seed=s), g) ** 2)) / norm2
            for s in range(200)
        ]
    )
    sd = np.sqrt(2 / d)
    assert abs(ratios.mean() - 1) < 4 * sd / np.sqrt(len(ratios))  # unbiased
    assert np.all(np.abs(ratios - 1) < 6 * sd)
    # Inner products too: <gR, hR> ~ <g, h> within the same relative scale of ||g|| ||h||.
    h = {"w": jax.random.normal(jax.random.key(1), (3000,))}
    p = Projector(d, kind, seed=0)
    ip = float(project_tree(p, g) @ project_tree(p, h))
    assert abs(ip - float(g["w"] @ h["w"])) < 6 * sd * norm2


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="kind"):
        Projector(8, kind="sparse")
    with pytest.raises(ValueError, match="proj_dim"):
        Projector(0)


def _small_run(dtype):
    from hepattr_jax import tracin
    from hepattr_jax.data.synthetic import random_events
    from hepattr_jax.graphs import build_graphs
    from hepattr_jax.models import make_model

    gs = build_graphs(random_events(12, n_nodes=np.array([1, 5] * 6), seed=4))  # 2 buckets
    model = make_model("edgeconv", hidden=16, readout_hidden=8)
    ex = jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.arange(1), gs.single_budget()))
    params = [
        jax.tree_util.tree_map(lambda x: x.astype(dtype), model.init(jax.random.key(k), ex.graphs))
        for k in range(2)
    ]
    return gs, model, tracin.Checkpoints.from_list(params, [1e-3, 5e-4])


def test_fused_projected_features_equal_dense_projection_of_exact_gradients():
    from hepattr_jax import tracin
    from hepattr_jax.per_example import grad_kernel, layout_for

    with jax.enable_x64(True):
        gs, model, ckpts = _small_run(jnp.float64)
        layout = layout_for(model, gs)
        proj = Projector(proj_dim=32, kind="gaussian", seed=5, block_rows=300)
        feats = tracin.projected_features(layout, ckpts, gs, proj, chunk_size=4, progress=False)
        r = np.asarray(dense_projection_matrix(proj, ckpts.at(0)))
        for k in range(len(ckpts)):
            exact = np.zeros((len(gs), r.shape[0]))
            for chunk in layout.chunks(gs, 4):
                g = np.asarray(grad_kernel(layout)(ckpts.at(k), chunk.data))
                exact[chunk.positions] = g[: len(chunk.positions)]
            np.testing.assert_allclose(feats[k], exact @ r, rtol=1e-10, atol=1e-14)
        # Projected TracIn from the features: the same sums as from the dense projection.
        si = tracin.self_influence_from_features(feats, ckpts.lrs)
        want = sum(ckpts.lrs[k] * np.sum(feats[k] ** 2, 1) for k in range(2))
        np.testing.assert_allclose(si, want, rtol=1e-12)
        m = tracin.influence_from_features(feats[:, :5], feats[:, 5:], ckpts.lrs)
        np.testing.assert_allclose(
            m[2, 3], sum(ckpts.lrs[k] * feats[k, 2] @ feats[k, 8] for k in range(2)), rtol=1e-12
        )


def test_projected_self_influence_approximates_exact_within_jl_scale():
    from hepattr_jax import tracin
    from hepattr_jax.per_example import layout_for

    gs, model, ckpts = _small_run(jnp.float32)
    layout = layout_for(model, gs)
    exact = tracin.self_influence(layout, ckpts, gs, chunk_size=4, progress=False)
    d = 512
    feats = tracin.projected_features(
        layout, ckpts, gs, Projector(d, seed=1), chunk_size=4, progress=False
    )
    rel = np.abs(tracin.self_influence_from_features(feats, ckpts.lrs) / exact - 1)
    assert np.all(rel < 6 * np.sqrt(2 / d)), rel.max()
