"""``hepattr influence {self,layer-stats,ekfac-fit,matrix,topk,trak} RUN_DIR``: attribution
scores of finished runs.

``self``, ``matrix`` and ``topk`` take ``--method``: ``tracin`` (TracIn with the SGD step's
weighting, the default), ``adam`` (Adam-aware TracIn: each checkpoint's Adam preconditioner
between the gradients), ``cosine`` (gradient cosine) or ``ekfac`` (EK-FAC influence functions at
the last checkpoint; ``--damping``). Stores of a method other than TracIn get its name as a
suffix (``self_influence_train_adam``).

* ``self``: self-influence of every event of a split (default train), chunk by chunk into a
  resumable score store: a killed run, started again with the same arguments, computes only the
  chunks not yet on disk. Writes ``scores.npy`` ``[N]``, ``scores_per_checkpoint.npy`` ``[K, N]``
  and ``event_ids.npy``.
* ``ekfac-fit``: EK-FAC factors at the last checkpoint (layer statistics, eigenbases, the
  eigenvalue correction; two resumable passes) in ``RUN_DIR/influence/ekfac_factors``, what
  ``--method ekfac`` scores with (fitted there on first use otherwise).
* ``layer-stats``: every dense layer's Kronecker-factor statistics (input and output-gradient
  second moments, weighted per graph; :mod:`hepattr_jax.kfac`) at each checkpoint in one pass, as
  ``layer_statistics.npz``; resumable (each chunk's sum is stored).
* ``matrix``: the ``[N_train, N_test]`` influence matrix as ``influence.npy`` with
  ``event_ids.npy`` (rows, train) and ``test_event_ids.npy`` (columns); resumable (one store
  chunk per test block and train chunk).
* ``topk``: the ``k`` strongest proponents and opponents of every test event, as train event ids
  and scores in ``topk.npz``, and ``topk_summary.md`` for the first few test events; resumable
  (each test block and train chunk's own top-k is stored, then merged).

* ``trak``: TRAK (:mod:`hepattr_jax.trak`) ensembled over one or more runs of the same data:
  ``scores.npy`` ``[N_train, N_test]``, ``self_influence.npy``, ids; each run's projected
  features in resumable stores under ``features/``.

* ``merge``: the result of a store whose shares were scored by several processes
  (``--processes``), from its ``shards/`` (checked: the same inputs, every chunk exactly once).

Several processes (hosts, or one host's process per accelerator) share one result with
``--processes N --process-id I``: process ``I`` scores the chunks ``I, I + N, ...`` into
``OUT/shards/process_I_of_N`` and the one that completes the last share merges them into ``OUT``
(:mod:`hepattr_jax.shards`). ``--coordinator HOST:PORT`` (or ``--distributed`` under SLURM or Open
MPI) starts ``jax.distributed`` first. A process with several local devices splits each chunk
over them (``--chunk-size`` a multiple of their number). See docs/multihost.md.

Results go to ``RUN_DIR/influence/<kind>_<split>`` unless ``--out`` says otherwise; every output
directory is a :mod:`hepattr_jax.store` (``meta.json`` records the checkpoints, data and settings,
and a directory made from other inputs is refused). A store made under another JAX backend,
device kind or jax/jaxlib version is refused too, unless ``--allow-environment-change`` (the mix
is then recorded in its ``meta.json`` as ``environment_changes``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hepattr_jax.store import SPLITS

N_SHOWN = 5


def add_parser(subparsers) -> None:
    """Adds ``influence`` with its ``self``, ``layer-stats``, ``matrix``, ``topk``, ``trak`` and
    ``merge`` subcommands."""
    p = subparsers.add_parser(
        "influence",
        help="influence scores of a training run: TracIn (self, matrix, topk) and TRAK (trak)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="influence_command", required=True, metavar="KIND")

    def common(q, default_chunk=64):
        q.add_argument("run_dir", type=Path, help="run directory written by `hepattr train`")
        q.add_argument(
            "--chunk-size",
            type=int,
            default=default_chunk,
            help=f"events per kernel call (default {default_chunk})",
        )
        q.add_argument(
            "--out", type=Path, help="output directory (default under RUN_DIR/influence)"
        )
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        allow_missing(q)
        _env_flag(q)
        _process_flags(q)

    def method_flags(q):
        q.add_argument(
            "--method",
            choices=("tracin", "adam", "cosine", "ekfac"),
            default="tracin",
            help="tracin: TracIn, SGD-step weighting (default); adam: Adam-aware TracIn, "
            "eta_k <g', P_k g> with each checkpoint's Adam preconditioner; cosine: gradient "
            "cosine; ekfac: EK-FAC influence functions at the last checkpoint (factors fitted "
            "once per run in RUN_DIR/influence/ekfac_factors)",
        )
        q.add_argument(
            "--damping",
            type=float,
            default=0.1,
            help="EK-FAC damping, a fraction of each block's mean eigenvalue (default 0.1)",
        )

    s = sub.add_parser("self", help="self-influence of every event of a split (resumable)")
    common(s)
    method_flags(s)
    s.add_argument("--split", choices=SPLITS, default="train", help="events to score")
    s.set_defaults(func=_cmd_self)

    ls = sub.add_parser(
        "layer-stats",
        help="per-layer Kronecker-factor statistics (K-FAC/EK-FAC) of a split, one pass "
        "(resumable)",
        description="For every dense layer, the input and output-gradient second moments at each "
        "checkpoint, weighted per graph (expand and reduce; docs/per_layer.md), written to "
        "OUT/layer_statistics.npz.",
    )
    common(ls)
    ls.add_argument("--split", choices=SPLITS, default="train", help="events averaged")
    ls.add_argument(
        "--fisher",
        choices=("true", "empirical"),
        default="true",
        help="per-event weight: the true Fisher of the cross-entropy sigma(z) sigma(-z) "
        "(default) or the empirical (sigma(z) - y)^2",
    )
    ls.set_defaults(func=_cmd_layer_stats)

    ef = sub.add_parser(
        "ekfac-fit",
        help="EK-FAC factors of the training events at the last checkpoint (resumable)",
        description="Layer statistics, their eigenbases and the eigenvalue correction, written "
        "to OUT/ekfac_factors.npz (default RUN_DIR/influence/ekfac_factors), what --method "
        "ekfac scores with.",
    )
    common(ef)
    ef.add_argument(
        "--factors",
        choices=("expand", "reduce"),
        default="expand",
        help="Kronecker factors' weighting of a graph's rows (default expand: the better "
        "eigenbasis measured on the quark/gluon jets, docs/attribution_methods.md)",
    )
    ef.add_argument("--fisher", choices=("true", "empirical"), default="true")
    ef.set_defaults(func=_cmd_ekfac_fit)

    for name, fn, what in (
        ("matrix", _cmd_matrix, "the N_train x N_test influence matrix"),
        ("topk", _cmd_topk, "top-k proponents and opponents of each test event"),
    ):
        q = sub.add_parser(name, help=what)
        common(q)
        method_flags(q)
        q.add_argument(
            "--test-split", choices=SPLITS, default="test", help="events influenced (columns)"
        )
        q.add_argument(
            "--test-block",
            type=int,
            help="test events whose gradients are held at once (default: what fits in 1.5 GB)",
        )
        if name == "topk":
            q.add_argument(
                "-k", type=int, default=10, help="proponents/opponents kept (default 10)"
            )
        q.set_defaults(func=fn)

    t = sub.add_parser(
        "trak",
        help="TRAK scores (train x test) and TRAK self-influence, ensembled over runs",
    )
    t.add_argument(
        "run_dir", type=Path, nargs="+", help="run directories (ensemble members, same data)"
    )
    t.add_argument("--proj-dim", type=int, default=512, help="projection dimension d (512)")
    t.add_argument("--proj-seed", type=int, default=0, help="projection key (0)")
    t.add_argument(
        "--projection",
        choices=("rademacher", "gaussian", "kronecker"),
        default="rademacher",
        help="R: dense with +-1 or normal entries, or per-layer Kronecker factors (+-1) applied "
        "to captured layer inputs and output gradients (faster; hepattr_jax.projection)",
    )
    t.add_argument(
        "--checkpoints",
        choices=("last", "all"),
        default="last",
        help="checkpoints of each run used as members (default last)",
    )
    t.add_argument(
        "--damping", type=float, default=1e-3, help="lambda as a fraction of the mean eigenvalue"
    )
    t.add_argument("--test-split", choices=SPLITS, default="test", help="events influenced")
    t.add_argument("--chunk-size", type=int, default=64, help="events per kernel call (64)")
    t.add_argument("--out", type=Path, help="output directory (default RUN_DIR[0]/influence/trak)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    allow_missing(t)
    _env_flag(t)
    _process_flags(t)
    t.set_defaults(func=_cmd_trak)

    m = sub.add_parser(
        "merge",
        help="the result of a store scored by several processes, from its shards",
        description="Checks the shards of STORE (the same inputs and chunking, every chunk held "
        "by exactly one finished share; a missing, unfinished or foreign shard is named) and "
        "assembles the ordinary result in STORE, as one process would have written it. For TRAK, "
        "rerun `hepattr influence trak` without --processes instead: it takes the finished "
        "shares of its feature stores.",
    )
    m.add_argument("store", type=Path, help="the output directory the processes shared (--out)")
    m.add_argument(
        "--shards",
        type=Path,
        nargs="+",
        help="shard directories (default: every one under STORE/shards; give them when they were "
        "written on hosts without a shared file system and copied elsewhere)",
    )
    m.add_argument(
        "--run-dir", type=Path, help="the run directory, if it moved since the shards were made"
    )
    m.add_argument("--quiet", action="store_true", help="no progress bars")
    allow_missing(m)
    _env_flag(m)
    m.set_defaults(func=_cmd_merge)


def allow_missing(q) -> None:
    """``--allow-missing-checkpoints``: see :func:`hepattr_jax.runs.check_checkpoint_record`."""
    q.add_argument(
        "--allow-missing-checkpoints",
        action="store_true",
        help="use the checkpoints on disk even if the run's metrics.json lists others or the "
        "run has not finished (default: refuse; the scores would not be the run's TracIn)",
    )


def _env_flag(q) -> None:
    q.add_argument(
        "--allow-environment-change",
        action="store_true",
        help="resume a store made under another JAX backend, device kind or jax/jaxlib version "
        "(refused by default; the mix is recorded in its meta.json)",
    )


def _process_flags(q) -> None:
    g = q.add_argument_group(
        "several processes", "share the chunks of one result between processes (docs/multihost.md)"
    )
    g.add_argument(
        "--processes", type=int, metavar="N", help="processes sharing the work (default 1)"
    )
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1")
    g.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="start jax.distributed with process 0's address (the same for every process); "
        "without it the shares run as independent processes",
    )
    g.add_argument(
        "--distributed",
        action="store_true",
        help="start jax.distributed from the cluster's own variables (SLURM, Open MPI): process "
        "count and index come from them",
    )


def _start_processes(args):
    """Starts ``jax.distributed`` when asked (before any other JAX call) and returns this
    process's :class:`~hepattr_jax.shards.Shard`, or None for a single process; and the mesh
    over its local devices, or None for one device."""
    import jax

    from hepattr_jax.errors import ConfigError
    from hepattr_jax.sharding import event_mesh
    from hepattr_jax.shards import Shard

    n, i = getattr(args, "processes", None), getattr(args, "process_id", None)
    coordinator = getattr(args, "coordinator", None)
    if coordinator is not None and (n is None or i is None):
        raise ConfigError("--coordinator needs --processes and --process-id")
    if (n is None) != (i is None):
        raise ConfigError("--processes and --process-id go together")
    if n is not None and i is not None and (n < 1 or not 0 <= i < n):
        raise ConfigError(f"--process-id {i} is outside [0, --processes {n})")
    if coordinator is not None or getattr(args, "distributed", False):
        try:
            jax.distributed.initialize(
                coordinator_address=coordinator, num_processes=n, process_id=i
            )
        except Exception as e:  # no cluster detected, unreachable coordinator, ...
            where = coordinator or "the cluster's variables (--distributed)"
            raise ConfigError(
                f"jax.distributed could not start from {where}: {type(e).__name__}: {e}"
            ) from None
        n, i = jax.process_count(), jax.process_index()
    shard = Shard(int(i), int(n)) if n is not None and i is not None and n > 1 else None
    mesh = event_mesh() if jax.local_device_count() > 1 else None
    return shard, mesh


def _scoring(args, shard, mesh) -> dict:
    """The keyword arguments every ``scored_*`` call of a command shares."""
    return dict(
        chunk_size=args.chunk_size,
        progress=not args.quiet,
        allow_environment_change=args.allow_environment_change,
        mesh=mesh,
        shard=shard,
    )


def _method(args) -> dict:
    """The method keywords of a TracIn-family command (self, matrix, topk)."""
    return dict(
        method=args.method,
        damping=args.damping,
        ekfac_dir=args.run_dir / "influence" / "ekfac_factors",
    )


def _suffix(args) -> str:
    return "" if args.method == "tracin" else f"_{args.method}"


def _cmd_ekfac_fit(args) -> int:
    import dataclasses

    from hepattr_jax.ekfac import ekfac_checkpoints
    from hepattr_jax.scoring import scored_ekfac_factors

    shard, mesh = _start_processes(args)
    if shard is not None:
        from hepattr_jax.errors import ConfigError

        raise ConfigError("ekfac-fit runs in one process (its passes are chunk totals)")
    run = _load(args)
    ck = run.checkpoints
    last = dataclasses.replace(run, checkpoints=ekfac_checkpoints(ck.select([len(ck) - 1])))
    out = args.out or args.run_dir / "influence" / "ekfac_factors"
    fac = scored_ekfac_factors(
        last,
        out,
        factors=args.factors,
        fisher=args.fisher,
        chunk_size=args.chunk_size,
        progress=not args.quiet,
        allow_environment_change=args.allow_environment_change,
        mesh=mesh,
    )
    print(
        f"EK-FAC factors ({fac.factors}, {fac.fisher} Fisher) of {fac.n_events} training events "
        f"at step {last.checkpoints.steps[-1]} -> {Path(out).resolve()}"
    )
    print(f"  {'layer':<40} {'m':>5} {'p':>5} {'mean eigenvalue':>16}")
    for kernel, ev in zip(fac.kernels, fac.eigenvalues, strict=True):
        print(f"  {kernel:<40} {ev.shape[1]:>5d} {ev.shape[2]:>5d} {ev.mean():>16.4g}")
    return 0


def _share_done(e) -> int:
    print(str(e))
    return 0


def _positive(args, *names) -> None:
    from hepattr_jax.errors import ConfigError

    for name in names:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {v}")


def _load(args):
    from hepattr_jax.runs import load_run

    _positive(args, "chunk_size", "test_block", "k")
    return load_run(args.run_dir, allow_missing_checkpoints=args.allow_missing_checkpoints)


def _cmd_self(args) -> int:
    from hepattr_jax.scoring import scored_self_influence
    from hepattr_jax.shards import ShareComplete

    shard, mesh = _start_processes(args)
    run = _load(args)
    out = args.out or args.run_dir / "influence" / f"self_influence_{args.split}{_suffix(args)}"
    try:
        ids, total, per_k = scored_self_influence(
            run,
            out,
            split=args.split,
            **_scoring(args, shard, mesh),
            **_method(args),
        )
    except ShareComplete as e:
        return _share_done(e)
    labels = getattr(run.data, args.split).events.labels
    print(
        f"self-influence of {len(ids)} {args.split} events over {per_k.shape[0]} checkpoints "
        f"-> {Path(out).resolve()}"
    )
    print(f"highest {min(N_SHOWN, len(ids))}:")
    print(f"  {'event id':>10}  {'label':>5}  {'self-influence':>14}")
    for i in np.argsort(-total, kind="stable")[:N_SHOWN]:
        print(f"  {ids[i]:>10d}  {labels[i]:>5d}  {total[i]:>14.6g}")
    return 0


def _cmd_layer_stats(args) -> int:
    from hepattr_jax.scoring import scored_layer_statistics
    from hepattr_jax.shards import ShareComplete

    shard, mesh = _start_processes(args)
    run = _load(args)
    out = args.out or args.run_dir / "influence" / f"layer_statistics_{args.split}"
    try:
        st = scored_layer_statistics(
            run, out, split=args.split, fisher=args.fisher, **_scoring(args, shard, mesh)
        )
    except ShareComplete as e:
        return _share_done(e)
    print(
        f"layer statistics of {st.n_events} {args.split} events over {len(st.mean_weight)} "
        f"checkpoints ({args.fisher} Fisher) -> {Path(out).resolve()}"
    )
    print(f"  {'layer':<40} {'m':>5} {'p':>5} {'rows/event':>10}")
    for i, kernel in enumerate(st.kernels):
        m, p = st.a_expand[i].shape[-1], st.s_expand[i].shape[-1]
        print(f"  {kernel:<40} {m:>5d} {p:>5d} {st.rows[-1, i]:>10.2f}")
    return 0


def _cmd_matrix(args) -> int:
    from hepattr_jax.scoring import scored_influence_matrix
    from hepattr_jax.shards import ShareComplete

    shard, mesh = _start_processes(args)
    run = _load(args)
    out = args.out or args.run_dir / "influence" / f"matrix_{args.test_split}{_suffix(args)}"
    try:
        ids, test_ids, m = scored_influence_matrix(
            run,
            out,
            test_split=args.test_split,
            test_block=args.test_block,
            **_scoring(args, shard, mesh),
            **_method(args),
        )
    except ShareComplete as e:
        return _share_done(e)
    print(
        f"influence of {len(ids)} train events on {len(test_ids)} {args.test_split} events "
        f"-> {Path(out).resolve() / 'influence.npy'}"
    )
    print(f"  range [{m.min():.6g}, {m.max():.6g}], mean |I| {np.abs(m).mean():.6g}")
    return 0


def topk_summary(arrays: dict, train_labels: dict, test_labels: dict, n: int, show: int = 3) -> str:
    """Markdown table of the strongest ``show`` proponents/opponents of the first ``n`` test
    events; each cell is ``id (label) score``."""
    lines = [
        "| test event (label) | proponents: id (label) score | opponents: id (label) score |",
        "|---|---|---|",
    ]

    def cell(ids, scores):
        return "<br>".join(
            f"{i} ({train_labels[int(i)]}) {s:.4g}"
            for i, s in zip(ids[:show], scores[:show], strict=True)
        )

    for r in range(min(n, len(arrays["test_event_ids"]))):
        t = int(arrays["test_event_ids"][r])
        lines.append(
            f"| {t} ({test_labels[t]}) "
            f"| {cell(arrays['proponent_ids'][r], arrays['proponent_scores'][r])} "
            f"| {cell(arrays['opponent_ids'][r], arrays['opponent_scores'][r])} |"
        )
    return "\n".join(lines) + "\n"


def _cmd_topk(args) -> int:
    from hepattr_jax.io_utils import atomic_write_text
    from hepattr_jax.scoring import scored_top_k
    from hepattr_jax.shards import ShareComplete

    shard, mesh = _start_processes(args)
    run = _load(args)
    default = args.run_dir / "influence" / f"top{args.k}_{args.test_split}{_suffix(args)}"
    out = Path(args.out or default)
    try:
        arrays = scored_top_k(
            run,
            out,
            args.k,
            test_split=args.test_split,
            test_block=args.test_block,
            **_scoring(args, shard, mesh),
            **_method(args),
        )
    except ShareComplete as e:
        return _share_done(e)
    ev_tr, ev_te = run.data.train.events, getattr(run.data, args.test_split).events
    summary = topk_summary(
        arrays,
        dict(zip(ev_tr.ids.tolist(), ev_tr.labels.tolist(), strict=True)),
        dict(zip(ev_te.ids.tolist(), ev_te.labels.tolist(), strict=True)),
        N_SHOWN,
    )
    atomic_write_text(out / "topk_summary.md", summary)
    k = arrays["proponent_ids"].shape[1]
    print(
        f"top-{k} proponents/opponents of {len(arrays['test_event_ids'])} {args.test_split} "
        f"events -> {out.resolve() / 'topk.npz'}"
    )
    print(summary, end="")
    return 0


def _cmd_trak(args) -> int:
    from hepattr_jax.errors import ConfigError
    from hepattr_jax.projection import KroneckerProjector, Projector
    from hepattr_jax.runs import load_run
    from hepattr_jax.scoring import scored_trak
    from hepattr_jax.shards import ShareComplete

    _positive(args, "chunk_size", "proj_dim")
    if not args.damping > 0:
        raise ConfigError(f"--damping must be > 0, got {args.damping}")
    shard, mesh = _start_processes(args)
    allow = args.allow_missing_checkpoints
    first = load_run(args.run_dir[0], allow_missing_checkpoints=allow)
    runs = [first] + [
        load_run(r, data=first.data, allow_missing_checkpoints=allow) for r in args.run_dir[1:]
    ]
    proj: KroneckerProjector | Projector
    if args.projection == "kronecker":
        proj = KroneckerProjector(args.proj_dim, seed=args.proj_seed)
    else:
        proj = Projector(args.proj_dim, kind=args.projection, seed=args.proj_seed)
    out = Path(args.out or args.run_dir[0] / "influence" / f"trak_{args.test_split}")
    try:
        arrays = scored_trak(
            runs,
            out,
            proj,
            test_split=args.test_split,
            checkpoints=args.checkpoints,
            damping=args.damping,
            **_scoring(args, shard, mesh),
        )
    except ShareComplete as e:
        return _share_done(e)
    s, si = arrays["scores"], arrays["self_influence"]
    print(
        f"TRAK over {len(runs)} run(s) ({args.checkpoints} checkpoints), d = {args.proj_dim}: "
        f"{s.shape[0]} train x {s.shape[1]} {args.test_split} events -> "
        f"{out.resolve() / 'scores.npy'}"
    )
    ids = arrays["event_ids"]
    print(f"highest TRAK self-influence ({min(N_SHOWN, len(ids))}):")
    for i in np.argsort(-si, kind="stable")[:N_SHOWN]:
        print(f"  event {ids[i]:>10d}  {si[i]:.6g}")
    return 0


def _cmd_merge(args) -> int:
    from hepattr_jax import shards
    from hepattr_jax.errors import ConfigError
    from hepattr_jax.runs import load_run
    from hepattr_jax.scoring import (
        scored_influence_matrix,
        scored_layer_statistics,
        scored_self_influence,
        scored_top_k,
    )

    store = Path(args.store)
    checked = shards.check_shards(store, shard_dirs=args.shards)
    meta = checked.meta
    kind = meta["kind"]
    kinds = {
        "self_influence": "self",
        "influence_matrix": "matrix",
        "top_k": "topk",
        "layer_statistics": "layer-stats",
    }
    if kind not in kinds:
        raise ConfigError(
            f"{store}: shards of a {kind!r} store; merge those by rerunning their command "
            "without --processes (it takes every finished share and computes the rest)"
        )
    n = shards.copy_shard_chunks(
        store, checked, allow_environment_change=args.allow_environment_change
    )
    print(f"{store}: {n} chunk(s) taken from {len(set(checked.holder.values()))} shards")
    run = load_run(
        args.run_dir or meta["run_dir"], allow_missing_checkpoints=args.allow_missing_checkpoints
    )
    common = dict(
        chunk_size=int(meta["chunk_size"]),
        progress=not args.quiet,
        allow_environment_change=args.allow_environment_change,
    )
    if kind == "self_influence":
        scored_self_influence(run, store, split=meta["split"], **common)
    elif kind == "layer_statistics":
        scored_layer_statistics(run, store, split=meta["split"], fisher=meta["fisher"], **common)
    elif kind == "influence_matrix":
        scored_influence_matrix(
            run, store, test_split=meta["test_split"], test_block=int(meta["test_block"]), **common
        )
    else:
        scored_top_k(
            run,
            store,
            int(meta["k"]),
            test_split=meta["test_split"],
            test_block=int(meta["test_block"]),
            **common,
        )
    print(f"merged {kinds[kind]} result -> {store.resolve()}")
    return 0
