"""A NumPy simulator of the UCI-SUSY-like dilepton + missing-momentum task.

Signal (label 1): ``pp -> chargino+ chargino-``, each ``chargino -> W + neutralino``,
``W -> lepton + neutrino``. Background (label 0): ``pp -> W+ W-``, each ``W -> lepton + neutrino``.
Both classes end in two opposite-sign leptons, missing transverse momentum and 0-2 ISR jets;
the signal has two extra invisible neutralinos and a heavier produced system.

Generation, per event (all vectorised over events; four-vectors are float64 ``[..., 4]`` arrays
``(E, px, py, pz)`` in GeV):

1. **Masses.** Each W mass from a relativistic-width Breit-Wigner (Cauchy in ``m``, mean
   ``M_W = 80.377``, width ``GAMMA_W = 2.085``, truncated to ``M_W +- 15 GAMMA_W``); charginos
   ``M_CHARGINO = 400``, neutralinos ``M_NEUTRALINO = 100``; each lepton an electron or muon
   (real masses) with probability 1/2.
2. **ISR.** ``n_jets`` in {0, 1, 2} with probabilities ``ISR_PROBS``; each jet massless with
   ``pT = 25 GeV + Exp(40 GeV)``, ``eta ~ U(-2.5, 2.5)``, ``phi ~ U(-pi, pi)``. The same for both
   classes, so the jet count carries no label information.
3. **Produced pair.** Invariant mass above threshold,
   ``m_pair = (m_a + m_b) (1 + x)``, ``x ~ Gamma(shape 1.5, scale 0.2)`` (a threshold-peaked shape
   with a falling tail, standing in for ``beta`` x falling parton luminosities); transverse
   momentum recoiling against the ISR jets plus a Gaussian intrinsic ``kT`` (5 GeV per
   component, unobserved); rapidity ``y ~ N(0, 1)`` clipped to ``|y| <= ln(sqrt(s) / m_pair)``,
   ``sqrt(s) = 13 TeV``. ``E = m_T cosh y``, ``pz = m_T sinh y``, ``m_T = sqrt(m^2 + pT^2)``.
4. **Decays.** Every two-body decay is done exactly and isotropically in the parent rest frame
   and boosted to the lab (:func:`two_body_decay`, :func:`boost`).
5. **Detector.** Lepton pT smeared by a Gaussian 2 %, jet pT by 10 % (direction exact, mass
   kept); missing transverse momentum ``MET_xy = -(sum of smeared lepton and jet pT vectors)``,
   so it contains the invisible particles, the unobserved kT and the smearing. There are no
   acceptance cuts (leptons can have any eta) and no fake or lost objects.

Node features (float32), one row per object, ordered: leptons by decreasing pT, jets by
decreasing pT, the MET object last. ``eta_phi = (1, 2)``.

=========== ================================================================
``log_pt``   ``ln(pT / GeV)`` (``ln(MET / GeV)`` for the MET object)
``eta``      pseudorapidity ``asinh(pz / pT)``; 0 for MET
``phi``      azimuth in [-pi, pi)
``log_e``    ``ln(E / GeV)``; for MET ``ln(MET / GeV)`` (massless at eta 0)
``charge``   lepton charge +-1; 0 for jets and MET
``is_lepton``, ``is_jet``, ``is_met``  one-hot object type
=========== ================================================================

Event-level inputs: ``log_met = ln(MET / GeV)``, ``n_jets``. Physics quantities (float64):
``met``, ``m_ll`` (dilepton invariant mass of the smeared leptons), ``mt2`` (:func:`mt2` of the
two smeared leptons and MET with a massless invisible test mass), ``ht`` (scalar pT sum of the
leptons and jets), ``n_objects``.
"""

from __future__ import annotations

import numpy as np

from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import ConfigError

# Masses and widths in GeV (PDG 2024 for the Standard Model ones).
M_W = 80.377
GAMMA_W = 2.085
M_ELECTRON = 0.51099895e-3
M_MUON = 0.1056583755
M_CHARGINO = 400.0
M_NEUTRALINO = 100.0
SQRT_S = 13000.0

BW_WINDOW = 15.0  # W mass truncated to M_W +- BW_WINDOW * GAMMA_W
PAIR_SHAPE, PAIR_SCALE = 1.5, 0.2  # m_pair / threshold - 1 ~ Gamma(shape, scale)
PAIR_Y_SIGMA = 1.0
KT_SIGMA = 5.0
ISR_PROBS = (0.55, 0.30, 0.15)
ISR_PT_MIN, ISR_PT_SCALE, ISR_ETA_MAX = 25.0, 40.0, 2.5
LEPTON_PT_RES, JET_PT_RES = 0.02, 0.10
MAX_JETS = 2

NODE_NAMES = ("log_pt", "eta", "phi", "log_e", "charge", "is_lepton", "is_jet", "is_met")
GLOBAL_NAMES = ("log_met", "n_jets")
MT2_DEFAULT_MAX_EVENTS = 50_000


# --------------------------------------------------------------------- kinematics
def mass(p4: np.ndarray) -> np.ndarray:
    """Invariant mass ``sqrt(max(E^2 - |p|^2, 0))`` of ``[..., 4]`` four-vectors: ``[...]``."""
    m2 = p4[..., 0] ** 2 - np.sum(p4[..., 1:] ** 2, axis=-1)
    return np.sqrt(np.maximum(m2, 0.0))


def boost(p4: np.ndarray, beta: np.ndarray, gamma: np.ndarray | None = None) -> np.ndarray:
    """Lorentz boost of four-vectors into a frame where the old rest frame moves with ``beta``.

    ``E' = gamma (E + beta.p)``, ``p' = p + (gamma^2 / (gamma + 1) beta.p + gamma E) beta``,
    ``gamma = 1 / sqrt(1 - |beta|^2)``.

    Args:
      p4: ``[..., 4]`` (E, px, py, pz).
      beta: ``[..., 3]`` velocity, ``|beta| < 1`` (broadcast against ``p4``).
      gamma: optional ``[...]`` Lorentz factor matching ``beta``; pass it when known (e.g.
        ``E / m`` of a parent) to avoid the cancellation in ``1 - |beta|^2`` at large boosts.

    Returns:
      ``[..., 4]`` boosted four-vectors.
    """
    p4 = np.asarray(p4, np.float64)
    beta = np.asarray(beta, np.float64)
    if gamma is None:
        gamma = 1.0 / np.sqrt(1.0 - np.sum(beta**2, axis=-1))
    bp = np.sum(beta * p4[..., 1:], axis=-1)
    e = gamma * (p4[..., 0] + bp)
    coef = gamma**2 / (gamma + 1.0) * bp + gamma * p4[..., 0]
    p = p4[..., 1:] + coef[..., None] * beta
    return np.concatenate([e[..., None], p], axis=-1)


def two_body_decay(
    parent_p4: np.ndarray, m1: np.ndarray | float, m2: np.ndarray | float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic two-body decay ``P -> 1 + 2``, exact in the parent rest frame, boosted to the lab.

    With parent mass ``M = sqrt(E^2 - |p|^2)``, the rest-frame energies are
    ``E1* = (M^2 + m1^2 - m2^2) / (2M)``, ``E2* = M - E1*`` and the momentum
    ``p* = sqrt(E1*^2 - m1^2)`` along ``n = (sin t cos f, sin t sin f, cos t)`` with
    ``cos t ~ U(-1, 1)``, ``f ~ U(0, 2 pi)`` (daughter 2 along ``-n``). Both are boosted by
    ``beta = p / E``, ``gamma = E / M``. Four-momentum is conserved and the daughter masses are
    exact up to float64 rounding.

    Args:
      parent_p4: ``[..., 4]`` float64 (E, px, py, pz), GeV.
      m1, m2: daughter masses, broadcastable to ``parent_p4.shape[:-1]``.
      rng: the generator; draws two uniforms of shape ``parent_p4.shape[:-1]``.

    Returns:
      ``(p1, p2)``, each ``[..., 4]`` in the lab frame.

    Raises:
      ValueError: a parent lighter than ``m1 + m2``.
    """
    parent_p4 = np.asarray(parent_p4, np.float64)
    shape = parent_p4.shape[:-1]
    m1 = np.broadcast_to(np.asarray(m1, np.float64), shape)
    m2 = np.broadcast_to(np.asarray(m2, np.float64), shape)
    big_m = mass(parent_p4)
    if np.any(big_m < m1 + m2):
        raise ValueError("two_body_decay: a parent is lighter than the sum of its daughter masses")
    e1 = (big_m**2 + m1**2 - m2**2) / (2.0 * big_m)
    e2 = big_m - e1
    pstar = np.sqrt(np.maximum(e1**2 - m1**2, 0.0))
    cos_t = rng.uniform(-1.0, 1.0, shape)
    phi = rng.uniform(0.0, 2.0 * np.pi, shape)
    sin_t = np.sqrt(1.0 - cos_t**2)
    n = np.stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t], axis=-1)
    p1 = np.concatenate([e1[..., None], pstar[..., None] * n], axis=-1)
    p2 = np.concatenate([e2[..., None], -pstar[..., None] * n], axis=-1)
    beta = parent_p4[..., 1:] / parent_p4[..., :1]
    gamma = parent_p4[..., 0] / big_m
    return boost(p1, beta, gamma), boost(p2, beta, gamma)


def _p4_from_pt_eta_phi_m(pt, eta, phi, m) -> np.ndarray:
    """``[..., 4]`` from pT, pseudorapidity, azimuth and mass."""
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    return np.stack([e, px, py, pz], axis=-1)


def _breit_wigner(rng: np.random.Generator, shape, m0: float, width: float) -> np.ndarray:
    """Cauchy ``m0 + width/2 tan(u)`` truncated to ``m0 +- BW_WINDOW width`` (inverse CDF)."""
    a = np.arctan(2.0 * BW_WINDOW)
    return m0 + 0.5 * width * np.tan(rng.uniform(-a, a, shape))


# --------------------------------------------------------------------- MT2
def mt2(
    vis1: np.ndarray,
    vis2: np.ndarray,
    met_xy: np.ndarray,
    m_invisible: float = 0.0,
    n_outer: int = 32,
    n_inner: int = 12,
    chunk: int = 8192,
) -> np.ndarray:
    """The stransverse mass MT2: golden-section search over ``q1x``, exact 1-D solve over ``q1y``.

    ``MT2 = min over q1 + q2 = MET of max(mT(v1, q1), mT(v2, q2))`` (Lester & Summers,
    hep-ph/9906349) with ``mT^2(v, q) = m_v^2 + m_x^2 + 2 (E_T,v E_T,q - pT_v . q)``,
    ``E_T = sqrt(m^2 + pT^2)``. Each ``g_i = mT_i^2`` is convex in ``q1`` (``E_T,q`` is convex,
    the rest linear), so ``h = max(g1, g2)`` is jointly convex and ``phi(q1x) = min_y h(q1x, y)``
    is convex in ``q1x``.

    * Inner (fixed ``q1x``): each ``g_i(y)`` has a closed-form minimiser ``y_i*``
      (``g1' = 0 at y1* = p1y sqrt(m_x^2 + q1x^2) / sqrt(m1^2 + p1x^2)``, likewise for ``g2`` in
      ``MET_y - y``). If ``g1(y1*) >= g2(y1*)`` the minimum is ``g1(y1*)`` (and symmetrically);
      otherwise it lies where ``g1 = g2`` between ``y1*`` and ``y2*``, where ``g1 - g2`` is
      monotone: found by Newton steps safeguarded by bisection (``n_inner`` steps).
    * Outer: golden-section search of ``phi`` over ``q1x = MET_x / 2 + S tan(t)``,
      ``t in (-pi/2, pi/2)``, ``S = (MET + pT1 + pT2) / 2`` (the whole line, unimodal in ``t``),
      ``n_outer`` steps.

    The value returned is ``h`` at a point found, an upper bound on the exact MT2 that is tight
    to about ``1e-4`` GeV at the defaults (tests compare it with a dense grid + Nelder-Mead and
    check the W-pair endpoint ``MT2 <= m_W`` at truth level).

    Args:
      vis1, vis2: ``[N, 4]`` visible four-vectors (E, px, py, pz), GeV.
      met_xy: ``[N, 2]`` missing transverse momentum.
      m_invisible: test mass of each invisible particle.
      n_outer, n_inner: iteration counts of the two searches.
      chunk: events per block (keeps the working set in cache).

    Returns:
      float64 ``[N]`` MT2 in GeV.
    """
    vis1 = np.asarray(vis1, np.float64)
    vis2 = np.asarray(vis2, np.float64)
    met_xy = np.asarray(met_xy, np.float64)
    out = np.empty(vis1.shape[0], np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for lo in range(0, vis1.shape[0], chunk):
            sl = slice(lo, lo + chunk)
            out[sl] = _mt2_block(
                vis1[sl], vis2[sl], met_xy[sl], float(m_invisible), n_outer, n_inner
            )
    return out


def _mt2_block(vis1, vis2, met_xy, mx: float, n_outer: int, n_inner: int) -> np.ndarray:
    """MT2 of one block; see :func:`mt2`. Runs under ``np.errstate`` (guarded divisions)."""
    mx2 = mx * mx
    m1sq = mass(vis1) ** 2
    m2sq = mass(vis2) ** 2
    p1x, p1y, p2x, p2y = vis1[:, 1], vis1[:, 2], vis2[:, 1], vis2[:, 2]
    et1 = np.sqrt(m1sq + p1x**2 + p1y**2)
    et2 = np.sqrt(m2sq + p2x**2 + p2y**2)
    tiny = 1e-12 * (et1 + et2) + 1e-300
    # sqrt(E_T^2 - p_y^2) = sqrt(m^2 + p_x^2), floored so the minimisers stay finite.
    d1 = np.maximum(np.sqrt(m1sq + p1x**2), tiny)
    d2 = np.maximum(np.sqrt(m2sq + p2x**2), tiny)
    mex, mey = met_xy[:, 0], met_xy[:, 1]
    scale = 0.5 * (np.hypot(mex, mey) + np.hypot(p1x, p1y) + np.hypot(p2x, p2y)) + 1e-6
    c1, c2 = m1sq + mx2, m2sq + mx2

    def phi(qx):
        rx = mex - qx
        a1 = mx2 + qx * qx
        a2 = mx2 + rx * rx
        k1 = c1 - 2.0 * p1x * qx
        k2 = c2 - 2.0 * p2x * rx

        def g12(y):
            u = mey - y
            s1 = np.sqrt(a1 + y * y)
            s2 = np.sqrt(a2 + u * u)
            return k1 + 2.0 * (et1 * s1 - p1y * y), k2 + 2.0 * (et2 * s2 - p2y * u), s1, s2, u

        y1 = p1y * np.sqrt(a1) / d1
        y2 = mey - p2y * np.sqrt(a2) / d2
        g1a, g2a, *_ = g12(y1)
        g1b, g2b, *_ = g12(y2)
        only1 = g1a >= g2a
        only2 = ~only1 & (g2b >= g1b)
        # Balanced case: root of D = g1 - g2 with D(neg) < 0 < D(pos).
        neg, pos = y1, y2
        dneg, dpos = g1a - g2a, g1b - g2b
        y = neg - dneg * (pos - neg) / (dpos - dneg)
        y = np.where(np.isfinite(y), y, 0.5 * (neg + pos))
        best = np.maximum(g1a, g2a)
        for _ in range(n_inner):
            g1, g2, s1, s2, u = g12(y)
            d = g1 - g2
            best = np.minimum(best, np.maximum(g1, g2))
            neg = np.where(d < 0, y, neg)
            pos = np.where(d < 0, pos, y)
            slope = 2.0 * (et1 * y / s1 - p1y) + 2.0 * (et2 * u / s2 - p2y)  # dD/dy
            newton = y - d / slope
            inside = (newton - neg) * (newton - pos) < 0  # strictly inside the bracket
            y = np.where(inside, newton, 0.5 * (neg + pos))
        return np.where(only1, g1a, np.where(only2, g2b, best))

    lim = 0.5 * np.pi - 1e-9
    _, val = _golden(lambda t: phi(0.5 * mex + scale * np.tan(t)), -lim, lim, len(mex), n_outer)
    return np.sqrt(np.maximum(val, 0.0))


def _golden(f, lo: float, hi: float, n: int, n_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised golden-section minimisation of unimodal ``f: [n] -> [n]`` on ``[lo, hi]``.

    Returns the best point and value seen (the final bracket shrinks as ``0.618^n_iter``).
    """
    r = 0.5 * (np.sqrt(5.0) - 1.0)
    a = np.full(n, lo)
    b = np.full(n, hi)
    c = b - r * (b - a)
    d = a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(n_iter):
        left = fc < fd  # the minimum lies in [a, d]
        a = np.where(left, a, c)
        b = np.where(left, d, b)
        x = np.where(left, b - r * (b - a), a + r * (b - a))
        fx = f(x)
        c, d = np.where(left, x, d), np.where(left, c, x)
        fc, fd = np.where(left, fx, fd), np.where(left, fc, fx)
    left = fc < fd
    return np.where(left, c, d), np.where(left, fc, fd)


# --------------------------------------------------------------------- generator
def _check_args(n_events: int, signal_fraction: float) -> None:
    if int(n_events) != n_events or n_events < 1:
        raise ConfigError(f"susy_sim: n_events must be a positive integer, got {n_events!r}")
    if not 0.0 <= signal_fraction <= 1.0:
        raise ConfigError(f"susy_sim: signal_fraction must be in [0, 1], got {signal_fraction!r}")


def _generate_truth(n: int, rng: np.random.Generator, signal_fraction: float) -> dict:
    """Truth-level events (before the detector); consumes ``rng`` in a fixed order."""
    n_sig = int(round(n * signal_fraction))
    labels = rng.permutation(np.arange(n) < n_sig).astype(np.int32)
    sig = labels == 1

    m_w = _breit_wigner(rng, (n, 2), M_W, GAMMA_W)
    m_parent = np.where(sig[:, None], M_CHARGINO, m_w)
    lepton_mass = np.where(rng.integers(0, 2, (n, 2)) == 0, M_ELECTRON, M_MUON)

    n_jets = rng.choice(len(ISR_PROBS), size=n, p=ISR_PROBS)
    jet_on = np.arange(MAX_JETS)[None, :] < n_jets[:, None]
    jet_pt = ISR_PT_MIN + rng.exponential(ISR_PT_SCALE, (n, MAX_JETS))
    jet_eta = rng.uniform(-ISR_ETA_MAX, ISR_ETA_MAX, (n, MAX_JETS))
    jet_phi = rng.uniform(-np.pi, np.pi, (n, MAX_JETS))
    jets = _p4_from_pt_eta_phi_m(jet_pt, jet_eta, jet_phi, 0.0) * jet_on[..., None]

    m_pair = m_parent.sum(axis=1) * (1.0 + rng.gamma(PAIR_SHAPE, PAIR_SCALE, n))
    pair_pt = -jets[:, :, 1:3].sum(axis=1) + rng.normal(0.0, KT_SIGMA, (n, 2))
    y_max = np.log(SQRT_S / m_pair)
    y = np.clip(rng.normal(0.0, PAIR_Y_SIGMA, n), -y_max, y_max)
    mt = np.sqrt(m_pair**2 + np.sum(pair_pt**2, axis=1))
    pair = np.stack([mt * np.cosh(y), pair_pt[:, 0], pair_pt[:, 1], mt * np.sinh(y)], axis=-1)

    pa, pb = two_body_decay(pair, m_parent[:, 0], m_parent[:, 1], rng)
    parents = np.stack([pa, pb], axis=1)  # [n, 2, 4]: index 0 positive, 1 negative
    w = parents.copy()
    chi0 = np.zeros_like(parents)
    if sig.any():
        w[sig], chi0[sig] = two_body_decay(parents[sig], m_w[sig], M_NEUTRALINO, rng)
    leptons, neutrinos = two_body_decay(w, lepton_mass, 0.0, rng)
    return {
        "labels": labels,
        "pair": pair,
        "parents": parents,
        "w": w,
        "neutralinos": chi0,
        "leptons": leptons,
        "neutrinos": neutrinos,
        "lepton_mass": lepton_mass,
        "lepton_charge": np.broadcast_to(np.array([1.0, -1.0]), (n, 2)).copy(),
        "jets": jets,
        "n_jets": n_jets,
    }


def susy_truth(n_events: int, seed: int = 0, signal_fraction: float = 0.5) -> dict[str, np.ndarray]:
    """The truth record behind ``simulate_susy(n_events, seed, signal_fraction)``, event by event.

    Returns float64 four-vectors ``[N, 2, 4]`` (index 0 from the positive parent, 1 from the
    negative one): ``parents`` (charginos or Ws), ``w``, ``neutralinos`` (zeros in background),
    ``leptons``, ``neutrinos``, ``jets`` (zeros where absent); ``pair`` ``[N, 4]``; ``labels``,
    ``n_jets`` ``[N]``; ``lepton_mass``, ``lepton_charge`` ``[N, 2]``. Leptons here are
    unsmeared and in production order (the EventSet orders them by smeared pT).
    """
    _check_args(n_events, signal_fraction)
    return _generate_truth(int(n_events), np.random.default_rng(seed), signal_fraction)


def simulate_susy(
    n_events: int,
    seed: int = 0,
    signal_fraction: float = 0.5,
    with_mt2: bool | None = None,
) -> EventSet:
    """Simulated chargino-pair (label 1) vs W-pair (label 0) dilepton events as object graphs.

    See the module docstring for the physics, the node features ``NODE_NAMES``
    (``eta_phi = (1, 2)``), the event-level inputs ``GLOBAL_NAMES`` and the physics quantities.
    Each event has 3 to 5 nodes (2 leptons, 0-2 jets, MET). Ids are ``arange(n_events)``;
    exactly ``round(n_events * signal_fraction)`` events are signal. The result depends only on
    the arguments: the same seed gives the same bytes.

    Args:
      n_events: number of events (>= 1).
      seed: seed of ``np.random.default_rng``.
      signal_fraction: fraction of signal events.
      with_mt2: compute the ``mt2`` physics quantity (about 25 us per event); ``None`` means
        only when ``n_events <= 50_000``. Without it the ``physics`` dict has no ``mt2`` key.

    Raises:
      ConfigError: ``n_events < 1`` or ``signal_fraction`` outside [0, 1].
    """
    _check_args(n_events, signal_fraction)
    n = int(n_events)
    rng = np.random.default_rng(seed)
    t = _generate_truth(n, rng, signal_fraction)

    # Detector: scale 3-momenta by the smeared/true pT ratio, keep the mass and direction.
    lep_scale = np.maximum(1.0 + LEPTON_PT_RES * rng.standard_normal((n, 2)), 0.05)
    jet_scale = np.maximum(1.0 + JET_PT_RES * rng.standard_normal((n, MAX_JETS)), 0.05)
    lep_p = t["leptons"][..., 1:] * lep_scale[..., None]
    lep = np.concatenate(
        [np.sqrt(np.sum(lep_p**2, -1) + t["lepton_mass"] ** 2)[..., None], lep_p], axis=-1
    )
    jets = t["jets"] * jet_scale[..., None]  # massless: E scales with |p|
    met_xy = -(lep[:, :, 1:3].sum(axis=1) + jets[:, :, 1:3].sum(axis=1))
    met = np.hypot(met_xy[:, 0], met_xy[:, 1])

    # Order leptons and jets by decreasing pT (absent jets have pT 0 and sort last).
    lep_pt = np.hypot(lep[..., 1], lep[..., 2])
    order = np.argsort(-lep_pt, axis=1, kind="stable")
    lep = np.take_along_axis(lep, order[..., None], axis=1)
    lep_charge = np.take_along_axis(t["lepton_charge"], order, axis=1)
    jet_pt = np.hypot(jets[..., 1], jets[..., 2])
    order = np.argsort(-jet_pt, axis=1, kind="stable")
    jets = np.take_along_axis(jets, order[..., None], axis=1)
    jet_on = np.arange(MAX_JETS)[None, :] < t["n_jets"][:, None]

    # Object slots [n, 5] = (lepton, lepton, jet, jet, MET); absent jets get dummy momenta that
    # are masked away below (kept finite so nothing warns).
    vis = np.concatenate([lep, np.where(jet_on[..., None], jets, 1.0)], axis=1)  # [n, 4, 4]
    pt = np.hypot(vis[..., 1], vis[..., 2])
    eta = np.arcsinh(vis[..., 3] / pt)
    phi = np.arctan2(vis[..., 2], vis[..., 1])
    log_met = np.log(np.maximum(met, 1e-6))
    zeros = np.zeros((n, 2))
    ones = np.ones((n, 2))
    slots = np.stack(
        [
            np.concatenate([np.log(pt), log_met[:, None]], axis=1),
            np.concatenate([eta, np.zeros((n, 1))], axis=1),
            _wrap(np.concatenate([phi, np.arctan2(met_xy[:, 1:2], met_xy[:, 0:1])], axis=1)),
            np.concatenate([np.log(vis[..., 0]), log_met[:, None]], axis=1),
            np.concatenate([lep_charge, zeros, np.zeros((n, 1))], axis=1),
            np.concatenate([ones, zeros, np.zeros((n, 1))], axis=1),
            np.concatenate([zeros, ones, np.zeros((n, 1))], axis=1),
            np.concatenate([zeros, zeros, np.ones((n, 1))], axis=1),
        ],
        axis=-1,
    )  # [n, 5, 8]
    present = np.concatenate([np.ones((n, 2), bool), jet_on, np.ones((n, 1), bool)], axis=1)
    counts = present.sum(axis=1)

    ll = lep[:, 0] + lep[:, 1]
    physics = {
        "met": met,
        "m_ll": mass(ll),
        "ht": lep_pt.sum(axis=1) + jet_pt.sum(axis=1),
        "n_objects": counts.astype(np.float64),
    }
    if with_mt2 or (with_mt2 is None and n <= MT2_DEFAULT_MAX_EVENTS):
        physics["mt2"] = mt2(lep[:, 0], lep[:, 1], met_xy)
    return EventSet(
        ids=np.arange(n, dtype=np.int64),
        labels=t["labels"],
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        nodes=slots[present].astype(np.float32),
        node_names=NODE_NAMES,
        globals=np.stack([log_met, t["n_jets"]], axis=1).astype(np.float32),
        global_names=GLOBAL_NAMES,
        physics=physics,
        source=f"susy_sim(n_events={n}, seed={seed}, signal_fraction={signal_fraction})",
        eta_phi=(1, 2),
    ).validate()


def _wrap(phi: np.ndarray) -> np.ndarray:
    """Azimuth wrapped into [-pi, pi) (same convention as ``graphs.delta_phi``)."""
    return (phi + np.pi) % (2.0 * np.pi) - np.pi
