"""``hepattr train CONFIG``: train a GNN from a TOML config into a run directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TRAIN_DESCRIPTION = """\
Trains a GNN on the events the config names, into RUN_DIR:
  config.json, normalization.json, checkpoints/ (one per checkpoint_every epochs, all kept,
  each with the learning rate used), history.json, metrics.json (test metrics of the best
  epoch, the list of checkpoints), predictions_test.npz, loss_curve.png, roc.png.
Rerunning the same command resumes from the latest checkpoint (same result as an
uninterrupted run); a RUN_DIR holding another config or other data is refused before anything
is written. A diverged epoch (non-finite loss) stops training; metrics.json names it.
"""


def add_parser(subparsers) -> None:
    """Adds ``train``."""
    from hepattr_jax.config import settings_help

    t = subparsers.add_parser(
        "train",
        help="train a GNN from a TOML config into a run directory",
        description=TRAIN_DESCRIPTION,
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="TOML file of TrainConfig settings")
    t.add_argument("--run-dir", help="output directory (default runs/CONFIG_STEM)")
    t.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set epochs=3 or --set edges=knn:8 (VALUE is read as "
        "JSON if it parses, else taken as a plain string); repeatable",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from hepattr_jax.config import (
        TrainConfig,
        absolute_data_path,
        load_config,
        parse_override,
    )
    from hepattr_jax.train import train

    config = load_config(args.config)
    overrides = dict(parse_override(item) for item in args.set or [])
    if isinstance(overrides.get("dataset_kwargs"), dict):  # a path on the command line: cwd
        overrides["dataset_kwargs"] = absolute_data_path(overrides["dataset_kwargs"], Path.cwd())
    if overrides:
        config = TrainConfig.from_dict(
            {**config.to_dict(), **overrides}, source=f"{args.config} with --set"
        )
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    result = train(config, run_dir, progress=not args.quiet)
    t = result["test"]
    if result.get("diverged_epoch") is not None:
        print(
            f"warning: training diverged in epoch {result['diverged_epoch'] + 1} (non-finite "
            "loss) and stopped there; the metrics below are those of the best epoch saved "
            "before it. Consider a lower lr.",
            file=sys.stderr,
        )
    print(
        f"test AUROC {t['auroc']:.4f}  accuracy {t['accuracy']:.4f}  F1 {t['f1']:.4f}  "
        f"(best epoch {result['best_epoch'] + 1}, {len(result['checkpoint_steps'])} checkpoints)"
    )
    print(f"run directory: {run_dir.resolve()}")
    return 0
