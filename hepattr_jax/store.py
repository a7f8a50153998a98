"""Score stores: influence scores on disk, self-describing, checked when reopened, resumable.

A store is a directory made for *one* result (one kind of score, one run's checkpoints, one data
split, one set of settings)::

    DIR/meta.json            what made the scores (see below); written once, atomically
    DIR/.lock                flock'ed while a process has the store open (one writer at a time)
    DIR/chunks/chunk_000012.npz
                             one per finished chunk: ``index``, ``positions`` int64 ``[c]``,
                             ``values`` ``[K, c]`` (or ``[c]``), ``meta_sha``; written atomically
    DIR/<name>.npy | .npz    the final arrays, written atomically by :meth:`ScoreStore.finalize`
    DIR/result.json          written last: shape, dtype and sha256 of every final array

``meta`` holds at least ``kind``, ``run_dir``, ``checkpoint_steps``, ``checkpoint_hashes``
(content hashes of the parameters), ``lrs``, ``data_fingerprint``, ``event_ids_sha``
(:func:`ids_digest` of the scored events' ids), ``n_events``, ``chunk_size``, ``layout`` and
``dtype``, plus any settings. Reopening a directory with a meta that differs in any key other than
the informational ones (:data:`INFO_KEYS`: where the run lives, library versions) raises
:class:`~hepattr_jax.errors.StoreError` naming the directory and every differing key, so chunks of
two runs are never mixed.

Resuming. Chunk indices are deterministic for a given data split and ``chunk_size`` (see
:func:`hepattr_jax.tracin.self_influence`), so a run killed part way is restarted with
``skip_chunk=store.has``: finished chunks are not recomputed and the assembled result is, bit for
bit, the one an uninterrupted run gives.

Damaged chunks. A chunk file that cannot be read back in full (truncated, bad zip CRC, missing or
inconsistent fields) is *not* an error: it is logged as a warning, renamed to ``*.corrupt`` (kept
for inspection) and treated as not done, so the next run recomputes it. Atomic writes make this
rare (it needs a disk fault or a hand edit). A readable chunk that carries another store's
``meta_sha`` is mixing and raises :class:`StoreError`.

Finished results are read back with :func:`read_result`, which checks every array against the
digests in ``result.json`` and the id digests in ``meta.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from hepattr_jax.errors import StoreError
from hepattr_jax.io_utils import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    json_default,
    npz_bytes,
)

if TYPE_CHECKING:
    from hepattr_jax.graphs import GraphSet
    from hepattr_jax.runs import Run

try:  # POSIX advisory locks; elsewhere the store runs unlocked.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

STORE_FORMAT = "hepattr-score-store/1"
#: Recorded in ``meta.json`` but not compared on reopen: they do not change the numbers (a moved
#: run directory has the same checkpoint and data hashes).
INFO_KEYS = frozenset({"run_dir", "versions"})
SPLITS = ("train", "val", "test")
_CHUNK_RE = re.compile(r"^chunk_(\d{6,})\.npz$")


# --------------------------------------------------------------------- helpers
def ids_digest(ids: np.ndarray) -> str:
    """sha256 (hex) of the event ids as little-endian int64 bytes, in the given order."""
    return hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes()).hexdigest()


def array_digest(a: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _canonical(meta: Mapping[str, Any]) -> dict:
    """The meta as JSON would read it back (tuples -> lists, NumPy scalars -> Python)."""
    return json.loads(json.dumps(dict(meta), sort_keys=True, default=json_default))


def _meta_sha(meta: Mapping[str, Any]) -> str:
    text = json.dumps(_canonical(meta), sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _short(value: Any, limit: int = 160) -> str:
    s = json.dumps(value, default=json_default)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def meta_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: stored X vs now Y"`` for every compared key that differs (sorted by key)."""
    a, b = _canonical(stored), _canonical(new)
    out = []
    for key in sorted((set(a) | set(b)) - INFO_KEYS - {"store_format"}):
        old, now = a.get(key, "<absent>"), b.get(key, "<absent>")
        if old != now:
            out.append(f"{key}: stored {_short(old)} vs now {_short(now)}")
    return out


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


# --------------------------------------------------------------------- the store
class ScoreStore:
    """Chunks of scores for one result, on disk; see the module docstring for the layout.

    Use :meth:`open` (or ``with ScoreStore.open(...) as store:``). Attributes: ``directory``,
    ``meta`` (as stored), ``meta_sha``, ``n_reused`` (valid chunks found when opened) and
    ``n_written`` (chunks written through this object).
    """

    def __init__(self, directory: Path, meta: dict, lock_fd: int | None, done: set[int]):
        self.directory = directory
        self.meta = meta
        self.meta_sha = _meta_sha(meta)
        self.dtype = np.dtype(meta["dtype"])
        self._lock_fd = lock_fd
        self._done = done
        self.n_reused = len(done)
        self.n_written = 0

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(cls, directory: str | Path, meta: Mapping[str, Any]) -> ScoreStore:
        """Creates the store, or reopens it after checking ``meta`` against the stored one.

        Raises:
          StoreError: the directory holds another result (each differing key named, old vs new),
            has chunks but no ``meta.json``, has an unreadable ``meta.json``, is locked by another
            process, or a chunk carries another store's ``meta_sha``.
        """
        directory = Path(directory)
        new = _canonical(meta)
        missing = sorted({"kind", "n_events", "chunk_size", "dtype", "event_ids_sha"} - set(new))
        if missing:
            raise StoreError(f"{directory}: store meta lacks required key(s) {missing}")
        ensure_dir(directory)
        lock_fd = _lock(directory)
        try:
            meta_path = directory / "meta.json"
            if meta_path.exists():
                stored = _read_meta(directory)
                diffs = meta_differences(stored, new)
                if diffs:
                    raise StoreError(
                        f"{directory}: holds scores made from different inputs; refusing to mix "
                        f"them. Differing: {'; '.join(diffs)}. Use another output directory "
                        "(or delete this one to start over)."
                    )
                for key in sorted(INFO_KEYS):
                    if stored.get(key) != new.get(key):
                        log.info(
                            "%s: %s was %s, now %s (informational, not compared)",
                            directory,
                            key,
                            _short(stored.get(key)),
                            _short(new.get(key)),
                        )
            else:
                if (directory / "chunks").exists() and any((directory / "chunks").iterdir()):
                    raise StoreError(
                        f"{directory}: has chunk files but no meta.json; cannot tell what made "
                        "them. Delete the directory or use another one."
                    )
                stored = {**new, "store_format": STORE_FORMAT}
                atomic_write_json(meta_path, stored)
            store = cls(directory, stored, lock_fd, set())
            store._done = store._scan_chunks()
            store.n_reused = len(store._done)
            return store
        except BaseException:
            _unlock(lock_fd)
            raise

    def close(self) -> None:
        """Releases the directory lock (also released when the process exits)."""
        _unlock(self._lock_fd)
        self._lock_fd = None

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()

    # ---------------------------------------------------------------- chunks
    @property
    def chunk_dir(self) -> Path:
        return self.directory / "chunks"

    def chunk_path(self, index: int) -> Path:
        return self.chunk_dir / f"chunk_{int(index):06d}.npz"

    def done(self) -> set[int]:
        """Indices of the chunks safely on disk."""
        return set(self._done)

    def has(self, index: int) -> bool:
        return int(index) in self._done

    def write_chunk(self, index: int, positions: np.ndarray, values: np.ndarray) -> None:
        """Writes chunk ``index`` atomically: ``positions`` int ``[c]`` into the scored set and
        ``values`` ``[..., c]`` (e.g. ``[K, c]``: one row per checkpoint)."""
        if self._lock_fd is None and fcntl is not None:
            raise StoreError(f"{self.directory}: store is closed")
        positions = np.asarray(positions)
        values = np.asarray(values)
        if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
            raise StoreError(f"{self.directory}: chunk {index}: positions must be 1-D integers")
        if values.ndim == 0 or values.shape[-1] != positions.shape[0]:
            raise StoreError(
                f"{self.directory}: chunk {index}: values {values.shape} do not end in "
                f"len(positions) = {positions.shape[0]}"
            )
        if not np.can_cast(values.dtype, self.dtype, "safe"):
            raise StoreError(
                f"{self.directory}: chunk {index}: values are {values.dtype}, the store holds "
                f"{self.dtype}"
            )
        data = npz_bytes(
            {
                "index": np.int64(index),
                "positions": positions.astype(np.int64),
                "values": np.ascontiguousarray(values, self.dtype),
                "meta_sha": np.str_(self.meta_sha),
            }
        )
        atomic_write_bytes(self.chunk_path(index), data)
        self._done.add(int(index))
        self.n_written += 1

    def read_chunk(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, values)`` of chunk ``index``; StoreError naming the file if unreadable."""
        path = self.chunk_path(index)
        try:
            return self._load_chunk(path, int(index))
        except _BadChunk as e:
            raise StoreError(f"{path}: {e}") from None

    def _load_chunk(self, path: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as z:
                fields = {k: z[k] for k in ("index", "positions", "values", "meta_sha")}
        except FileNotFoundError:
            raise _BadChunk("missing") from None
        except (zipfile.BadZipFile, KeyError, ValueError, EOFError, OSError) as e:
            raise _BadChunk(f"unreadable ({type(e).__name__}: {e})") from None
        if str(fields["meta_sha"]) != self.meta_sha:
            raise StoreError(
                f"{path}: was written by a store with meta_sha {str(fields['meta_sha'])[:16]}..., "
                f"not this one ({self.meta_sha[:16]}...); refusing to mix chunks of different "
                "results"
            )
        pos, vals = fields["positions"], fields["values"]
        if fields["index"].shape != () or int(fields["index"]) != index:
            raise _BadChunk(f"holds index {fields['index']}, expected {index}")
        if pos.ndim != 1 or pos.dtype != np.int64:
            raise _BadChunk(f"positions are {pos.dtype}{list(pos.shape)}, expected int64 [c]")
        if vals.dtype != self.dtype or vals.ndim == 0 or vals.shape[-1] != pos.shape[0]:
            raise _BadChunk(
                f"values are {vals.dtype}{list(vals.shape)}, expected {self.dtype} [..., "
                f"{pos.shape[0]}]"
            )
        return pos, vals

    def _scan_chunks(self) -> set[int]:
        """Valid chunk indices on disk; stale temp files are removed, damaged chunks set aside."""
        done: set[int] = set()
        if not self.chunk_dir.exists():
            return done
        for path in sorted(self.chunk_dir.iterdir()):
            m = _CHUNK_RE.match(path.name)
            if m is None:
                if path.name.startswith(".chunk_") and path.name.endswith(".tmp"):
                    # A writer killed mid-write (we hold the lock, so no one is writing now).
                    log.debug("%s: removing stale temporary file", path)
                    path.unlink(missing_ok=True)
                continue
            index = int(m.group(1))
            try:
                self._load_chunk(path, index)
            except _BadChunk as e:
                aside = path.with_name(path.name + ".corrupt")
                log.warning(
                    "%s: damaged chunk (%s); moved to %s, it will be recomputed",
                    path,
                    e,
                    aside.name,
                )
                os.replace(path, aside)
                continue
            done.add(index)
        return done

    # ---------------------------------------------------------------- results
    def assemble(self, n_events: int, n_rows: int | tuple[int, ...] | None = None) -> np.ndarray:
        """All chunks gathered into ``[*n_rows, n_events]`` (chunks of ``[*n_rows, c]`` values,
        e.g. ``[K, c]`` or ``[K, d, c]``) or ``[n_events]`` (chunks of ``[c]``), checking every
        position is covered exactly once.

        Raises:
          StoreError: positions missing (listed; the scoring run has not finished), covered twice,
            out of range, or chunks of inconsistent shapes.
        """
        if "n_events" in self.meta and int(self.meta["n_events"]) != n_events:
            raise StoreError(
                f"{self.directory}: assembling {n_events} events, the store was made for "
                f"{self.meta['n_events']}"
            )
        count = np.zeros(n_events, np.int64)
        out = None
        for index in sorted(self._done):
            pos, vals = self.read_chunk(index)
            if out is None:
                if n_rows is None:
                    n_rows = tuple(vals.shape[:-1])
                out = np.zeros((*_row_shape(n_rows), n_events), self.dtype)
            if vals.shape[:-1] != out.shape[:-1]:
                raise StoreError(
                    f"{self.chunk_path(index)}: values {list(vals.shape)} do not fit the result "
                    f"{list(out.shape)}"
                )
            if len(pos) and (pos.min() < 0 or pos.max() >= n_events):
                raise StoreError(
                    f"{self.chunk_path(index)}: positions outside [0, {n_events}): "
                    f"{pos[(pos < 0) | (pos >= n_events)][:10].tolist()}"
                )
            out[..., pos] = vals
            np.add.at(count, pos, 1)
        if out is None:
            out = np.zeros((*_row_shape(n_rows), n_events), self.dtype)
        missing = np.flatnonzero(count == 0)
        if len(missing):
            raise StoreError(
                f"{self.directory}: {len(missing)} of {n_events} positions are in no chunk "
                f"(first: {missing[:20].tolist()}); the scoring run has not finished - rerun it "
                "to resume"
            )
        twice = np.flatnonzero(count > 1)
        if len(twice):
            raise StoreError(
                f"{self.directory}: positions covered by more than one chunk: {twice[:20].tolist()}"
            )
        return out

    def finalize(self, arrays: Mapping[str, np.ndarray], *, npz: str | None = None) -> Path:
        """Writes the final arrays atomically, then ``result.json`` (written last: its presence
        means the result is complete). Each array goes to ``<key>.npy``, or all into
        ``<npz>.npz``. An array whose key ``K`` has a digest ``K_sha`` in the meta (e.g.
        ``event_ids`` / ``event_ids_sha``) must match it. Returns ``result.json``'s path."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        for key, a in arrays.items():
            want = self.meta.get(f"{key}_sha")
            if want is not None and ids_digest(a) != want:
                raise StoreError(
                    f"{self.directory}: {key} do not match the ids recorded in meta.json"
                )
            if a.dtype == object:
                raise StoreError(f"{self.directory}: {key}: object arrays are not stored")
        result_path = self.directory / "result.json"
        result_path.unlink(missing_ok=True)
        record = {}
        if npz is None:
            for key, a in arrays.items():
                atomic_write_bytes(self.directory / f"{key}.npy", _npy_bytes(a))
                record[key] = {"file": f"{key}.npy"}
        else:
            atomic_write_bytes(self.directory / f"{npz}.npz", npz_bytes(arrays))
            record = {key: {"file": f"{npz}.npz", "key": key} for key in arrays}
        for key, a in arrays.items():
            record[key].update(shape=list(a.shape), dtype=a.dtype.str, sha256=array_digest(a))
        atomic_write_json(result_path, {"meta_sha": self.meta_sha, "arrays": record})
        return result_path


def _row_shape(n_rows: int | tuple[int, ...] | None) -> tuple[int, ...]:
    if n_rows is None:
        return ()
    return (int(n_rows),) if isinstance(n_rows, int | np.integer) else tuple(n_rows)


class _BadChunk(Exception):
    """A chunk file that cannot be used (treated as not done)."""


def _lock(directory: Path) -> int | None:
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(
            f"{directory}: cannot take the store's lock {directory / '.lock'} "
            f"({e.strerror or type(e).__name__}); computing scores needs a writable directory "
            "(a finished result is read without it)"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"{directory}: in use by another process (or another open ScoreStore); one writer "
            "at a time"
        ) from None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)  # closing the descriptor drops its flock
        except OSError:
            pass


def _read_meta(directory: Path) -> dict:
    path = directory / "meta.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{directory}: not a score store (no meta.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: corrupt ({e})") from None
    if not isinstance(meta, dict) or meta.get("store_format") != STORE_FORMAT:
        raise StoreError(f"{path}: not a {STORE_FORMAT} meta file")
    return meta


class StoredResult(NamedTuple):
    """A finished result read back by :func:`read_result`: its ``meta`` and named arrays."""

    meta: dict
    arrays: dict[str, np.ndarray]


def read_result(directory: str | Path) -> StoredResult:
    """Reads a finalised store, checking each array's shape, dtype and sha256 against
    ``result.json``, ``result.json`` against ``meta.json``, and id arrays against their digests.

    Raises:
      StoreError: not finished (no ``result.json``), a file missing or changed since it was
        written (the file named), or ids that do not match the meta.
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    path = directory / "result.json"
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(
            f"{directory}: no finished result (no result.json); rerun to finish"
        ) from None
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: corrupt ({e})") from None
    if result.get("meta_sha") != _meta_sha(meta):
        raise StoreError(f"{path}: was written for another meta.json than the one beside it")
    arrays = {}
    npz_cache: dict[str, Any] = {}
    for key, rec in result["arrays"].items():
        file = directory / rec["file"]
        try:
            if "key" in rec:
                if rec["file"] not in npz_cache:
                    with np.load(file, allow_pickle=False) as z:
                        npz_cache[rec["file"]] = {k: z[k] for k in z.files}
                a = npz_cache[rec["file"]][rec["key"]]
            else:
                a = np.load(file, allow_pickle=False)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise StoreError(f"{file}: unreadable ({type(e).__name__}: {e})") from None
        if (
            list(a.shape) != rec["shape"]
            or a.dtype.str != rec["dtype"]
            or array_digest(a) != rec["sha256"]
        ):
            raise StoreError(f"{file}: {key} changed since it was written (digest mismatch)")
        want = meta.get(f"{key}_sha")
        if want is not None and ids_digest(a) != want:
            raise StoreError(f"{file}: {key} do not match the ids recorded in meta.json")
        arrays[key] = a
    return StoredResult(meta, arrays)


def read_finished(directory: str | Path, meta: Mapping[str, Any]) -> StoredResult | None:
    """The finished result in ``directory`` if it was made from ``meta`` (checked as
    :func:`read_result` does), else None. Takes no lock and writes nothing, so a finished
    result is read from a read-only directory too."""
    directory = Path(directory)
    if not (directory / "result.json").is_file():
        return None
    if meta_differences(_read_meta(directory), meta):
        return None  # ScoreStore.open names the differences
    return read_result(directory)


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
    checkpoints: what identifies the inputs, plus informational ``run_dir`` and versions."""
    import jax

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
        "versions": {"jax": jax.__version__, "numpy": np.__version__, "hepattr_jax": _version()},
    }


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("hepattr-jax")
    except Exception:  # pragma: no cover
        return "unknown"


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
) -> SelfInfluenceScores:
    """TracIn self-influence of ``run``'s ``split`` events, persisted chunk by chunk in a
    :class:`ScoreStore` at ``store_dir`` and resumed from it.

    ``per_checkpoint[k, i] = eta_k ||grad l(z_i; theta_k)||^2`` and
    ``total = per_checkpoint.sum(0)`` (:func:`hepattr_jax.tracin.self_influence`). Writes
    ``scores.npy``, ``scores_per_checkpoint.npy`` and ``event_ids.npy`` in ``store_dir``.
    Rerunning after a crash computes only the chunks not on disk; the result equals that of an
    uninterrupted run bit for bit. A finished store made from the same inputs is read back
    (:func:`read_finished`) without a lock or any write, so it may be read-only.
    """
    from hepattr_jax import tracin
    from hepattr_jax.per_example import layout_for

    gs = split_of(run, split)
    layout = layout_for(run.model, gs)
    meta = run_meta(run, "self_influence", gs, split=split, chunk_size=chunk_size, layout=layout)
    done = read_finished(store_dir, meta)
    if done is not None:
        a = done.arrays
        return SelfInfluenceScores(a["event_ids"], a["scores"], a["scores_per_checkpoint"])
    with ScoreStore.open(store_dir, meta) as store:
        tracin.self_influence(
            layout,
            run.checkpoints,
            gs,
            chunk_size=chunk_size,
            per_checkpoint=True,
            progress=progress,
            on_chunk=store.write_chunk,
            skip_chunk=store.has,
        )
        log.info(
            "%s: %d chunk(s) reused from disk, %d computed",
            store.directory,
            store.n_reused,
            store.n_written,
        )
        per_k = store.assemble(len(gs), n_rows=len(run.checkpoints))
        total = per_k.sum(0)
        ids = np.asarray(gs.events.ids, np.int64)
        store.finalize({"scores": total, "scores_per_checkpoint": per_k, "event_ids": ids})
    return SelfInfluenceScores(ids, total, per_k)


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train_ids [N], test_ids [M], influence [N, M])`` of
    :func:`hepattr_jax.tracin.influence_matrix`, saved in a store at ``store_dir`` as
    ``influence.npy``, ``event_ids.npy`` (rows, train) and ``test_event_ids.npy`` (columns)."""
    from hepattr_jax import tracin
    from hepattr_jax.per_example import layout_for

    train, test = split_of(run, "train"), split_of(run, test_split)
    layout = layout_for(run.model, train)
    test_block = test_block or tracin.default_test_block(run.checkpoints)
    meta = _train_test_meta(run, "influence_matrix", test_split, chunk_size, test_block, layout)
    with ScoreStore.open(store_dir, meta) as store:
        m = tracin.influence_matrix(
            layout,
            run.checkpoints,
            train,
            test,
            chunk_size=chunk_size,
            test_block=test_block,
            progress=progress,
        )
        ids, test_ids = train.events.ids.astype(np.int64), test.events.ids.astype(np.int64)
        store.finalize({"influence": m, "event_ids": ids, "test_event_ids": test_ids})
    return ids, test_ids, m


def scored_top_k(
    run: Run,
    store_dir: str | Path,
    k: int,
    *,
    test_split: str = "test",
    chunk_size: int = 64,
    test_block: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Top-``k`` proponents and opponents (:func:`hepattr_jax.tracin.top_k`) of every
    ``test_split`` event, as train *event ids* and scores, saved as ``topk.npz`` in a store:
    ``test_event_ids [M]``, ``proponent_ids``/``opponent_ids`` int64 ``[M, k]`` and
    ``proponent_scores``/``opponent_scores`` float64 ``[M, k]``, strongest first."""
    from hepattr_jax import tracin
    from hepattr_jax.per_example import layout_for

    train, test = split_of(run, "train"), split_of(run, test_split)
    layout = layout_for(run.model, train)
    test_block = test_block or tracin.default_test_block(run.checkpoints)
    k = min(int(k), len(train))
    meta = _train_test_meta(run, "top_k", test_split, chunk_size, test_block, layout, k=k)
    with ScoreStore.open(store_dir, meta) as store:
        tk = tracin.top_k(
            layout,
            run.checkpoints,
            train,
            test,
            k,
            chunk_size=chunk_size,
            test_block=test_block,
            progress=progress,
        )
        train_ids = train.events.ids.astype(np.int64)
        arrays = {
            "test_event_ids": test.events.ids.astype(np.int64),
            "proponent_ids": train_ids[tk.proponents],
            "proponent_scores": tk.proponent_scores,
            "opponent_ids": train_ids[tk.opponents],
            "opponent_scores": tk.opponent_scores,
        }
        store.finalize(arrays, npz="topk")
    return arrays


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [N], features [K, N, d], margins [K, N])``: TRAK features
    (:func:`hepattr_jax.trak.featurize`) of ``run``'s ``split`` events at its ``"last"`` or
    ``"all"`` checkpoints, persisted chunk by chunk (resumable) in a :class:`ScoreStore` whose
    meta records the run, checkpoints, projection and settings. Writes ``features.npy``,
    ``margins.npy`` and ``event_ids.npy``."""
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
    with ScoreStore.open(store_dir, meta) as store:
        trak.featurize(
            layout,
            ck,
            gs,
            projector,
            chunk_size=chunk_size,
            progress=progress,
            on_chunk=store.write_chunk,
            skip_chunk=store.has,
        )
        both = store.assemble(len(gs), n_rows=(len(ck), d + 1))
        features = np.ascontiguousarray(both[:, :d].transpose(0, 2, 1))
        margins = both[:, d]
        ids = np.asarray(gs.events.ids, np.int64)
        store.finalize({"features": features, "margins": margins, "event_ids": ids})
    return ids, features, margins


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
) -> dict[str, np.ndarray]:
    """TRAK scores of every train event on every ``test_split`` event, ensembled over ``runs``
    (each contributing its ``"last"`` or ``"all"`` checkpoints), and TRAK self-influence.

    Features of each run and split go to ``store_dir/features/run<i>_<split>`` (resumable
    stores); the result, ``store_dir`` itself, holds ``scores.npy`` ``[N, M]``,
    ``self_influence.npy`` ``[N]``, ``event_ids.npy`` and ``test_event_ids.npy``, with a meta
    naming every member's checkpoints, the projection and ``damping``.
    """
    import jax

    from hepattr_jax import trak
    from hepattr_jax.errors import ConfigError

    if not runs:
        raise ConfigError("scored_trak: no runs")
    store_dir = Path(store_dir)
    train0, test0 = split_of(runs[0], "train"), split_of(runs[0], test_split)
    parts_tr, parts_te = [], []
    for i, run in enumerate(runs):
        for split, ref, parts in (("train", train0, parts_tr), (test_split, test0, parts_te)):
            gs = split_of(run, split)
            if not np.array_equal(gs.events.ids, ref.events.ids):
                raise ConfigError(
                    f"{run.run_dir}: its {split} events differ from those of {runs[0].run_dir}; "
                    "ensemble members must be trained on the same data"
                )
            _, f, m = scored_trak_features(
                run,
                store_dir / "features" / f"run{i}_{split}",
                projector,
                split=split,
                checkpoints=checkpoints,
                chunk_size=chunk_size,
                progress=progress,
            )
            parts.append((f, m))
    ftr, mtr = trak.stack_members(parts_tr)
    fte, _ = trak.stack_members(parts_te)
    members = []
    for run in runs:
        ck = _select_checkpoints(run.checkpoints, checkpoints)
        members.append(
            {
                "config_fingerprint": run.config.fingerprint(),
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
        "versions": {"jax": jax.__version__, "numpy": np.__version__, "hepattr_jax": _version()},
    }
    with ScoreStore.open(store_dir, meta) as store:
        factors = trak.gram_factors(ftr, damping=damping)  # shared by both results
        arrays = {
            "scores": trak.trak_scores(ftr, mtr, fte, damping=damping, factors=factors),
            "self_influence": trak.trak_self_influence(ftr, mtr, damping=damping, factors=factors),
            "event_ids": train0.events.ids.astype(np.int64),
            "test_event_ids": test0.events.ids.astype(np.int64),
        }
        store.finalize(arrays)
    return arrays
