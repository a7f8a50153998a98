"""Run configuration: a frozen dataclass read from TOML, with unknown keys refused by name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any

from hepattr_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so its checkpoints).

    Data: ``dataset`` is a name of :func:`hepattr_jax.data.registry.load_dataset` with its
    ``dataset_kwargs``; ``edges`` is ``"fully_connected"`` or ``"knn:K"``; events are split by id
    with ``split`` fractions (train, val, test) and ``split_seed``.
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
        if self.schedule not in ("constant", "cosine", "exponential"):
            raise ConfigError(f"schedule {self.schedule!r}: use constant, cosine or exponential")
        for name in ("batch_size", "epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
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
        except TypeError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)


def load_config(path: str | Path) -> TrainConfig:
    """Reads a TOML file whose top-level keys are :class:`TrainConfig` fields."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    return TrainConfig.from_dict(raw, source=str(path))


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
