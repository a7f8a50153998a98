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
