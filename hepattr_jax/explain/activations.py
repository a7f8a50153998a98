"""Neural activation patterns and the latent space against physics quantities (plain NumPy).

**Relative neural activation** (arXiv 2210.04371): for layer ``l``, neuron ``j`` and class ``c``,

    A_c(l, j) = sum_{i: y_i = c} a_ij,        RNA_c(l, j) = A_c(l, j) / max_j' |A_c(l, j')|

with ``a_ij`` the event's activation (node-level layers averaged over the event's nodes; see
:mod:`hepattr_jax.explain.predict`). Each class is normalised by its own layer maximum, so the
class sizes cancel. Neurons are shown sorted by the signal class (``c = 1``), with the absolute
difference ``|RNA_1 - RNA_0|`` and the *sparsity* of a layer, the fraction of its neurons with
``RNA < 0.2`` (0.2 as in the reference).

**Latent physics**: Pearson correlations of latent dimensions and of principal components with
physics quantities, and a PCA embedding (:func:`pca`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SPARSE_BELOW = 0.2


def relative_neural_activation(acts: np.ndarray, labels: np.ndarray) -> dict:
    """RNA of one layer, ``acts [N, D]``: ``{"rna_0" [D], "rna_1" [D], "diff" [D],
    "order" [D] (neurons by decreasing signal RNA), "sparsity_0", "sparsity_1"}``.

    A class without events, or a layer whose activations all vanish for a class, gives zeros
    (sparsity 1).
    """
    acts = np.asarray(acts, np.float64)
    labels = np.asarray(labels)
    out = {}
    for c in (0, 1):
        a = acts[labels == c].sum(axis=0)
        m = np.abs(a).max() if a.size else 0.0
        out[f"rna_{c}"] = a / m if m > 0 else np.zeros(acts.shape[1])
        out[f"sparsity_{c}"] = float(np.mean(out[f"rna_{c}"] < SPARSE_BELOW))
    out["diff"] = np.abs(out["rna_1"] - out["rna_0"])
    out["order"] = np.argsort(-out["rna_1"], kind="stable")
    return out


def activation_patterns(layers: Mapping[str, np.ndarray], labels: np.ndarray) -> dict:
    """:func:`relative_neural_activation` of every layer ``{name: [N, D]}``."""
    return {name: relative_neural_activation(a, labels) for name, a in layers.items()}


def pca(x: np.ndarray, n_components: int | None = None) -> dict:
    """Principal components of ``x [N, D]`` (centred, not scaled): ``{"scores" [N, k],
    "components" [k, D], "explained" [k] (fraction of variance), "mean" [D]}``."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = len(s) if n_components is None else min(n_components, len(s))
    var = s**2
    total = var.sum()
    return {
        "scores": xc @ vt[:k].T,
        "components": vt[:k],
        "explained": var[:k] / total if total > 0 else np.zeros(k),
        "mean": mean,
    }


def correlations(x: np.ndarray, quantities: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Pearson correlation of each column of ``x [N, D]`` with each quantity ``[N]``:
    ``{name: [D]}``; 0 where a column or a quantity is constant."""
    x = np.asarray(x, np.float64)
    xc = x - x.mean(axis=0)
    xn = np.sqrt((xc**2).sum(axis=0))
    out = {}
    for name, q in quantities.items():
        q = np.asarray(q, np.float64)
        qc = q - q.mean()
        qn = np.sqrt((qc**2).sum())
        den = xn * qn
        num = qc @ xc
        out[name] = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return out
