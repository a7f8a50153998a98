"""Figures of the GNN-IRST study: test AUROC against the fraction removed, and what was removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hepattr_jax.data.registry import class_names
from hepattr_jax.plotting import removed_vs_kept, subplots

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
    quantities = {k: v for k, v in physics.items() if k not in ("ids", "parton_id")}
    return [
        removed_vs_kept(
            si,
            labels,
            quantities,
            q,
            out / f"physics_removed_vs_kept_{ds}.png",
            title=f"{ds}: events removed by the top-{q:.0%} self-influence rule (seed "
            f"{p.seeds[0]}), per class",
            class_names=class_names(ds),
        )
    ]
