"""Command line (``hepattr``, also ``python -m hepattr_jax``).

commands:
  train CONFIG        train a GNN from a TOML config into a run directory (resumable)
  influence self      TracIn self-influence of every event of a split (resumable store)
  influence matrix    the N_train x N_test TracIn influence matrix
  influence topk      top-k TracIn proponents and opponents of each test event
  influence trak      TRAK scores and self-influence, ensembled over runs
  influence merge     the result of a store scored by several processes (--processes)
  explain RUN_DIR     feature importance, Shapley values, coverage, activation patterns
  generate NAME       jets or events from Pythia 8 + FastJet (optional extra hepattr-jax[generate])

Run ``hepattr COMMAND --help`` for the options of each. Errors in the input (config, data,
checkpoints, stores) are reported as one line naming the file, event or setting, exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hepattr_jax.errors import HepattrError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hepattr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from hepattr_jax.cli import explain, generate, influence, train

    train.add_parser(sub)
    influence.add_parser(sub)
    explain.add_parser(sub)
    generate.add_parser(sub)
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
