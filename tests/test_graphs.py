"""Edges, padding budgets and the two batch layouts; the jraph functions the project relies on."""

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import DataError
from hepattr_jax.graphs import Budget, build_graphs, delta_phi, fully_connected_edges, knn_edges


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_fully_connected_edges_are_all_ordered_pairs(n):
    s, r = fully_connected_edges(n)
    pairs = set(zip(s.tolist(), r.tolist(), strict=True))
    assert pairs == {(i, j) for i in range(n) for j in range(n) if i != j}
    assert len(s) == n * (n - 1)


def test_delta_phi_wraps():
    assert abs(delta_phi(3.1, -3.1) - (6.2 - 2 * np.pi)) < 1e-12
    assert abs(delta_phi(-3.1, 3.1) - (2 * np.pi - 6.2)) < 1e-12


def test_knn_uses_wrapped_phi():
    # Node 0 at phi=3.1 and node 1 at phi=-3.1 are 0.083 apart through the wrap; node 2 is 1 away.
    eta = np.array([0.0, 0.0, 0.0])
    phi = np.array([3.1, -3.1, 2.1])
    s, r = knn_edges(eta, phi, k=1)
    nearest = dict(zip(r.tolist(), s.tolist(), strict=True))
    assert nearest == {0: 1, 1: 0, 2: 0}


def test_knn_clips_k_and_handles_single_node():
    s, r = knn_edges(np.zeros(1), np.zeros(1), k=3)
    assert len(s) == 0
    s, r = knn_edges(np.arange(3.0), np.zeros(3), k=5)
    assert len(s) == 6 and np.all(s != r)


def test_training_batch_layout(small_events):
    gs = build_graphs(small_events)
    pos = np.array([0, 4, 2])
    budget = gs.batch_budget(4)
    b = gs.training_batch(pos, budget)
    g = b.graphs
    assert g.nodes.shape == (budget.n_node, small_events.n_features)
    assert g.n_node.sum() == budget.n_node and g.n_edge.sum() == budget.n_edge
    assert b.graph_mask.tolist() == [True, True, True, False, False]
    n_real = int(small_events.n_node[pos].sum())
    e_real = int(gs.n_edge[pos].sum())
    # Padding edges only touch padding nodes.
    assert np.all(g.senders[e_real:] >= n_real) and np.all(g.receivers[e_real:] >= n_real)
    # The real part unbatches into exactly the events' own graphs.
    real = jraph.GraphsTuple(
        nodes=g.nodes[:n_real],
        edges=None,
        senders=g.senders[:e_real],
        receivers=g.receivers[:e_real],
        globals=g.globals[:3],
        n_node=g.n_node[:3],
        n_edge=g.n_edge[:3],
    )
    for p, one in zip(pos, jraph.unbatch_np(real), strict=True):
        np.testing.assert_array_equal(one.nodes, small_events.event_nodes(p))
        s, r = fully_connected_edges(int(small_events.n_node[p]))
        np.testing.assert_array_equal(one.senders, s)
        np.testing.assert_array_equal(one.receivers, r)
    np.testing.assert_array_equal(b.labels[:3], small_events.labels[pos])


def test_example_stack_layout(small_events):
    gs = build_graphs(small_events)
    budget = gs.single_budget()
    assert budget.n_node == 13 and budget.n_edge == 132
    st = gs.example_stack(np.array([0, 4]), budget, size=3)
    assert st.graphs.nodes.shape == (3, 13, small_events.n_features)
    assert st.graph_mask.tolist() == [[True, False], [True, False], [False, False]]
    assert st.graphs.n_node.tolist() == [[1, 12], [12, 1], [0, 13]]
    np.testing.assert_array_equal(st.graphs.nodes[1, :12], small_events.event_nodes(4))
    assert np.all(st.graphs.nodes[1, 12:] == 0)
    # Single-node event: every edge slot is padding and points at its padding node 1.
    assert np.all(st.graphs.senders[0] == 1) and np.all(st.graphs.receivers[0] == 1)


def test_budget_overflow_names_the_event(small_events):
    gs = build_graphs(small_events)
    with pytest.raises(DataError, match="event id 4"):
        # room for 5 nodes (+ the padding node) and every edge of the set: event 4 has 12 nodes
        gs.example_stack(np.array([4]), Budget(n_node=6, n_edge=int(gs.n_edge.max()), n_graph=2))


def test_select_keeps_ids_and_edges(small_events):
    gs = build_graphs(small_events)
    sub = gs.select(np.array([4, 1]))
    assert sub.events.ids.tolist() == [4, 1]
    np.testing.assert_array_equal(sub.n_edge, gs.n_edge[[4, 1]])
    np.testing.assert_array_equal(sub.events.event_nodes(0), small_events.event_nodes(4))


def test_knn_graphs_need_eta_phi():
    ev = EventSet.from_lists([np.zeros((3, 2))], [1], ["a", "b"])
    with pytest.raises(DataError, match="eta, phi"):
        build_graphs(ev, "knn:2")


# --- The jraph functions the project relies on, so a JAX or jraph release that breaks one shows.
def test_jraph_segment_ops_match_numpy():
    data = jnp.array([[1.0], [2.0], [4.0], [-1.0]])
    seg = jnp.array([0, 0, 2, 2])
    np.testing.assert_allclose(jraph.segment_sum(data, seg, 3)[:, 0], [3, 0, 3])
    np.testing.assert_allclose(jraph.segment_mean(data, seg, 3)[:, 0], [1.5, 0, 1.5])
    np.testing.assert_allclose(jraph.segment_max(data, seg, 3)[[0, 2], 0], [2, 4])
    assert jraph.segment_max(data, seg, 3)[1, 0] == -jnp.inf  # why models mask empty max pools


def test_jraph_graph_network_and_batch_work_with_current_jax():
    g = jraph.GraphsTuple(
        nodes=jnp.ones((3, 2)),
        edges=jnp.ones((2, 1)),
        senders=jnp.array([0, 1]),
        receivers=jnp.array([1, 2]),
        globals=jnp.zeros((1, 1)),
        n_node=jnp.array([3]),
        n_edge=jnp.array([2]),
    )
    net = jraph.GraphNetwork(
        update_edge_fn=lambda e, s, r, g: e + s.sum(-1, keepdims=True),
        update_node_fn=lambda n, s, r, g: n + r.sum(-1, keepdims=True),
    )
    out = jax.jit(net)(g)
    np.testing.assert_allclose(out.edges[:, 0], [3.0, 3.0])
    np.testing.assert_allclose(out.nodes[:, 0], [1.0, 4.0, 4.0])
    both = jraph.batch([g, g])
    assert both.n_node.tolist() == [3, 3]
    padded = jraph.pad_with_graphs(jax.tree_util.tree_map(np.asarray, g), 5, 4, 3)
    assert jraph.get_graph_padding_mask(padded).tolist() == [True, False, False]
