"""Real quark-vs-gluon jets from ``uproot-issue96.root`` (scikit-hep-testdata 0.3.12) as graphs.

The file holds 13,607 simulated dijet events (tree ``tree``), i.e. 27,214 jets. Each jet becomes
one event of an :class:`~hepattr_jax.data.events.EventSet` whose nodes are its (up to 6) stored
tracks. The label is the jet's parton flavour: 1 = gluon (``jet{n}ID == 21``), 0 = quark
(``jet{n}ID`` in 1..5).

Branches read, per jet ``n`` in {1, 2} (momenta in MeV in the file, GeV everywhere here):

============== ====================================================================
``jet{n}P4``     jet four-momentum, TLorentzVector (``fP.fX``, ``fP.fY``, ``fP.fZ``, ``fE``)
``jet{n}ID``     parton flavour: 1-5 quark, 21 gluon, -1 unknown
``jet{n}ChgMult`` charged multiplicity of the jet (all its charged particles)
``jet{n}TotChg`` total charge of the jet
``jet{n}TrksP4`` up to 6 tracks of the jet, TLorentzVector each (not ordered by pT)
``jet{n}TrksChg`` the charges (+-1) of those tracks
============== ====================================================================

Jets dropped (each count is logged at INFO level by :func:`load_qg_jets`):

* unknown flavour (``ID == -1``): 4 jets (2 as ``jet1``, 2 as ``jet2``);
* no stored track (they cannot be graphs): 6 jets, one of which also has unknown flavour,
  so 5 more. All of them have ``ChgMult == 0``.

That leaves **27,205 jets** (14,095 gluon = 51.8 %) from the full file.

Known oddities of the file, kept as they are (no clipping):

* about 385 tracks (1.4 %) have a transverse momentum above that of their jet, up to 160 TeV
  (``pt_frac`` up to ~250) -- badly measured, almost straight tracks;
* ``jet{n}ChgMult`` counts all charged particles of the jet, so it exceeds the number of stored
  tracks whenever more than 6 (or soft ones) exist, and ``TotChg`` is not the sum of the stored
  track charges.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import DataError

log = logging.getLogger(__name__)

NODE_NAMES = ("log_pt", "log_e", "pt_frac", "d_eta", "d_phi", "charge")
GLOBAL_NAMES = ("log_jet_pt", "jet_eta", "log_jet_mass", "chg_mult")
PHYSICS_NAMES = ("jet_pt", "jet_eta", "jet_mass", "chg_mult", "tot_chg", "n_tracks", "parton_id")
TREE = "tree"
GLUON_ID = 21
QUARK_IDS = (1, 2, 3, 4, 5)
_MEV_TO_GEV = 1e-3
_FIELDS = ("P4", "ID", "ChgMult", "TotChg", "TrksP4", "TrksChg")


def default_path() -> str:
    """Local path of ``uproot-issue96.root`` inside the scikit-hep-testdata 0.3.12 wheel."""
    import skhep_testdata

    return skhep_testdata.data_path("uproot-issue96.root")


def _read_tree(path: Path) -> dict:
    """Reads the needed branches as awkward arrays; DataError names the file, tree or branch."""
    import uproot

    if not path.is_file():
        raise DataError(f"{path}: quark/gluon jet file not found")
    try:
        f = uproot.open(path)
    except Exception as e:  # uproot raises many types for a file that is not ROOT
        raise DataError(
            f"{path}: cannot be read as a ROOT file ({type(e).__name__}: {e})"
        ) from None
    with f:
        if TREE not in f:
            raise DataError(f"{path}: has no tree '{TREE}' (keys: {f.keys()})")
        tree = f[TREE]
        needed = [f"jet{n}{field}" for n in (1, 2) for field in _FIELDS]
        for name in needed:
            if name not in tree:
                raise DataError(f"{path}: tree '{TREE}' has no branch '{name}'")
        try:
            return tree.arrays(needed, library="ak")
        except Exception as e:
            raise DataError(
                f"{path}: tree '{TREE}' cannot be read ({type(e).__name__}: {e})"
            ) from None


def _p4_numpy(p4) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(px, py, pz, E) float64 in GeV from a TLorentzVector awkward array (flat)."""
    import awkward as ak

    return tuple(
        ak.to_numpy(x).astype(np.float64) * _MEV_TO_GEV
        for x in (p4.fP.fX, p4.fP.fY, p4.fP.fZ, p4.fE)
    )


def load_qg_jets(path: str | Path | None = None, max_jets: int | None = None) -> EventSet:
    """Loads quark (label 0) and gluon (label 1) jets as graphs of their tracks.

    One event per jet, id ``2 * entry + (n - 1)`` for ``jet{n}`` of tree entry ``entry``; ids are
    increasing along the returned set. Jets with unknown flavour or no stored track are dropped
    (see the module docstring: 27,205 jets remain from the full file; counts are logged).

    Node features (one row per track, float32 ``[n_tracks, 6]``), with track and jet transverse
    momentum ``pT = sqrt(px^2 + py^2)``, energy ``E`` (GeV), pseudorapidity
    ``eta = asinh(pz / pT)`` and azimuth ``phi = atan2(py, px)``:

    * ``log_pt = ln(pT_trk / GeV)``, ``log_e = ln(E_trk / GeV)``;
    * ``pt_frac = pT_trk / pT_jet``;
    * ``d_eta = eta_trk - eta_jet``, ``d_phi = phi_trk - phi_jet`` wrapped into [-pi, pi);
    * ``charge`` in {-1, +1}.

    ``eta_phi = (3, 4)`` points at ``d_eta, d_phi`` for kNN graphs.

    Event-level inputs (float32 ``[N, 4]``): ``log_jet_pt = ln(pT_jet / GeV)``, ``jet_eta``,
    ``log_jet_mass = ln(1 + m_jet / GeV)`` with ``m_jet = sqrt(max(E^2 - |p|^2, 0))``, and
    ``chg_mult`` (the full charged multiplicity ``jet{n}ChgMult``, not the number of stored tracks).

    Physics quantities (float64 ``[N]``): ``jet_pt``, ``jet_eta``, ``jet_mass`` (GeV),
    ``chg_mult``, ``tot_chg``, ``n_tracks`` (stored tracks, 1..6), ``parton_id`` (1-5 or 21).

    Args:
      path: the ROOT file; default the copy shipped in scikit-hep-testdata 0.3.12.
      max_jets: keep only the first ``max_jets`` jets (lowest ids) after dropping.

    Raises:
      DataError: the file is missing or unreadable (message names the path), or the tree or a
        needed branch is missing (message names it).
    """
    import awkward as ak

    # Imported here, not at module level: graphs.py imports hepattr_jax.data, so a top-level
    # import would be circular as soon as data/__init__.py re-exports this module.
    from hepattr_jax.graphs import delta_phi

    path = Path(default_path() if path is None else path)
    arrays = _read_tree(path)
    n_entry = len(arrays)

    # Interleave jet1 and jet2 of each entry: position k = 2 * entry + (n - 1) is also the id.
    def jets(field: str):
        a1, a2 = arrays[f"jet1{field}"], arrays[f"jet2{field}"]
        return ak.flatten(ak.concatenate([a1[:, None], a2[:, None]], axis=1), axis=1)

    ids = np.arange(2 * n_entry, dtype=np.int64)
    parton = ak.to_numpy(jets("ID")).astype(np.int64)
    chg_mult = ak.to_numpy(jets("ChgMult")).astype(np.float64)
    tot_chg = ak.to_numpy(jets("TotChg")).astype(np.float64)
    jpx, jpy, jpz, je = _p4_numpy(jets("P4"))
    trks = jets("TrksP4")
    trk_chg = jets("TrksChg")
    n_trk = ak.to_numpy(ak.num(trks, axis=1)).astype(np.int64)
    if not np.array_equal(n_trk, ak.to_numpy(ak.num(trk_chg, axis=1))):
        raise DataError(f"{path}: branches 'jet{{n}}TrksP4' and 'jet{{n}}TrksChg' differ in length")

    known = np.isin(parton, (*QUARK_IDS, GLUON_ID))
    has_trk = n_trk > 0
    log.info(
        "%s: dropped %d jets of unknown flavour and %d more with no stored track; %d jets kept",
        path,
        int((~known).sum()),
        int((known & ~has_trk).sum()),
        int((known & has_trk).sum()),
    )
    keep = np.flatnonzero(known & has_trk)
    if max_jets is not None:
        keep = keep[: max(int(max_jets), 0)]

    # Per-jet quantities of the kept jets (float64, GeV).
    jpx, jpy, jpz, je = jpx[keep], jpy[keep], jpz[keep], je[keep]
    jet_pt = np.hypot(jpx, jpy)
    jet_eta = np.arcsinh(jpz / jet_pt)
    jet_phi = np.arctan2(jpy, jpx)
    jet_mass = np.sqrt(np.maximum(je**2 - jpx**2 - jpy**2 - jpz**2, 0.0))
    counts = n_trk[keep]

    # Per-track quantities, flat over the kept jets in id order.
    tpx, tpy, tpz, te = _p4_numpy(ak.flatten(trks[keep], axis=1))
    charge = ak.to_numpy(ak.flatten(trk_chg[keep], axis=1)).astype(np.float64)
    t_pt = np.hypot(tpx, tpy)
    t_eta = np.arcsinh(tpz / t_pt)
    t_phi = np.arctan2(tpy, tpx)

    def per_track(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, counts)

    nodes = np.stack(
        [
            np.log(t_pt),
            np.log(te),
            t_pt / per_track(jet_pt),
            t_eta - per_track(jet_eta),
            delta_phi(t_phi, per_track(jet_phi)),
            charge,
        ],
        axis=1,
    ).astype(np.float32)
    glob = np.stack([np.log(jet_pt), jet_eta, np.log1p(jet_mass), chg_mult[keep]], axis=1).astype(
        np.float32
    )
    physics = {
        "jet_pt": jet_pt,
        "jet_eta": jet_eta,
        "jet_mass": jet_mass,
        "chg_mult": chg_mult[keep],
        "tot_chg": tot_chg[keep],
        "n_tracks": counts.astype(np.float64),
        "parton_id": parton[keep].astype(np.float64),
    }
    return EventSet(
        ids=ids[keep],
        labels=(parton[keep] == GLUON_ID).astype(np.int32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        nodes=nodes,
        node_names=NODE_NAMES,
        globals=glob,
        global_names=GLOBAL_NAMES,
        physics=physics,
        source=str(path),
        eta_phi=(3, 4),
    ).validate()
