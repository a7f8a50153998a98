"""``hepattr explain RUN_DIR``: explain a finished training run, with a report and figures.

Feature importance (permutation, mean masking), Shapley values of feature groups, information
coverage of the latent space, neural activation patterns and latent physics on the test split,
then the same diagnostics on the training events the GNN-IRST rule keeps and discards (top
fraction ``--q`` of TracIn self-influence; the self-influence store under
``RUN_DIR/influence/self_influence_train`` is reused or computed, resumably).

Writes ``report.md``, ``explain.json`` and PNG figures into ``RUN_DIR/explain`` (or ``--out``)
and prints the report's path. See :mod:`hepattr_jax.explain`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

#: The options' defaults: the parser's, and what ``_command`` leaves out of a recorded command.
_DEFAULTS = {
    "repeats": 5,
    "q": 0.1,
    "seed": 0,
    "shapley": "auto",
    "permutations": 16,
    "n_coverage": 2000,
    "timing_events": 0,
    "batch_size": 512,
}


def add_parser(subparsers) -> None:
    """Adds ``explain``."""
    p = subparsers.add_parser(
        "explain",
        help="explain a training run: importance, Shapley, coverage, activations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path, help="run directory written by `hepattr train`")
    p.add_argument("--out", type=Path, help="output directory (default RUN_DIR/explain)")
    p.add_argument("--n-events", type=int, help="test events used (default all; seeded sample)")
    p.add_argument("--repeats", type=int, help="permutation repeats (default %(default)s)")
    p.add_argument(
        "--q", type=float, help="fraction removed by the GNN-IRST rule (default %(default)s)"
    )
    p.add_argument("--seed", type=int, help="seed of every random choice")
    p.add_argument(
        "--groups",
        type=Path,
        help="JSON file {group: [feature names]}: the Shapley players (default one per feature)",
    )
    p.add_argument(
        "--shapley",
        choices=("auto", "exact", "permutation"),
        help="Shapley estimator (auto: exact up to 8 groups)",
    )
    p.add_argument(
        "--permutations",
        type=int,
        help="orderings for permutation-sampling Shapley (default %(default)s)",
    )
    p.add_argument(
        "--n-coverage",
        type=int,
        help="events used by the coverage estimates (default %(default)s)",
    )
    p.add_argument(
        "--timing-events",
        type=int,
        help="also time permutation importance and Shapley on this many (tiled) test events",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        help="events per padded prediction batch (default %(default)s; models that build a "
        "dynamic kNN, particlenet and dynedge, run about 3x faster per event at 128: the kNN is "
        "quadratic in a batch's nodes)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    from hepattr_jax.cli.influence import allow_missing

    allow_missing(p)
    p.set_defaults(func=_cmd_explain, **_DEFAULTS)


_OPTIONS = (
    "out",
    "n_events",
    "repeats",
    "q",
    "seed",
    "groups",
    "shapley",
    "permutations",
    "n_coverage",
    "timing_events",
    "batch_size",
)


def _command(args) -> str:
    """The command line that reproduces ``args`` (options at their defaults left out)."""
    parts = ["hepattr", "explain", str(args.run_dir)]
    for name in _OPTIONS:
        v = getattr(args, name)
        if v is not None and v != _DEFAULTS.get(name):
            parts += [f"--{name.replace('_', '-')}", str(v)]
    if getattr(args, "allow_missing_checkpoints", False):
        parts.append("--allow-missing-checkpoints")
    return " ".join(shlex.quote(p) for p in parts)


def _cmd_explain(args) -> int:
    from hepattr_jax.errors import ConfigError
    from hepattr_jax.explain.report import explain_run
    from hepattr_jax.runs import load_run

    for name in ("n_events", "repeats", "permutations", "n_coverage", "batch_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if not 0.0 < args.q < 1.0:
        raise ConfigError(f"--q must be in (0, 1), got {args.q}")
    if args.timing_events < 0:
        raise ConfigError(f"--timing-events must be >= 0, got {args.timing_events}")
    groups = None
    if args.groups is not None:
        try:
            groups = json.loads(args.groups.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--groups {args.groups}: cannot read a JSON object ({e})") from None
        if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
            raise ConfigError(f"--groups {args.groups}: expected {{group: [feature names]}}")
    run = load_run(args.run_dir, allow_missing_checkpoints=args.allow_missing_checkpoints)
    out = args.out or args.run_dir / "explain"
    result = explain_run(
        run,
        out,
        n_events=args.n_events,
        repeats=args.repeats,
        q=args.q,
        seed=args.seed,
        groups=groups,
        shapley_method=args.shapley,
        n_permutations=args.permutations,
        n_coverage=args.n_coverage,
        timing_events=args.timing_events,
        batch_size=args.batch_size,
        progress=not args.quiet,
        command=_command(args),
    )
    perm = result["permutation_importance"]["groups"]
    top = sorted(perm, key=lambda k: -perm[k]["delta_loss"])[:3]
    print(
        f"test AUROC {result['test']['auroc']:.4f}; most important (permutation): "
        + ", ".join(f"{n} (+{perm[n]['delta_loss']:.3f} loss)" for n in top)
    )
    print(f"report: {(Path(out) / 'report.md').resolve()}")
    return 0
