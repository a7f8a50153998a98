"""Information coverage of a latent space: how much of a physics quantity a latent determines.

For a latent ``X`` (one neuron, or the leading principal components of a layer) and a high-level
physics quantity ``Y`` (jet mass, charged multiplicity, missing momentum, a pair mass)::

    coverage(X -> Y) = (H(Y) - H(Y|X)) / H(Y) = I(X; Y) / H(Y)

which is 1 when ``X`` determines ``Y`` and 0 when they are independent. ``Y`` is discretised
into ``n_bins`` equal-population bins (or its distinct values when it has at most ``n_bins``),
so ``H(Y)`` is a Shannon entropy (``log n_bins`` for equal bins) and the ratio is well defined.
``H(Y|X) = -E log p(y|x)`` comes from Gaussian kernel density estimates of ``p(x|y)`` with
bandwidth ``h``: by Bayes with the class frequencies as priors,

    p(y = k | x_i) = S_ik / sum_k' S_ik',  S_ik = sum_{j != i, y_j = k} exp(-|x_i - x_j|^2 / 2h^2)

evaluated leave-one-out (``j != i``), so the estimate is a held-out cross-entropy and an
independent ``Y`` cannot look informative by overfitting at small ``h`` (resubstitution would
give coverage -> 1 as ``h -> 0`` for any data). Probabilities are mixed with the prior,
``(1 - 1e-6) p + 1e-6 P(k)``, so a class no neighbour shares costs a bounded ``log 1e-6``.

``X`` is rank-transformed per dimension to uniform scores scaled to unit variance (coverage is a
mutual information, invariant under monotone maps of each coordinate; uniform scores keep a
kernel of fixed width comparable across the range). The bandwidth is swept over multiples of
Silverman's rule ``h_S = (4 / (d + 2))^(1/(d+4)) n^(-1/(d+4))`` and the reported coverage is at
the ``h`` with the smallest leave-one-out ``H(Y|X)`` (cross-validated bandwidth); the whole
sweep is returned for plots.

Goodness of fit (:func:`kde_goodness_of_fit`): the KDE fitted on one half of ``X`` is sampled
(a data point plus ``N(0, h^2 I)`` noise) and each coordinate compared with the other half by
the two-sample Kolmogorov-Smirnov statistic; the fit passes when the largest statistic is below
the 95 % critical value ``1.358 sqrt((n + m) / (n m))``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

EPS_PRIOR = 1e-6
H_FACTORS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0)


def discretize(y: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Class index ``[n]`` (0..K-1): equal-population bins, or the distinct values if few.

    Tied values never straddle a bin edge, so ``K`` may be below ``n_bins``.
    """
    y = np.asarray(y, np.float64)
    uniq = np.unique(y)
    if len(uniq) <= n_bins:
        return np.searchsorted(uniq, y).astype(np.int32)
    edges = np.unique(np.quantile(y, np.linspace(0, 1, n_bins + 1)[1:-1]))
    cls = np.searchsorted(edges, y, side="right")
    return np.unique(cls, return_inverse=True)[1].astype(np.int32)


def class_entropy(cls: np.ndarray) -> float:
    """Plug-in Shannon entropy (nats) of a class assignment."""
    p = np.bincount(cls) / len(cls)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def uniform_scores(x: np.ndarray) -> np.ndarray:
    """Per column: average ranks mapped to ``(rank - 0.5) / n`` in (0, 1), times ``sqrt(12)``
    (unit variance); a constant column becomes all zeros."""
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = len(x)
    out = np.zeros_like(x)
    for j in range(x.shape[1]):
        col = x[:, j]
        order = np.argsort(col, kind="stable")
        s = col[order]
        # average rank of tied runs
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        ends = np.r_[starts[1:], n]
        avg = (starts + ends - 1) / 2.0
        ranks = np.empty(n)
        ranks[order] = np.repeat(avg, ends - starts)
        out[:, j] = ((ranks + 0.5) / n - 0.5) * np.sqrt(12.0) if len(starts) > 1 else 0.0
    return out


def silverman(n: int, d: int) -> float:
    """Silverman's rule of thumb for unit-variance data in ``d`` dimensions."""
    return float((4.0 / (d + 2)) ** (1.0 / (d + 4)) * n ** (-1.0 / (d + 4)))


def _cond_entropy_core(x, cls, hs, prior, n_classes: int):
    """Leave-one-out ``H(Y|X)`` (nats) for each bandwidth in ``hs``: ``[len(hs)]``."""
    d2 = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
    d2 = jnp.where(jnp.eye(x.shape[0], dtype=bool), jnp.inf, d2)
    onehot = jax.nn.one_hot(cls, n_classes, dtype=x.dtype)

    def one(h):
        logk = -d2 / (2 * h * h)
        logk = logk - jnp.max(logk, axis=1, keepdims=True)
        s = jnp.exp(logk) @ onehot  # [n, K]
        p = jnp.take_along_axis(s, cls[:, None], axis=1)[:, 0] / jnp.sum(s, axis=1)
        p = (1 - EPS_PRIOR) * p + EPS_PRIOR * prior[cls]
        return -jnp.mean(jnp.log(p))

    return jax.lax.map(one, hs)


_cond_entropy = jax.jit(_cond_entropy_core, static_argnames=("n_classes",))


@functools.partial(jax.jit, static_argnames=("n_classes",))
def _cond_entropy_columns(xcols, cls, hs, prior, n_classes: int):
    """``[D, len(hs)]``: :func:`_cond_entropy_core` of each column ``xcols [D, n]`` alone."""
    return jax.lax.map(lambda c: _cond_entropy_core(c[:, None], cls, hs, prior, n_classes), xcols)


def _classes(y, n_bins):
    cls = discretize(y, n_bins)
    k = int(cls.max()) + 1
    prior = np.bincount(cls, minlength=k) / len(cls)
    return cls, k, jnp.asarray(prior, jnp.float32)


def conditional_entropy(x: np.ndarray, cls: np.ndarray, hs) -> np.ndarray:
    """Leave-one-out KDE estimate of ``H(Y|X)`` for each bandwidth in ``hs`` (``x`` as given)."""
    x = np.asarray(x, np.float32)
    x = x[:, None] if x.ndim == 1 else x
    cls = np.asarray(cls, np.int32)
    k = int(cls.max()) + 1
    prior = np.bincount(cls, minlength=k) / len(cls)
    out = _cond_entropy(
        jnp.asarray(x),
        jnp.asarray(cls),
        jnp.asarray(np.atleast_1d(hs), jnp.float32),
        jnp.asarray(prior, jnp.float32),
        n_classes=k,
    )
    return np.asarray(out, np.float64)


def information_coverage(
    x: np.ndarray, y: np.ndarray, *, n_bins: int = 10, h_factors=H_FACTORS
) -> dict:
    """Coverage of ``y [n]`` by ``x [n]`` or ``[n, d]`` (see the module docstring).

    Returns ``{"coverage", "h", "H_Y", "H_Y_given_X", "n_classes", "sweep": {"h": [...],
    "coverage": [...]}}``; coverage at the cross-validated bandwidth. ``coverage`` is 0 when
    ``x`` is constant and NaN when ``y`` is.
    """
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    n, d = x.shape
    cls = discretize(y, n_bins)
    h_y = class_entropy(cls)
    hs = np.asarray(h_factors, np.float64) * silverman(n, d)
    if h_y == 0.0:
        nan = float("nan")
        return {
            "coverage": nan,
            "h": nan,
            "H_Y": 0.0,
            "H_Y_given_X": nan,
            "n_classes": 1,
            "sweep": {"h": hs.tolist(), "coverage": [nan] * len(hs)},
        }
    u = uniform_scores(x)
    if not np.any(u):
        cov = np.zeros(len(hs))
        h_cond = np.full(len(hs), h_y)
    else:
        h_cond = conditional_entropy(u, cls, hs)
        cov = (h_y - h_cond) / h_y
    best = int(np.argmin(h_cond))
    return {
        "coverage": float(cov[best]),
        "h": float(hs[best]),
        "H_Y": h_y,
        "H_Y_given_X": float(h_cond[best]),
        "n_classes": int(cls.max()) + 1,
        "sweep": {"h": hs.tolist(), "coverage": cov.tolist()},
    }


def coverage_per_dimension(
    x: np.ndarray, y: np.ndarray, *, n_bins: int = 10, h_factors=H_FACTORS
) -> np.ndarray:
    """``[D]`` coverage of ``y`` by each column of ``x [n, D]`` on its own (one neuron each),
    each at its own cross-validated bandwidth; one jitted call for all columns."""
    x = np.asarray(x, np.float64)
    n, dims = x.shape
    cls, k, prior = _classes(y, n_bins)
    h_y = class_entropy(cls)
    if h_y == 0.0:
        return np.full(dims, np.nan)
    u = uniform_scores(x)
    hs = np.asarray(h_factors, np.float64) * silverman(n, 1)
    h_cond = np.asarray(
        _cond_entropy_columns(
            jnp.asarray(u.T, jnp.float32),
            jnp.asarray(cls),
            jnp.asarray(hs, jnp.float32),
            prior,
            n_classes=k,
        ),
        np.float64,
    )
    cov = (h_y - h_cond.min(axis=1)) / h_y
    cov[~np.any(u, axis=0)] = 0.0  # a constant neuron carries no information
    return cov


def kde_sample(x: np.ndarray, h: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` draws from the Gaussian KDE of ``x [m, d]`` with bandwidth ``h``."""
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    return x[rng.integers(0, len(x), n)] + h * rng.normal(size=(n, x.shape[1]))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup |F_a - F_b|``."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def kde_goodness_of_fit(x: np.ndarray, h: float, *, seed: int = 0) -> dict:
    """Fit on a random half of ``x`` (already on the scale ``h`` refers to), sample as many
    points as the other half has, and compare each coordinate by the KS statistic.

    Returns ``{"ks": max statistic, "ks_per_dim": [...], "critical_95": c, "passed": bool}``.
    """
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(x))
    fit, held = x[perm[: len(x) // 2]], x[perm[len(x) // 2 :]]
    sample = kde_sample(fit, h, len(held), rng)
    ks = [ks_statistic(sample[:, j], held[:, j]) for j in range(x.shape[1])]
    n, m = len(sample), len(held)
    crit = 1.358 * np.sqrt((n + m) / (n * m))
    return {
        "ks": float(max(ks)),
        "ks_per_dim": ks,
        "critical_95": float(crit),
        "passed": bool(max(ks) < crit),
    }
