"""Users' own events in Parquet: a neutral on-disk layout, its loader and its writer.

Layout
------
One Parquet file, **one row per event**. Column names are free except where stated.

- ``event_id`` -- any integer type; optional. Unique, stable event id (scores, splits and
  removals index by it). Default: the row number ``0 .. N-1``.
- ``label`` -- integer, boolean, or float holding exactly 0 or 1; required. 1 = signal,
  0 = background; any other value is an error.
- **one list column per object feature** (e.g. ``pt``, ``eta``, ``phi``, ``charge``) --
  ``list<float32>``, ``list<float64>`` or a list of integers (``large_list`` and
  ``fixed_size_list`` are read too); required. One element per object (particle, track, jet,
  lepton, ...) of the event. **All feature lists of an event have the same length**
  ``n_i >= 1``; the lengths may differ from event to event.
- **event-level inputs** (e.g. ``met``) -- integer or float scalar columns; optional. Model
  inputs beside the objects.
- **physics quantities** (e.g. ``m_ll``, ``mt2``) -- integer or float scalar columns; optional.
  Kept for probes and plots, never model inputs; nulls are read as NaN.

Nulls are errors in ids, labels, object features and event-level inputs. Non-finite object
features or event-level inputs (NaN, inf, or float64 values beyond float32 range) are errors.
Object features are read as float32, event-level inputs as float32, physics quantities as
float64. Extra columns are ignored.

Which columns are object features, event-level inputs and physics quantities is said by the
caller (:func:`load_parquet` arguments), or, for files written by :func:`save_parquet`, by the
schema metadata key ``hepattr`` (JSON: ``format``, ``version``, ``node_features``, ``label``,
``id_column``, ``globals`` and ``physics`` as ``{name: column}``, ``eta_phi``, ``source``).
:func:`save_parquet` names columns after the features; an event-level input or physics quantity
whose name is already taken by an earlier column gets the prefix ``global.`` or ``physics.``.

Every problem with the file raises :class:`~hepattr_jax.errors.DataError` with a message that
starts with the file path and names the column and, where one is at fault, the event id.

Example (pyarrow)::

    import pyarrow as pa, pyarrow.parquet as pq
    pq.write_table(pa.table({
        "event_id": [10, 11],
        "label": [1, 0],
        "pt": [[50.0, 20.0], [35.0, 30.0, 12.0]],
        "eta": [[0.1, -1.2], [0.5, 2.0, -0.3]],
        "phi": [[1.0, -2.0], [3.0, 0.2, -1.1]],
        "met": [80.0, 12.0],
    }), "events.parquet")
    events = load_parquet("events.parquet", ["pt", "eta", "phi"], globals=["met"], eta_phi=(1, 2))
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hepattr_jax.data.events import EventSet
from hepattr_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

METADATA_KEY = b"hepattr"
FORMAT = "hepattr-events"
VERSION = 1


def _as_mapping(cols: Sequence[str] | Mapping[str, str], what: str) -> dict[str, str]:
    """``{name: column}`` from a list of column names or a mapping."""
    if isinstance(cols, str):
        raise ConfigError(f"{what} must be a list of column names, got the string {cols!r}")
    if isinstance(cols, Mapping):
        return {str(k): str(v) for k, v in cols.items()}
    return {str(c): str(c) for c in cols}


def _metadata(schema: pa.Schema, path: Path) -> dict | None:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}: schema metadata '{METADATA_KEY.decode()}' is corrupt ({e})"
        ) from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(
            f"{path}: schema metadata says format {meta.get('format')!r} version "
            f"{meta.get('version')!r}, expected {FORMAT!r} version {VERSION}"
        )
    return meta


def load_parquet(
    path: str | Path,
    node_features: Sequence[str] | None = None,
    label: str = "label",
    id_column: str | None = "event_id",
    globals: Sequence[str] | Mapping[str, str] = (),
    physics: Sequence[str] | Mapping[str, str] = (),
    eta_phi: tuple[int, int] | None = None,
) -> EventSet:
    """Loads events stored in the layout of the module docstring.

    Args:
      path: the Parquet file.
      node_features: the list columns holding object features, in the order wanted (``F`` of
        them, the ``node_names``). ``None``: take every setting (features, label and id columns,
        event-level inputs, physics quantities, ``eta_phi``) from the metadata that
        :func:`save_parquet` writes.
      label: the label column.
      id_column: the event-id column; when absent from the file (or ``None``) ids are row
        numbers.
      globals: event-level input columns, as names or ``{name: column}``.
      physics: physics-quantity columns, as names or ``{name: column}``.
      eta_phi: positions in ``node_features`` of the eta and phi features, for kNN graphs.

    Returns:
      An :class:`EventSet` with ``source = str(path)``, ``nodes`` float32 ``[sum_i n_i, F]``.

    Raises:
      DataError: missing file, not a Parquet file, missing or mistyped column, nulls, object
        feature lists of different lengths within an event, labels outside {0, 1}, empty events,
        NaN/inf (the message names the file and the column or event id).
      ConfigError: bad arguments (no node features, ``eta_phi`` out of range).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: event file not found")
    try:
        pfile = pq.ParquetFile(path)
        schema = pfile.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None

    if node_features is None:
        meta = _metadata(schema, path)
        if meta is None:
            raise DataError(
                f"{path}: has no '{METADATA_KEY.decode()}' metadata (not written by save_parquet); "
                "pass node_features (and label, globals, physics) explicitly"
            )
        node_features = meta["node_features"]
        label, id_column = meta["label"], meta["id_column"]
        globals, physics = meta["globals"], meta["physics"]
        if eta_phi is None and meta.get("eta_phi") is not None:
            eta_phi = tuple(meta["eta_phi"])

    node_features = tuple(str(c) for c in node_features)
    glob_cols = _as_mapping(globals, "globals")
    phys_cols = _as_mapping(physics, "physics")
    if not node_features:
        raise ConfigError(f"{path}: node_features must name at least one list column")
    if eta_phi is not None:
        eta_phi = (int(eta_phi[0]), int(eta_phi[1]))
        if not all(0 <= i < len(node_features) for i in eta_phi):
            raise ConfigError(f"{path}: eta_phi {eta_phi} out of range for {node_features}")

    available = set(schema.names)
    has_ids = id_column is not None and id_column in available
    wanted = [label, *node_features, *glob_cols.values(), *phys_cols.values()]
    for col in wanted:
        if col not in available:
            raise DataError(
                f"{path}: missing column '{col}' (columns in the file: {sorted(available)})"
            )
    try:
        table = pfile.read(columns=list(dict.fromkeys(wanted + ([id_column] if has_ids else []))))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read the Parquet data ({e})") from None
    n = table.num_rows
    if n == 0:
        raise DataError(f"{path}: contains no events")

    # ---- ids
    if has_ids:
        col = table.column(id_column)
        if not pa.types.is_integer(col.type):
            raise DataError(
                f"{path}: column '{id_column}' (event ids) must be integer, got {col.type}"
            )
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: column '{id_column}' is null in row {row}")
        ids = col.to_numpy().astype(np.int64)
    else:
        log.info("%s: no id column '%s'; using row numbers as event ids", path, id_column)
        ids = np.arange(n, dtype=np.int64)

    def null_error(col_name: str, is_null: np.ndarray, what: str = "") -> DataError:
        i = int(np.flatnonzero(is_null)[0])
        return DataError(f"{path}: event id {ids[i]}: column '{col_name}' is null{what}")

    def scalar(col_name: str, allow_null: bool) -> np.ndarray:
        col = table.column(col_name)
        t = col.type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
            raise DataError(f"{path}: column '{col_name}' must be a numeric scalar column, got {t}")
        if col.null_count and not allow_null:
            raise null_error(col_name, col.is_null().to_numpy(zero_copy_only=False))
        return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)

    # ---- labels
    lab = scalar(label, allow_null=False)
    bad = ~np.isin(lab, (0.0, 1.0))
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{path}: event id {ids[i]}: column '{label}' (label) is {lab[i]:g}, must be 0 or 1"
        )

    # ---- object features
    lengths, values = [], []
    for name in node_features:
        col = table.column(name).combine_chunks()
        t = col.type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            raise DataError(
                f"{path}: column '{name}' must be a list column (one value per object), got {t}"
            )
        vt = t.value_type
        if not (pa.types.is_integer(vt) or pa.types.is_floating(vt)):
            raise DataError(f"{path}: column '{name}' must hold numbers, got {t}")
        if col.null_count:
            raise null_error(name, col.is_null().to_numpy(zero_copy_only=False), " (no list)")
        length = pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = col.flatten()
        if flat.null_count:
            k = int(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False))[0])
            i = int(np.searchsorted(np.cumsum(length), k, side="right"))
            raise DataError(f"{path}: event id {ids[i]}: column '{name}' has a null object value")
        lengths.append(length)
        values.append(pc.cast(flat, pa.float64()).to_numpy(zero_copy_only=False))
    lengths_ = np.stack(lengths)  # [F, N]
    differ = np.any(lengths_ != lengths_[0], axis=0)
    if differ.any():
        i = int(np.argmax(differ))
        detail = ", ".join(f"'{c}': {int(lengths_[k, i])}" for k, c in enumerate(node_features))
        raise DataError(
            f"{path}: event id {ids[i]}: object feature lists differ in length ({detail})"
        )
    counts = lengths_[0]
    glob = np.zeros((n, 0), np.float64)
    if glob_cols:
        glob = np.stack([scalar(c, allow_null=False) for c in glob_cols.values()], axis=1)
    with np.errstate(over="ignore"):  # float64 beyond float32 range -> inf, reported by validate
        nodes = np.stack(values, axis=1).astype(np.float32)
        glob = glob.astype(np.float32)

    return EventSet(
        ids=ids,
        labels=lab.astype(np.int32),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        nodes=nodes,
        node_names=node_features,
        globals=glob,
        global_names=tuple(glob_cols),
        physics={k: scalar(c, allow_null=True) for k, c in phys_cols.items()},
        source=str(path),
        eta_phi=eta_phi,
    ).validate()


def save_parquet(
    events: EventSet, path: str | Path, extra_lists: Mapping[str, np.ndarray] | None = None
) -> Path:
    """Writes ``events`` in the layout of the module docstring, with the ``hepattr`` metadata.

    ``load_parquet(path)`` gives back the same ids, labels, offsets, node features (float32),
    event-level inputs (float32), physics quantities (float64), names and ``eta_phi``, bit for
    bit. The write is atomic (temporary file, then rename). The Parquet writer settings are
    fixed here (not left to pyarrow's defaults) and nothing time-dependent is written, so equal
    events give byte-identical files for a given pyarrow version.

    ``extra_lists`` adds per-object list columns that are stored but are not node features
    (e.g. particle ids): ``{name: [sum_i n_i] array}``; the loader ignores them unless asked.

    Raises:
      DataError: a node feature named like the id or label column (``event_id``, ``label``).
    """
    from hepattr_jax.io_utils import atomic_write_bytes

    path = Path(path)
    id_col, label_col = "event_id", "label"
    taken = {id_col, label_col}
    for name in events.node_names:
        if name in taken:
            raise DataError(
                f"{events.source}: node feature name '{name}' is used twice or collides with a "
                f"reserved column ({id_col}, {label_col})"
            )
        taken.add(name)

    def claim(name: str, prefix: str) -> str:
        col = name if name not in taken else f"{prefix}.{name}"
        if col in taken:
            raise DataError(f"{events.source}: cannot give '{name}' a unique column name")
        taken.add(col)
        return col

    glob_cols = {name: claim(name, "global") for name in events.global_names}
    phys_cols = {name: claim(name, "physics") for name in events.physics}

    offsets = events.offsets
    list_cls, off_type = (
        (pa.ListArray, np.int32) if offsets[-1] < 2**31 - 1 else (pa.LargeListArray, np.int64)
    )
    arrow_offsets = pa.array(offsets.astype(off_type))
    columns = {
        id_col: pa.array(events.ids.astype(np.int64)),
        label_col: pa.array(events.labels.astype(np.int32)),
    }
    for j, name in enumerate(events.node_names):
        vals = pa.array(np.ascontiguousarray(events.nodes[:, j], dtype=np.float32))
        columns[name] = list_cls.from_arrays(arrow_offsets, vals)
    for name, values in (extra_lists or {}).items():
        values = np.asarray(values)
        if name in taken or values.shape != (events.nodes.shape[0],):
            raise DataError(
                f"{events.source}: extra list column '{name}' collides with a column or has shape "
                f"{values.shape}, expected ({events.nodes.shape[0]},)"
            )
        taken.add(name)
        columns[name] = list_cls.from_arrays(arrow_offsets, pa.array(np.ascontiguousarray(values)))
    for j, name in enumerate(events.global_names):
        columns[glob_cols[name]] = pa.array(np.ascontiguousarray(events.globals[:, j], np.float32))
    for name, col in phys_cols.items():
        columns[col] = pa.array(np.asarray(events.physics[name], np.float64))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "node_features": list(events.node_names),
        "label": label_col,
        "id_column": id_col,
        "globals": glob_cols,
        "physics": phys_cols,
        "eta_phi": list(events.eta_phi) if events.eta_phi is not None else None,
        "source": events.source,
    }
    table = pa.table(columns).replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        version="2.6",
        compression="snappy",
        use_dictionary=True,
        write_statistics=True,
        data_page_version="1.0",
    )
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path
