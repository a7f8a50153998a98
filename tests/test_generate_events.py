"""hepattr generate, the event-level processes (wh_ttbar, susy_2l): objects, features, physics.

The object features and physics quantities are checked on hand-built events without Pythia; the
tiny generations need the optional extra and skip (with the reason) only when it is absent.
"""

import hashlib
import json
import math

import numpy as np
import pytest

from hepattr_jax import cli
from hepattr_jax.data import event_objects as eo
from hepattr_jax.data import generate as gen
from hepattr_jax.data.susy_sim import NODE_NAMES as SIM_NODE_NAMES
from hepattr_jax.errors import ConfigError
from hepattr_jax.graphs import build_graphs

EXACT = 1e-9  # absolute, float64 closed forms
F32 = 1e-5  # relative, float32 node features against float64 physics quantities
COL = {name: j for j, name in enumerate(eo.NODE_NAMES)}


def _needs_generator():
    pytest.importorskip("pythia8mc", reason="needs the generate extra (pythia8mc)")
    pytest.importorskip("fastjet", reason="needs the generate extra (fastjet)")


def _hashes(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.parquet"))}


def _p4(pt, eta, phi, m=0.0):
    px, py, pz = pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta)
    return np.array([px, py, pz, math.sqrt(px**2 + py**2 + pz**2 + m**2)])


def _mt(pt, phi, met, met_phi):
    return np.sqrt(2 * pt * met * (1 - np.cos(phi - met_phi)))


# --------------------------------------------------------------------- no Pythia
def test_processes_are_listed_everywhere(capsys):
    assert gen.process_names() == ("qg", "top_qcd", "susy_2l", "wh_ttbar")
    assert gen.process_names("event") == ("susy_2l", "wh_ttbar")
    with pytest.raises(ConfigError, match="susy_2l, wh_ttbar \\(events\\)"):
        gen.get_process("zz")
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in gen.process_names())
    assert all(name in gen.__doc__ for name in gen.process_names())
    # The recorded settings are printed: every Pythia line and the SLHA spectrum.
    for name in gen.process_names("event"):
        proc = gen.get_process(name)
        table = gen.settings_table(proc)
        assert all(s in table for st in proc.streams(0) + proc.streams(1) for s in st)
        assert all(line in table for line in proc.slha)
        assert proc.node_names()[: len(SIM_NODE_NAMES)] == SIM_NODE_NAMES


def test_jet_process_settings_unchanged():
    # The jet processes' recorded settings (and so their shards' settings_sha256) predate the
    # event-level ones: the hashes of the 40k top/QCD sample and of the qg settings.
    assert gen._settings_hash(gen.get_process("top_qcd")) == (
        "7adb8d740a0804f610db60f6afd2933933c37928c4bd2819b5849cbae99fa0f5"
    )
    assert gen._settings_hash(gen.get_process("qg")) == (
        "f0c45a1168d63f96ca8f2ba7dabed145e5869b4b4c57e91e231be8a1aefe74af"
    )


def test_node_features_and_physics_hand_case():
    # One lepton (pT 50, eta 0.5, phi 0.1, charge -1), three jets (pT 120, 80, 30; the second
    # and third b-tagged), MET 40 at phi = pi - 0.05 (checks the wrap), max_jets = 2.
    lep = _p4(50.0, 0.5, 0.1, 0.1056583755)
    jets = np.stack([_p4(120, 1.0, 2.0, 10), _p4(80, -0.3, -2.0, 12), _p4(30, 2.0, 3.0, 5)])
    met_phi = math.pi - 0.05
    obj = eo.EventObjects(
        leptons=lep[None],
        lepton_charge=np.array([-1.0]),
        jets=jets,
        btag=np.array([False, True, True]),
        met_xy=40.0 * np.array([math.cos(met_phi), math.sin(met_phi)]),
        max_jets=2,
    )
    f = eo.node_features(obj)
    assert f.shape == (4, len(eo.NODE_NAMES)) and f.dtype == np.float32
    np.testing.assert_array_equal(f[:, COL["is_lepton"]], [1, 0, 0, 0])
    np.testing.assert_array_equal(f[:, COL["is_jet"]], [0, 1, 1, 0])
    np.testing.assert_array_equal(f[:, COL["is_met"]], [0, 0, 0, 1])
    np.testing.assert_array_equal(f[:, COL["b_tag"]], [0, 0, 1, 0])
    np.testing.assert_array_equal(f[:, COL["charge"]], [-1, 0, 0, 0])
    np.testing.assert_allclose(f[:, COL["log_pt"]], np.log([50, 120, 80, 40]), rtol=F32)
    np.testing.assert_allclose(f[:, COL["eta"]], [0.5, 1.0, -0.3, 0.0], atol=F32)
    np.testing.assert_allclose(f[:, COL["phi"]], [0.1, 2.0, -2.0, met_phi], atol=F32)
    np.testing.assert_allclose(f[:, COL["log_e"]], np.log([lep[3], *jets[:2, 3], 40]), rtol=F32)

    one_lepton = [k for k in eo.PHYSICS if k not in ("m_ll", "mt2")]  # those need two
    p = eo.physics_quantities(obj, one_lepton)
    assert p["met"] == pytest.approx(40.0, abs=EXACT)
    assert p["lep_pt"] == pytest.approx(50.0, abs=EXACT)
    assert p["mt"] == pytest.approx(_mt(50.0, 0.1, 40.0, met_phi), abs=EXACT)
    # m_bb: the two b-tagged jets (second and third), not the two leading ones.
    m_bb = jets[1] + jets[2]
    assert p["m_bb"] == pytest.approx(math.sqrt(m_bb[3] ** 2 - m_bb[:3] @ m_bb[:3]), abs=1e-6)
    assert (p["n_jets"], p["n_bjets"], p["n_objects"]) == (3.0, 2.0, 4.0)
    assert p["ht"] == pytest.approx(50 + 120 + 80 + 30, abs=EXACT)
    # One b-tag: the tagged jet and the leading untagged one.
    one = obj._replace(btag=np.array([False, False, True]))
    m13 = jets[0] + jets[2]
    assert eo.physics_quantities(one, ["m_bb"])["m_bb"] == pytest.approx(
        math.sqrt(m13[3] ** 2 - m13[:3] @ m13[:3]), abs=1e-6
    )


def test_mt2_and_m_ll_hand_case():
    # Two massless leptons of pT 40 at phi = 0 (eta 0 and 1), MET 30 along y. With
    # q1 = (a, b), q2 = (-a, 30 - b): mT1^2 + mT2^2 = 80 (|q1| + |q2|) >= 80 * 30, reached at
    # a = 0, b = 15 where both are 1200: MT2 = sqrt(1200). (Back-to-back leptons would give 0.)
    leps = np.stack([_p4(40.0, 0.0, 0.0), _p4(40.0, 1.0, 0.0)])
    obj = eo.EventObjects(
        leps, np.array([1.0, -1.0]), np.zeros((0, 4)), np.zeros(0, bool), np.array([0.0, 30.0]), 4
    )
    p = eo.physics_quantities(obj, ("m_ll", "mt2", "n_objects", "ht", "n_jets"))
    # m^2 = 2 pT1 pT2 (cosh d_eta - cos d_phi)
    assert p["m_ll"] == pytest.approx(math.sqrt(3200.0 * (math.cosh(1.0) - 1.0)), abs=1e-6)
    assert p["mt2"] == pytest.approx(math.sqrt(1200.0), abs=1e-3)  # mt2's stated tolerance
    assert (p["n_objects"], p["ht"], p["n_jets"]) == (3.0, 80.0, 0.0)
    assert eo.node_features(obj).shape == (3, len(eo.NODE_NAMES))


def test_b_hadron_ids():
    for pid in (511, -521, 531, 541, 553, 5122, -5232, 10511, 20513):
        assert eo.is_b_hadron(pid), pid
    for pid in (411, 421, 4122, 211, 111, 2212, 443, 130):
        assert not eo.is_b_hadron(pid), pid


def test_slha_spectrum_text():
    text = eo.chargino_slha(350.0, 60.0)
    lines = text.splitlines()
    assert "   1000024    3.500000E+02   # ~chi_1+" in lines
    assert "   1000022    6.000000E+01   # ~chi_10" in lines
    i = lines.index("DECAY   1000024   1.000000E-02   # ~chi_1+")
    assert lines[i + 1].split()[:4] == ["1.000000E+00", "2", "1000022", "24"]
    proc = gen.get_process("susy_2l")
    assert "\n".join(proc.slha) + "\n" == eo.chargino_slha(gen.CHARGINO_MASS, gen.NEUTRALINO_MASS)


# --------------------------------------------------------------------- tiny generations
N, SHARD = 6, 3  # two shards of 2 signal + 1 background events


def _generate(name, out, n=N):
    return gen.generate(name, n, out, seed=4, shard_size=SHARD, progress=False, log=None)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    _needs_generator()
    dirs = {}
    for name in gen.process_names("event"):
        dirs[name] = tmp_path_factory.mktemp(name) / "run"
        _generate(name, dirs[name])
    return dirs


@pytest.mark.slow  # generates twice more (end to end): make test runs it, make test-fast not
@pytest.mark.parametrize("name", ["wh_ttbar", "susy_2l"])
def test_deterministic_and_resumes(generated, tmp_path, name):
    want = _hashes(generated[name])
    assert len(want) == 2
    # The same seed again (shard 0 of a 3-event run: the same seeds) gives the same bytes.
    _generate(name, tmp_path / "again", n=SHARD)
    assert _hashes(tmp_path / "again") == {"shard-00000.parquet": want["shard-00000.parquet"]}
    # Finish that run (resume: shard 0 kept, shard 1 made) and lose shard 0 of it: remade the same.
    _generate(name, tmp_path / "again")
    (tmp_path / "again" / "shard-00000.parquet").unlink()
    _generate(name, tmp_path / "again")
    assert _hashes(tmp_path / "again") == want


def _common_checks(name, out, n_leptons, max_jets):
    ev = gen.load_generated(out)
    meta = json.loads((out / "generation.json").read_text())
    assert len(ev) == N and ev.labels.tolist() == [1, 1, 0, 1, 1, 0]  # 1 = signal
    np.testing.assert_array_equal(ev.ids, np.arange(N))
    assert ev.node_names == eo.NODE_NAMES and ev.eta_phi == eo.ETA_PHI
    assert meta["kind"] == "event" and meta["node_features"] == list(eo.NODE_NAMES)
    assert meta["labels"] == {"1": gen.get_process(name).signal_name, "0": meta["labels"]["0"]}
    with pytest.raises(ConfigError, match="max_constituents applies to jets"):
        gen.load_generated(out, max_constituents=3)
    for cls, cf in meta["cutflow"].items():
        counts = [cf[k] for k in ("generated", "pythia_ok", *eo.CUT_NAMES, "accepted")]
        assert counts == sorted(counts, reverse=True), (cls, cf)  # each cut keeps a subset
        assert cf["accepted"] == (4 if cls == meta["labels"]["1"] else 2)

    p = ev.physics
    assert all(np.all(np.isfinite(v)) for v in p.values())
    np.testing.assert_array_equal(p["n_objects"], ev.n_node)
    for i in range(N):
        x = ev.event_nodes(i).astype(np.float64)
        kind = x[:, [COL["is_lepton"], COL["is_jet"], COL["is_met"]]]
        np.testing.assert_array_equal(kind.sum(axis=1), 1.0)  # one type per object
        n_jet_nodes = len(x) - n_leptons - 1
        assert 0 <= n_jet_nodes <= max_jets
        # Leptons first, then jets, the MET object last.
        np.testing.assert_array_equal(
            kind.argmax(axis=1), [0] * n_leptons + [1] * n_jet_nodes + [2]
        )
        lep, jets, met = x[:n_leptons], x[n_leptons:-1], x[-1]
        assert np.all(np.abs(lep[:, COL["charge"]]) == 1)
        assert np.all(jets[:, COL["charge"]] == 0) and met[COL["charge"]] == 0
        assert np.all(lep[:, COL["b_tag"]] == 0) and met[COL["b_tag"]] == 0
        assert np.all(np.isin(jets[:, COL["b_tag"]], (0, 1)))
        assert np.all(np.diff(lep[:, 0]) <= 0) and np.all(np.diff(jets[:, 0]) <= 0)  # pT order
        assert np.all(np.abs(x[:-1, COL["eta"]]) < 2.5) and np.all(np.abs(x[:, 2]) <= math.pi)
        assert np.all(np.exp(jets[:, 0]) > 25 * (1 - F32))
        assert np.all(x[:-1, COL["log_e"]] >= x[:-1, COL["log_pt"]] - F32)  # E >= pT
        assert p["met"][i] > 0 and math.exp(met[0]) == pytest.approx(p["met"][i], rel=F32)
        assert p["lep_pt"][i] == pytest.approx(math.exp(lep[0, 0]), rel=F32)
        assert p["n_jets"][i] >= n_jet_nodes and p["n_jets"][i] == int(p["n_jets"][i])
        sum_pt = np.exp(x[:-1, 0]).sum()
        assert p["ht"][i] >= sum_pt * (1 - F32)  # all jets, not only the stored ones
    # Fully connected graphs, the GNN-IRST setting: every ordered pair, no self loops.
    g = build_graphs(ev, "fully_connected")
    n = ev.n_node
    np.testing.assert_array_equal(np.diff(g.edge_offsets), n * (n - 1))
    return ev, meta


def test_wh_ttbar_events(generated):
    ev, meta = _common_checks("wh_ttbar", generated["wh_ttbar"], n_leptons=1, max_jets=5)
    p = ev.physics
    assert np.all(p["lep_pt"] > 25) and np.all(p["n_jets"] >= 2)
    assert np.all((p["n_bjets"] >= 0) & (p["n_bjets"] <= p["n_jets"]))
    assert np.all((p["m_bb"] > 10) & (p["m_bb"] < 3000))
    # mT^2 = 2 pT MET (1 - cos dphi) <= 4 pT MET.
    assert np.all((p["mt"] >= 0) & (p["mt"] <= 2 * np.sqrt(p["lep_pt"] * p["met"]) + 1e-9))
    # H -> b b-bar: the signal events carry truth b-tags.
    assert p["n_bjets"][ev.labels == 1].max() >= 1
    assert len(meta["process"]["background_streams"]) == 2  # W+ -> l nu and W- -> l nu


def test_susy_2l_events(generated):
    ev, meta = _common_checks("susy_2l", generated["susy_2l"], n_leptons=2, max_jets=4)
    p = ev.physics
    assert np.all(p["lep_pt"] > 20)
    m_ll, mt_bound = [], []
    for i in range(len(ev)):
        x = ev.event_nodes(i).astype(np.float64)
        pt, eta, phi = np.exp(x[:2, 0]), x[:2, 1], x[:2, 2]
        e = np.exp(x[:2, 3])
        s = np.array(
            [np.sum(pt * np.cos(phi)), np.sum(pt * np.sin(phi)), np.sum(pt * np.sinh(eta))]
        )
        m_ll.append(math.sqrt(max(e.sum() ** 2 - s @ s, 0.0)))
        # MT2 <= mT(lepton i, all of MET) for each i (give the whole MET to one side).
        mt_bound.append(min(_mt(pt, phi, p["met"][i], x[-1, 2])))
    np.testing.assert_allclose(p["m_ll"], m_ll, rtol=1e-3)  # from float32 logs
    assert np.all(p["mt2"] >= 0) and np.all(p["mt2"] <= np.array(mt_bound) * (1 + 1e-3) + 1e-3)
    assert meta["process"]["slha"][0].startswith("# chargino pair: m(chi_1+) = 400 GeV")


@pytest.mark.slow  # a spawned worker pool: make test runs it, make test-fast not
def test_workers_give_the_same_bytes(generated, tmp_path):
    # The SLHA spectrum is written per worker process; the shards must not depend on it.
    out = tmp_path / "w2"
    gen.generate("susy_2l", N, out, seed=4, shard_size=SHARD, workers=2, progress=False, log=None)
    assert _hashes(out) == _hashes(generated["susy_2l"])
