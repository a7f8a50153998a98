"""Command line (``hepattr``, also ``python -m hepattr_jax``).

commands:
  train CONFIG        train a GNN from a TOML config into a run directory (resumable)
  influence self      TracIn self-influence of every event of a split (resumable store)
  influence matrix    the N_train x N_test TracIn influence matrix
  influence topk      top-k TracIn proponents and opponents of each test event
  influence trak      TRAK scores and self-influence, ensembled over runs
  explain RUN_DIR     feature importance, Shapley values, coverage, activation patterns
  generate NAME       jets from Pythia 8 + FastJet (optional extra hepattr-jax[generate])

Run ``hepattr COMMAND --help`` for the options of each. Errors in the input (config, data,
checkpoints, stores) are reported as one line naming the file, event or setting, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hepattr_jax.errors import HepattrError


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


def _cmd_generate(args) -> int:
    from hepattr_jax.data.generate import main_generate

    return main_generate(args)


TRAIN_DESCRIPTION = """\
Trains a GNN on the events the config names, into RUN_DIR:
  config.json, normalization.json, checkpoints/ (one per checkpoint_every epochs, all kept,
  each with the learning rate used), history.json, metrics.json (test metrics of the best
  epoch, the list of checkpoints), predictions_test.npz, loss_curve.png, roc.png.
Rerunning the same command resumes from the latest checkpoint (same result as an
uninterrupted run); a RUN_DIR holding another config or other data is refused before anything
is written. A diverged epoch (non-finite loss) stops training; metrics.json names it.
"""


def build_parser() -> argparse.ArgumentParser:
    from hepattr_jax.config import settings_help

    p = argparse.ArgumentParser(
        prog="hepattr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    t = sub.add_parser(
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
    g = sub.add_parser("generate", help="generate jets with Pythia 8 + FastJet (extra: generate)")
    g.add_argument("process", help="top_qcd or qg")
    g.add_argument("--n", type=int, required=True, help="jets in total (half signal)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=1, help="worker processes (shards in parallel)")
    g.add_argument("--out", required=True, help="output directory (resumable)")
    g.add_argument("--shard-size", type=int, default=1000, help="jets per Parquet shard")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)
    from hepattr_jax import influence_cli

    influence_cli.add_parser(sub)
    from hepattr_jax import explain_cli

    explain_cli.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # force: importing orbax has already put absl's handler on the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save at INFO
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HepattrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
