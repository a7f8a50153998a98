"""EventSet validation, id-stable splits and normalisation fitted on train only."""

import dataclasses

import numpy as np
import pytest

from hepattr_jax.data.events import EventSet, Normalizer, split_by_id
from hepattr_jax.data.synthetic import random_events
from hepattr_jax.errors import DataError


def _ev(nodes=None, labels=(0, 1), **kw):
    nodes = nodes if nodes is not None else [np.ones((2, 3)), np.ones((3, 3))]
    return EventSet.from_lists(
        nodes, labels, ["pt", "eta", "phi"], ids=[10, 11], source="toy.parquet", **kw
    )


@pytest.mark.parametrize(
    "nodes,labels,pattern",
    [
        (
            [np.ones((2, 3)), np.array([[1.0, np.nan, 0.0]])],
            (0, 1),
            r"toy.parquet: event id 11: node feature 'eta' of object 0 is nan",
        ),
        ([np.ones((2, 3)), np.array([[np.inf, 0.0, 0.0]])], (0, 1), r"event id 11.*'pt'.*inf"),
        ([np.ones((2, 3)), np.zeros((0, 3))], (0, 1), r"event id 11 has no objects"),
        ([np.ones((2, 3)), np.ones((2, 4))], (0, 1), r"event id 11: 4 node features, expected 3"),
        ([np.ones((2, 3)), np.ones((2, 3))], (0, 2), r"event id 11: field 'label' is 2"),
    ],
)
def test_bad_events_name_the_file_event_and_field(nodes, labels, pattern):
    with pytest.raises(DataError, match=pattern):
        _ev(nodes, labels)


def test_bad_event_level_input_is_named():
    with pytest.raises(DataError, match=r"event id 10: event-level input 'met' is nan"):
        _ev(globals=np.array([[np.nan], [1.0]]), global_names=["met"])


def test_duplicate_ids_are_refused():
    ev = _ev()
    with pytest.raises(DataError, match="duplicate event ids"):
        dataclasses.replace(ev, ids=np.array([3, 3])).validate()


def test_split_is_stable_under_subsetting_and_disjoint():
    ev = random_events(2000, seed=1)
    full = split_by_id(ev, seed=7)
    ids = {k: set(v.ids.tolist()) for k, v in full.items()}
    assert sum(len(v) for v in ids.values()) == 2000
    assert not (ids["train"] & ids["test"]) and not (ids["train"] & ids["val"])
    assert abs(len(ids["train"]) / 2000 - 0.7) < 0.04  # binomial sd ~0.01
    # Dropping half of the events never moves any remaining event to another split.
    half = ev.select(np.arange(0, 2000, 2))
    for name, part in split_by_id(half, seed=7).items():
        assert set(part.ids.tolist()) <= ids[name]
    assert split_by_id(ev, seed=8)["test"].ids.tolist() != full["test"].ids.tolist()


def test_normaliser_uses_train_statistics_only(tmp_path):
    ev = random_events(300, seed=2, n_globals=1)
    parts = split_by_id(ev, seed=0)
    norm = Normalizer.fit(parts["train"])
    x = parts["train"].nodes.astype(np.float64)
    np.testing.assert_allclose(norm.node_mean, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.node_std, x.std(0), rtol=1e-5)
    t = norm.apply(parts["train"])
    np.testing.assert_allclose(t.nodes.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(t.nodes.std(0), 1, rtol=1e-4)
    norm.save(tmp_path / "n.json")
    again = Normalizer.load(tmp_path / "n.json")
    np.testing.assert_array_equal(again.apply(parts["test"]).nodes, norm.apply(parts["test"]).nodes)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json"):
        Normalizer.load(tmp_path / "bad.json")
    with pytest.raises(DataError, match="missing"):
        Normalizer.load(tmp_path / "nothere.json")


def test_select_and_positions_of():
    ev = random_events(20, seed=4)
    sub = ev.select(np.array([5, 2, 9]))
    assert sub.ids.tolist() == [5, 2, 9]
    for j, i in enumerate([5, 2, 9]):
        np.testing.assert_array_equal(sub.event_nodes(j), ev.event_nodes(i))
    np.testing.assert_array_equal(ev.positions_of(np.array([9, 5])), [9, 5])
    with pytest.raises(DataError, match=r"\[99\]"):
        ev.positions_of(np.array([1, 99]))
    assert ev.fingerprint() != sub.fingerprint()


def test_leading_keeps_each_events_first_objects():
    ev = random_events(20, seed=4)
    cut = ev.leading(5)
    cut.validate()
    assert cut.ids.tolist() == ev.ids.tolist()
    for i in range(len(ev)):  # the loop the vectorised cut must equal
        np.testing.assert_array_equal(cut.event_nodes(i), ev.event_nodes(i)[:5])
    assert cut.leading(100).fingerprint() == cut.fingerprint()
    with pytest.raises(DataError, match="at least one"):
        ev.leading(0)
