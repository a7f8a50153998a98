"""Jets and events from a real generator: ``hepattr generate NAME --n N --seed S --workers W
--out DIR``.

Pythia 8 (``pythia8mc``) makes the events and FastJet (``fastjet``, scikit-hep bindings) clusters
them. Both are GPL and an optional extra (``pip install hepattr-jax[generate]``); they are imported
only inside the generator, never when the library is imported. Reading generated data
(:func:`load_generated`) needs neither.

Processes (the settings tables below are printed at start and recorded in the metadata). Jet
level, one record per jet (:class:`Process`), its constituents as nodes:

* ``top_qcd`` -- hadronic top jets (label 1) vs QCD jets (label 0), following the top-tagging
  reference set (Kasieczka et al., arXiv 1902.09914): 14 TeV, no multiparton interactions, the
  leading anti-kT R = 0.8 jet with pT in [550, 650] GeV and |eta| < 2; a top jet must have a
  hadronically decaying top and its decay quarks (b, q, q') within dR < 0.8 of the jet axis.
* ``qg`` -- quark (label 1) vs gluon (label 0) jets from Z(-> nu nu) + jet (Komiske et al.,
  arXiv 1810.05165): 14 TeV, the leading anti-kT R = 0.4 jet with pT in [500, 550] GeV and
  |y| < 1.7. The class is the hard process (q g -> Z q vs q q-bar -> Z g); the parton's PDG id is
  kept per jet, and the constituents' PDG ids in the extra list column ``pid``.

Event level, one record per event (:class:`EventProcess`), the selected leptons, jets and one
missing-momentum object as nodes (objects, features and physics quantities:
:mod:`hepattr_jax.data.event_objects`); 14 TeV, multiparton interactions on (Pythia's default):

* ``wh_ttbar`` -- W H with H -> b b-bar and W -> e nu / mu nu (label 1) vs semileptonic t t-bar
  (label 0; two charge-conjugate Pythia setups, one W -> e nu / mu nu and the other W -> q q',
  alternating), the setting of the GNN-IRST event graphs (arXiv 2407.14859): exactly one isolated
  lepton with pT > 25 GeV, at least two anti-kT R = 0.4 jets with pT > 25 GeV, |eta| < 2.5 (the
  five leading kept), truth b-tags.
* ``susy_2l`` -- chargino pairs, each chi_1+- -> W chi_1^0 with W -> e nu / mu nu (label 1), vs
  W+ W- -> l nu l nu (label 0), the topology of :mod:`hepattr_jax.data.susy_sim` (m(chi_1+-) =
  400 GeV, m(chi_1^0) = 100 GeV, from an SLHA spectrum written by
  :func:`~hepattr_jax.data.event_objects.chargino_slha`): exactly two isolated leptons with
  pT > 20 GeV, any number of jets (the four leading kept); MT2 among the physics quantities.

Differences from the reference sets, stated once: objects are built from the visible final-state
particles of the generator (no detector simulation, no Delphes energy flow), so jets carry more
and softer constituents than the Delphes ones, and event-level objects are unsmeared with truth
b-tags and truth missing momentum; Pythia 8 with its default tune (Monash).

Output layout (DIR)::

    generation.json          the plan: process, settings, seeds, versions, feature names
    shard-00000.parquet      records [0, S): the layout of hepattr_jax.data.parquet (save_parquet)
    shard-00000.json         that shard's seeds, cut-flow, sha256 and timing
    ...

Shard ``k`` holds ``ceil(n_k / 2)`` signal then ``floor(n_k / 2)`` background records (jets or
events), event ids ``k * S + i``. Its Pythia seeds come from
``numpy.random.SeedSequence(seed, spawn_key=(k, c))`` for class ``c`` (a second stream of a class
derives its seed from that one, :func:`stream_seed`), so a shard's bytes depend only on (process,
settings, seed, k, its size): the same command gives byte-identical shards on any number of
workers, and a rerun after a kill makes only the missing shards (every file is written to a
temporary name and renamed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing as mp
import queue as queue_mod
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

from hepattr_jax.data import event_objects as eo
from hepattr_jax.data import jet_features as jf
from hepattr_jax.data.events import EventSet, concat_events
from hepattr_jax.errors import ConfigError, DataError, DependencyError

INSTALL_HINT = "pip install hepattr-jax[generate]"
META_NAME = "generation.json"
FORMAT = "hepattr-generated"
FORMAT_VERSION = 1

# --------------------------------------------------------------------- settings tables
COMMON_SETTINGS = (
    "Beams:eCM = 14000.",
    "Print:quiet = on",
    "Next:numberCount = 0",
)


@dataclasses.dataclass(frozen=True)
class Process:
    """A jet-level task: two Pythia setups (signal = label 1, background = label 0) and the cuts
    on the leading jet; one record per jet, its constituents as nodes.

    The fields are the recorded settings (their JSON is hashed into ``settings_sha256``); the
    class variables say what kind of record the process makes, for the shared machinery.
    """

    kind: ClassVar[str] = "jet"
    unit: ClassVar[str] = "jet"  # what one record is (progress bar, log)
    node_noun: ClassVar[str] = "constituents"
    eta_phi: ClassVar[tuple[int, int]] = (0, 1)
    slha: ClassVar[tuple[str, ...]] = ()  # no SLHA spectrum

    name: str
    description: str
    signal_name: str
    background_name: str
    signal_settings: tuple[str, ...]
    background_settings: tuple[str, ...]
    jet_r: float
    pt_min: float
    pt_max: float
    abs_eta_max: float
    use_rapidity: bool  # the |eta| cut on rapidity (qg: |y| < 1.7) instead of pseudorapidity
    max_constituents: int
    keep_pid: bool
    match_top: bool  # signal jets must contain a hadronic top and its b, q, q' (dR < jet_r)
    reference: str

    def settings(self, label: int) -> tuple[str, ...]:
        return COMMON_SETTINGS + (self.signal_settings if label == 1 else self.background_settings)

    def streams(self, label: int) -> tuple[tuple[str, ...], ...]:
        """The Pythia setups of class ``label`` (one here; events alternate between streams)."""
        return (self.settings(label),)

    def node_names(self) -> tuple[str, ...]:
        return jf.KINEMATIC_NAMES + (jf.PID_NAMES if self.keep_pid else ())

    def physics_names(self) -> tuple[str, ...]:
        return PHYSICS_NAMES

    def cut_names(self, label: int) -> list[str]:
        """The cuts after ``pythia_ok``, in order (the cut-flow keys)."""
        return ["has_jet", "pt_window", "eta_cut"] + (
            ["top_matched"] if self.match_top and label == 1 else []
        )

    def selector(self, fastjet, label: int) -> Callable[[object, dict[str, int]], Record | None]:
        """``select(pythia, cutflow)``: the record of the event just generated, or None."""
        jet_def = fastjet.JetDefinition(fastjet.antikt_algorithm, self.jet_r)
        return lambda py, cutflow: _select_jet(self, fastjet, jet_def, py, label, cutflow)

    def finish(self, records: list[Record]) -> list[Record]:
        """The records of one class, completed once all are made (here: as they are)."""
        return records

    def describe(self) -> list[str]:
        """The cuts and features as printable lines (:func:`settings_table`)."""
        return [
            f"  jets: anti-kT R = {self.jet_r}, leading jet, pT in [{self.pt_min:g}, "
            f"{self.pt_max:g}] GeV, |{'y' if self.use_rapidity else 'eta'}| < "
            f"{self.abs_eta_max:g}, up to {self.max_constituents} constituents (pT-ordered)"
            + (", top and b q q' within dR < R of the axis (signal)" if self.match_top else ""),
            f"  node features: {', '.join(self.node_names())}",
        ]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["signal_settings"] = list(self.settings(1))
        d["background_settings"] = list(self.settings(0))
        return d


SLHA_TOKEN = "{slha}"  # in a setting: replaced by the path of the process's SLHA file


@dataclasses.dataclass(frozen=True)
class EventProcess:
    """An event-level task: leptons, jets and missing momentum as nodes, one record per event.

    Each class has one or more Pythia setups (streams); the events of a class alternate between
    them (event ``i`` comes from stream ``i mod n``), e.g. the two charge-conjugate setups of
    semileptonic t t-bar. ``slha`` is an SLHA spectrum (lines), written to a temporary file whose
    path replaces ``{slha}`` in the settings. Objects, features and physics quantities:
    :mod:`hepattr_jax.data.event_objects`.
    """

    name: str
    description: str
    signal_name: str
    background_name: str
    signal_streams: tuple[tuple[str, ...], ...]
    background_streams: tuple[tuple[str, ...], ...]
    selection: eo.ObjectSelection
    physics: tuple[str, ...]
    slha: tuple[str, ...]
    reference: str

    kind: ClassVar[str] = "event"
    unit: ClassVar[str] = "event"
    node_noun: ClassVar[str] = "objects"
    eta_phi: ClassVar[tuple[int, int]] = eo.ETA_PHI
    keep_pid: ClassVar[bool] = False

    def streams(self, label: int) -> tuple[tuple[str, ...], ...]:
        own = self.signal_streams if label == 1 else self.background_streams
        return tuple(COMMON_SETTINGS + s for s in own)

    def node_names(self) -> tuple[str, ...]:
        return eo.NODE_NAMES

    def physics_names(self) -> tuple[str, ...]:
        return self.physics

    def cut_names(self, label: int) -> list[str]:
        return list(eo.CUT_NAMES)

    def selector(self, fastjet, label: int) -> Callable[[object, dict[str, int]], Record | None]:
        return lambda py, cutflow: _select_event(self, fastjet, py, cutflow)

    def finish(self, records: list[Record]) -> list[Record]:
        """Fills in the physics quantities of all records at once (MT2 is vectorised)."""
        objs = [r.objects for r in records if r.objects is not None]
        if len(objs) != len(records):
            raise RuntimeError(f"process {self.name}: a record without its objects")
        table = eo.physics_table(objs, self.physics)
        return [
            Record(r.nodes, {k: float(v[i]) for k, v in table.items()}, None)
            for i, r in enumerate(records)
        ]

    def describe(self) -> list[str]:
        return self.selection.describe() + [
            f"  node features: {', '.join(self.node_names())} (one node per lepton and jet, "
            "one MET node)",
            f"  physics quantities: {', '.join(self.physics)}",
        ]

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind
        d["signal_streams"] = [list(s) for s in self.streams(1)]
        d["background_streams"] = [list(s) for s in self.streams(0)]
        return d


AnyProcess = Process | EventProcess


class Record(NamedTuple):
    """One accepted jet or event: ``nodes`` float32 ``[n, F]``, ``physics`` ``{name: value}``,
    ``pid`` int32 ``[n]`` constituent PDG ids where the process keeps them (else None),
    ``objects`` an event's selected objects until its physics is computed (``finish``)."""

    nodes: np.ndarray
    physics: dict[str, float]
    pid: np.ndarray | None
    objects: eo.EventObjects | None = None


# The susy_2l spectrum (GeV): the masses of hepattr_jax.data.susy_sim.
CHARGINO_MASS = 400.0
NEUTRALINO_MASS = 100.0

PROCESSES: dict[str, AnyProcess] = {
    "top_qcd": Process(
        name="top_qcd",
        description="hadronic top jets (1) vs QCD jets (0), top-tagging reference set",
        signal_name="top",
        background_name="qcd",
        signal_settings=(
            "Top:gg2ttbar = on",
            "Top:qqbar2ttbar = on",
            "24:onMode = off",
            "24:onIfAny = 1 2 3 4 5",  # W -> q q' only: both tops decay hadronically
            "PhaseSpace:pTHatMin = 500.",
            "PhaseSpace:pTHatMax = 750.",
            "PartonLevel:MPI = off",  # as the reference set: no multiple interactions, no pile-up
        ),
        background_settings=(
            "HardQCD:all = on",
            "PhaseSpace:pTHatMin = 500.",
            "PhaseSpace:pTHatMax = 750.",
            "PartonLevel:MPI = off",
        ),
        jet_r=0.8,
        pt_min=550.0,
        pt_max=650.0,
        abs_eta_max=2.0,
        use_rapidity=False,
        max_constituents=200,
        keep_pid=False,
        match_top=True,
        reference="Kasieczka et al., arXiv 1902.09914",
    ),
    "qg": Process(
        name="qg",
        description="quark jets (1) vs gluon jets (0) from Z(-> nu nu) + jet",
        signal_name="quark",
        background_name="gluon",
        signal_settings=(
            "WeakBosonAndParton:qg2gmZq = on",
            "WeakZ0:gmZmode = 2",  # Z only, no photon
            "23:onMode = off",
            "23:onIfAny = 12 14 16",
            "PhaseSpace:pTHatMin = 475.",
            "PhaseSpace:pTHatMax = 600.",
        ),
        background_settings=(
            "WeakBosonAndParton:qqbar2gmZg = on",
            "WeakZ0:gmZmode = 2",
            "23:onMode = off",
            "23:onIfAny = 12 14 16",
            "PhaseSpace:pTHatMin = 475.",
            "PhaseSpace:pTHatMax = 600.",
        ),
        jet_r=0.4,
        pt_min=500.0,
        pt_max=550.0,
        abs_eta_max=1.7,
        use_rapidity=True,
        max_constituents=200,
        keep_pid=True,
        match_top=False,
        reference="Komiske, Metodiev, Thaler, arXiv 1810.05165",
    ),
    "wh_ttbar": EventProcess(
        name="wh_ttbar",
        description="W(-> l nu) H(-> b b-bar) events (1) vs semileptonic t t-bar (0)",
        signal_name="WH",
        background_name="ttbar",
        signal_streams=(
            (
                "HiggsSM:ffbar2HW = on",  # q q-bar' -> W+- H, both charges
                "25:onMode = off",
                "25:onIfMatch = 5 -5",  # H -> b b-bar only
                "24:onMode = off",
                "24:onIfAny = 11 13",  # W -> e nu, mu nu only
            ),
        ),
        background_streams=(
            (
                "Top:gg2ttbar = on",
                "Top:qqbar2ttbar = on",
                "24:onMode = off",
                "24:onPosIfAny = 11 13",  # W+ -> e nu, mu nu
                "24:onNegIfAny = 1 2 3 4 5",  # W- -> q q'
            ),
            (
                "Top:gg2ttbar = on",
                "Top:qqbar2ttbar = on",
                "24:onMode = off",
                "24:onPosIfAny = 1 2 3 4 5",  # the charge conjugate: W+ -> q q'
                "24:onNegIfAny = 11 13",  # W- -> e nu, mu nu
            ),
        ),
        selection=eo.ObjectSelection(
            n_leptons=1,
            lepton_pt_min=25.0,
            lepton_abs_eta_max=2.5,
            lepton_iso_r=0.3,
            lepton_iso_max=0.15,
            jet_r=0.4,
            jet_pt_min=25.0,
            jet_abs_eta_max=2.5,
            min_jets=2,
            max_jets=5,
            btag_dr=0.4,
            b_hadron_pt_min=5.0,
        ),
        physics=("met", "m_bb", "lep_pt", "mt", "ht", "n_jets", "n_bjets", "n_objects"),
        slha=(),
        reference="lepton, jet and MET event graphs as in GNN-IRST, Verdone et al., "
        "arXiv 2407.14859",
    ),
    "susy_2l": EventProcess(
        name="susy_2l",
        description="chargino pairs (1) vs W+ W- (0), each W -> l nu: two leptons + MET",
        signal_name="SUSY",
        background_name="WW",
        signal_streams=(
            (
                "SUSY:qqbar2chi+chi- = on",
                "SUSY:idA = 1000024",  # chi_1+ chi_1- only
                "SUSY:idB = 1000024",
                f"SLHA:file = {SLHA_TOKEN}",
                "SLHA:verbose = 0",  # Print:quiet does not silence the SLHA reader
                "24:onMode = off",
                "24:onIfAny = 11 13",
            ),
        ),
        background_streams=(
            (
                "WeakDoubleBoson:ffbar2WW = on",
                "24:onMode = off",
                "24:onIfAny = 11 13",
            ),
        ),
        selection=eo.ObjectSelection(
            n_leptons=2,
            lepton_pt_min=20.0,
            lepton_abs_eta_max=2.5,
            lepton_iso_r=0.3,
            lepton_iso_max=0.15,
            jet_r=0.4,
            jet_pt_min=25.0,
            jet_abs_eta_max=2.5,
            min_jets=0,
            max_jets=4,
            btag_dr=0.4,
            b_hadron_pt_min=5.0,
        ),
        physics=("met", "m_ll", "mt2", "lep_pt", "ht", "n_jets", "n_objects"),
        slha=tuple(eo.chargino_slha(CHARGINO_MASS, NEUTRALINO_MASS).splitlines()),
        reference="the UCI SUSY topology (Baldi, Sadowski, Whiteson, arXiv 1402.4735), "
        "as hepattr_jax.data.susy_sim",
    ),
}

PHYSICS_NAMES = (
    "jet_pt",
    "jet_eta",
    "jet_phi",
    "jet_mass",
    "n_constituents",  # all constituents, before the max_constituents cut
    "tau1",
    "tau2",
    "tau3",
    "tau21",
    "tau32",
    "m_sj12",  # pairwise masses of the 3 exclusive-kT subjets (ordered by pT)
    "m_sj13",
    "m_sj23",
    "parton_id",  # qg: PDG id of the hard outgoing parton; top_qcd: 0
)


def process_names(kind: str | None = None) -> tuple[str, ...]:
    """Names of the processes (of one ``kind``, "jet" or "event"), jet-level first, sorted."""
    return tuple(
        sorted(
            (n for n, p in PROCESSES.items() if kind in (None, p.kind)),
            key=lambda n: (PROCESSES[n].kind != "jet", n),
        )
    )


def get_process(name: str) -> AnyProcess:
    try:
        return PROCESSES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown process {name!r}; valid names: {', '.join(process_names('jet'))} (jets), "
            f"{', '.join(process_names('event'))} (events)"
        ) from None


def settings_table(proc: AnyProcess) -> str:
    """The generation settings of ``proc`` as printable text."""
    lines = [f"process {proc.name}: {proc.description} ({proc.reference})", *proc.describe()]
    for label, name in ((1, proc.signal_name), (0, proc.background_name)):
        streams = proc.streams(label)
        for j, settings in enumerate(streams):
            which = (
                f", stream {j + 1} of {len(streams)} (events alternate between the streams)"
                if len(streams) > 1
                else ""
            )
            lines.append(f"  label {label} ({name}) Pythia settings{which}:")
            lines += [f"    {s}" for s in settings]
    if proc.slha:
        lines.append(f"  SLHA spectrum (written to a temporary file, the {SLHA_TOKEN} above):")
        lines += [f"    {line}" for line in proc.slha]
    return "\n".join(lines)


# --------------------------------------------------------------------- imports of the extra
def _import_generators():
    """``(pythia8mc, fastjet)``, or DependencyError naming the extra to install."""
    try:
        import fastjet
        import pythia8mc
    except ImportError as e:
        raise DependencyError(
            f"event generation needs pythia8mc and fastjet ({e}); install them with "
            f"`{INSTALL_HINT}`"
        ) from None
    return pythia8mc, fastjet


def versions() -> dict[str, str]:
    """Python and the generator's packages, as recorded in ``generation.json``."""
    from hepattr_jax.environment import versions as installed

    return installed(("pythia8mc", "fastjet", "numpy", "pyarrow", "hepattr-jax"))


def shard_seed(seed: int, shard: int, label: int) -> int:
    """Pythia seed (1 .. 900,000,000) of one class of one shard, from (seed, shard, label)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(int(shard), int(label)))
    return int(ss.generate_state(1, np.uint32)[0]) % 900_000_000 + 1


# --------------------------------------------------------------------- one class of one shard
def _top_partons(ev) -> list[list[tuple[float, float]]]:
    """(eta, phi) of [top, b, q, q'] for each top that decays hadronically (last copies)."""
    n = ev.size()
    tops = sorted({ev[i].iBotCopyId() for i in range(n) if ev[i].idAbs() == 6})
    out = []
    for it in tops:
        dau = [ev[d] for d in ev[it].daughterList()]
        ws = [d for d in dau if d.idAbs() == 24]
        bs = [d for d in dau if d.idAbs() == 5]
        if not ws or not bs:
            continue
        w = ev[ws[0].iBotCopyId()]
        qs = [ev[d] for d in w.daughterList() if 1 <= ev[d].idAbs() <= 5]
        if len(qs) != 2:
            continue
        out.append([(p.eta(), p.phi()) for p in (ev[it], bs[0], *qs)])
    return out


def _hard_parton_id(proc_record) -> int:
    """PDG id of the outgoing coloured parton of a 2 -> 2 hard process (Z + jet)."""
    for i in (5, 6):
        pid = proc_record[i].id()
        if abs(pid) != 23:
            return int(pid)
    return 0


def _jet_record(proc: Process, fastjet, jet, parts: np.ndarray, pids, charges, parton_id) -> Record:
    """Features and physics of one accepted jet."""
    idx = np.array([c.user_index() for c in jet.constituents()], np.int64)
    p4 = parts[idx]
    pt = np.hypot(p4[:, 0], p4[:, 1])
    order = np.argsort(-pt, kind="stable")
    idx, p4, pt = idx[order], p4[order], pt[order]
    jet_p4 = np.array([jet.px(), jet.py(), jet.pz(), jet.e()])

    # N-subjettiness from exclusive-kT axes of all constituents (beta = 1, R0 = jet R).
    y = jf.rapidity(p4[:, 2], p4[:, 3])
    phi = np.arctan2(p4[:, 1], p4[:, 0])
    pjs = []
    for k, row in enumerate(p4):
        pj = fastjet.PseudoJet(*row)
        pj.set_user_index(k)
        pjs.append(pj)
    cs = fastjet.ClusterSequence(pjs, fastjet.JetDefinition(fastjet.kt_algorithm, 1000.0))
    taus = []
    sub3 = None
    for n_ax in (1, 2, 3):
        if n_ax >= len(pjs):
            taus.append(0.0)
            continue
        sj = fastjet.sorted_by_pt(cs.exclusive_jets(n_ax))
        taus.append(
            jf.nsubjettiness(pt, y, phi, [s.rap() for s in sj], [s.phi() for s in sj], proc.jet_r)
        )
        if n_ax == 3:
            sub3 = np.array([[s.px(), s.py(), s.pz(), s.e()] for s in sj])
    m_sj: tuple[float, ...]
    if sub3 is None:
        m_sj = (0.0, 0.0, 0.0)
    else:
        m_sj = tuple(
            float(jf.invariant_mass(sub3[a] + sub3[b])) for a, b in ((0, 1), (0, 2), (1, 2))
        )

    keep = slice(0, proc.max_constituents)
    feats = jf.constituent_features(
        p4[keep],
        jet_p4,
        pid=pids[idx][keep] if proc.keep_pid else None,
        charge=charges[idx][keep] if proc.keep_pid else None,
    )
    physics = {
        "jet_pt": jet.pt(),
        "jet_eta": jet.eta(),
        "jet_phi": float(jf.delta_phi(jet.phi(), 0.0)),
        "jet_mass": jet.m(),
        "n_constituents": float(len(idx)),
        "tau1": taus[0],
        "tau2": taus[1],
        "tau3": taus[2],
        "tau21": jf.tau_ratio(taus[1], taus[0]),
        "tau32": jf.tau_ratio(taus[2], taus[1]),
        "m_sj12": m_sj[0],
        "m_sj13": m_sj[1],
        "m_sj23": m_sj[2],
        "parton_id": float(parton_id),
    }
    pid = pids[idx][keep].astype(np.int32) if proc.keep_pid else None
    return Record(feats.astype(np.float32), physics, pid)


def _select_jet(
    proc: Process, fastjet, jet_def, py, label: int, cutflow: dict[str, int]
) -> Record | None:
    """The leading jet of the event in ``py`` if it passes the cuts of ``proc``, else None."""
    ev = py.event
    rows, pids, charges = [], [], []
    for prt in ev:
        if prt.isFinal() and prt.isVisible():
            rows.append((prt.px(), prt.py(), prt.pz(), prt.e()))
            pids.append(prt.id())
            charges.append(prt.charge())
    if not rows:
        return None
    parts = np.array(rows, np.float64)
    pjs = []
    for k, row in enumerate(rows):
        pj = fastjet.PseudoJet(*row)
        pj.set_user_index(k)
        pjs.append(pj)
    cs = fastjet.ClusterSequence(pjs, jet_def)
    incl = fastjet.sorted_by_pt(cs.inclusive_jets(0.5 * proc.pt_min))
    if not incl:
        return None
    cutflow["has_jet"] += 1
    jet = incl[0]
    if not proc.pt_min <= jet.pt() <= proc.pt_max:
        return None
    cutflow["pt_window"] += 1
    if abs(jet.rap() if proc.use_rapidity else jet.eta()) >= proc.abs_eta_max:
        return None
    cutflow["eta_cut"] += 1
    if proc.match_top and label == 1:
        jeta, jphi = jet.eta(), jet.phi()

        def inside(eta_phi, jeta=jeta, jphi=jphi):
            return math.hypot(eta_phi[0] - jeta, jf.delta_phi(eta_phi[1], jphi)) < proc.jet_r

        if not any(all(inside(x) for x in t) for t in _top_partons(ev)):
            return None
        cutflow["top_matched"] += 1
    parton = _hard_parton_id(py.process) if proc.keep_pid else 0
    return _jet_record(
        proc, fastjet, jet, parts, np.array(pids), np.array(charges, np.float64), parton
    )


def _select_event(proc: EventProcess, fastjet, py, cutflow: dict[str, int]) -> Record | None:
    """The objects of the event in ``py`` as a record, if it passes the cuts of ``proc``."""
    fs = eo.read_pythia_event(py.event, proc.selection.b_hadron_pt_min)
    if fs is None:
        return None
    obj = eo.select_objects(fs, proc.selection, fastjet, cutflow)
    if obj is None:
        return None
    return Record(eo.node_features(obj), {}, None, obj)  # physics: EventProcess.finish


def stream_seed(pythia_seed: int, stream: int) -> int:
    """Pythia seed of stream ``stream`` of a class: its own seed for stream 0, else derived."""
    if stream == 0:
        return int(pythia_seed)
    ss = np.random.SeedSequence(int(pythia_seed), spawn_key=(int(stream),))
    return int(ss.generate_state(1, np.uint32)[0]) % 900_000_000 + 1


def _init_pythia(pythia8mc, proc: AnyProcess, label: int, settings, seed: int, slha_path):
    py = pythia8mc.Pythia("", False)
    for s in tuple(settings) + ("Random:setSeed = on", f"Random:seed = {seed}"):
        if SLHA_TOKEN in s:
            s = s.replace(SLHA_TOKEN, str(slha_path))
        if not py.readString(s):
            raise ConfigError(f"process {proc.name}: Pythia refused the setting {s!r}")
    if not py.init():
        raise DataError(f"process {proc.name}: Pythia failed to initialise (label {label})")
    return py


def generate_class(
    proc: AnyProcess,
    label: int,
    n_records: int,
    pythia_seed: int,
    report: Callable[[int, int], None] | None = None,
) -> tuple[list[Record], dict]:
    """Generates events of one class until ``n_records`` jets or events pass the selection.

    Returns ``(records, cutflow)``: ``records`` a list of :class:`Record` and ``cutflow`` the
    counts of events after each cut. Event ``i`` comes from stream ``i mod n_streams`` (a single
    Pythia instance for the jet processes), stream ``j`` seeded by :func:`stream_seed`.
    ``report(d_records, d_events)`` is called now and then with increments, for a progress bar.
    """
    pythia8mc, fastjet = _import_generators()
    streams = proc.streams(label)
    with tempfile.TemporaryDirectory(prefix="hepattr-slha-") as tmp:
        slha_path = None
        if proc.slha:
            slha_path = Path(tmp) / "spectrum.slha"
            slha_path.write_text("\n".join(proc.slha) + "\n")
        pys = [
            _init_pythia(pythia8mc, proc, label, st, stream_seed(pythia_seed, j), slha_path)
            for j, st in enumerate(streams)
        ]  # Pythia reads the SLHA file in init(); the directory may go after
    select = proc.selector(fastjet, label)
    cutflow = dict.fromkeys(["generated", "pythia_ok", *proc.cut_names(label), "accepted"], 0)
    records: list[Record] = []
    max_events = max(2000, 200 * n_records)
    pending_ev = pending_rec = 0
    while len(records) < n_records:
        if cutflow["generated"] >= max_events:
            raise DataError(
                f"process {proc.name} label {label}: only {len(records)} of {n_records} "
                f"{proc.unit}s passed the selection in {max_events} events (cut-flow {cutflow})"
            )
        py = pys[cutflow["generated"] % len(pys)]
        cutflow["generated"] += 1
        pending_ev += 1
        if report is not None and pending_ev >= 20:
            report(pending_rec, pending_ev)
            pending_ev = pending_rec = 0
        if not py.next():
            continue
        cutflow["pythia_ok"] += 1
        rec = select(py, cutflow)
        if rec is None:
            continue
        records.append(rec)
        cutflow["accepted"] += 1
        pending_rec += 1
    if report is not None:
        report(pending_rec, pending_ev)
    return proc.finish(records), cutflow


# --------------------------------------------------------------------- shards
@dataclasses.dataclass(frozen=True)
class ShardPlan:
    index: int
    n_signal: int
    n_background: int
    first_id: int
    seeds: tuple[int, int]  # (signal, background)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"


def plan_shards(n: int, seed: int, shard_size: int) -> list[ShardPlan]:
    plans = []
    for k in range(math.ceil(n / shard_size)):
        n_k = min(shard_size, n - k * shard_size)
        plans.append(
            ShardPlan(
                index=k,
                n_signal=(n_k + 1) // 2,
                n_background=n_k // 2,
                first_id=k * shard_size,
                seeds=(shard_seed(seed, k, 1), shard_seed(seed, k, 0)),
            )
        )
    return plans


def _shard_json(plan: ShardPlan, proc: AnyProcess) -> dict:
    return {
        "shard": plan.index,
        "n_signal": plan.n_signal,
        "n_background": plan.n_background,
        "first_id": plan.first_id,
        "pythia_seeds": {"signal": plan.seeds[0], "background": plan.seeds[1]},
        "settings_sha256": _settings_hash(proc),
    }


def _settings_hash(proc: AnyProcess) -> str:
    return hashlib.sha256(json.dumps(proc.to_json(), sort_keys=True).encode()).hexdigest()


def make_shard(proc: AnyProcess, plan: ShardPlan, seed: int, out: Path, report=None) -> dict:
    """Generates one shard and writes ``shard-K.parquet`` then ``shard-K.json`` atomically."""
    from hepattr_jax.data.parquet import save_parquet
    from hepattr_jax.io_utils import atomic_write_json

    t0 = time.perf_counter()
    recs: list[tuple[int, Record]] = []
    cutflows = {}
    for label, n_rec, pseed in (
        (1, plan.n_signal, plan.seeds[0]),
        (0, plan.n_background, plan.seeds[1]),
    ):
        if n_rec == 0:
            continue
        got, cf = generate_class(proc, label, n_rec, pseed, report)
        recs += [(label, r) for r in got]
        cutflows[proc.signal_name if label == 1 else proc.background_name] = cf
    events = EventSet.from_lists(
        [r.nodes for _, r in recs],
        [label for label, _ in recs],
        proc.node_names(),
        ids=np.arange(plan.first_id, plan.first_id + len(recs), dtype=np.int64),
        physics={k: np.array([r.physics[k] for _, r in recs]) for k in proc.physics_names()},
        source=f"hepattr generate {proc.name} --seed {seed} ({plan.name})",
        eta_phi=proc.eta_phi,
    )
    extra = None
    if proc.keep_pid:
        extra = {"pid": np.concatenate([r.pid for _, r in recs if r.pid is not None])}
    path = out / f"{plan.name}.parquet"
    save_parquet(events, path, extra_lists=extra)
    info = _shard_json(plan, proc) | {
        "file": path.name,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "cutflow": cutflows,
        f"n_{proc.node_noun}_stored": {
            "mean": float(events.n_node.mean()),
            "max": int(events.n_node.max()),
        },
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_json(out / f"{plan.name}.json", info)
    return info


def _shard_done(out: Path, plan: ShardPlan, proc: AnyProcess) -> dict | None:
    """The shard's JSON if its Parquet file and JSON exist and match ``plan``; else None."""
    pq_path, js_path = out / f"{plan.name}.parquet", out / f"{plan.name}.json"
    if not (pq_path.is_file() and js_path.is_file()):
        return None
    try:
        info = json.loads(js_path.read_text())
    except json.JSONDecodeError:
        return None
    want = _shard_json(plan, proc)
    if any(info.get(k) != v for k, v in want.items()):
        return None
    return info


_QUEUE = None


def _worker_init(q) -> None:
    global _QUEUE
    _QUEUE = q


def _worker(args) -> dict:
    proc_name, plan, seed, out = args
    q = _QUEUE
    if q is None:  # set in each pool process by _worker_init
        raise RuntimeError("_worker runs only in a pool started with _worker_init")
    return make_shard(
        get_process(proc_name), plan, seed, Path(out), report=lambda j, e: q.put((j, e))
    )


def _check_out_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".hepattr-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{out}: output directory is not writable ({e})") from None


def generate(
    process: str,
    n: int,
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    shard_size: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Generates ``n`` jets or events of ``process`` (half signal, half background) into ``out``.

    Finished shards already in ``out`` (same process, settings, seed and shard size) are kept;
    only the missing ones are made. Returns the metadata written to ``out/generation.json``
    (plan, versions, summed cut-flow, per-shard files and hashes).

    Raises:
      ConfigError: unknown process, ``n``, ``workers`` or ``shard_size`` out of range, an
        unwritable ``out``, or ``out`` holding a generation with other settings.
      DependencyError: pythia8mc or fastjet not installed.
    """
    proc = get_process(process)
    for name, value, lo in (("n", n, 1), ("workers", workers, 1), ("shard_size", shard_size, 2)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out)
    _check_out_dir(out)
    _import_generators()

    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "process": proc.to_json(),
        "kind": proc.kind,  # jet: one record per jet; event: one per event
        "settings_sha256": _settings_hash(proc),
        "seed": int(seed),
        "n": int(n),
        "shard_size": int(shard_size),
        "node_features": list(proc.node_names()),
        "physics": list(proc.physics_names()),
        "eta_phi": list(proc.eta_phi),
        "labels": {"1": proc.signal_name, "0": proc.background_name},
        "versions": versions(),
    }
    meta_path = out / META_NAME
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            old = {}
        for key in ("format", "settings_sha256", "seed", "shard_size"):
            if old.get(key) != meta[key]:
                raise ConfigError(
                    f"{out}: holds a generation with {key} = {old.get(key)!r}, not {meta[key]!r}; "
                    "use another --out (a directory never mixes generations)"
                )
    plans = plan_shards(int(n), int(seed), int(shard_size))
    meta["shards"] = [_shard_json(p, proc) | {"file": f"{p.name}.parquet"} for p in plans]
    from hepattr_jax.io_utils import atomic_write_json

    atomic_write_json(meta_path, meta)

    done = {p.index: _shard_done(out, p, proc) for p in plans}
    todo = [p for p in plans if done[p.index] is None]
    if log is not None:
        log(settings_table(proc))
        log(
            f"seed {seed}, {n} {proc.unit}s in {len(plans)} shards of {shard_size}; "
            f"{len(plans) - len(todo)} already done, {len(todo)} to make on {workers} worker(s)"
        )
    t0 = time.perf_counter()
    n_done = sum(p.n_signal + p.n_background for p in plans if done[p.index] is not None)
    stats = {"records": 0, "events": 0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=n_done, unit=proc.unit, dynamic_ncols=True, smoothing=0.05)

    def report(d_records: int, d_events: int) -> None:
        stats["records"] += d_records
        stats["events"] += d_events
        if bar is not None:
            dt = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix(
                {"ev/s": f"{stats['events'] / dt:.1f}", "eff": f"{_ratio(stats):.3f}"},
                refresh=False,
            )
            bar.update(d_records)

    try:
        if workers == 1 or len(todo) <= 1:
            for p in todo:
                done[p.index] = make_shard(proc, p, int(seed), out, report)
        else:
            ctx = mp.get_context("spawn")  # no fork of a process that may hold JAX threads
            q = ctx.Queue()
            with ctx.Pool(min(workers, len(todo)), _worker_init, (q,)) as pool:
                res = pool.map_async(
                    _worker, [(proc.name, p, int(seed), str(out)) for p in todo], chunksize=1
                )
                while True:
                    try:
                        report(*q.get(timeout=0.5))
                    except queue_mod.Empty:
                        if res.ready():
                            break
                for info in res.get():
                    done[info["shard"]] = info
                while not q.empty():
                    report(*q.get_nowait())
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0

    shards: dict[int, dict] = {}
    for p in plans:  # every shard is done now (made above, or an exception was raised)
        shard_info = done[p.index]
        if shard_info is None:
            raise RuntimeError(f"{out}: shard {p.name} was not made")
        shards[p.index] = shard_info
    cutflow: dict[str, dict[str, int]] = {}
    for shard_info in shards.values():
        for cls, cf in shard_info["cutflow"].items():
            tot = cutflow.setdefault(cls, dict.fromkeys(cf, 0))
            for k, v in cf.items():
                tot[k] += v
    meta["cutflow"] = cutflow
    meta["shards"] = [shards[p.index] | {"file": f"{p.name}.parquet"} for p in plans]
    atomic_write_json(meta_path, meta)
    if log is not None:
        eff = {c: cf["accepted"] / max(cf["generated"], 1) for c, cf in cutflow.items()}
        log(
            f"done: {n} {proc.unit}s in {out} ({stats['records']} made now in {wall:.1f} s, "
            f"{stats['events'] / max(wall, 1e-9):.1f} events/s); selection efficiency "
            + ", ".join(f"{c} {e:.3f}" for c, e in eff.items())
        )
    return meta


def _ratio(stats: dict) -> float:
    return stats["records"] / stats["events"] if stats["events"] else 0.0


# --------------------------------------------------------------------- reading back
def ensure_generated(
    process: str, n: int, out: str | Path, seed: int = 0, workers: int = 1, shard_size: int = 1000
) -> dict:
    """The metadata of the finished generation of ``n`` of ``process`` with ``seed`` in ``out``:
    read back when every shard is there (:func:`load_generated` checks their hashes when it
    reads them), else made or finished by :func:`generate` (resumable; it needs the extra).

    Raises ConfigError when ``out`` holds a generation of another process, size or seed.
    """
    out = Path(out)
    try:
        meta = json.loads((out / META_NAME).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        meta = None  # none yet, or a crash mid-write: generate() starts or resumes it
    if meta is not None:
        held = (meta.get("process", {}).get("name"), meta.get("n"), meta.get("seed"))
        if held != (process, n, seed):
            raise ConfigError(
                f"{out}: holds a generation of (process, n, seed) = {held}, not "
                f"{(process, n, seed)}; use another directory"
            )
        shards = meta.get("shards") or []
        if shards and all("sha256" in sh and (out / sh["file"]).is_file() for sh in shards):
            return meta
    return generate(process, n, out, seed=seed, workers=workers, shard_size=shard_size)


def load_generated(
    path: str | Path, max_events: int | None = None, max_constituents: int | None = None
) -> EventSet:
    """All shards of a finished generation in ``path`` as one EventSet (ids kept, labels
    1 = signal, node features named as in ``generation.json``, ``eta_phi`` set); with
    ``max_constituents``, each jet's leading (highest-pT) constituents only
    (:meth:`EventSet.leading`; the jet-level ``physics`` stays that of all stored ones).

    Needs neither pythia8mc nor fastjet. Raises DataError for a directory without
    ``generation.json``, a missing shard (an unfinished generation: rerun the same command), or a
    shard whose sha256 differs from the one recorded; ConfigError for ``max_constituents`` on an
    event-level generation (its nodes are objects, not constituents).
    """
    from hepattr_jax.data.parquet import load_parquet

    path = Path(path)
    meta_path = path / META_NAME
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not a generated data set (no {META_NAME})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: corrupt ({e})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if max_constituents is not None and meta.get("kind", "jet") != "jet":
        raise ConfigError(
            f"{path}: max_constituents applies to jets; this generation is {meta.get('kind')}-level"
        )
    sets, total = [], 0
    for shard in meta["shards"]:
        f = path / shard["file"]
        if not f.is_file() or "sha256" not in shard:
            raise DataError(
                f"{path}: shard {shard['file']} is missing (an unfinished generation; rerun the "
                "same `hepattr generate` command to finish it)"
            )
        if hashlib.sha256(f.read_bytes()).hexdigest() != shard["sha256"]:
            raise DataError(f"{f}: sha256 differs from the one in {META_NAME}")
        sets.append(load_parquet(f))
        total += len(sets[-1])
        if max_events is not None and total >= max_events:
            break
    events = concat_events(sets, source=str(path))
    if max_events is not None:
        events = events.select(np.arange(min(int(max_events), len(events))))
    if max_constituents is not None:
        events = events.leading(int(max_constituents))
    return events


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: hepattr generate NAME --n N --seed S --workers W --out DIR")
