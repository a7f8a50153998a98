"""EK-FAC influence (hepattr_jax.ekfac) against closed forms written here in NumPy, float64:

* one dense layer after pooling, at a point where every event has the same Fisher weight (a zero
  readout: margin 0, c = 1/4): EK-FAC *is* the exact Gauss-Newton matrix, so its influence
  equals ``g'^T (G + lambda I)^{-1} g`` by a direct solve with ``G = E_g[c J_g J_g^T]``;
* a two-layer model at a random point: per layer the dense EK-FAC matrix
  ``(Q_A x Q_S) diag(lambda*) (Q_A x Q_S)^T`` built with ``np.kron`` from the factors'
  eigenvectors and the per-graph logit gradients, the scores by ``np.linalg.solve`` (the
  inverse-Hessian-vector product against a direct solve), and the corrected eigenvalues equal to
  the exact Gauss-Newton block's diagonal in that basis.

Per-graph gradients come from ``jax.grad`` of the model on each event padded alone.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from flax import traverse_util

from hepattr_jax import tracin
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.ekfac import EKFACFactors, ekfac_checkpoints, ekfac_gradient_map, fit
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import build_graphs
from hepattr_jax.per_example import GraphLayout
from tests.helpers import init_params

SIZES = np.array([1, 2, 5, 9, 3, 1, 4, 6, 2, 7])
DAMPING = 0.1


def _pool(graphs, h):
    n, g = h.shape[0], graphs.n_node.shape[0]
    gidx = jnp.repeat(jnp.arange(g), graphs.n_node, total_repeat_length=n)
    return jraph.segment_sum(h, gidx, g) / jnp.maximum(graphs.n_node, 1)[:, None]


class PooledLinear(nn.Module):
    """Mean of the node features, one Dense to the logit (logistic regression on the pool)."""

    zero: bool = True

    @nn.compact
    def __call__(self, graphs):
        init = nn.initializers.zeros if self.zero else nn.initializers.lecun_normal()
        return nn.Dense(1, kernel_init=init, name="out")(_pool(graphs, graphs.nodes))[:, 0]


class MeanPoolMLP(nn.Module):
    """tanh(Dense) on nodes, mean over each graph's nodes, Dense."""

    @nn.compact
    def __call__(self, graphs):
        h = jnp.tanh(nn.Dense(3, name="node")(graphs.nodes))
        return nn.Dense(1, name="out")(_pool(graphs, h))[:, 0]


LAYERS = {"out": ("params/out/kernel", "params/out/bias")}
LAYERS2 = {**{"node": ("params/node/kernel", "params/node/bias")}, **LAYERS}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _setup(model, seed=3, dtype=jnp.float64):
    ev = random_events(len(SIZES), n_nodes=SIZES, seed=seed, n_features=4)
    gs = build_graphs(ev, "knn:2")
    budget = gs.single_budget()
    events = [
        jax.tree_util.tree_map(lambda x: x[0], gs.example_stack(np.array([i]), budget))
        for i in range(len(gs))
    ]
    params = jax.tree_util.tree_map(
        lambda x: x.astype(dtype), model.init(jax.random.key(seed), events[0].graphs)
    )
    return ev, gs, events, params


def _per_graph(model, params, events, labels, layers):
    """Per event: Fisher weight c, and per layer the logit-margin gradient J and loss gradient g
    as ``[m, p]`` (kernel rows, then the bias row)."""
    c, jac, grad = [], {n: [] for n in layers}, {n: [] for n in layers}
    for ex, y in zip(events, labels, strict=True):
        z, dz = jax.value_and_grad(lambda p, ex=ex: model.apply(p, ex.graphs)[0])(params)
        z, y = float(z), float(y)
        flat = traverse_util.flatten_dict(dz, sep="/")
        m = (2 * y - 1) * z
        c.append(_sigmoid(m) * _sigmoid(-m))
        for name, (kp, bp) in layers.items():
            g = np.vstack([np.asarray(flat[kp]), np.asarray(flat[bp])[None]])
            jac[name].append((2 * y - 1) * g)
            grad[name].append((_sigmoid(z) - y) * g)
    return (
        np.asarray(c),
        {n: np.stack(v) for n, v in jac.items()},
        {n: np.stack(v) for n, v in grad.items()},
    )


def _library(model, gs, params, factors, test_gs=None):
    layout = GraphLayout(model, max_buckets=3, bucket_overhead=0.0)
    ck = tracin.Checkpoints.from_list([params], [1.0])
    fac = fit(layout, ck, gs, factors=factors, chunk_size=3, progress=False)
    gm = ekfac_gradient_map(fac, damping=DAMPING, dtype=jnp.float64)
    ek = ekfac_checkpoints(ck)
    si = tracin.self_influence(layout, ek, gs, chunk_size=3, progress=False, gradient_map=gm)
    test_gs = gs if test_gs is None else test_gs
    mat = tracin.influence_matrix(
        layout, ek, gs, test_gs, chunk_size=3, progress=False, gradient_map=gm
    )
    return fac, si, mat


def test_single_layer_ekfac_is_the_exact_gauss_newton_inverse():
    with jax.enable_x64(True):
        model = PooledLinear(zero=True)
        ev, gs, events, params = _setup(model)
        c, jac, grad = _per_graph(model, params, events, ev.labels, LAYERS)
        np.testing.assert_allclose(c, 0.25)  # margin 0 everywhere: one Fisher weight
        j = jac["out"].reshape(len(c), -1)
        gn = np.einsum("n,ni,nj->ij", c, j, j) / len(c)
        lam = DAMPING * np.trace(gn) / len(gn)
        g = grad["out"].reshape(len(c), -1)
        want = g @ np.linalg.solve(gn + lam * np.eye(len(gn)), g.T)
        for factors in ("reduce", "expand"):
            fac, si, mat = _library(model, gs, params, factors)
            np.testing.assert_allclose(mat, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
            np.testing.assert_allclose(si, np.diag(want), rtol=1e-9)


# Both compile-heavy: make test runs them; make test-fast keeps the single-layer check above.
@pytest.mark.slow
@pytest.mark.parametrize("factors", ["expand", "reduce"])
def test_two_layer_ekfac_equals_its_closed_form_and_a_direct_solve(factors):
    with jax.enable_x64(True):
        model = MeanPoolMLP()
        ev, gs, events, params = _setup(model, seed=5)
        test_ev = random_events(4, n_nodes=[1, 3, 8, 2], seed=11, n_features=4)
        test_gs = build_graphs(test_ev, "knn:2")
        budget = test_gs.single_budget()
        test_events = [
            jax.tree_util.tree_map(lambda x: x[0], test_gs.example_stack(np.array([i]), budget))
            for i in range(len(test_gs))
        ]
        c, jac, grad = _per_graph(model, params, events, ev.labels, LAYERS2)
        _, _, grad_te = _per_graph(model, params, test_events, test_ev.labels, LAYERS2)
        fac, si, mat = _library(model, gs, params, factors, test_gs)
        assert fac.kernels == tuple(kp for kp, _ in LAYERS2.values())
        si_want, mat_want = np.zeros(len(c)), np.zeros((len(c), len(test_gs)))
        for i, name in enumerate(LAYERS2):
            qa, qs = fac.q_a[i][0], fac.q_s[i][0]
            # the eigenbases are those of the statistics' factors (checked in test_kfac)
            rot = np.einsum("am,nab,bp->nmp", qa, jac[name], qs)
            lam_star = np.einsum("n,nmp->mp", c, rot**2) / len(c)
            np.testing.assert_allclose(fac.eigenvalues[i][0], lam_star, rtol=1e-9, atol=1e-300)
            # corrected eigenvalues: the exact Gauss-Newton block's diagonal in that basis
            q = np.kron(qa, qs)
            j = jac[name].reshape(len(c), -1)
            gn = np.einsum("n,ni,nj->ij", c, j, j) / len(c)
            np.testing.assert_allclose(np.diag(q.T @ gn @ q), lam_star.ravel(), rtol=1e-9)
            # the inverse-Hessian-vector products by a direct solve on the dense EK-FAC block
            ek = q @ np.diag(lam_star.ravel()) @ q.T
            lam = DAMPING * lam_star.mean()
            g = grad[name].reshape(len(c), -1)
            g_te = grad_te[name].reshape(len(test_gs), -1)
            ihvp = np.linalg.solve(ek + lam * np.eye(len(ek)), g.T)  # [P_l, N]
            si_want += np.einsum("np,pn->n", g, ihvp)
            mat_want += ihvp.T @ g_te.T
        np.testing.assert_allclose(si, si_want, rtol=1e-9)
        np.testing.assert_allclose(mat, mat_want, rtol=1e-9, atol=1e-12 * np.abs(mat_want).max())
        back = EKFACFactors.from_arrays(fac.to_arrays())
        for a, b in zip(back.eigenvalues + back.q_a, fac.eigenvalues + fac.q_a, strict=True):
            np.testing.assert_array_equal(a, b)


def test_bad_settings_are_refused():
    model = PooledLinear(zero=False)
    ev, gs, events, params = _setup(model, dtype=jnp.float32)
    layout = GraphLayout(model)
    ck = tracin.Checkpoints.from_list([params], [1.0])
    with pytest.raises(ConfigError, match="factors"):
        fit(layout, ck, gs, factors="diagonal", progress=False)
    with pytest.raises(ConfigError, match="fisher"):
        fit(layout, ck, gs, fisher="sampled", progress=False)
    fac = fit(layout, ck, gs, progress=False)
    with pytest.raises(ConfigError, match="damping"):
        ekfac_gradient_map(fac, damping=0.0)


@pytest.mark.slow  # make test runs it, make test-fast not
@pytest.mark.parametrize("name", ["particlenet", "part"])
def test_builtin_models_whitened_gradients_equal_numpy_float64(name):
    """Built-in models with multi-site layers, dynamic kNN (ParticleNet) and parameters no dense
    layer covers (ParT's LayerNorms and class token: their diagonal Fisher): EK-FAC
    self-influence against the whitening written out in NumPy on each event's ``jax.grad``, per
    layer ``sum (Q_A^T G Q_S)^2 / (lambda* + lambda_l)`` and per uncovered leaf
    ``sum g^2 / (F_diag + lambda)``; the eigenvalues are the exact Gauss-Newton diagonal in the
    eigenbasis (per-graph logit gradients)."""
    from hepattr_jax.models import make_model
    from hepattr_jax.per_example import NeighbourLayout, one_example
    from tests.test_kfac import MODELS

    kwargs, graph = MODELS[name]
    with jax.enable_x64(True):
        # three event sizes (one node and no edges among them): the reference below compiles
        # once per size, and a fresh size costs seconds of float64 compilation for ParT
        ev = random_events(9, n_nodes=[1, 3, 6, 3, 6, 1, 6, 3, 6], seed=6, n_globals=2)
        gs = build_graphs(ev, graph)
        model = make_model(name, use_globals=True, **kwargs)
        layout = NeighbourLayout(model)
        ex0 = one_example(layout, gs, 0)
        (params,) = init_params(model, ex0.graph, (2,), jnp.float64)
        ck = tracin.Checkpoints.from_list([params], [1.0])
        fac = fit(layout, ck, gs, chunk_size=4, progress=False)
        if name == "part":
            assert fac.rest, "ParT has parameters no dense layer covers"
        gm = ekfac_gradient_map(fac, damping=DAMPING, dtype=jnp.float64)
        si = tracin.self_influence(
            layout, ekfac_checkpoints(ck), gs, chunk_size=4, progress=False, gradient_map=gm
        )
        layer_damp, rest_damp = fac.damping_values(DAMPING)
        want = np.zeros(len(gs))
        lam_star = [np.zeros_like(e[0]) for e in fac.eigenvalues]

        @jax.jit  # one program per event size (eager mode compiles each operation per size)
        def reference(p, ex):
            return jax.grad(layout.loss_one)(p, ex), jax.value_and_grad(layout.margin_one)(p, ex)

        for i in range(len(gs)):
            g, (m, j) = reference(params, one_example(layout, gs, i))
            g = traverse_util.flatten_dict(g, sep="/")
            j = traverse_util.flatten_dict(j, sep="/")
            m = float(m)
            c = _sigmoid(m) * _sigmoid(-m)
            for li, (kp, bp) in enumerate(zip(fac.kernels, fac.biases, strict=True)):
                qa, qs = fac.q_a[li][0], fac.q_s[li][0]

                def mat(t, kp=kp, bp=bp):
                    k = np.asarray(t[kp])
                    return np.vstack([k, np.asarray(t[bp])[None]]) if bp else k

                r = qa.T @ mat(g) @ qs
                want[i] += np.sum(r**2 / (fac.eigenvalues[li][0] + layer_damp[li][0]))
                lam_star[li] += c * (qa.T @ mat(j) @ qs) ** 2 / len(gs)
            for ri, path in enumerate(fac.rest):
                gr = np.asarray(g[path])
                want[i] += np.sum(gr**2 / (fac.rest_diag[ri][0] + rest_damp[ri][0]))
        # ParT's pair features are computed from the float32 inputs before any float64
        # parameter, so a batched and a single-event evaluation round them differently (1e-8
        # relative between jit and eager on these events); ParticleNet has no such step.
        rtol = 1e-6 if name == "part" else 1e-9
        for li in range(len(fac.kernels)):
            # atol: directions with no curvature at all (the mean direction into a LayerNorm)
            # hold rounding noise of 1e-34 against entries of 1e-4
            scale = np.abs(lam_star[li]).max()
            np.testing.assert_allclose(
                fac.eigenvalues[li][0], lam_star[li], rtol=rtol, atol=1e-15 * scale
            )
        np.testing.assert_allclose(si, want, rtol=rtol)
