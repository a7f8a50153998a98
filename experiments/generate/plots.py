"""Sanity plots and baselines of a generated top/QCD sample (see README.md for the command).

    python -m experiments.generate.plots --data /work/data/top_qcd_40k --out experiments/generate

Reads every finished shard (an unfinished generation is plotted as far as it got, and says so),
writes ``plots/*.png`` and ``results/baselines.json`` (AUROC and 1/eps_B of the single-quantity
discriminants, jet counts, constituent statistics, timing from the shard metadata).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hepattr_jax.baselines import baseline_table  # noqa: E402
from hepattr_jax.data.events import concat_events  # noqa: E402
from hepattr_jax.data.generate import META_NAME  # noqa: E402
from hepattr_jax.data.parquet import load_parquet  # noqa: E402
from hepattr_jax.io_utils import atomic_write_json  # noqa: E402

M_W, M_TOP = 80.4, 172.5


def load_finished(data: Path):
    """The finished shards (Parquet + JSON present) and their JSON records."""
    meta = json.loads((data / META_NAME).read_text())
    sets, infos = [], []
    for shard in meta["shards"]:
        pq_path = data / shard["file"]
        js_path = pq_path.with_suffix(".json")
        if pq_path.is_file() and js_path.is_file():
            sets.append(load_parquet(pq_path))
            infos.append(json.loads(js_path.read_text()))
    return meta, concat_events(sets, source=str(data)), infos


def hist_by_class(ax, values, labels, bins, names, density=True):
    for lab, name, color in ((1, names["1"], "C3"), (0, names["0"], "C0")):
        ax.hist(
            values[labels == lab],
            bins=bins,
            histtype="step",
            lw=1.5,
            color=color,
            density=density,
            label=f"{name} ({int(np.sum(labels == lab))} jets)",
        )
    ax.legend(frameon=False)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/data/top_qcd_40k")
    ap.add_argument("--out", default="experiments/generate")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    meta, ev, infos = load_finished(data)
    names, y, p = meta["labels"], ev.labels, ev.physics
    complete = len(infos) == len(meta["shards"])
    tag = "" if complete else f" (partial: {len(infos)}/{len(meta['shards'])} shards)"

    fig, ax = plt.subplots(figsize=(6, 4))
    hist_by_class(ax, p["jet_mass"], y, np.linspace(0, 300, 61), names)
    ax.axvline(M_TOP, color="k", ls=":", lw=1)
    ax.set(xlabel="jet mass [GeV]", ylabel="density", title=f"anti-kT R=0.8 jets{tag}")
    fig.tight_layout()
    fig.savefig(out / "plots" / "jet_mass.png", dpi=90)
    plt.close(fig)

    # W peak: pairwise masses of the 3 exclusive-kT subjets of top jets; the pair closest to m_W
    # and all three pairs.
    top = y == 1
    m3 = np.stack([p["m_sj12"], p["m_sj13"], p["m_sj23"]], axis=1)
    closest = m3[np.arange(len(m3)), np.argmin(np.abs(m3 - M_W), axis=1)]
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 250, 51)
    ax.hist(
        m3[top].ravel(),
        bins=bins,
        histtype="step",
        lw=1.5,
        color="C3",
        density=True,
        label=f"{names['1']}: all 3 subjet pairs",
    )
    ax.hist(
        m3[~top].ravel(),
        bins=bins,
        histtype="step",
        lw=1.5,
        color="C0",
        density=True,
        label=f"{names['0']}: all 3 subjet pairs",
    )
    ax.hist(
        closest[top],
        bins=bins,
        histtype="stepfilled",
        alpha=0.25,
        color="C3",
        density=True,
        label=f"{names['1']}: pair closest to m_W",
    )
    ax.axvline(M_W, color="k", ls=":", lw=1)
    ax.set(
        xlabel="subjet-pair mass m_ij [GeV] (3 exclusive-kT subjets)",
        ylabel="density",
        title=f"W inside top jets{tag}",
    )
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "plots" / "subjet_pair_mass.png", dpi=90)
    plt.close(fig)

    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    hist_by_class(axs[0], p["n_constituents"], y, np.arange(0, 201, 5), names)
    axs[0].set(xlabel="constituents per jet (all visible particles)", ylabel="density")
    hist_by_class(axs[1], ev.n_node.astype(float), y, np.arange(0, 201, 5), names)
    axs[1].set(xlabel="stored constituents (up to 200)", ylabel="density")
    fig.tight_layout()
    fig.savefig(out / "plots" / "multiplicity.png", dpi=90)
    plt.close(fig)

    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    for a, key in zip(axs, ("tau32", "tau21"), strict=True):
        hist_by_class(a, p[key], y, np.linspace(0, 1.2, 61), names)
        a.set(xlabel=f"{key} (exclusive-kT axes, beta = 1)", ylabel="density")
    fig.tight_layout()
    fig.savefig(out / "plots" / "nsubjettiness.png", dpi=90)
    plt.close(fig)

    table = baseline_table("top_qcd", p, y)
    wall = [i["wall_s"] for i in infos]
    events = sum(cf["generated"] for i in infos for cf in i["cutflow"].values())
    res = {
        "data": str(data),
        "complete": complete,
        "shards_finished": len(infos),
        "shards_planned": len(meta["shards"]),
        "jets": {names["1"]: int(top.sum()), names["0"]: int((~top).sum())},
        "events_generated": int(events),
        "selection_efficiency": {
            c: meta["cutflow"][c]["accepted"] / meta["cutflow"][c]["generated"]
            for c in meta.get("cutflow", {})
        },
        "constituents_all": {
            "mean": float(p["n_constituents"].mean()),
            "max": int(p["n_constituents"].max()),
        },
        "constituents_stored": {"mean": float(ev.n_node.mean()), "max": int(ev.n_node.max())},
        "constituents_stored_by_class": {
            names[str(lab)]: float(ev.n_node[y == lab].mean()) for lab in (1, 0)
        },
        "tau_ratio_above_1": {
            k: {names[str(lab)]: float(np.mean(p[k][y == lab] > 1)) for lab in (1, 0)}
            for k in ("tau21", "tau32")
        },
        "median_top_mass": float(np.median(p["jet_mass"][top])),
        "median_w_candidate_mass": float(np.median(closest[top])),
        "baselines": table,
        "shard_wall_s_sum": float(np.sum(wall)),
        "versions": meta["versions"],
        "cutflow": meta.get("cutflow"),
    }
    (out / "results").mkdir(exist_ok=True)
    atomic_write_json(out / "results" / "baselines.json", res)
    print(json.dumps({k: res[k] for k in ("jets", "constituents_stored", "baselines")}, indent=1))


if __name__ == "__main__":
    main()
