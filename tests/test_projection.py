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
from tests.helpers import init_params

TREE = {
    "a": {"kernel": jnp.arange(7 * 5, dtype=jnp.float32).reshape(7, 5) / 10, "bias": jnp.ones(5)},
    "b": jnp.linspace(-1, 1, 23, dtype=jnp.float32),
}


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
# many blocks per leaf; one per leaf (compiles its own kernels: make test runs it, test-fast not)
@pytest.mark.parametrize("block_rows", [4, pytest.param(1000, marks=pytest.mark.slow)])
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


def independent_dense_matrix(projector, params) -> np.ndarray:
    """``R`` ``[P, d]`` written here from the documented keying alone (projection.py's
    docstring), without ``Projector.block``: for leaf ``l`` (tree_leaves order) and row block
    ``b`` of ``block_rows`` rows, key ``fold_in(fold_in(key(seed), l), b)``; Gaussian: standard
    normal draws ``[rows, d]``; Rademacher: ``bits`` words ``[rows, ceil(d / 32)]``, bit ``j`` of
    word ``w`` giving column ``32 w + j`` (unpacked here with NumPy's little-endian bit order),
    sign ``2 bit - 1``; all scaled by ``1 / sqrt(d)``."""
    d, rows_per_block = projector.proj_dim, projector.block_rows
    out = []
    for leaf_index, leaf in enumerate(jax.tree_util.tree_leaves(params)):
        n = int(np.prod(leaf.shape))
        for b in range(-(-n // rows_per_block)):
            rows = min(rows_per_block, n - b * rows_per_block)
            key = jax.random.key(projector.seed)
            key = jax.random.fold_in(jax.random.fold_in(key, leaf_index), b)
            if projector.kind == "gaussian":
                block = np.asarray(jax.random.normal(key, (rows, d), leaf.dtype), np.float64)
            else:
                words = np.asarray(jax.random.bits(key, (rows, -(-d // 32)), jnp.uint32))
                le_bytes = words.astype("<u4").view(np.uint8).reshape(rows, -1)
                bits = np.unpackbits(le_bytes, axis=1, bitorder="little")[:, :d]
                block = 2.0 * bits - 1.0
            out.append(block * (1.0 / np.sqrt(d)))  # scale = 1 / sqrt(d), as documented
    return np.concatenate(out, axis=0)


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("block_rows,d", [(4, 9), (10, 40), (1000, 33)])
def test_projection_equals_a_matrix_generated_independently_from_the_documented_keys(
    kind, block_rows, d
):
    """d = 9, 33, 40: one partial 32-bit word, and words split across the column range."""
    with jax.enable_x64(True):
        tree = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), TREE)
        proj = Projector(proj_dim=d, kind=kind, seed=7, block_rows=block_rows)
        ref = independent_dense_matrix(proj, tree)
        flat = np.asarray(ravel_pytree(tree)[0])
        assert ref.shape == (flat.shape[0], d)
        # The library's dense matrix and its block generator: exactly the same numbers.
        np.testing.assert_array_equal(np.asarray(dense_projection_matrix(proj, tree)), ref)
        np.testing.assert_allclose(project_tree(proj, tree), flat @ ref, rtol=1e-12)
        batch = jax.tree_util.tree_map(lambda x: jnp.stack([x, -2 * x, x**2]), tree)
        flats = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(batch))
        np.testing.assert_allclose(project_batch(proj, batch), flats @ ref, rtol=1e-12)


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
    """||g R||^2 / ||g||^2 over 200 independent keys, against its exact distribution's scale.

    With ``R = S / sqrt(d)``, ``||g R||^2 = (1/d) sum_j (g . s_j)^2``: a mean of d i.i.d. terms
    of mean ``||g||^2``, so the ratio has mean 1 and standard deviation ``sd = sqrt(2/d)``
    (Gaussian) or ``sqrt(2/d (1 - sum g^4 / ||g||^4))`` (Rademacher), and is nearly normal at
    d = 256. Stated bounds (each about 3-4 standard errors of the statistic, 200 keys): the mean
    within ``4 sd / sqrt(200)`` of 1; the sample standard deviation within 20 % of ``sd`` (its
    standard error is ~5 %); the median of ``|ratio - 1|`` within [0.5, 0.85] ``sd`` (0.674 sd
    for a normal; standard error ~0.056 sd); every key within 4.5 ``sd``.
    """
    d, n_keys = 256, 200
    g = {"w": jax.random.normal(jax.random.key(0), (3000,))}
    w = np.asarray(g["w"], np.float64)
    norm2 = float(w @ w)
    ratios = np.array(
        [
            float(jnp.sum(project_tree(Projector(d, kind, seed=s), g) ** 2)) / norm2
            for s in range(n_keys)
        ]
    )
    kurt = 0.0 if kind == "gaussian" else np.sum(w**4) / norm2**2
    sd = np.sqrt(2 / d * (1 - kurt))
    assert abs(ratios.mean() - 1) < 4 * sd / np.sqrt(n_keys)  # unbiased
    assert 0.8 * sd < ratios.std(ddof=1) < 1.2 * sd
    assert 0.5 * sd < np.median(np.abs(ratios - 1)) < 0.85 * sd
    assert np.all(np.abs(ratios - 1) < 4.5 * sd)
    # Inner products: <gR, hR> - <g, h> has sd sqrt((||g||^2 ||h||^2 + <g, h>^2) / d) for a
    # Gaussian R (no larger for Rademacher); over 50 keys, each within 4.5 of it, and the
    # median error within [0.5, 0.85] of it as above (loosened to [0.4, 0.95]: 50 keys).
    h = {"w": jax.random.normal(jax.random.key(1), (3000,))}
    v = np.asarray(h["w"], np.float64)
    ip_sd = np.sqrt((norm2 * (v @ v) + (w @ v) ** 2) / d)
    err = np.array(
        [
            float(project_tree(p, g) @ project_tree(p, h)) - w @ v
            for p in (Projector(d, kind, seed=s) for s in range(50))
        ]
    )
    assert np.all(np.abs(err) < 4.5 * ip_sd)
    assert 0.4 * ip_sd < np.median(np.abs(err)) < 0.95 * ip_sd


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
    params = init_params(model, ex.graphs, range(2), dtype)
    return gs, model, tracin.Checkpoints.from_list(params, [1e-3, 5e-4])


@pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
@pytest.mark.parametrize("structure", ["dense", "kronecker"])
def test_fused_projected_features_equal_dense_projection_of_exact_gradients(structure):
    """Both projections through the streaming driver (buckets, chunk tails, K checkpoints) equal
    the exact per-event gradients times the projection's whole matrix."""
    from hepattr_jax import tracin
    from hepattr_jax.capture import discover
    from hepattr_jax.per_example import grad_kernel, graph_level_layers, layout_for
    from hepattr_jax.projection import KroneckerProjector, kronecker_projection_matrix

    with jax.enable_x64(True):
        gs, model, ckpts = _small_run(jnp.float64)
        layout = layout_for(model, gs)
        if structure == "dense":
            proj = Projector(proj_dim=32, kind="gaussian", seed=5, block_rows=300)
            r = np.asarray(dense_projection_matrix(proj, ckpts.at(0)))
        else:
            # Calibrated on these events (the dimensions split by layer energy), as scoring does.
            proj = tracin.calibrate_projector(
                layout, ckpts, gs, KroneckerProjector(proj_dim=32, kind="gaussian", seed=5)
            )
            assert proj.weights is not None
            ex = jax.tree_util.tree_map(lambda x: x[0], next(iter(layout.chunks(gs, 4))).data)
            spec = discover(layout.loss_one, ckpts.at(0), ex)
            graph_level = graph_level_layers(layout, layout.loss_one, ckpts.at(0), ex)
            assert {k[1] for k in graph_level} == {"readout_0", "readout_1"}
            r = kronecker_projection_matrix(proj, spec, ckpts.at(0), graph_level)
        feats = tracin.projected_features(layout, ckpts, gs, proj, chunk_size=4, progress=False)
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


@pytest.mark.slow  # long (compiles a lot): make test runs it, make test-fast not
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
