"""Matplotlib figures for run reports, written to files.

Figures are made with :class:`matplotlib.figure.Figure` directly, not through ``pyplot``, so
importing hepattr_jax neither changes the caller's matplotlib backend nor adds figures to a
notebook's pyplot state (and nothing needs closing). :func:`subplots` and :func:`save` are the
one place every report figure of the library and the experiments is made and written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hepattr_jax.evaluation import remove_top_fraction
from hepattr_jax.io_utils import save_figure


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """``(figure, axes)`` like ``pyplot.subplots``, without pyplot (no backend, no global state)."""
    fig_kw = {k: kwargs.pop(k) for k in ("figsize", "dpi", "layout") if k in kwargs}
    fig = Figure(**fig_kw)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Writes ``fig`` (tight layout) to ``path`` atomically
    (:func:`hepattr_jax.io_utils.save_figure`); the format follows the suffix."""
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi)


def loss_curves(history: list[dict], path: str | Path) -> Path:
    """Train and validation loss, and validation AUROC, per epoch."""
    ep = [h["epoch"] for h in history]
    fig, ax = subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("BCE loss")
    ax[0].legend()
    ax[1].plot(ep, [h["val_auroc"] for h in history], "s-", color="C1")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation AUROC")
    return save(fig, path)


def roc_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str = ""
) -> Path:
    """ROC curves ``{label: (fpr, tpr, auroc)}`` with the diagonal for reference."""
    fig, ax = subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)


def _density_hist(ax, values: np.ndarray, bins: np.ndarray, label: str) -> None:
    """A normalised step histogram of ``values``; a group with nothing inside the bins (no
    events of a class removed, a quantity all outside the common range) is named in the
    legend with no curve instead of a division by zero."""
    inside = values[(values >= bins[0]) & (values <= bins[-1])]
    if len(inside) == 0:
        ax.plot([], [], label=f"{label}: none in range")
        return
    ax.hist(inside, bins=bins, density=True, histtype="step", label=label)


def removed_vs_kept(
    si: np.ndarray,
    labels: np.ndarray,
    quantities: dict[str, np.ndarray],
    q: float,
    path: str | Path,
    title: str = "",
    class_names: tuple[str, str] = ("class 0", "class 1"),
) -> Path:
    """What a removal rule takes: per class (columns), the self-influence distribution with the
    cut that removes its top fraction ``q`` (first row), then each physics quantity's
    distribution for the removed and the kept events (one row each, normalised)."""
    si = np.asarray(si, np.float64)
    removed = ~remove_top_fraction(si, q)
    names = list(quantities)
    fig, axes = subplots(len(names) + 1, 2, figsize=(8, 2.2 * (len(names) + 1)), squeeze=False)
    positive = si[si > 0]
    lo = positive.min() if len(positive) else 1e-12
    for col, cls in enumerate((0, 1)):
        m = labels == cls
        ax = axes[0, col]
        bins = np.logspace(np.log10(max(lo, 1e-12)), np.log10(max(si.max(), lo * 10)), 40)
        ax.hist(si[m], bins=bins, histtype="step", color="k")
        if removed.any():
            ax.axvline(si[removed].min(), color="C3", ls=":", label=f"top {q:.0%} cut")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_title(f"{class_names[cls]} (label {cls}): TracIn self-influence", fontsize=9)
        for row, name in enumerate(names, start=1):
            x = np.asarray(quantities[name], np.float64)
            ax = axes[row, col]
            finite = x[np.isfinite(x)]
            if np.all(finite == np.round(finite)):  # counts and charges: one bin per integer
                bins = np.arange(finite.min() - 0.5, finite.max() + 1.5)
            else:
                lo_x, hi_x = np.percentile(finite, [0.5, 99.5])
                bins = np.linspace(lo_x, hi_x + 1e-9, 30)
            for group, what in ((m & ~removed, "kept"), (m & removed, "removed")):
                _density_hist(ax, x[group], bins, f"{what} ({group.sum()})")
            ax.set_xlabel(name)
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return save_figure(fig, path, dpi=90)
