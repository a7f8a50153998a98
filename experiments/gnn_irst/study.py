"""GNN-IRST study (arXiv 2407.14859): distil the training set by TracIn self-influence, retrain,
compare with the full set, random subsets and other removal rules; mislabel detection.

Command (from the repository root; full study, a few hours on a 2-core CPU)::

    .venv/bin/python -m experiments.gnn_irst.study --preset full --out runs/gnn_irst_full

Quick version (what ``make demo`` runs, minutes)::

    .venv/bin/python -m experiments.gnn_irst.study --preset demo --out runs/demo

For every data set and seed ``s`` (model initialisation and batch order; the split is fixed):

1. train on the full training split, a checkpoint each epoch (the "full" baseline);
2. TracIn self-influence of every training event over all checkpoints (exact, resumable store),
   and each event's loss at the final checkpoint;
3. keep masks from each removal rule (``hepattr_jax.evaluation``); retrain from scratch, same
   seed and settings, on exactly the kept events; evaluate on the same held-out test split;
4. mislabel detection: flip 10 % of the training labels, train, score, and measure how many of
   the flipped events each score ranks first; retrain after removing the top-ranked events.

Every retraining appends one row to ``OUT/results.json`` (written atomically; a killed study
resumes and skips finished rows). Each training row records what it was trained on: the digest
of the kept event ids, the config fingerprint and the data fingerprint (labels included); a
resumed study refuses a finished row whose record differs from what it would train now (other
scores, so other kept events; another config), instead of reporting it as if it matched.
Scores go to ``OUT/scores/``, ``report.md`` and its plots to ``OUT``; run directories
(checkpoints) to ``OUT/runs/``, which alone may be deleted: results, scores and the report are
all a later session needs to continue or re-plot.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from hepattr_jax import evaluation, metrics
from hepattr_jax.config import TrainConfig, load_config
from hepattr_jax.data.registry import load_dataset
from hepattr_jax.environment import hardware
from hepattr_jax.errors import HepattrError
from hepattr_jax.io_utils import atomic_write_json, atomic_write_npz
from hepattr_jax.runs import load_run
from hepattr_jax.scoring import scored_self_influence
from hepattr_jax.store import ids_digest
from hepattr_jax.train import PreparedData, evaluate_events, prepare_data, train

HERE = Path(__file__).parent


@dataclasses.dataclass(frozen=True)
class Preset:
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    qs: tuple[float, ...]
    epochs: int
    robust_c: float = 1.5
    robust: bool = True
    per_class_qs: tuple[float, ...] = ()
    flip_fraction: float = 0.1
    mislabel_seeds: tuple[int, ...] = (0,)
    mislabel_remove: tuple[float, ...] = (0.1,)
    dataset_kwargs: dict = dataclasses.field(default_factory=dict)
    chunk_size: int = 256
    # Self-influence methods the removal rules rank by (hepattr_jax.scoring.METHODS): TracIn's
    # rules are si_top_q / si_bottom_q, another method's <method>_si_top_q / _bottom_q.
    scores: tuple[str, ...] = ("tracin",)
    loss_rules: bool = True


PRESETS = {
    # Inside the test suite: a few hundred jets, two epochs, one seed.
    "tiny": Preset(
        datasets=("qg_jets",),
        seeds=(0,),
        qs=(0.2,),
        epochs=2,
        mislabel_remove=(0.1,),
        dataset_kwargs={"qg_jets": {"max_jets": 600}},
        chunk_size=64,
    ),
    # make demo: all real jets, one seed, two removal fractions.
    "demo": Preset(datasets=("qg_jets",), seeds=(0,), qs=(0.1, 0.3), epochs=5, robust=False),
    # The study of the issue: both data sets, five seeds, every rule.
    "full": Preset(
        datasets=("qg_jets", "susy_sim"),
        seeds=(0, 1, 2, 3, 4),
        qs=(0.05, 0.1, 0.2, 0.3, 0.5),
        epochs=8,
        per_class_qs=(0.1, 0.3),
        mislabel_seeds=(0, 1, 2),
        mislabel_remove=(0.1, 0.2),
        dataset_kwargs={"susy_sim": {"n_events": 30_000, "seed": 0}},
    ),
    # The headline comparisons with ten seeds, so that a real effect can show at p < 0.01 (the
    # exact sign-flip test's smallest p is 2 / 2^10): top and bottom self-influence at q = 0.1
    # and 0.3 against random subsets of the same size, TracIn beside EK-FAC (the best score of
    # experiments/attribution_quality/table.py).
    "headline": Preset(
        datasets=("qg_jets",),
        seeds=tuple(range(10)),
        qs=(0.1, 0.3),
        epochs=8,
        robust=False,
        mislabel_seeds=(),
        scores=("tracin", "ekfac"),
        loss_rules=False,
    ),
}

BASE_CONFIG = {"qg_jets": "qg.toml", "susy_sim": "susy.toml"}


def study_config(p: Preset, ds: str, configs: dict[str, Path]) -> TrainConfig:
    """The training config of data set ``ds``: its file (a preset's built-in, or the user's
    ``--config``) with the preset's epochs and any dataset_kwargs the preset sets for it."""
    base = load_config(configs[ds]).replace(epochs=p.epochs)
    if ds in p.dataset_kwargs:
        base = base.replace(dataset_kwargs=p.dataset_kwargs[ds])
    return base


# --------------------------------------------------------------------- rules
def score_prefix(method: str) -> str:
    """The rule-name prefix of a self-influence method: ``si`` for TracIn (the names of every
    study before methods existed), ``<method>_si`` for the others."""
    return "si" if method == "tracin" else f"{method}_si"


def removal_masks(
    scores: dict[str, np.ndarray], loss: np.ndarray, labels: np.ndarray, p: Preset, seed: int
) -> dict[str, np.ndarray]:
    """Keep masks of every rule; each SI rule is matched by a random subset of the same size.
    ``scores``: self-influence by method (``"tracin"`` drives the robust and per-class rules)."""
    si = scores["tracin"]
    n = len(si)
    masks = {}
    for q in p.qs:
        for method in p.scores:
            pre = score_prefix(method)
            masks[f"{pre}_top_{q:g}"] = evaluation.remove_top_fraction(scores[method], q)
            masks[f"{pre}_bottom_{q:g}"] = evaluation.remove_top_fraction(
                scores[method], q, largest=False
            )
        if p.loss_rules:
            masks[f"loss_top_{q:g}"] = evaluation.remove_top_fraction(loss, q)
        masks[f"random_{q:g}"] = evaluation.random_keep(
            n, n - int(round(q * n)), seed=1000 * seed + int(1000 * q)
        )
    for q in p.per_class_qs:
        masks[f"si_top_perclass_{q:g}"] = evaluation.remove_top_fraction(
            si, q, labels=labels, per_class=True
        )
    for per_class in (False, True) if p.robust else ():
        name = f"si_robust_{p.robust_c:g}" + ("_perclass" if per_class else "")
        keep = evaluation.remove_above_robust_threshold(
            si, p.robust_c, labels=labels, per_class=per_class
        )
        masks[name] = keep
        masks[f"random_as_{name}"] = evaluation.random_keep(n, int(keep.sum()), seed=seed + 7)
    return masks


# --------------------------------------------------------------------- one training
IDENTITY_KEYS = ("kept_ids_sha", "config_fingerprint", "data_fingerprint")


def row_identity(config: TrainConfig, data: PreparedData, keep: np.ndarray | None) -> dict:
    """What a training row is trained on: digest of the kept train ids (sorted, int64), the
    config fingerprint, and the fingerprint of the data (of the kept subset and its labels)."""
    train_gs = data.train if keep is None else data.train.select(np.flatnonzero(keep))
    d = data if keep is None else data.with_train(train_gs)
    return {
        "kept_ids_sha": ids_digest(np.sort(np.asarray(train_gs.events.ids, np.int64))),
        "config_fingerprint": config.fingerprint(),
        "data_fingerprint": d.fingerprint,
    }


def _train_row(
    config: TrainConfig, data: PreparedData, run_dir: Path, keep: np.ndarray | None
) -> dict:
    """Retrains on ``train[keep]`` (or all) and returns the metrics row (with kept ids saved)."""
    train_gs = data.train if keep is None else data.train.select(np.flatnonzero(keep))
    d = data if keep is None else data.with_train(train_gs)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.save(run_dir / "kept_ids.npy", train_gs.events.ids)
    t0 = time.perf_counter()
    r = train(config, run_dir, data=d, progress=False)
    hist = json.loads((run_dir / "history.json").read_text())
    if r["n_train"] != len(train_gs):  # bookkeeping: trained on exactly the kept events
        raise RuntimeError(f"{run_dir}: trained on {r['n_train']} events, kept {len(train_gs)}")
    return {
        **row_identity(config, data, keep),
        "n_train": r["n_train"],
        "test": r["test"],
        "best_epoch": r["best_epoch"],
        "train_seconds": float(sum(h["seconds"] for h in hist)),
        "wall_seconds": time.perf_counter() - t0,
        "optimizer_steps": int(r["checkpoint_steps"][-1]),
    }


def _score_key(method: str) -> str:
    return "si" if method == "tracin" else f"si_{method}"


def _trained_scores(
    res: Results,
    key: str,
    cfg: TrainConfig,
    data: PreparedData,
    run_dir: Path,
    score_file: Path,
    p: Preset,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Self-influence by method (``p.scores``, TracIn always) and final loss of ``data.train``
    under the run ``key``: read from ``score_file`` if it holds them all, else scored from the
    run's checkpoints (trained again if they are gone, so that row and scores belong to the
    same checkpoints) and saved."""
    identity = row_identity(cfg, data, None)
    methods = tuple(dict.fromkeys(("tracin", *p.scores)))
    saved: dict[str, np.ndarray] = {}
    if score_file.exists() and key in res.rows:
        res.check(key, identity)
        with np.load(score_file) as z:
            saved = {k: z[k] for k in z.files}
        if not np.array_equal(saved["ids"], data.train.events.ids):
            raise RuntimeError(f"{score_file}: scores of other events; delete it")
        if all(_score_key(m) in saved for m in methods):
            return {m: saved[_score_key(m)] for m in methods}, saved["loss"]
    if key not in res.rows or not (run_dir / "metrics.json").exists():
        res.rows.pop(key, None)
        res.get_or_run(key, _train_row, cfg, data, run_dir, None, identity=identity)
    scores, loss = _scores(run_dir, data, cfg, p.chunk_size, methods)
    if saved and not np.array_equal(saved["si"], scores["tracin"]):
        raise RuntimeError(f"{score_file}: TracIn scores differ from the run's; delete it")
    arrays = {_score_key(m): v for m, v in scores.items()}
    atomic_write_npz(
        score_file,
        {"ids": data.train.events.ids, "loss": loss, "labels": data.train.events.labels, **arrays},
        compressed=True,
    )
    return scores, loss


def _baselines(data: PreparedData) -> dict:
    """Classic single-quantity discriminants on the test split, for comparison."""
    test = data.test.events
    out = {}
    for name in ("chg_mult", "met", "mt2", "jet_mass"):
        if name in test.physics:
            out[f"{name}_auroc"] = float(metrics.auroc(test.labels, test.physics[name]))
    return out


def _scores(
    run_dir: Path,
    data: PreparedData,
    config: TrainConfig,
    chunk_size: int,
    methods: tuple[str, ...] = ("tracin",),
):
    """Self-influence by method (TracIn over all checkpoints; EK-FAC at the last, its factors
    in the run's ``influence/ekfac_factors``), and the loss at the last checkpoint."""
    run = load_run(run_dir, data=data)
    scores = {}
    for method in methods:
        store = (
            run_dir / "influence" / ("self_train" + ("" if method == "tracin" else f"_{method}"))
        )
        _, scores[method], _ = scored_self_influence(
            run,
            store,
            chunk_size=chunk_size,
            progress=False,
            method=method,
            ekfac_dir=run_dir / "influence" / "ekfac_factors",
        )
    last = run.checkpoints.at(len(run.checkpoints) - 1)
    _, loss = evaluate_events(run.model.apply, last, data.train, config.batch_size)
    return scores, loss


# --------------------------------------------------------------------- driver
class StudyError(HepattrError):
    """A resumed study whose finished rows do not match what it would compute now."""


class Results:
    """Rows keyed by name in ``results.json``; saved atomically after each row (resumable)."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = json.loads(path.read_text()) if path.exists() else {}

    def get_or_run(self, key: str, fn, *args, identity: dict | None = None):
        """The row ``key``, computing ``fn(*args)`` and saving it first if it is not there.

        ``identity`` (:func:`row_identity`): a finished row must carry the same values, or
        StudyError names the row and what differs (rows written before these were recorded are
        accepted with a warning).
        """
        if identity is not None:
            self.check(key, identity)
        if key not in self.rows:
            self.rows[key] = fn(*args)
            atomic_write_json(self.path, self.rows)
        return self.rows[key]

    def check(self, key: str, identity: dict) -> None:
        """StudyError if the finished row ``key`` records another :func:`row_identity`."""
        row = self.rows.get(key)
        if row is None:
            return
        if not all(k in row for k in identity):
            print(
                f"   warning: {self.path}: row {key} records no kept-id digest (older study); "
                "reused unchecked",
                flush=True,
            )
            return
        diffs = [f"{k}: recorded {row[k]} vs now {v}" for k, v in identity.items() if row[k] != v]
        if diffs:
            raise StudyError(
                f"{self.path}: row {key!r} was computed on other events or settings than this "
                f"study would use now ({'; '.join(diffs)}); delete the row (and its run "
                "directory) to recompute it, or use another --out"
            )


def run_study(
    preset: str,
    out: Path,
    datasets: tuple[str, ...] | None = None,
    *,
    config: Path | None = None,
    seeds: tuple[int, ...] | None = None,
    scores: tuple[str, ...] | None = None,
) -> Path:
    """Runs (or resumes) the study ``preset`` into ``out``; ``datasets`` restricts it to some of
    the preset's data sets (rows of the others stay in results.json untouched). ``config``: a
    user's training config (any data source, e.g. ``dataset = "parquet"``) studied in place of
    the preset's data sets, under its file name; ``seeds``, ``scores``: override the preset's."""
    from hepattr_jax.scoring import METHODS

    p = PRESETS[preset]
    if seeds:
        p = dataclasses.replace(p, seeds=tuple(seeds))
    if scores:
        unknown = sorted(set(scores) - set(METHODS) | ({"cosine"} & set(scores)))
        if unknown:
            raise SystemExit(
                f"--scores {unknown}: use self-influence methods of {METHODS} but cosine (its "
                "self-influence is a constant)"
            )
        p = dataclasses.replace(p, scores=tuple(dict.fromkeys(("tracin", *scores))))
    configs = {ds: HERE / name for ds, name in BASE_CONFIG.items()}
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise SystemExit(f"--config {config}: no such file")
        configs = {config.stem: config}
        p = dataclasses.replace(p, datasets=(config.stem,))
        datasets = None
    if datasets:
        unknown = sorted(set(datasets) - set(p.datasets))
        if unknown:
            raise SystemExit(f"--datasets {unknown} not in preset {preset!r}: {p.datasets}")
        p = dataclasses.replace(p, datasets=tuple(datasets))
    out.mkdir(parents=True, exist_ok=True)
    res = Results(out / "results.json")
    t_start = time.perf_counter()
    for ds in p.datasets:
        base = study_config(p, ds, configs)
        events = load_dataset(base.dataset, **base.dataset_kwargs)
        data = prepare_data(base, events)
        labels = data.train.events.labels
        res.get_or_run(f"{ds}/baselines", _baselines, data)
        for seed in p.seeds:
            cfg = base.replace(seed=seed)
            tag = f"{ds}/seed{seed}"
            print(f"== {tag}: full training set ({len(data.train)} events)", flush=True)
            base_dir = out / "runs" / ds / f"seed{seed}" / "full"
            score_file = out / "scores" / f"{ds}_seed{seed}.npz"
            scores, loss = _trained_scores(res, f"{tag}/full", cfg, data, base_dir, score_file, p)
            for rule, keep in removal_masks(scores, loss, labels, p, seed).items():
                print(f"   {tag}: {rule} (keep {int(keep.sum())})", flush=True)
                rule_dir = out / "runs" / ds / f"seed{seed}" / rule
                res.get_or_run(
                    f"{tag}/{rule}",
                    _train_row,
                    cfg,
                    data,
                    rule_dir,
                    keep,
                    identity=row_identity(cfg, data, keep),
                )
        for seed in p.mislabel_seeds:
            _mislabel(res, out, ds, base, data, p, seed)
    physics = {ds: _physics_table(p, ds, configs) for ds in p.datasets}
    return write_report(preset, p, out, res.rows, (time.perf_counter() - t_start) / 60, physics)


def _physics_table(p: Preset, ds: str, configs: dict[str, Path]) -> dict[str, np.ndarray]:
    """Per-event node count and physics quantities of the training split, by event id order."""
    train = prepare_data(study_config(p, ds, configs)).train.events
    return {"ids": train.ids, "n_node": train.n_node.astype(float), **train.physics}


def _mislabel(
    res: Results, out: Path, ds: str, base: TrainConfig, data: PreparedData, p: Preset, seed: int
) -> None:
    tag = f"{ds}/mislabel_seed{seed}"
    labels, flipped = evaluation.flip_labels(data.train.events.labels, p.flip_fraction, seed)
    ev = dataclasses.replace(data.train.events, labels=labels.astype(np.int32))
    noisy = data.with_train(dataclasses.replace(data.train, events=ev))
    cfg = base.replace(seed=seed)
    run_dir = out / "runs" / ds / f"mislabel_seed{seed}" / "noisy"
    print(f"== {tag}: {int(flipped.sum())} flipped labels", flush=True)
    score_file = out / "scores" / f"{ds}_mislabel_seed{seed}.npz"
    scores, loss = _trained_scores(res, f"{tag}/noisy_full", cfg, noisy, run_dir, score_file, p)
    si = scores["tracin"]
    rnd = np.random.default_rng(seed + 99).random(len(si))
    named = [("self_influence", si)]
    named += [(f"self_influence_{m}", scores[m]) for m in p.scores if m != "tracin"]

    def detection():
        return {
            name: evaluation.detection_rates(s, flipped)
            for name, s in (*named, ("loss", loss), ("random", rnd))
        }

    res.get_or_run(f"{tag}/detection", detection)
    for q in p.mislabel_remove:
        for name, s in (("si", si), ("loss", loss)):
            keep = evaluation.remove_top_fraction(s, q)
            key = f"{tag}/remove_{name}_top_{q:g}"
            res.get_or_run(
                key,
                _noisy_row,
                cfg,
                noisy,
                run_dir.parent / key.split("/")[-1],
                keep,
                flipped,
                identity=row_identity(cfg, noisy, keep),
            )


def _noisy_row(cfg, noisy, run_dir, keep, flipped) -> dict:
    """A retraining on noisy labels after removal, with how many flipped events it removed."""
    return {
        **_train_row(cfg, noisy, run_dir, keep),
        "flipped_removed": int((flipped & ~keep).sum()),
    }


# --------------------------------------------------------------------- report
METRICS = ("auroc", "f1", "accuracy", "precision", "recall")


def _paired_sign_flip_p(diffs: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p-value of the mean of paired differences."""
    n = len(diffs)
    if n == 0 or np.all(diffs == 0):
        return 1.0
    obs = abs(diffs.mean())
    signs = np.array(np.meshgrid(*[[-1, 1]] * n)).reshape(n, -1).T
    return float(np.mean(np.abs((signs * diffs).mean(1)) >= obs - 1e-15))


def summarise(rows: dict, ds: str, seeds) -> tuple[list[dict], list[str]]:
    """Mean/std over seeds per rule, and the paired comparison of SI rules with random."""
    rules = sorted({k.split("/")[2] for k in rows if k.startswith(f"{ds}/seed")})
    table = []
    for rule in rules:
        vals = [rows[f"{ds}/seed{s}/{rule}"] for s in seeds if f"{ds}/seed{s}/{rule}" in rows]
        if not vals:
            continue
        entry = {
            "rule": rule,
            "n_seeds": len(vals),
            "n_train": int(np.mean([v["n_train"] for v in vals])),
        }
        for m in METRICS:
            x = np.array([v["test"][m] for v in vals])
            entry[m] = (float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0)
        entry["train_seconds"] = float(np.mean([v["train_seconds"] for v in vals]))
        entry["optimizer_steps"] = int(np.mean([v["optimizer_steps"] for v in vals]))
        table.append(entry)
    paired = []
    for rule in rules:
        if rule.startswith("random") or rule == "full":
            continue
        q = rule.split("_")[-1]
        partner = f"random_{q}" if not rule.startswith("si_robust") else f"random_as_{rule}"
        if rule.startswith("si_top_perclass"):
            partner = f"random_{q}"
        both = [
            s for s in seeds if f"{ds}/seed{s}/{rule}" in rows and f"{ds}/seed{s}/{partner}" in rows
        ]
        if not both:
            continue
        d = np.array(
            [
                rows[f"{ds}/seed{s}/{rule}"]["test"]["auroc"]
                - rows[f"{ds}/seed{s}/{partner}"]["test"]["auroc"]
                for s in both
            ]
        )
        paired.append(
            f"| {rule} | {partner} | {len(both)} | {d.mean():+.4f} | "
            f"{d.std(ddof=1) if len(d) > 1 else 0:.4f} | {(d > 0).sum()}/{len(d)} | "
            f"{_paired_sign_flip_p(d):.3f} |"
        )
    return table, paired


def _row_minutes(rows: dict) -> float:
    return sum(r.get("wall_seconds", 0.0) for r in rows.values() if isinstance(r, dict)) / 60


def write_report(
    preset: str, p: Preset, out: Path, rows: dict, minutes: float, physics: dict
) -> Path:
    from experiments.gnn_irst.plots import physics_plots, removal_curve

    lines = [
        f"# GNN-IRST study, preset `{preset}`",
        "",
        f"Data sets {', '.join(p.datasets)}. Date {datetime.date.today()}; {hardware()}, "
        f"jax {jax.__version__}; seeds {list(p.seeds)} (model init "
        f"and batch order; split seed 0 fixed); {p.epochs} epochs per training, a checkpoint each "
        f"epoch; {minutes:.1f} min in this invocation, {_row_minutes(rows):.1f} min of "
        "training summed over all rows (a resumed study reuses finished rows). Command: "
        f"`python -m experiments.gnn_irst.study {' '.join(sys.argv[1:])}`.",
        "",
    ]
    for ds in p.datasets:
        table, paired = summarise(rows, ds, p.seeds)
        classic = ", ".join(
            f"{k.removesuffix('_auroc')} {v:.4f}"
            for k, v in rows.get(f"{ds}/baselines", {}).items()
        )
        lines += [
            f"## {ds}",
            "",
            f"Single-quantity test AUROC for reference: {classic or 'none'}.",
            "",
            "Test metrics, mean ± std over seeds (std only with two or more seeds). "
            "`si_top_q`: remove the fraction q of highest TracIn self-influence; "
            "`si_bottom_q`: the lowest; `loss_top_q`: highest final-checkpoint loss; "
            "`random_q`: a random subset of the same size; "
            "`si_robust_c`: remove above median + c IQR.",
            "",
            "| rule | kept events | AUROC | F1 | accuracy | precision | recall | train s | steps |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in table:
            cells = " | ".join(
                f"{e[m][0]:.4f} ± {e[m][1]:.4f}" if e["n_seeds"] > 1 else f"{e[m][0]:.4f}"
                for m in METRICS
            )
            lines.append(
                f"| {e['rule']} | {e['n_train']} | {cells} | {e['train_seconds']:.1f} "
                f"| {e['optimizer_steps']} |"
            )
        if paired:
            lines += [
                "",
                "Paired comparison with the random subset of the same size (test "
                "AUROC difference per seed; p: exact two-sided sign-flip test):",
                "",
                "| rule | vs | seeds | mean diff | std | rule better | p |",
                "|---|---|---|---|---|---|---|",
                *paired,
            ]
        png = removal_curve(rows, ds, p, out)
        if png:
            lines += ["", f"![test AUROC against fraction removed]({png.name})"]
        det = [k for k in rows if k.startswith(f"{ds}/mislabel_seed") and k.endswith("detection")]
        if det:
            lines += [
                "",
                f"### Mislabel detection ({p.flip_fraction:.0%} of training labels flipped)",
                "",
                "| score | seed | found in top 5 % | top 10 % | top 20 % | detector AUROC |",
                "|---|---|---|---|---|---|",
            ]
            for k in sorted(det):
                seed = k.split("/")[1].removeprefix("mislabel_seed")
                for name, r in rows[k].items():
                    lines.append(
                        f"| {name} | {seed} | {r['found_in_top_5pct']:.3f} | "
                        f"{r['found_in_top_10pct']:.3f} | {r['found_in_top_20pct']:.3f} "
                        f"| {r['detector_auroc']:.3f} |"
                    )
            lines += [
                "",
                "| retraining on noisy labels | seed | kept | flipped removed | test AUROC | F1 |",
                "|---|---|---|---|---|---|",
            ]
            for k in sorted(
                x
                for x in rows
                if x.startswith(f"{ds}/mislabel_seed") and not x.endswith("detection")
            ):
                r = rows[k]
                lines.append(
                    f"| {k.split('/')[-1]} | {k.split('/')[1][13:]} | {r['n_train']} | "
                    f"{r.get('flipped_removed', 0)} | {r['test']['auroc']:.4f} | "
                    f"{r['test']['f1']:.4f} |"
                )
        for png in physics_plots(out, ds, p, physics[ds]):
            lines += ["", f"![{png.stem}]({png.name})"]
        lines.append("")
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    ap.add_argument("--out", default=None, help="output directory (default runs/gnn_irst_PRESET)")
    ap.add_argument(
        "--datasets",
        default=None,
        help="comma-separated subset of the preset's data sets (default: all)",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a training config (TOML, any data source: your Parquet events with dataset = "
        "\"parquet\") studied in place of the preset's data sets, with the preset's rules",
    )
    ap.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's)")
    ap.add_argument(
        "--scores",
        default=None,
        help="comma-separated self-influence methods the removal rules rank by, besides "
        "TracIn: adam, ekfac (default: the preset's)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out or f"runs/gnn_irst_{args.preset}")
    datasets = tuple(args.datasets.split(",")) if args.datasets else None
    seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else None
    scores = tuple(args.scores.split(",")) if args.scores else None
    report = run_study(args.preset, out, datasets, config=args.config, seeds=seeds, scores=scores)
    print(f"report: {report.resolve()}")
    return report


if __name__ == "__main__":
    main()
