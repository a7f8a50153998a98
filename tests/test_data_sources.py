"""Data sources: real quark/gluon jets, the SUSY simulator, Parquet files, the registry."""

from __future__ import annotations

import importlib.util
import logging
import math
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.optimize import minimize
from sklearn.metrics import roc_auc_score

from hepattr_jax.data.parquet import load_parquet, save_parquet
from hepattr_jax.data.qg_jets import default_path, load_qg_jets
from hepattr_jax.data.registry import dataset_names, load_dataset
from hepattr_jax.data.susy_sim import (
    M_CHARGINO,
    M_NEUTRALINO,
    M_W,
    boost,
    mass,
    mt2,
    simulate_susy,
    susy_truth,
    two_body_decay,
)
from hepattr_jax.errors import ConfigError, DataError

# uproot and awkward are required dependencies (tests/conftest.py fails the run without them);
# if a run allows them missing anyway, only the tests that read ROOT files skip.
needs_uproot = pytest.mark.skipif(
    importlib.util.find_spec("uproot") is None or importlib.util.find_spec("awkward") is None,
    reason="uproot/awkward not installed",
)


# ===================================================================== quark / gluon jets
@pytest.fixture(scope="module")
def qg():
    return load_qg_jets()


@pytest.fixture(scope="module")
def raw_tree():
    """The raw branches, as plain Python/NumPy per jet (independent of the loader's arithmetic)."""
    import uproot

    with uproot.open(default_path()) as f:
        return f["tree"].arrays()


@needs_uproot
def test_qg_counts_ids_and_names(qg, raw_tree):
    # Independent count with plain numpy: known flavour and at least one stored track.
    keep = []
    for n in (1, 2):
        pid = np.asarray(raw_tree[f"jet{n}ID"])
        ntrk = np.array([len(c) for c in raw_tree[f"jet{n}TrksChg"].tolist()])
        keep.append((pid != -1) & (ntrk > 0))
    expected_ids = np.flatnonzero(np.stack(keep, axis=1).reshape(-1))  # id = 2 * entry + n - 1
    assert len(qg) == 27_205 == len(expected_ids)
    np.testing.assert_array_equal(qg.ids, expected_ids)
    assert int(qg.labels.sum()) == 14_095  # gluons, 51.8 %
    assert qg.node_names == ("log_pt", "log_e", "pt_frac", "d_eta", "d_phi", "charge")
    assert qg.global_names == ("log_jet_pt", "jet_eta", "log_jet_mass", "chg_mult")
    assert qg.eta_phi == (3, 4)
    assert set(qg.physics) == {
        "jet_pt", "jet_eta", "jet_mass", "chg_mult", "tot_chg", "n_tracks", "parton_id"
    }  # fmt: skip
    assert qg.n_node.min() == 1 and qg.n_node.max() == 6
    np.testing.assert_array_equal(qg.physics["n_tracks"], qg.n_node)
    np.testing.assert_array_equal(qg.labels == 1, qg.physics["parton_id"] == 21)
    assert set(np.unique(qg.physics["parton_id"])) == {1, 2, 3, 4, 5, 21}


@needs_uproot
def test_qg_feature_ranges(qg):
    x = qg.nodes
    assert np.all(x[:, 4] >= -np.pi) and np.all(x[:, 4] < np.pi)  # d_phi wrapped
    assert set(np.unique(x[:, 5])) == {-1.0, 1.0}
    assert np.all(x[:, 2] > 0)  # pt_frac
    assert np.all(qg.physics["jet_mass"] >= 0)
    np.testing.assert_array_equal(qg.globals[:, 3], qg.physics["chg_mult"].astype(np.float32))
    # Stored tracks are a subset of the charged particles.
    assert np.all(qg.physics["chg_mult"] >= qg.physics["n_tracks"])


@needs_uproot
@pytest.mark.parametrize("jet_id", [0, 1, 2 * 6000 + 1, 27_213])
def test_qg_features_match_scalar_reference(qg, raw_tree, jet_id):
    """Per-jet features against a plain-Python computation from the raw branches."""
    entry, n = divmod(jet_id, 2)
    n += 1
    jet = raw_tree[f"jet{n}P4"][entry].tolist()
    jpx, jpy, jpz = (jet["fP"][c] / 1e3 for c in ("fX", "fY", "fZ"))
    je = jet["fE"] / 1e3
    jpt = math.hypot(jpx, jpy)
    jeta, jphi = math.asinh(jpz / jpt), math.atan2(jpy, jpx)
    jm = math.sqrt(max(je**2 - jpx**2 - jpy**2 - jpz**2, 0.0))
    tracks = raw_tree[f"jet{n}TrksP4"][entry].tolist()
    charges = raw_tree[f"jet{n}TrksChg"][entry].tolist()
    rows = []
    for trk, q in zip(tracks, charges, strict=True):
        px, py, pz = (trk["fP"][c] / 1e3 for c in ("fX", "fY", "fZ"))
        e = trk["fE"] / 1e3
        pt = math.hypot(px, py)
        dphi = (math.atan2(py, px) - jphi + math.pi) % (2 * math.pi) - math.pi
        rows.append([math.log(pt), math.log(e), pt / jpt, math.asinh(pz / pt) - jeta, dphi, q])
    pos = qg.positions_of(np.array([jet_id]))[0]
    # float32 storage: relative 1e-6, absolute 1e-6 for values near 0.
    np.testing.assert_allclose(qg.event_nodes(pos), np.array(rows), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        qg.globals[pos],
        [math.log(jpt), jeta, math.log1p(jm), int(raw_tree[f"jet{n}ChgMult"][entry])],
        rtol=1e-6,
    )
    assert qg.labels[pos] == int(raw_tree[f"jet{n}ID"][entry] == 21)


@needs_uproot
def test_qg_charged_multiplicity_auroc(qg):
    # The known benchmark: charged multiplicity alone separates gluons from quarks with AUC ~0.80.
    auc = roc_auc_score(qg.labels, qg.physics["chg_mult"])
    assert 0.75 < auc < 0.85, auc


@needs_uproot
def test_qg_max_jets_is_a_prefix(qg):
    small = load_qg_jets(max_jets=100)
    assert len(small) == 100
    np.testing.assert_array_equal(small.ids, qg.ids[:100])
    assert small.fingerprint() == qg.select(np.arange(100)).fingerprint()


@needs_uproot
def test_qg_logs_dropped_jets(caplog):
    with caplog.at_level(logging.INFO, logger="hepattr_jax.data.qg_jets"):
        load_qg_jets(max_jets=10)
    assert "dropped 4 jets of unknown flavour and 5 more with no stored track" in caplog.text


@needs_uproot
def test_qg_missing_and_corrupt_file(tmp_path):
    missing = tmp_path / "nope.root"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        load_qg_jets(missing)
    corrupt = tmp_path / "corrupt.root"
    corrupt.write_bytes(b"this is not a ROOT file" * 100)
    with pytest.raises(DataError, match=re.escape(str(corrupt))):
        load_qg_jets(corrupt)


@needs_uproot
def test_qg_missing_tree_and_branch(tmp_path):
    import uproot

    path = tmp_path / "partial.root"
    with uproot.recreate(path) as f:
        f["tree"] = {"jet1ID": np.array([1, 21], np.int32)}
        f["other"] = {"x": np.array([1.0])}
    with pytest.raises(DataError, match=r"partial\.root.*no branch 'jet1P4'"):
        load_qg_jets(path)
    path2 = tmp_path / "notree.root"
    with uproot.recreate(path2) as f:
        f["other"] = {"x": np.array([1.0])}
    with pytest.raises(DataError, match=r"notree\.root.*no tree 'tree'"):
        load_qg_jets(path2)


# ===================================================================== SUSY simulator
@pytest.fixture(scope="module")
def susy():
    return simulate_susy(20_000, seed=3)


def test_susy_deterministic():
    a = simulate_susy(2000, seed=7)
    b = simulate_susy(2000, seed=7)
    c = simulate_susy(2000, seed=8)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    for k in a.physics:
        assert a.physics[k].tobytes() == b.physics[k].tobytes()


def test_susy_structure(susy):
    assert susy.node_names == (
        "log_pt", "eta", "phi", "log_e", "charge", "is_lepton", "is_jet", "is_met"
    )  # fmt: skip
    assert susy.global_names == ("log_met", "n_jets")
    assert susy.eta_phi == (1, 2)
    assert set(susy.physics) == {"met", "m_ll", "mt2", "ht", "n_objects"}
    np.testing.assert_array_equal(susy.ids, np.arange(20_000))
    assert int(susy.labels.sum()) == 10_000  # exactly balanced
    assert set(np.unique(susy.n_node)) == {3, 4, 5}
    x = susy.nodes
    starts, ends = susy.offsets[:-1], susy.offsets[1:]
    # Object order: two leptons (opposite charge), the jets, the MET object last.
    np.testing.assert_array_equal(x[starts, 5], 1)
    np.testing.assert_array_equal(x[starts + 1, 5], 1)
    np.testing.assert_array_equal(x[starts, 4] + x[starts + 1, 4], 0)
    np.testing.assert_array_equal(x[ends - 1, 7], 1)
    np.testing.assert_array_equal(x[:, 5:8].sum(axis=1), 1)
    n_jets = np.add.reduceat(x[:, 6], starts)
    np.testing.assert_array_equal(n_jets, susy.globals[:, 1])
    np.testing.assert_array_equal(susy.n_node, 3 + n_jets)
    assert np.all(x[:, 2] >= -np.pi) and np.all(x[:, 2] < np.pi)
    assert np.all(x[starts, 0] >= x[starts + 1, 0])  # leptons ordered by pT


def test_susy_met_balances_visible_objects(susy):
    """MET is minus the vector sum of the (smeared) visible objects."""
    x = susy.nodes.astype(np.float64)
    pt = np.exp(x[:, 0])
    px, py = pt * np.cos(x[:, 2]), pt * np.sin(x[:, 2])
    event = np.repeat(np.arange(len(susy)), susy.n_node)
    sum_x = np.bincount(event, px, minlength=len(susy))
    sum_y = np.bincount(event, py, minlength=len(susy))
    scale = np.bincount(event, pt, minlength=len(susy))
    # float32 features: relative 1e-5 of the scalar pT sum.
    assert np.all(np.hypot(sum_x, sum_y) <= 1e-5 * scale)
    np.testing.assert_allclose(np.exp(susy.globals[:, 0]), susy.physics["met"], rtol=1e-6)


def test_susy_met_separates_classes(susy):
    auc = roc_auc_score(susy.labels, susy.physics["met"])
    assert auc > 0.6, auc
    # Jet multiplicity is the same for both classes by construction: no information.
    assert abs(roc_auc_score(susy.labels, susy.globals[:, 1]) - 0.5) < 0.02


def test_susy_truth_matches_events(susy):
    t = susy_truth(20_000, seed=3)
    np.testing.assert_array_equal(t["labels"], susy.labels)
    lep = t["leptons"]
    eta = np.arcsinh(lep[..., 3] / np.hypot(lep[..., 1], lep[..., 2]))
    starts = susy.offsets[:-1]
    got = np.sort(np.stack([susy.nodes[starts, 1], susy.nodes[starts + 1, 1]], 1), axis=1)
    # Smearing changes pT only, so lepton directions are exact (float32 storage).
    np.testing.assert_allclose(got, np.sort(eta, axis=1), rtol=1e-6, atol=1e-6)


def test_susy_truth_masses():
    t = susy_truth(20_000, seed=5)
    sig = t["labels"] == 1
    m_lnu = mass(t["leptons"] + t["neutrinos"])  # [N, 2]
    # The W peak: Breit-Wigner truncated at +-15 widths has 88.8 % within +-5 GeV.
    assert abs(np.median(m_lnu) - M_W) < 0.3
    frac = np.mean(np.abs(m_lnu - M_W) < 5.0)
    assert 0.86 < frac < 0.91, frac
    # Exact daughter masses through the chain (float64, relative 1e-9).
    np.testing.assert_allclose(mass(t["parents"][sig]), M_CHARGINO, rtol=1e-9)
    np.testing.assert_allclose(mass(t["neutralinos"][sig]), M_NEUTRALINO, rtol=1e-9)
    np.testing.assert_allclose(m_lnu, mass(t["w"]), rtol=1e-9)
    # Four-momentum conservation at every step (absolute 1e-9 GeV on momenta up to ~TeV).
    np.testing.assert_allclose(t["parents"].sum(1), t["pair"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(
        (t["w"] + t["neutralinos"])[sig], t["parents"][sig], rtol=0, atol=1e-9
    )


def test_two_body_decay_conserves_and_keeps_masses():
    rng = np.random.default_rng(0)
    n = 5000
    big_m = rng.uniform(100.0, 1000.0, n)
    p = rng.normal(0.0, 500.0, (n, 3))
    parent = np.concatenate([np.sqrt(big_m**2 + np.sum(p**2, 1))[:, None], p], axis=1)
    m1 = rng.uniform(0.0, 0.5, n) * big_m
    m2 = rng.uniform(0.0, 0.5, n) * big_m
    d1, d2 = two_body_decay(parent, m1, m2, np.random.default_rng(1))
    # float64: sum of daughters equals the parent to 1e-9 GeV (values up to ~2 TeV).
    np.testing.assert_allclose(d1 + d2, parent, rtol=0, atol=1e-9)
    # Daughter masses: m^2 = E^2 - |p|^2 in the lab cancels, so the bound is relative to E^2
    # (1e-12 E^2, ~5000 ulps after a boost with gamma up to ~20).
    for d, m in ((d1, m1), (d2, m2)):
        m_sq = d[:, 0] ** 2 - np.sum(d[:, 1:] ** 2, axis=1)
        assert np.all(np.abs(m_sq - m**2) <= 1e-12 * d[:, 0] ** 2)
    np.testing.assert_allclose(mass(d1)[m1 > 1], m1[m1 > 1], rtol=1e-9)
    # Isotropic in the rest frame: boost back, cos(theta*) has mean 0 and variance 1/3.
    rest = boost(d1, -parent[:, 1:] / parent[:, :1])
    np.testing.assert_allclose(
        rest[:, 1:] + boost(d2, -parent[:, 1:] / parent[:, :1])[:, 1:], 0, atol=1e-7
    )
    cos = rest[:, 3] / np.linalg.norm(rest[:, 1:], axis=1)
    sigma = np.sqrt(1 / 3 / n)
    assert abs(cos.mean()) < 5 * sigma
    assert abs(np.mean(cos**2) - 1 / 3) < 0.02  # sd of the estimate ~0.004
    with pytest.raises(ValueError, match="lighter"):
        two_body_decay(parent[:1], big_m[:1], 1.0, rng)


def test_boost_round_trip_and_rest_frame():
    rng = np.random.default_rng(2)
    p4 = np.concatenate([rng.uniform(100, 200, (50, 1)), rng.normal(0, 30, (50, 3))], axis=1)
    beta = rng.uniform(-0.5, 0.5, (50, 3))
    np.testing.assert_allclose(boost(boost(p4, beta), -beta), p4, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(mass(boost(p4, beta)), mass(p4), rtol=1e-10)
    rest = np.array([10.0, 0.0, 0.0, 0.0])
    moved = boost(rest, np.array([0.6, 0.0, 0.0]))
    np.testing.assert_allclose(moved, [12.5, 7.5, 0.0, 0.0], rtol=1e-14)


def _mt2_reference(v1, v2, met):
    """Slow MT2: dense grid over q1, then Nelder-Mead from the two best grid points."""

    def mt_sq(v, q):
        m2 = max(v[0] ** 2 - v[1] ** 2 - v[2] ** 2 - v[3] ** 2, 0.0)
        et = math.sqrt(m2 + v[1] ** 2 + v[2] ** 2)
        return m2 + 2 * (et * np.hypot(q[..., 0], q[..., 1]) - v[1] * q[..., 0] - v[2] * q[..., 1])

    h = lambda q: np.maximum(mt_sq(v1, q), mt_sq(v2, met - q))
    s = 0.5 * (np.hypot(*met) + np.hypot(*v1[1:3]) + np.hypot(*v2[1:3]))
    g = np.linspace(-3 * s, 3 * s, 201)
    grid = np.stack(np.meshgrid(g + met[0] / 2, g + met[1] / 2, indexing="ij"), -1).reshape(-1, 2)
    hv = h(grid)
    opts = {"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000}
    vals = [
        minimize(h, grid[i], method="Nelder-Mead", options=opts).fun for i in np.argsort(hv)[:2]
    ]
    return math.sqrt(max(min([*vals, hv.min()]), 0.0))


def test_mt2_matches_slow_reference():
    t = susy_truth(20, seed=11)
    lep = t["leptons"]
    met = -(lep[:, :, 1:3].sum(1) + t["jets"][:, :, 1:3].sum(1))
    fast = mt2(lep[:, 0], lep[:, 1], met)
    ref = np.array([_mt2_reference(lep[i, 0], lep[i, 1], met[i]) for i in range(20)])
    np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-4)  # GeV
    # Symmetric in the two visible particles (search order differs): 1e-4 GeV.
    np.testing.assert_allclose(mt2(lep[:, 1], lep[:, 0], met), fast, rtol=0, atol=1e-4)


def test_mt2_ww_endpoint_at_truth_level():
    """With the true neutrinos as MET, MT2 of W-pair events cannot exceed the W masses."""
    t = susy_truth(5000, seed=4, signal_fraction=0.0)
    lep, nu = t["leptons"], t["neutrinos"]
    val = mt2(lep[:, 0], lep[:, 1], nu[:, :, 1:3].sum(1))
    bound = mass(t["w"]).max(axis=1)
    assert np.all(val <= bound + 1e-6)
    assert np.all(val >= 0)
    assert np.quantile(val, 0.999) > 0.9 * M_W  # the endpoint is populated


def test_susy_mt2_switch_and_arguments():
    assert "mt2" not in simulate_susy(100, with_mt2=False).physics
    assert "mt2" in simulate_susy(100).physics
    with pytest.raises(ConfigError, match="n_events"):
        simulate_susy(0)
    with pytest.raises(ConfigError, match="signal_fraction"):
        simulate_susy(10, signal_fraction=1.5)
    assert int(simulate_susy(1000, signal_fraction=0.2, with_mt2=False).labels.sum()) == 200


# ===================================================================== Parquet
def _assert_same_events(a, b):
    for f in ("ids", "labels", "offsets", "nodes", "globals"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype, f
        np.testing.assert_array_equal(x, y, err_msg=f)
    assert a.node_names == b.node_names and a.global_names == b.global_names
    assert a.eta_phi == b.eta_phi
    assert set(a.physics) == set(b.physics)
    for k in a.physics:
        assert a.physics[k].tobytes() == b.physics[k].tobytes(), k
    assert a.fingerprint() == b.fingerprint()


@needs_uproot
def test_parquet_round_trip_exact(tmp_path, qg):
    ev = simulate_susy(300, seed=1)
    path = tmp_path / "susy.parquet"
    save_parquet(ev, path)
    back = load_parquet(path)
    _assert_same_events(ev, back)
    assert back.source == str(path)
    # qg jets: the global 'jet_eta' and the physics 'jet_eta' share a name.
    sub = qg.select(np.arange(0, len(qg), 97))
    path = tmp_path / "qg.parquet"
    save_parquet(sub, path)
    assert "physics.jet_eta" in pq.read_schema(path).names
    _assert_same_events(sub, load_parquet(path))


def test_parquet_hand_written_file(tmp_path):
    path = tmp_path / "mine.parquet"
    pq.write_table(
        pa.table(
            {
                "label": pa.array([True, False, True]),
                "pt": pa.array([[50.0, 20.0], [35.0], [10.0, 11.0, 12.0]], pa.list_(pa.float64())),
                "charge": pa.array([[1, -1], [0], [1, 1, -1]], pa.list_(pa.int8())),
                "met": [80.0, 12.0, 3.0],
                "mll": pa.array([91.0, None, 50.0]),
                "unused": ["a", "b", "c"],
            }
        ),
        path,
    )
    ev = load_parquet(path, ["pt", "charge"], globals=["met"], physics={"m_ll": "mll"})
    np.testing.assert_array_equal(ev.ids, [0, 1, 2])  # no event_id column: row numbers
    np.testing.assert_array_equal(ev.labels, [1, 0, 1])
    np.testing.assert_array_equal(ev.n_node, [2, 1, 3])
    np.testing.assert_array_equal(ev.nodes[:, 1], [1, -1, 0, 1, 1, -1])
    np.testing.assert_array_equal(ev.globals[:, 0], [80.0, 12.0, 3.0])
    assert ev.global_names == ("met",)
    assert np.isnan(ev.physics["m_ll"][1]) and ev.physics["m_ll"][0] == 91.0


def test_parquet_list_types_and_row_groups(tmp_path):
    """fixed_size_list and large_list columns, several row groups (chunked columns)."""
    path = tmp_path / "types.parquet"
    table = pa.table(
        {
            "label": [0, 1, 1, 0],
            "x": pa.array([[1, 2], [3, 4], [5, 6], [7, 8]], pa.list_(pa.float32(), 2)),
            "y": pa.array([[1, 2], [3, 4, 5], [6, 7], [7, 8]], pa.large_list(pa.int64())),
        }
    )
    pq.write_table(table.select(["label", "x"]), path, row_group_size=1)
    ev = load_parquet(path, ["x"])
    np.testing.assert_array_equal(ev.nodes[:, 0], np.arange(1, 9))
    np.testing.assert_array_equal(ev.n_node, [2, 2, 2, 2])
    pq.write_table(table, path, row_group_size=3)
    with pytest.raises(DataError, match=r"event id 1: object feature lists differ.*'x': 2, 'y': 3"):
        load_parquet(path, ["x", "y"])


def _write(path, **cols):
    base = {
        "event_id": pa.array([10, 11, 12], pa.int64()),
        "label": [1, 0, 1],
        "pt": [[50.0, 20.0], [35.0], [1.0, 2.0, 3.0]],
        "eta": [[0.1, -1.2], [0.5], [0.0, 1.0, 2.0]],
    }
    base.update(cols)
    pq.write_table(pa.table({k: v for k, v in base.items() if v is not None}), path)
    return path


@pytest.mark.parametrize(
    ("cols", "pattern"),
    [
        ({"eta": None}, r"missing column 'eta'"),
        ({"eta": [[0.1], [0.5], [0.0, 1.0, 2.0]]}, r"event id 10: object feature lists differ"),
        ({"pt": [[50.0, 20.0], [float("nan")], [1.0, 2.0, 3.0]]}, r"event id 11: .*'pt'.*NaN"),
        ({"pt": [[50.0, 20.0], [35.0], [1.0, float("inf"), 3.0]]}, r"event id 12: .*'pt'.*inf"),
        ({"label": [1, 2, 0]}, r"event id 11: column 'label' \(label\) is 2, must be 0 or 1"),
        ({"label": [1.0, 0.5, 0.0]}, r"event id 11: column 'label' \(label\) is 0.5"),
        ({"label": [1, None, 0]}, r"event id 11: column 'label' is null"),
        ({"pt": [[], [35.0], [1.0, 2.0, 3.0]], "eta": [[], [0.5], [0.0, 1.0, 2.0]]},
         r"event id 10 has no objects"),
        ({"pt": [[50.0, None], [35.0], [1.0, 2.0, 3.0]]}, r"event id 10: column 'pt' has a null"),
        ({"pt": [[50.0, 20.0], None, [1.0, 2.0, 3.0]]}, r"event id 11: column 'pt' is null"),
        ({"pt": [5.0, 6.0, 7.0]}, r"column 'pt' must be a list column"),
        ({"event_id": [1.5, 2.5, 3.5]}, r"column 'event_id' \(event ids\) must be integer"),
        ({"event_id": pa.array([4, 4, 5], pa.int64())}, r"duplicate event ids \[4\]"),
    ],
)  # fmt: skip
def test_parquet_errors_name_file_and_event(tmp_path, cols, pattern):
    path = _write(tmp_path / "bad.parquet", **cols)
    with pytest.raises(DataError, match=re.escape(str(path)) + ".*" + pattern):
        load_parquet(path, ["pt", "eta"])


def test_parquet_file_level_errors(tmp_path):
    missing = tmp_path / "missing.parquet"
    with pytest.raises(DataError, match=re.escape(str(missing)) + ".*not found"):
        load_parquet(missing, ["pt"])
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 definitely not parquet" * 50)
    with pytest.raises(DataError, match=re.escape(str(corrupt)) + ".*not a readable Parquet"):
        load_parquet(corrupt, ["pt"])
    plain = _write(tmp_path / "plain.parquet")
    with pytest.raises(DataError, match=re.escape(str(plain)) + ".*pass node_features"):
        load_parquet(plain)
    with pytest.raises(ConfigError, match="eta_phi"):
        load_parquet(plain, ["pt", "eta"], eta_phi=(1, 2))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"label": pa.array([], pa.int64()),
                             "pt": pa.array([], pa.list_(pa.float32()))}), empty)  # fmt: skip
    with pytest.raises(DataError, match=re.escape(str(empty)) + ".*no events"):
        load_parquet(empty, ["pt"])


# ===================================================================== registry
def test_registry_names_and_errors():
    assert dataset_names() == ("generated", "parquet", "qg_jets", "random", "susy_sim")
    with pytest.raises(
        ConfigError, match="unknown dataset 'cms'.*generated, parquet, qg_jets, random, susy_sim"
    ):
        load_dataset("cms")
    with pytest.raises(ConfigError, match="susy_sim.*n_event.*it takes: n_events"):
        load_dataset("susy_sim", n_event=10)


def test_registry_loads_each_source(tmp_path):
    ev = load_dataset("susy_sim", n_events=50, seed=2)
    assert ev.fingerprint() == simulate_susy(50, seed=2).fingerprint()
    path = save_parquet(ev, tmp_path / "ev.parquet")
    _assert_same_events(load_dataset("parquet", path=path), ev)
    assert len(load_dataset("qg_jets", max_jets=10)) == 10


def test_class_names_of_builtin_and_generated_sets(tmp_path):
    import json

    from hepattr_jax.data.registry import class_names

    assert class_names("qg_jets") == ("quark", "gluon")
    assert class_names("parquet", {"path": "x.parquet"}) == ("class 0", "class 1")
    (tmp_path / "generation.json").write_text(json.dumps({"labels": {"1": "top", "0": "qcd"}}))
    assert class_names("generated", {"path": str(tmp_path)}) == ("qcd", "top")
    # names only: a missing or broken generation falls back (its loader reports the error)
    assert class_names("generated", {"path": str(tmp_path / "none")}) == ("class 0", "class 1")
