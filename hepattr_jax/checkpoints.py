"""Training checkpoints on disk, with the learning rate of each step beside it (for TracIn).

TracIn sums over checkpoints ``k`` the term ``lr_k * <grad l(z, w_k), grad l(z', w_k)>``, so it
needs every checkpoint ``w_k`` and the learning rate ``lr_k`` the schedule actually used at that
step. A :class:`CheckpointStore` keeps all of them (orbax ``max_to_keep=None``) and checks,
when a checkpoint is read back, that it is the one that was written:

Layout (orbax-checkpoint 0.12, one directory per step)::

    <directory>/<step>/state/   the state pytree (orbax StandardSave: OCDBT/zarr, zstd)
    <directory>/<step>/meta/    JSON: step, epoch, lr, fingerprints, hashes, leaf manifest, extra

The meta JSON (``FORMAT = 2``) holds:

* ``step``, ``epoch``, ``lr``: the optimizer step, the epoch and the learning rate used there.
* ``lr_hash``: :func:`lr_hash` of step, epoch, lr and the two state hashes below: TracIn weighs
  each checkpoint by its ``lr``, so an edited ``lr`` (which no array hash covers) is refused
  when the meta is read, like corrupt arrays are. Format-1 checkpoints (written before this
  key existed) are still read, with a warning that their ``lr`` is unchecked.
* ``config_fingerprint``, ``data_fingerprint``: who made it. A store opened with fingerprints
  refuses (``CheckpointError``) to read or add checkpoints made with other ones, so two runs
  never mix; open with ``None`` fingerprints to read anything (then ``save`` is refused).
  Fingerprints are checked by ``restore*``, ``load_all`` and ``save``, not by ``meta``.
* ``params_hash``: :func:`tree_hash` of the parameters, i.e. of ``state["params"]`` when the
  state is a mapping with a ``"params"`` key (or of ``state.params`` when it has that
  attribute, e.g. a flax ``TrainState``), else of the whole state. Score stores can record it
  to name the exact weights they were computed from.
* ``state_hash``: :func:`tree_hash` of the whole state (catches corruption of optimizer state).
* ``leaves``: ``[path, shape, dtype, is_python_scalar]`` of every leaf, to refuse a target of
  another structure, shape or dtype *before* orbax sees it: orbax 0.12.8 silently casts to
  the target's dtype (float32 -> bfloat16, int -> float) and does not checksum the array data
  (a flipped byte restores as wrong numbers), so both hashes are checked after every restore.
* ``extra``: any JSON object the caller adds (``None`` if not given).

Every failure to read (missing directory or step, deleted/truncated/corrupt files, garbage
JSON, wrong target) raises :class:`~hepattr_jax.errors.CheckpointError` naming the directory and
step; errors from orbax/tensorstore are chained (``raise ... from e``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hepattr_jax.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "CheckpointStore", "lr_hash", "params_subtree", "tree_hash", "tree_manifest"]

FORMAT = 2
_READABLE_FORMATS = (1, 2)
_META_KEYS = (
    "format",
    "step",
    "epoch",
    "lr",
    "config_fingerprint",
    "data_fingerprint",
    "params_hash",
    "state_hash",
    "leaves",
    "extra",
)
_PY_SCALARS = (bool, int, float, complex)
_MAX_MSG = 600  # orbax/tensorstore messages can be many kB (full tensorstore specs)


def _leaf_array(x: Any) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return np.asarray(jax.device_get(x), order="C")


def tree_hash(tree: Any) -> str:
    """SHA-256 hex digest of a pytree's leaves, in ``jax.tree_util`` leaf order.

    For each leaf (converted with ``np.asarray``; a Python int counts as int64, a float as
    float64) the hash takes its dtype name, its shape and its C-order bytes, so two trees agree
    only if every leaf agrees bitwise in dtype, shape and value (NaNs with equal bit patterns
    agree; +0.0 and -0.0 differ). The container types and key names are not hashed; compare
    :func:`tree_manifest` for those.
    """
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = _leaf_array(leaf)
        h.update(f"{a.dtype.name}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def lr_hash(step: int, epoch: int, lr: float, params_hash: str, state_hash: str) -> str:
    """SHA-256 hex digest binding a checkpoint's learning rate (TracIn's weight ``lr_k``) to
    its step, epoch and state: ``sha256(json([step, epoch, repr(lr), params_hash,
    state_hash]))`` (``repr`` keeps every bit of the float)."""
    payload = json.dumps([int(step), int(epoch), repr(float(lr)), params_hash, state_hash])
    return hashlib.sha256(payload.encode()).hexdigest()


def params_subtree(state: Any) -> Any:
    """The parameters inside a training state: ``state["params"]`` for a mapping that has it,
    ``state.params`` for an object that has it (flax ``TrainState``), else ``state`` itself."""
    if isinstance(state, Mapping):
        return state["params"] if "params" in state else state
    params = getattr(state, "params", None)
    return state if params is None else params


def _leaf_spec(x: Any) -> list:
    """``[shape, dtype name, is_python_scalar]`` of an array, ShapeDtypeStruct or scalar."""
    if isinstance(x, _PY_SCALARS):
        return [[], np.asarray(x).dtype.name, True]
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return [[int(d) for d in x.shape], np.dtype(x.dtype).name, False]
    a = np.asarray(x)
    return [list(a.shape), a.dtype.name, False]


def tree_manifest(tree: Any) -> list[list]:
    """``[[path, shape, dtype, is_python_scalar], ...]`` for each leaf, in leaf order.

    ``path`` is ``jax.tree_util.keystr`` of the leaf's key path (e.g. ``"['params']['w']"``).
    Works on concrete trees and on abstract ones (``jax.ShapeDtypeStruct`` leaves).
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [[jax.tree_util.keystr(p), *_leaf_spec(x)] for p, x in flat]


def _describe(spec: list) -> str:
    shape, dtype, is_py = spec
    if is_py:
        return f"Python {np.dtype(dtype).kind}-scalar ({dtype})"
    return f"{dtype}{tuple(shape)}"


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    if len(msg) > _MAX_MSG:
        msg = msg[:_MAX_MSG] + " ..."
    return f"{type(e).__name__}: {msg}"


def _json_ready(obj: Any, where: str) -> Any:
    """A JSON round trip of ``obj`` (NumPy scalars/arrays become numbers/lists), or ValueError."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic | np.ndarray):
            return o.tolist()
        if hasattr(o, "__jax_array__") or isinstance(o, jax.Array):
            return np.asarray(o).tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")

    try:
        return json.loads(json.dumps(obj, default=default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where} must be JSON serialisable (finite numbers): {e}") from e


def _fsync_tree(path: Path) -> None:
    """fsyncs every file and directory under ``path``, then ``path``'s parent directory."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """All checkpoints of one training run, each with its step, epoch and learning rate.

    Args:
      directory: where the step directories live.
      config_fingerprint, data_fingerprint: identify the run's configuration and training data
        (strings, e.g. hashes). A store refuses to read or add checkpoints whose fingerprints
        differ. ``None`` skips that fingerprint's check when reading; a store with a ``None``
        fingerprint is read-only (``save`` needs both).
      create: create ``directory`` if missing; with ``create=False`` a missing directory is a
        ``CheckpointError``.

    Saving is synchronous (orbax ``enable_async_checkpointing=False``): ``save`` returns once
    the checkpoint is finalised (orbax writes into a temporary directory and renames it) and
    fsynced, so a crash after ``save`` returns does not lose it, and a crash during ``save``
    leaves only a temporary directory that ``steps()`` does not list. Asynchronous saving would
    buy nothing here because ``save`` has to wait for completion anyway.

    Use as a context manager, or call :meth:`close`, to stop orbax's background threads.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        config_fingerprint: str | None,
        data_fingerprint: str | None,
        create: bool = True,
    ) -> None:
        for name, fp in (("config", config_fingerprint), ("data", data_fingerprint)):
            if fp is not None and (not isinstance(fp, str) or not fp):
                raise ValueError(f"{name}_fingerprint must be a non-empty string or None")
        self._dir = Path(directory).absolute()
        self._warned_format1 = False
        self.config_fingerprint = config_fingerprint
        self.data_fingerprint = data_fingerprint
        if not create and not self._dir.is_dir():
            raise CheckpointError(f"checkpoint directory {self._dir} does not exist")
        if self._dir.exists() and not self._dir.is_dir():
            raise CheckpointError(f"checkpoint directory {self._dir} is not a directory")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None,  # keep every checkpoint: TracIn needs them all
            create=create,
            enable_async_checkpointing=False,
        )
        try:
            self._mgr = ocp.CheckpointManager(self._dir, options=options)
        except Exception as e:
            raise CheckpointError(
                f"cannot open checkpoint directory {self._dir}: {_short(e)}"
            ) from e

    # ----------------------------------------------------------------------------------- basics
    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def read_only(self) -> bool:
        """True when opened without fingerprints: reads skip the check, ``save`` is refused."""
        return self.config_fingerprint is None or self.data_fingerprint is None

    def close(self) -> None:
        self._mgr.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self._dir)!r}, read_only={self.read_only})"

    def steps(self) -> list[int]:
        """Steps of all finalised checkpoints, increasing (re-read from disk on each call)."""
        if not self._dir.is_dir():
            raise CheckpointError(f"checkpoint directory {self._dir} does not exist")
        try:
            self._mgr.reload()
            return sorted(int(s) for s in self._mgr.all_steps())
        except Exception as e:
            raise CheckpointError(f"cannot list checkpoints in {self._dir}: {_short(e)}") from e

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def _where(self, step: int) -> str:
        return f"checkpoint {self._dir} step {step}"

    def _require_step(self, step: int) -> None:
        if not isinstance(step, int | np.integer) or isinstance(step, bool):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        steps = self.steps()
        if int(step) not in steps:
            shown = steps if len(steps) <= 20 else [*steps[:10], "...", *steps[-10:]]
            raise CheckpointError(
                f"{self._where(step)}: no such checkpoint (available steps: {shown})"
            )

    # ------------------------------------------------------------------------------------ save
    def save(
        self,
        step: int,
        state: Any,
        *,
        lr: float,
        epoch: int,
        extra: dict | None = None,
    ) -> None:
        """Writes the checkpoint of ``step`` and returns once it is complete on disk.

        Args:
          step: optimizer step (int >= 0), larger than every step already saved (orbax
            silently skips a step at or below the latest one; this raises instead).
          state: the pytree to save (params, optimizer state, counters...). Leaves: arrays
            (jax or NumPy) or Python scalars.
          lr: the learning rate the schedule actually used at this step (finite, >= 0).
          epoch: the epoch the step belongs to (int >= 0).
          extra: optional JSON object stored in the meta (NumPy scalars are converted).
        """
        if self.read_only:
            raise CheckpointError(
                f"{self._where(step)}: store opened without fingerprints (read-only); "
                "saving needs config_fingerprint and data_fingerprint"
            )
        if not isinstance(step, int | np.integer) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if not isinstance(epoch, int | np.integer) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        step, epoch = int(step), int(epoch)
        try:
            lr = float(lr)
        except (TypeError, ValueError) as e:
            raise ValueError(f"lr must be a number, got {lr!r}") from e
        if not math.isfinite(lr) or lr < 0:
            raise ValueError(f"lr must be finite and >= 0, got {lr}")
        if extra is not None and not isinstance(extra, Mapping):
            raise ValueError(f"extra must be a dict or None, got {type(extra).__name__}")
        extra = None if extra is None else _json_ready(dict(extra), "extra")

        latest = self.latest_step()
        if latest is not None:
            if step <= latest:
                raise CheckpointError(
                    f"{self._where(step)}: cannot save, step must exceed the latest saved "
                    f"step {latest}"
                )
            # Refuse to mix runs: the latest checkpoint must come from the same config/data
            # (each save checks this, so by induction all earlier ones do too).
            self._check_fingerprints(self._read_meta(latest), latest)

        meta: dict[str, Any] = {
            "format": FORMAT,
            "step": step,
            "epoch": epoch,
            "lr": lr,
            "config_fingerprint": self.config_fingerprint,
            "data_fingerprint": self.data_fingerprint,
            "params_hash": tree_hash(params_subtree(state)),
            "state_hash": tree_hash(state),
            "leaves": tree_manifest(state),
            "extra": extra,
        }
        meta["lr_hash"] = lr_hash(step, epoch, lr, meta["params_hash"], meta["state_hash"])
        meta = _json_ready(meta, "checkpoint meta")
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        try:
            saved = self._mgr.save(step, args=args)
            self._mgr.wait_until_finished()
        except Exception as e:
            raise CheckpointError(f"{self._where(step)}: save failed: {_short(e)}") from e
        step_dir = self._dir / str(step)
        if not saved or not step_dir.is_dir():
            raise CheckpointError(f"{self._where(step)}: orbax did not write the checkpoint")
        _fsync_tree(step_dir)

    # ------------------------------------------------------------------------------------ read
    def meta(self, step: int) -> dict:
        """The meta dict of ``step``, schema-checked (fingerprints are not compared here)."""
        self._require_step(step)
        return self._read_meta(int(step))

    def _read_meta(self, step: int) -> dict:
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            meta = out["meta"]
        except Exception as e:
            raise CheckpointError(
                f"{self._where(step)}: meta JSON is missing or corrupt: {_short(e)}"
            ) from e
        self._check_meta_schema(meta, step)
        return meta

    def lrs(self) -> list[tuple[int, float]]:
        """``[(step, lr), ...]`` for every checkpoint, in step order, from the meta alone."""
        return [(s, float(self._read_meta(s)["lr"])) for s in self.steps()]

    def restore(self, step: int, target: Any) -> Any:
        """The state saved at ``step``; see :meth:`restore_with_meta`."""
        return self.restore_with_meta(step, target)[0]

    def restore_with_meta(self, step: int, target: Any) -> tuple[Any, dict]:
        """``(state, meta)`` of ``step``, checked against the target and the saved hashes.

        ``target`` gives the structure, shapes and dtypes (a state of the same run, or its
        ``jax.eval_shape``); it must match the saved leaves exactly (same key paths, shapes,
        dtypes, and Python scalars where Python scalars were saved), or ``CheckpointError``
        names the first leaf that differs. The restored leaves have the target's types
        (jax arrays for jax/ShapeDtypeStruct leaves, NumPy arrays for NumPy leaves).
        """
        self._require_step(step)
        return self._restore(int(step), target)

    def _restore(self, step: int, target: Any) -> tuple[Any, dict]:
        meta = self._read_meta(step)
        self._check_fingerprints(meta, step)
        want = tree_manifest(target)
        self._compare_manifest(meta["leaves"], want, step, "the checkpoint", "the target")
        try:
            out = self._mgr.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(target)),
            )
            state = out["state"]
        except Exception as e:
            raise CheckpointError(
                f"{self._where(step)}: state is missing, truncated or corrupt, or does not "
                f"match the target: {_short(e)}"
            ) from e
        got = tree_manifest(state)
        self._compare_manifest(want, got, step, "the target", "the restored state")
        if tree_hash(params_subtree(state)) != meta["params_hash"]:
            raise CheckpointError(
                f"{self._where(step)}: params_hash mismatch, the parameter arrays on disk are "
                "corrupt (restored bytes differ from those saved)"
            )
        if tree_hash(state) != meta["state_hash"]:
            raise CheckpointError(
                f"{self._where(step)}: state_hash mismatch, the state arrays on disk are "
                "corrupt (restored bytes differ from those saved)"
            )
        return state, meta

    def load_all(self, target: Any) -> list[tuple[int, float, Any]]:
        """``[(step, lr, state), ...]`` for every checkpoint, in step order: TracIn's input."""
        out = []
        for step in self.steps():
            state, meta = self._restore(step, target)
            out.append((step, float(meta["lr"]), state))
        return out

    # ---------------------------------------------------------------------------------- checks
    def _check_meta_schema(self, meta: Any, step: int) -> None:
        where = self._where(step)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{where}: meta is {type(meta).__name__}, not a JSON object")
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise CheckpointError(f"{where}: meta lacks keys {missing}")
        if meta["format"] not in _READABLE_FORMATS:
            raise CheckpointError(
                f"{where}: meta format {meta['format']!r}, expected one of {_READABLE_FORMATS}"
            )
        if meta["step"] != step or isinstance(meta["step"], bool):
            raise CheckpointError(f"{where}: meta says step {meta['step']!r}")
        lr = meta["lr"]
        if not isinstance(lr, int | float) or isinstance(lr, bool) or not math.isfinite(lr):
            raise CheckpointError(f"{where}: meta lr {lr!r} is not a finite number")
        if not isinstance(meta["epoch"], int) or isinstance(meta["epoch"], bool):
            raise CheckpointError(f"{where}: meta epoch {meta['epoch']!r} is not an int")
        for key in ("params_hash", "state_hash"):
            v = meta[key]
            if not (isinstance(v, str) and re.fullmatch("[0-9a-f]{64}", v)):
                raise CheckpointError(f"{where}: meta {key} {v!r} is not a sha256 hex digest")
        if meta["format"] >= 2:
            want = lr_hash(meta["step"], meta["epoch"], lr, meta["params_hash"], meta["state_hash"])
            if meta.get("lr_hash") != want:
                raise CheckpointError(
                    f"{where}: lr_hash mismatch: the meta's lr ({lr!r}), step or epoch was "
                    "changed after the checkpoint was written (TracIn weighs each checkpoint by "
                    "its lr, so an edited lr would scale every score)"
                )
        elif not self._warned_format1:
            self._warned_format1 = True
            log.warning(
                "%s: format-1 checkpoint (written by an older version): its lr is not covered "
                "by a hash; retrain to get checked learning rates",
                where,
            )
        leaves = meta["leaves"]
        ok = isinstance(leaves, list) and all(
            isinstance(e, list)
            and len(e) == 4
            and isinstance(e[0], str)
            and isinstance(e[1], list)
            and isinstance(e[2], str)
            and isinstance(e[3], bool)
            for e in leaves
        )
        if not ok:
            raise CheckpointError(f"{where}: meta leaves manifest is malformed")

    def _check_fingerprints(self, meta: dict, step: int) -> None:
        for name, mine in (
            ("config_fingerprint", self.config_fingerprint),
            ("data_fingerprint", self.data_fingerprint),
        ):
            if mine is not None and meta[name] != mine:
                raise CheckpointError(
                    f"{self._where(step)}: {name} differs: checkpoint has {meta[name]!r}, "
                    f"this store was opened with {mine!r} (a different run)"
                )

    def _compare_manifest(self, a: list, b: list, step: int, a_name: str, b_name: str) -> None:
        """Raises CheckpointError at the first difference of two :func:`tree_manifest` lists."""
        where = self._where(step)
        a_paths = [e[0] for e in a]
        b_paths = [e[0] for e in b]
        if a_paths != b_paths:
            a_set, b_set = set(a_paths), set(b_paths)
            only_a = [p for p in a_paths if p not in b_set]
            only_b = [p for p in b_paths if p not in a_set]
            raise CheckpointError(
                f"{where}: tree structures of {a_name} and {b_name} differ: leaves only in "
                f"{a_name} {only_a[:5]}, only in {b_name} {only_b[:5]}"
                + ("" if only_a or only_b else " (same leaves, different order)")
            )
        for (path, *spec_a), (_, *spec_b) in zip(a, b, strict=True):
            if [list(spec_a[0]), *spec_a[1:]] != [list(spec_b[0]), *spec_b[1:]]:
                raise CheckpointError(
                    f"{where}: leaf {path} is {_describe(spec_a)} in {a_name} but "
                    f"{_describe(spec_b)} in {b_name}"
                )
