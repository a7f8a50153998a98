"""Several processes, one result: each scores its share of a store's chunks into a shard.

Influence is embarrassingly parallel over chunks, and chunk indices are deterministic for a data
split, layout and ``chunk_size``, so the processes of a multi-process job need no collective
communication to share the work: process ``i`` of ``n`` (a :class:`Shard`) scores the chunks
whose index is ``i`` modulo ``n``, into a store of its own::

    STORE/shards/process_<i>_of_<n>/    a ScoreStore: the result's meta plus "shard": {index, count}
        chunks/chunk_*.npz              the chunks it owns
        chunk_indices.npy, owned_chunks.npy, result.json
                                        written when its share is complete

When a process finishes its share it looks at the others; the one that finds every share complete
(under a lock on ``STORE/shards/.merge.lock``, so exactly one does) checks them
(:func:`check_shards`: the same inputs, the same chunking, every chunk exactly once), copies their
chunks into ``STORE`` and assembles the ordinary result there, the same code and the same bytes as
one process would give. A process that dies is restarted with the same arguments (alone, without
a coordinator, if the others are gone: shares are independent); its finished chunks are kept. Any
process may also merge later by hand: ``hepattr influence merge STORE``. Running the command
without ``--processes`` on a store that has shards takes their finished chunks and computes the
rest itself.

Launching the processes (``jax.distributed``) is the command line's business
(:mod:`hepattr_jax.cli.influence`); this module is storage only and never touches JAX devices.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hepattr_jax.errors import StoreError
from hepattr_jax.io_utils import ensure_dir
from hepattr_jax.store import (
    ScoreStore,
    StoredResult,
    held_lock,
    meta_differences,
    read_finished,
    read_result,
    read_store_meta,
)

log = logging.getLogger(__name__)

SHARD_KEY = "shard"
_NAME_RE = re.compile(r"^process_(\d+)_of_(\d+)$")

#: ``compute(store, skip_chunk)``: runs a method through the streaming driver, writing every chunk
#: it does not skip into ``store``.
Compute = Callable[[ScoreStore, Callable[[int], bool]], None]


@dataclasses.dataclass(frozen=True)
class Shard:
    """Process ``index`` of ``count``: it owns the chunks ``index, index + count, ...``."""

    index: int
    count: int

    def owns(self, chunk_index: int) -> bool:
        return int(chunk_index) % self.count == self.index

    @property
    def name(self) -> str:
        return f"process_{self.index}_of_{self.count}"

    def check(self) -> Shard:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise StoreError(f"process index {self.index} is outside [0, {self.count})")
        return self


def shards_dir(store_dir: str | Path) -> Path:
    return Path(store_dir) / "shards"


def shard_dir(store_dir: str | Path, shard: Shard) -> Path:
    return shards_dir(store_dir) / shard.name


def shard_meta(meta: Mapping[str, Any], shard: Shard) -> dict:
    """The meta of ``shard``'s store: the result's own, plus which share it holds."""
    return {**meta, SHARD_KEY: {"index": int(shard.index), "count": int(shard.count)}}


def base_meta(meta: Mapping[str, Any]) -> dict:
    """The result's meta from a shard's (its ``shard`` key and store format dropped)."""
    return {k: v for k, v in meta.items() if k not in (SHARD_KEY, "store_format")}


class ShareComplete(Exception):  # noqa: N818 - not an error: the share is done
    """Raised by a scoring call with a ``shard`` when this process's share is complete but other
    shares are not: the process that completes the last one merges (or ``hepattr influence
    merge``). ``store_dir``, ``shard`` and ``waiting`` (the incomplete shares' names)."""

    def __init__(self, store_dir: Path, shard: Shard, waiting: list[str]):
        self.store_dir, self.shard, self.waiting = store_dir, shard, waiting
        super().__init__(
            f"{store_dir}: the share of process {shard.index} of {shard.count} is complete; "
            f"waiting for {', '.join(waiting)} (the process that completes the last share "
            "merges, or run `hepattr influence merge` once all are done)"
        )


# --------------------------------------------------------------------- one process's share
def score_shard(
    store_dir: str | Path,
    meta: Mapping[str, Any],
    shard: Shard,
    compute: Compute,
    *,
    allow_environment_change: bool = False,
) -> Path:
    """Scores ``shard``'s chunks into its own store (resuming it) and marks it complete with the
    chunk indices of the whole chunking and those it owns. Returns the shard's directory."""
    shard.check()
    d = shard_dir(store_dir, shard)
    m = shard_meta(meta, shard)
    done = read_finished(d, m)
    if done is not None:
        gone = _unreadable(d, done.arrays["owned_chunks"])
        if not gone:
            log.info("%s: this process's share is already complete", d)
            return d
        log.warning("%s: chunks %s lost since the share was completed; recomputing", d, list(gone))
        (d / "result.json").unlink()
    with ScoreStore.open(d, m, allow_environment_change=allow_environment_change) as store:
        seen: list[int] = []

        def skip(index: int) -> bool:
            seen.append(int(index))
            return not shard.owns(index) or store.has(index)

        compute(store, skip)
        owned = [i for i in seen if shard.owns(i)]
        lost = [i for i in owned if not store.has(i)]
        if lost:  # pragma: no cover - compute wrote no chunk for an index it did not skip
            raise StoreError(f"{d}: chunks {lost[:10]} were not written")
        log.info(
            "%s: %d chunk(s) of %d reused from disk, %d computed",
            d,
            store.n_reused,
            len(owned),
            store.n_written,
        )
        store.finalize(
            {
                "chunk_indices": np.asarray(seen, np.int64),
                "owned_chunks": np.asarray(owned, np.int64),
            }
        )
    return d


# --------------------------------------------------------------------- checking and merging
class ShardSet(NamedTuple):
    """Checked shards of one result: its ``meta``, every chunk index of the chunking, and which
    shard directory holds each chunk."""

    meta: dict
    chunk_indices: np.ndarray
    holder: dict[int, Path]


def _unreadable(shard_dir: Path, chunks: np.ndarray) -> dict[int, StoreError]:
    """The chunks of ``chunks`` that cannot be read back from the shard store at ``shard_dir``
    (missing, damaged, another store's), each with the reason; in index order."""
    reader = ScoreStore.reader(shard_dir)
    out = {}
    for c in chunks.tolist():
        try:
            reader.read_chunk_entry(c)
        except StoreError as e:
            out[int(c)] = e
    return out


def _list_shards(store_dir: Path) -> list[Path]:
    root = shards_dir(store_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def unfinished_shards(store_dir: str | Path, count: int) -> list[str]:
    """Which of the ``count`` shares of ``store_dir`` are not complete yet (names, in order)."""
    out = []
    for i in range(count):
        d = shard_dir(store_dir, Shard(i, count))
        if not (d / "result.json").is_file():
            out.append(d.name)
    return out


def check_shards(
    store_dir: str | Path,
    meta: Mapping[str, Any] | None = None,
    shard_dirs: list[Path] | None = None,
) -> ShardSet:
    """Checks the shards of a result before they are merged.

    ``shard_dirs`` defaults to every directory under ``store_dir/shards``; ``meta``, the result's
    own meta (default: the first shard's). Each shard must be a finished shard store of that
    meta (every compared key equal, see :func:`hepattr_jax.store.meta_differences`), the shard
    indices ``0 .. n-1`` of one count must each be there exactly once, all with the same chunking,
    and every chunk of it must be held by exactly one shard, readable.

    Raises:
      StoreError: naming the shard (and the differing keys, the missing process or chunk).
    """
    store_dir = Path(store_dir)
    dirs = [Path(d) for d in (shard_dirs if shard_dirs is not None else _list_shards(store_dir))]
    if not dirs:
        raise StoreError(f"{store_dir}: no shards to merge (nothing under {shards_dir(store_dir)})")
    metas = {}
    for d in dirs:
        m = read_store_meta(d)
        if SHARD_KEY not in m:
            raise StoreError(f"{d}: not a shard store (its meta.json has no {SHARD_KEY!r} key)")
        metas[d] = m
    first = dirs[0]
    want = base_meta(meta) if meta is not None else base_meta(metas[first])
    what = "this result" if meta is not None else f"shard {first}"
    count = None
    by_index: dict[int, Path] = {}
    for d in dirs:
        diffs = meta_differences(want, base_meta(metas[d]))
        if diffs:
            raise StoreError(
                f"{d}: a shard of another result than {what}; refusing to merge it. Differing: "
                + "; ".join(
                    d_.replace("stored", "expected").replace("vs now", "vs shard") for d_ in diffs
                )
            )
        s = metas[d][SHARD_KEY]
        index, n = int(s["index"]), int(s["count"])
        if count is None:
            count = n
        elif n != count:
            raise StoreError(f"{d}: a share of {n} processes, the others are of {count}")
        if index in by_index:
            raise StoreError(f"{d} and {by_index[index]}: both hold the share of process {index}")
        by_index[index] = d
    assert count is not None
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        names = ", ".join(str(shard_dir(store_dir, Shard(i, count))) for i in missing)
        raise StoreError(
            f"{store_dir}: the share of process(es) {missing} of {count} is missing (expected "
            f"{names}); run those processes (they resume), then merge"
        )
    chunking = None
    holder: dict[int, Path] = {}
    for index in range(count):
        d = by_index[index]
        try:
            done = read_result(d)
        except StoreError as e:
            raise StoreError(
                f"{d}: the share of process {index} of {count} is not complete ({e}); rerun that "
                "process (it resumes), then merge"
            ) from None
        indices, owned = done.arrays["chunk_indices"], done.arrays["owned_chunks"]
        if chunking is None:
            chunking = indices
        elif not np.array_equal(indices, chunking):
            raise StoreError(f"{d}: chunked otherwise than {by_index[0]}; refusing to merge")
        want_owned = indices[indices % count == index]
        if not np.array_equal(np.sort(owned), np.sort(want_owned)):
            raise StoreError(f"{d}: holds chunks {owned.tolist()[:10]}..., not its share")
        bad = _unreadable(d, owned)
        if bad:
            c, why = next(iter(bad.items()))
            raise StoreError(
                f"{d}: chunk {c} of the share of process {index} is missing or damaged "
                f"({why}); rerun process {index} (it recomputes it), then merge"
            )
        for c in owned.tolist():
            if c in holder:
                raise StoreError(f"chunk {c}: held by both {holder[c]} and {d}")
            holder[c] = d
    assert chunking is not None
    lost = sorted(set(chunking.tolist()) - set(holder))
    if lost:  # pragma: no cover - implied by the checks above
        raise StoreError(f"{store_dir}: chunks {lost[:10]} are in no shard")
    return ShardSet(want, chunking, holder)


def copy_shard_chunks(
    store_dir: str | Path, checked: ShardSet, *, allow_environment_change: bool = False
) -> int:
    """Copies the chunks of checked shards into the store at ``store_dir`` (made with their
    result's meta, ``checked.meta``), leaving any it already holds. Returns how many were copied."""
    n = 0
    readers: dict[Path, ScoreStore] = {}
    allow_env = allow_environment_change
    with ScoreStore.open(store_dir, checked.meta, allow_environment_change=allow_env) as st:
        for c, d in sorted(checked.holder.items()):
            if st.has(c):
                continue
            reader = readers.setdefault(d, ScoreStore.reader(d))
            pos, values, total = reader.read_chunk_entry(c)
            st.write_chunk(c, pos, values, total=total)
            n += 1
    return n


def merge_lock(store_dir: str | Path):
    """Held while one process checks and merges the shards of ``store_dir`` (the others wait)."""
    return held_lock(ensure_dir(shards_dir(store_dir)), ".merge.lock")


def finished_shard_chunks(store_dir: str | Path, meta: Mapping[str, Any]) -> ShardSet | None:
    """For a single process resuming a sharded result: the chunks of every *finished*, matching
    shard under ``store_dir/shards`` (other shards are left alone), or None if there are none."""
    holder: dict[int, Path] = {}
    for d in _list_shards(Path(store_dir)):
        m = _NAME_RE.match(d.name)
        if m is None or not (d / "result.json").is_file():
            continue
        try:
            done: StoredResult = read_result(d)
        except StoreError as e:
            log.warning("%s: not used (%s)", d, e)
            continue
        if SHARD_KEY not in done.meta or meta_differences(base_meta(done.meta), meta):
            log.warning("%s: a shard of another result; not used", d)
            continue
        for c in done.arrays["owned_chunks"].tolist():
            holder.setdefault(int(c), d)
    if not holder:
        return None
    return ShardSet(dict(meta), np.asarray(sorted(holder), np.int64), holder)
