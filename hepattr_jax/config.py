"""Run configuration: a frozen dataclass read from TOML, with unknown keys refused by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from hepattr_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so its checkpoints).

    Data: ``dataset`` is a name of :func:`hepattr_jax.data.registry.load_dataset` with its
    ``dataset_kwargs``; ``edges`` is ``"fully_connected"`` or ``"knn:K"`` (K >= 1); events are
    split by id with ``split`` fractions (train, val, test; each > 0, summing to 1) and
    ``split_seed``.
    Model: ``model`` name and ``model_kwargs``; ``use_globals`` feeds event-level inputs.
    Optimisation: Adam(W) with ``lr`` peak, ``schedule`` in {constant, cosine, exponential},
    ``warmup_epochs`` linear warm-up, ``weight_decay``; ``epochs`` at most, early stopping on the
    validation loss after ``patience`` epochs without improvement (0 disables it).
    Checkpoints every ``checkpoint_every`` epochs, all kept.
    """

    dataset: str = "qg_jets"
    dataset_kwargs: dict = dataclasses.field(default_factory=dict)
    edges: str = "fully_connected"
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_seed: int = 0
    model: str = "edgeconv"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    use_globals: bool = False
    batch_size: int = 128
    epochs: int = 20
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_epochs: int = 1
    weight_decay: float = 0.0
    patience: int = 5
    checkpoint_every: int = 1
    seed: int = 0

    def __post_init__(self):
        _validate(self)
        object.__setattr__(self, "split", tuple(float(x) for x in self.split))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the settings that shape the checkpoints (``patience`` only decides
        when to stop, so it is left out)."""
        d = self.to_dict()
        d.pop("patience")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)


#: One line per setting, for ``hepattr train --help``.
FIELD_HELP = {
    "dataset": "data source: qg_jets, susy_sim, parquet or random",
    "dataset_kwargs": 'table of the source\'s arguments, e.g. {path = "x.parquet"} (a relative '
    "path is taken relative to the config file)",
    "edges": '"fully_connected" or "knn:K" (K >= 1 nearest neighbours in eta/phi)',
    "split": "[train, val, test] fractions, each > 0, summing to 1 (split by event id)",
    "split_seed": "seed of the split (integer >= 0)",
    "model": "edgeconv, interaction or gcn",
    "model_kwargs": "table of model arguments, e.g. {hidden = 64, n_blocks = 2}",
    "use_globals": "feed event-level inputs to the readout (true/false)",
    "batch_size": "events per training batch (integer >= 1)",
    "epochs": "maximum number of epochs (integer >= 1)",
    "lr": "peak learning rate (finite, > 0)",
    "schedule": "learning-rate decay: constant, cosine or exponential",
    "warmup_epochs": "epochs of linear warm-up from 0 (integer >= 0)",
    "weight_decay": "AdamW weight decay (>= 0)",
    "patience": "early stopping after this many epochs without a better validation loss "
    "(integer >= 0; 0 disables it)",
    "checkpoint_every": "a checkpoint every this many epochs, all kept for TracIn (integer >= 1)",
    "seed": "model initialisation and batch order (integer >= 0)",
}


def settings_help() -> str:
    """Every setting with its default and meaning (the epilog of ``hepattr train --help``)."""
    lines = ["config settings (TOML top-level keys; --set KEY=VALUE overrides one):"]
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # every TrainConfig field has a default
            raise AssertionError(f"TrainConfig.{f.name} has no default")
        lines.append(f"  {f.name} (default {json.dumps(default)}): {FIELD_HELP[f.name]}")
    return "\n".join(lines)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_edges(edges: str) -> int | None:
    """``None`` for ``"fully_connected"``, K for ``"knn:K"`` (K an integer >= 1); else
    ConfigError naming the field."""
    if edges == "fully_connected":
        return None
    if isinstance(edges, str) and edges.startswith("knn:"):
        k = edges[4:].strip()
        if re.fullmatch(r"[+-]?\d+", k) and int(k) >= 1:
            return int(k)
        raise ConfigError(f"edges {edges!r}: K in knn:K must be an integer >= 1")
    raise ConfigError(f'edges {edges!r}: use "fully_connected" or "knn:K" (K >= 1)')


def _validate(c: TrainConfig) -> None:
    """Every field by type and range; each message names the field."""

    def fail(name: str, want: str) -> None:
        raise ConfigError(f"{name} must be {want}, got {getattr(c, name)!r}")

    for name in ("dataset", "model", "schedule", "edges"):
        if not isinstance(getattr(c, name), str) or not getattr(c, name):
            fail(name, "a non-empty string")
    for name in ("dataset_kwargs", "model_kwargs"):
        if not isinstance(getattr(c, name), dict):
            fail(name, "a table (dict) of keyword arguments")
    if not isinstance(c.use_globals, bool):
        fail("use_globals", "true or false")
    for name in ("batch_size", "epochs", "checkpoint_every"):
        if not _is_int(getattr(c, name)) or getattr(c, name) < 1:
            fail(name, "an integer >= 1")
    for name in ("warmup_epochs", "patience", "split_seed", "seed"):
        if not _is_int(getattr(c, name)) or getattr(c, name) < 0:
            fail(name, "an integer >= 0")
    if not _is_number(c.lr) or not math.isfinite(c.lr) or not c.lr > 0:
        fail("lr", "a finite number > 0")
    if not _is_number(c.weight_decay) or not math.isfinite(c.weight_decay) or c.weight_decay < 0:
        fail("weight_decay", "a finite number >= 0")
    if c.schedule not in ("constant", "cosine", "exponential"):
        raise ConfigError(f"schedule {c.schedule!r}: use constant, cosine or exponential")
    parse_edges(c.edges)
    sp = c.split
    if (
        not isinstance(sp, list | tuple)
        or len(sp) != 3
        or not all(_is_number(x) and math.isfinite(x) and x >= 0 for x in sp)
        or abs(sum(sp) - 1.0) > 1e-9
    ):
        fail("split", "three numbers >= 0 summing to 1 (train, val, test)")
    if sp[0] == 0 or sp[1] == 0 or sp[2] == 0:
        # An empty validation split leaves early stopping and the best epoch undefined (NaN
        # validation loss); an empty train or test split leaves nothing to train or report.
        fail("split", "three fractions > 0 (train, val, test)")


def parse_override(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``hepattr train --set``: VALUE as JSON if it parses (numbers, true,
    lists, tables), else the plain string (``--set edges=knn:8``, ``--set schedule=constant``)."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def load_config(path: str | Path) -> TrainConfig:
    """Reads a TOML file whose top-level keys are :class:`TrainConfig` fields. A relative
    ``dataset_kwargs.path`` is taken relative to the file's directory and stored absolute."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    kwargs = raw.get("dataset_kwargs")
    if isinstance(kwargs, dict):
        raw["dataset_kwargs"] = absolute_data_path(kwargs, path.parent)
    return TrainConfig.from_dict(raw, source=str(path))


def absolute_data_path(dataset_kwargs: dict, base: str | Path) -> dict:
    """``dataset_kwargs`` with a relative ``path`` resolved against ``base`` (a config file's
    directory), so a run records the absolute path and does not depend on the working
    directory it was started from."""
    p = dataset_kwargs.get("path")
    if not isinstance(p, str) or not p:
        return dataset_kwargs
    resolved = Path(p).expanduser()
    if not resolved.is_absolute():
        resolved = Path(base) / resolved
    return {**dataset_kwargs, "path": str(resolved.resolve())}


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig saved in a run directory's ``config.json``."""
    path = Path(run_dir) / "config.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{run_dir}: not a run directory (no config.json)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: corrupt ({e})") from None
    return TrainConfig.from_dict(d, source=str(path))
