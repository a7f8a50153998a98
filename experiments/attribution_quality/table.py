"""One quality table: every attribution method on the quark/gluon jets, with the same ground truth.

Command (from the repository root; resumable)::

    .venv/bin/python -m experiments.attribution_quality.table [--task qg --task susy ...]

Tasks (:data:`TASKS`): the real quark/gluon jets and the event-level SUSY-like simulation, each
with the GNN-IRST study's config (~15 min a task on a quiet 2-core CPU), and generated top/QCD
jets with the ParticleNet-like model (``top_qcd.toml``; the jets are generated here when missing;
105 min on the shared CPU at load 4-5, most of it the 128 ground-truth models); 2,000 training
and 200 test events drawn as ``run.py`` does.

Methods (train x test scores for LDS, self-influence for mislabel detection):

* ``tracin``: exact TracIn over all 8 checkpoints of reference run seed 0 (SGD-step weighting);
* ``tracin_adam``: Adam-aware TracIn, ``eta_k <g', P_k g>`` with Adam's preconditioner saved at
  each checkpoint (:mod:`hepattr_jax.adam`);
* ``cosine``: gradient-cosine over the same checkpoints (:mod:`hepattr_jax.cosine`; its
  self-influence is a constant, so it has no mislabel row);
* ``trak_1model``, ``trak_8ckpts``, ``trak_5models``: TRAK at d = 512 (dense projection) with
  the last checkpoint of seed 0, all its checkpoints, the last checkpoints of seeds 0-4;
* ``ekfac_1model``, ``ekfac_5models``: EK-FAC influence functions (:mod:`hepattr_jax.ekfac`,
  expand factors, true Fisher, damping 0.1 x mean eigenvalue per block) at the last checkpoint
  of seed 0, and the mean over the last checkpoints of seeds 0-4; ``*_reduce``: the same with
  the reduce factors (the eigenbasis theory favours for a pooled output);
* baselines: random scores (LDS and mislabel) and each event's final training loss (mislabel);
  as a bound no method reaches, the loss of the noisy labels under the clean-label reference
  run (seed 0), a model that never saw the flips (``oracle_clean_model_loss``).

Ground truth (the LDS set-up of ``run.py``, shared with it): 64 models on random half subsets
(``subset_margins.npz`` in ``run.py``'s cache), and a second, independent draw of the same 64
subsets with other initialisations and batch orders (training seed 1): the LDS of the first
draw's margins as a predictor of the second's is the ceiling any attribution can reach here.
LDS intervals: 95 % percentile bootstrap over subset models and test jets jointly
(:func:`hepattr_jax.evaluation.lds_interval`, 1,000 resamples).

Mislabel detection: three runs on the same 2,000 training jets with 10 % of the labels flipped
(flip seeds 0, 1, 2; training seed 0, 8 epochs), each method's self-influence on the noisy
training set ranked against the flipped mask.

Compute seconds: the method's scoring on this machine, compilation apart (XLA lowering and
backend compile time, from JAX's monitoring events, subtracted and reported beside it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import time
from pathlib import Path

import jax
import numpy as np

from experiments.attribution_quality.run import (
    ALPHA,
    CHUNK,
    N_SUBSETS,
    N_TRAIN,
    ROOT,
    RUN_SEEDS,
    SUBSET_SEED,
    TRAK_DIM,
    lds_data,
)
from hepattr_jax import ekfac, evaluation, trak
from hepattr_jax.adam import adam_gradient_map
from hepattr_jax.config import load_config
from hepattr_jax.cosine import cosine_gradient_map
from hepattr_jax.data.generate import ensure_generated
from hepattr_jax.datamodels import subset_masks, train_subset_models
from hepattr_jax.environment import provenance
from hepattr_jax.io_utils import atomic_write_json, atomic_write_npz, atomic_write_text
from hepattr_jax.per_example import layout_for
from hepattr_jax.projection import Projector
from hepattr_jax.runs import load_run
from hepattr_jax.tracin import influence_matrix, self_influence
from hepattr_jax.train import evaluate_events, train

RESULTS = Path(__file__).parent / "results"
FLIP_FRACTION, FLIP_SEEDS = 0.1, (0, 1, 2)
TRAK_DAMPING = 1e-3  # run.py's DAMPING: of the mean eigenvalue of Phi^T Phi
EKFAC_DAMPING = 0.1
DAMPINGS = (1e-3, 1e-2, 0.1, 1.0)
SECOND_DRAW_SEED = 1
N_BOOT = 1000
GNN_IRST = Path(__file__).resolve().parents[1] / "gnn_irst"


@dataclasses.dataclass(frozen=True)
class Task:
    """One data set of the table: its training config (the GNN-IRST study's), what it is, and
    where its runs and caches live (the quark/gluon task shares ``run.py``'s reference runs and
    first ground-truth draw)."""

    name: str
    config: Path
    what: str
    runs: str
    draw1: str
    #: ``(process, n, seed)`` of ``hepattr generate`` for a task on generated jets: made into the
    #: config's ``dataset_kwargs.path`` when it holds no finished generation (resumable).
    generate: tuple[str, int, int] | None = None

    def ensure_data(self) -> None:
        """Generates the task's jets if it has a generation and it is missing or unfinished."""
        if self.generate is not None:
            process, n, seed = self.generate
            path = load_config(self.config).dataset_kwargs["path"]
            ensure_generated(process, n, path, seed=seed, workers=os.cpu_count() or 1)

    def paths(self, out: Path) -> tuple[Path, Path, Path]:
        """``(runs dir, first-draw file, this task's cache dir)``."""
        own = out / "table_cache" / self.name
        return out / self.runs, out / self.draw1, own


TASKS = {
    "qg": Task(
        "qg",
        GNN_IRST / "qg.toml",
        "quark/gluon jets (real, GNN-IRST split), EdgeConv with jet-level inputs",
        "runs",
        "cache/subset_margins.npz",
    ),
    "susy": Task(
        "susy",
        GNN_IRST / "susy.toml",
        "event level: SUSY-like chargino pairs vs WW (the built-in simulator), EdgeConv on "
        "fully connected graphs of leptons, jets and missing momentum",
        "runs_susy",
        "table_cache/susy/subset_margins.npz",
    ),
    "top_qcd": Task(
        "top_qcd",
        Path(__file__).parent / "top_qcd.toml",
        "generated top vs QCD jets (Pythia 8 + FastJet, 3,000 jets, seed 0), ParticleNet-like "
        "(ParticleNet-Lite size) on kNN-16 graphs of each jet's 30 leading constituents",
        "runs_top_qcd",
        "table_cache/top_qcd/subset_margins.npz",
        generate=("top_qcd", 3000, 0),
    ),
}

COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def clock():
    """``{"seconds", "compile_seconds"}`` of the block: wall time, and the part of it spent
    lowering and compiling (JAX's monitoring events)."""
    box = {"compile_seconds": 0.0}

    def listener(event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            box["compile_seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    t0 = time.perf_counter()
    try:
        yield box
    finally:
        box["seconds"] = time.perf_counter() - t0
        jax.monitoring.unregister_event_duration_listener(listener)


def cached(path: Path, fn):
    """``fn()`` (a dict of arrays), timed, saved to ``path``; or read back from it."""
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    with clock() as t:
        out = fn()
    out["seconds"] = np.float64(t["seconds"] - t["compile_seconds"])
    out["compile_seconds"] = np.float64(t["compile_seconds"])
    out["load_average"] = np.float64(os.getloadavg()[0])  # 1 min, at the stage's end
    atomic_write_npz(path, out)
    print(f"{path.name}: {t['seconds']:.0f} s ({t['compile_seconds']:.0f} s compiling)", flush=True)
    return out


def last(ck):
    return ck.select([len(ck) - 1])


def ekfac_scores(run, train_gs, test_gs=None, factors="expand"):
    """EK-FAC at ``run``'s last checkpoint: ``{"scores": [N, M]}`` and/or ``{"si": [N]}``."""
    lay = layout_for(run.model, train_gs)
    ck = last(run.checkpoints)
    fac = ekfac.fit(lay, ck, train_gs, factors=factors, chunk_size=CHUNK)
    gm = ekfac.ekfac_gradient_map(fac, damping=EKFAC_DAMPING)
    ek = ekfac.ekfac_checkpoints(ck)
    out = {"si": self_influence(lay, ek, train_gs, chunk_size=CHUNK, gradient_map=gm)}
    if test_gs is not None:
        out["scores"] = influence_matrix(
            lay, ek, train_gs, test_gs, chunk_size=CHUNK, gradient_map=gm
        )
    return out


def trak_features(run, ck, train_gs, test_gs=None):
    lay = layout_for(run.model, train_gs)
    proj = Projector(TRAK_DIM, seed=0)
    ftr, mtr = trak.featurize(lay, ck, train_gs, proj, chunk_size=CHUNK)
    out = {"ftr": ftr, "mtr": mtr}
    if test_gs is not None:
        out["fte"] = trak.featurize(lay, ck, test_gs, proj, chunk_size=CHUNK)[0]
    return out


def clean_loss(clean_run, gs) -> np.ndarray:
    """``[N]`` loss of ``gs``'s (noisy) labels under ``clean_run``'s last checkpoint."""
    ck = clean_run.checkpoints
    logits, _ = evaluate_events(clean_run.model.apply, ck.at(len(ck) - 1), gs)
    y = gs.events.labels.astype(np.float64)
    return np.logaddexp(0.0, logits) - y * logits


def lds_methods(cache: Path, runs, train_gs, test_gs) -> dict[str, dict]:
    """Every method's ``[N, M]`` scores (and timing) on the LDS set."""
    run0 = runs[0]
    lay = layout_for(run0.model, train_gs)
    ck = run0.checkpoints
    out: dict = {"_by_seed": {}}

    def tracin_variant(gm):
        return lambda: {
            "scores": influence_matrix(
                lay, ck, train_gs, test_gs, chunk_size=CHUNK, gradient_map=gm
            )
        }

    out["tracin"] = cached(cache / "lds_tracin.npz", tracin_variant(None))
    out["tracin_adam"] = cached(
        cache / "lds_tracin_adam.npz", tracin_variant(adam_gradient_map(ck))
    )
    out["cosine"] = cached(cache / "lds_cosine.npz", tracin_variant(cosine_gradient_map()))

    feats = {
        (s, which): cached(
            cache / f"trak_features_seed{s}_{which}.npz",
            lambda s=s, which=which: trak_features(
                runs[s],
                runs[s].checkpoints if which == "all" else last(runs[s].checkpoints),
                train_gs,
                test_gs,
            ),
        )
        for s, which in [(0, "all"), *((s, "last") for s in RUN_SEEDS)]
    }

    def trak_method(name, members):
        def f():
            parts = [feats[m] for m in members]
            cat = lambda key: np.concatenate([p[key] for p in parts])  # noqa: E731
            return {
                "scores": trak.trak_scores(cat("ftr"), cat("mtr"), cat("fte"), damping=TRAK_DAMPING)
            }

        r = cached(cache / f"lds_{name}.npz", f)
        r["seconds"] = r["seconds"] + sum(float(feats[m]["seconds"]) for m in members)
        r["compile_seconds"] = r["compile_seconds"] + sum(
            float(feats[m]["compile_seconds"]) for m in members
        )
        out[name] = r

    trak_method("trak_1model", [(0, "last")])
    trak_method("trak_8ckpts", [(0, "all")])
    trak_method("trak_5models", [(s, "last") for s in RUN_SEEDS])

    for factors in ekfac.FACTORS:
        each = {
            s: cached(
                cache / f"ekfac_{factors}_seed{s}.npz",
                lambda s=s, f=factors: ekfac_scores(runs[s], train_gs, test_gs, f),
            )
            for s in RUN_SEEDS
        }
        tag = "" if factors == "expand" else f"_{factors}"
        out[f"ekfac_1model{tag}"] = each[0]
        out[f"ekfac_5models{tag}"] = {
            "scores": np.mean([each[s]["scores"] for s in RUN_SEEDS], axis=0),
            "seconds": sum(float(each[s]["seconds"]) for s in RUN_SEEDS),
            "compile_seconds": sum(float(each[s]["compile_seconds"]) for s in RUN_SEEDS),
        }
        out["_by_seed"][factors] = {s: each[s]["scores"] for s in RUN_SEEDS}
    out["random"] = {
        "scores": np.random.default_rng(7).normal(size=(len(train_gs), len(test_gs))),
        "seconds": 0.0,
        "compile_seconds": 0.0,
    }
    out["_damping"] = cached(
        cache / "ekfac_damping_seed0.npz", lambda: ekfac_damping(run0, train_gs, test_gs)
    )
    return out


def ekfac_damping(run, train_gs, test_gs) -> dict[str, np.ndarray]:
    """EK-FAC (expand, last checkpoint) scores at each damping of :data:`DAMPINGS`, one fit."""
    lay = layout_for(run.model, train_gs)
    ck = last(run.checkpoints)
    fac = ekfac.fit(lay, ck, train_gs, chunk_size=CHUNK)
    out = {}
    for d in DAMPINGS:
        gm = ekfac.ekfac_gradient_map(fac, damping=d)
        out[f"damping_{d:g}"] = influence_matrix(
            lay, ekfac.ekfac_checkpoints(ck), train_gs, test_gs, chunk_size=CHUNK, gradient_map=gm
        )
    return out


def mislabel_seed(
    cache: Path, runs_dir: Path, config, data, seed: int, clean_run
) -> dict[str, dict]:
    """One flip seed: every method's self-influence on the noisy training set, ranked; and, as
    a bound no method has, the loss of the flipped labels under the clean-label reference run
    ``clean_run`` (a model that never saw the flips)."""
    labels, flipped = evaluation.flip_labels(data.train.events.labels, FLIP_FRACTION, seed)
    ev = dataclasses.replace(data.train.events, labels=labels.astype(np.int32))
    noisy = data.with_train(dataclasses.replace(data.train, events=ev))
    run_dir = runs_dir / f"noisy_flip{seed}"
    if not (run_dir / "metrics.json").exists():
        train(config.replace(seed=0), run_dir, data=noisy, progress=False)
    run = load_run(run_dir, data=noisy)
    gs, ck = noisy.train, run.checkpoints
    lay = layout_for(run.model, gs)
    tag = f"mis_flip{seed}"

    def trak_si():
        f = trak_features(run, last(ck), gs)
        return {"si": trak.trak_self_influence(f["ftr"], f["mtr"], damping=TRAK_DAMPING)}

    def tracin_si(gm):
        return lambda: {"si": self_influence(lay, ck, gs, chunk_size=CHUNK, gradient_map=gm)}

    si = {
        "tracin": cached(cache / f"{tag}_tracin.npz", tracin_si(None)),
        "tracin_adam": cached(cache / f"{tag}_tracin_adam.npz", tracin_si(adam_gradient_map(ck))),
        "ekfac_1model": cached(cache / f"{tag}_ekfac_expand.npz", lambda: ekfac_scores(run, gs)),
        "ekfac_1model_reduce": cached(
            cache / f"{tag}_ekfac_reduce.npz", lambda: ekfac_scores(run, gs, factors="reduce")
        ),
        "trak_1model": cached(cache / f"{tag}_trak.npz", trak_si),
        "loss": cached(
            cache / f"{tag}_loss.npz",
            lambda: {"si": evaluate_events(run.model.apply, last(ck).at(0), gs)[1]},
        ),
        "oracle_clean_model_loss": cached(
            cache / f"{tag}_oracle_clean_loss.npz",
            lambda: {"si": clean_loss(clean_run, gs)},
        ),
        "random": {
            "si": np.random.default_rng([7, seed]).normal(size=len(gs)),
            "seconds": 0.0,
            "compile_seconds": 0.0,
        },
    }
    return {
        name: {
            **evaluation.detection_rates(r["si"], flipped),
            "seconds": float(r["seconds"]),
            "compile_seconds": float(r["compile_seconds"]),
        }
        for name, r in si.items()
    }


def run_table(out: Path, task: Task) -> dict:
    """Every method on ``task``: its results (also written to ``out/table_{task}.json``)."""
    runs_dir, draw1_path, own = task.paths(out)
    own.mkdir(parents=True, exist_ok=True)
    task.ensure_data()
    config, data = lds_data(task.config)
    train_gs, test_gs = data.train, data.test
    print(f"{task.name}: {len(train_gs)} train, {len(test_gs)} test events", flush=True)
    runs = {}
    for s in RUN_SEEDS:
        run_dir = runs_dir / f"seed{s}"
        if not (run_dir / "metrics.json").exists():
            train(config.replace(seed=s), run_dir, data=data, progress=False)
        runs[s] = load_run(run_dir, data=data)

    # the scores first (minutes each), the second ground-truth draw (the longest stage) last
    methods = lds_methods(own, runs, train_gs, test_gs)
    mislabel = {}
    for seed in FLIP_SEEDS:
        mislabel[f"flip{seed}"] = rows = mislabel_seed(own, runs_dir, config, data, seed, runs[0])
        aurocs = ", ".join(f"{k} {v['detector_auroc']:.3f}" for k, v in rows.items())
        print(f"mislabel flip{seed}: {aurocs}", flush=True)

    masks = subset_masks(N_TRAIN, N_SUBSETS, ALPHA, SUBSET_SEED)
    draws = []
    for path, seed in (
        (draw1_path, config.seed),
        (own / "subset_margins_draw2.npz", SECOND_DRAW_SEED),
    ):
        r = cached(
            path,
            lambda seed=seed: {
                "margins": train_subset_models(
                    config.replace(seed=seed), data, masks, {"test": test_gs}, group=16
                )["test"]
            },
        )
        draws.append(r["margins"])
    ceiling = evaluation.lds_interval(draws[0], draws[1], n_boot=N_BOOT)
    # One draw predicting another carries the noise of both; a noise-free predictor of the
    # expected margin would reach about the square root of it against one draw (Spearman
    # taken as the correlation of two equally reliable measurements).
    ceiling["noise_free_estimate"] = float(np.sqrt(max(ceiling["lds"], 0.0)))
    print(f"ceiling (draw 1 predicting draw 2): {ceiling}", flush=True)

    loads = [float(r["load_average"]) for r in methods.values() if "load_average" in r]
    by_seed = methods.pop("_by_seed")
    damping = methods.pop("_damping")

    def plain_lds(scores):
        return float(evaluation.linear_datamodeling_score(scores, masks, draws[0])[0])

    ekfac_by_seed = {f: {str(k): plain_lds(v) for k, v in d.items()} for f, d in by_seed.items()}
    ekfac_damping = {
        k.removeprefix("damping_"): plain_lds(v)
        for k, v in damping.items()
        if k.startswith("damping_")
    }
    lds = {}
    for name, r in methods.items():
        lds[name] = {
            **evaluation.lds_interval(
                masks.astype(np.float64) @ r["scores"], draws[0], n_boot=N_BOOT
            ),
            "lds_draw2": float(
                evaluation.linear_datamodeling_score(r["scores"], masks, draws[1])[0]
            ),
            "seconds": float(r["seconds"]),
            "compile_seconds": float(r["compile_seconds"]),
        }
        v = lds[name]
        print(f"LDS {name:14s} {v['lds']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]", flush=True)

    results = {
        "date": datetime.date.today().isoformat(),
        **provenance(),
        "command": ".venv/bin/python -m experiments.attribution_quality.table",
        "setup": {
            "task": task.name,
            "what": task.what,
            "config": str(task.config.relative_to(ROOT)),
            "n_train": N_TRAIN,
            "n_test": len(test_gs),
            "run_seeds": list(RUN_SEEDS),
            "n_subsets": N_SUBSETS,
            "alpha": ALPHA,
            "subset_seed": SUBSET_SEED,
            "second_draw_training_seed": SECOND_DRAW_SEED,
            "trak_dim": TRAK_DIM,
            "trak_damping": TRAK_DAMPING,
            "ekfac_damping": EKFAC_DAMPING,
            "flip_fraction": FLIP_FRACTION,
            "flip_seeds": list(FLIP_SEEDS),
            "n_boot": N_BOOT,
        },
        "ceiling": ceiling,
        "load_average_while_scoring": [min(loads), max(loads)] if loads else None,
        "lds": lds,
        "ekfac_lds_by_seed": ekfac_by_seed,
        "ekfac_lds_by_damping": ekfac_damping,
        "mislabel": mislabel,
    }
    atomic_write_json(out / f"table_{task.name}.json", results)
    return results


#: The table's row order (json keeps keys sorted).
ORDER = (
    "tracin",
    "tracin_adam",
    "cosine",
    "trak_1model",
    "trak_8ckpts",
    "trak_5models",
    "ekfac_1model",
    "ekfac_5models",
    "ekfac_1model_reduce",
    "ekfac_5models_reduce",
    "random",
    "loss",
    "oracle_clean_model_loss",
)


def method_names(r: dict) -> list[str]:
    """Every method with an LDS or mislabel figure in ``r``, in :data:`ORDER`."""
    present = set(r["lds"]) | {n for rows in r["mislabel"].values() for n in rows}
    return [n for n in ORDER if n in present] + sorted(present - set(ORDER))


def _mislabel_summary(mislabel: dict, name: str) -> dict | None:
    rows = [seed_rows[name] for seed_rows in mislabel.values() if name in seed_rows]
    if not rows:
        return None
    keys = ["detector_auroc", "found_in_top_5pct", "found_in_top_10pct", "found_in_top_20pct"]
    return {
        k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows]))) for k in keys
    }


def report(results: dict[str, dict]) -> str:
    """The combined table (one row per task and method) and each task's section."""
    lines = [
        "# One quality table: every attribution method on every task",
        "",
        "Command: `.venv/bin/python -m experiments.attribution_quality.table` (`--task` picks "
        "tasks; each task's figures are in `table_<task>.json`). Columns: LDS with its 95 % "
        "bootstrap interval, mislabel AUROC (10 % flips, mean over three flip seeds), scoring "
        "seconds with compilation apart. Details, ceilings and per-seed figures below.",
        "",
        "| task | method | LDS [95 % CI] | mislabel AUROC | seconds LDS / mislabel |",
        "|---|---|---|---|---|",
    ]
    for task, r in results.items():
        names = method_names(r)
        c = r["ceiling"]
        lines.append(
            f"| {task} | *ceiling: 2nd draw predicted by the 1st* | {c['lds']:+.3f} "
            f"[{c['low']:+.3f}, {c['high']:+.3f}] | - | - |"
        )
        for name in names:
            v = r["lds"].get(name)
            m = _mislabel_summary(r["mislabel"], name)
            lds = f"{v['lds']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" if v else "-"
            au = f"{m['detector_auroc'][0]:.3f}" if m else "-"
            rows = [x[name] for x in r["mislabel"].values() if name in x]
            sec = (
                (f"{v['seconds']:.0f}" if v else "-")
                + " / "
                + (f"{np.mean([x['seconds'] for x in rows]):.0f}" if rows else "-")
            )
            lines.append(f"| {task} | {name} | {lds} | {au} | {sec} |")
    for r in results.values():
        lines += ["", *task_section(r)]
    return "\n".join(lines) + "\n"


def _load_note(r: dict) -> str:
    load = r.get("load_average_while_scoring")
    if not load:
        return ""
    return f" Load average (1 min) at the end of the scoring stages: {load[0]:.1f}-{load[1]:.1f}."


def task_section(r: dict) -> list[str]:
    s = r["setup"]
    c = r["ceiling"]
    lines = [
        f"## {s['task']}: {s['what']}",
        "",
        f"Date {r['date']}; {r['hardware']}; jax {r['jax']}; config `{s['config']}`."
        + _load_note(r),
        "",
        f"{s['n_train']} training and {s['n_test']} test events. LDS: {s['n_subsets']} models "
        f"on random alpha = {s['alpha']} subsets "
        f"(subset seed {s['subset_seed']}); 95 % percentile bootstrap intervals over subset "
        f"models and test jets jointly ({s['n_boot']} resamples). Ceiling: a second draw of "
        f"the same subsets (training seed {s['second_draw_training_seed']}), its margins "
        f"predicted by the first draw's: LDS **{c['lds']:.3f}** [{c['low']:.3f}, {c['high']:.3f}] "
        f"(a noise-free predictor of the expected margin: about sqrt of it, "
        f"{c['noise_free_estimate']:.2f}). "
        f"Mislabel: {round(100 * s['flip_fraction'])} % of the training labels flipped, flip "
        f"seeds {s['flip_seeds']}, one run each; mean +- sd over the seeds. Seconds: scoring "
        "on this machine with compilation apart (LDS set: the train x test scores; mislabel: "
        "self-influence, mean over seeds).",
        "",
        "| method | LDS [95 % CI] | LDS vs 2nd draw | mislabel AUROC | flips in top 5 / 10 / 20 % "
        "| seconds LDS (+compile) | seconds mislabel (+compile) |",
        "|---|---|---|---|---|---|---|",
    ]
    names = method_names(r)
    for name in names:
        v = r["lds"].get(name)
        m = _mislabel_summary(r["mislabel"], name)
        lds = f"{v['lds']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]" if v else "-"
        lds2 = f"{v['lds_draw2']:+.3f}" if v else "-"
        if m:
            au = f"{m['detector_auroc'][0]:.3f} +- {m['detector_auroc'][1]:.3f}"
            tops = " / ".join(
                f"{m[k][0]:.2f}"
                for k in ("found_in_top_5pct", "found_in_top_10pct", "found_in_top_20pct")
            )
            rows = [seed_rows[name] for seed_rows in r["mislabel"].values()]
            ms = np.mean([x["seconds"] for x in rows])
            mc = np.mean([x["compile_seconds"] for x in rows])
            msec = f"{ms:.0f} (+{mc:.0f})"
        else:
            au = tops = msec = "-"
        secs = f"{v['seconds']:.0f} (+{v['compile_seconds']:.0f})" if v else "-"
        lines.append(f"| {name} | {lds} | {lds2} | {au} | {tops} | {secs} | {msec} |")
    seeds = list(next(iter(r["ekfac_lds_by_seed"].values())))
    lines += [
        "",
        "EK-FAC with one model, each reference run (LDS against the first draw):",
        "",
        "| factors | " + " | ".join(f"seed {k}" for k in seeds) + " |",
        "|---|" + "---|" * len(seeds),
    ]
    for f, row in r["ekfac_lds_by_seed"].items():
        lines.append(f"| {f} | " + " | ".join(f"{v:+.3f}" for v in row.values()) + " |")
    lines += [
        "",
        "EK-FAC (expand, seed 0) by damping (fraction of each block's mean eigenvalue): "
        + ", ".join(f"{k}: {v:+.3f}" for k, v in r["ekfac_lds_by_damping"].items())
        + ".",
    ]
    lines += [
        "",
        "Per flip seed (AUROC):",
        "",
        "| method | " + " | ".join(r["mislabel"]) + " |",
        "|---|" + "---|" * len(r["mislabel"]),
    ]
    names_m = [n for n in method_names(r) if n in next(iter(r["mislabel"].values()), {})]
    for name in names_m:
        lines.append(
            f"| {name} | "
            + " | ".join(f"{rows[name]['detector_auroc']:.3f}" for rows in r["mislabel"].values())
            + " |"
        )
    return lines


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--task", choices=sorted(TASKS), action="append", help="tasks to run (default: all)"
    )
    args = ap.parse_args(argv)
    for name in args.task or sorted(TASKS):
        run_table(args.out, TASKS[name])
    results = {}
    for name in TASKS:  # every task with results on disk, in the table's order
        path = args.out / f"table_{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text())
    path = args.out / "table.md"
    atomic_write_text(path, report(results))
    print(f"report: {path.resolve()}")
    return path


if __name__ == "__main__":
    main()
