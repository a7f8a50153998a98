"""hepattr generate (Pythia 8 + FastJet), the jet features and the baselines.

Feature functions are checked against hand-computed values without Pythia. Tests that generate
need the optional extra and skip (with the reason) only when it is absent.
"""

import hashlib
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from hepattr_jax import cli
from hepattr_jax.baselines import baseline_table, compare
from hepattr_jax.data import generate as gen
from hepattr_jax.data import jet_features as jf
from hepattr_jax.data.registry import load_dataset
from hepattr_jax.errors import ConfigError, DataError, DependencyError
from hepattr_jax.graphs import build_graphs
from hepattr_jax.metrics import background_rejection

EXACT = 1e-12  # absolute, float64 closed forms


def _needs_generator():
    pytest.importorskip("pythia8mc", reason="needs the generate extra (pythia8mc)")
    pytest.importorskip("fastjet", reason="needs the generate extra (fastjet)")


def _hashes(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.glob("*.parquet"))}


# --------------------------------------------------------------------- features, no Pythia
def test_delta_phi_wraps_into_minus_pi_pi():
    got = jf.delta_phi([3.0, -3.0, 0.5, math.pi], [-3.0, 3.0, 0.2, 0.0])
    want = [6.0 - 2 * math.pi, -6.0 + 2 * math.pi, 0.3, -math.pi]  # pi itself maps to -pi
    np.testing.assert_allclose(got, want, atol=EXACT, rtol=0)


def test_constituent_features_hand_case():
    # Jet along x (eta 0, phi 0), pT 100, E 110; one constituent at phi = pi/2 - wrap matters
    # for a second one at phi just below pi while the jet sits just above -pi.
    jet = np.array([100.0, 0.0, 0.0, 110.0])
    c = np.array([[10.0, 0.0, 10.0 * math.sinh(0.3), 10.0 * math.cosh(0.3)]])
    f = jf.constituent_features(c, jet)[0]
    names = dict(zip(jf.KINEMATIC_NAMES, f, strict=True))
    assert names["d_eta"] == pytest.approx(0.3, abs=EXACT)
    assert names["d_phi"] == pytest.approx(0.0, abs=EXACT)
    assert names["log_pt"] == pytest.approx(math.log(10.0), abs=EXACT)
    assert names["log_e"] == pytest.approx(math.log(10.0 * math.cosh(0.3)), abs=EXACT)
    assert names["log_pt_rel"] == pytest.approx(math.log(0.1), abs=EXACT)
    assert names["log_e_rel"] == pytest.approx(math.log(10.0 * math.cosh(0.3) / 110.0), abs=EXACT)
    assert names["delta_r"] == pytest.approx(0.3, abs=EXACT)
    # Across the +-pi seam: jet at phi = pi - 0.05, constituent at phi = -pi + 0.05.
    jphi, cphi = math.pi - 0.05, -math.pi + 0.05
    jet2 = np.array([100 * math.cos(jphi), 100 * math.sin(jphi), 0.0, 100.0])
    c2 = np.array([[5 * math.cos(cphi), 5 * math.sin(cphi), 0.0, 5.0]])
    assert jf.constituent_features(c2, jet2)[0, 1] == pytest.approx(0.1, abs=1e-9)


def test_particle_type_flags():
    p4 = np.tile([1.0, 0.0, 0.0, 1.0], (6, 1))
    pid = np.array([11, -13, 22, 211, 130, 2112])
    charge = np.array([-1, 1, 0, 1, 0, 0])
    f = jf.constituent_features(p4, [6.0, 0.0, 0.0, 6.0], pid=pid, charge=charge)
    flags = f[:, len(jf.KINEMATIC_NAMES) + 1 :]  # after charge
    want = np.array(
        [
            [1, 0, 0, 0, 0],  # electron
            [0, 1, 0, 0, 0],  # muon
            [0, 0, 1, 0, 0],  # photon
            [0, 0, 0, 1, 0],  # charged pion
            [0, 0, 0, 0, 1],  # K0_L
            [0, 0, 0, 0, 1],  # neutron
        ]
    )
    np.testing.assert_array_equal(flags, want)
    np.testing.assert_array_equal(f[:, len(jf.KINEMATIC_NAMES)], charge)


def test_nsubjettiness_hand_case():
    # pT 1 at (0, 0), pT 3 at (0.4, 0); one axis at (0, 0), R0 = 0.8:
    # tau1 = (1 * 0 + 3 * 0.4) / (4 * 0.8) = 0.375.
    assert jf.nsubjettiness([1, 3], [0, 0.4], [0, 0], [0.0], [0.0], 0.8) == pytest.approx(
        0.375, abs=EXACT
    )
    # Axis across the phi seam: particles at phi = -3.1 and 3.1, axis at phi = 3.1 -> the first
    # is dR = 2 pi - 6.2 away, not 6.2.
    t = jf.nsubjettiness([2, 2], [0, 0], [-3.1, 3.1], [0.0], [3.1], 1.0)
    assert t == pytest.approx(2 * (2 * math.pi - 6.2) / 4, abs=EXACT)
    # As many axes as constituents: tau_N = 0; ratios with a zero denominator are 0.
    assert jf.nsubjettiness([1, 2], [0, 1], [0, 1], [0, 1], [0, 1], 0.8) == 0.0
    assert jf.tau_ratio(0.0, 0.0) == 0.0


def test_pairwise_features_hand_case():
    # Massless p1 = (10, 0, 0, 10) and p2 = (0, 5, 0, 5): y = 0, phi = 0 and pi/2.
    # Delta = pi/2, kT = 5 pi/2, z = 5/15, m^2 = 15^2 - (10^2 + 5^2) = 100.
    p4 = np.array([[10.0, 0.0, 0.0, 10.0], [0.0, 5.0, 0.0, 5.0]])
    f = jf.pairwise_features(p4)
    assert f.shape == (2, 2, 4)
    want = np.log([math.pi / 2, 5 * math.pi / 2, 1 / 3, 100.0])
    np.testing.assert_allclose(f[0, 1], want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(f[1, 0], want, atol=1e-12, rtol=0)
    np.testing.assert_allclose(f[0, 0, :2], np.log(1e-8), atol=EXACT, rtol=0)  # clamped


def test_background_rejection_hand_cases():
    # Distinct scores, descending labels 1 0 1 1 0 0 1 0 0 0 (4 signal, 6 background).
    y = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 0])
    s = -np.arange(10.0)
    # ROC: (0,0) (0,.25) (1/6,.25) (1/6,.5) (1/6,.75) (2/6,.75) (3/6,.75) (3/6,1) ...
    assert background_rejection(y, s, 0.5) == pytest.approx(6.0, abs=EXACT)
    assert background_rejection(y, s, 0.3) == pytest.approx(6.0, abs=EXACT)
    assert background_rejection(y, s, 0.25) == math.inf  # eps_B = 0 at the first point
    assert background_rejection(y, s, 0.8) == pytest.approx(2.0, abs=EXACT)
    # A tie between a signal and a background jet: ROC (0,0) (0,.5) (.5,1) (1,1); eps_S = 0.75
    # interpolates to eps_B = 0.25.
    assert background_rejection([1, 1, 0, 0], [3, 2, 2, 1], 0.75) == pytest.approx(4.0, abs=EXACT)
    with pytest.raises(ValueError, match="signal_efficiency"):
        background_rejection(y, s, 0.0)


def test_baseline_table_directions():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 200)
    physics = {
        "jet_mass": np.where(labels == 1, 173.0, 60.0) + rng.normal(0, 10, 400),
        "tau32": np.where(labels == 1, 0.5, 0.8) + rng.normal(0, 0.05, 400),
    }
    t = baseline_table("top_qcd", physics, labels)
    assert set(t) == {"jet_mass", "mass_window", "tau32"}
    assert all(v["auroc"] > 0.99 and v["signal_efficiency"] == 0.3 for v in t.values())
    with pytest.raises(ConfigError, match="unknown task"):
        baseline_table("nope", physics, labels)
    with pytest.raises(DataError, match="n_constituents"):
        baseline_table("qg", physics, labels)
    events = {  # the event tasks: signal-like = larger met and mt2, m_bb near 125, fewer jets
        "met": np.where(labels == 1, 150.0, 40.0) + rng.normal(0, 10, 400),
        "mt2": np.where(labels == 1, 80.0, 20.0) + rng.normal(0, 5, 400),
        "m_bb": np.where(labels == 1, 125.0, 200.0) + rng.normal(0, 10, 400),
        "n_jets": np.where(labels == 1, 2.0, 4.0),
    }
    for task, names in (
        ("wh_ttbar", {"met", "m_bb_window", "n_jets"}),
        ("susy_2l", {"met", "mt2"}),
    ):
        t = baseline_table(task, events, labels)
        assert set(t) == names
        assert all(v["auroc"] > 0.99 and v["signal_efficiency"] == 0.5 for v in t.values())


def test_compare_pairs_a_classifier_with_the_baselines():
    rng = np.random.default_rng(1)
    labels = np.repeat([1, 0], 300)
    physics = {  # weak baselines
        "jet_mass": np.where(labels == 1, 150.0, 100.0) + rng.normal(0, 40, 600),
        "tau32": np.where(labels == 1, 0.6, 0.7) + rng.normal(0, 0.1, 600),
    }
    model = labels + rng.normal(0, 0.3, 600)  # a strong classifier
    r = compare("top_qcd", physics, labels, model, "net", n_boot=200)
    assert set(r["rows"]) == {"net", "jet_mass", "mass_window", "tau32"}
    assert set(r["vs"]) == {"jet_mass", "mass_window", "tau32"}
    for row in r["rows"].values():
        assert row["auroc_95"][0] <= row["auroc"] <= row["auroc_95"][1]
    for v in r["vs"].values():
        assert v["share_better_auroc"] == 1.0 and v["auroc_difference_95"][0] > 0
    # a baseline against itself: the paired difference is exactly 0 in every resample
    same = compare("top_qcd", physics, labels, -physics["tau32"], "copy", n_boot=50)
    assert same["vs"]["tau32"]["auroc_difference_95"] == [0.0, 0.0]
    assert same["vs"]["tau32"]["share_better_auroc"] == 0.0


# --------------------------------------------------------------------- bad input
def test_unknown_process_and_bad_numbers(tmp_path):
    with pytest.raises(ConfigError, match="unknown process 'wz'.*qg, top_qcd"):
        gen.generate("wz", 10, tmp_path)
    for n in (0, -5):
        with pytest.raises(ConfigError, match="n must be an integer >= 1"):
            gen.generate("top_qcd", n, tmp_path)
    with pytest.raises(ConfigError, match="workers"):
        gen.generate("top_qcd", 10, tmp_path, workers=0)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        gen.generate("top_qcd", 10, blocker / "out")


def test_missing_pythia_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pythia8mc", None)  # import now raises ImportError
    with pytest.raises(DependencyError, match=r"pip install hepattr-jax\[generate\]"):
        gen.generate("top_qcd", 10, tmp_path)


def test_cli_reports_errors(tmp_path, capsys):
    assert cli.main(["generate", "nope", "--n", "4", "--out", str(tmp_path)]) == 2
    assert "unknown process 'nope'" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess: make test runs it, make test-fast not
def test_library_import_does_not_load_gpl_code():
    code = (
        "import sys, hepattr_jax, hepattr_jax.data.generate; "
        "assert 'pythia8mc' not in sys.modules and 'fastjet' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"JAX_PLATFORMS": "cpu"})


def test_load_generated_errors(tmp_path):
    with pytest.raises(DataError, match="not a generated data set"):
        gen.load_generated(tmp_path)


# --------------------------------------------------------------------- tiny generations
@pytest.fixture(scope="module")
def tiny_top(tmp_path_factory):
    _needs_generator()
    out = tmp_path_factory.mktemp("top") / "run"
    gen.generate("top_qcd", 20, out, seed=7, shard_size=10, progress=False, log=None)
    return out


def test_ensure_generated_reads_back_finishes_and_refuses_another(tiny_top, tmp_path):
    meta = gen.ensure_generated("top_qcd", 20, tiny_top, seed=7, shard_size=10)
    assert meta["n"] == 20 and all("sha256" in sh for sh in meta["shards"])
    want = _hashes(tiny_top)
    for bad in (("qg", 20, 7), ("top_qcd", 40, 7), ("top_qcd", 20, 8)):
        with pytest.raises(ConfigError, match="holds a generation"):
            gen.ensure_generated(bad[0], bad[1], tiny_top, seed=bad[2], shard_size=10)
    # an unfinished copy (a shard lost) is finished, to the same bytes
    import shutil

    part = tmp_path / "part"
    shutil.copytree(tiny_top, part)
    (part / "shard-00001.parquet").unlink()
    gen.ensure_generated("top_qcd", 20, part, seed=7, shard_size=10)
    assert _hashes(part) == want


@pytest.mark.slow  # generates twice more (end to end): make test runs it, make test-fast not
def test_top_qcd_is_deterministic_and_resumes(tiny_top, tmp_path):
    want = _hashes(tiny_top)
    assert len(want) == 2
    # Same command into a new directory: the same bytes.
    gen.generate("top_qcd", 20, tmp_path / "b", seed=7, shard_size=10, progress=False, log=None)
    assert _hashes(tmp_path / "b") == want
    # A partial run (a smaller n first), then the full command: shard 0 is kept, shard 1 made.
    part = tmp_path / "c"
    gen.generate("top_qcd", 13, part, seed=7, shard_size=10, progress=False, log=None)
    first = (part / "shard-00000.parquet").stat().st_mtime_ns
    gen.generate("top_qcd", 20, part, seed=7, shard_size=10, progress=False, log=None)
    assert (part / "shard-00000.parquet").stat().st_mtime_ns == first
    assert _hashes(part) == want
    # A lost shard (a killed run) is remade with the same bytes; a temp file is left alone.
    (part / "shard-00001.parquet").unlink()
    (part / ".shard-00001.parquet.x.tmp").write_bytes(b"half")
    gen.generate("top_qcd", 20, part, seed=7, shard_size=10, progress=False, log=None)
    assert _hashes(part) == want
    # Another seed into the same directory is refused, not mixed.
    with pytest.raises(ConfigError, match="seed"):
        gen.generate("top_qcd", 20, part, seed=8, shard_size=10, progress=False, log=None)


def test_top_qcd_physics(tiny_top):
    ev = load_dataset("generated", path=str(tiny_top))
    meta = json.loads((tiny_top / "generation.json").read_text())
    assert len(ev) == 20 and int(ev.labels.sum()) == 10
    assert ev.node_names == jf.KINEMATIC_NAMES and ev.eta_phi == (0, 1)
    np.testing.assert_array_equal(ev.ids, np.arange(20))
    p = ev.physics
    assert np.all((p["jet_pt"] >= 550) & (p["jet_pt"] <= 650))
    assert np.all(np.abs(p["jet_eta"]) < 2)
    # With exclusive-kT axes (not minimised) tau_N can exceed tau_{N-1}: a few per cent of QCD
    # jets have a ratio slightly above 1 (5-6 % in the 40k sample, max 1.4).
    for r in ("tau21", "tau32"):
        assert np.all((p[r] >= 0) & (p[r] < 2)) and np.mean(p[r] <= 1) >= 0.8, r
    # d_phi wrapped; constituents near the axis. Anti-kT clusters in rapidity, the features use
    # pseudorapidity, so a soft massive hadron can sit a little beyond R in (eta, phi).
    assert np.all(np.abs(ev.nodes[:, 1]) <= math.pi)
    dr = ev.nodes[:, 6]
    assert np.mean(dr < 0.8) > 0.99 and dr.max() < 1.6
    assert np.all(ev.n_node <= 200) and np.all(ev.n_node >= 2)
    g = build_graphs(ev.select(np.arange(3)), "knn:16")  # what `hepattr train` builds
    assert int(g.n_edge.sum()) == int(np.minimum(ev.n_node[:3] - 1, 16).dot(ev.n_node[:3]))
    # Constituents pT-ordered within each jet.
    for i in range(len(ev)):
        lp = ev.event_nodes(i)[:, 2]
        assert np.all(np.diff(lp) <= 0)
    # Top jets are heavy: a loose window around m_top for the median.
    assert 120 < np.median(p["jet_mass"][ev.labels == 1]) < 220
    cf = meta["cutflow"]["top"]
    assert cf["accepted"] == 10 and cf["top_matched"] == 10 and cf["generated"] >= 10
    assert meta["process"]["signal_settings"][0] == "Beams:eCM = 14000."
    assert meta["versions"]["pythia8mc"] != "absent"


@pytest.mark.slow
def test_workers_give_the_same_bytes(tiny_top, tmp_path):
    _needs_generator()
    gen.generate(
        "top_qcd", 20, tmp_path / "w2", seed=7, shard_size=10, workers=2, progress=False, log=None
    )
    assert _hashes(tmp_path / "w2") == _hashes(tiny_top)


def test_qg_tiny(tmp_path):
    _needs_generator()
    out = tmp_path / "qg"
    gen.generate("qg", 12, out, seed=3, shard_size=6, progress=False, log=None)
    want = _hashes(out)
    (out / "shard-00000.parquet").unlink()
    gen.generate("qg", 12, out, seed=3, shard_size=6, progress=False, log=None)
    assert _hashes(out) == want
    ev = gen.load_generated(out)
    assert ev.node_names == jf.KINEMATIC_NAMES + jf.PID_NAMES
    p = ev.physics
    assert np.all((p["jet_pt"] >= 500) & (p["jet_pt"] <= 550))
    assert np.all(np.abs(ev.nodes[:, 1]) <= math.pi)
    # Quark jets (label 1) come from q g -> Z q, gluon jets from q q-bar -> Z g.
    assert np.all(np.abs(p["parton_id"][ev.labels == 1]) <= 6)
    assert np.all(p["parton_id"][ev.labels == 0] == 21)
    flags = ev.nodes[:, len(jf.KINEMATIC_NAMES) + 1 :]
    np.testing.assert_array_equal(flags.sum(axis=1), 1.0)  # exactly one type per particle
    import pyarrow.parquet as pq

    pid = pq.read_table(out / "shard-00000.parquet", columns=["pid"]).column("pid")
    assert pid.combine_chunks().flatten().to_numpy().size == ev.n_node[:6].sum()
    cut = gen.load_generated(out, max_constituents=3)  # the leading (highest-pT) three
    np.testing.assert_array_equal(cut.n_node, np.minimum(ev.n_node, 3))
    np.testing.assert_array_equal(cut.event_nodes(0), ev.event_nodes(0)[:3])
