"""The one streaming driver every attribution method runs through.

A method is a jitted *chunk function* of a layout's chunk data (from
:mod:`hepattr_jax.per_example`); :func:`stream` does the rest, the same way for all of them:

* chunks: ``layout.chunks(gs, chunk_size, positions)``, fixed shapes per bucket, deterministic
  chunk indices for a given data split, layout and ``chunk_size`` (what resuming relies on);
* devices: each chunk's events split over a :mod:`~hepattr_jax.sharding` mesh (parameters and any
  other inputs replicated by the caller);
* resume hooks: ``skip_chunk(index)`` skips chunks a store already holds, ``on_chunk(index,
  positions, values)`` persists each finished one (:class:`hepattr_jax.store.ScoreStore`'s
  ``has`` / ``write_chunk``);
* progress: one tqdm bar in events;
* totals: a method that accumulates statistics (a sum over events, not a value per event) gets
  each chunk's slot weights (1 for an event, 0 for a filler slot) and returns the chunk's sum.

A new attribution method is one module with its chunk function (see :mod:`hepattr_jax.tracin`
and :mod:`hepattr_jax.trak`) plus its test; it never writes this loop again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from hepattr_jax.graphs import GraphSet
from hepattr_jax.sharding import check_chunk_size, shard_events

ChunkFn = Callable[..., "np.ndarray"]


def stream(
    layout,
    gs: GraphSet,
    chunk_fn: ChunkFn,
    *,
    chunk_size: int = 64,
    positions: np.ndarray | None = None,
    desc: str = "events",
    progress: bool = True,
    on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    skip_chunk: Callable[[int], bool] | None = None,
    mesh=None,
    totals: bool = False,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yields ``(index, positions [c], values [..., c])`` for every chunk not skipped.

    ``chunk_fn(data)`` maps one chunk's (device-sharded) data to an array whose *last* axis is
    the chunk's ``chunk_size`` slots; the filler slots of a bucket's last chunk are cut off here,
    so ``values`` covers exactly the events at ``positions`` (into ``gs``). Values come back as
    NumPy arrays (the device work of the next chunk is dispatched only after this one is read,
    which bounds memory by one chunk).

    ``totals``: ``chunk_fn((data, weight))`` with ``weight`` float32 ``[chunk_size]`` (1 for the
    chunk's events, 0 for its filler slots, split over the mesh with the data) returns the
    chunk's sum over its events, of any shape, yielded whole.
    """
    check_chunk_size(chunk_size, mesh)
    n = len(gs) if positions is None else len(positions)
    with tqdm(total=n, desc=desc, unit="ev", disable=not progress) as bar:
        for idx, chunk in enumerate(layout.chunks(gs, chunk_size, positions)):
            c = len(chunk.positions)
            if skip_chunk is not None and skip_chunk(idx):
                bar.update(c)
                continue
            if totals:
                weight = (np.arange(chunk_size) < c).astype(np.float32)
                values = np.asarray(chunk_fn(shard_events((chunk.data, weight), mesh)))
            else:
                values = np.asarray(chunk_fn(shard_events(chunk.data, mesh)))[..., :c]
            if on_chunk is not None:
                on_chunk(idx, chunk.positions, values)
            yield idx, chunk.positions, values
            bar.update(c)


def stream_totals(
    layout,
    gs: GraphSet,
    chunk_fn: ChunkFn,
    *,
    on_chunk: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    **kwargs,
) -> np.ndarray | None:
    """:func:`stream` with ``totals=True``, summed: the float64 sum of the chunk totals computed
    here (None if every chunk was skipped), each chunk's total handed to ``on_chunk`` in
    float64 first (a store's :meth:`~hepattr_jax.store.ScoreStore.write_chunk` with
    ``total=True``). ``kwargs``: those of :func:`stream`."""
    total = None
    persist = (lambda i, p, v: on_chunk(i, p, v.astype(np.float64))) if on_chunk else None
    for _, _, vals in stream(layout, gs, chunk_fn, on_chunk=persist, totals=True, **kwargs):
        part = vals.astype(np.float64)
        total = part if total is None else total + part
    return total
