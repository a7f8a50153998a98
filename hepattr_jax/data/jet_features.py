"""Jet inputs as the field uses them (ParticleNet / ParT), in plain NumPy.

Per-constituent features (ParticleNet, arXiv 1902.08570, Table 1; ParT, arXiv 2202.03772), for a
constituent of transverse momentum ``pT``, energy ``E``, pseudorapidity ``eta`` and azimuth ``phi``
in a jet of ``pT_J``, ``E_J``, ``eta_J``, ``phi_J``:

=============== ==========================================================================
``d_eta``        ``eta - eta_J``
``d_phi``        ``phi - phi_J`` wrapped into [-pi, pi)
``log_pt``       ``ln(pT / GeV)``
``log_e``        ``ln(E / GeV)``
``log_pt_rel``   ``ln(pT / pT_J)``
``log_e_rel``    ``ln(E / E_J)``
``delta_r``      ``sqrt(d_eta^2 + d_phi^2)``
=============== ==========================================================================

and, for quark/gluon jets (particle ids kept), ``charge`` and the one-hot particle-type flags
``is_electron`` (|pid| = 11), ``is_muon`` (13), ``is_photon`` (22), ``is_charged_hadron`` and
``is_neutral_hadron`` (every other charged / neutral particle).

Jet substructure: N-subjettiness (Thaler & Van Tilburg, arXiv 1011.2268) with beta = 1,

    tau_N = sum_k pT_k min_j dR(k, axis_j) / sum_k pT_k R0,

where the N axes are the exclusive-kT subjets of the constituents (computed by the caller, e.g.
``fastjet`` ``exclusive_jets(N)``) and dR uses rapidity and azimuth. These axes are not minimised,
so ``tau_N <= tau_{N-1}`` is not guaranteed: a few per cent of QCD jets get tau21 or tau32 a little
above 1 (a soft wide-angle kT subjet whose axis sits near the core adds nothing).
``pairwise_features`` gives
the ParT interaction inputs ``ln Delta, ln kT, ln z, ln m^2``.
"""

from __future__ import annotations

import numpy as np

# Names of the per-constituent features, in column order; eta_phi = (0, 1).
KINEMATIC_NAMES = ("d_eta", "d_phi", "log_pt", "log_e", "log_pt_rel", "log_e_rel", "delta_r")
PID_NAMES = (
    "charge",
    "is_electron",
    "is_muon",
    "is_photon",
    "is_charged_hadron",
    "is_neutral_hadron",
)
PAIR_NAMES = ("ln_delta", "ln_kt", "ln_z", "ln_m2")


def delta_phi(a, b) -> np.ndarray:
    """``a - b`` wrapped into [-pi, pi)."""
    return (np.asarray(a, np.float64) - np.asarray(b, np.float64) + np.pi) % (2 * np.pi) - np.pi


def pt_eta_phi(px, py, pz) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pT, eta, phi)`` from Cartesian momenta (float64); eta = asinh(pz / pT)."""
    px, py, pz = (np.asarray(x, np.float64) for x in (px, py, pz))
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore"):
        eta = np.arcsinh(pz / pt)
    return pt, eta, np.arctan2(py, px)


def rapidity(pz, e) -> np.ndarray:
    """``y = 0.5 ln((E + pz) / (E - pz))`` (float64)."""
    pz, e = np.asarray(pz, np.float64), np.asarray(e, np.float64)
    return 0.5 * np.log((e + pz) / (e - pz))


def constituent_features(
    p4: np.ndarray, jet_p4: np.ndarray, pid: np.ndarray | None = None, charge=None
) -> np.ndarray:
    """Per-constituent inputs of one jet (module docstring), float64 ``[n, 7]`` or ``[n, 13]``.

    Args:
      p4: ``[n, 4]`` constituent ``(px, py, pz, E)`` in GeV.
      jet_p4: ``[4]`` jet ``(px, py, pz, E)``.
      pid: ``[n]`` PDG ids; with ``charge`` (``[n]``, units of e) adds the six
        :data:`PID_NAMES` columns.
    """
    p4 = np.asarray(p4, np.float64).reshape(-1, 4)
    jet_p4 = np.asarray(jet_p4, np.float64)
    pt, eta, phi = pt_eta_phi(p4[:, 0], p4[:, 1], p4[:, 2])
    jpt, jeta, jphi = pt_eta_phi(jet_p4[0], jet_p4[1], jet_p4[2])
    d_eta = eta - jeta
    d_phi = delta_phi(phi, jphi)
    cols = [
        d_eta,
        d_phi,
        np.log(pt),
        np.log(p4[:, 3]),
        np.log(pt / jpt),
        np.log(p4[:, 3] / jet_p4[3]),
        np.hypot(d_eta, d_phi),
    ]
    if pid is not None:
        apid = np.abs(np.asarray(pid))
        charged = np.asarray(charge, np.float64) != 0
        is_e, is_mu, is_gamma = apid == 11, apid == 13, apid == 22
        cols += [
            np.asarray(charge, np.float64),
            is_e,
            is_mu,
            is_gamma,
            charged & ~is_e & ~is_mu,
            ~charged & ~is_gamma,
        ]
    return np.stack([np.asarray(c, np.float64) for c in cols], axis=1)


def nsubjettiness(pt, y, phi, axes_y, axes_phi, r0: float, beta: float = 1.0) -> float:
    """``tau_N`` of one jet for the given ``N`` axes (module docstring); 0 when N >= n.

    Args:
      pt, y, phi: ``[n]`` constituent transverse momenta, rapidities and azimuths.
      axes_y, axes_phi: ``[N]`` axis rapidities and azimuths.
      r0: the jet radius (normalisation ``d0 = sum_k pT_k r0^beta``).
    """
    pt = np.asarray(pt, np.float64)
    axes_y = np.atleast_1d(np.asarray(axes_y, np.float64))
    if len(axes_y) >= len(pt):
        return 0.0  # every constituent can be its own axis
    dy = np.asarray(y, np.float64)[:, None] - axes_y[None, :]
    dphi = delta_phi(np.asarray(phi)[:, None], np.atleast_1d(axes_phi)[None, :])
    dr = np.sqrt(dy**2 + dphi**2).min(axis=1)
    return float(np.sum(pt * dr**beta) / (np.sum(pt) * r0**beta))


def tau_ratio(num: float, den: float) -> float:
    """``num / den``, 0 when ``den`` is 0 (a jet with too few constituents)."""
    return float(num / den) if den > 0 else 0.0


def pairwise_features(p4: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """ParT interaction features of every constituent pair, float64 ``[n, n, 4]``.

    For constituents a, b with rapidity y, azimuth phi, transverse momentum pT and four-momentum
    p (ParT, arXiv 2202.03772, eq. 3)::

        Delta = sqrt((y_a - y_b)^2 + (phi_a - phi_b)^2)     (phi difference wrapped)
        kT    = min(pT_a, pT_b) Delta
        z     = min(pT_a, pT_b) / (pT_a + pT_b)
        m^2   = (E_a + E_b)^2 - |p_a + p_b|^2

    returned as ``ln max(x, eps)`` in the order :data:`PAIR_NAMES` (ParT clamps the same way; the
    diagonal, where Delta = kT = 0, gets ``ln eps``).

    Args:
      p4: ``[n, 4]`` ``(px, py, pz, E)`` in GeV.
    """
    p4 = np.asarray(p4, np.float64).reshape(-1, 4)
    pt = np.hypot(p4[:, 0], p4[:, 1])
    y = rapidity(p4[:, 2], p4[:, 3])
    phi = np.arctan2(p4[:, 1], p4[:, 0])
    delta = np.hypot(y[:, None] - y[None, :], delta_phi(phi[:, None], phi[None, :]))
    ptmin = np.minimum(pt[:, None], pt[None, :])
    kt = ptmin * delta
    z = ptmin / (pt[:, None] + pt[None, :])
    s = p4[:, None, :] + p4[None, :, :]
    m2 = s[..., 3] ** 2 - s[..., 0] ** 2 - s[..., 1] ** 2 - s[..., 2] ** 2
    return np.log(np.maximum(np.stack([delta, kt, z, m2], axis=-1), eps))


def invariant_mass(p4: np.ndarray) -> np.ndarray:
    """``sqrt(max(E^2 - |p|^2, 0))`` over the last axis of ``[..., 4]`` ``(px, py, pz, E)``."""
    p4 = np.asarray(p4, np.float64)
    m2 = p4[..., 3] ** 2 - p4[..., 0] ** 2 - p4[..., 1] ** 2 - p4[..., 2] ** 2
    return np.sqrt(np.maximum(m2, 0.0))
