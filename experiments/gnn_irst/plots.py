"""Figures of the GNN-IRST study: test AUROC against the fraction removed, and what was removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepattr_jax.plotting import subplots

CLASS_NAMES = {
    "qg_jets": ("quark jets", "gluon jets"),
    "susy_sim": ("WW background", "chargino signal"),
}
RULES = {
    "si_top": "highest self-influence removed",
    "si_bottom": "lowest self-influence removed",
    "loss_top": "highest final loss removed",
    "random": "random subset",
}


def removal_curve(rows: dict, ds: str, p, out: Path) -> Path | None:
    """Test AUROC (mean ± std over seeds) against the fraction q of training events removed."""
    full = [
        rows[f"{ds}/seed{s}/full"]["test"]["auroc"] for s in p.seeds if f"{ds}/seed{s}/full" in rows
    ]
    if not full:
        return None
    rules = dict(RULES)
    for m in getattr(p, "scores", ()):
        if m != "tracin":
            rules[f"{m}_si_top"] = f"highest {m} self-influence removed"
            rules[f"{m}_si_bottom"] = f"lowest {m} self-influence removed"
    fig, ax = subplots(figsize=(6, 4))
    for i, (rule, label) in enumerate(rules.items()):
        qs, mean, std = [], [], []
        for q in p.qs:
            vals = [
                rows[k]["test"]["auroc"]
                for s in p.seeds
                if (k := f"{ds}/seed{s}/{rule}_{q:g}") in rows
            ]
            if vals:
                qs.append(q)
                mean.append(np.mean(vals))
                std.append(np.std(vals, ddof=1) if len(vals) > 1 else 0.0)
        if qs:
            ax.errorbar(
                np.array(qs) + 0.004 * (i - 1.5), mean, yerr=std, marker="o", capsize=3, label=label
            )
    ax.axhline(np.mean(full), color="k", ls="--", label=f"full training set ({len(full)} seeds)")
    if len(full) > 1:
        ax.axhspan(
            np.mean(full) - np.std(full, ddof=1),
            np.mean(full) + np.std(full, ddof=1),
            color="k",
            alpha=0.1,
        )
    ax.set_xlabel("fraction of training events removed, q")
    ax.set_ylabel("test AUROC")
    ax.set_title(ds)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"removal_curve_{ds}.png"
    fig.savefig(path, dpi=110)
    return path


def _density_hist(ax, values: np.ndarray, bins: np.ndarray, label: str) -> None:
    """A normalised step histogram of ``values``; a group with nothing inside the bins (no
    events of a class removed, a user's quantity all outside the common range) is named in the
    legend with no curve instead of a division by zero."""
    inside = values[(values >= bins[0]) & (values <= bins[-1])]
    if len(inside) == 0:
        ax.plot([], [], label=f"{label}: none in range")
        return
    ax.hist(inside, bins=bins, density=True, histtype="step", label=label)


def physics_plots(out: Path, ds: str, p, physics: dict) -> list[Path]:
    """Distributions of each event's physics quantities, removed vs kept by the SI rule, per
    class (first seed), and the self-influence distribution per class."""
    path = out / "scores" / f"{ds}_seed{p.seeds[0]}.npz"
    if not path.exists():
        return []
    z = np.load(path)
    si, labels = z["si"], z["labels"]
    if not np.array_equal(z["ids"], physics["ids"]):
        raise RuntimeError(f"{path}: event ids differ from the data set's training split")
    q = max([x for x in p.qs if x <= 0.2] or [min(p.qs)])
    removed = np.zeros(len(si), bool)
    removed[np.argsort(-si, kind="stable")[: int(round(q * len(si)))]] = True
    quantities = {k: v for k, v in physics.items() if k not in ("ids", "parton_id")}
    names = list(quantities)
    fig, axes = subplots(len(names) + 1, 2, figsize=(8, 2.2 * (len(names) + 1)))
    for col, cls in enumerate((0, 1)):
        m = labels == cls
        ax = axes[0, col]
        bins = np.logspace(np.log10(max(si.min(), 1e-12)), np.log10(si.max()), 40)
        ax.hist(si[m], bins=bins, histtype="step", color="k")
        ax.axvline(si[removed].min(), color="C3", ls=":", label=f"top {q:.0%} cut")
        ax.set_xscale("log")
        cls_name = CLASS_NAMES.get(ds, ("class 0", "class 1"))[cls]
        ax.set_title(f"{cls_name} (label {cls}): TracIn self-influence", fontsize=9)
        ax.legend(fontsize=7)
        for row, name in enumerate(names, start=1):
            x = quantities[name]
            ax = axes[row, col]
            finite = x[np.isfinite(x)]
            if np.all(finite == np.round(finite)):  # counts and charges: one bin per integer
                bins = np.arange(finite.min() - 0.5, finite.max() + 1.5)
            else:
                lo, hi = np.percentile(finite, [0.5, 99.5])
                bins = np.linspace(lo, hi + 1e-9, 30)
            for group, what in ((m & ~removed, "kept"), (m & removed, "removed")):
                _density_hist(ax, x[group], bins, f"{what} ({group.sum()})")
            ax.set_xlabel(name)
            ax.legend(fontsize=7)
    fig.suptitle(
        f"{ds}: events removed by the top-{q:.0%} self-influence rule (seed "
        f"{p.seeds[0]}), per class",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    png = out / f"physics_removed_vs_kept_{ds}.png"
    fig.savefig(png, dpi=90)
    return [png]
