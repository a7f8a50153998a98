"""The ragged event container every data source produces, its validation, splits and normalisation.

An :class:`EventSet` holds N events on the host (NumPy). Event ``i`` has ``n_i`` objects (particles,
tracks, jets, leptons, ...) whose features are the rows ``nodes[offsets[i]:offsets[i + 1]]``.
Events carry stable integer ids: scores, splits and removals all index by id, never by position.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hepattr_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class EventSet:
    """N events with a variable number of objects each.

    Attributes:
      ids: int64 ``[N]``, unique, stable across runs (e.g. the row in the source file).
      labels: int32 ``[N]`` in {0, 1} (1 = signal, e.g. gluon jet or SUSY event).
      offsets: int64 ``[N + 1]``; the objects of event ``i`` are ``nodes[offsets[i]:offsets[i+1]]``.
      nodes: float32 ``[sum_i n_i, F]`` per-object features, named by ``node_names``.
      node_names: ``F`` feature names.
      globals: float32 ``[N, G]`` event-level model inputs (``G`` may be 0), named by
        ``global_names``.
      global_names: ``G`` names.
      physics: per-event high-level quantities ``{name: float64 [N]}`` kept beside the events for
        probes and plots (jet mass, multiplicity, missing momentum, ...); never model inputs.
      source: where the events came from (a file path or a generator description), for errors.
      eta_phi: indices of the (delta-)eta and (delta-)phi columns of ``nodes``, for kNN graphs.
    """

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    nodes: np.ndarray
    node_names: tuple[str, ...]
    globals: np.ndarray
    global_names: tuple[str, ...] = ()
    physics: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    source: str = "<memory>"
    eta_phi: tuple[int, int] | None = None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_lists(
        cls,
        node_lists: Sequence[np.ndarray],
        labels: Sequence[int] | np.ndarray,
        node_names: Sequence[str],
        *,
        ids: np.ndarray | None = None,
        globals: np.ndarray | None = None,
        global_names: Sequence[str] = (),
        physics: Mapping[str, np.ndarray] | None = None,
        source: str = "<memory>",
        eta_phi: tuple[int, int] | None = None,
        validate: bool = True,
    ) -> EventSet:
        """Builds an EventSet from one ``[n_i, F]`` array per event."""
        n = len(node_lists)
        node_names = tuple(node_names)
        f = len(node_names)
        counts = np.array([len(x) for x in node_lists], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        arrays = []
        for i, x in enumerate(node_lists):
            x = np.asarray(x, dtype=np.float32)
            if x.ndim != 2 and not (x.ndim == 1 and x.size == 0):
                raise DataError(
                    f"{source}: event index {i}: node features must be [n, F], got {x.shape}"
                )
            x = x.reshape(-1, f) if x.size == 0 else x
            if x.shape[1] != f:
                eid = int(ids[i]) if ids is not None else i
                raise DataError(
                    f"{source}: event id {eid}: {x.shape[1]} node features, "
                    f"expected {f} {node_names}"
                )
            arrays.append(x)
        nodes = np.concatenate(arrays, axis=0) if arrays else np.zeros((0, f), np.float32)
        ev = cls(
            ids=np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, np.int64),
            labels=np.asarray(labels).astype(np.int32) if n else np.zeros(0, np.int32),
            offsets=offsets,
            nodes=nodes,
            node_names=node_names,
            globals=(
                np.zeros((n, 0), np.float32)
                if globals is None
                else np.asarray(globals, np.float32).reshape(n, -1)
            ),
            global_names=tuple(global_names),
            physics={k: np.asarray(v, np.float64) for k, v in (physics or {}).items()},
            source=source,
            eta_phi=eta_phi,
        )
        if validate:
            ev.validate()
        return ev

    # ----------------------------------------------------------------- basic views
    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_node(self) -> np.ndarray:
        """int64 ``[N]``: objects per event."""
        return np.diff(self.offsets)

    @property
    def n_features(self) -> int:
        return len(self.node_names)

    @property
    def n_globals(self) -> int:
        return len(self.global_names)

    def event_nodes(self, i: int) -> np.ndarray:
        """``[n_i, F]`` features of the event at position ``i``."""
        return self.nodes[self.offsets[i] : self.offsets[i + 1]]

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions of the given event ids; raises DataError naming any id not present."""
        ids = np.asarray(ids, np.int64)
        order = np.argsort(self.ids, kind="stable")
        pos = np.searchsorted(self.ids[order], ids)
        pos = np.clip(pos, 0, len(self) - 1)
        found = self.ids[order][pos] == ids
        if not np.all(found):
            missing = ids[~found][:5].tolist()
            raise DataError(f"{self.source}: event ids not in this set: {missing}")
        return order[pos]

    def select(self, positions: np.ndarray) -> EventSet:
        """The events at ``positions`` (a new EventSet, ids kept)."""
        positions = np.asarray(positions, dtype=np.int64)
        counts = self.n_node[positions]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        starts = self.offsets[positions]
        # Row indices of every selected object, vectorised: start of its event + rank inside it.
        rank = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts)
        rows = np.repeat(starts, counts) + rank
        return dataclasses.replace(
            self,
            ids=self.ids[positions],
            labels=self.labels[positions],
            offsets=offsets,
            nodes=self.nodes[rows],
            globals=self.globals[positions],
            physics={k: v[positions] for k, v in self.physics.items()},
        )

    def select_ids(self, ids: np.ndarray) -> EventSet:
        return self.select(self.positions_of(ids))

    def leading(self, k: int) -> EventSet:
        """Each event cut to its first ``k`` objects (the leading ones where the objects are
        stored ordered, as the generated jets' constituents are by pT); ``physics`` is kept as
        computed from all objects."""
        if k < 1:
            raise DataError(f"{self.source}: leading({k}): keep at least one object per event")
        counts = np.minimum(self.n_node, k)
        rank = np.arange(self.offsets[-1]) - np.repeat(self.offsets[:-1], self.n_node)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return dataclasses.replace(self, offsets=offsets, nodes=self.nodes[rank < k])

    # ----------------------------------------------------------------- checks
    def validate(self) -> EventSet:
        """Checks shapes, labels, finiteness and emptiness; raises DataError naming the event id."""
        src = self.source
        n = len(self)
        f = self.n_features
        if self.labels.shape != (n,):
            raise DataError(f"{src}: field 'labels' has shape {self.labels.shape}, expected ({n},)")
        if self.offsets.shape != (n + 1,) or self.offsets[0] != 0:
            raise DataError(f"{src}: field 'offsets' is malformed")
        if self.nodes.ndim != 2 or self.nodes.shape[1] != f:
            raise DataError(
                f"{src}: field 'nodes' has {self.nodes.shape[-1]} features, expected {f} "
                f"{self.node_names}"
            )
        if self.nodes.shape[0] != self.offsets[-1]:
            raise DataError(
                f"{src}: field 'nodes' has {self.nodes.shape[0]} rows, offsets say "
                f"{self.offsets[-1]}"
            )
        if self.globals.shape != (n, self.n_globals):
            raise DataError(
                f"{src}: field 'globals' has shape {self.globals.shape}, expected "
                f"({n}, {self.n_globals}) {self.global_names}"
            )
        if len(np.unique(self.ids)) != n:
            vals, counts = np.unique(self.ids, return_counts=True)
            raise DataError(f"{src}: duplicate event ids {vals[counts > 1][:5].tolist()}")
        bad = ~np.isin(self.labels, (0, 1))
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{src}: event id {self.ids[i]}: field 'label' is {self.labels[i]}, must be 0 or 1"
            )
        empty = self.n_node == 0
        if empty.any():
            i = int(np.argmax(empty))
            raise DataError(f"{src}: event id {self.ids[i]} has no objects (empty event)")
        nonfinite = ~np.isfinite(self.nodes)
        if nonfinite.any():
            row, col = np.argwhere(nonfinite)[0]
            i = int(np.searchsorted(self.offsets, row, side="right") - 1)
            raise DataError(
                f"{src}: event id {self.ids[i]}: node feature '{self.node_names[col]}' of object "
                f"{row - self.offsets[i]} is {self.nodes[row, col]} (NaN or inf)"
            )
        nonfinite = ~np.isfinite(self.globals)
        if nonfinite.any():
            i, col = np.argwhere(nonfinite)[0]
            raise DataError(
                f"{src}: event id {self.ids[i]}: event-level input '{self.global_names[col]}' is "
                f"{self.globals[i, col]} (NaN or inf)"
            )
        for k, v in self.physics.items():
            if v.shape != (n,):
                raise DataError(
                    f"{src}: physics quantity '{k}' has shape {v.shape}, expected ({n},)"
                )
        return self

    def fingerprint(self) -> str:
        """sha256 (16 hex chars) of ids, labels, offsets, features and names."""
        h = hashlib.sha256()
        for a in (self.ids, self.labels, self.offsets, self.nodes, self.globals):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps([self.node_names, self.global_names]).encode())
        return h.hexdigest()[:16]


def concat_events(sets: Sequence[EventSet], source: str = "<concat>") -> EventSet:
    """The events of ``sets`` one after another (ids kept, so they must be unique overall).

    All sets must have the same node and global feature names, physics quantities and
    ``eta_phi``; DataError otherwise.
    """
    if not sets:
        raise DataError(f"{source}: no event sets to concatenate")
    first = sets[0]
    for s in sets[1:]:
        if (
            s.node_names != first.node_names
            or s.global_names != first.global_names
            or set(s.physics) != set(first.physics)
            or s.eta_phi != first.eta_phi
        ):
            raise DataError(
                f"{source}: {s.source} has features {s.node_names}/{s.global_names}/"
                f"{sorted(s.physics)}, {first.source} has {first.node_names}/"
                f"{first.global_names}/{sorted(first.physics)}"
            )
    counts = np.concatenate([s.n_node for s in sets])
    return EventSet(
        ids=np.concatenate([s.ids for s in sets]),
        labels=np.concatenate([s.labels for s in sets]),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        nodes=np.concatenate([s.nodes for s in sets]),
        node_names=first.node_names,
        globals=np.concatenate([s.globals for s in sets]),
        global_names=first.global_names,
        physics={k: np.concatenate([s.physics[k] for s in sets]) for k in first.physics},
        source=source,
        eta_phi=first.eta_phi,
    ).validate()


# --------------------------------------------------------------------- splits
def _uniform_from_ids(ids: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uniform in [0, 1) per id (splitmix64 of id, seed): stable under subsetting."""
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_by_id(
    events: EventSet, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, EventSet]:
    """Train/validation/test split decided per event id by a seeded hash.

    An event's split depends only on its id and the seed, so adding or removing other events
    never moves it.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise DataError(
            f"split fractions must be three non-negative numbers summing to 1: {fractions}"
        )
    u = _uniform_from_ids(events.ids, seed)
    a, b = fractions[0], fractions[0] + fractions[1]
    return {
        "train": events.select(np.flatnonzero(u < a)),
        "val": events.select(np.flatnonzero((u >= a) & (u < b))),
        "test": events.select(np.flatnonzero(u >= b)),
    }


# --------------------------------------------------------------------- normalisation
@dataclasses.dataclass(frozen=True)
class Normalizer:
    """Per-feature standardisation ``(x - mean) / std`` fitted on the training events only."""

    node_mean: np.ndarray
    node_std: np.ndarray
    global_mean: np.ndarray
    global_std: np.ndarray
    node_names: tuple[str, ...]
    global_names: tuple[str, ...]

    @classmethod
    def fit(cls, train: EventSet) -> Normalizer:
        def stats(x):
            if x.shape[0] == 0:
                return np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
            m = x.mean(0, dtype=np.float64)
            s = x.std(0, dtype=np.float64)
            return m.astype(np.float32), np.where(s > 1e-12, s, 1.0).astype(np.float32)

        nm, ns = stats(train.nodes)
        gm, gs = stats(train.globals)
        return cls(nm, ns, gm, gs, train.node_names, train.global_names)

    def apply(self, events: EventSet) -> EventSet:
        if events.node_names != self.node_names or events.global_names != self.global_names:
            raise DataError(
                f"{events.source}: features {events.node_names}/{events.global_names} do not match "
                f"the normalisation's {self.node_names}/{self.global_names}"
            )
        return dataclasses.replace(
            events,
            nodes=((events.nodes - self.node_mean) / self.node_std).astype(np.float32),
            globals=((events.globals - self.global_mean) / self.global_std).astype(np.float32),
        )

    def to_json(self) -> dict:
        return {
            "node_names": list(self.node_names),
            "global_names": list(self.global_names),
            "node_mean": self.node_mean.tolist(),
            "node_std": self.node_std.tolist(),
            "global_mean": self.global_mean.tolist(),
            "global_std": self.global_std.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> Normalizer:
        f32 = lambda k: np.asarray(d[k], np.float32)  # noqa: E731
        return cls(
            f32("node_mean"),
            f32("node_std"),
            f32("global_mean"),
            f32("global_std"),
            tuple(d["node_names"]),
            tuple(d["global_names"]),
        )

    def save(self, path: str | Path) -> None:
        from hepattr_jax.io_utils import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        path = Path(path)
        try:
            return cls.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise DataError(f"{path}: normalisation file is missing") from None
        except (json.JSONDecodeError, KeyError) as e:
            raise DataError(f"{path}: normalisation file is corrupt ({e})") from None
