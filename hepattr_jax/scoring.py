"""Scoring a trained run: run + method + score store, composed.

Each ``scored_*`` function takes a run (:func:`hepattr_jax.runs.load_run`), picks the layout for
its model (:func:`hepattr_jax.per_example.layout_for`), describes the inputs in a store meta
(:func:`run_meta`: checkpoints, data, settings), and runs the method through the streaming
driver (:mod:`hepattr_jax.engine`) with the store's resume hooks. Storage itself (bytes, digests,
locks, checks on reopen) is :mod:`hepattr_jax.store`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import numpy as np

from hepattr_jax import shards
from hepattr_jax.environment import compute_environment, versions
from hepattr_jax.errors import StoreError
from hepattr_jax.shards import Shard
from hepattr_jax.store import SPLITS, ScoreStore, StoredResult, ids_digest, read_finished

if TYPE_CHECKING:
    from hepattr_jax.graphs import GraphSet
    from hepattr_jax.runs import Run

log = logging.getLogger(__name__)
T = TypeVar("T")


# --------------------------------------------------------------------- scoring a run
def split_of(run: Run, split: str) -> GraphSet:
    if split not in SPLITS:
        raise StoreError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    gs = getattr(run.data, split)
    if len(gs) == 0:
        raise StoreError(f"{run.run_dir}: split {split!r} is empty")
    return gs


def layout_name(layout) -> str:
    """A stable description of a per-example layout: class name and its plain settings."""
    import dataclasses

    fields = []
    if dataclasses.is_dataclass(layout):
        for f in dataclasses.fields(layout):
            v = getattr(layout, f.name)
            if isinstance(v, bool | int | float | str):
                fields.append(f"{f.name}={v!r}")
    return f"{type(layout).__name__}({', '.join(fields)})"


def run_meta(run: Run, kind: str, gs: GraphSet, *, split: str, chunk_size: int, layout) -> dict:
    """The store meta for scores of ``gs`` (the ``split`` of ``run``) under ``run``'s
    checkpoints: what identifies the inputs and the ``environment`` (backend, device kind,
    jax/jaxlib: compared on reopen), plus informational ``run_dir`` and versions."""
    ck = run.checkpoints
    return {
        "kind": kind,
        "run_dir": str(Path(run.run_dir).resolve()),
        "config_fingerprint": run.config.fingerprint(),
        "checkpoint_steps": [int(s) for s in ck.steps],
        "checkpoint_hashes": list(ck.hashes),
        "lrs": [float(x) for x in ck.lrs],
        "data_fingerprint": run.data.fingerprint,
        "split": split,
        "event_ids_sha": ids_digest(gs.events.ids),
        "n_events": len(gs),
        "chunk_size": int(chunk_size),
        "layout": layout_name(layout),
        "dtype": "float64",
        "environment": compute_environment(),
        "versions": versions(),
    }


#: The attribution methods the ``scored_*`` train-gradient functions take (``method=``):
#: plain TracIn, Adam-aware TracIn (:mod:`hepattr_jax.adam`), gradient-cosine
#: (:mod:`hepattr_jax.cosine`), EK-FAC influence functions at the last checkpoint
#: (:mod:`hepattr_jax.ekfac`).
METHODS = ("tracin", "adam", "cosine", "ekfac")


class Method(NamedTuple):
    """A method made ready for a run: ``run`` with the checkpoints (and weights) it scores
    at, its gradient map (None for TracIn), and what its store meta adds."""

    run: Run
    gradient_map: object
    meta: dict


def prepare_method(
    run: Run,
    method: str,
    store_dir: str | Path,
    *,
    damping: float = 0.1,
    factors: str = "expand",
    fisher: str = "true",
    chunk_size: int = 64,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
    shard: Shard | None = None,
    ekfac_dir: str | Path | None = None,
) -> Method:
    """``method`` (one of :data:`METHODS`) for ``run``. EK-FAC fits (or reads back) its factors
    on the training events at the last checkpoint in ``ekfac_dir`` (default
    ``store_dir/ekfac_factors``; one directory can serve every store of a run:
    :func:`scored_ekfac_factors`); its scores then weigh that checkpoint by 1, not its
    learning rate. The meta of every method but TracIn records it (plain TracIn's stores keep
    their meta, so stores written before methods existed still reopen)."""
    import dataclasses

    from hepattr_jax.errors import ConfigError

    if method == "tracin":
        return Method(run, None, {})
    if method == "adam":
        from hepattr_jax.adam import adam_gradient_map
        from hepattr_jax.train import ADAM_EPS

        return Method(run, adam_gradient_map(run.checkpoints), {"method": "adam", "eps": ADAM_EPS})
    if method == "cosine":
        from hepattr_jax.cosine import cosine_gradient_map

        return Method(run, cosine_gradient_map(), {"method": "cosine"})
    if method != "ekfac":
        raise ConfigError(f"method {method!r}: use one of {', '.join(METHODS)}")
    from hepattr_jax import ekfac
    from hepattr_jax.checkpoints import tree_hash

    ck = run.checkpoints
    last = dataclasses.replace(run, checkpoints=ekfac.ekfac_checkpoints(ck.select([len(ck) - 1])))
    factor_dir = Path(ekfac_dir) if ekfac_dir is not None else Path(store_dir) / "ekfac_factors"
    # one process alone fits the factors; a share only reads finished ones (checked here, so
    # a single process does not read the finished store twice)
    if shard is not None and (
        read_finished(factor_dir, _factors_meta(last, factors, fisher, chunk_size)) is None
    ):
        raise ConfigError(
            f"EK-FAC with several processes: fit the factors first, in one process "
            f"(hepattr influence ekfac-fit {run.run_dir} --out {factor_dir}, or the same "
            "command without --process-count), then score"
        )
    fac = scored_ekfac_factors(
        last,
        factor_dir,
        factors=factors,
        fisher=fisher,
        chunk_size=chunk_size,
        progress=progress,
        allow_environment_change=allow_environment_change,
        mesh=mesh,
    )
    gm = ekfac.ekfac_gradient_map(fac, damping=damping)
    meta = {
        "method": "ekfac",
        "damping": float(damping),
        "factors": factors,
        "fisher": fisher,
        "factors_sha": tree_hash(fac.to_arrays()),
    }
    return Method(last, gm, meta)


def _score(
    store_dir: str | Path,
    meta: dict,
    compute: shards.Compute,
    finish: Callable[[ScoreStore, list[int]], T],
    from_done: Callable[[StoredResult], T],
    *,
    shard: Shard | None,
    allow_environment_change: bool,
) -> T:
    """One scoring job: ``compute(store, skip_chunk)`` runs the method into a store,
    ``finish(store, chunk_indices)`` assembles and finalises its result, ``from_done`` reads a
    finished one back.

    Without ``shard``: a finished result is read back; otherwise every chunk not on disk is
    computed (a killed run resumes), taking first any finished shards' chunks
    (:mod:`hepattr_jax.shards`), and the result assembled. With ``shard``: this process scores its
    share into its shard store; then, if every share is complete, it (one process only, under a
    lock) checks and merges them and assembles the result; if not, it raises
    :class:`hepattr_jax.shards.ShareComplete` (not an error: the last process merges, or
    ``hepattr influence merge``).
    """
    allow_env = allow_environment_change
    done = read_finished(store_dir, meta)
    if done is not None:
        return from_done(done)
    if shard is not None:
        shards.score_shard(store_dir, meta, shard, compute, allow_environment_change=allow_env)
        with shards.merge_lock(store_dir):
            done = read_finished(store_dir, meta)
            if done is not None:
                return from_done(done)
            waiting = shards.unfinished_shards(store_dir, shard.count)
            if waiting:
                raise shards.ShareComplete(Path(store_dir), shard, waiting)
            own = [shards.shard_dir(store_dir, Shard(i, shard.count)) for i in range(shard.count)]
            checked = shards.check_shards(store_dir, meta, shard_dirs=own)
            n = shards.copy_shard_chunks(store_dir, checked, allow_environment_change=allow_env)
            log.info("%s: merged %d chunk(s) from %d shares", store_dir, n, shard.count)
            return _score_here(store_dir, meta, compute, finish, allow_env)
    found = shards.finished_shard_chunks(store_dir, meta)
    if found is not None:
        n = shards.copy_shard_chunks(store_dir, found, allow_environment_change=allow_env)
        log.info("%s: took %d chunk(s) from finished shards", store_dir, n)
    return _score_here(store_dir, meta, compute, finish, allow_env)


def _score_here(store_dir, meta, compute, finish, allow_env):
    with ScoreStore.open(store_dir, meta, allow_environment_change=allow_env) as store:
        seen = _ChunkLog(store)
        compute(store, seen.skip)
        seen.log()
        return finish(store, seen.indices)


class SelfInfluenceScores(NamedTuple):
    """``ids`` int64 ``[N]``; ``total`` float64 ``[N]``; ``per_checkpoint`` float64 ``[K, N]``."""

    ids: np.ndarray
    total: np.ndarray
    per_checkpoint: np.ndarray


def scored_self_influence(
    run: Run,
    store_dir: str | Path,
    *,
    split: str = "train",
    chunk_size: int = 64,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
    shard: Shard | None = None,
    method: str = "tracin",
    damping: float = 0.1,
    ekfac_dir: str | Path | None = None,
) -> SelfInfluenceScores:
    """TracIn self-influence of ``run``'s ``split`` events, persisted chunk by chunk in a
    :class:`ScoreStore` at ``store_dir`` and resumed from it.

    ``per_checkpoint[k, i] = eta_k ||grad l(z_i; theta_k)||^2`` and
    ``total = per_checkpoint.sum(0)`` (:func:`hepattr_jax.tracin.self_influence`). Writes
    ``scores.npy``, ``scores_per_checkpoint.npy`` and ``event_ids.npy`` in ``store_dir``.
    Rerunning after a crash computes only the chunks not on disk; the result equals that of an
    uninterrupted run bit for bit. A finished store made from the same inputs is read back
    (:func:`hepattr_jax.store.read_finished`) without a lock or any write, so it may be
    read-only. ``allow_environment_change``: see :meth:`ScoreStore.open`. ``mesh``: the local
    devices each chunk is split over (:mod:`hepattr_jax.sharding`). ``shard``: score this
    process's share only, see :func:`_score` (:class:`~hepattr_jax.shards.ShareComplete` is
    raised by every process but the one that merges). ``method``: one of :data:`METHODS`
    (``damping``, ``ekfac_dir``: EK-FAC's, see :func:`prepare_method`); every method's store
    records it, so a store refuses scores of another.
    """
    from hepattr_jax import tracin
    from hepattr_jax.per_example import layout_for

    m = prepare_method(
        run,
        method,
        store_dir,
        damping=damping,
        chunk_size=chunk_size,
        progress=progress,
        allow_environment_change=allow_environment_change,
        mesh=mesh,
        shard=shard,
        ekfac_dir=ekfac_dir,
    )
    run = m.run
    gs = split_of(run, split)
    layout = layout_for(run.model, gs)
    meta = run_meta(run, "self_influence", gs, split=split, chunk_size=chunk_size, layout=layout)
    meta.update(m.meta)

    def compute(store, skip):
        tracin.self_influence(
            layout,
            run.checkpoints,
            gs,
            chunk_size=chunk_size,
            per_checkpoint=True,
            progress=progress,
            on_chunk=store.write_chunk,
            skip_chunk=skip,
            mesh=mesh,
            gradient_map=m.gradient_map,
        )

    def finish(store, indices):
        per_k = store.assemble(len(gs), n_rows=len(run.checkpoints))
        total = per_k.sum(0)
        ids = np.asarray(gs.events.ids, np.int64)
        store.finalize({"scores": total, "scores_per_checkpoint": per_k, "event_ids": ids})
        return SelfInfluenceScores(ids, total, per_k)

    def from_done(done):
        a = done.arrays
        return SelfInfluenceScores(a["event_ids"], a["scores"], a["scores_per_checkpoint"])

    return _score(
        store_dir,
        meta,
        compute,
        finish,
        from_done,
        shard=shard,
        allow_environment_change=allow_environment_change,
    )


def scored_layer_statistics(
    run: Run,
    store_dir: str | Path,
    *,
    split: str = "train",
    fisher: str = "true",
    chunk_size: int = 64,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
    shard: Shard | None = None,
):
    """Every dense layer's Kronecker-factor statistics over ``run``'s ``split`` events at each
    checkpoint (:func:`hepattr_jax.kfac.layer_statistics`), their own store entry (kind
    ``layer_statistics``): each chunk's sum written atomically, resumed after a crash (bit for
    bit the uninterrupted result), finished as ``layer_statistics.npz`` (the arrays of
    :meth:`~hepattr_jax.kfac.LayerStatistics.to_arrays` and ``event_ids``) and read back from
    it. ``fisher``, ``mesh``, ``shard``: as for :func:`scored_self_influence`."""
    from hepattr_jax import kfac
    from hepattr_jax.per_example import layout_for

    gs = split_of(run, split)
    layout = layout_for(run.model, gs)
    meta = run_meta(run, "layer_statistics", gs, split=split, chunk_size=chunk_size, layout=layout)
    meta["fisher"] = fisher

    def compute(store, skip):
        kfac.layer_statistics_totals(
            layout,
            run.checkpoints,
            gs,
            fisher=fisher,
            chunk_size=chunk_size,
            progress=progress,
            on_chunk=lambda i, p, v: store.write_chunk(i, p, v, total=True),
            skip_chunk=skip,
            mesh=mesh,
        )

    def finish(store, indices):
        spec = kfac.capture_spec(layout, run.checkpoints.at(0), gs)
        stats = kfac.unpack_statistics(spec, store.sum_totals(len(gs)), fisher)
        ids = np.asarray(gs.events.ids, np.int64)
        store.finalize({**stats.to_arrays(), "event_ids": ids}, npz="layer_statistics")
        return stats

    def from_done(done):
        return kfac.LayerStatistics.from_arrays(done.arrays)

    return _score(
        store_dir,
        meta,
        compute,
        finish,
        from_done,
        shard=shard,
        allow_environment_change=allow_environment_change,
    )


def _factors_meta(run: Run, factors: str, fisher: str, chunk_size: int) -> dict:
    from hepattr_jax.per_example import layout_for

    gs = split_of(run, "train")
    meta = run_meta(
        run,
        "ekfac_factors",
        gs,
        split="train",
        chunk_size=chunk_size,
        layout=layout_for(run.model, gs),
    )
    meta.update(factors=factors, fisher=fisher)
    return meta


def scored_ekfac_factors(
    run: Run,
    store_dir: str | Path,
    *,
    factors: str = "expand",
    fisher: str = "true",
    chunk_size: int = 64,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
):
    """EK-FAC factors (:class:`hepattr_jax.ekfac.EKFACFactors`) of ``run``'s training events at
    its checkpoints, in two resumable store passes: the layer statistics
    (:func:`scored_layer_statistics`, in ``store_dir/layer_statistics``) and the eigenvalue
    correction (kind ``ekfac_factors``, chunk totals), finished as ``ekfac_factors.npz`` and
    read back from it."""
    import jax

    from hepattr_jax import ekfac
    from hepattr_jax.per_example import layout_for

    stats = scored_layer_statistics(
        run,
        Path(store_dir) / "layer_statistics",
        fisher=fisher,
        chunk_size=chunk_size,
        progress=progress,
        allow_environment_change=allow_environment_change,
        mesh=mesh,
    )
    gs = split_of(run, "train")
    layout = layout_for(run.model, gs)
    meta = _factors_meta(run, factors, fisher, chunk_size)
    dtype = jax.tree_util.tree_leaves(run.checkpoints.params)[0].dtype
    basis = ekfac.eigenbasis(stats, factors, dtype)

    def compute(store, skip):
        ekfac.correction_totals(
            layout,
            run.checkpoints,
            gs,
            basis.eigen_map,
            basis.unit_state,
            fisher=fisher,
            chunk_size=chunk_size,
            progress=progress,
            on_chunk=lambda i, p, v: store.write_chunk(i, p, v, total=True),
            skip_chunk=skip,
            mesh=mesh,
        )

    def finish(store, indices):
        total = store.sum_totals(len(gs))
        fac = ekfac.unpack_correction(
            stats, basis.q_a, basis.q_s, total, run.checkpoints.at(0), factors
        )
        ids = np.asarray(gs.events.ids, np.int64)
        store.finalize({**fac.to_arrays(), "event_ids": ids}, npz="ekfac_factors")
        return fac

    def from_done(done):
        return ekfac.EKFACFactors.from_arrays(done.arrays)

    return _score(
        store_dir,
        meta,
        compute,
        finish,
        from_done,
        shard=None,
        allow_environment_change=allow_environment_change,
    )


def _train_test_meta(run, kind, test_split, chunk_size, test_block, layout, **extra) -> dict:
    train, test = split_of(run, "train"), split_of(run, test_split)
    meta = run_meta(run, kind, train, split="train", chunk_size=chunk_size, layout=layout)
    meta.update(
        test_split=test_split,
        test_event_ids_sha=ids_digest(test.events.ids),
        n_test_events=len(test),
        test_block=int(test_block),
        **extra,
    )
    return meta


def scored_influence_matrix(
    run: Run,
    store_dir: str | Path,
    *,
    test_split: str = "test",
    chunk_size: int = 64,
    test_block: int | None = None,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
    shard: Shard | None = None,
    method: str = "tracin",
    damping: float = 0.1,
    ekfac_dir: str | Path | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train_ids [N], test_ids [M], influence [N, M])`` of
    :func:`hepattr_jax.tracin.influence_matrix`, saved in a store at ``store_dir`` as
    ``influence.npy``, ``event_ids.npy`` (rows, train) and ``test_event_ids.npy`` (columns).

    Resumable like :func:`scored_self_influence`: each (test block, train chunk) is a store chunk
    (positions: train positions ``[c]``; values: ``[M_b, c]``, the block's columns; index:
    :func:`hepattr_jax.tracin.train_test_index`), so a rerun computes only the missing ones and
    the assembled matrix is the uninterrupted run's, bit for bit. ``mesh``, ``shard``: as for
    :func:`scored_self_influence`.
    """
    from hepattr_jax import tracin
    from hepattr_jax.per_example import layout_for

    m = prepare_method(
        run,
        method,
        store_dir,
        damping=damping,
        chunk_size=chunk_size,
        progress=progress,
        allow_environment_change=allow_environment_change,
        mesh=mesh,
        shard=shard,
        ekfac_dir=ekfac_dir,
    )
    run = m.run
    train, test = split_of(run, "train"), split_of(run, test_split)
    layout = layout_for(run.model, train)
    test_block = test_block or tracin.default_test_block(run.checkpoints)
    meta = _train_test_meta(run, "influence_matrix", test_split, chunk_size, test_block, layout)
    meta.update(m.meta)

    def compute(store, skip):
        tracin.train_test_chunks(
            layout,
            run.checkpoints,
            train,
            test,
            lambda index, block, pos, scores: store.write_chunk(index, pos, scores.T),
            chunk_size=chunk_size,
            test_block=test_block,
            progress=progress,
            skip_chunk=skip,
            mesh=mesh,
            gradient_map=m.gradient_map,
        )

    def finish(store, indices):
        m = np.zeros((len(train), len(test)))
        filled = np.zeros((len(train), len(test)), np.int64)
        blocks = _test_blocks(len(test), test_block)
        for index in indices:
            pos, vals = store.read_chunk(index)
            block = blocks[index // len(train)]
            if vals.shape != (len(block), len(pos)):
                raise StoreError(
                    f"{store.chunk_path(index)}: values {list(vals.shape)}, expected "
                    f"[{len(block)}, {len(pos)}]"
                )
            m[np.ix_(pos, block)] = vals.T
            filled[np.ix_(pos, block)] += 1
        if np.any(filled != 1):
            raise StoreError(
                f"{store.directory}: chunks do not cover every (train, test) pair exactly once"
            )
        ids, test_ids = train.events.ids.astype(np.int64), test.events.ids.astype(np.int64)
        store.finalize({"influence": m, "event_ids": ids, "test_event_ids": test_ids})
        return ids, test_ids, m

    def from_done(done):
        a = done.arrays
        return a["event_ids"], a["test_event_ids"], a["influence"]

    return _score(
        store_dir,
        meta,
        compute,
        finish,
        from_done,
        shard=shard,
        allow_environment_change=allow_environment_change,
    )


class _ChunkLog:
    """A ``skip_chunk`` hook that records every chunk index the driver visits (computed or
    skipped), so a result is assembled from exactly the chunks of this run's chunking."""

    def __init__(self, store: ScoreStore):
        self.store = store
        self.indices: list[int] = []

    def skip(self, index: int) -> bool:
        self.indices.append(int(index))
        return self.store.has(index)

    def log(self) -> None:
        log.info(
            "%s: %d chunk(s) reused from disk, %d computed",
            self.store.directory,
            len(self.indices) - self.store.n_written,
            self.store.n_written,
        )


def _test_blocks(n_test: int, test_block: int) -> list[np.ndarray]:
    return [np.arange(s, min(s + test_block, n_test)) for s in range(0, n_test, test_block)]


def scored_top_k(
    run: Run,
    store_dir: str | Path,
    k: int,
    *,
    test_split: str = "test",
    chunk_size: int = 64,
    test_block: int | None = None,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
    shard: Shard | None = None,
    method: str = "tracin",
    damping: float = 0.1,
    ekfac_dir: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Top-``k`` proponents and opponents (:func:`hepattr_jax.tracin.top_k`) of every
    ``test_split`` event, as train *event ids* and scores, saved as ``topk.npz`` in a store:
    ``test_event_ids [M]``, ``proponent_ids``/``opponent_ids`` int64 ``[M, k]`` and
    ``proponent_scores``/``opponent_scores`` float64 ``[M, k]``, strongest first.

    Resumable: each (test block, train chunk) persists its own top-k
    (:func:`hepattr_jax.tracin.chunk_top_k`) as a store chunk (positions: the block's test
    positions ``[M_b]``; values float64 ``[4, k_c, M_b]``: proponent scores, proponent train
    positions, opponent scores, opponent train positions; positions are integers < 2**53, exact
    in float64). The result merges the chunks with :func:`hepattr_jax.tracin.merge_top_k`, whose
    ranking is a strict total order, so a resumed run is byte-identical to an uninterrupted
    one (and to :func:`hepattr_jax.tracin.top_k`). Disk: ``4 k`` values per test event and
    train chunk, never the ``N x M`` matrix. ``mesh``, ``shard``: as for
    :func:`scored_self_influence`.
    """
    from hepattr_jax import tracin
    from hepattr_jax.per_example import layout_for

    m = prepare_method(
        run,
        method,
        store_dir,
        damping=damping,
        chunk_size=chunk_size,
        progress=progress,
        allow_environment_change=allow_environment_change,
        mesh=mesh,
        shard=shard,
        ekfac_dir=ekfac_dir,
    )
    run = m.run
    train, test = split_of(run, "train"), split_of(run, test_split)
    layout = layout_for(run.model, train)
    test_block = test_block or tracin.default_test_block(run.checkpoints)
    k = min(int(k), len(train))
    meta = _train_test_meta(run, "top_k", test_split, chunk_size, test_block, layout, k=k)
    meta.update(m.meta)

    def compute(store, skip):
        def persist(index, block, pos, scores):
            ps, pi, os_, oi = tracin.chunk_top_k(pos, scores, k)
            vals = np.stack([ps.T, pi.T.astype(np.float64), os_.T, oi.T.astype(np.float64)])
            store.write_chunk(index, block, vals)

        tracin.train_test_chunks(
            layout,
            run.checkpoints,
            train,
            test,
            persist,
            chunk_size=chunk_size,
            test_block=test_block,
            progress=progress,
            skip_chunk=skip,
            mesh=mesh,
            gradient_map=m.gradient_map,
        )

    def finish(store, indices):
        blocks = _test_blocks(len(test), test_block)
        per_block: dict[int, list] = {b: [] for b in range(len(blocks))}
        for index in indices:
            pos, vals = store.read_chunk(index)
            b = index // len(train)
            if vals.ndim != 3 or vals.shape[0] != 4 or not np.array_equal(pos, blocks[b]):
                raise StoreError(f"{store.chunk_path(index)}: not a top-k chunk of test block {b}")
            ps, pi, os_, oi = vals.transpose(0, 2, 1)
            per_block[b].append((ps, pi.astype(np.int64), os_, oi.astype(np.int64)))
        merged = [tracin.merge_top_k(per_block[b], k) for b in range(len(blocks))]
        pro_s, pro_i, opp_s, opp_i = (np.concatenate([p[j] for p in merged]) for j in range(4))
        if pro_i.shape != (len(test), k):
            raise StoreError(f"{store.directory}: top-k chunks do not cover the train set")
        train_ids = train.events.ids.astype(np.int64)
        arrays = {
            "test_event_ids": test.events.ids.astype(np.int64),
            "proponent_ids": train_ids[pro_i],
            "proponent_scores": pro_s,
            "opponent_ids": train_ids[opp_i],
            "opponent_scores": opp_s,
        }
        store.finalize(arrays, npz="topk")
        return arrays

    def from_done(done):
        return dict(done.arrays)

    return _score(
        store_dir,
        meta,
        compute,
        finish,
        from_done,
        shard=shard,
        allow_environment_change=allow_environment_change,
    )


# --------------------------------------------------------------------- TRAK
def _select_checkpoints(ckpts, which: str):
    """``"all"`` checkpoints, or the ``"last"`` one only (TRAK's usual single model)."""
    from hepattr_jax.errors import ConfigError

    if which == "all":
        return ckpts
    if which != "last":
        raise ConfigError(f"checkpoints {which!r}: use 'all' or 'last'")
    return ckpts.select([len(ckpts) - 1])


def scored_trak_features(
    run: Run,
    store_dir: str | Path,
    projector,
    *,
    split: str = "train",
    checkpoints: str = "last",
    chunk_size: int = 64,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
    shard: Shard | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [N], features [K, N, d], margins [K, N])``: TRAK features
    (:func:`hepattr_jax.trak.featurize`) of ``run``'s ``split`` events at its ``"last"`` or
    ``"all"`` checkpoints, persisted chunk by chunk (resumable) in a :class:`ScoreStore` whose
    meta records the run, checkpoints, projection and settings. Writes ``features.npy``,
    ``margins.npy`` and ``event_ids.npy``. ``mesh``, ``shard``: as for
    :func:`scored_self_influence`."""
    import dataclasses

    import jax

    from hepattr_jax import trak
    from hepattr_jax.per_example import layout_for

    gs = split_of(run, split)
    ck = _select_checkpoints(run.checkpoints, checkpoints)
    layout = layout_for(run.model, gs)
    sub = dataclasses.replace(run, checkpoints=ck)
    meta = run_meta(sub, "trak_features", gs, split=split, chunk_size=chunk_size, layout=layout)
    dtype = np.dtype(jax.tree_util.tree_leaves(ck.params)[0].dtype)
    meta.update(projection=projector.to_meta(), output="margin", dtype=dtype.name)
    d = projector.proj_dim

    def compute(store, skip):
        trak.featurize(
            layout,
            ck,
            gs,
            projector,
            chunk_size=chunk_size,
            progress=progress,
            on_chunk=store.write_chunk,
            skip_chunk=skip,
            mesh=mesh,
        )

    def finish(store, indices):
        both = store.assemble(len(gs), n_rows=(len(ck), d + 1))
        features = np.ascontiguousarray(both[:, :d].transpose(0, 2, 1))
        margins = both[:, d]
        ids = np.asarray(gs.events.ids, np.int64)
        store.finalize({"features": features, "margins": margins, "event_ids": ids})
        return ids, features, margins

    def from_done(done):
        a = done.arrays
        return a["event_ids"], a["features"], a["margins"]

    return _score(
        store_dir,
        meta,
        compute,
        finish,
        from_done,
        shard=shard,
        allow_environment_change=allow_environment_change,
    )


def scored_trak(
    runs: list[Run],
    store_dir: str | Path,
    projector,
    *,
    test_split: str = "test",
    checkpoints: str = "last",
    damping: float = 1e-3,
    chunk_size: int = 64,
    progress: bool = True,
    allow_environment_change: bool = False,
    mesh=None,
    shard: Shard | None = None,
) -> dict[str, np.ndarray]:
    """TRAK scores of every train event on every ``test_split`` event, ensembled over ``runs``
    (each contributing its ``"last"`` or ``"all"`` checkpoints), and TRAK self-influence.

    With ``shard``, every features store is scored share by share; the process that completes
    the last share of the last store merges any not merged yet and computes the scores (the
    others raise :class:`~hepattr_jax.shards.ShareComplete`).

    Features of each run and split go to ``store_dir/features/run<i>_<split>`` (resumable
    stores); the result, ``store_dir`` itself, holds ``scores.npy`` ``[N, M]``,
    ``self_influence.npy`` ``[N]``, ``event_ids.npy`` and ``test_event_ids.npy``, with a meta
    naming every member's checkpoints and data fingerprint, the projection and ``damping``.

    Raises:
      ConfigError: the runs' data fingerprints differ (same event ids but other labels or
        normalisation, say: both run directories named) or their events differ.
    """
    from hepattr_jax import trak
    from hepattr_jax.errors import ConfigError

    if not runs:
        raise ConfigError("scored_trak: no runs")
    allow_env = allow_environment_change
    store_dir = Path(store_dir)
    train0, test0 = split_of(runs[0], "train"), split_of(runs[0], test_split)
    for run in runs[1:]:
        if run.data.fingerprint != runs[0].data.fingerprint:
            raise ConfigError(
                f"{run.run_dir}: data fingerprint {run.data.fingerprint} differs from "
                f"{runs[0].data.fingerprint} of {runs[0].run_dir} (other events, labels or "
                "normalisation); ensemble members must be trained on the same data"
            )
    jobs = []
    for i, run in enumerate(runs):
        for split, ref in (("train", train0), (test_split, test0)):
            gs = split_of(run, split)
            if not np.array_equal(gs.events.ids, ref.events.ids):
                raise ConfigError(
                    f"{run.run_dir}: its {split} events differ from those of {runs[0].run_dir}; "
                    "ensemble members must be trained on the same data"
                )
            jobs.append((i, run, split, store_dir / "features" / f"run{i}_{split}"))

    calibrated: dict[int, object] = {}

    def features(job):
        i, run, split, where = job
        # A per-layer projection is calibrated once per member, on its training events, and
        # the same projector featurises its test events.
        if i not in calibrated:
            from hepattr_jax.per_example import layout_for
            from hepattr_jax.tracin import calibrate_projector

            ck = _select_checkpoints(run.checkpoints, checkpoints)
            train = split_of(run, "train")
            calibrated[i] = calibrate_projector(
                layout_for(run.model, train), ck, train, projector, output="margin"
            )
        return scored_trak_features(
            run,
            where,
            calibrated[i],
            split=split,
            checkpoints=checkpoints,
            chunk_size=chunk_size,
            progress=progress,
            allow_environment_change=allow_environment_change,
            mesh=mesh,
            shard=shard,
        )

    got: list = []
    pending = []
    for job in jobs:
        try:
            got.append(features(job))
        except shards.ShareComplete as e:
            got.append(None)
            pending.append(e)
    if pending:
        # A store whose last share another process completed before this one finished its
        # later stores was left unmerged: every share is complete once this process's last one
        # is, if it is the last process, so a second pass merges what is left (finished shares
        # are not recomputed); a process that is not the last still finds some incomplete.
        got = [g if g is not None else features(job) for g, job in zip(got, jobs, strict=True)]
    parts_tr = [(g[1], g[2]) for g in got[0::2]]  # jobs alternate: train, then test_split
    parts_te = [(g[1], g[2]) for g in got[1::2]]
    ftr, mtr = trak.stack_members(parts_tr)
    fte, _ = trak.stack_members(parts_te)
    members = []
    for run in runs:
        ck = _select_checkpoints(run.checkpoints, checkpoints)
        members.append(
            {
                "config_fingerprint": run.config.fingerprint(),
                "data_fingerprint": run.data.fingerprint,
                "checkpoint_steps": [int(s) for s in ck.steps],
                "checkpoint_hashes": list(ck.hashes),
            }
        )
    meta = {
        "kind": "trak_scores",
        "run_dir": [str(Path(run.run_dir).resolve()) for run in runs],
        "members": members,
        "data_fingerprint": runs[0].data.fingerprint,
        "event_ids_sha": ids_digest(train0.events.ids),
        "test_split": test_split,
        "test_event_ids_sha": ids_digest(test0.events.ids),
        "n_events": len(train0),
        "n_test_events": len(test0),
        "projection": projector.to_meta(),
        "damping": float(damping),
        "checkpoints": checkpoints,
        "chunk_size": int(chunk_size),
        "dtype": "float64",
        "environment": compute_environment(),
        "versions": versions(),
    }
    with ScoreStore.open(store_dir, meta, allow_environment_change=allow_env) as store:
        factors = trak.gram_factors(ftr, damping=damping)  # shared by both results
        arrays = {
            "scores": trak.trak_scores(ftr, mtr, fte, damping=damping, factors=factors),
            "self_influence": trak.trak_self_influence(ftr, mtr, damping=damping, factors=factors),
            "event_ids": train0.events.ids.astype(np.int64),
            "test_event_ids": test0.events.ids.astype(np.int64),
        }
        store.finalize(arrays)
    return arrays
