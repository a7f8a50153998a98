"""``hepattr generate NAME``: jets from Pythia 8 + FastJet (optional extra ``[generate]``).

Writes Parquet shards and ``generation.json`` into ``--out``; rerunning the same command
finishes an interrupted generation (see :mod:`hepattr_jax.data.generate`).
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    """Adds ``generate``."""
    g = subparsers.add_parser(
        "generate", help="generate jets with Pythia 8 + FastJet (extra: generate)"
    )
    g.add_argument("process", help="top_qcd or qg")
    g.add_argument("--n", type=int, required=True, help="jets in total (half signal)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=1, help="worker processes (shards in parallel)")
    g.add_argument("--out", required=True, help="output directory (resumable)")
    g.add_argument("--shard-size", type=int, default=1000, help="jets per Parquet shard")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=_cmd_generate)


def _cmd_generate(args) -> int:
    from hepattr_jax.data.generate import META_NAME, generate

    meta = generate(
        args.process,
        args.n,
        args.out,
        seed=args.seed,
        workers=args.workers,
        shard_size=args.shard_size,
        progress=not args.quiet,
    )
    print(f"metadata: {Path(args.out) / META_NAME} ({len(meta['shards'])} shards)")
    return 0
