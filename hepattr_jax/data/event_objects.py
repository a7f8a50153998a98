"""Event-level objects from a generated event: leptons, jets, missing momentum, as graph nodes.

Used by ``hepattr generate`` for the event-level processes (``wh_ttbar``, ``susy_2l``; see
:mod:`hepattr_jax.data.generate`). Particle level, no detector simulation: objects are built from
the generator's final-state particles, with the cuts of an :class:`ObjectSelection`:

* **leptons** -- final-state electrons and muons with ``pT > lepton_pt_min``,
  ``|eta| < lepton_abs_eta_max`` and relative isolation
  ``sum_{dR < lepton_iso_r} pT(visible, not the lepton) / pT < lepton_iso_max``; the event must
  have exactly ``n_leptons`` of them (the *selected* leptons);
* **jets** -- anti-kT (radius ``jet_r``) of every visible final-state particle except the
  selected leptons, ``pT > jet_pt_min``, ``|eta| < jet_abs_eta_max``; at least ``min_jets``;
  the ``max_jets`` leading ones become nodes (``n_jets`` and ``ht`` count all of them);
* **b-tag** -- truth: a b hadron (any hadron with a b or b-bar valence quark, every copy in the
  record) of ``pT > b_hadron_pt_min`` within ``dR < btag_dr`` of the jet axis. No efficiency or
  mistag model (a real tagger keeps ~70 % of b jets and lets ~1 % of light jets through);
* **missing transverse momentum** -- the vector sum of the transverse momenta of the invisible
  final-state particles (neutrinos, neutralinos): truth MET, one node.

Node features (float32), one row per object, ordered: leptons by decreasing pT, jets by
decreasing pT, the MET object last; the first eight are those of the built-in simulator
(:data:`hepattr_jax.data.susy_sim.NODE_NAMES`), ``eta_phi = (1, 2)``:

=========== ================================================================
``log_pt``   ``ln(pT / GeV)`` (``ln(MET / GeV)`` for the MET object)
``eta``      pseudorapidity; 0 for MET
``phi``      azimuth in [-pi, pi)
``log_e``    ``ln(E / GeV)``; ``ln(MET / GeV)`` for MET (massless at eta 0)
``charge``   lepton charge +-1; 0 for jets and MET
``is_lepton``, ``is_jet``, ``is_met``  one-hot object type
``b_tag``    1 for a b-tagged jet, else 0
=========== ================================================================

Physics quantities (float64, per event; never model inputs), by name (:data:`PHYSICS`):
``met``; ``lep_pt`` (leading lepton); ``m_ll`` (two leading leptons); ``mt`` (transverse mass of
the leading lepton and MET, ``sqrt(2 pT MET (1 - cos dphi))``); ``mt2``
(:func:`hepattr_jax.data.susy_sim.mt2` of the two leading leptons and MET, massless invisible
test mass); ``m_bb`` (the two leading jets after ranking by b-tag, then pT: the two leading
b-tagged jets, filled up with the leading untagged ones when fewer than two are tagged);
``n_jets``, ``n_bjets`` (all jets passing the cuts); ``ht`` (scalar pT sum of the selected
leptons and all jets); ``n_objects`` (nodes stored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from hepattr_jax.data.jet_features import delta_phi, invariant_mass, pt_eta_phi

NODE_NAMES = (
    "log_pt",
    "eta",
    "phi",
    "log_e",
    "charge",
    "is_lepton",
    "is_jet",
    "is_met",
    "b_tag",
)
ETA_PHI = (1, 2)
CUT_NAMES = ("lepton_count", "jet_count")


@dataclasses.dataclass(frozen=True)
class ObjectSelection:
    """Object definitions and event cuts (module docstring); energies in GeV."""

    n_leptons: int
    lepton_pt_min: float
    lepton_abs_eta_max: float
    lepton_iso_r: float
    lepton_iso_max: float
    jet_r: float
    jet_pt_min: float
    jet_abs_eta_max: float
    min_jets: int
    max_jets: int
    btag_dr: float
    b_hadron_pt_min: float

    def describe(self) -> list[str]:
        """The selection as printable lines."""
        s = "" if self.n_leptons == 1 else "s"
        return [
            f"  leptons (e, mu): exactly {self.n_leptons} with pT > {self.lepton_pt_min:g} GeV, "
            f"|eta| < {self.lepton_abs_eta_max:g}, isolated (visible pT within dR < "
            f"{self.lepton_iso_r:g} below {self.lepton_iso_max:g} x the lepton pT)",
            f"  jets: anti-kT R = {self.jet_r:g} of the visible final-state particles except the "
            f"selected lepton{s}, pT > {self.jet_pt_min:g} GeV, |eta| < "
            f"{self.jet_abs_eta_max:g}, at least {self.min_jets}; the {self.max_jets} leading "
            "are nodes",
            f"  b-tag: truth, a b hadron with pT > {self.b_hadron_pt_min:g} GeV within dR < "
            f"{self.btag_dr:g} of the jet axis (no efficiency or mistag model)",
            "  MET: vector sum of the invisible final-state particles' pT (neutrinos, neutralinos),"
            " one node",
        ]


class FinalState(NamedTuple):
    """What the object building needs from one generated event.

    Attributes:
      p4: float64 ``[n, 4]`` ``(px, py, pz, E)`` of the visible final-state particles.
      pid: int64 ``[n]`` their PDG ids.
      charge: float64 ``[n]`` their charges (units of e).
      invisible_pxy: float64 ``[2]`` summed ``(px, py)`` of the invisible final-state particles.
      b_eta_phi: float64 ``[m, 2]`` ``(eta, phi)`` of the b hadrons above the pT threshold.
    """

    p4: np.ndarray
    pid: np.ndarray
    charge: np.ndarray
    invisible_pxy: np.ndarray
    b_eta_phi: np.ndarray


class EventObjects(NamedTuple):
    """The selected objects of one event (all float64; jets pT-ordered, every one passing).

    Attributes:
      leptons: ``[n_leptons, 4]`` ``(px, py, pz, E)``, pT-ordered.
      lepton_charge: ``[n_leptons]``.
      jets: ``[n_jets, 4]``.
      btag: bool ``[n_jets]``.
      met_xy: ``[2]`` missing transverse momentum.
      max_jets: jets kept as nodes.
    """

    leptons: np.ndarray
    lepton_charge: np.ndarray
    jets: np.ndarray
    btag: np.ndarray
    met_xy: np.ndarray
    max_jets: int


def is_b_hadron(pid: int) -> bool:
    """A hadron PDG id with a b valence quark (mesons ``?5?x``, baryons ``5xxx``, excited
    states included); the caller checks that the particle is a hadron (not a diquark)."""
    a = abs(int(pid))
    return (a // 100) % 10 == 5 or (a // 1000) % 10 == 5


def read_pythia_event(ev, b_hadron_pt_min: float) -> FinalState | None:
    """The :class:`FinalState` of a Pythia 8 event record; None when nothing is visible."""
    rows, pids, charges = [], [], []
    inv_x = inv_y = 0.0
    bs = []
    for prt in ev:
        if prt.isFinal():
            if prt.isVisible():
                rows.append((prt.px(), prt.py(), prt.pz(), prt.e()))
                pids.append(prt.id())
                charges.append(prt.charge())
            else:
                inv_x += prt.px()
                inv_y += prt.py()
        elif prt.isHadron() and is_b_hadron(prt.id()) and prt.pT() > b_hadron_pt_min:
            bs.append((prt.eta(), prt.phi()))
    if not rows:
        return None
    return FinalState(
        p4=np.array(rows, np.float64),
        pid=np.array(pids, np.int64),
        charge=np.array(charges, np.float64),
        invisible_pxy=np.array([inv_x, inv_y]),
        b_eta_phi=np.array(bs, np.float64).reshape(-1, 2),
    )


def select_objects(
    fs: FinalState, sel: ObjectSelection, fastjet, cutflow: dict[str, int]
) -> EventObjects | None:
    """Leptons, jets, b-tags and MET of one event (module docstring), or None when the event
    fails a cut; ``cutflow[name]`` is incremented for each cut of :data:`CUT_NAMES` passed."""
    pt, eta, phi = pt_eta_phi(fs.p4[:, 0], fs.p4[:, 1], fs.p4[:, 2])
    apid = np.abs(fs.pid)
    cand = np.flatnonzero(
        ((apid == 11) | (apid == 13))
        & (pt > sel.lepton_pt_min)
        & (np.abs(eta) < sel.lepton_abs_eta_max)
    )
    chosen = []
    for i in cand:
        dr = np.hypot(eta - eta[i], delta_phi(phi, phi[i]))
        near = dr < sel.lepton_iso_r
        near[i] = False
        if pt[near].sum() < sel.lepton_iso_max * pt[i]:
            chosen.append(int(i))
    if len(chosen) != sel.n_leptons:
        return None
    cutflow["lepton_count"] += 1
    chosen.sort(key=lambda i: -pt[i])

    rest = np.ones(len(pt), bool)
    rest[chosen] = False
    pjs = []
    for k in np.flatnonzero(rest):
        pj = fastjet.PseudoJet(*fs.p4[k])
        pj.set_user_index(int(k))
        pjs.append(pj)
    jets = []
    if pjs:
        cs = fastjet.ClusterSequence(
            pjs, fastjet.JetDefinition(fastjet.antikt_algorithm, sel.jet_r)
        )
        for j in fastjet.sorted_by_pt(cs.inclusive_jets(sel.jet_pt_min)):
            if abs(j.eta()) < sel.jet_abs_eta_max:
                jets.append((j.px(), j.py(), j.pz(), j.e()))
    if len(jets) < sel.min_jets:
        return None
    cutflow["jet_count"] += 1
    jets_p4 = np.array(jets, np.float64).reshape(-1, 4)
    _, jeta, jphi = pt_eta_phi(jets_p4[:, 0], jets_p4[:, 1], jets_p4[:, 2])
    if len(fs.b_eta_phi) and len(jets_p4):
        dr = np.hypot(
            jeta[:, None] - fs.b_eta_phi[None, :, 0],
            delta_phi(jphi[:, None], fs.b_eta_phi[None, :, 1]),
        )
        btag = (dr < sel.btag_dr).any(axis=1)
    else:
        btag = np.zeros(len(jets_p4), bool)
    return EventObjects(
        leptons=fs.p4[chosen],
        lepton_charge=fs.charge[chosen],
        jets=jets_p4,
        btag=btag,
        met_xy=fs.invisible_pxy.copy(),
        max_jets=sel.max_jets,
    )


def node_features(obj: EventObjects) -> np.ndarray:
    """float32 ``[n_leptons + min(n_jets, max_jets) + 1, 9]``: the rows of :data:`NODE_NAMES`."""
    jets = obj.jets[: obj.max_jets]
    btag = obj.btag[: obj.max_jets]
    vis = np.concatenate([obj.leptons, jets], axis=0)
    pt, eta, phi = pt_eta_phi(vis[:, 0], vis[:, 1], vis[:, 2])
    nl, nj = len(obj.leptons), len(jets)
    met = float(np.hypot(*obj.met_xy))
    log_met = np.log(max(met, 1e-6))
    rows = np.zeros((nl + nj + 1, len(NODE_NAMES)), np.float64)
    rows[:-1, 0] = np.log(pt)
    rows[:-1, 1] = eta
    rows[:-1, 2] = delta_phi(phi, 0.0)
    rows[:-1, 3] = np.log(vis[:, 3])
    rows[:nl, 4] = obj.lepton_charge
    rows[:nl, 5] = 1.0
    rows[nl:-1, 6] = 1.0
    rows[nl:-1, 8] = btag
    rows[-1, 0] = rows[-1, 3] = log_met
    rows[-1, 2] = delta_phi(np.arctan2(obj.met_xy[1], obj.met_xy[0]), 0.0)
    rows[-1, 7] = 1.0
    return rows.astype(np.float32)


# --------------------------------------------------------------------- physics quantities
def _pt(p4: np.ndarray) -> np.ndarray:
    return np.hypot(p4[..., 0], p4[..., 1])


def _met(o: EventObjects) -> float:
    return float(np.hypot(*o.met_xy))


def _mt(o: EventObjects) -> float:
    lep = o.leptons[0]
    dphi = delta_phi(np.arctan2(lep[1], lep[0]), np.arctan2(o.met_xy[1], o.met_xy[0]))
    return float(np.sqrt(max(2.0 * _pt(lep) * _met(o) * (1.0 - np.cos(dphi)), 0.0)))


def _m_bb(o: EventObjects) -> float:
    order = np.lexsort((-_pt(o.jets), ~o.btag))  # b-tagged first, then by pT
    return float(invariant_mass(o.jets[order[:2]].sum(axis=0)))


def _mt2(objs: Sequence[EventObjects]) -> np.ndarray:
    """MT2 of many events in one vectorised call (one event alone costs ~15 ms in NumPy
    overhead; a batch ~25 us per event)."""
    from hepattr_jax.data.susy_sim import mt2

    # susy_sim's four-vectors are (E, px, py, pz).
    leps = np.stack([o.leptons[:2][:, [3, 0, 1, 2]] for o in objs]).reshape(-1, 2, 4)
    met = np.stack([o.met_xy for o in objs]).reshape(-1, 2)
    return mt2(leps[:, 0], leps[:, 1], met)


def _each(f: Callable[[EventObjects], float]) -> Callable[[Sequence[EventObjects]], np.ndarray]:
    return lambda objs: np.array([f(o) for o in objs], np.float64)


#: Every physics quantity an event-level process can keep, by name (module docstring): each maps
#: N events to float64 ``[N]``.
PHYSICS: dict[str, Callable[[Sequence[EventObjects]], np.ndarray]] = {
    "met": _each(_met),
    "lep_pt": _each(lambda o: float(_pt(o.leptons[0]))),
    "m_ll": _each(lambda o: float(invariant_mass(o.leptons[0] + o.leptons[1]))),
    "mt": _each(_mt),
    "mt2": _mt2,
    "m_bb": _each(_m_bb),
    "n_jets": _each(lambda o: float(len(o.jets))),
    "n_bjets": _each(lambda o: float(o.btag.sum())),
    "ht": _each(lambda o: float(_pt(o.leptons).sum() + _pt(o.jets).sum())),
    "n_objects": _each(lambda o: float(len(o.leptons) + min(len(o.jets), o.max_jets) + 1)),
}


def physics_table(objs: Sequence[EventObjects], names) -> dict[str, np.ndarray]:
    """``{name: float64 [N]}`` for the requested names of :data:`PHYSICS`, over N events."""
    return {k: PHYSICS[k](objs) for k in names}


def physics_quantities(obj: EventObjects, names) -> dict[str, float]:
    """``{name: value}`` of one event (:func:`physics_table` of a single event)."""
    return {k: float(v[0]) for k, v in physics_table([obj], names).items()}


# --------------------------------------------------------------------- a SUSY spectrum
def chargino_slha(m_chargino: float, m_neutralino: float, m_heavy: float = 5000.0) -> str:
    """A minimal SLHA1 spectrum for chargino-pair production, as text for Pythia's ``SLHA:file``.

    The lightest chargino (pure wino, ``UMIX = VMIX = 1``) has mass ``m_chargino`` and decays
    100 % to ``W + chi_1^0`` (an SLHA ``DECAY`` table, width 0.01 GeV: prompt, isotropic in its
    rest frame as Pythia treats table decays); ``chi_1^0`` (pure bino) has mass ``m_neutralino``
    and is stable. The wino-like ``chi_2^0`` sits 5 GeV above the chargino and is not produced
    (the process selects ``chi_1+ chi_1-``). Higgsinos, heavy Higgs bosons, sfermions and the
    gluino are decoupled at ``m_heavy`` (``mu = m_heavy``, tan beta = 10), so squark exchange
    does not contribute. Standard-Model inputs are PDG-like; ``h`` at 125 GeV.
    """
    mass = [
        (25, 125.0, "h"),
        (35, m_heavy, "H"),
        (36, m_heavy, "A"),
        (37, m_heavy + 2.0, "H+"),
        *[(pid, m_heavy, n) for pid, n in _HEAVY],
        (1000022, m_neutralino, "~chi_10"),
        (1000023, m_chargino + 5.0, "~chi_20"),
        (1000025, -m_heavy, "~chi_30"),
        (1000035, m_heavy + 10.0, "~chi_40"),
        (1000024, m_chargino, "~chi_1+"),
        (1000037, m_heavy + 10.0, "~chi_2+"),
    ]
    r = 0.7071067812
    lines = [
        f"# chargino pair: m(chi_1+) = {m_chargino:g} GeV -> W chi_10, m(chi_10) = "
        f"{m_neutralino:g} GeV; everything else at {m_heavy:g} GeV",
        "BLOCK MODSEL",
        "    1    0   # general MSSM, low-scale input",
        "BLOCK SMINPUTS",
        "    1   1.279340E+02   # 1/alpha_em(MZ)",
        "    2   1.166370E-05   # G_F",
        "    3   1.180000E-01   # alpha_s(MZ)",
        "    4   9.118760E+01   # MZ",
        "    5   4.180000E+00   # mb(mb)",
        "    6   1.725000E+02   # mt",
        "    7   1.776860E+00   # mtau",
        "BLOCK MINPAR",
        "    3   1.000000E+01   # tan(beta)",
        "BLOCK MASS",
        *[f"  {pid:>8d}   {m: .6E}   # {n}" for pid, m, n in mass],
        "BLOCK NMIX   # chi_10 = bino, chi_20 = wino, chi_30,40 = higgsinos",
        "  1  1   1.000000E+00",
        "  2  2   1.000000E+00",
        f"  3  3   {r:.6E}",
        f"  3  4  -{r:.6E}",
        f"  4  3   {r:.6E}",
        f"  4  4   {r:.6E}",
        "BLOCK UMIX   # chi_1+ = wino",
        "  1  1   1.000000E+00",
        "  2  2   1.000000E+00",
        "BLOCK VMIX",
        "  1  1   1.000000E+00",
        "  2  2   1.000000E+00",
        *[
            line
            for blk in ("STOPMIX", "SBOTMIX", "STAUMIX")
            for line in (f"BLOCK {blk}", "  1  1   1.000000E+00", "  2  2   1.000000E+00")
        ],
        "BLOCK ALPHA",
        "  -1.000000E-01",
        f"BLOCK HMIX Q= {m_heavy:.6E}",
        f"  1   {m_heavy:.6E}   # mu",
        "  2   1.000000E+01   # tan(beta)",
        "  3   2.460000E+02   # v",
        f"  4   {m_heavy**2:.6E}   # m_A^2",
        "DECAY   1000024   1.000000E-02   # ~chi_1+",
        "   1.000000E+00   2   1000022   24   # BR(~chi_1+ -> ~chi_10 W+)",
        "DECAY   1000022   0.000000E+00   # ~chi_10: stable",
    ]
    return "\n".join(lines) + "\n"


#: Sparticles decoupled at ``m_heavy`` in :func:`chargino_slha`: squarks, sleptons, gluino.
_HEAVY = [
    (1000001, "~d_L"),
    (2000001, "~d_R"),
    (1000002, "~u_L"),
    (2000002, "~u_R"),
    (1000003, "~s_L"),
    (2000003, "~s_R"),
    (1000004, "~c_L"),
    (2000004, "~c_R"),
    (1000005, "~b_1"),
    (2000005, "~b_2"),
    (1000006, "~t_1"),
    (2000006, "~t_2"),
    (1000011, "~e_L"),
    (2000011, "~e_R"),
    (1000012, "~nu_eL"),
    (1000013, "~mu_L"),
    (2000013, "~mu_R"),
    (1000014, "~nu_muL"),
    (1000015, "~tau_1"),
    (2000015, "~tau_2"),
    (1000016, "~nu_tauL"),
    (1000021, "~g"),
]
