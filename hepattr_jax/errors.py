"""Exceptions raised on bad input. Each message names the file, event id or field at fault."""


class HepattrError(Exception):
    """Base class of the library's own errors."""


class DataError(HepattrError, ValueError):
    """Bad event data: NaN/inf, empty events, wrong feature count, bad labels, missing columns."""


class CheckpointError(HepattrError):
    """A checkpoint that is missing, truncated, corrupt, or does not match the run."""


class StoreError(HepattrError):
    """A score store that is corrupt or was made by a different run, checkpoints or data."""


class ConfigError(HepattrError, ValueError):
    """A configuration value that is unknown or out of range."""


class DependencyError(HepattrError, ImportError):
    """An optional dependency that a feature needs is not installed (the message says how)."""


class WriteError(HepattrError, OSError):
    """A file or directory that cannot be written: no permission, a read-only file system, a
    full disk. The message names the path; the ``OSError`` is chained."""
