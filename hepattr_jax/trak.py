"""TRAK: attribution from projected gradients of the model output (Park et al. 2023,
arXiv 2303.14186), for binary event classifiers.

For one trained model (an *ensemble member*: a checkpoint of a run), with the model-output
function the logit margin of the true class, ``f(z; theta) = (2y - 1) logit(z; theta)``:

* features ``phi(z) = grad_theta f(z; theta) R`` ``[d]``, with ``R`` the keyed JL projection of
  :mod:`hepattr_jax.projection` (fused into the per-event kernel; ``Phi`` ``[N, d]`` stacks the
  training events' features);
* the weights ``q(z) = 1 - p(z)``, ``p = sigmoid(f)`` the probability of the true class (the
  diagonal of TRAK's ``Q``: for the logistic loss, ``grad l = -(1 - p) grad f``);
* the score of train event ``z_i`` on test event ``x``:
  ``tau(x, z_i) = phi(x)^T (Phi^T Phi + lambda I)^-1 phi(z_i) q(z_i)``.

Over ``E`` members (checkpoints of one run, independently trained runs, or both) TRAK averages
the feature part and the weights separately:
``tau(x, z_i) = [1/E sum_e phi_e(x)^T G_e^-1 phi_e(z_i)] * [1/E sum_e q_e(z_i)]`` with
``G_e = Phi_e^T Phi_e + lambda_e I``. ``lambda_e = damping * tr(Phi_e^T Phi_e) / d`` (a fraction
of the mean eigenvalue, so ``damping`` does not depend on the gradient scale). TRAK
self-influence is ``tau(z_i, z_i)`` (a leverage score).

Shapes: ``train_features`` ``[E, N, d]``, ``train_margins`` ``[E, N]``, ``test_features``
``[E, M, d]``; scores ``[N, M]`` (rows train, as :func:`hepattr_jax.tracin.influence_matrix`).
Scores are streamed over blocks of training events; ``d x d`` systems are solved in float64 by
Cholesky. :func:`trak_scores_reference` is the plain-inverse loop the tests compare with.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.linalg

from hepattr_jax.errors import ConfigError
from hepattr_jax.tracin import Checkpoints, projected_features


def featurize(
    layout,
    ckpts: Checkpoints,
    gs,
    projector,
    *,
    chunk_size: int = 64,
    progress: bool = True,
    mesh=None,
    on_chunk=None,
    skip_chunk=None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features [K, N, d], margins [K, N])`` of the events of ``gs`` at each checkpoint:
    projected gradients of the true-class logit margin, and the margin itself."""
    return projected_features(
        layout,
        ckpts,
        gs,
        projector,
        output="margin",
        chunk_size=chunk_size,
        progress=progress,
        mesh=mesh,
        with_values=True,
        on_chunk=on_chunk,
        skip_chunk=skip_chunk,
    )


def one_minus_p(margins: np.ndarray) -> np.ndarray:
    """``1 - sigmoid(margin)``, the TRAK weight (stable for large margins of either sign)."""
    m = np.asarray(margins, np.float64)
    return 0.5 * (1.0 - np.tanh(0.5 * m))


def _check(train_features, train_margins, test_features=None) -> None:
    tf, tm = np.shape(train_features), np.shape(train_margins)
    if len(tf) != 3 or tm != tf[:2]:
        raise ConfigError(
            f"train features {list(tf)} and margins {list(tm)}: want [E, N, d] and [E, N]"
        )
    if test_features is not None:
        sf = np.shape(test_features)
        if len(sf) != 3 or sf[0] != tf[0] or sf[2] != tf[2]:
            raise ConfigError(
                f"test features {list(sf)} do not match train features {list(tf)} "
                "(same members E and dimension d)"
            )
    for name, a in (("train features", train_features), ("train margins", train_margins)):
        if not np.all(np.isfinite(a)):
            raise ConfigError(f"{name} contain NaN or inf")


def _gram_factor(phi: np.ndarray, damping: float, block: int):
    """Cholesky factor of ``Phi^T Phi + lambda I`` (float64, accumulated over row blocks)."""
    d = phi.shape[1]
    gram = np.zeros((d, d))
    for s in range(0, phi.shape[0], block):
        p = np.asarray(phi[s : s + block], np.float64)
        gram += p.T @ p
    lam = damping * np.trace(gram) / d
    if lam == 0 and damping > 0:
        lam = damping  # all-zero features: keep the system solvable
    gram[np.diag_indices(d)] += lam
    try:
        return scipy.linalg.cho_factor(gram, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise ConfigError(
            f"Phi^T Phi + lambda I is singular (damping {damping}); use damping > 0"
        ) from None


def gram_factors(train_features, *, damping: float = 1e-3, block: int = 8192) -> list:
    """Cholesky factors of ``G_e = Phi_e^T Phi_e + lambda_e I``, one per member: the costly
    part (``N d^2`` per member) that scores and self-influence share (pass it as ``factors``)."""
    return [_gram_factor(train_features[e], damping, block) for e in range(len(train_features))]


def solved_test_features(
    train_features, test_features, *, damping: float = 1e-3, block: int = 8192, factors=None
):
    """``[E, d, M]``: ``G_e^-1 phi_e(x)`` for every member ``e`` and test event ``x``."""
    if factors is None:
        factors = gram_factors(train_features, damping=damping, block=block)
    return np.stack(
        [
            scipy.linalg.cho_solve(f, np.asarray(test_features[e], np.float64).T)
            for e, f in enumerate(factors)
        ]
    )


def trak_score_blocks(
    train_features,
    train_margins,
    test_features,
    *,
    damping: float = 1e-3,
    block: int = 8192,
    factors=None,
) -> Iterator[tuple[slice, np.ndarray]]:
    """Streams ``(rows, scores [rows, M])`` over blocks of training events (see module doc);
    memory is ``O(E d M + block M)`` whatever ``N``. ``factors``: from :func:`gram_factors`
    (computed here if not given)."""
    _check(train_features, train_margins, test_features)
    kx = solved_test_features(
        train_features, test_features, damping=damping, block=block, factors=factors
    )
    e_count, n = train_margins.shape
    for s in range(0, n, block):
        rows = slice(s, min(s + block, n))
        part = sum(np.asarray(train_features[e, rows], np.float64) @ kx[e] for e in range(e_count))
        q = one_minus_p(train_margins[:, rows]).mean(0)
        yield rows, (part / e_count) * q[:, None]


def trak_scores(
    train_features,
    train_margins,
    test_features,
    *,
    damping: float = 1e-3,
    block: int = 8192,
    factors=None,
) -> np.ndarray:
    """``[N, M]`` TRAK scores of every train event on every test event (module doc)."""
    n, m = train_margins.shape[1], test_features.shape[1]
    out = np.zeros((n, m))
    for rows, scores in trak_score_blocks(
        train_features, train_margins, test_features, damping=damping, block=block, factors=factors
    ):
        out[rows] = scores
    return out


def trak_self_influence(
    train_features, train_margins, *, damping: float = 1e-3, block: int = 8192, factors=None
) -> np.ndarray:
    """``[N]`` ``tau(z_i, z_i)``: mean over members of ``phi_e(z_i)^T G_e^-1 phi_e(z_i)``, times
    the mean weight ``q(z_i)``. ``factors``: from :func:`gram_factors` (computed if not given)."""
    _check(train_features, train_margins)
    e_count, n = train_margins.shape
    if factors is None:
        factors = gram_factors(train_features, damping=damping, block=block)
    lev = np.zeros(n)
    for e, factor in enumerate(factors):
        for s in range(0, n, block):
            p = np.asarray(train_features[e, s : s + block], np.float64)
            lev[s : s + len(p)] += np.einsum("nd,dn->n", p, scipy.linalg.cho_solve(factor, p.T))
    return lev / e_count * one_minus_p(train_margins).mean(0)


def trak_scores_reference(
    train_features, train_margins, test_features, *, damping: float = 1e-3
) -> np.ndarray:
    """The plain formula with an explicit inverse, pair by pair. Tests only."""
    e_count, n, d = np.shape(train_features)
    m = np.shape(test_features)[1]
    out = np.zeros((n, m))
    q = np.zeros(n)
    for e in range(e_count):
        phi = np.asarray(train_features[e], np.float64)
        gram = phi.T @ phi
        lam = damping * np.trace(gram) / d
        inv = np.linalg.inv(gram + lam * np.eye(d))
        for i in range(n):
            q[i] += (1.0 - 1.0 / (1.0 + np.exp(-train_margins[e, i]))) / e_count
            for j in range(m):
                out[i, j] += phi[i] @ inv @ np.asarray(test_features[e, j], np.float64) / e_count
    return out * q[:, None]


def stack_members(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenates ``(features [K_r, N, d], margins [K_r, N])`` of several runs into one
    ensemble ``[E, N, d]``, ``[E, N]`` (the runs must have featurised the same events)."""
    if not parts:
        raise ConfigError("no ensemble members")
    shapes = {(f.shape[1:], m.shape[1:]) for f, m in parts}
    if len(shapes) != 1:
        raise ConfigError(f"ensemble members featurised different events or d: {shapes}")
    return np.concatenate([f for f, _ in parts]), np.concatenate([m for _, m in parts])
