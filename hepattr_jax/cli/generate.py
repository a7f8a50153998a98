"""``hepattr generate NAME``: jets or events from Pythia 8 + FastJet (optional extra
``[generate]``).

Processes: ``top_qcd`` (top vs QCD jets) and ``qg`` (quark vs gluon jets), one record per jet;
``wh_ttbar`` (W H, H -> b b-bar, vs semileptonic t t-bar) and ``susy_2l`` (chargino pairs vs
W W, two leptons + MET), one record per event with leptons, jets and MET as nodes. Writes Parquet
shards and ``generation.json`` into ``--out``; rerunning the same command finishes an
interrupted generation (see :mod:`hepattr_jax.data.generate`).
"""

from __future__ import annotations

from pathlib import Path


def add_parser(subparsers) -> None:
    """Adds ``generate``."""
    g = subparsers.add_parser(
        "generate",
        help="generate jets or events with Pythia 8 + FastJet (extra: generate)",
        description="Generate a labelled data set (label 1 = signal) with Pythia 8 + FastJet. "
        "Jet level (one record per jet, constituents as nodes): top_qcd (hadronic top vs QCD "
        "jets), qg (quark vs gluon jets). Event level (one record per event; leptons, jets and "
        "MET as nodes): wh_ttbar (W H, H -> b b-bar, W -> l nu vs semileptonic t t-bar), "
        "susy_2l (chargino pairs -> W W + neutralinos vs W W, two leptons + MET). The settings "
        "are printed at start and recorded in OUT/generation.json.",
    )
    g.add_argument("process", help="top_qcd, qg, wh_ttbar or susy_2l")
    g.add_argument("--n", type=int, required=True, help="jets or events in total (half signal)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=1, help="worker processes (shards in parallel)")
    g.add_argument("--out", required=True, help="output directory (resumable)")
    g.add_argument("--shard-size", type=int, default=1000, help="jets or events per Parquet shard")
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
