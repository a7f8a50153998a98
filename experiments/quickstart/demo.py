"""Train EdgeConv on the real quark/gluon jets, with and without jet-level inputs, and compare
with the classic charged-multiplicity discriminant on the same test events.

Command: ``.venv/bin/python -m experiments.quickstart.demo [--out runs/quickstart] [--epochs N]``
Writes ``OUT/report.md`` (tables and plots) and prints its path. Seeds: model seed 0, split seed 0.
Expected on a 2-core CPU: a few minutes.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import jax
import numpy as np

from hepattr_jax import metrics
from hepattr_jax.config import load_config
from hepattr_jax.data.events import split_by_id
from hepattr_jax.data.registry import load_dataset
from hepattr_jax.plotting import roc_curves
from hepattr_jax.train import train

HERE = Path(__file__).parent


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/quickstart")
    ap.add_argument("--epochs", type=int, default=None, help="override the configs' epochs")
    ap.add_argument("--max-jets", type=int, default=None, help="use only the first N jets")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    kwargs = {} if args.max_jets is None else {"max_jets": args.max_jets}
    events = load_dataset("qg_jets", **kwargs)
    rows, curves = [], {}
    for name in ("qg_edgeconv", "qg_edgeconv_globals"):
        config = load_config(HERE / f"{name}.toml")
        config = config.replace(dataset_kwargs=kwargs)
        if args.epochs is not None:
            config = config.replace(epochs=args.epochs)
        print(
            f"== training {name} ({'with' if config.use_globals else 'without'} jet-level inputs)"
        )
        r = train(config, out / name, events=events)
        rows.append((name, r))
        pred = np.load(out / name / "predictions_test.npz")
        fpr, tpr, _ = metrics.roc_curve(pred["labels"], pred["logits"])
        curves[f"EdgeConv{' + jet inputs' if config.use_globals else ''}"] = (
            fpr,
            tpr,
            r["test"]["auroc"],
        )

    # The classic baseline on exactly the same test events (split by id, same split seed).
    test = split_by_id(events, config.split, seed=config.split_seed)["test"]
    mult = test.physics["chg_mult"]
    mult_auc = metrics.auroc(test.labels, mult)
    fpr, tpr, _ = metrics.roc_curve(test.labels, mult)
    curves["charged multiplicity"] = (fpr, tpr, mult_auc)
    roc_curves(curves, out / "roc_comparison.png", title="quark/gluon jets, test set")
    minutes = (time.perf_counter() - t0) / 60

    lines = [
        "# hepattr-jax demo: quark/gluon jets",
        "",
        f"Date {datetime.date.today()}, {platform.machine()} {jax.devices()[0].platform}, "
        f"jax {jax.__version__}; {len(events)} jets from uproot-issue96.root "
        f"(label 1 = gluon); {len(test)} test jets; {minutes:.1f} min in all.",
        "",
        "| model | params | best epoch | test AUROC | accuracy | precision | recall | F1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        t = r["test"]
        lines.append(
            f"| {name} | {r['n_params']} | {r['best_epoch'] + 1} | {t['auroc']:.4f} | "
            f"{t['accuracy']:.4f} | {t['precision']:.4f} | {t['recall']:.4f} | {t['f1']:.4f} |"
        )
    lines += [
        f"| charged multiplicity alone | 0 | - | {mult_auc:.4f} | - | - | - | - |",
        "",
        "The track graphs hold only each jet's 6 leading tracks; the full charged multiplicity",
        "enters the second model as a jet-level input.",
        "",
        "![ROC](roc_comparison.png)",
        "",
        *[f"![{name} loss]({name}/loss_curve.png)" for name, _ in rows],
        "",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    print("\n".join(lines[4 : 4 + len(rows) + 3]))
    print(f"\nreport: {report.resolve()}")
    return report


if __name__ == "__main__":
    main()
