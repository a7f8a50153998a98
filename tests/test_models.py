"""Models: parameter count, permutation invariance, padding invariance, no gradient from padding."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hepattr_jax.data.events import EventSet
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import build_graphs
from hepattr_jax.losses import bce_with_logits, example_loss, mean_loss
from hepattr_jax.models import MODELS, count_params, make_model

ALL = sorted(MODELS)
# make test runs every model; make test-fast keeps edgeconv (static edges, factorised layers) and
# particlenet (the dynamic-kNN family), the others compile longer or repeat edgeconv's structure.
_FAST = ("edgeconv", "particlenet")
SLOW = pytest.mark.slow
# Every model with event-level inputs; without them once (the readout's concatenation is one
# shared helper, _readout_inputs, so one model covers the other branch).
VARIANTS = [("edgeconv", False)] + [
    (m, True) if m in _FAST else pytest.param(m, True, marks=SLOW) for m in ALL
]
MODEL_NAMES = [m if m in _FAST else pytest.param(m, marks=SLOW) for m in ALL]
# Dynamic-kNN models at k = 3, so that the recomputed graphs of these events (1..12 nodes) are
# real neighbour selections rather than every other node.
KWARGS = {"particlenet": dict(k=3), "dynedge": dict(k=3)}


def _init(name, use_globals, gs, batch):
    model = make_model(name, use_globals=use_globals, **KWARGS.get(name, {}))
    return model, jax.jit(model.init)(jax.random.key(1), batch.graphs)


def test_edgeconv_has_46081_parameters():
    ev = random_events(4, seed=0)
    gs = build_graphs(ev)
    _, params = _init("edgeconv", False, gs, gs.training_batch(np.arange(4), gs.batch_budget(4)))
    assert count_params(params) == 46_081


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ConfigError, match="edgeconv"):
        make_model("transformer")
    with pytest.raises(ConfigError, match="hidden_size"):
        make_model("edgeconv", hidden_size=3)


@pytest.mark.parametrize("name,use_globals", VARIANTS)
def test_logits_invariant_under_node_permutation_and_padding(name, use_globals, small_events):
    # One test for both invariances: they share the model's compilations at the tight budget.
    gs = build_graphs(small_events)
    pos = np.arange(len(gs))
    budget = gs.batch_budget(len(gs))
    tight = gs.training_batch(pos, budget)
    model, params = _init(name, use_globals, gs, tight)
    apply = jax.jit(model.apply)  # jitted: op-by-op dispatch of the jet models is slow
    logits = apply(params, tight.graphs)
    ref = logits[:10]

    # Permuting each event's nodes leaves its logit unchanged.
    rng = np.random.default_rng(0)
    perm_lists = []
    for i in range(len(small_events)):
        x = small_events.event_nodes(i)
        perm_lists.append(x[rng.permutation(len(x))])
    permuted = EventSet.from_lists(
        perm_lists,
        small_events.labels,
        small_events.node_names,
        globals=small_events.globals,
        global_names=small_events.global_names,
    )
    gp = build_graphs(permuted)
    logits_p = apply(params, gp.training_batch(np.arange(len(gp)), budget).graphs)
    np.testing.assert_allclose(logits_p[:10], ref, rtol=1e-5, atol=1e-6)

    # Padding leaves the real logits unchanged: a much larger budget (more padding nodes, edges
    # and empty graphs) ...
    big = gs.batch_budget(3 * len(gs))
    loose = apply(params, gs.training_batch(pos, big).graphs)
    np.testing.assert_allclose(loose[:10], ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(loose))
    # ... and each event padded alone in a per-example stack (vmapped), single-node events too.
    stack = gs.example_stack(pos, gs.single_budget(), size=12)
    per = jax.jit(jax.vmap(model.apply, in_axes=(None, 0)))(params, stack.graphs)
    np.testing.assert_allclose(per[:10, 0], ref, rtol=1e-5, atol=1e-6)
    assert np.all(np.isfinite(per))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_contributes_no_gradient(name, small_events):
    gs = build_graphs(small_events)
    pos = np.arange(len(gs))
    model, params = _init(name, True, gs, gs.training_batch(pos, gs.batch_budget(len(gs))))
    grad = jax.jit(jax.grad(functools.partial(mean_loss, model.apply)))
    g_tight = grad(params, gs.training_batch(pos, gs.batch_budget(len(gs))))
    g_loose = grad(params, gs.training_batch(pos, gs.batch_budget(2 * len(gs))))
    # float32: dynedge's sum aggregation/pooling and part's segment softmax reorder sums under
    # padding (~1e-6 absolute; float64 exactness of both: tests/test_jet_models.py).
    atol = 1e-6 if name in ("dynedge", "part") else 1e-7
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol), g_tight, g_loose
    )
    # An all-padding slot of a per-example stack has exactly zero gradient.
    stack = gs.example_stack(pos[:1], gs.single_budget(), size=2)
    empty = jax.tree_util.tree_map(lambda x: x[1], stack)
    g_empty = jax.jit(jax.grad(functools.partial(example_loss, model.apply)))(params, empty)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree_util.tree_leaves(g_empty))


def test_bce_with_logits_matches_the_definition():
    z = jnp.array([-30.0, -2.0, 0.0, 3.0, 40.0])
    y = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
    z64, y64 = np.asarray(z, np.float64), np.asarray(y, np.float64)
    ref = np.logaddexp(0.0, z64) - y64 * z64  # -log sigmoid(z)^y (1 - sigmoid(z))^(1 - y)
    np.testing.assert_allclose(bce_with_logits(z, y), ref, rtol=1e-6)
    # its derivative is sigmoid(z) - y everywhere, z = 0 included (a zero-initialised readout)
    grad = jax.vmap(jax.grad(bce_with_logits))(z, y)
    np.testing.assert_allclose(grad, 1.0 / (1.0 + np.exp(-z64)) - y64, rtol=1e-6, atol=1e-7)
