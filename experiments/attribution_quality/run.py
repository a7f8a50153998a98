"""Attribution quality on the quark/gluon jets: LDS of exact TracIn, projected TracIn, TRAK (one
model, checkpoints, ensemble); projected-TracIn error against d; TRAK mislabel detection.

Command (from the repository root; ~40 min on a 2-core CPU)::

    .venv/bin/python -m experiments.attribution_quality.run

Set-up (all fixed by the constants below, stated again in the report):

* data: the real quark/gluon jets, the GNN-IRST split (``experiments/gnn_irst/qg.toml``); a
  training subset of ``N_TRAIN`` jets and ``N_TEST`` test jets drawn with ``DATA_SEED``, so that
  the many retrainings LDS needs fit on a CPU;
* model: the GNN-IRST EdgeConv with jet-level inputs, ``EPOCHS`` epochs, batch ``BATCH``;
  reference runs with seeds ``RUN_SEEDS`` on the whole subset, a checkpoint each epoch;
* LDS ground truth: ``N_SUBSETS`` models on random ``ALPHA`` subsets (trained side by side,
  :mod:`hepattr_jax.datamodels`), their margins on the test jets;
* methods, scores ``[N_TRAIN, N_TEST]``: exact TracIn over all checkpoints of seed 0; projected
  TracIn for ``DIMS``; TRAK at ``TRAK_DIM`` with one model (seed 0, last checkpoint), with all
  checkpoints of seed 0, and ensembled over the last checkpoints of all seeds; projected TracIn
  and TRAK (one model, checkpoints) again with the Kronecker-structured projection at
  ``TRAK_DIM`` (``_kron``: per dense layer, from captured layer inputs and output gradients,
  issue 13); a random baseline.
* mislabel detection: TRAK self-influence on the three noisy-label runs of the GNN-IRST study
  (``experiments/gnn_irst/results/full/runs``), beside the study's TracIn and loss figures.

Every stage's output is cached under ``OUT/cache`` (a killed run resumes); ``OUT/results.json``
and ``OUT/report.md`` are rewritten at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import numpy as np

from hepattr_jax import evaluation, trak
from hepattr_jax.config import load_config
from hepattr_jax.datamodels import subset_masks, train_subset_models
from hepattr_jax.environment import provenance
from hepattr_jax.io_utils import atomic_write_json, atomic_write_npz, atomic_write_text
from hepattr_jax.per_example import layout_for
from hepattr_jax.projection import KroneckerProjector, Projector
from hepattr_jax.runs import load_run
from hepattr_jax.tracin import (
    calibrate_projector,
    influence_from_features,
    influence_matrix,
    projected_features,
    self_influence,
    self_influence_from_features,
)
from hepattr_jax.train import prepare_data, train

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "experiments" / "gnn_irst" / "qg.toml"
N_TRAIN, N_TEST, DATA_SEED = 2000, 200, 0
EPOCHS, BATCH = 8, 64
RUN_SEEDS = (0, 1, 2, 3, 4)
N_SUBSETS, ALPHA, SUBSET_SEED = 64, 0.5, 0
DIMS = (32, 128, 512, 2048)
TRAK_DIM = 512
PROJ_SEED = 0
PROJ_SEEDS_SPREAD = (0, 1, 2, 3)
DAMPING = 1e-3
CHUNK = 64
GNN_IRST = ROOT / "experiments" / "gnn_irst" / "results" / "full"


def _cached(path: Path, fn):
    """``fn()`` (a dict of arrays) saved to ``path``, or read back from it."""
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    t0 = time.perf_counter()
    out = fn()
    out["seconds"] = np.float64(time.perf_counter() - t0)
    atomic_write_npz(path, out)
    return out


def lds_data(base: Path = BASE):
    """The LDS set: ``N_TRAIN`` training and ``N_TEST`` test events drawn (``DATA_SEED``) from
    the splits of the config ``base``, trained ``EPOCHS`` epochs at batch ``BATCH``."""
    config = load_config(base).replace(epochs=EPOCHS, batch_size=BATCH)
    data = prepare_data(config)
    rng = np.random.default_rng(DATA_SEED)
    tr = np.sort(rng.choice(len(data.train), N_TRAIN, replace=False))
    te = np.sort(rng.choice(len(data.test), N_TEST, replace=False))
    data = dataclasses.replace(data.with_train(data.train.select(tr)), test=data.test.select(te))
    return config, data


def run_study(out: Path) -> Path:
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    config, data = lds_data()
    train_gs, test_gs = data.train, data.test
    print(f"LDS data: {len(train_gs)} train, {len(test_gs)} test jets", flush=True)

    # Reference runs on the whole subset.
    runs = {}
    for s in RUN_SEEDS:
        run_dir = out / "runs" / f"seed{s}"
        if not (run_dir / "metrics.json").exists():
            train(config.replace(seed=s), run_dir, data=data, progress=False)
        runs[s] = load_run(run_dir, data=data)
    aurocs = {
        s: json.loads((out / "runs" / f"seed{s}" / "metrics.json").read_text())["test"]["auroc"]
        for s in RUN_SEEDS
    }
    run0 = runs[0]
    layout = layout_for(run0.model, train_gs)
    ck = run0.checkpoints

    # LDS ground truth.
    masks = subset_masks(N_TRAIN, N_SUBSETS, ALPHA, SUBSET_SEED)
    truth = _cached(
        cache / "subset_margins.npz",
        lambda: {
            "margins": train_subset_models(config, data, masks, {"test": test_gs}, group=16)["test"]
        },
    )
    margins = truth["margins"]

    scores: dict[str, np.ndarray] = {}
    timing: dict[str, float] = {}

    def method(name, fn):
        r = _cached(cache / f"{name}.npz", fn)
        scores[name] = r["scores"]
        timing[name] = float(r["seconds"])
        return r

    exact = method(
        "tracin_exact",
        lambda: {
            "scores": influence_matrix(layout, ck, train_gs, test_gs, chunk_size=CHUNK),
            "si": self_influence(layout, ck, train_gs, chunk_size=CHUNK),
        },
    )
    proj_rows = []
    for d in DIMS:
        proj = Projector(d, seed=PROJ_SEED)

        def tracin_proj(proj=proj):
            ftr = projected_features(layout, ck, train_gs, proj, chunk_size=CHUNK)
            fte = projected_features(layout, ck, test_gs, proj, chunk_size=CHUNK)
            return {
                "scores": influence_from_features(ftr, fte, ck.lrs),
                "si": self_influence_from_features(ftr, ck.lrs),
            }

        r = method(f"tracin_proj_d{d}", tracin_proj)
        proj_rows.append(_projection_row(str(d), d, r, exact, timing[f"tracin_proj_d{d}"]))

    # The Kronecker-structured projection (per dense layer, from captured layer inputs and
    # output gradients) at the TRAK dimension, beside the dense one of the same d.
    # Calibrated on the training jets (d split by per-layer gradient energy), inside the
    # timed function, as hepattr influence trak does.
    kron = KroneckerProjector(TRAK_DIM, seed=PROJ_SEED)
    r = method(
        f"tracin_kron_d{TRAK_DIM}",
        lambda: tracin_proj(calibrate_projector(layout, ck, train_gs, kron, output="loss")),
    )
    proj_rows.append(
        _projection_row(
            f"kronecker {TRAK_DIM}", TRAK_DIM, r, exact, timing[f"tracin_kron_d{TRAK_DIM}"]
        )
    )

    projectors = {"dense": Projector(TRAK_DIM, seed=PROJ_SEED), "kronecker": kron}

    def trak_feats(seed, last_only, structure="dense"):
        """TRAK features of seed ``seed`` at all its checkpoints, or at the last only (for seed
        0, sliced from the all-checkpoint features rather than computed twice)."""
        if last_only and seed == 0:
            full = trak_feats(0, False, structure)
            return {
                "ftr": full["ftr"][-1:],
                "mtr": full["mtr"][-1:],
                "fte": full["fte"][-1:],
                "seconds": full["seconds"] / len(full["ftr"]),
            }
        ck_s = runs[seed].checkpoints
        if last_only:
            ck_s = ck_s.select([len(ck_s) - 1])
        lay = layout_for(runs[seed].model, train_gs)

        proj = projectors[structure]

        def f():
            p = calibrate_projector(lay, ck_s, train_gs, proj, output="margin")  # kronecker only
            ftr, mtr = trak.featurize(lay, ck_s, train_gs, p, chunk_size=CHUNK)
            fte, _ = trak.featurize(lay, ck_s, test_gs, p, chunk_size=CHUNK)
            return {"ftr": ftr, "mtr": mtr, "fte": fte}

        tag = ("last" if last_only else "all") + ("" if structure == "dense" else "_kron")
        return _cached(cache / f"trak_features_seed{seed}_{tag}.npz", f)

    def trak_method(name, members, structure="dense"):
        def f():
            parts = [trak_feats(s, last, structure) for s, last in members]
            ftr = np.concatenate([p["ftr"] for p in parts])
            mtr = np.concatenate([p["mtr"] for p in parts])
            fte = np.concatenate([p["fte"] for p in parts])
            t0 = time.perf_counter()
            sc = trak.trak_scores(ftr, mtr, fte, damping=DAMPING)
            return {
                "scores": sc,
                "score_seconds": np.float64(time.perf_counter() - t0),
                "feature_seconds": np.float64(sum(float(p["seconds"]) for p in parts)),
            }

        r = method(name, f)
        # Cost of the method alone: its members' features (however they were cached) + scores.
        timing[name] = float(r["feature_seconds"] + r["score_seconds"])
        return r

    trak_method("trak_1model", [(0, True)])
    trak_method("trak_8ckpts", [(0, False)])
    trak_method("trak_5models", [(s, True) for s in RUN_SEEDS])
    trak_method("trak_1model_kron", [(0, True)], "kronecker")
    trak_method("trak_8ckpts_kron", [(0, False)], "kronecker")
    scores["random"] = np.random.default_rng(7).normal(size=(N_TRAIN, N_TEST))

    lds = {}
    for name, sc in scores.items():
        mean, per = evaluation.linear_datamodeling_score(sc, masks, margins)
        fin = per[np.isfinite(per)]
        lds[name] = {
            "lds": mean,
            "sem": float(fin.std(ddof=1) / np.sqrt(len(fin))),
            "n_test": int(len(fin)),
        }
        print(f"LDS {name:16s} {mean:+.4f} +- {lds[name]['sem']:.4f}", flush=True)

    # TRAK with one model across projection seeds, dense against Kronecker (calibrated), so the
    # gap between them is not one key's luck.
    seed_rows = []
    last = ck.select([len(ck) - 1])
    for ps in PROJ_SEEDS_SPREAD:
        row = {"proj_seed": ps}
        for label, p0 in (
            ("dense", Projector(TRAK_DIM, seed=ps)),
            ("kronecker", KroneckerProjector(TRAK_DIM, seed=ps)),
        ):

            def f(p0=p0):
                p = calibrate_projector(layout, last, train_gs, p0, output="margin")
                ftr, mtr = trak.featurize(layout, last, train_gs, p, chunk_size=CHUNK)
                fte, _ = trak.featurize(layout, last, test_gs, p, chunk_size=CHUNK)
                return {"scores": trak.trak_scores(ftr, mtr, fte, damping=DAMPING)}

            sc = _cached(cache / f"trak_1model_{label}_projseed{ps}.npz", f)["scores"]
            row[label] = float(evaluation.linear_datamodeling_score(sc, masks, margins)[0])
        seed_rows.append(row)
        print(f"TRAK 1 model, projection seed {ps}: {row}", flush=True)

    mislabel = _trak_mislabel(cache)
    mislabel_date = datetime.date.today().isoformat()
    previous = out / "results.json"
    if not mislabel and previous.exists():
        # The GNN-IRST runs are not on disk (they are not committed): keep the mislabel rows
        # of the run that had them, with its date, rather than dropping the section.
        prev = json.loads(previous.read_text())
        mislabel = prev.get("mislabel", {})
        mislabel_date = prev.get("mislabel_date", prev.get("date", "?"))
    results = {
        "date": datetime.date.today().isoformat(),
        **provenance(),
        "setup": {
            "n_train": N_TRAIN,
            "n_test": N_TEST,
            "data_seed": DATA_SEED,
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "run_seeds": list(RUN_SEEDS),
            "n_subsets": N_SUBSETS,
            "alpha": ALPHA,
            "subset_seed": SUBSET_SEED,
            "proj_dims": list(DIMS),
            "trak_dim": TRAK_DIM,
            "proj_seed": PROJ_SEED,
            "projection": "rademacher (dense); kronecker rows: per-layer Kronecker factors, "
            "calibrated on the training jets",
            "damping": DAMPING,
        },
        "reference_test_auroc": aurocs,
        "subset_models_seconds": float(truth["seconds"]),
        "subset_model_margin_sd": float(margins.std(0).mean()),
        "lds": lds,
        "projection_error": proj_rows,
        "trak_1model_by_projection_seed": seed_rows,
        "timing_seconds": timing,
        "mislabel": mislabel,
        "mislabel_date": mislabel_date,
    }
    atomic_write_json(out / "results.json", results)
    path = out / "report.md"
    atomic_write_text(path, _report(results))
    return path


def _projection_row(label: str, d: int, r: dict, exact: dict, seconds: float) -> dict:
    """Projected TracIn ``r`` against exact TracIn: self-influence and matrix errors."""
    rel = np.abs(r["si"] / exact["si"] - 1)
    a, b = r["scores"].ravel(), exact["scores"].ravel()
    return {
        "projection": label,
        "d": d,
        "si_rel_err_median": float(np.median(rel)),
        "si_rel_err_p95": float(np.quantile(rel, 0.95)),
        "jl_scale_sqrt_2_over_d": float(np.sqrt(2 / d)),
        "matrix_pearson": float(np.corrcoef(a, b)[0, 1]),
        "matrix_rel_frobenius_err": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
        "top10_overlap": evaluation.top_k_overlap(r["scores"], exact["scores"], 10),
        "seconds": seconds,
    }


def _trak_mislabel(cache: Path) -> dict:
    """TRAK self-influence as a mislabel detector on the GNN-IRST noisy-label runs."""
    from experiments.gnn_irst.study import BASE_CONFIG, PRESETS

    p = PRESETS["full"]
    runs_dir = GNN_IRST / "runs" / "qg_jets"
    study_rows = json.loads((GNN_IRST / "results.json").read_text())
    base = load_config(ROOT / "experiments" / "gnn_irst" / BASE_CONFIG["qg_jets"]).replace(
        epochs=p.epochs
    )
    data = prepare_data(base)
    out = {}
    for seed in p.mislabel_seeds:
        run_dir = runs_dir / f"mislabel_seed{seed}" / "noisy"
        if not (run_dir / "metrics.json").exists():
            print(f"skip mislabel seed {seed}: {run_dir} missing (run the GNN-IRST study)")
            continue
        labels, flipped = evaluation.flip_labels(data.train.events.labels, p.flip_fraction, seed)
        ev = dataclasses.replace(data.train.events, labels=labels.astype(np.int32))
        noisy = data.with_train(dataclasses.replace(data.train, events=ev))
        run = load_run(run_dir, data=noisy)
        ck = run.checkpoints
        last = ck.select([len(ck) - 1])
        lay = layout_for(run.model, noisy.train)

        def f(lay=lay, last=last, noisy=noisy):
            ftr, mtr = trak.featurize(lay, last, noisy.train, Projector(TRAK_DIM, seed=PROJ_SEED))
            return {"si": trak.trak_self_influence(ftr, mtr, damping=DAMPING)}

        r = _cached(cache / f"mislabel_trak_si_seed{seed}.npz", f)
        det = study_rows.get(f"qg_jets/mislabel_seed{seed}/detection", {})
        out[f"seed{seed}"] = {
            "trak_self_influence": evaluation.detection_rates(r["si"], flipped),
            "trak_seconds": float(r["seconds"]),
            **{k: v for k, v in det.items() if k in ("self_influence", "loss", "random")},
        }
    return out


def _fmt(x, nd=3):
    return f"{x:.{nd}f}"


def _report(r: dict) -> str:
    s = r["setup"]
    lines = [
        "# Attribution quality on the quark/gluon jets",
        "",
        f"Date {r['date']}; {r['hardware']}; jax {r['jax']}. Command: `.venv/bin/python -m "
        "experiments.attribution_quality.run`.",
        "",
        f"Data: {s['n_train']} training and {s['n_test']} test jets of the GNN-IRST split, drawn "
        f"with seed {s['data_seed']}. Model: EdgeConv with jet inputs, {s['epochs']} epochs, "
        f"batch {s['batch_size']}; reference runs with seeds {s['run_seeds']} reach test AUROC "
        + ", ".join(_fmt(v) for v in r["reference_test_auroc"].values())
        + f". LDS ground truth: {s['n_subsets']} models on random alpha = {s['alpha']} subsets "
        f"(subset seed {s['subset_seed']}), trained side by side with vmap in "
        f"{r['subset_models_seconds'] / 60:.1f} min; the mean sd of a test jet's margin across "
        f"them is {r['subset_model_margin_sd']:.2f}. Projections: {s['projection']}, seed "
        f"{s['proj_seed']}; TRAK d = {s['trak_dim']}, damping {s['damping']} of the mean "
        "eigenvalue.",
        "",
        "## Linear datamodeling score (mean Spearman over test jets, +- standard error)",
        "",
        "| method | LDS | compute (s): features + scores |",
        "|---|---|---|",
    ]
    for name, v in r["lds"].items():
        secs = r["timing_seconds"].get(name)
        lines.append(
            f"| {name} | {v['lds']:+.4f} +- {v['sem']:.4f} | "
            + (f"{secs:.0f}" if secs is not None else "-")
            + " |"
        )
    lines += [
        "",
        "## Projected TracIn against exact TracIn (all checkpoints of seed 0)",
        "",
        "| projection, d | SI rel. err. median | SI rel. err. p95 | sqrt(2/d) | "
        "matrix Pearson r | matrix rel. Frobenius err. | top-10 proponent overlap | LDS | "
        "seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["projection_error"]:
        d = row["d"]
        kron = row.get("projection", "").startswith("kronecker")
        name = f"tracin_kron_d{d}" if kron else f"tracin_proj_d{d}"
        lines.append(
            f"| {'kronecker' if kron else 'dense'} {d} | {_fmt(row['si_rel_err_median'])} | "
            f"{_fmt(row['si_rel_err_p95'])} | "
            f"{_fmt(row['jl_scale_sqrt_2_over_d'])} | {_fmt(row['matrix_pearson'])} | "
            f"{_fmt(row['matrix_rel_frobenius_err'])} | {_fmt(row['top10_overlap'], 2)} | "
            f"{r['lds'][name]['lds']:+.4f} | {row['seconds']:.0f} |"
        )
    rows = r.get("trak_1model_by_projection_seed", [])
    if rows:
        lines += [
            "",
            "## TRAK with one model (last checkpoint of seed 0), by projection seed",
            "",
            f"d = {s['trak_dim']}; both projections calibrated on the training jets (the dense "
            "one has nothing to calibrate); LDS as above.",
            "",
            "| projection seed | dense | kronecker |",
            "|---|---|---|",
        ]
        for row in rows:
            lines.append(f"| {row['proj_seed']} | {row['dense']:+.4f} | {row['kronecker']:+.4f} |")
    if r["mislabel"]:
        lines += [
            "",
            "## Mislabel detection (10 % flipped, full quark/gluon training set, GNN-IRST runs)",
            "",
            "Detector AUROC and the fraction of flipped jets in the top 5/10/20 % of each score. "
            "TracIn and loss figures are the GNN-IRST study's, on the same runs; TRAK uses the "
            f"last checkpoint, d = {s['trak_dim']} (dense projection). From the run of "
            f"{r.get('mislabel_date', r['date'])}.",
            "",
            "| seed | score | AUROC | top 5 % | top 10 % | top 20 % |",
            "|---|---|---|---|---|---|",
        ]
        for seed, rows in r["mislabel"].items():
            for score in ("trak_self_influence", "self_influence", "loss", "random"):
                if score not in rows:
                    continue
                d = rows[score]
                keys = [f"found_in_top_{p}pct" for p in (5, 10, 20)]
                lines.append(
                    f"| {seed} | {score} | {_fmt(d['detector_auroc'])} | "
                    + " | ".join(_fmt(d[k], 2) for k in keys)
                    + " |"
                )
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    path = run_study(args.out)
    print(f"report: {path.resolve()}")
    return path


if __name__ == "__main__":
    main()
