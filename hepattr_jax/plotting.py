"""Matplotlib figures for run reports (Agg backend, files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hepattr_jax.io_utils import save_figure  # noqa: E402


def loss_curves(history: list[dict], path: str | Path) -> Path:
    """Train and validation loss, and validation AUROC, per epoch."""
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ax[0].plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("BCE loss")
    ax[0].legend()
    ax[1].plot(ep, [h["val_auroc"] for h in history], "s-", color="C1")
    ax[1].set_xlabel("epoch")
    ax[1].set_ylabel("validation AUROC")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)


def roc_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str = ""
) -> Path:
    """ROC curves ``{label: (fpr, tpr, auroc)}`` with the diagonal for reference."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return Path(path)
