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
:class:`~hepattr_jax.errors.StoreError` naming the directory and every differing key (a dict value
by sub-key, e.g. ``environment.jax``), so chunks of two runs are never mixed.

Environment. ``meta["environment"]`` (:func:`hepattr_jax.environment.compute_environment`: JAX
backend, device kind, jax and jaxlib versions) is compared like any other key: chunks computed
under another backend or jax release are not mixed into a resumed result by default. Opening with
``allow_environment_change=True`` (CLI: ``--allow-environment-change``) accepts a differing
environment, and records the mix: the new environment is appended to
``meta["environment_changes"]`` in ``meta.json`` (the stored ``environment`` stays the first
one). ``environment_changes`` is a record, not an input: it is neither compared nor part of the
``meta_sha`` chunks and ``result.json`` carry.

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

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hepattr_jax.errors import StoreError
from hepattr_jax.io_utils import (
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
    json_default,
    npz_bytes,
)

try:  # POSIX advisory locks; elsewhere the store runs unlocked.
    import fcntl

    _HAS_FCNTL = True
except ImportError:  # pragma: no cover
    _HAS_FCNTL = False

log = logging.getLogger(__name__)

STORE_FORMAT = "hepattr-score-store/1"
#: Recorded in ``meta.json`` but not compared on reopen: they do not change the numbers (a moved
#: run directory has the same checkpoint and data hashes).
INFO_KEYS = frozenset({"run_dir", "versions"})
#: Where an allowed environment change is recorded (see the module docstring); neither compared
#: nor hashed into ``meta_sha``.
ENV_KEY, ENV_CHANGES_KEY = "environment", "environment_changes"
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
    hashed = {k: v for k, v in _canonical(meta).items() if k != ENV_CHANGES_KEY}
    text = json.dumps(hashed, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def _short(value: Any, limit: int = 160) -> str:
    s = json.dumps(value, default=json_default)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def meta_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key: stored X vs now Y"`` for every compared key that differs (sorted by key); a key
    whose values are both dicts is compared by sub-key (``"environment.jax: stored ..."``)."""
    a, b = _canonical(stored), _canonical(new)
    out = []
    for key in sorted((set(a) | set(b)) - INFO_KEYS - {"store_format", ENV_CHANGES_KEY}):
        old, now = a.get(key, "<absent>"), b.get(key, "<absent>")
        if old == now:
            continue
        if isinstance(old, dict) and isinstance(now, dict):
            for sub in sorted(set(old) | set(now)):
                o, n = old.get(sub, "<absent>"), now.get(sub, "<absent>")
                if o != n:
                    out.append(f"{key}.{sub}: stored {_short(o)} vs now {_short(n)}")
        else:
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
    def open(
        cls,
        directory: str | Path,
        meta: Mapping[str, Any],
        *,
        allow_environment_change: bool = False,
    ) -> ScoreStore:
        """Creates the store, or reopens it after checking ``meta`` against the stored one.

        ``allow_environment_change``: accept a stored ``environment`` (backend, device kind,
        jax/jaxlib versions) other than ``meta``'s and record the new one in ``meta.json``'s
        ``environment_changes`` (see the module docstring); every other key must still match.

        Raises:
          StoreError: the directory holds another result (each differing key named, old vs new),
            was made in another environment (unless allowed), has chunks but no ``meta.json``,
            has an unreadable ``meta.json``, is locked by another process, or a chunk carries
            another store's ``meta_sha``.
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
                env_diffs = [d for d in diffs if re.match(rf"{ENV_KEY}[.:]", d)]
                others = [d for d in diffs if d not in env_diffs]
                if env_diffs and not others:
                    if not allow_environment_change:
                        raise StoreError(
                            f"{directory}: holds chunks computed in another environment; refusing "
                            f"to mix them. Differing: {'; '.join(env_diffs)}. Rerun where it was "
                            "made, use another output directory, or accept the mix with "
                            "--allow-environment-change (ScoreStore.open(..., "
                            "allow_environment_change=True)), which records it in meta.json."
                        )
                    log.warning(
                        "%s: resuming in another environment (%s); recorded in meta.json %s",
                        directory,
                        "; ".join(env_diffs),
                        ENV_CHANGES_KEY,
                    )
                    changes = list(stored.get(ENV_CHANGES_KEY, []))
                    if new.get(ENV_KEY) not in changes:
                        changes.append(new.get(ENV_KEY))
                    stored = {**stored, ENV_CHANGES_KEY: changes}
                    atomic_write_json(meta_path, stored)
                    diffs = []
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

    @classmethod
    def reader(cls, directory: str | Path) -> ScoreStore:
        """The store at ``directory`` for reading chunks only (:meth:`read_chunk`): no lock
        taken, nothing written (it may be read-only or another process's); writing raises."""
        directory = Path(directory)
        return cls(directory, _read_meta(directory), None, set())

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

    def write_chunk(
        self, index: int, positions: np.ndarray, values: np.ndarray, *, total: bool = False
    ) -> None:
        """Writes chunk ``index`` atomically: ``positions`` int ``[c]`` into the scored set and
        ``values`` ``[..., c]`` (e.g. ``[K, c]``: one row per checkpoint), or with ``total`` a
        sum over the chunk's events of any shape (statistics accumulated in one pass:
        :meth:`sum_totals` adds them up)."""
        if self._lock_fd is None and _HAS_FCNTL:
            raise StoreError(f"{self.directory}: store is closed")
        positions = np.asarray(positions)
        values = np.asarray(values)
        if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
            raise StoreError(f"{self.directory}: chunk {index}: positions must be 1-D integers")
        if not total and (values.ndim == 0 or values.shape[-1] != positions.shape[0]):
            raise StoreError(
                f"{self.directory}: chunk {index}: values {values.shape} do not end in "
                f"len(positions) = {positions.shape[0]}"
            )
        if not np.can_cast(values.dtype, self.dtype, "safe"):
            raise StoreError(
                f"{self.directory}: chunk {index}: values are {values.dtype}, the store holds "
                f"{self.dtype}"
            )
        fields = {
            "index": np.int64(index),
            "positions": positions.astype(np.int64),
            "values": np.ascontiguousarray(values, self.dtype),
            "meta_sha": np.str_(self.meta_sha),
        }
        if total:
            fields["total"] = np.bool_(True)
        data = npz_bytes(fields)
        atomic_write_bytes(self.chunk_path(index), data)
        self._done.add(int(index))
        self.n_written += 1

    def read_chunk(self, index: int, *, total: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, values)`` of chunk ``index``; StoreError naming the file if unreadable,
        or if it is a chunk total (:meth:`write_chunk`) where per-event values were expected,
        or the other way round (``total``)."""
        pos, vals, is_total = self.read_chunk_entry(index)
        if is_total != total:
            what = ("per-event values", "a chunk total")
            raise StoreError(
                f"{self.chunk_path(index)}: holds {what[is_total]}, expected {what[total]}"
            )
        return pos, vals

    def read_chunk_entry(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(positions, values, total)`` of chunk ``index`` whichever kind it is (what copying
        chunks between stores needs); StoreError naming the file if unreadable."""
        path = self.chunk_path(index)
        try:
            return self._load_chunk(path, int(index))
        except _BadChunk as e:
            raise StoreError(f"{path}: {e}") from None

    def _load_chunk(self, path: Path, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        try:
            with np.load(path, allow_pickle=False) as z:
                fields = {k: z[k] for k in ("index", "positions", "values", "meta_sha")}
                is_total = bool(z["total"]) if "total" in z.files else False
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
        if vals.dtype != self.dtype or (
            not is_total and (vals.ndim == 0 or vals.shape[-1] != pos.shape[0])
        ):
            raise _BadChunk(
                f"values are {vals.dtype}{list(vals.shape)}, expected {self.dtype} [..., "
                f"{pos.shape[0]}]"
            )
        return pos, vals, is_total

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
        count = self._coverage_start(n_events)
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
            self._cover(index, pos, count)
            out[..., pos] = vals
        if out is None:
            out = np.zeros((*_row_shape(n_rows), n_events), self.dtype)
        self._check_coverage(count)
        return out

    def sum_totals(self, n_events: int) -> np.ndarray:
        """The sum of every chunk total (:meth:`write_chunk` with ``total``), added in chunk
        order (so a resumed result equals an uninterrupted one bit for bit), checking that every
        position is covered exactly once.

        Raises:
          StoreError: as :meth:`assemble`, or a chunk of per-event values among the totals.
        """
        count = self._coverage_start(n_events)
        out = None
        for index in sorted(self._done):
            pos, vals = self.read_chunk(index, total=True)
            if out is not None and vals.shape != out.shape:
                raise StoreError(
                    f"{self.chunk_path(index)}: total {list(vals.shape)} does not match the "
                    f"others {list(out.shape)}"
                )
            self._cover(index, pos, count)
            out = vals.copy() if out is None else out + vals
        self._check_coverage(count)
        if out is None:  # no events at all: nothing was summed
            raise StoreError(f"{self.directory}: no chunk totals to sum")
        return out

    # The coverage bookkeeping :meth:`assemble` and :meth:`sum_totals` share.
    def _coverage_start(self, n_events: int) -> np.ndarray:
        if "n_events" in self.meta and int(self.meta["n_events"]) != n_events:
            raise StoreError(
                f"{self.directory}: assembling {n_events} events, the store was made for "
                f"{self.meta['n_events']}"
            )
        return np.zeros(n_events, np.int64)

    def _cover(self, index: int, pos: np.ndarray, count: np.ndarray) -> None:
        n_events = len(count)
        if len(pos) and (pos.min() < 0 or pos.max() >= n_events):
            raise StoreError(
                f"{self.chunk_path(index)}: positions outside [0, {n_events}): "
                f"{pos[(pos < 0) | (pos >= n_events)][:10].tolist()}"
            )
        np.add.at(count, pos, 1)

    def _check_coverage(self, count: np.ndarray) -> None:
        missing = np.flatnonzero(count == 0)
        if len(missing):
            raise StoreError(
                f"{self.directory}: {len(missing)} of {len(count)} positions are in no chunk "
                f"(first: {missing[:20].tolist()}); the scoring run has not finished - rerun it "
                "to resume"
            )
        twice = np.flatnonzero(count > 1)
        if len(twice):
            raise StoreError(
                f"{self.directory}: positions covered by more than one chunk: {twice[:20].tolist()}"
            )

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
        record: dict[str, dict[str, Any]] = {}
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


def _lock(directory: Path, name: str = ".lock", *, wait: bool = False) -> int | None:
    """An exclusive flock on ``directory/name``: a store's (``.lock``, refused at once when
    held) or any other lock file of it (``wait``: until the holder lets go)."""
    if not _HAS_FCNTL:  # pragma: no cover
        return None
    path = directory / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StoreError(
            f"{directory}: cannot take the store's lock {path} "
            f"({e.strerror or type(e).__name__}); computing scores needs a writable directory "
            "(a finished result is read without it)"
        ) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(
            f"{directory}: in use by another process (or another open ScoreStore); one writer "
            "at a time"
        ) from None
    return fd


@contextlib.contextmanager
def held_lock(directory: str | Path, name: str) -> Iterator[None]:
    """``directory/name`` flocked for the block; a process that finds it held waits its turn."""
    fd = _lock(Path(directory), name, wait=True)
    try:
        yield
    finally:
        _unlock(fd)


def _unlock(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)  # closing the descriptor drops its flock
        except OSError:
            pass


def read_store_meta(directory: str | Path) -> dict:
    """The ``meta.json`` of the store at ``directory``, checked to be a score store's."""
    return _read_meta(Path(directory))


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
