"""Small file helpers: atomic writes, so a crash never leaves a half-written file behind.

Files are created with mode ``0666 & ~umask`` (0644 under the usual umask 022), like ``open``
would, not the 0600 of ``tempfile.mkstemp``: other users of a shared machine can read a run.
Any ``OSError`` (no permission, read-only file system, full disk) becomes a
:class:`~hepattr_jax.errors.WriteError` naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hepattr_jax.errors import WriteError


def umask() -> int:
    """The process's file mode creation mask (read without changing it where /proc allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def write_error(path: str | Path, e: OSError, what: str = "cannot write") -> WriteError:
    """A :class:`WriteError` naming ``path`` and the reason (to ``raise ... from e``)."""
    reason = e.strerror or type(e).__name__
    if getattr(e, "errno", None) == errno.ENOSPC:
        reason += " (the disk is full)"
    elif isinstance(e, PermissionError) or getattr(e, "errno", None) == errno.EROFS:
        reason += " (check the permissions of the directory, or choose another one)"
    return WriteError(f"{what} {path}: {reason}")


def ensure_dir(path: str | Path) -> Path:
    """``mkdir -p path``; :class:`WriteError` naming the path if it cannot be made."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e, "cannot create directory") from e
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to a temporary file beside ``path``, fsyncs, renames over ``path``
    (mode ``0666 & ~umask``), then fsyncs the directory (so the rename itself survives a power
    loss, not only a crash). A failure leaves any previous ``path`` as it was."""
    path = Path(path)
    ensure_dir(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _discard(tmp)
        raise write_error(path, e) from e
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        try:
            os.unlink(tmp)
        except OSError:
            pass


def save_figure(fig, path: str | Path, **savefig_kw) -> Path:
    """``fig.savefig`` into memory, then an atomic write (same mode and errors as above)."""
    import io

    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", **savefig_kw)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _fsync_dir(directory: Path) -> None:
    """fsync a directory's entry table (POSIX; a no-op where directories cannot be opened)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def npz_bytes(arrays: dict, compressed: bool = False) -> bytes:
    """The bytes of an ``.npz`` file holding ``arrays``."""
    import io

    import numpy as np

    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def atomic_write_npz(path: str | Path, arrays: dict, compressed: bool = False) -> None:
    """Writes ``arrays`` as an ``.npz`` file atomically."""
    atomic_write_bytes(path, npz_bytes(arrays, compressed))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=json_default))


def json_default(o: Any) -> Any:
    """``json.dumps(default=...)`` for NumPy scalars and arrays and paths."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
